"""Common hop interface: targets, safety checks, ManualHop.

No radio exists here: the manual hop's "is the address there yet" probe is injected.
Backend selection is in test_host_wifi_choice.py.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from custom_components.sonoff_ota.proto.host_wifi_hop import check_lan_clash, check_wifi_only
from custom_components.sonoff_ota.proto.host_wifi_manual import (
    ManualHop,
    ManualInstruction,
    address_is_local,
)
from custom_components.sonoff_ota.proto.host_wifi_targets import finalstage_target, itead_target
from custom_components.sonoff_ota.proto.host_wifi_types import (
    HopBackend,
    HopError,
    HopErrorCode,
    LinkEvent,
)


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
