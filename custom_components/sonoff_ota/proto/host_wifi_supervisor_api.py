"""The Supervisor network API as the network hop uses it: an HTTP client and the bodies it sends.

`SupervisorNetworkApi` makes the calls (`/network/info`, an interface's `info`, `accesspoints`
and `update`) with the Supervisor token; an unreachable Supervisor raises
`HopError(backend_unavailable)`, an error answer `SupervisorHTTPError`. It decides nothing:
`host_wifi_supervisor.SupervisorWifiHop` does. Facts: shared/spec/host-wifi-hopping.md §1.
Surprises handled here:
- the body is sent as raw JSON with `wifi.auth`: aiohasupervisor's `WifiConfig` serialises the
  field as `method`, which the Supervisor's schema rejects with HTTP 400 (§1.7 BUG 1);
- `update` blocks until NM reports the activation, so its timeout is long (>= 60 s in
  production, §1.6);
- `/accesspoints` runs a scan and sleeps a fixed 5 s itself (§1.1).
No Home Assistant imports.
"""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Any, Final

import aiohttp

from .host_wifi_types import HopError, HopErrorCode, HopTarget, parse_cidr

DEFAULT_REQUEST_TIMEOUT: Final = 90.0
"""`update` blocks until activated; DHCP/association trouble takes 45 s+ (spec §1.6)."""
DEFAULT_INFO_TIMEOUT: Final = 15.0
DEFAULT_ACCESS_POINT_TIMEOUT: Final = 20.0
"""`/accesspoints` sleeps a fixed 5 s after RequestScan (spec §1.1)."""
ACTIVATION_FAILED_TEXT: Final = "Activating connection failed"
"""What the Supervisor answers, whatever the cause, when NM could not activate the profile."""


class SupervisorHTTPError(Exception):
    """The Supervisor answered with an HTTP error or `"result": "error"`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def update_body(target: HopTarget) -> dict[str, Any]:
    """Raw JSON for `POST /network/interface/<if>/update` joining `target` (spec §1.8 step 3).

    Static address without gateway/nameservers: no default route, no DNS (spec §1.4).
    """
    wifi: dict[str, Any] = {"mode": "infrastructure", "ssid": target.ssid}
    if target.psk is None:
        wifi["auth"] = "open"
    else:
        wifi["auth"] = "wpa-psk"
        wifi["psk"] = target.psk
    return {
        "enabled": True,
        "wifi": wifi,
        "ipv4": {"method": "static", "address": [str(target.address)]},
        "ipv6": {"method": "disabled"},
    }


def home_body(previous: dict[str, Any], ssid: str, psk: str | None) -> dict[str, Any]:
    """Raw JSON re-creating the home Wi-Fi from the interface struct seen before the hop."""
    wifi: dict[str, Any] = {"mode": "infrastructure", "ssid": ssid}
    if psk:
        wifi["auth"] = "wpa-psk"
        wifi["psk"] = psk
    else:
        wifi["auth"] = "open"
    body: dict[str, Any] = {"enabled": True, "wifi": wifi}
    ipv4 = previous.get("ipv4") or {}
    if ipv4.get("method") == "static":
        static: dict[str, Any] = {"method": "static", "address": list(ipv4.get("address") or [])}
        if ipv4.get("gateway"):
            static["gateway"] = ipv4["gateway"]
        if ipv4.get("nameservers"):
            static["nameservers"] = list(ipv4["nameservers"])
        body["ipv4"] = static
    else:
        body["ipv4"] = {"method": "auto"}
    ipv6_method = (previous.get("ipv6") or {}).get("method")
    if ipv6_method in ("auto", "disabled"):
        body["ipv6"] = {"method": ipv6_method}
    return body


def interface_networks(struct: dict[str, Any]) -> list[IPv4Network]:
    """The IPv4 networks of an interface struct from `/network/info` (unparsable ones skipped)."""
    result = []
    for value in (struct.get("ipv4") or {}).get("address") or []:
        address = parse_cidr(str(value))
        if address is not None:
            result.append(address.network)
    return result


class SupervisorNetworkApi:
    """Client for the Supervisor at `base_url` (e.g. `http://supervisor`) with `token`.

    `update_timeout` bounds an `update` call, which blocks until the activation ends.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        token: str,
        update_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._token = token
        self._update_timeout = update_timeout

    @property
    def base_url(self) -> str:
        """The Supervisor's URL, without a trailing slash."""
        return self._base_url

    def __repr__(self) -> str:  # the token stays out
        return f"SupervisorNetworkApi(base_url={self._base_url!r})"

    async def network_info(self) -> dict[str, Any]:
        """`GET /network/info`: the interfaces and their state."""
        return await self._request("GET", "/network/info")

    async def interface_info(self, interface: str) -> dict[str, Any]:
        """`GET /network/interface/<if>/info`: one interface's state."""
        return await self._request("GET", f"/network/interface/{interface}/info")

    async def access_points(self, interface: str) -> list[dict[str, Any]]:
        """`GET /network/interface/<if>/accesspoints`: scans, waits 5 s, lists (spec §1.1)."""
        data = await self._request(
            "GET",
            f"/network/interface/{interface}/accesspoints",
            total=DEFAULT_ACCESS_POINT_TIMEOUT,
        )
        return [ap for ap in data.get("accesspoints") or [] if isinstance(ap, dict)]

    async def update(self, interface: str, body: dict[str, Any]) -> None:
        """`POST /network/interface/<if>/update` with the raw JSON `body`; blocks (spec §1.6).

        Raises `TimeoutError` after `update_timeout` (the Supervisor may still complete it).
        """
        await self._request(
            "POST", f"/network/interface/{interface}/update", body, total=self._update_timeout
        )

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, total: float = 0
    ) -> dict[str, Any]:
        try:
            async with self._session.request(
                method,
                f"{self._base_url}{path}",
                json=body,
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=aiohttp.ClientTimeout(total=total or DEFAULT_INFO_TIMEOUT),
            ) as resp:
                try:
                    payload = await resp.json(content_type=None)
                except ValueError:
                    payload = None
                if not isinstance(payload, dict):
                    payload = {}
                if resp.status >= 400 or payload.get("result") == "error":
                    raise SupervisorHTTPError(resp.status, str(payload.get("message", "")))
                data = payload.get("data")
                return data if isinstance(data, dict) else {}
        except aiohttp.ClientError as err:
            raise HopError(
                HopErrorCode.BACKEND_UNAVAILABLE, f"Supervisor unreachable: {err!r}"
            ) from err
