# ruff: noqa: N802  (D-Bus member names are CamelCase)
"""A fake NetworkManager exported with dbus-fast on a private dbus-daemon (the radio is faked).

`DBusDaemon` runs `dbus-daemon --nofork --print-address --config-file=<tmp>` as an asyncio
subprocess with a fixed unix socket address (so it can be killed and restarted at the same
address to model the bus dropping). `FakeNetworkManager` exports the NM objects the hop uses
(spec host-wifi-hopping.md §2.2, §4.2): the manager (GetDevices, AddAndActivateConnection2,
ActivateConnection, DeactivateConnection, Checkpoint*), devices eth0 + wlan0 (StateChanged,
Wireless.GetAllAccessPoints/AccessPointAdded), access points that appear and vanish, active
connections (State + StateChanged), IP4Config (AddressData), settings connections (Delete).

Radio model: a WPA AP accepts a profile whose PSK matches, an open AP one without security;
a wrong PSK fails with device reason NO_SECRETS (7) / active reason NO_SECRETS (9); a missing
SSID fails with SSID_NOT_FOUND (53). `hold_activation` keeps activations pending forever.
`on_connection(ssid, active)` callbacks fire when a connection to an SSID goes up/down, so a test
can make a listener reachable only while the matching connection is active.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
import contextlib
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
import itertools
from pathlib import Path
from typing import Annotated, Any

from dbus_fast import DBusError, PropertyAccess, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusBytes,
    DBusDict,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt32,
)
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal
import pytest_socket  # type: ignore[import-untyped,unused-ignore]

from custom_components.sonoff_ota.proto.host_wifi_nm_bus import wait_for_bus_disconnect

LOOPBACK = "127.0.0.1"
NM = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
BASE = "/org/freedesktop/NetworkManager"

ObjectPaths = Annotated[list[str], DBusSignature("ao")]
SettingsDict = Annotated[dict[str, dict[str, Variant]], DBusSignature("a{sa{sv}}")]
AddressList = Annotated[list[dict[str, Variant]], DBusSignature("aa{sv}")]
RollbackResult = Annotated[dict[str, int], DBusSignature("a{su}")]
AddAndActivate2Reply = Annotated[list[Any], DBusSignature("ooa{sv}")]
NoReply = Annotated[None, DBusSignature("")]

DEVICE_ACTIVATED = 100
DEVICE_DISCONNECTED = 30
DEVICE_PREPARE = 40
DEVICE_FAILED = 120


def _error(name: str, text: str) -> DBusError:
    return DBusError(f"{NM}.{name}", text)


class BusConfig:
    """Config file + fixed unix socket address for a private bus (written synchronously)."""

    def __init__(self, directory: Path, socket_dir: Path) -> None:
        self.socket_path = socket_dir / "bus"
        self.address = f"unix:path={self.socket_path}"
        self.config_path = directory / "bus.conf"
        self.config_path.write_text(
            '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
            ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
            "<busconfig>\n"
            "  <type>session</type>\n"
            f"  <listen>{self.address}</listen>\n"
            "  <auth>EXTERNAL</auth>\n"
            '  <policy context="default">\n'
            '    <allow send_destination="*" eavesdrop="true"/>\n'
            '    <allow eavesdrop="true"/>\n'
            '    <allow own="*"/>\n'
            "  </policy>\n"
            "</busconfig>\n"
        )


class DBusDaemon:
    """A private dbus-daemon subprocess (asyncio, no threads)."""

    def __init__(self, config: BusConfig) -> None:
        self.config = config
        self._process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return self.config.address

    async def start(self) -> str:
        self._process = await asyncio.create_subprocess_exec(
            "/usr/bin/dbus-daemon",
            "--nofork",
            "--print-address",
            f"--config-file={self.config.config_path}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 10)
        if not line:
            raise RuntimeError("dbus-daemon did not start")
        return line.decode().strip()

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            if process is not None:
                await process.wait()
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()


@dataclass
class FakeAccessPoint:
    """An access point in radio range."""

    ssid: str
    psk: str | None
    path: str = ""


@dataclass
class FakeSettings:
    """A stored profile."""

    path: str
    settings: dict[str, dict[str, Any]]
    persist: str = "disk"

    @property
    def ssid(self) -> str:
        return bytes(self.settings.get("802-11-wireless", {}).get("ssid", b"")).decode()

    @property
    def psk(self) -> str | None:
        security = self.settings.get("802-11-wireless-security")
        return None if security is None else str(security.get("psk", ""))

    @property
    def conn_id(self) -> str:
        return str(self.settings["connection"]["id"])

    @property
    def address(self) -> IPv4Interface:
        ipv4 = self.settings["ipv4"]
        data = ipv4["address-data"][0]
        return IPv4Interface(f"{data['address']}/{data['prefix']}")


@dataclass
class Checkpoint:
    """A snapshot of the devices' active profiles and the existing profiles."""

    path: str
    devices: list[str]
    active: dict[str, str | None]
    existing: set[str]
    flags: int
    timer: asyncio.TimerHandle | None = None


