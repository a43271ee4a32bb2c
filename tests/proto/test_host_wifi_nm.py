"""NetworkManager hop against a fake NM on a private dbus-daemon.

What is faked is the radio: `tests/proto/fake_networkmanager.py` decides from its AP list and the
profile's PSK whether an activation succeeds. Everything else is real: a dbus-daemon subprocess,
dbus-fast on both ends, D-Bus signals, and (in one test) a TCP listener on 127.0.0.1 that is
reachable only while the matching Wi-Fi connection is active.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
import contextlib
from ipaddress import IPv4Interface
from pathlib import Path
import time
from typing import Any

import aiohttp
import pytest

from custom_components.sonoff_ota.proto.host_wifi_nm import NmWifiHop
from custom_components.sonoff_ota.proto.host_wifi_nm_wire import failure_code
from custom_components.sonoff_ota.proto.host_wifi_targets import finalstage_target, itead_target
from custom_components.sonoff_ota.proto.host_wifi_types import HopError, HopErrorCode, LinkEvent

from .fake_networkmanager import (
    BusConfig,
    FakeNetworkManager,
    NmEnv,
    bus_config,
    running_fake_nm,
    unix_sockets_allowed,
)
from .legacy_clients import LOOPBACK

DEVICEID = "10000b77c1"
ITEAD = f"ITEAD-{DEVICEID}"


@pytest.fixture
def config(tmp_path: Path, socket_enabled: None) -> Iterator[BusConfig]:
    """Bus config; phcc blocks AF_UNIX connects too (see `unix_sockets_allowed`)."""
    with unix_sockets_allowed():
        yield bus_config(tmp_path)


@contextlib.asynccontextmanager
async def fake_nm(config: BusConfig, **kwargs: Any) -> AsyncIterator[NmEnv]:
    nm = FakeNetworkManager(**kwargs)
    nm.add_ap(ITEAD, "12345678", announce=False)
    nm.add_ap("FinalStage", None, announce=False)
    async with running_fake_nm(config, nm) as env:
        yield env


def make_hop(env: NmEnv, **kwargs: Any) -> NmWifiHop:
    kwargs.setdefault("reconnect_delay", 0.02)
    kwargs.setdefault("reconnect_timeout", 5.0)
    kwargs.setdefault("reactivate_backoff", 0.02)
    return NmWifiHop(bus_address=env.address, **kwargs)


async def wait_until(check: Callable[[], bool], limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        while not check():  # noqa: ASYNC110  (the fakes have no events for every state)
            await asyncio.sleep(0.01)


def hop_profiles(nm: FakeNetworkManager) -> list[str]:
    return [p.conn_id for p in nm.settings.values() if p.conn_id.startswith("sonoff-ota")]


async def test_both_hops_succeed_and_restore(config: BusConfig) -> None:
    """ITEAD then FinalStage via NM, then back to HomeNet; the radio is faked."""
    async with fake_nm(config) as env:
        nm = env.nm
        eth_before = nm.eth0.active
        events: list[tuple[str, bool]] = []
        nm.on_connection.append(lambda ssid, up: events.append((ssid, up)))
        async with make_hop(env) as hop:
            plan = await hop.prepare()
            assert plan.interface == "wlan0"
            assert not plan.carries_lan
            assert {str(n) for n in plan.lan_networks} == {"192.168.1.0/24"}

            joined = await hop.join(itead_target(DEVICEID, timeout=5))
            assert joined.address == IPv4Interface("10.10.7.2/24")
            assert joined.interface == "wlan0"
            assert nm.wifi_ssid() == ITEAD
            assert nm.wifi_address() == IPv4Interface("10.10.7.2/24")

            joined = await hop.join(finalstage_target(timeout=5))
            assert joined.address == IPv4Interface("192.168.4.2/24")
            assert nm.wifi_ssid() == "FinalStage"
            assert hop.joined == joined

        # the wire: checkpoint with rollback timer, volatile/memory static profiles
        names = nm.log.names()
        create = next(args for name, args in nm.log.calls if name == "CheckpointCreate")
        assert create[0] == [nm.wlan0.path]
        assert create[1] > 0
        assert create[2] == 0x06
        assert names.count("CheckpointCreate") == 1
        assert "CheckpointRollback" in names
        (itead_call, final_call) = [
            args for name, args in nm.log.calls if name == "AddAndActivateConnection2"
        ]
        itead, final = itead_call[0], final_call[0]
        assert itead_call[3]["persist"] == "volatile"
        assert final_call[3]["persist"] == "memory"
        assert itead["802-11-wireless"]["ssid"] == ITEAD.encode()
        assert itead["802-11-wireless-security"] == {"key-mgmt": "wpa-psk", "psk": "12345678"}
        assert "802-11-wireless-security" not in final
        for profile in (itead, final):
            ipv4 = profile["ipv4"]
            assert ipv4["method"] == "manual"
            assert ipv4["never-default"] is True
            assert ipv4["ignore-auto-dns"] is True
            assert "gateway" not in ipv4
            assert "dns" not in ipv4
            assert profile["connection"]["interface-name"] == "wlan0"
        assert final["ipv4"]["address-data"] == [{"address": "192.168.4.2", "prefix": 24}]

        # back home, nothing left over, eth0 never touched
        assert nm.wifi_ssid() == "HomeNet"
        assert hop_profiles(nm) == []
        assert nm.checkpoints == {}
        assert nm.eth0.active is eth_before
        assert hop.last_restore is not None
        assert hop.last_restore.method == "checkpoint_rollback"
        assert events == [
            ("HomeNet", False),
            (ITEAD, True),
            (ITEAD, False),
            ("FinalStage", True),
            ("FinalStage", False),
            ("HomeNet", True),
        ]


async def test_device_listener_reachable_only_while_joined(
    config: BusConfig, socket_enabled: None
) -> None:
    """A 127.0.0.1 listener stands in for the Sonoff's AP: it answers only while the fake radio
    has the ITEAD connection active (the radio is what is faked)."""
    reachable = False

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not reachable:
            writer.transport.abort()
            return
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"deviceid":"10000b77c1","accept":"post"}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    def on_connection(ssid: str, up: bool) -> None:
        nonlocal reachable
        if ssid == ITEAD:
            reachable = up

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://{LOOPBACK}:{port}/device"

    async def get_device(session: aiohttp.ClientSession) -> int | None:
        try:
            async with session.get(url) as resp:
                await resp.read()
                return resp.status
        except aiohttp.ClientError:
            return None

    try:
        async with fake_nm(config) as env, aiohttp.ClientSession() as session:
            env.nm.on_connection.append(on_connection)
            assert await get_device(session) is None
            async with make_hop(env) as hop:
                await hop.join(itead_target(DEVICEID, timeout=5))
                assert await get_device(session) == 200
            assert await get_device(session) is None
    finally:
        server.close()
        await server.wait_closed()


async def test_wrong_psk(config: BusConfig) -> None:
    """The AP's PSK differs: NM deactivates with NO_SECRETS -> wrong_psk; home restored.
    The radio (PSK check) is faked."""
    async with fake_nm(config) as env:
        nm = env.nm
        nm.remove_ap(ITEAD)
        nm.add_ap(ITEAD, "another-psk")
        async with make_hop(env) as hop:
            with pytest.raises(HopError) as err:
                await hop.join(itead_target(DEVICEID, timeout=5))
            assert err.value.code is HopErrorCode.WRONG_PSK
            # join restored right away, before the context exit
            assert nm.wifi_ssid() == "HomeNet"
            assert nm.rollbacks == 1
        assert hop_profiles(nm) == []
        assert nm.rollbacks == 1  # restore is idempotent


async def test_ap_missing(config: BusConfig) -> None:
    """No ITEAD AP in (fake) radio range: SSID_NOT_FOUND -> ap_missing."""
    async with fake_nm(config) as env:
        env.nm.remove_ap(ITEAD)
        async with make_hop(env) as hop:
            with pytest.raises(HopError) as err:
                await hop.join(itead_target(DEVICEID, timeout=5))
        assert err.value.code is HopErrorCode.AP_MISSING
        assert env.nm.wifi_ssid() == "HomeNet"


def test_reason_mapping() -> None:
    """Device reasons win over the active-connection reason (no radio involved)."""
    assert failure_code(9, 0) is HopErrorCode.WRONG_PSK
    assert failure_code(1, 8) is HopErrorCode.WRONG_PSK
    assert failure_code(1, 53) is HopErrorCode.AP_MISSING
    assert failure_code(1, 64) is HopErrorCode.NO_ADDRESS
    assert failure_code(6, 0) is HopErrorCode.ACTIVATION_TIMEOUT
    assert failure_code(3, 0) is HopErrorCode.ACTIVATION_FAILED


async def test_never_activates_times_out_then_rolls_back(config: BusConfig) -> None:
    """The (fake) radio never finishes associating: activation_timeout, then rollback."""
    async with fake_nm(config) as env:
        nm = env.nm
        nm.hold_activation = True
        async with make_hop(env) as hop:
            with pytest.raises(HopError) as err:
                await hop.join(itead_target(DEVICEID, timeout=0.3))
            assert err.value.code is HopErrorCode.ACTIVATION_TIMEOUT
            assert nm.wifi_ssid() == "HomeNet"
        assert "CheckpointRollback" in nm.log.names()
        assert hop_profiles(nm) == []


async def test_finalstage_ap_vanishes_and_returns(config: BusConfig) -> None:
    """FinalStage reboots: the (fake) AP vanishes and comes back; the hop re-activates its
    profile on AccessPointAdded and is again 192.168.4.2."""
    links: list[LinkEvent] = []
    changed = asyncio.Event()

    def on_link(event: LinkEvent) -> None:
        links.append(event)
        changed.set()

    async with fake_nm(config) as env:
        nm = env.nm
        async with make_hop(env, on_link=on_link) as hop:
            await hop.join(finalstage_target(timeout=5))
            assert links[-1] == LinkEvent("FinalStage", True, IPv4Interface("192.168.4.2/24"))
            settings_path = next(
                p.path for p in nm.settings.values() if p.conn_id == "sonoff-ota FinalStage"
            )

            nm.remove_ap("FinalStage")
            await wait_until(lambda: links[-1].up is False)
            assert hop.joined is None
            assert nm.wifi_ssid() is None

            nm.add_ap("FinalStage", None)
            await wait_until(lambda: links[-1].up is True)
            assert nm.wifi_ssid() == "FinalStage"
            assert nm.wifi_address() == IPv4Interface("192.168.4.2/24")
            assert hop.joined is not None
            assert hop.joined.address == IPv4Interface("192.168.4.2/24")
            activations = [a for n, a in nm.log.calls if n == "ActivateConnection"]
            assert activations[-1][0] == settings_path
            assert activations[-1][2] != "/"  # the reappeared AP's path

            # and once more (the image reboots more than once)
            nm.remove_ap("FinalStage")
            await wait_until(lambda: links[-1].up is False)
            nm.add_ap("FinalStage", None)
            await wait_until(lambda: links[-1].up is True)
            assert nm.wifi_address() == IPv4Interface("192.168.4.2/24")
        assert nm.wifi_ssid() == "HomeNet"
        assert hop_profiles(nm) == []


async def test_bus_drops_then_restore_reconnects(config: BusConfig) -> None:
    """The system bus goes away mid-join (dbus-daemon stopped): bus_lost; the restore
    reconnects once the bus is back and rolls the checkpoint back. The radio is faked."""
    async with fake_nm(config) as env:
        nm = env.nm
        nm.hold_activation = True
        hop = make_hop(env)
        async with hop:
            task = asyncio.create_task(hop.join(itead_target(DEVICEID, timeout=10)))
            await wait_until(lambda: "AddAndActivateConnection2" in nm.log.names())
            await env.drop_bus()
            await asyncio.sleep(0.1)  # the hop notices and starts retrying
            assert not task.done()
            await env.restore_bus()
            with pytest.raises(HopError) as err:
                await task
            assert err.value.code is HopErrorCode.BUS_LOST
        assert nm.log.names().count("CheckpointRollback") == 1
        assert nm.wifi_ssid() == "HomeNet"
        assert hop_profiles(nm) == []
        assert hop.last_restore is not None
        assert hop.last_restore.restored


async def test_bus_gone_for_good_nm_rolls_back_itself(config: BusConfig) -> None:
    """The bus never returns: the restore attempt fails (reported, not raised) and NM's own
    checkpoint timer restores the home Wi-Fi. The radio is faked."""
    async with fake_nm(config) as env:
        nm = env.nm
        hop = make_hop(env, checkpoint_timeout=1, reconnect_timeout=0.2)
        async with hop:
            await hop.join(itead_target(DEVICEID, timeout=5))
            assert nm.wifi_ssid() == ITEAD
            await env.drop_bus()
            with pytest.raises(HopError) as err:
                await hop.join(finalstage_target(timeout=5))
            assert err.value.code is HopErrorCode.BUS_LOST
        assert hop.last_restore is not None
        assert not hop.last_restore.restored
        assert "rolls back by itself" in hop.last_restore.detail
        assert nm.wifi_ssid() == ITEAD  # nothing could be done over the bus...
        started = time.monotonic()
        await wait_until(lambda: nm.wifi_ssid() == "HomeNet", limit=3)
        assert time.monotonic() - started < 3  # ...until NM's rollback timer fired
        assert hop_profiles(nm) == []
        await env.restore_bus()  # so running_fake_nm stops a live daemon


async def test_cancel_mid_hop_restores(config: BusConfig) -> None:
    """The owning task is cancelled while the (fake) radio is still associating: the context
    manager restores the home connection before the cancellation propagates."""
    async with fake_nm(config) as env:
        nm = env.nm
        nm.hold_activation = True

        async def run() -> None:
            async with make_hop(env) as hop:
                await hop.join(itead_target(DEVICEID, timeout=10))

        task = asyncio.create_task(run())
        await wait_until(lambda: "AddAndActivateConnection2" in nm.log.names())
        assert nm.wifi_ssid() is None  # home dropped, ITEAD still activating
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert nm.wifi_ssid() == "HomeNet"
        assert "CheckpointRollback" in nm.log.names()
        assert hop_profiles(nm) == []


async def test_cancel_after_join_restores(config: BusConfig) -> None:
    """Cancelled while joined to FinalStage (the flow was aborted): home restored."""
    async with fake_nm(config) as env:
        nm = env.nm
        joined = asyncio.Event()

        async def run() -> None:
            async with make_hop(env) as hop:
                await hop.join(finalstage_target(timeout=5))
                joined.set()
                await asyncio.sleep(30)

        task = asyncio.create_task(run())
        await asyncio.wait_for(joined.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert nm.wifi_ssid() == "HomeNet"
        assert hop_profiles(nm) == []


async def test_wifi_only_host_needs_confirmation(config: BusConfig) -> None:
    """No Ethernet: wlan0 carries HA's LAN. Refused without confirmation, before any change;
    with it, the hop runs and restores. The radio is faked."""
    async with fake_nm(config, eth_address=None) as env:
        nm = env.nm
        async with make_hop(env) as hop:
            with pytest.raises(HopError) as err:
                await hop.prepare()
            assert err.value.code is HopErrorCode.NEEDS_CONFIRMATION
            with pytest.raises(HopError):
                await hop.join(itead_target(DEVICEID, timeout=5))
        assert "CheckpointCreate" not in nm.log.names()
        assert "AddAndActivateConnection2" not in nm.log.names()

        async with make_hop(env, confirm_wifi_only=True) as hop:
            plan = await hop.prepare()
            assert plan.carries_lan
            assert plan.confirmed
            await hop.join(itead_target(DEVICEID, timeout=5))
            assert nm.wifi_ssid() == ITEAD
        assert nm.wifi_ssid() == "HomeNet"


async def test_lan_clash_refused_before_any_change(config: BusConfig) -> None:
    """The home LAN itself is 10.10.7.0/24: refused (lan_clash) before anything changes."""
    async with fake_nm(config, eth_address="10.10.7.50/24") as env:
        nm = env.nm
        async with make_hop(env) as hop:
            with pytest.raises(HopError) as err:
                await hop.join(itead_target(DEVICEID, timeout=5))
        assert err.value.code is HopErrorCode.LAN_CLASH
        assert "CheckpointCreate" not in nm.log.names()
        assert "AddAndActivateConnection2" not in nm.log.names()
        assert nm.wifi_ssid() == "HomeNet"


async def test_no_wifi_device(config: BusConfig) -> None:
    """`interface` names a device NM does not have as Wi-Fi: no_wifi_interface."""
    async with fake_nm(config) as env:
        async with make_hop(env, interface="wlan9") as hop:
            with pytest.raises(HopError) as err:
                await hop.prepare()
        assert err.value.code is HopErrorCode.NO_WIFI_INTERFACE
