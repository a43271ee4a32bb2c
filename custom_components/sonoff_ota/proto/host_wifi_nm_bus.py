"""A client for NetworkManager's D-Bus API: one connection, its calls and its signals.

`NmBus` opens the (system) bus with dbus-fast, subscribes to the `StateChanged` signals and
to NM leaving the bus, and answers calls and property reads; a lost connection or a vanished
NM raises `HopError(bus_lost)` from every call and wait, until `reconnect()`. Signals wake
`waiter()`s, so callers wait on events and never poll. It knows NM's object model (devices,
addresses) but decides nothing: `host_wifi_nm.NmWifiHop` does. Facts:
shared/spec/host-wifi-hopping.md §2.

Only the low-level dbus-fast API is used (`Message`, `bus.call`, `add_message_handler`) so the
code works with both dbus-fast 2.x (HA's pin) and 5.x. No Home Assistant imports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
import contextlib
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
import logging
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from .host_wifi_nm_wire import (
    ACTIVE_IFACE,
    DBUS_NAME,
    DBUS_PATH,
    DEVICE_IFACE,
    IP4_IFACE,
    NM_BUS,
    NM_GONE_ERRORS,
    PROPS_IFACE,
    WIRELESS_IFACE,
)
from .host_wifi_types import HopError, HopErrorCode, parse_cidr

_LOGGER = logging.getLogger(__name__)


class NmCallError(Exception):
    """NetworkManager answered a call with a D-Bus error."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name


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
class NmDevice:
    """A NetworkManager device as a hop sees it: its active connection and IPv4 networks."""

    path: str
    interface: str
    device_type: int
    state: int
    active: str
    """The active connection's object path, "/" for none."""
    networks: tuple[IPv4Network, ...]
    default: bool
    """The active connection carries the default route."""


