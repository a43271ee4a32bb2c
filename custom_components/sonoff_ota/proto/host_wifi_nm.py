"""Network hop through NetworkManager over D-Bus (dbus-fast, low-level API only).

Facts: shared/spec/host-wifi-hopping.md §2. The safety net is an NM checkpoint on the Wi-Fi device
with a rollback timer: if HA dies mid-hop NM restores the old state by itself (§2.2 step 3).
Profiles are added with `AddAndActivateConnection2` and `persist=volatile` (ITEAD) or `memory`
(FinalStage: a volatile profile is deleted on the first AP drop, spec §3), static address, no
gateway (`never-default`), no DNS (`ignore-auto-dns`). Activation is followed through
`Connection.Active.StateChanged` signals, subscribed BEFORE the call (spec §2.2 step 5).

Only the low-level dbus-fast API is used (`Message`, `bus.call`, `add_message_handler`) so the
code works with both dbus-fast 2.x (HA's pin) and 5.x.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
import contextlib
from dataclasses import dataclass
import functools
from ipaddress import IPv4Interface, IPv4Network
import logging
from typing import Any, Final
import uuid

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from .host_wifi import (
    HOP_NETWORKS,
    HopBackend,
    HopError,
    HopErrorCode,
    HopPlan,
    HopTarget,
    JoinedNetwork,
    LinkCallback,
    LinkEvent,
    RestoreResult,
    WifiHop,
    parse_cidr,
)

_LOGGER = logging.getLogger(__name__)

NM_BUS: Final = "org.freedesktop.NetworkManager"
NM_PATH: Final = "/org/freedesktop/NetworkManager"
NM_IFACE: Final = "org.freedesktop.NetworkManager"
DEVICE_IFACE: Final = "org.freedesktop.NetworkManager.Device"
WIRELESS_IFACE: Final = "org.freedesktop.NetworkManager.Device.Wireless"
ACTIVE_IFACE: Final = "org.freedesktop.NetworkManager.Connection.Active"
IP4_IFACE: Final = "org.freedesktop.NetworkManager.IP4Config"
AP_IFACE: Final = "org.freedesktop.NetworkManager.AccessPoint"
SETTINGS_CONN_IFACE: Final = "org.freedesktop.NetworkManager.Settings.Connection"
PROPS_IFACE: Final = "org.freedesktop.DBus.Properties"
DBUS_NAME: Final = "org.freedesktop.DBus"
DBUS_PATH: Final = "/org/freedesktop/DBus"
UNKNOWN_METHOD: Final = "org.freedesktop.DBus.Error.UnknownMethod"
_NM_GONE_ERRORS: Final = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.Disconnected",
    }
)

DEVICE_TYPE_WIFI: Final = 2
DEVICE_STATE_ACTIVATED: Final = 100
ACTIVE_ACTIVATING: Final = 1
ACTIVE_ACTIVATED: Final = 2
ACTIVE_DEACTIVATED: Final = 4
CHECKPOINT_DELETE_NEW_CONNECTIONS: Final = 0x02
CHECKPOINT_DISCONNECT_NEW_DEVICES: Final = 0x04
DEFAULT_CHECKPOINT_TIMEOUT: Final = 900
"""Seconds until NM rolls back by itself; renewed at every join (the whole flash fits)."""
DEFAULT_RECONNECT_TIMEOUT: Final = 30.0
DEFAULT_RECONNECT_DELAY: Final = 1.0
DEFAULT_REACTIVATE_BACKOFF: Final = 2.0

# NMDeviceStateReason values (nm-dbus-interface.h, spec §2.2 step 5).
_DEVICE_REASON_CODES: Final[dict[int, HopErrorCode]] = {
    5: HopErrorCode.NO_ADDRESS,  # IP_CONFIG_UNAVAILABLE
    7: HopErrorCode.WRONG_PSK,  # NO_SECRETS
    8: HopErrorCode.WRONG_PSK,  # SUPPLICANT_DISCONNECT (4-way handshake failed)
    9: HopErrorCode.WRONG_PSK,  # SUPPLICANT_CONFIG_FAILED
    10: HopErrorCode.WRONG_PSK,  # SUPPLICANT_FAILED
    11: HopErrorCode.WRONG_PSK,  # SUPPLICANT_TIMEOUT
    17: HopErrorCode.NO_ADDRESS,  # DHCP_FAILED
    53: HopErrorCode.AP_MISSING,  # SSID_NOT_FOUND
    64: HopErrorCode.NO_ADDRESS,  # IP_ADDRESS_DUPLICATE (someone else has 192.168.4.2)
}
# NMActiveConnectionStateReason values.
_ACTIVE_REASON_CODES: Final[dict[int, HopErrorCode]] = {
    5: HopErrorCode.NO_ADDRESS,  # IP_CONFIG_INVALID
    6: HopErrorCode.ACTIVATION_TIMEOUT,  # CONNECT_TIMEOUT
    9: HopErrorCode.WRONG_PSK,  # NO_SECRETS
}


def failure_code(active_reason: int, device_reason: int) -> HopErrorCode:
    """Map NM's deactivation reasons to a hop error code (the device reason is more specific)."""
    if device_reason in _DEVICE_REASON_CODES:
        return _DEVICE_REASON_CODES[device_reason]
    return _ACTIVE_REASON_CODES.get(active_reason, HopErrorCode.ACTIVATION_FAILED)


