"""Network hop through the Supervisor network API: the policy, over `SupervisorNetworkApi`.

Facts: shared/spec/host-wifi-hopping.md §1. The calls and the raw JSON bodies are
`host_wifi_supervisor_api`'s; the decisions are here:
- a timed-out `update` may still complete (the Supervisor shields it, §1.1), so leaving waits
  for it to settle;
- the Supervisor keeps ONE profile per interface and edits the active one in place (§1.3):
  before the next target and at the end we send `{"enabled": false}` while our profile is still
  active (afterwards the API cannot delete it), so every hop is a fresh create (no WPA block left
  over on the open FinalStage profile);
- `/network/info` never returns a PSK: a Wi-Fi-only host can be restored only with the home
  SSID/PSK supplied by the user (§1.8 step 5);
- the Supervisor only says "Activating connection failed": a scan tells a missing AP from a
  wrong PSK;
- a failed activation leaves a saved, inactive profile the API can neither list nor delete (§1.3);
  it is reported in `RestoreResult.detail`.
No Home Assistant imports.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Interface
import logging
from typing import Any, Final, Unpack

import aiohttp

from .host_wifi_hop import WifiHop, WifiHopOptions
from .host_wifi_supervisor_api import (
    ACTIVATION_FAILED_TEXT,
    DEFAULT_REQUEST_TIMEOUT,
    SupervisorHTTPError,
    SupervisorNetworkApi,
    home_body,
    interface_networks,
    update_body,
)
from .host_wifi_types import (
    HopBackend,
    HopError,
    HopErrorCode,
    HopPlan,
    HopTarget,
    JoinedNetwork,
    LinkEvent,
    RestoreResult,
)

_LOGGER = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL: Final = 1.0
DEFAULT_SETTLE_TIMEOUT: Final = 60.0
"""After a timed-out update, how long to wait for the Supervisor to finish it before leaving."""


class SupervisorWifiHop(WifiHop):
    """Hop through the Supervisor at `base_url` (e.g. `http://supervisor`) with `token`.

    `interface` picks the wireless interface (default: a non-primary one, else the first).
    `home_wifi=(ssid, psk)` is required to restore a Wi-Fi-only host (the PSK cannot be read).
    """

    backend = HopBackend.SUPERVISOR

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        token: str,
        interface: str | None = None,
        home_wifi: tuple[str, str] | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        settle_timeout: float = DEFAULT_SETTLE_TIMEOUT,
        check_access_points: bool = True,
        **options: Unpack[WifiHopOptions],
    ) -> None:
        super().__init__(**options)
        self._api = SupervisorNetworkApi(
            session, base_url=base_url, token=token, update_timeout=request_timeout
        )
        self._wanted_interface = interface
        self._home_wifi = home_wifi
        self._request_timeout = request_timeout
        self._poll_interval = poll_interval
        self._settle_timeout = settle_timeout
        self._check_access_points = check_access_points
        self._interface: str | None = None
        self._previous: dict[str, Any] | None = None
        self._our_ssid: str | None = None
        self._update_unsettled = False
        self._stale: list[str] = []

    def __repr__(self) -> str:  # token and PSKs stay out
        return f"SupervisorWifiHop(base_url={self._api.base_url!r}, interface={self._interface!r})"

    # -- calls on the chosen interface --------------------------------------------------------

    @property
    def _iface(self) -> str:
        """The interface `_inspect` chose (`prepare()` runs before any join, scan or restore)."""
        return str(self._interface)

    async def _interface_info(self) -> dict[str, Any]:
        return await self._api.interface_info(self._iface)

    async def _update(self, body: dict[str, Any]) -> None:
        await self._api.update(self._iface, body)

    # -- inspect ------------------------------------------------------------------------------

    async def _inspect(self) -> HopPlan:
        try:
            info = await self._api.network_info()
        except SupervisorHTTPError as err:
            raise HopError(HopErrorCode.BACKEND_UNAVAILABLE, str(err)) from err
        interfaces = [i for i in info.get("interfaces") or [] if isinstance(i, dict)]
        wifi = [i for i in interfaces if i.get("type") == "wireless"]
        if self._wanted_interface is not None:
            wifi = [i for i in wifi if i.get("interface") == self._wanted_interface]
        if not wifi:
            raise HopError(HopErrorCode.NO_WIFI_INTERFACE, "the Supervisor reports no Wi-Fi")

        def carries_lan(struct: dict[str, Any]) -> bool:
            others = [i for i in interfaces if i is not struct and i.get("connected")]
            return bool(struct.get("connected")) and (bool(struct.get("primary")) or not others)

        wifi.sort(key=carries_lan)  # a spare adapter first (spec §0.4)
        chosen = wifi[0]
        self._interface = str(chosen["interface"])
        self._previous = chosen
        networks = tuple(n for i in interfaces for n in interface_networks(i))
        return HopPlan(
            HopBackend.SUPERVISOR,
            self._interface,
            carries_lan(chosen),
            networks,
            self._confirm_wifi_only,
        )

    async def prepare(self) -> HopPlan:
        """As `WifiHop.prepare`; a Wi-Fi-only host also needs `home_wifi` (PSK not readable)."""
        plan = await super().prepare()
        if plan.carries_lan and self._home_wifi is None:
            raise HopError(
                HopErrorCode.NEEDS_HOME_CREDENTIALS,
                f"{plan.interface} carries the LAN; the home SSID/PSK is needed to restore it",
            )
        return plan

    # -- scan ---------------------------------------------------------------------------------

    async def _scan(self) -> list[str]:
        """`/accesspoints` runs RequestScan and sleeps 5 s itself (spec §1.1)."""
        try:
            aps = await self._api.access_points(self._iface)
        except SupervisorHTTPError as err:
            raise HopError(HopErrorCode.BACKEND_UNAVAILABLE, str(err)) from err
        return [str(ap["ssid"]) for ap in aps if ap.get("ssid")]

    async def _scan_wait(self, interval: float) -> None:
        await asyncio.sleep(min(interval, self._poll_interval))

    # -- join ---------------------------------------------------------------------------------

    async def _failure_code(self, target: HopTarget) -> HopErrorCode:
        """The Supervisor only says "Activating connection failed": ask whether the AP is there."""
        if not self._check_access_points:
            return HopErrorCode.ACTIVATION_FAILED
        try:
            aps = await self._api.access_points(self._iface)
        except (HopError, SupervisorHTTPError) as err:
            _LOGGER.debug("Access point scan failed: %s", err)
            return HopErrorCode.ACTIVATION_FAILED
        ssids = {ap.get("ssid") for ap in aps}
        if target.ssid not in ssids:
            return HopErrorCode.AP_MISSING
        return HopErrorCode.WRONG_PSK if target.psk is not None else HopErrorCode.ACTIVATION_FAILED

    async def _join(self, target: HopTarget) -> JoinedNetwork:
        await self._leave()
        self._our_ssid = target.ssid
        try:
            await self._update(update_body(target))
        except TimeoutError:
            # The Supervisor shields the change: it may still complete (spec §1.1).
            self._update_unsettled = True
            raise HopError(
                HopErrorCode.ACTIVATION_TIMEOUT,
                f"the Supervisor did not answer within {self._request_timeout:.0f} s",
            ) from None
        except SupervisorHTTPError as err:
            if err.status in (401, 403):
                raise HopError(HopErrorCode.BACKEND_UNAVAILABLE, str(err)) from err
            if ACTIVATION_FAILED_TEXT in err.message:
                self._stale.append(target.ssid)
                code = await self._failure_code(target)
                raise HopError(code, f"joining {target.ssid} failed: {err.message}") from err
            raise HopError(HopErrorCode.ACTIVATION_FAILED, err.message) from err
        address = await self._await_address(target)
        joined = JoinedNetwork(self._interface or "", address, target.ssid)
        self._emit_link(LinkEvent(target.ssid, True, address))
        return joined

    async def _await_address(self, target: HopTarget) -> IPv4Interface:
        """Poll the interface until it is on `target` with the expected address."""
        seen: list[str] = []
        try:
            async with asyncio.timeout(target.timeout):
                while True:
                    info = await self._interface_info()
                    ipv4 = info.get("ipv4") or {}
                    seen = [str(a) for a in ipv4.get("address") or []]
                    on_target = (info.get("wifi") or {}).get("ssid") == target.ssid
                    if info.get("connected") and on_target and str(target.address) in seen:
                        return target.address
                    await asyncio.sleep(self._poll_interval)
        except TimeoutError:
            raise HopError(
                HopErrorCode.NO_ADDRESS, f"{target.ssid}: expected {target.address}, saw {seen}"
            ) from None
        except SupervisorHTTPError as err:
            raise HopError(HopErrorCode.BACKEND_UNAVAILABLE, str(err)) from err

    async def _leave(self) -> None:
        """Delete our profile while it is still active (afterwards the API cannot, spec §1.3)."""
        ssid = self._our_ssid
        if ssid is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._settle_timeout if self._update_unsettled else 0)
        while True:
            info = await self._interface_info()
            active = info.get("connected") and (info.get("wifi") or {}).get("ssid") == ssid
            if active or loop.time() >= deadline:
                break
            await asyncio.sleep(self._poll_interval)
        self._update_unsettled = False
        self._our_ssid = None
        if active:
            await self._update({"enabled": False})
            self._emit_link(LinkEvent(ssid, False))
        elif ssid not in self._stale:
            self._stale.append(ssid)

    # -- restore ------------------------------------------------------------------------------

    async def _restore(self) -> RestoreResult:
        if self._our_ssid is None and not self._stale:
            return RestoreResult(True, "nothing")
        problems: list[str] = []
        try:
            await self._leave()
        except (HopError, SupervisorHTTPError) as err:
            problems.append(f"could not remove the hop profile: {err}")
        previous = self._previous or {}
        home_ssid = (previous.get("wifi") or {}).get("ssid")
        if previous.get("connected") and home_ssid:
            if self._home_wifi is not None and self._home_wifi[0] == home_ssid:
                try:
                    await self._update(home_body(previous, *self._home_wifi))
                except (HopError, SupervisorHTTPError, TimeoutError) as err:
                    problems.append(f"re-joining {home_ssid} failed: {err!r}")
            else:
                problems.append(f"was on {home_ssid}; its PSK is unknown, not re-joined")
        if self._stale:
            problems.append(
                "inactive saved profile(s) the API cannot delete: " + ", ".join(self._stale)
            )
        self._stale.clear()
        return RestoreResult(not problems, "supervisor", "; ".join(problems))
