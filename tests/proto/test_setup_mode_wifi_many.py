"""`SetupModeWifi` with two setup APs in range, through a fake NetworkManager on a private bus.

The radio is the only fake (`fake_networkmanager`): D-Bus and the NM backend are real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from custom_components.sonoff_ota.proto.flash_stages import FlashPath, FlashTracker
from custom_components.sonoff_ota.proto.host_wifi_nm import NmWifiHop
from custom_components.sonoff_ota.proto.setup_mode_errors import SetupModeError
from custom_components.sonoff_ota.proto.setup_mode_wifi import SetupModeWifi

from .fake_networkmanager import (
    BusConfig,
    FakeNetworkManager,
    bus_config,
    running_fake_nm,
    unix_sockets_allowed,
)

FIRST, SECOND = "ITEAD-10000a11a1", "ITEAD-10000b22b2"


@pytest.fixture
def config(tmp_path: Path, socket_enabled: None) -> Iterator[BusConfig]:
    """Bus config; phcc blocks AF_UNIX connects too (see `unix_sockets_allowed`)."""
    with unix_sockets_allowed():
        yield bus_config(tmp_path)


async def test_several_setup_aps_are_refused_and_listed(config: BusConfig) -> None:
    nm = FakeNetworkManager()
    nm.add_ap(SECOND, "12345678", announce=False)
    nm.add_ap(FIRST, "12345678", announce=False)
    async with running_fake_nm(config, nm) as env:
        wifi = SetupModeWifi(NmWifiHop(bus_address=env.address), FlashTracker(FlashPath.SETUP_MODE))
        with pytest.raises(SetupModeError) as err:
            await wifi.join_setup_ap(5)
        assert err.value.code == "wifi_several_setup_aps"
        assert wifi.setup_aps_found == (FIRST, SECOND)  # sorted
        await wifi.restore()
        assert nm.wifi_ssid() == "HomeNet"
        assert "AddAndActivateConnection2" not in nm.log.names()  # only looked


async def test_a_pinned_hop_joins_exactly_its_setup_ap(config: BusConfig) -> None:
    nm = FakeNetworkManager()
    nm.add_ap(FIRST, "12345678", announce=False)
    nm.add_ap(SECOND, "12345678", announce=False)
    async with running_fake_nm(config, nm) as env:
        tracker = FlashTracker(FlashPath.SETUP_MODE)
        wifi = SetupModeWifi(NmWifiHop(bus_address=env.address), tracker, setup_ssid=SECOND)
        await wifi.join_setup_ap(5)
        assert nm.wifi_ssid() == SECOND
        assert wifi.on == SECOND
        assert wifi.setup_aps_found == ()
        await wifi.restore()
        assert nm.wifi_ssid() == "HomeNet"