class NmBus:
    """One D-Bus connection to NetworkManager at `address` (None = the system bus).

    It can be closed and opened again; what the signals said survives that: `active_state`
    maps each active connection's path to its last (state, reason) from `StateChanged`, and
    `device_reason` is the last non-zero reason of the device at `device_path`. `lost` is set
    when the connection or NM's presence on the bus goes away.
    """

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._bus: MessageBus | None = None
        self._lost = False
        self._disconnect_watch: asyncio.Task[None] | None = None
        self._notifier = _Notifier()
        self.device_path: str | None = None
        """The device whose `StateChanged` reasons land in `device_reason`."""
        self.active_state: dict[str, tuple[int, int]] = {}
        self.device_reason = 0

    @property
    def lost(self) -> bool:
        """The connection or NM's presence on the bus is gone (calls raise `bus_lost`)."""
        return self._lost

    @property
    def is_open(self) -> bool:
        """A connection is open (it may be lost meanwhile; see `lost`)."""
        return self._bus is not None

    def waiter(self) -> asyncio.Future[None]:
        """A future resolved at the next signal or bus loss (then re-check the state)."""
        return self._notifier.waiter()

    async def open(self) -> None:
        """Connect (unless open and not lost), subscribe, check NM is on the bus."""
        if self._bus is not None and not self._lost:
            return
        await self.close()
        try:
            bus = await _connect(self._address)
        except Exception as err:
            raise HopError(
                HopErrorCode.BACKEND_UNAVAILABLE, f"NetworkManager's D-Bus unreachable: {err!r}"
            ) from err
        self._bus = bus
        self._lost = False
        bus.add_message_handler(self._on_message)
        self._disconnect_watch = asyncio.ensure_future(self._watch_disconnect(bus))
        await self.add_match(
            f"type='signal',sender='{NM_BUS}',interface='{ACTIVE_IFACE}',member='StateChanged'"
        )
        await self.add_match(
            f"type='signal',sender='{DBUS_NAME}',interface='{DBUS_NAME}',"
            f"member='NameOwnerChanged',arg0='{NM_BUS}'"
        )
        (has_owner,) = await self.call(
            DBUS_PATH, DBUS_NAME, "NameHasOwner", "s", [NM_BUS], destination=DBUS_NAME
        )
        if not has_owner:
            await self.close()
            raise HopError(HopErrorCode.BACKEND_UNAVAILABLE, "NetworkManager is not on the bus")

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

    async def close(self) -> None:
        """Disconnect (if connected); a later `open()` starts afresh."""
        bus, self._bus = self._bus, None
        watch, self._disconnect_watch = self._disconnect_watch, None
        if bus is not None:
            bus.disconnect()
        if watch is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch, 5)
        self._lost = False

    async def add_match(self, rule: str) -> None:
        """Subscribe to the signals `rule` matches."""
        await self.call(DBUS_PATH, DBUS_NAME, "AddMatch", "s", [rule], destination=DBUS_NAME)

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
            self.active_state[msg.path] = (int(msg.body[0]), int(msg.body[1]))
            self._notifier.notify()
        elif (
            msg.interface == DEVICE_IFACE
            and self.device_path is not None
            and msg.path == self.device_path
        ):
            reason = int(msg.body[2])
            if reason:
                self.device_reason = reason
            self._notifier.notify()

    async def call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        *,
        destination: str = NM_BUS,
    ) -> list[Any]:
        """Call `member`; raise `NmCallError` for NM's D-Bus errors, `bus_lost` for a lost bus."""
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
            if name in NM_GONE_ERRORS:  # NM itself left the bus (crash/restart)
                self._mark_lost()
                raise HopError(HopErrorCode.BUS_LOST, f"NetworkManager is gone: {name}: {text}")
            raise NmCallError(name, text)
        return list(reply.body)

    async def get(self, path: str, interface: str, prop: str) -> Any:
        """Read property `prop` of `interface` on `path`."""
        (value,) = await self.call(path, PROPS_IFACE, "Get", "ss", [interface, prop])
        return value.value if isinstance(value, Variant) else value

    async def wait(self, check: Callable[[], bool]) -> None:
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

    async def device_info(self, path: str) -> NmDevice:
        """The device at `path`, with its active connection's networks."""
        interface = str(await self.get(path, DEVICE_IFACE, "Interface"))
        device_type = int(await self.get(path, DEVICE_IFACE, "DeviceType"))
        state = int(await self.get(path, DEVICE_IFACE, "State"))
        active = str(await self.get(path, DEVICE_IFACE, "ActiveConnection"))
        networks: tuple[IPv4Network, ...] = ()
        default = False
        if active != "/":
            ip4 = str(await self.get(active, ACTIVE_IFACE, "Ip4Config"))
            networks = tuple(i.network for i in await self.addresses(ip4))
            default = bool(await self.get(active, ACTIVE_IFACE, "Default"))
        return NmDevice(path, interface, device_type, state, active, networks, default)

    async def addresses(self, ip4_path: str) -> list[IPv4Interface]:
        """The IPv4 addresses of the IP4Config at `ip4_path` (none for "/")."""
        if ip4_path == "/":
            return []
        data = await self.get(ip4_path, IP4_IFACE, "AddressData")
        result = []
        for entry in data:
            address = parse_cidr(f"{entry['address'].value}/{entry['prefix'].value}")
            if address is not None:
                result.append(address)
        return result

    async def watch_device(self, path: str) -> None:
        """Subscribe to the state and access-point signals of the device at `path`."""
        await self.add_match(
            f"type='signal',sender='{NM_BUS}',interface='{DEVICE_IFACE}',"
            f"member='StateChanged',path='{path}'"
        )
        await self.add_match(
            f"type='signal',sender='{NM_BUS}',interface='{WIRELESS_IFACE}',path='{path}'"
        )

    async def reconnect(self, timeout: float, delay: float) -> bool:  # noqa: ASYNC109
        """Close and open again, retrying every `delay` s for `timeout` s; False if it failed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self.close()
        while True:
            try:
                await self.open()
                return True
            except HopError:
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(delay)