class NmCallError(Exception):
    """NetworkManager answered a call with a D-Bus error."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name


def connection_settings(
    target: HopTarget, interface: str, *, conn_uuid: str | None = None
) -> dict[str, dict[str, Variant]]:
    """The `a{sa{sv}}` profile for `target` (spec §2.3): static address, no gateway, no DNS."""
    settings: dict[str, dict[str, Variant]] = {
        "connection": {
            "id": Variant("s", f"sonoff-ota {target.ssid}"),
            "uuid": Variant("s", conn_uuid or str(uuid.uuid4())),
            "type": Variant("s", "802-11-wireless"),
            "interface-name": Variant("s", interface),
            "autoconnect": Variant("b", target.reactivate_on_reappear),
        },
        "802-11-wireless": {
            "ssid": Variant("ay", target.ssid.encode()),
            "mode": Variant("s", "infrastructure"),
        },
        "ipv4": {
            "method": Variant("s", "manual"),
            "address-data": Variant(
                "aa{sv}",
                [
                    {
                        "address": Variant("s", str(target.address.ip)),
                        "prefix": Variant("u", target.address.network.prefixlen),
                    }
                ],
            ),
            "never-default": Variant("b", True),
            "ignore-auto-dns": Variant("b", True),
            "may-fail": Variant("b", False),
        },
        # "disabled" needs NM >= 1.20; "ignore" works everywhere and leaves IPv6 alone.
        "ipv6": {"method": Variant("s", "ignore")},
    }
    if target.psk is not None:
        settings["802-11-wireless-security"] = {
            "key-mgmt": Variant("s", "wpa-psk"),
            "psk": Variant("s", target.psk),
        }
    return settings


wait_for_bus_disconnect: Callable[[MessageBus], Awaitable[None]] = MessageBus.wait_for_disconnect
"""`MessageBus.wait_for_disconnect`, typed (dbus-fast leaves it unannotated)."""


async def _connect(bus_address: str | None) -> MessageBus:
    bus = MessageBus(bus_address=bus_address, bus_type=BusType.SYSTEM)
    return await bus.connect()


async def networkmanager_available(bus_address: str | None = None) -> bool:
    """True when the bus is reachable and `org.freedesktop.NetworkManager` has an owner."""
    try:
        bus = await _connect(bus_address)
    except Exception as err:  # any failure here just means "not this backend"
        _LOGGER.debug("D-Bus not reachable (%s): %r", bus_address or "system bus", err)
        return False
    try:
        reply = await bus.call(
            Message(
                destination=DBUS_NAME,
                path=DBUS_PATH,
                interface=DBUS_NAME,
                member="NameHasOwner",
                signature="s",
                body=[NM_BUS],
            )
        )
        return reply.message_type is MessageType.METHOD_RETURN and bool(reply.body[0])
    except Exception as err:
        _LOGGER.debug("NameHasOwner failed: %r", err)
        return False
    finally:
        bus.disconnect()
        with contextlib.suppress(Exception):
            await wait_for_bus_disconnect(bus)


class _Notifier:
    """Wakes every waiter on each D-Bus signal or bus loss (waiters then re-check state)."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def waiter(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        fut.add_done_callback(self._waiters.discard)
        return fut

    def notify(self) -> None:
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_result(None)


