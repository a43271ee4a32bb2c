"""Common hop interface: targets, safety checks, ManualHop, backend selection.

No radio exists here: the manual hop's "is the address there yet" probe is injected, and the
backends are selected against a fake NetworkManager on a private dbus-daemon and a fake
Supervisor on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import aiohttp
import pytest

from custom_components.sonoff_ota.proto.host_wifi import (
    HopBackend,
    HopError,
    HopErrorCode,
    LinkEvent,
    ManualHop,
    ManualInstruction,
    address_is_local,
    check_lan_clash,
    check_wifi_only,
    finalstage_target,
    itead_target,
    select_backend,
)
from custom_components.sonoff_ota.proto.host_wifi_nm import NmWifiHop
from custom_components.sonoff_ota.proto.host_wifi_supervisor import SupervisorWifiHop

from .fake_networkmanager import (
    BusConfig,
    FakeNetworkManager,
    bus_config,
    running_fake_nm,
    unix_sockets_allowed,
)
from .fake_supervisor import FakeSupervisor, running_supervisor


@pytest.fixture
def config(tmp_path: Path, socket_enabled: None) -> Iterator[BusConfig]:
    with unix_sockets_allowed():
        yield bus_config(tmp_path)


def test_standard_targets() -> None:
    """The two targets carry the spec's facts; the PSK stays out of reprs (no radio)."""
    itead = itead_target("10000b77c1")
    assert itead.ssid == "ITEAD-10000b77c1"
    assert itead.psk == "12345678"
    assert itead.address == IPv4Interface("10.10.7.2/24")
    assert not itead.is_open
    assert not itead.reactivate_on_reappear
    assert "12345678" not in repr(itead)
    final = finalstage_target()
    assert final.ssid == "FinalStage"
    assert final.is_open
    assert final.address == IPv4Interface("192.168.4.2/24")
    assert final.reactivate_on_reappear
    assert "home" not in repr(ManualInstruction("x", "home", IPv4Interface("10.0.0.2/24")))


@pytest.mark.parametrize(
    ("lan", "clash"),
    [
        ("10.10.7.0/24", True),
        ("10.10.0.0/16", True),
        ("192.168.4.0/24", True),
        ("192.168.1.0/24", False),
        ("10.10.8.0/24", False),
    ],
)
def test_lan_clash(lan: str, clash: bool) -> None:
    """Overlap with 10.10.7.0/24 or 192.168.4.0/24 is refused (pure check, no radio)."""
    if clash:
        with pytest.raises(HopError) as err:
            check_lan_clash([IPv4Network(lan)])
        assert err.value.code is HopErrorCode.LAN_CLASH
    else:
        check_lan_clash([IPv4Network(lan)])


def test_wifi_only_check() -> None:
    """Carrying the LAN needs the explicit confirmation (pure check, no radio)."""
    check_wifi_only(carries_lan=False, confirmed=False, interface="wlan0")
    check_wifi_only(carries_lan=True, confirmed=True, interface="wlan0")
    with pytest.raises(HopError) as err:
        check_wifi_only(carries_lan=True, confirmed=False, interface="wlan0")
    assert err.value.code is HopErrorCode.NEEDS_CONFIRMATION


async def test_manual_hop_instructs_and_waits() -> None:
    """Manual backend: the UI is told what to join; join returns once the address is local.
    The user's Wi-Fi change is faked by the injected probe."""
    instructions: list[ManualInstruction | None] = []
    links: list[LinkEvent] = []
    present: set[IPv4Address] = set()
    probes = 0

    async def probe(address: IPv4Address) -> bool:
        nonlocal probes
        probes += 1
        if probes == 3:
            present.add(IPv4Address("10.10.7.2"))
        return address in present

    async with ManualHop(
        on_instruction=instructions.append,
        address_probe=probe,
        poll_interval=0.01,
        on_link=links.append,
    ) as hop:
        plan = await hop.prepare()
        assert plan.backend is HopBackend.MANUAL
        joined = await hop.join(itead_target("10000b77c1", timeout=2))
        assert joined.address == IPv4Interface("10.10.7.2/24")
        assert instructions == [
            ManualInstruction("ITEAD-10000b77c1", "12345678", IPv4Interface("10.10.7.2/24"))
        ]
        assert probes == 3
        assert links == [LinkEvent("ITEAD-10000b77c1", True, IPv4Interface("10.10.7.2/24"))]
    assert instructions[-1] is None  # "go back to your home network"


