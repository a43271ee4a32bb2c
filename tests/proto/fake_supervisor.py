"""A fake Supervisor network API on 127.0.0.1 (aiohttp); the radio behind it is what is faked.

Modelled on supervisor/api/network.py and supervisor/host/network.py as described in
shared/spec/host-wifi-hopping.md §1: the update body is validated like SCHEMA_UPDATE (extra keys
rejected, so `wifi.method` is a 400 "extra keys not allowed @ data['wifi']['method']"), the
Supervisor keeps one profile per interface and edits the ACTIVE one in place (per-section merge),
creates a new saved autoconnect profile when nothing is active, `enabled: false` deletes only the
active profile, `update` blocks until the activation settles (slow activation via
`activation_delay`, shielded against client timeouts), failures answer 400 "Activating connection
failed, check connection settings." and leave the saved profile behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
import contextlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
import voluptuous as vol

from .legacy_clients import LOOPBACK, running_site

ACTIVATION_FAILED = "Activating connection failed, check connection settings."

_IPV4 = vol.Schema(
    {
        vol.Optional("method"): vol.In(["auto", "static", "disabled"]),
        vol.Optional("address"): [str],
        vol.Optional("gateway"): str,
        vol.Optional("nameservers"): [str],
        vol.Optional("route_metric"): int,
    }
)
_IPV6 = vol.Schema(
    {
        vol.Optional("method"): vol.In(["auto", "static", "disabled"]),
        vol.Optional("addr_gen_mode"): str,
        vol.Optional("ip6_privacy"): str,
        vol.Optional("address"): [str],
        vol.Optional("gateway"): str,
        vol.Optional("nameservers"): [str],
    }
)
_WIFI = vol.Schema(
    {
        vol.Optional("mode"): vol.In(["infrastructure", "mesh", "adhoc", "ap"]),
        vol.Optional("auth"): vol.In(["open", "wep", "wpa-psk"]),
        vol.Optional("ssid"): str,
        vol.Optional("psk"): str,
    }
)
SCHEMA_UPDATE = vol.Schema(
    {
        vol.Optional("ipv4"): _IPV4,
        vol.Optional("ipv6"): _IPV6,
        vol.Optional("wifi"): _WIFI,
        vol.Optional("enabled"): bool,
        vol.Optional("mdns"): str,
        vol.Optional("llmnr"): str,
    }
)


@dataclass
class Profile:
    """A saved NM profile the Supervisor created ("Supervisor wlan0", autoconnect)."""

    name: str
    sections: dict[str, dict[str, Any]]

    @property
    def ssid(self) -> str | None:
        return self.sections.get("wifi", {}).get("ssid")


@dataclass
class Iface:
    """One interface as the Supervisor reports it."""

    name: str
    type: str
    connected: bool = False
    primary: bool = False
    address: list[str] = field(default_factory=list)
    ipv4_method: str = "disabled"
    gateway: str | None = None
    active: Profile | None = None

    def struct(self) -> dict[str, Any]:
        wifi = None
        if self.type == "wireless" and self.active is not None and self.connected:
            w = self.active.sections["wifi"]
            wifi = {"mode": "infrastructure", "auth": w.get("auth", "open"), "ssid": w["ssid"]}
            wifi["signal"] = 80
        return {
            "interface": self.name,
            "type": self.type,
            "enabled": True,
            "connected": self.connected,
            "primary": self.primary,
            "mac": "00:11:22:33:44:55",
            "ipv4": {
                "method": self.ipv4_method,
                "address": list(self.address) if self.connected else [],
                "nameservers": [],
                "gateway": self.gateway if self.connected else None,
                "ready": self.connected,
            },
            "ipv6": {"method": "auto", "address": [], "ready": False},
            "wifi": wifi,
            "vlan": None,
        }


class FakeSupervisor:
    """State + aiohttp app; `calls` records (method, path, json body, Authorization header)."""

    def __init__(
        self,
        *,
        token: str,
        eth_address: str | None = "192.168.1.10/24",
        home_ssid: str | None = None,
        home_psk: str = "home-secret",
        home_address: str = "192.168.1.20/24",
        activation_delay: float = 0.02,
    ) -> None:
        self.token = token
        self.activation_delay = activation_delay
        self.calls: list[tuple[str, str, Any, str | None]] = []
        self.access_points: dict[str, str | None] = {}
        self.profiles: list[Profile] = []
        self.dhcp: dict[str, str] = {}
        self.eth0 = Iface("eth0", "ethernet")
        self.wlan0 = Iface("wlan0", "wireless")
        self._tasks: set[asyncio.Task[str | None]] = set()
        if eth_address is not None:
            self.eth0.connected = True
            self.eth0.primary = True
            self.eth0.address = [eth_address]
            self.eth0.ipv4_method = "auto"
            self.eth0.gateway = "192.168.1.1"
        if home_ssid is not None:
            self.access_points[home_ssid] = home_psk
            self.dhcp[home_ssid] = home_address
            home = Profile(
                "Supervisor wlan0",
                {
                    "wifi": {"ssid": home_ssid, "auth": "wpa-psk", "psk": home_psk},
                    "ipv4": {"method": "auto"},
                },
            )
            self.profiles.append(home)
            self.wlan0.active = home
            self.wlan0.connected = True
            self.wlan0.primary = eth_address is None
            self.wlan0.address = [home_address]
            self.wlan0.ipv4_method = "auto"

    @property
    def interfaces(self) -> dict[str, Iface]:
        return {"eth0": self.eth0, "wlan0": self.wlan0}

    def update_calls(self) -> list[Any]:
        """JSON bodies posted to .../update, in order."""
        return [body for method, path, body, _ in self.calls if path.endswith("/update")]

    # -- HTTP ---------------------------------------------------------------------------------

    @staticmethod
    def _error(message: str, status: int = 400) -> web.Response:
        return web.json_response({"result": "error", "message": message}, status=status)

    @staticmethod
    def _ok(data: dict[str, Any] | None = None) -> web.Response:
        return web.json_response({"result": "ok", "data": data or {}})

    def app(self) -> web.Application:
        @web.middleware
        async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
            body = await request.json() if request.can_read_body else None
            header = request.headers.get("Authorization")
            self.calls.append((request.method, request.path, body, header))
            if header != f"Bearer {self.token}":
                return self._error("Unauthorized", 401)
            response: web.StreamResponse = await handler(request)
            return response

        app = web.Application(middlewares=[auth])
        app.router.add_get("/network/info", self._info)
        app.router.add_get("/network/interface/{iface}/info", self._iface_info)
        app.router.add_get("/network/interface/{iface}/accesspoints", self._aps)
        app.router.add_post("/network/interface/{iface}/update", self._update)
        return app

    def _iface(self, request: web.Request) -> Iface | None:
        name = request.match_info["iface"]
        if name == "default":
            return next(i for i in self.interfaces.values() if i.primary)
        return self.interfaces.get(name)

    async def _info(self, request: web.Request) -> web.Response:
        return self._ok(
            {
                "interfaces": [i.struct() for i in self.interfaces.values()],
                "docker": {"interface": "hassio", "address": "172.30.32.0/23"},
                "host_internet": True,
                "supervisor_internet": True,
            }
        )

    async def _iface_info(self, request: web.Request) -> web.Response:
        iface = self._iface(request)
        if iface is None:
            return self._error(f"Interface {request.match_info['iface']} does not exist", 404)
        return self._ok(iface.struct())

    async def _aps(self, request: web.Request) -> web.Response:
        iface = self._iface(request)
        if iface is None or iface.type != "wireless":
            return self._error(f"{request.match_info['iface']} is not a valid wireless card!")
        aps = [
            {"mode": "infrastructure", "ssid": s, "frequency": 2412, "signal": 70, "mac": "x"}
            for s in self.access_points
        ]
        return self._ok({"accesspoints": aps})

    async def _update(self, request: web.Request) -> web.Response:
        iface = self._iface(request)
        if iface is None:
            return self._error(f"Interface {request.match_info['iface']} does not exist", 404)
        try:
            body = SCHEMA_UPDATE(await request.json())
        except vol.Invalid as err:
            return self._error(str(err))
        if not body:
            return self._error("You need to supply at least one option to update")
        if body.get("enabled") is False:
            if iface.active is not None and iface.connected:
                self.profiles.remove(iface.active)
                self._disconnect(iface)
            return self._ok()
        # The API handler shields the change: a client timeout does not cancel it.
        task = asyncio.get_running_loop().create_task(self._apply(iface, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        error = await asyncio.shield(task)
        return self._error(error) if error else self._ok()

    async def _apply(self, iface: Iface, body: dict[str, Any]) -> str | None:
        sections = {k: dict(v) for k, v in body.items() if k in ("ipv4", "ipv6", "wifi")}
        if "ipv4" in sections:
            sections["ipv4"].setdefault("method", "static")  # spec §1.2
        profile = iface.active if iface.connected else None
        if profile is not None:
            profile.sections.update(sections)  # per-section merge, in place (spec §1.3)
        else:
            profile = Profile(f"Supervisor {iface.name}", sections)
            self.profiles.append(profile)
        self._disconnect(iface)
        await asyncio.sleep(self.activation_delay)
        wifi = profile.sections.get("wifi", {})
        ssid = wifi.get("ssid")
        if ssid not in self.access_points:
            return ACTIVATION_FAILED
        ap_psk = self.access_points[ssid]
        auth = wifi.get("auth", "open")
        if (ap_psk is None) != (auth == "open") or (
            ap_psk is not None and wifi.get("psk") != ap_psk
        ):
            return ACTIVATION_FAILED
        ipv4 = profile.sections.get("ipv4", {})
        iface.active = profile
        iface.connected = True
        iface.ipv4_method = ipv4.get("method", "auto")
        if iface.ipv4_method == "static":
            iface.address = list(ipv4.get("address", []))
        else:
            iface.address = [self.dhcp.get(ssid, "10.99.0.2/24")]
        return None

    def _disconnect(self, iface: Iface) -> None:
        iface.active = None
        iface.connected = False
        iface.address = []

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def running_supervisor(fake: FakeSupervisor) -> AsyncIterator[str]:
    """Serve `fake` on 127.0.0.1:<free port>; yield its base URL."""
    try:
        async with running_site(fake.app()) as port:
            yield f"http://{LOOPBACK}:{port}"
    finally:
        await fake.close()