@dataclass(slots=True)
class _DeviceInfo:
    path: str
    interface: str
    device_type: int
    state: int
    active: str
    networks: tuple[IPv4Network, ...]
    default: bool


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
        confirm_wifi_only: bool = False,
        checkpoint_timeout: int = DEFAULT_CHECKPOINT_TIMEOUT,
        bind_activation: str | None = None,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
        reconnect_delay: float = DEFAULT_RECONNECT_DELAY,
        reactivate_backoff: float = DEFAULT_REACTIVATE_BACKOFF,
        hop_networks: Iterable[IPv4Network] = HOP_NETWORKS,
        on_link: LinkCallback | None = None,
    ) -> None:
        super().__init__(
            confirm_wifi_only=confirm_wifi_only, hop_networks=hop_networks, on_link=on_link
        )
        self._bus_address = bus_address
        self._wanted_interface = interface
        self._checkpoint_timeout = checkpoint_timeout
        self._bind_activation = bind_activation
        self._reconnect_timeout = reconnect_timeout
        self._reconnect_delay = reconnect_delay
        self._reactivate_backoff = reactivate_backoff
        self._bus: MessageBus | None = None
        self._lost = False
        self._disconnect_watch: asyncio.Task[None] | None = None
        self._notifier = _Notifier()
        self._active_state: dict[str, tuple[int, int]] = {}
        self._device_reason = 0
        self._device: _DeviceInfo | None = None
        self._home_settings: str | None = None
        self._checkpoint: str | None = None
        self._added_settings: list[str] = []
        self._current_active: str | None = None
        self._keeper: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        iface = self._device.interface if self._device else self._wanted_interface
        return f"NmWifiHop(interface={iface!r}, checkpoint={self._checkpoint!r})"

    # -- bus plumbing -------------------------------------------------------------------------

    async def _open_bus(self) -> MessageBus:
        if self._bus is not None and not self._lost:
            return self._bus
        await self._close_bus()
        try:
            bus = await _connect(self._bus_address)
        except Exception as err:
            raise HopError(
                HopErrorCode.BACKEND_UNAVAILABLE, f"NetworkManager's D-Bus unreachable: {err!r}"
            ) from err
        self._bus = bus
        self._lost = False
        bus.add_message_handler(self._on_message)
        self._disconnect_watch = asyncio.ensure_future(self._watch_disconnect(bus))
        await self._add_match(
            f"type='signal',sender='{NM_BUS}',interface='{ACTIVE_IFACE}',member='StateChanged'"
        )
        await self._add_match(
            f"type='signal',sender='{DBUS_NAME}',interface='{DBUS_NAME}',"
            f"member='NameOwnerChanged',arg0='{NM_BUS}'"
        )
        (has_owner,) = await self._call(
            DBUS_PATH, DBUS_NAME, "NameHasOwner", "s", [NM_BUS], destination=DBUS_NAME
        )
        if not has_owner:
            await self._close_bus()
            raise HopError(HopErrorCode.BACKEND_UNAVAILABLE, "NetworkManager is not on the bus")
        return bus

    async def _watch_disconnect(self, bus: MessageBus) -> None:
        with contextlib.suppress(Exception):
            await wait_for_bus_disconnect(bus)
        if self._bus is bus:
            self._mark_lost()

    def _mark_lost(self) -> None:
        """Our bus connection or NM's presence on it is gone; waiters raise `bus_lost`."""
        if not self._lost:
            _LOGGER.warning("Lost the D-Bus connection to NetworkManager")
        self._lost = True
        self._notifier.notify()

    async def _close_bus(self) -> None:
        bus, self._bus = self._bus, None
        watch, self._disconnect_watch = self._disconnect_watch, None
        if bus is not None:
            bus.disconnect()
        if watch is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch, 5)
        self._lost = False

    async def _add_match(self, rule: str) -> None:
        await self._call(DBUS_PATH, DBUS_NAME, "AddMatch", "s", [rule], destination=DBUS_NAME)

    def _on_message(self, msg: Message) -> None:
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.member == "NameOwnerChanged"
            and msg.interface == DBUS_NAME
        ):
            if msg.body and msg.body[0] == NM_BUS and not msg.body[2]:
                self._mark_lost()
            return
        if msg.message_type is not MessageType.SIGNAL or msg.member != "StateChanged":
            if msg.message_type is MessageType.SIGNAL and msg.interface == WIRELESS_IFACE:
                self._notifier.notify()
            return
        if msg.interface == ACTIVE_IFACE and msg.path:
            self._active_state[msg.path] = (int(msg.body[0]), int(msg.body[1]))
            self._notifier.notify()
        elif msg.interface == DEVICE_IFACE and self._device and msg.path == self._device.path:
            reason = int(msg.body[2])
            if reason:
                self._device_reason = reason
            self._notifier.notify()

    async def _call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        *,
        destination: str = NM_BUS,
    ) -> list[Any]:
        if self._bus is None or self._lost:
            raise HopError(HopErrorCode.BUS_LOST, "the D-Bus connection is gone")
        try:
            reply = await self._bus.call(
                Message(
                    destination=destination,
                    path=path,
                    interface=interface,
                    member=member,
                    signature=signature,
                    body=body or [],
                )
            )
        except (OSError, EOFError) as err:
            self._mark_lost()
            raise HopError(HopErrorCode.BUS_LOST, f"D-Bus call {member} failed: {err!r}") from err
        except Exception as err:
            if self._bus.connected:
                raise  # a local error (e.g. marshalling), not the bus
            self._mark_lost()
            raise HopError(HopErrorCode.BUS_LOST, f"D-Bus call {member} failed: {err!r}") from err
        if reply.message_type is MessageType.ERROR:
            name = reply.error_name or "unknown"
            text = str(reply.body[0]) if reply.body else ""
            if name in _NM_GONE_ERRORS:  # NM itself left the bus (crash/restart)
                self._mark_lost()
                raise HopError(HopErrorCode.BUS_LOST, f"NetworkManager is gone: {name}: {text}")
            raise NmCallError(name, text)
        return list(reply.body)

    async def _get(self, path: str, interface: str, prop: str) -> Any:
        (value,) = await self._call(path, PROPS_IFACE, "Get", "ss", [interface, prop])
        return value.value if isinstance(value, Variant) else value

    async def _wait(self, check: Callable[[], bool]) -> None:
        """Wait (signal-driven, no polling) until `check()` holds; raise `bus_lost`."""
        while True:
            waiter = self._notifier.waiter()
            if self._lost:
                waiter.cancel()
                raise HopError(HopErrorCode.BUS_LOST, "lost the D-Bus connection to NM")
            if check():
                waiter.cancel()
                return
            await waiter

    # -- inspect ------------------------------------------------------------------------------

    async def _device_info(self, path: str) -> _DeviceInfo:
        interface = str(await self._get(path, DEVICE_IFACE, "Interface"))
        device_type = int(await self._get(path, DEVICE_IFACE, "DeviceType"))
        state = int(await self._get(path, DEVICE_IFACE, "State"))
        active = str(await self._get(path, DEVICE_IFACE, "ActiveConnection"))
        networks: tuple[IPv4Network, ...] = ()
        default = False
        if active != "/":
            ip4 = str(await self._get(active, ACTIVE_IFACE, "Ip4Config"))
            networks = tuple(i.network for i in await self._addresses(ip4))
            default = bool(await self._get(active, ACTIVE_IFACE, "Default"))
        return _DeviceInfo(path, interface, device_type, state, active, networks, default)

    async def _addresses(self, ip4_path: str) -> list[IPv4Interface]:
        if ip4_path == "/":
            return []
        data = await self._get(ip4_path, IP4_IFACE, "AddressData")
        result = []
        for entry in data:
            address = parse_cidr(f"{entry['address'].value}/{entry['prefix'].value}")
            if address is not None:
                result.append(address)
        return result

    async def _inspect(self) -> HopPlan:
        await self._open_bus()
        try:
            (paths,) = await self._call(NM_PATH, NM_IFACE, "GetDevices")
            devices = [await self._device_info(str(p)) for p in paths]
        except NmCallError as err:
            raise HopError(HopErrorCode.BACKEND_UNAVAILABLE, str(err)) from err
        devices = [d for d in devices if d.interface != "lo"]

        def carries_lan(dev: _DeviceInfo) -> bool:
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
        self._home_settings = None
        if device.active != "/":
            self._home_settings = str(await self._get(device.active, ACTIVE_IFACE, "Connection"))
        networks = tuple(n for d in devices for n in d.networks)
        await self._watch_device(device.path)
        return HopPlan(
            HopBackend.NETWORKMANAGER,
            device.interface,
            carries_lan(device),
            networks,
            self._confirm_wifi_only,
        )

    async def _watch_device(self, path: str) -> None:
        await self._add_match(
            f"type='signal',sender='{NM_BUS}',interface='{DEVICE_IFACE}',"
            f"member='StateChanged',path='{path}'"
        )
        await self._add_match(
            f"type='signal',sender='{NM_BUS}',interface='{WIRELESS_IFACE}',path='{path}'"
        )

    async def _ensure_bus(self) -> _DeviceInfo:
        """Reopen the bus after a `restore()` (it closes it) so a later hop can run."""
        device = self._device
        assert device is not None
        if self._lost:  # mid-hop: restore() reconnects and rolls back, not a new hop
            raise HopError(HopErrorCode.BUS_LOST, "lost the D-Bus connection to NM")
        if self._bus is None:
            await self._open_bus()
            await self._watch_device(device.path)
        return device

    # -- scan ---------------------------------------------------------------------------------

    async def _scan(self) -> list[str]:
        device = await self._ensure_bus()
        with contextlib.suppress(NmCallError):  # "not allowed immediately after a scan" etc.
            await self._call(device.path, WIRELESS_IFACE, "RequestScan", "a{sv}", [{}])
        (aps,) = await self._call(device.path, WIRELESS_IFACE, "GetAllAccessPoints")
        ssids = []
        for ap in aps:
            with contextlib.suppress(NmCallError):  # APs vanish while we look
                ssid = bytes(await self._get(str(ap), AP_IFACE, "Ssid"))
                ssids.append(ssid.decode(errors="replace"))
        return ssids

    async def _scan_wait(self, interval: float) -> None:
        waiter = self._notifier.waiter()  # AccessPointAdded / LastScan changes wake us early
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, interval)
        if self._lost:
            raise HopError(HopErrorCode.BUS_LOST, "lost D-Bus while scanning")

    # -- join ---------------------------------------------------------------------------------

    async def _ensure_checkpoint(self, device: str) -> None:
        if self._checkpoint is not None:
            with contextlib.suppress(NmCallError):
                await self._call(
                    NM_PATH,
                    NM_IFACE,
                    "CheckpointAdjustRollbackTimeout",
                    "ou",
                    [self._checkpoint, self._checkpoint_timeout],
                )
            return
        flags = CHECKPOINT_DELETE_NEW_CONNECTIONS | CHECKPOINT_DISCONNECT_NEW_DEVICES
        try:
            (path,) = await self._call(
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

    async def _add_and_activate(self, target: HopTarget, device: _DeviceInfo) -> tuple[str, str]:
        settings = connection_settings(target, device.interface)
        persist = "memory" if target.reactivate_on_reappear else "volatile"
        options = {"persist": Variant("s", persist)}
        if self._bind_activation is not None:
            options["bind-activation"] = Variant("s", self._bind_activation)
        try:
            settings_path, active_path, _ = await self._call(
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
            settings_path, active_path = await self._call(
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
        if active_path not in self._active_state:
            try:
                state = int(await self._get(active_path, ACTIVE_IFACE, "State"))
            except NmCallError:
                state = ACTIVE_DEACTIVATED  # the object is already gone
            # A signal may have arrived while we waited for the reply; it is the newer one.
            self._active_state.setdefault(active_path, (state, 0))

        def settled() -> bool:
            return self._active_state[active_path][0] in (ACTIVE_ACTIVATED, ACTIVE_DEACTIVATED)

        try:
            async with asyncio.timeout(target.timeout):
                await self._wait(settled)
        except TimeoutError:
            raise HopError(
                HopErrorCode.ACTIVATION_TIMEOUT,
                f"{target.ssid} did not activate within {target.timeout:.0f} s",
            ) from None
        state, reason = self._active_state[active_path]
        if state == ACTIVE_DEACTIVATED:
            code = failure_code(reason, self._device_reason)
            raise HopError(
                code,
                f"joining {target.ssid} failed ({code.value}; active reason {reason}, "
                f"device reason {self._device_reason})",
            )
        ip4 = str(await self._get(active_path, ACTIVE_IFACE, "Ip4Config"))
        addresses = await self._addresses(ip4)
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
            self._device_reason = 0
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
        (aps,) = await self._call(device, WIRELESS_IFACE, "GetAllAccessPoints")
        for ap in aps:
            with contextlib.suppress(NmCallError):  # APs vanish while we look
                if bytes(await self._get(str(ap), AP_IFACE, "Ssid")) == ssid.encode():
                    return str(ap)
        return None

    async def _wait_for_ap(self, device: str, ssid: str) -> str:
        """Wait (on AccessPointAdded signals) until `ssid` is visible; return the AP path."""
        while True:
            waiter = self._notifier.waiter()
            ap = await self._ap_visible(device, ssid)
            if ap is not None:
                waiter.cancel()
                return ap
            await waiter
            if self._lost:
                raise HopError(HopErrorCode.BUS_LOST, "lost D-Bus while waiting for the AP")

    def _is_deactivated(self, active_path: str) -> bool:
        return self._active_state[active_path][0] == ACTIVE_DEACTIVATED

    async def _keep_joined(
        self, target: HopTarget, device: _DeviceInfo, settings_path: str, active_path: str
    ) -> None:
        """Re-activate the profile whenever the AP comes back (FinalStage reboots, spec §3)."""
        try:
            while True:
                await self._wait(functools.partial(self._is_deactivated, active_path))
                self._joined = None
                self._emit_link(LinkEvent(target.ssid, False))
                ap = await self._wait_for_ap(device.path, target.ssid)
                self._device_reason = 0
                try:
                    (active_path,) = await self._call(
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
                    self._active_state[active_path] = (ACTIVE_DEACTIVATED, 0)
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

    async def _reconnect(self) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._reconnect_timeout
        await self._close_bus()
        while True:
            try:
                await self._open_bus()
                return True
            except HopError:
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(self._reconnect_delay)

    async def _restore(self) -> RestoreResult:
        await self._stop_keeper()
        if self._checkpoint is None and not self._added_settings:
            await self._close_bus()
            return RestoreResult(True, "nothing")
        try:
            if (self._bus is None or self._lost) and not await self._reconnect():
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
            await self._close_bus()
        self._checkpoint = None
        self._added_settings.clear()
        self._current_active = None
        return result

    async def _rollback_or_undo(self) -> RestoreResult:
        if self._checkpoint is not None:
            try:
                await self._call(NM_PATH, NM_IFACE, "CheckpointRollback", "o", [self._checkpoint])
            except NmCallError as err:
                _LOGGER.warning("Checkpoint rollback failed (%s); undoing by hand", err)
            else:
                await self._delete_added()  # normally gone already (DELETE_NEW_CONNECTIONS)
                return RestoreResult(True, "checkpoint_rollback")
        device = self._device
        assert device is not None
        if self._current_active is not None:
            with contextlib.suppress(NmCallError):
                await self._call(
                    NM_PATH, NM_IFACE, "DeactivateConnection", "o", [self._current_active]
                )
        await self._delete_added()
        detail = ""
        if self._home_settings is not None:
            try:
                await self._call(
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
                await self._call(NM_PATH, NM_IFACE, "CheckpointDestroy", "o", [self._checkpoint])
        return RestoreResult(not detail, "manual", detail)

    async def _delete_added(self) -> None:
        for path in self._added_settings:
            with contextlib.suppress(NmCallError):  # volatile ones are gone already
                await self._call(path, SETTINGS_CONN_IFACE, "Delete")