async def test_manual_hop_timeout_restores() -> None:
    """The user never joins (faked probe): activation_timeout, then the back-home hint."""
    instructions: list[ManualInstruction | None] = []

    async def never(address: IPv4Address) -> bool:
        return False

    async with ManualHop(
        on_instruction=instructions.append, address_probe=never, poll_interval=0.01
    ) as hop:
        with pytest.raises(HopError) as err:
            await hop.join(finalstage_target(timeout=0.1))
        assert err.value.code is HopErrorCode.ACTIVATION_TIMEOUT
        assert instructions[-1] is None
    assert hop.last_restore is not None
    assert hop.last_restore.method == "manual"


async def test_context_manager_restores_on_cancel() -> None:
    """Cancelling the owner mid-wait still runs the restore (manual hop; no radio)."""
    instructions: list[ManualInstruction | None] = []

    async def never(address: IPv4Address) -> bool:
        return False

    async def run() -> None:
        async with ManualHop(
            on_instruction=instructions.append, address_probe=never, poll_interval=0.01
        ) as hop:
            await hop.join(finalstage_target(timeout=30))

    task = asyncio.create_task(run())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert instructions[-1] is None


async def test_address_probe_binds_locally(socket_enabled: None) -> None:
    """The default probe binds (no packet sent): 127.0.0.1 is local, TEST-NET-1 is not."""
    assert await address_is_local(IPv4Address("127.0.0.1"))
    assert not await address_is_local(IPv4Address("192.0.2.77"))


async def test_select_networkmanager_when_reachable(config: BusConfig) -> None:
    """A bus with NM on it wins over a configured Supervisor (fake NM, no radio)."""
    async with (
        running_fake_nm(config, FakeNetworkManager()) as env,
        aiohttp.ClientSession() as session,
    ):
        hop = await select_backend(
            session=session,
            nm_bus_address=env.address,
            environ={"SUPERVISOR": "127.0.0.1:9", "SUPERVISOR_TOKEN": "t"},
        )
        assert isinstance(hop, NmWifiHop)
        async with hop:
            plan = await hop.prepare()
        assert plan.backend is HopBackend.NETWORKMANAGER


async def test_select_supervisor_when_no_bus(tmp_path: Path, socket_enabled: None) -> None:
    """No bus at the address: the Supervisor from the environment is used (fake Supervisor)."""
    fake = FakeSupervisor(token="tok")
    with unix_sockets_allowed():
        async with running_supervisor(fake) as url, aiohttp.ClientSession() as session:
            host = url.removeprefix("http://")
            hop = await select_backend(
                session=session,
                nm_bus_address=f"unix:path={tmp_path}/no-bus",
                environ={"SUPERVISOR": host, "SUPERVISOR_TOKEN": "tok"},
            )
            assert isinstance(hop, SupervisorWifiHop)
            async with hop:
                plan = await hop.prepare()
            assert plan.backend is HopBackend.SUPERVISOR
            assert plan.interface == "wlan0"


async def test_select_nm_bus_without_nm_falls_back(config: BusConfig) -> None:
    """A bus where nobody owns NM's name, no Supervisor: manual (no radio)."""
    nm = FakeNetworkManager()
    async with running_fake_nm(config, nm) as env:
        await nm.detach()  # the bus stays, NM leaves it
        hop = await select_backend(nm_bus_address=env.address, environ={})
        assert isinstance(hop, ManualHop)
        await nm.attach(env.address)


async def test_select_manual_without_anything(tmp_path: Path, socket_enabled: None) -> None:
    """Nothing reachable: ManualHop (from the factory when given)."""
    with unix_sockets_allowed():
        custom = ManualHop(poll_interval=0.5)
        hop = await select_backend(
            nm_bus_address=f"unix:path={tmp_path}/no-bus",
            environ={},
            manual_factory=lambda: custom,
        )
    assert hop is custom
