"""Backend choice: by setting, or NetworkManager, else the Supervisor, else the manual hop.

No radio exists here: the backends are selected against a fake NetworkManager on a private
dbus-daemon and a fake Supervisor on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from custom_components.sonoff_ota.proto.host_wifi_choice import (
    HopOptions,
    create_hop,
    prepare_hop,
    select_backend,
)
from custom_components.sonoff_ota.proto.host_wifi_manual import ManualHop
from custom_components.sonoff_ota.proto.host_wifi_nm import NmWifiHop
from custom_components.sonoff_ota.proto.host_wifi_supervisor import SupervisorWifiHop
from custom_components.sonoff_ota.proto.host_wifi_types import HopBackend, HopError, HopErrorCode

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


async def test_select_networkmanager_when_reachable(config: BusConfig) -> None:
    """A bus with NM on it wins over a configured Supervisor (fake NM, no radio)."""
    async with (
        running_fake_nm(config, FakeNetworkManager()) as env,
        aiohttp.ClientSession() as session,
    ):
        hop = await select_backend(
            HopOptions(
                nm_bus_address=env.address,
                environ={"SUPERVISOR": "127.0.0.1:9", "SUPERVISOR_TOKEN": "t"},
            ),
            session=session,
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
                HopOptions(
                    nm_bus_address=f"unix:path={tmp_path}/no-bus",
                    environ={"SUPERVISOR": host, "SUPERVISOR_TOKEN": "tok"},
                ),
                session=session,
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
        hop = await select_backend(HopOptions(nm_bus_address=env.address, environ={}))
        assert isinstance(hop, ManualHop)
        await nm.attach(env.address)


async def test_select_manual_without_anything(tmp_path: Path, socket_enabled: None) -> None:
    """Nothing reachable: ManualHop (from the factory when given)."""
    with unix_sockets_allowed():
        custom = ManualHop(poll_interval=0.5)
        hop = await select_backend(
            HopOptions(nm_bus_address=f"unix:path={tmp_path}/no-bus", environ={}),
            manual_factory=lambda: custom,
        )
    assert hop is custom


def _no_session() -> aiohttp.ClientSession:
    raise AssertionError("the session is needed only when the Supervisor may be used")


async def test_create_hop_by_setting() -> None:
    """Each `wifi_hop` setting builds its backend; nothing is contacted (no radio)."""
    assert isinstance(await create_hop("manual", session=_no_session), ManualHop)
    nm = await create_hop("networkmanager", HopOptions(interface="wlan1"), session=_no_session)
    assert isinstance(nm, NmWifiHop)
    assert "wlan1" in repr(nm)
    async with aiohttp.ClientSession() as session:
        sup = await create_hop(
            "supervisor",
            HopOptions(environ={"SUPERVISOR": "127.0.0.1:9", "SUPERVISOR_TOKEN": "tok"}),
            session=lambda: session,
        )
        assert isinstance(sup, SupervisorWifiHop)
        assert "http://127.0.0.1:9" in repr(sup)
        assert "tok" not in repr(sup)
        with pytest.raises(HopError) as err:
            await create_hop("supervisor", HopOptions(environ={}), session=lambda: session)
        assert err.value.code is HopErrorCode.BACKEND_UNAVAILABLE


async def test_prepare_hop_auto_falls_back_to_manual(config: BusConfig) -> None:
    """`auto`: NM has no such Wi-Fi device, so the user hops; a named backend refuses instead.

    Fake NM on a private bus, no radio.
    """
    async with (
        running_fake_nm(config, FakeNetworkManager()) as env,
        aiohttp.ClientSession() as session,
    ):
        hop, plan = await prepare_hop(
            "auto",
            HopOptions(nm_bus_address=env.address, interface="wlan9", environ={}),
            session=lambda: session,
        )
        assert isinstance(hop, ManualHop)
        assert plan.backend is HopBackend.MANUAL
        with pytest.raises(HopError) as err:
            await prepare_hop(
                "networkmanager",
                HopOptions(nm_bus_address=env.address, interface="wlan9"),
                session=_no_session,
            )
        assert err.value.code is HopErrorCode.NO_WIFI_INTERFACE


def test_hop_options_repr_hides_secrets() -> None:
    """The home PSK and the environment's Supervisor token never show in the repr (logs)."""
    options = HopOptions(
        interface="wlan0",
        home_wifi=("home", "home-psk-secret"),
        environ={"SUPERVISOR_TOKEN": "token-secret"},
    )
    text = repr(options)
    assert "wlan0" in text
    assert "home-psk-secret" not in text
    assert "token-secret" not in text
