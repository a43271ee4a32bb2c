"""Network hop through NetworkManager: the policy, over `host_wifi_nm_bus.NmBus`.

Facts: shared/spec/host-wifi-hopping.md §2. The safety net is an NM checkpoint on the Wi-Fi device
with a rollback timer: if HA dies mid-hop NM restores the old state by itself (§2.2 step 3).
Profiles (`host_wifi_nm_wire.connection_settings`) are added with `AddAndActivateConnection2`
and `persist=volatile` (ITEAD) or `memory` (FinalStage: a volatile profile is deleted on the
first AP drop, spec §3). Activation is followed through `Connection.Active.StateChanged`
signals, subscribed BEFORE the call (spec §2.2 step 5). No Home Assistant imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from ipaddress import IPv4Interface
import logging
from typing import Final, Unpack

from dbus_fast import Variant

from .host_wifi_hop import WifiHop, WifiHopOptions
from .host_wifi_nm_bus import NmBus, NmCallError, NmDevice
from .host_wifi_nm_wire import (
    ACTIVE_ACTIVATED,
    ACTIVE_DEACTIVATED,
    ACTIVE_IFACE,
    AP_IFACE,
    CHECKPOINT_DELETE_NEW_CONNECTIONS,
    CHECKPOINT_DISCONNECT_NEW_DEVICES,
    DEVICE_STATE_ACTIVATED,
    DEVICE_TYPE_WIFI,
    NM_IFACE,
    NM_PATH,
    SETTINGS_CONN_IFACE,
    UNKNOWN_METHOD,
    WIRELESS_IFACE,
    connection_settings,
    failure_code,
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

DEFAULT_CHECKPOINT_TIMEOUT: Final = 900
"""Seconds until NM rolls back by itself; renewed at every join (the whole flash fits)."""
DEFAULT_RECONNECT_TIMEOUT: Final = 30.0
DEFAULT_RECONNECT_DELAY: Final = 1.0
DEFAULT_REACTIVATE_BACKOFF: Final = 2.0


class NmWifiHop(WifiHop):
    """Hop through NetworkManager on `bus_address` (None = the system bus).

    `interface` picks the Wi-Fi device (default: a Wi-Fi device not carrying the LAN, else the
    first one). `checkpoint_timeout` is NM's own rollback timer in seconds.
    `bind_activation` ("dbus-client" per libnm; unverified on HAOS' NM, spec §5) is sent only
    when set. `on_link` hears the link going down/up while FinalStage reboots.
    """

    backend = HopBackend.NETWORKMANAGER

    def __init__(
        self,
        *,
        bus_address: str | None = None,
        interface: str | None = None,
        checkpoint_timeout: int = DEFAULT_CHECKPOINT_TIMEOUT,
        bind_activation: str | None = None,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
        reconnect_delay: float = DEFAULT_RECONNECT_DELAY,
        reactivate_backoff: float = DEFAULT_REACTIVATE_BACKOFF,
        **options: Unpack[WifiHopOptions],
    ) -> None:
        super().__init__(**options)
        self._wanted_interface = interface
        self._checkpoint_timeout = checkpoint_timeout
        self._bind_activation = bind_activation
        self._reconnect_timeout = reconnect_timeout
        self._reconnect_delay = reconnect_delay
        self._reactivate_backoff = reactivate_backoff
        self._nm = NmBus(bus_address)
        self._device: NmDevice | None = None
        self._home_settings: str | None = None
        self._checkpoint: str | None = None
        self._added_settings: list[str] = []
        self._current_active: str | None = None
        self._keeper: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        iface = self._device.interface if self._device else self._wanted_interface
        return f"NmWifiHop(interface={iface!r}, checkpoint={self._checkpoint!r})"

    # -- inspect ------------------------------------------------------------------------------

    async def _inspect(self) -> HopPlan:
        await self._nm.open()
        try:
            (paths,) = await self._nm.call(NM_PATH, NM_IFACE, "GetDevices")
            devices = [await self._nm.device_info(str(p)) for p in paths]
        except NmCallError as err:
            raise HopError(HopErrorCode.BACKEND_UNAVAILABLE, str(err)) from err
        devices = [d for d in devices if d.interface != "lo"]

        def carries_lan(dev: NmDevice) -> bool:
            if dev.state != DEVICE_STATE_ACTIVATED:
                return False
            others = [d for d in devices if d is not dev and d.networks]
            return dev.default or not others

        wifi = [d for d in devices if d.device_type == DEVICE_TYPE_WIFI]
        if self._wanted_interface is not None:
            wifi = [d for d in wifi if d.interface == self._wanted_interface]
        if not wifi:
            raise HopError(HopErrorCode.NO_WIFI_INTERFACE, "NetworkManager has no Wi-Fi device")
        wifi.sort(key=carries_lan)  # a spare adapter (second dongle) first, spec §0.4
        device = wifi[0]
        self._device = device
        self._nm.device_path = device.path
        self._home_settings = None
        if device.active != "/":
            self._home_settings = str(await self._nm.get(device.active, ACTIVE_IFACE, "Connection"))
        networks = tuple(n for d in devices for n in d.networks)
        await self._nm.watch_device(device.path)
        return HopPlan(
            HopBackend.NETWORKMANAGER,
            device.interface,
            carries_lan(device),
            networks,
            self._confirm_wifi_only,
        )

    async def _ensure_bus(self) -> NmDevice:
        """Reopen the bus after a `restore()` (it closes it) so a later hop can run."""
        device = self._device
        assert device is not None
        if self._nm.lost:  # mid-hop: restore() reconnects and rolls back, not a new hop
            raise HopError(HopErrorCode.BUS_LOST, "lost the D-Bus connection to NM")
        if not self._nm.is_open:
            await self._nm.open()
            await self._nm.watch_device(device.path)
        return device

    # -- scan ---------------------------------------------------------------------------------

    async def _scan(self) -> list[str]:
        device = await self._ensure_bus()
        with contextlib.suppress(NmCallError):  # "not allowed immediately after a scan" etc.
            await self._nm.call(device.path, WIRELESS_IFACE, "RequestScan", "a{sv}", [{}])
        (aps,) = await self._nm.call(device.path, WIRELESS_IFACE, "GetAllAccessPoints")
        ssids = []
        for ap in aps:
            with contextlib.suppress(NmCallError):  # APs vanish while we look
                ssid = bytes(await self._nm.get(str(ap), AP_IFACE, "Ssid"))
                ssids.append(ssid.decode(errors="replace"))
        return ssids

    async def _scan_wait(self, interval: float) -> None:
        waiter = self._nm.waiter()  # AccessPointAdded / LastScan changes wake us early
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, interval)
        if self._nm.lost:
            raise HopError(HopErrorCode.BUS_LOST, "lost D-Bus while scanning")

    # -- join ---------------------------------------------------------------------------------

    async def _ensure_checkpoint(self, device: str) -> None:
        if self._checkpoint is not None:
            with contextlib.suppress(NmCallError):
                await self._nm.call(
                    NM_PATH,
                    NM_IFACE,
                    "CheckpointAdjustRollbackTimeout",
                    "ou",
                    [self._checkpoint, self._checkpoint_timeout],
                )
            return
        flags = CHECKPOINT_DELETE_NEW_CONNECTIONS | CHECKPOINT_DISCONNECT_NEW_DEVICES
        try:
            (path,) = await self._nm.call(
                NM_PATH,
                NM_IFACE,
                "CheckpointCreate",
                "aouu",
                [[device], self._checkpoint_timeout, flags],
            )
        except NmCallError as err:
            # Old NM or denied: go on without the safety net; restore() undoes by hand.
            _LOGGER.warning("No NetworkManager checkpoint (%s); restoring manually", err)
            return
        self._checkpoint = str(path)

    async def _add_and_activate(self, target: HopTarget, device: NmDevice) -> tuple[str, str]:
        settings = connection_settings(target, device.interface)
        persist = "memory" if target.reactivate_on_reappear else "volatile"
        options = {"persist": Variant("s", persist)}
        if self._bind_activation is not None:
            options["bind-activation"] = Variant("s", self._bind_activation)
        try:
            settings_path, active_path, _ = await self._nm.call(
                NM_PATH,
                NM_IFACE,
                "AddAndActivateConnection2",
                "a{sa{sv}}ooa{sv}",
                [settings, device.path, "/", options],
            )
        except NmCallError as err:
            if err.name != UNKNOWN_METHOD:
                raise
            # NM < 1.16: v1 persists to disk; restore() deletes it (spec §2.2 step 4).
            settings_path, active_path = await self._nm.call(
                NM_PATH,
                NM_IFACE,
                "AddAndActivateConnection",
                "a{sa{sv}}oo",
                [settings, device.path, "/"],
            )
        self._added_settings.append(str(settings_path))
        return str(settings_path), str(active_path)

    async def _await_activation(self, active_path: str, target: HopTarget) -> IPv4Interface:
        """Follow StateChanged of `active_path` until ACTIVATED; return the interface address."""
        if active_path not in self._nm.active_state:
            try:
                state = int(await self._nm.get(active_path, ACTIVE_IFACE, "State"))
            except NmCallError:
                state = ACTIVE_DEACTIVATED  # the object is already gone
            # A signal may have arrived while we waited for the reply; it is the newer one.
            self._nm.active_state.setdefault(active_path, (state, 0))

        def settled() -> bool:
            return self._nm.active_state[active_path][0] in (ACTIVE_ACTIVATED, ACTIVE_DEACTIVATED)

        try:
            async with asyncio.timeout(target.timeout):
                await self._nm.wait(settled)
        except TimeoutError:
            raise HopError(
                HopErrorCode.ACTIVATION_TIMEOUT,
                f"{target.ssid} did not activate within {target.timeout:.0f} s",
            ) from None
        state, reason = self._nm.active_state[active_path]
        if state == ACTIVE_DEACTIVATED:
            code = failure_code(reason, self._nm.device_reason)
            raise HopError(
                code,
                f"joining {target.ssid} failed ({code.value}; active reason {reason}, "
                f"device reason {self._nm.device_reason})",
            )
        ip4 = str(await self._nm.get(active_path, ACTIVE_IFACE, "Ip4Config"))
        addresses = await self._nm.addresses(ip4)
        if target.address not in addresses:
            raise HopError(
                HopErrorCode.NO_ADDRESS,
                f"{target.ssid}: expected {target.address}, the interface has "
                f"{[str(a) for a in addresses]}",
            )
        return target.address

    async def _join(self, target: HopTarget) -> JoinedNetwork:
        await self._stop_keeper()
        device = await self._ensure_bus()
        try:
            await self._ensure_checkpoint(device.path)
            self._nm.device_reason = 0
            settings_path, active_path = await self._add_and_activate(target, device)
            self._current_active = active_path
            address = await self._await_activation(active_path, target)
        except NmCallError as err:
            raise HopError(HopErrorCode.ACTIVATION_FAILED, str(err)) from err
        joined = JoinedNetwork(device.interface, address, target.ssid)
        self._emit_link(LinkEvent(target.ssid, True, address))
        if target.reactivate_on_reappear:
            self._keeper = asyncio.ensure_future(
                self._keep_joined(target, device, settings_path, active_path)
            )
        return joined

    async def _ap_visible(self, device: str, ssid: str) -> str | None:
        (aps,) = await self._nm.call(device, WIRELESS_IFACE, "GetAllAccessPoints")
        for ap in aps:
            with contextlib.suppress(NmCallError):  # APs vanish while we look
                if bytes(await self._nm.get(str(ap), AP_IFACE, "Ssid")) == ssid.encode():
                    return str(ap)
        return None

    async def _wait_for_ap(self, device: str, ssid: str) -> str:
        """Wait (on AccessPointAdded signals) until `ssid` is visible; return the AP path."""
        while True:
            waiter = self._nm.waiter()
            ap = await self._ap_visible(device, ssid)
            if ap is not None:
                waiter.cancel()
                return ap
            await waiter
            if self._nm.lost:
                raise HopError(HopErrorCode.BUS_LOST, "lost D-Bus while waiting for the AP")

    def _is_deactivated(self, active_path: str) -> bool:
        return self._nm.active_state[active_path][0] == ACTIVE_DEACTIVATED

    async def _keep_joined(
        self, target: HopTarget, device: NmDevice, settings_path: str, active_path: str
    ) -> None:
        """Re-activate the profile whenever the AP comes back (FinalStage reboots, spec §3)."""
        try:
            while True:
                await self._nm.wait(functools.partial(self._is_deactivated, active_path))
                self._joined = None
                self._emit_link(LinkEvent(target.ssid, False))
                ap = await self._wait_for_ap(device.path, target.ssid)
                self._nm.device_reason = 0
                try:
                    (active_path,) = await self._nm.call(
                        NM_PATH,
                        NM_IFACE,
                        "ActivateConnection",
                        "ooo",
                        [settings_path, device.path, ap],
                    )
                    active_path = str(active_path)
                    self._current_active = active_path
                    address = await self._await_activation(active_path, target)
                except (NmCallError, HopError) as err:
                    if isinstance(err, HopError) and err.code is HopErrorCode.BUS_LOST:
                        raise
                    _LOGGER.info("Re-joining %s failed (%s); retrying", target.ssid, err)
                    await asyncio.sleep(self._reactivate_backoff)
                    self._nm.active_state[active_path] = (ACTIVE_DEACTIVATED, 0)
                    continue
                self._joined = JoinedNetwork(device.interface, address, target.ssid)
                self._emit_link(LinkEvent(target.ssid, True, address))
        except HopError as err:
            _LOGGER.warning("Stopped keeping %s joined: %s", target.ssid, err)

    async def _stop_keeper(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    # -- restore ------------------------------------------------------------------------------

    async def _restore(self) -> RestoreResult:
        await self._stop_keeper()
        if self._checkpoint is None and not self._added_settings:
            await self._nm.close()
            return RestoreResult(True, "nothing")
        try:
            if (not self._nm.is_open or self._nm.lost) and not await self._nm.reconnect(
                self._reconnect_timeout, self._reconnect_delay
            ):
                return RestoreResult(
                    False,
                    "checkpoint_rollback",
                    f"D-Bus unreachable; NetworkManager rolls back by itself within "
                    f"{self._checkpoint_timeout} s",
                )
            try:
                result = await self._rollback_or_undo()
            except HopError as err:
                return RestoreResult(
                    False,
                    "checkpoint_rollback",
                    f"{err}; NetworkManager rolls back by itself within "
                    f"{self._checkpoint_timeout} s",
                )
        finally:
            await self._nm.close()
        self._checkpoint = None
        self._added_settings.clear()
        self._current_active = None
        return result

    async def _rollback_or_undo(self) -> RestoreResult:
        if self._checkpoint is not None:
            try:
                await self._nm.call(
                    NM_PATH, NM_IFACE, "CheckpointRollback", "o", [self._checkpoint]
                )
            except NmCallError as err:
                _LOGGER.warning("Checkpoint rollback failed (%s); undoing by hand", err)
            else:
                await self._delete_added()  # normally gone already (DELETE_NEW_CONNECTIONS)
                return RestoreResult(True, "checkpoint_rollback")
        device = self._device
        assert device is not None
        if self._current_active is not None:
            with contextlib.suppress(NmCallError):
                await self._nm.call(
                    NM_PATH, NM_IFACE, "DeactivateConnection", "o", [self._current_active]
                )
        await self._delete_added()
        detail = ""
        if self._home_settings is not None:
            try:
                await self._nm.call(
                    NM_PATH,
                    NM_IFACE,
                    "ActivateConnection",
                    "ooo",
                    [self._home_settings, device.path, "/"],
                )
            except NmCallError as err:
                detail = f"re-activating the home profile failed: {err}"
        if self._checkpoint is not None:
            with contextlib.suppress(NmCallError):
                await self._nm.call(NM_PATH, NM_IFACE, "CheckpointDestroy", "o", [self._checkpoint])
        return RestoreResult(not detail, "manual", detail)

    async def _delete_added(self) -> None:
        for path in self._added_settings:
            with contextlib.suppress(NmCallError):  # volatile ones are gone already
                await self._nm.call(path, SETTINGS_CONN_IFACE, "Delete")