@dataclass
class CallLog:
    """Calls the fake received: (member, args)."""

    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def _unwrap(value: Any) -> Any:
    if isinstance(value, Variant):
        return _unwrap(value.value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


class IP4ConfigIface(ServiceInterface):
    def __init__(self, address: IPv4Interface) -> None:
        super().__init__("org.freedesktop.NetworkManager.IP4Config")
        self.address = address

    @dbus_property(access=PropertyAccess.READ)
    def AddressData(self) -> AddressList:
        return [
            {
                "address": Variant("s", str(self.address.ip)),
                "prefix": Variant("u", self.address.network.prefixlen),
            }
        ]

    @dbus_property(access=PropertyAccess.READ)
    def Gateway(self) -> DBusStr:
        return ""


class AccessPointIface(ServiceInterface):
    def __init__(self, ap: FakeAccessPoint) -> None:
        super().__init__("org.freedesktop.NetworkManager.AccessPoint")
        self.ap = ap

    @dbus_property(access=PropertyAccess.READ)
    def Ssid(self) -> DBusBytes:
        return self.ap.ssid.encode()

    @dbus_property(access=PropertyAccess.READ)
    def RsnFlags(self) -> DBusUInt32:
        return 0 if self.ap.psk is None else 0x100


class SettingsConnIface(ServiceInterface):
    def __init__(self, nm: FakeNetworkManager, profile: FakeSettings) -> None:
        super().__init__("org.freedesktop.NetworkManager.Settings.Connection")
        self.nm = nm
        self.profile = profile

    @dbus_method()
    def Delete(self) -> NoReply:
        self.nm.log.calls.append(("Delete", (self.profile.path,)))
        self.nm.delete_settings(self.profile.path)


class ActiveConnection:
    """State of one activation."""

    def __init__(
        self, nm: FakeNetworkManager, path: str, profile: FakeSettings, device: str
    ) -> None:
        self.nm = nm
        self.path = path
        self.profile = profile
        self.device = device
        self.state = 1
        self.ip4: str = "/"
        self.default = False
        self.iface = ActiveIface(self)


class ActiveIface(ServiceInterface):
    def __init__(self, conn: ActiveConnection) -> None:
        super().__init__("org.freedesktop.NetworkManager.Connection.Active")
        self.conn = conn

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusUInt32:
        return self.conn.state

    @dbus_property(access=PropertyAccess.READ)
    def Connection(self) -> DBusObjectPath:
        return self.conn.profile.path

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> DBusStr:
        return self.conn.profile.conn_id

    @dbus_property(access=PropertyAccess.READ)
    def Ip4Config(self) -> DBusObjectPath:
        return self.conn.ip4

    @dbus_property(access=PropertyAccess.READ)
    def Default(self) -> DBusBool:
        return self.conn.default

    @dbus_property(access=PropertyAccess.READ)
    def Devices(self) -> ObjectPaths:
        return [self.conn.device]

    @dbus_signal()
    def StateChanged(self, state: int, reason: int) -> Annotated[list[int], DBusSignature("uu")]:
        return [state, reason]


class Device:
    """A network device."""

    def __init__(self, nm: FakeNetworkManager, path: str, name: str, device_type: int) -> None:
        self.nm = nm
        self.path = path
        self.name = name
        self.device_type = device_type
        self.state = DEVICE_DISCONNECTED
        self.active: ActiveConnection | None = None
        self.iface = DeviceIface(self)
        self.wireless = WirelessIface(self) if device_type == 2 else None


class DeviceIface(ServiceInterface):
    def __init__(self, device: Device) -> None:
        super().__init__("org.freedesktop.NetworkManager.Device")
        self.device = device

    @dbus_property(access=PropertyAccess.READ)
    def Interface(self) -> DBusStr:
        return self.device.name

    @dbus_property(access=PropertyAccess.READ)
    def DeviceType(self) -> DBusUInt32:
        return self.device.device_type

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusUInt32:
        return self.device.state

    @dbus_property(access=PropertyAccess.READ)
    def ActiveConnection(self) -> DBusObjectPath:
        return self.device.active.path if self.device.active else "/"

    @dbus_signal()
    def StateChanged(
        self, new: int, old: int, reason: int
    ) -> Annotated[list[int], DBusSignature("uuu")]:
        return [new, old, reason]


class WirelessIface(ServiceInterface):
    def __init__(self, device: Device) -> None:
        super().__init__("org.freedesktop.NetworkManager.Device.Wireless")
        self.device = device

    @dbus_method()
    def RequestScan(self, options: DBusDict) -> NoReply:
        self.device.nm.log.calls.append(("RequestScan", (_unwrap(options),)))

    @dbus_method()
    def GetAllAccessPoints(self) -> ObjectPaths:
        return [ap.path for ap in self.device.nm.access_points.values()]

    @dbus_signal()
    def AccessPointAdded(self, path: str) -> DBusObjectPath:
        return path

    @dbus_signal()
    def AccessPointRemoved(self, path: str) -> DBusObjectPath:
        return path


class ManagerIface(ServiceInterface):
    def __init__(self, nm: FakeNetworkManager) -> None:
        super().__init__(NM)
        self.nm = nm

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:
        return "1.46.0-fake"

    @dbus_method()
    def GetDevices(self) -> ObjectPaths:
        return [d.path for d in self.nm.devices.values()]

    @dbus_method()
    def GetDeviceByIpIface(self, iface: DBusStr) -> DBusObjectPath:
        for device in self.nm.devices.values():
            if device.name == iface:
                return device.path
        raise _error("UnknownDevice", f"No device found for the requested iface {iface}")

    @dbus_method()
    def AddAndActivateConnection2(
        self,
        settings: SettingsDict,
        device: DBusObjectPath,
        specific: DBusObjectPath,
        options: DBusDict,
    ) -> AddAndActivate2Reply:
        plain = _unwrap(settings)
        opts = _unwrap(options)
        self.nm.log.calls.append(("AddAndActivateConnection2", (plain, device, specific, opts)))
        if opts.get("persist") not in ("disk", "memory", "volatile"):
            raise _error("InvalidArguments", "invalid persist option")
        if opts.get("bind-activation", "none") not in ("none", "dbus-client"):
            raise _error("InvalidArguments", "invalid bind-activation option")
        profile = self.nm.add_settings(plain, opts["persist"])
        active = self.nm.activate(profile, device)
        return [profile.path, active.path, {}]

    @dbus_method()
    def ActivateConnection(
        self, connection: DBusObjectPath, device: DBusObjectPath, specific: DBusObjectPath
    ) -> DBusObjectPath:
        self.nm.log.calls.append(("ActivateConnection", (connection, device, specific)))
        profile = self.nm.settings.get(connection)
        if profile is None:
            raise _error("UnknownConnection", f"Connection {connection} not found")
        return self.nm.activate(profile, device).path

    @dbus_method()
    def DeactivateConnection(self, active: DBusObjectPath) -> NoReply:
        self.nm.log.calls.append(("DeactivateConnection", (active,)))
        for device in self.nm.devices.values():
            if device.active is not None and device.active.path == active:
                self.nm.deactivate(device, active_reason=2, device_reason=39)
                return
        raise _error("ConnectionNotActive", "The connection was not active.")

    @dbus_method()
    def CheckpointCreate(
        self, devices: ObjectPaths, rollback_timeout: DBusUInt32, flags: DBusUInt32
    ) -> DBusObjectPath:
        self.nm.log.calls.append(("CheckpointCreate", (devices, rollback_timeout, flags)))
        return self.nm.checkpoint_create(devices, rollback_timeout, flags)

    @dbus_method()
    def CheckpointDestroy(self, checkpoint: DBusObjectPath) -> NoReply:
        self.nm.log.calls.append(("CheckpointDestroy", (checkpoint,)))
        self.nm.checkpoint_pop(checkpoint)

    @dbus_method()
    def CheckpointRollback(self, checkpoint: DBusObjectPath) -> RollbackResult:
        self.nm.log.calls.append(("CheckpointRollback", (checkpoint,)))
        return self.nm.rollback(self.nm.checkpoint_pop(checkpoint))

    @dbus_method()
    def CheckpointAdjustRollbackTimeout(
        self, checkpoint: DBusObjectPath, add_timeout: DBusUInt32
    ) -> NoReply:
        self.nm.log.calls.append(("CheckpointAdjustRollbackTimeout", (checkpoint, add_timeout)))
        cp = self.nm.checkpoints.get(checkpoint)
        if cp is None:
            raise _error("InvalidArguments", "checkpoint does not exist")
        self.nm.arm_checkpoint(cp, add_timeout)


ConnectionCallback = Callable[[str, bool], None]


class FakeNetworkManager:
    """The NM model plus its D-Bus export; see the module docstring."""

    def __init__(
        self,
        *,
        eth_address: str | None = "192.168.1.10/24",
        home_ssid: str | None = "HomeNet",
        home_psk: str = "home-secret",
        home_address: str = "192.168.1.20/24",
        wifi_default: bool = False,
        activation_delay: float = 0.02,
    ) -> None:
        self.log = CallLog()
        self.activation_delay = activation_delay
        self.hold_activation = False
        self.on_connection: list[ConnectionCallback] = []
        self.devices: dict[str, Device] = {}
        self.settings: dict[str, FakeSettings] = {}
        self.access_points: dict[str, FakeAccessPoint] = {}
        self.checkpoints: dict[str, Checkpoint] = {}
        self.active: dict[str, ActiveConnection] = {}
        self.rollbacks = 0
        self._ids = itertools.count(1)
        self._ip4: dict[str, IP4ConfigIface] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._bus: MessageBus | None = None
        self._exported: dict[str, list[ServiceInterface]] = {}
        self.manager = ManagerIface(self)
        self._export(NM_PATH, self.manager)
        self.eth0 = self._add_device("eth0", 1)
        self.wlan0 = self._add_device("wlan0", 2)
        self._dhcp_addresses: dict[str, IPv4Interface] = {}
        if eth_address is not None:
            eth = self.add_settings(
                {"connection": {"id": "Wired", "type": "802-3-ethernet"}}, "disk"
            )
            self._dhcp_addresses[eth.path] = IPv4Interface(eth_address)
            self._activate_now(eth, self.eth0, default=True)
        if home_ssid is not None:
            self.add_ap(home_ssid, home_psk, announce=False)
            home = self.add_settings(
                {
                    "connection": {"id": home_ssid, "type": "802-11-wireless"},
                    "802-11-wireless": {"ssid": home_ssid.encode()},
                    "802-11-wireless-security": {"key-mgmt": "wpa-psk", "psk": home_psk},
                },
                "disk",
            )
            self._dhcp_addresses[home.path] = IPv4Interface(home_address)
            self._activate_now(home, self.wlan0, default=wifi_default or eth_address is None)

    # -- bus ----------------------------------------------------------------------------------

    async def attach(self, address: str) -> None:
        """Connect to the bus at `address`, export everything and own NM's name."""
        self._bus = await MessageBus(bus_address=address).connect()
        for path, ifaces in self._exported.items():
            for iface in ifaces:
                self._bus.export(path, iface)
        await self._bus.request_name(NM)

    async def detach(self) -> None:
        """Drop the bus connection (the model keeps its state, like NM across a bus restart)."""
        bus, self._bus = self._bus, None
        if bus is not None:
            for path, ifaces in self._exported.items():
                for iface in ifaces:
                    bus.unexport(path, iface)
            bus.disconnect()
            with contextlib.suppress(Exception):
                await wait_for_bus_disconnect(bus)

    async def close(self) -> None:
        """Stop timers and tasks and detach."""
        for cp in self.checkpoints.values():
            if cp.timer is not None:
                cp.timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.detach()

    def _export(self, path: str, iface: ServiceInterface) -> None:
        self._exported.setdefault(path, []).append(iface)
        if self._bus is not None:
            self._bus.export(path, iface)

    def _unexport(self, path: str) -> None:
        ifaces = self._exported.pop(path, [])
        if self._bus is not None:
            for iface in ifaces:
                self._bus.unexport(path, iface)

    def _new_path(self, kind: str) -> str:
        return f"{BASE}/{kind}/{next(self._ids)}"

    # -- model --------------------------------------------------------------------------------

    def _add_device(self, name: str, device_type: int) -> Device:
        device = Device(self, self._new_path("Devices"), name, device_type)
        self.devices[device.path] = device
        self._export(device.path, device.iface)
        if device.wireless is not None:
            self._export(device.path, device.wireless)
        return device

    def add_ap(self, ssid: str, psk: str | None, *, announce: bool = True) -> FakeAccessPoint:
        """An AP comes into range (AccessPointAdded on wlan0)."""
        ap = FakeAccessPoint(ssid, psk, self._new_path("AccessPoint"))
        self.access_points[ap.path] = ap
        self._export(ap.path, AccessPointIface(ap))
        if announce and self.wlan0.wireless is not None:
            self.wlan0.wireless.AccessPointAdded(ap.path)
        return ap

    def remove_ap(self, ssid: str) -> None:
        """An AP goes away; a connection to it drops (device reason SSID_NOT_FOUND)."""
        for path, ap in list(self.access_points.items()):
            if ap.ssid != ssid:
                continue
            del self.access_points[path]
            self._unexport(path)
            if self.wlan0.wireless is not None:
                self.wlan0.wireless.AccessPointRemoved(path)
        active = self.wlan0.active
        if active is not None and active.profile.ssid == ssid:
            self.deactivate(self.wlan0, active_reason=3, device_reason=53)

    def add_settings(self, settings: dict[str, dict[str, Any]], persist: str) -> FakeSettings:
        profile = FakeSettings(self._new_path("Settings"), settings, persist)
        self.settings[profile.path] = profile
        self._export(profile.path, SettingsConnIface(self, profile))
        return profile

    def delete_settings(self, path: str) -> None:
        profile = self.settings.pop(path, None)
        if profile is None:
            raise _error("UnknownConnection", "no such connection")
        self._unexport(path)
        for device in self.devices.values():
            if device.active is not None and device.active.profile is profile:
                self.deactivate(device, active_reason=11, device_reason=38)

    def _set_device_state(self, device: Device, new: int, reason: int) -> None:
        old, device.state = device.state, new
        device.iface.StateChanged(new, old, reason)

    def _set_active_state(self, conn: ActiveConnection, state: int, reason: int) -> None:
        conn.state = state
        conn.iface.StateChanged(state, reason)

    def activate(self, profile: FakeSettings, device_path: str) -> ActiveConnection:
        device = self.devices.get(device_path)
        if device is None:
            raise _error("UnknownDevice", "no such device")
        if device.active is not None:
            self.deactivate(device, active_reason=2, device_reason=39)
        conn = ActiveConnection(self, self._new_path("ActiveConnection"), profile, device.path)
        self.active[conn.path] = conn
        device.active = conn
        self._export(conn.path, conn.iface)
        self._set_device_state(device, DEVICE_PREPARE, 0)
        task = asyncio.get_running_loop().create_task(self._run_activation(conn, device))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return conn

    async def _run_activation(self, conn: ActiveConnection, device: Device) -> None:
        await asyncio.sleep(self.activation_delay)
        while self.hold_activation:  # noqa: ASYNC110  (a test flips the flag)
            await asyncio.sleep(0.01)
        if device.active is not conn:
            return
        profile = conn.profile
        aps = [ap for ap in self.access_points.values() if ap.ssid == profile.ssid]
        if not aps:
            self.deactivate(device, active_reason=1, device_reason=53)
            return
        if aps[0].psk is not None and profile.psk != aps[0].psk:
            self.deactivate(device, active_reason=9, device_reason=7)
            return
        address = self._dhcp_addresses.get(profile.path)
        self._finish_activation(conn, device, address or profile.address)

    def _activate_now(self, profile: FakeSettings, device: Device, *, default: bool) -> None:
        conn = ActiveConnection(self, self._new_path("ActiveConnection"), profile, device.path)
        conn.default = default
        self.active[conn.path] = conn
        device.active = conn
        self._export(conn.path, conn.iface)
        self._finish_activation(conn, device, self._dhcp_addresses[profile.path])

    def _finish_activation(
        self, conn: ActiveConnection, device: Device, address: IPv4Interface
    ) -> None:
        ip4_path = self._new_path("IP4Config")
        ip4 = IP4ConfigIface(address)
        self._ip4[ip4_path] = ip4
        self._export(ip4_path, ip4)
        conn.ip4 = ip4_path
        self._set_device_state(device, DEVICE_ACTIVATED, 0)
        self._set_active_state(conn, 2, 1)
        self._fire(conn.profile.ssid, True)

    def deactivate(self, device: Device, *, active_reason: int, device_reason: int) -> None:
        conn = device.active
        if conn is None:
            return
        was_up = conn.state == 2
        device.active = None
        failed = conn.state != 2
        self._set_device_state(
            device, DEVICE_FAILED if failed else DEVICE_DISCONNECTED, device_reason
        )
        self._set_active_state(conn, 4, active_reason)
        self.active.pop(conn.path, None)
        self._unexport(conn.path)
        if conn.ip4 != "/":
            self._unexport(conn.ip4)
            self._ip4.pop(conn.ip4, None)
        if conn.profile.persist == "volatile" and conn.profile.path in self.settings:
            self.settings.pop(conn.profile.path)
            self._unexport(conn.profile.path)
        if was_up:
            self._fire(conn.profile.ssid, False)

    def _fire(self, ssid: str, active: bool) -> None:
        for callback in list(self.on_connection):
            callback(ssid, active)

    def checkpoint_create(self, devices: list[str], timeout: int, flags: int) -> str:
        for cp in self.checkpoints.values():
            if set(cp.devices) & set(devices):
                raise _error("InvalidArguments", "device is already included in a checkpoint")
        cp = Checkpoint(
            self._new_path("Checkpoint"),
            list(devices),
            {d: self._active_profile(d) for d in devices},
            set(self.settings),
            flags,
        )
        self.checkpoints[cp.path] = cp
        self.arm_checkpoint(cp, timeout)
        return cp.path

    def _active_profile(self, device_path: str) -> str | None:
        active = self.devices[device_path].active
        return None if active is None else active.profile.path

    def arm_checkpoint(self, cp: Checkpoint, timeout: int) -> None:
        if cp.timer is not None:
            cp.timer.cancel()
        if timeout:
            loop = asyncio.get_running_loop()
            cp.timer = loop.call_later(timeout, self._expire, cp.path)

    def _expire(self, path: str) -> None:
        cp = self.checkpoints.pop(path, None)
        if cp is not None:
            self.rollback(cp)

    def checkpoint_pop(self, path: str) -> Checkpoint:
        cp = self.checkpoints.pop(path, None)
        if cp is None:
            raise _error("InvalidArguments", "checkpoint does not exist")
        if cp.timer is not None:
            cp.timer.cancel()
        return cp

    def rollback(self, cp: Checkpoint) -> dict[str, int]:
        """Restore the snapshot: drop new profiles, re-activate the old ones at once."""
        self.rollbacks += 1
        result: dict[str, int] = {}
        for device_path in cp.devices:
            device = self.devices[device_path]
            old = cp.active[device_path]
            if device.active is not None and device.active.profile.path != old:
                self.deactivate(device, active_reason=2, device_reason=39)
            if cp.flags & 0x02:
                for path in list(self.settings):
                    if path not in cp.existing:
                        self.delete_settings(path)
            if old is not None and device.active is None and old in self.settings:
                self._activate_now(self.settings[old], device, default=False)
            result[device_path] = 0
        return result

    # -- assertions helpers -------------------------------------------------------------------

    def wifi_ssid(self) -> str | None:
        """SSID of the connection active on wlan0 (None when disconnected)."""
        active = self.wlan0.active
        return None if active is None or active.state != 2 else active.profile.ssid

    def wifi_address(self) -> IPv4Interface | None:
        active = self.wlan0.active
        if active is None or active.ip4 == "/":
            return None
        return self._ip4[active.ip4].address

    def added_profiles(self) -> list[dict[str, Any]]:
        """Settings dicts received through AddAndActivateConnection2."""
        return [args[0] for name, args in self.log.calls if name == "AddAndActivateConnection2"]


@dataclass
class NmEnv:
    """A running private bus with the fake NM on it."""

    daemon: DBusDaemon
    nm: FakeNetworkManager

    @property
    def address(self) -> str:
        return self.daemon.address

    async def drop_bus(self) -> None:
        """The bus goes away (dbus-daemon stopped); NM keeps its state."""
        await self.nm.detach()
        await self.daemon.stop()

    async def restore_bus(self) -> None:
        """A new dbus-daemon at the same address; NM re-registers."""
        await self.daemon.start()
        await self.nm.attach(self.daemon.address)


@contextlib.contextmanager
def unix_sockets_allowed() -> Iterator[None]:
    """Let the test connect AF_UNIX sockets (the bus): phcc's pytest-socket guard allows only
    127.0.0.1 connects (`socket_allow_hosts(["127.0.0.1"])` without `allow_unix_socket`)."""
    pytest_socket.socket_allow_hosts([LOOPBACK], allow_unix_socket=True)
    try:
        yield
    finally:
        pytest_socket.socket_allow_hosts([LOOPBACK])


def bus_config(tmp_path: Path) -> BusConfig:
    """Write the bus config (sync: call it outside the event loop, e.g. in a sync fixture)."""
    socket_dir = tmp_path / "bus"
    socket_dir.mkdir()
    if len(str(socket_dir)) > 90:  # sun_path is 108 bytes
        raise RuntimeError(f"tmp_path too long for a unix socket: {socket_dir}")
    return BusConfig(tmp_path, socket_dir)


@contextlib.asynccontextmanager
async def running_fake_nm(config: BusConfig, nm: FakeNetworkManager) -> AsyncIterator[NmEnv]:
    """Start dbus-daemon, attach `nm`; always stop both."""
    daemon = DBusDaemon(config)
    await daemon.start()
    try:
        await nm.attach(daemon.address)
        yield NmEnv(daemon, nm)
    finally:
        await nm.close()
        await daemon.stop()
