"""Diagnostics: useful facts in, every secret out.

The entry and device diagnostics are fetched through HA's diagnostics HTTP API
(as the UI download does) after a real flash of a virtual DIY device on
127.0.0.1. A setup-mode flash cannot run here without the virtual access point,
so its tracker (which knows the device's apikey and quotes the SSID) is added
by hand to check that redaction catches secrets inside details and notes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from homeassistant.components.mqtt import config_flow as mqtt_config_flow
from homeassistant.const import ATTR_ENTITY_ID
from homeassistant.core import HomeAssistant
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.components.diagnostics import (
    get_diagnostics_for_config_entry,
    get_diagnostics_for_device,
)
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from custom_components.sonoff_ota.known_devices import (
    DeviceRecord,
    async_remember_device,
    find_ha_device,
)
from custom_components.sonoff_ota.proto.flash_stages import FlashPath, FlashTracker, Stage
from tests.dashboard_device import discovered_device
from tests.harness import WIFI
from virtual_sonoff.mosquitto import MosquittoBroker

APIKEY = "6a1b2c3d-4e5f-6789-abcd-ef0123456789"
MQTT_USER = "mqtt-user-xyz"
MQTT_PASSWORD = "mqtt-pass-xyz"


@pytest.mark.mosquitto
@pytest.mark.parametrize("expected_lingering_timers", [True])  # HA's MQTT client
@pytest.mark.parametrize("expected_lingering_tasks", [True])  # hatasmota's debounce
async def test_no_secret_appears_anywhere(
    hass: HomeAssistant,
    socket_enabled: None,
    hass_client: ClientSessionGenerator,
    mock_hass_config: None,
    tmp_path: Path,
) -> None:
    """The whole path, hand-off included, with a broker that wants a login."""
    async with (
        MosquittoBroker(tmp_path, username=MQTT_USER, password=MQTT_PASSWORD) as broker,
    ):
        entry = MockConfigEntry(
            domain="mqtt",
            data={
                "broker": broker.host,
                "port": broker.port,
                "username": MQTT_USER,
                "password": MQTT_PASSWORD,
            },
            version=mqtt_config_flow.FlowHandler.VERSION,
            minor_version=mqtt_config_flow.FlowHandler.MINOR_VERSION,
        )
        entry.add_to_hass(hass)
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
        before, entry_diag, dash_deviceid, tasmota_sha = await _flash_and_diagnose(
            hass, hass_client
        )
    _check(before, entry_diag, dash_deviceid, tasmota_sha)


async def _flash_and_diagnose(
    hass: HomeAssistant, hass_client: ClientSessionGenerator
) -> tuple[Any, Any, str, str]:
    async with discovered_device(hass, removed_from_ewelink=True) as dash:
        # a device met in setup mode: its run knew the apikey and the SSID
        setup_tracker = FlashTracker(FlashPath.SETUP_MODE, device_label="10000abcde")
        setup_tracker.advance(Stage.WAIT_SETUP_AP)
        setup_tracker.advance(
            Stage.PROVISIONING,
            note=f"joining {WIFI['ssid']}",
            apikey=APIKEY,
            deviceid="10000abcde",
        )
        setup_tracker.fail("setup_ap_error", reason=f"bad password {WIFI['wifi_password']}")
        dash.entry.runtime_data.flashes.trackers["10000abcde"] = setup_tracker
        async_remember_device(
            hass, dash.entry, DeviceRecord("10000abcde", path="setup_mode", model="ITA-GZ1-GL")
        )
        device = find_ha_device(hass, dash.entry, dash.deviceid)
        assert device is not None
        before: Any = await get_diagnostics_for_device(hass, hass_client, dash.entry, device)
        update_id = dash.entity_id(hass, "update", "firmware")
        await hass.services.async_call(
            "update", "install", {ATTR_ENTITY_ID: update_id}, blocking=True
        )
        entry_diag: Any = await get_diagnostics_for_config_entry(hass, hass_client, dash.entry)
        return before, entry_diag, dash.deviceid, hashlib.sha256(dash.firmware.tasmota).hexdigest()


def _check(before: Any, entry_diag: Any, deviceid: str, tasmota_sha: str) -> None:
    for output in (before, entry_diag):
        text = json.dumps(output)
        for secret in (WIFI["ssid"], WIFI["wifi_password"], APIKEY, MQTT_USER, MQTT_PASSWORD):
            assert secret not in text, f"{secret!r} leaked"

    assert isinstance(before, dict)
    assert before["deviceid"] == deviceid
    assert before["record"]["fw_version"] == "3.6.0"
    assert isinstance(entry_diag, dict)
    # the useful parts are there
    flashed = entry_diag["flashes"][deviceid]
    assert [h["stage"] for h in flashed["history"]] == [
        "preparing",
        "checking",
        "unlocking",
        "flashing",
        "wait_reboot",
        "tasmota_ap",
        "configuring",
        "wait_discovery",
        "done",
    ]
    assert flashed["image_sha256"]["image_sha256"] == tasmota_sha
    assert entry_diag["devices"][deviceid]["state"] == "tasmota"
    assert entry_diag["flashes"]["10000abcde"]["error"]["code"] == "setup_ap_error"
    assert entry_diag["mqtt_configured"] is True
    assert entry_diag["settings"]["firmware_pins"]["user1_sha256"]
