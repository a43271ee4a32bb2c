"""The "Firmware" update entity: discovery creates it, install flashes the device.

Every flash crosses real sockets on 127.0.0.1 against a virtual DIY device (REST
calls, Range downloads from our plain listener, the result callback). Only mDNS
is not run: the announcement is handed to the flow as a ZeroconfServiceInfo.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from homeassistant.components.update import UpdateEntityFeature
from homeassistant.const import ATTR_ENTITY_ID, ATTR_SUPPORTED_FEATURES, STATE_ON
from homeassistant.core import Event, EventStateChangedData, HomeAssistant, callback
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr, entity_registry as er
from homeassistant.helpers.event import async_track_state_change_event
import pytest

from custom_components.sonoff_ota.const import DOMAIN
from custom_components.sonoff_ota.flash_server import SERVER_KEY
from custom_components.sonoff_ota.known_devices import find_ha_device, get_device
from custom_components.sonoff_ota.proto.flash_stages import FlashPath, FlashTracker, Stage
from custom_components.sonoff_ota.settings import Timeouts
from tests.dashboard_device import Dashboard, discovered_device, setup_entry
from tests.harness import assert_tasmota_switch_works, wait_until
from virtual_sonoff.diy import DiyStage
from virtual_sonoff.flash_memory import ARDUINO_OFFSET
from virtual_sonoff.images import tasmota_lite
from virtual_sonoff.profile import Fault, Faults, Timing

# Attribute names as strings: the constants moved between HA versions.
ATTR_IN_PROGRESS = "in_progress"
ATTR_INSTALLED_VERSION = "installed_version"
ATTR_LATEST_VERSION = "latest_version"
ATTR_RELEASE_SUMMARY = "release_summary"
ATTR_UPDATE_PERCENTAGE = "update_percentage"


async def install(hass: HomeAssistant, entity_id: str) -> None:
    await hass.services.async_call("update", "install", {ATTR_ENTITY_ID: entity_id}, blocking=True)


def ota_flashes(dash: Dashboard) -> int:
    return sum(r.path.endswith("ota_flash") for r in dash.device.requests)


async def test_discovery_creates_the_device_and_its_firmware_entity(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    async with discovered_device(hass, fw_version="3.6.0") as dash:
        device = find_ha_device(hass, dash.entry, dash.deviceid)
        assert device is not None
        assert device.manufacturer == "ITEAD"
        assert device.sw_version == "3.6.0"
        assert device.model == "diy_plug"
        entity_id = dash.entity_id(hass, "update", "firmware")
        assert entity_id is not None
        state = hass.states.get(entity_id)
        assert state is not None
        assert state.state == STATE_ON
        assert state.name == f"Sonoff {dash.deviceid} Firmware"
        assert state.attributes[ATTR_INSTALLED_VERSION] == "eWeLink 3.6.0"
        assert state.attributes[ATTR_LATEST_VERSION] == "Tasmota (lite)"
        assert "no way back to eWeLink" in state.attributes[ATTR_RELEASE_SUMMARY]
        features = UpdateEntityFeature(state.attributes[ATTR_SUPPORTED_FEATURES])
        assert UpdateEntityFeature.INSTALL in features
        assert UpdateEntityFeature.PROGRESS in features
        record = get_device(dash.entry, dash.deviceid)
        assert record is not None
        assert (record.path, record.state, record.port) == ("diy", "ewelink", dash.device.port)
        assert not dash.device.downloads, "discovery alone must not touch the device"


@pytest.mark.mosquitto
@pytest.mark.parametrize("expected_lingering_timers", [True])  # HA's MQTT client
@pytest.mark.parametrize("expected_lingering_tasks", [True])  # hatasmota's debounce
async def test_install_flashes_the_device_and_hands_it_over(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with discovered_device(hass, removed_from_ewelink=True) as dash:
        entity_id = dash.entity_id(hass, "update", "firmware")
        assert entity_id is not None
        percentages: list[int | float] = []

        @callback
        def record_state(event: Event[EventStateChangedData]) -> None:
            new = event.data["new_state"]
            if new is not None and new.attributes.get(ATTR_UPDATE_PERCENTAGE) is not None:
                percentages.append(new.attributes[ATTR_UPDATE_PERCENTAGE])
                assert new.attributes[ATTR_IN_PROGRESS] is True

        unsubscribe = async_track_state_change_event(hass, [entity_id], record_state)
        try:
            # The discovery flow still waits at its confirm form, holding the device:
            # pressing install answers it. The frontend's Update button sends the
            # latest version's label as `version`.
            state = hass.states.get(entity_id)
            assert state is not None
            await hass.services.async_call(
                "update",
                "install",
                {ATTR_ENTITY_ID: entity_id, "version": state.attributes[ATTR_LATEST_VERSION]},
                blocking=True,
            )
        finally:
            unsubscribe()
        await dash.device.wait_for_stage(DiyStage.TASMOTA, 10)
        assert dash.device.flash.image_at(ARDUINO_OFFSET) == dash.firmware.tasmota
        assert ota_flashes(dash) == 1
        assert percentages == sorted(percentages), "progress never goes back"
        assert percentages[-1] == 100
        assert len({p for p in percentages if 0 < p < 100}) >= 5, percentages
        record = get_device(dash.entry, dash.deviceid)
        assert record is not None and record.state == "tasmota"
        await hass.async_block_till_done()
        # the eWeLink device and its entities are gone: Tasmota owns the hardware now
        assert hass.states.get(entity_id) is None
        assert dash.entity_id(hass, "update", "firmware") is None
        assert dash.entity_id(hass, "sensor", "flash_stage") is None
        assert find_ha_device(hass, dash.entry, dash.deviceid) is None
        assert hass.data[SERVER_KEY].active == {}
        assert not hass.config_entries.flow.async_progress(), "the confirm form was answered"
        # ...handed over: the device is now HA's Tasmota device, and its relay works
        tasmota = dash.sonoff.tasmota
        assert tasmota is not None
        assert record.mac is not None
        assert record.mac.replace(":", "").upper() == tasmota.mac
        (tasmota_entry,) = hass.config_entries.async_entries("tasmota")
        (ha_device,) = dr.async_entries_for_config_entry(dr.async_get(hass), tasmota_entry.entry_id)
        await assert_tasmota_switch_works(hass, ha_device.id, tasmota)
        # ...and since we flashed it, it carries our "Tasmota firmware" entity, and only that
        # (HA 2025.x: on HA's Tasmota device itself; 2026.x: our device with its MAC)
        # (besides the hub device, which holds the "Flash all eligible devices" button)
        devices = dr.async_entries_for_config_entry(dr.async_get(hass), dash.entry.entry_id)
        hub = {(DOMAIN, dash.entry.entry_id)}
        assert [d.identifiers for d in devices].count(hub) == 1
        (ours,) = [d for d in devices if d.identifiers != hub]
        assert ha_device.connections <= ours.connections
        assert [
            e.unique_id
            for e in er.async_entries_for_device(er.async_get(hass), ours.id)
            if e.platform == "sonoff_ota"
        ] == [f"{tasmota.mac}_tasmota_firmware"]
        firmware_id = er.async_get(hass).async_get_entity_id(
            "update", "sonoff_ota", f"{tasmota.mac}_tasmota_firmware"
        )
        assert firmware_id is not None
        await wait_until(
            lambda: (
                (s := hass.states.get(firmware_id)) is not None
                and s.attributes[ATTR_INSTALLED_VERSION] == "14.4.1 (lite)"
            )
        )


async def test_device_vanishing_mid_download_fails_with_its_reason(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    timeouts = Timeouts(diy_request=2, diy_flash=1.5, diy_reboot=1)
    async with discovered_device(hass, timeouts=timeouts, timing=Timing(chunk_delay=0.02)) as dash:
        entity_id = dash.entity_id(hass, "update", "firmware")
        assert entity_id is not None
        task = asyncio.ensure_future(install(hass, entity_id))
        try:
            await wait_until(lambda: len(dash.device.downloads) >= 3)
            await dash.device.stop()  # power cut in the middle of the download
            with pytest.raises(HomeAssistantError) as caught:
                await task
        finally:
            task.cancel()
        assert caught.value.translation_key == "flash_result_missing"
        assert "stopped reporting during the flash" in str(caught.value)
        assert ota_flashes(dash) == 1, "never sent twice"
        record = get_device(dash.entry, dash.deviceid)
        assert record is not None and record.state == "ewelink"
        state = hass.states.get(entity_id)
        assert state is not None
        assert state.state == STATE_ON
        assert state.attributes[ATTR_IN_PROGRESS] is False


async def test_corrupted_download_fails_with_sha256_mismatch(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    async with discovered_device(hass, faults=Faults({Fault.CORRUPT_BYTE})) as dash:
        entity_id = dash.entity_id(hass, "update", "firmware")
        assert entity_id is not None
        with pytest.raises(HomeAssistantError) as caught:
            await install(hass, entity_id)
        assert caught.value.translation_key == "sha256_mismatch"
        assert "received different bytes than announced" in str(caught.value)
        assert dash.device.flash.image_at(ARDUINO_OFFSET) is None
        record = get_device(dash.entry, dash.deviceid)
        assert record is not None and record.state == "ewelink"


async def test_a_device_already_being_flashed_is_not_flashed_again(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    async with discovered_device(hass) as dash:
        hass.config_entries.flow.async_abort(dash.flow["flow_id"])
        await hass.async_block_till_done()
        entity_id = dash.entity_id(hass, "update", "firmware")
        assert entity_id is not None
        other = FlashTracker(FlashPath.DIY, device_label=dash.deviceid)
        other.advance(Stage.CHECKING)
        other.advance(Stage.FLASHING)  # another window is flashing it
        server = hass.data[SERVER_KEY]
        server.claim(dash.deviceid, other)
        try:
            with pytest.raises(HomeAssistantError) as caught:
                await install(hass, entity_id)
        finally:
            server.release(dash.deviceid, other)
        assert caught.value.translation_key == "device_busy"
        assert dash.deviceid in str(caught.value)
        assert not [r for r in dash.device.requests if r.path.endswith(("unlock", "flash"))]


async def test_setup_mode_device_offers_no_install_and_points_to_the_flow(
    hass: HomeAssistant,
) -> None:
    devices: dict[str, Any] = {
        "10000abcde": {"path": "setup_mode", "state": "ewelink", "model": "ITA-GZ1-GL"}
    }
    entry = await setup_entry(hass, devices=devices)
    assert entry.runtime_data is not None
    entity_id = "update.sonoff_10000abcde_firmware"
    state = hass.states.get(entity_id)
    assert state is not None
    features = UpdateEntityFeature(state.attributes[ATTR_SUPPORTED_FEATURES])
    assert UpdateEntityFeature.INSTALL not in features
    summary = state.attributes[ATTR_RELEASE_SUMMARY]
    assert "Add integration > Sonoff OTA" in summary
    assert "no way back to eWeLink" in summary
    with pytest.raises(HomeAssistantError):
        await install(hass, entity_id)


async def test_devices_learnt_later_get_entities_without_a_reload(hass: HomeAssistant) -> None:
    from custom_components.sonoff_ota.known_devices import (
        DeviceRecord,
        async_remember_device,
    )

    entry = await setup_entry(hass)
    assert not hass.states.async_entity_ids("update")
    async_remember_device(
        hass, entry, DeviceRecord("1000aaaaaa", host="127.0.0.1", port=8081, fw_version="3.5.0")
    )
    await hass.async_block_till_done()
    state = hass.states.get("update.sonoff_1000aaaaaa_firmware")
    assert state is not None
    assert state.attributes[ATTR_INSTALLED_VERSION] == "eWeLink 3.5.0"
    assert hass.states.get("sensor.sonoff_1000aaaaaa_flash_stage") is not None
    # a known device learns a new firmware version: same entity, new state
    async_remember_device(hass, entry, DeviceRecord("1000aaaaaa", fw_version="3.6.0"))
    await hass.async_block_till_done()
    state = hass.states.get("update.sonoff_1000aaaaaa_firmware")
    assert state is not None
    assert state.attributes[ATTR_INSTALLED_VERSION] == "eWeLink 3.6.0"
    assert len(hass.states.async_entity_ids("update")) == 1


async def test_a_discovered_device_can_wait_for_the_dashboard(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """ "Flash it now" off: the device only gets its entities, nothing is sent to it."""
    async with discovered_device(hass) as dash:
        result = await hass.config_entries.flow.async_configure(
            dash.flow["flow_id"], {"flash_now": False}
        )
        assert result["type"] is FlowResultType.ABORT
        assert result["reason"] == "device_added"
        assert dash.entity_id(hass, "update", "firmware") is not None
        assert not [r for r in dash.device.requests if r.path.endswith(("ota_unlock", "ota_flash"))]
        assert hass.data[SERVER_KEY].active == {}


async def test_install_reports_why_the_firmware_cannot_be_used(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """No lite image fits DIY (newest too big, no fallback served): its own reason, no flash."""
    async with discovered_device(hass) as dash:
        dash.firmware.server.files["tasmota-lite.bin"] = tasmota_lite(520_193)
        entity_id = dash.entity_id(hass, "update", "firmware")
        assert entity_id is not None
        with pytest.raises(HomeAssistantError) as caught:
            await install(hass, entity_id)
        assert caught.value.translation_key == "firmware_no_suitable_image"
        placeholders = caught.value.translation_placeholders or {}
        assert placeholders["latest_error"] == "invalid_image"
        assert ota_flashes(dash) == 0
        assert not dash.device.downloads


async def test_install_of_a_chosen_release_flashes_exactly_that_release(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """`update.install` with `version` picks that Tasmota release's lite build.

    The hand-off after the flash has no broker here, so only the flash is checked.
    """
    quick_handoff = Timeouts(diy_request=2, diy_flash=10, diy_reboot=5, discovery=0.5)
    async with discovered_device(hass, timeouts=quick_handoff) as dash:
        release = tasmota_lite(470_000)
        dash.firmware.server.files["tasmota-14.4.1-lite.bin"] = release
        entity_id = dash.entity_id(hass, "update", "firmware")
        assert entity_id is not None
        state = hass.states.get(entity_id)
        assert state is not None
        features = UpdateEntityFeature(state.attributes[ATTR_SUPPORTED_FEATURES])
        assert UpdateEntityFeature.SPECIFIC_VERSION in features
        with pytest.raises(HomeAssistantError) as caught:
            await hass.services.async_call(
                "update",
                "install",
                {ATTR_ENTITY_ID: entity_id, "version": "latest-please"},
                blocking=True,
            )
        assert caught.value.translation_key == "firmware_bad_version"
        assert ota_flashes(dash) == 0
        with contextlib.suppress(HomeAssistantError):  # the hand-off finds no broker
            await hass.services.async_call(
                "update",
                "install",
                {ATTR_ENTITY_ID: entity_id, "version": "v14.4.1"},
                blocking=True,
            )
        await dash.device.wait_for_stage(DiyStage.TASMOTA, 10)
        assert dash.device.flash.image_at(ARDUINO_OFFSET) == release
        assert dash.firmware.server.requests["tasmota-lite.bin"] == 0
