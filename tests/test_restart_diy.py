"""Home Assistant restarts during a DIY download.

Real sockets on 127.0.0.1 against a virtual DIY device, a real Mosquitto and HA's
real MQTT and Tasmota integrations; the restart is `restart_harness`. mDNS
itself is not run: the device's announcement is handed to the config flow's
zeroconf step as HA's zeroconf integration would.
"""

from __future__ import annotations

from typing import Any

from homeassistant.components.repairs import DOMAIN as REPAIRS_DOMAIN
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.exceptions import HomeAssistantError
from homeassistant.setup import async_setup_component
import pytest

from custom_components.sonoff_ota.flash_journal import JOURNAL_KEY
from custom_components.sonoff_ota.known_devices import get_device
from tests.dashboard_device import discover, discovered_device
from tests.harness import wait_until
from tests.restart_harness import (
    assert_no_secret,
    fix,
    journal_records,
    restart_home_assistant,
    restart_issues,
)
from virtual_sonoff.diy import DiyStage
from virtual_sonoff.flash_memory import ARDUINO_OFFSET
from virtual_sonoff.profile import Timing

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.parametrize("expected_lingering_timers", [True]),
    pytest.mark.parametrize("expected_lingering_tasks", [True]),
]


def ota_flashes(device: Any) -> int:
    """How many `ota_flash` requests the device received."""
    return sum(1 for request in device.requests if request.path == "/zeroconf/ota_flash")


async def test_restart_during_a_diy_download(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None, hass_storage: dict[str, Any]
) -> None:
    """Not flashed again until it is back on eWeLink with its old version; then it is."""
    assert await async_setup_component(hass, REPAIRS_DOMAIN, {})
    async with discovered_device(hass, timing=Timing(chunk_delay=0.03)) as dash:
        result: Any = await hass.config_entries.flow.async_configure(dash.flow["flow_id"], {})
        assert result["type"] is FlowResultType.SHOW_PROGRESS, result
        await wait_until(
            lambda: any(r.served for r in hass.data[JOURNAL_KEY].records.values()), within=10
        )
        await restart_home_assistant(hass, dash.entry)

        (issue,) = restart_issues(hass)
        assert issue.translation_key == "restart_diy_download"
        assert not issue.is_fixable, "nothing to offer while the download may still run"
        assert (issue.translation_placeholders or {})["fw_version"] == dash.device.config.fw_version
        assert_no_secret(hass_storage)
        (record,) = journal_records(hass_storage)
        assert record["path"] == "diy"
        assert record["deviceid"] == dash.deviceid
        assert record["images"]["tasmota-lite.bin"]["size"] == len(dash.firmware.tasmota)

        # The dashboard's Install is refused: no second ota_flash while it may download.
        flashes = dash.entry.runtime_data.flashes
        with pytest.raises(HomeAssistantError) as refused:
            await flashes.async_install(dash.deviceid)
        assert refused.value.translation_key == "download_interrupted"
        assert ota_flashes(dash.device) == 1

        # Our server went with the restart: the download fails, eWeLink stays.
        await dash.device.wait_for_stage(DiyStage.FAILED, timeout=10)
        assert dash.device.flash.image_at(ARDUINO_OFFSET) is None

        # It announces itself on _ewelink._tcp with its old version: the flash is offered.
        again = await discover(hass, dash.device)
        assert again["type"] is FlowResultType.ABORT
        assert again["reason"] == "already_configured"
        (issue,) = restart_issues(hass)
        assert issue.translation_key == "restart_diy_back"
        assert issue.is_fixable

        done = await fix(hass, issue.issue_id, [{}])
        assert done["type"] is FlowResultType.CREATE_ENTRY, done
        assert dash.device.flash.image_at(ARDUINO_OFFSET) == dash.firmware.tasmota
        assert ota_flashes(dash.device) == 2
        known = get_device(dash.entry, dash.deviceid)
        assert known is not None and known.flashed
        assert restart_issues(hass) == []
        assert not hass.data[JOURNAL_KEY].records, "every outcome ends its record"


async def test_a_device_back_with_another_version_is_not_offered_a_flash(
    hass: HomeAssistant,
    socket_enabled: None,
    real_mqtt: None,
    hass_storage: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The journal noted 3.6.0; a device answering 3.7.6 is not "back with its old version"."""
    assert await async_setup_component(hass, REPAIRS_DOMAIN, {})
    async with discovered_device(hass, timing=Timing(chunk_delay=0.03)) as dash:
        await hass.config_entries.flow.async_configure(dash.flow["flow_id"], {})
        await wait_until(
            lambda: any(r.served for r in hass.data[JOURNAL_KEY].records.values()), within=10
        )
        await restart_home_assistant(hass, dash.entry)
        await dash.device.wait_for_stage(DiyStage.FAILED, timeout=10)
        dash.device.config.fw_version = "3.7.6"
        await discover(hass, dash.device)
        (issue,) = restart_issues(hass)
        assert issue.translation_key == "restart_diy_download"
        assert "back with eWeLink 3.7.6 (was 3.6.0)" in caplog.text
        assert ota_flashes(dash.device) == 1
