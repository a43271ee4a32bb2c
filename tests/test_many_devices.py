"""Several DIY devices flashed at once from the dashboard: the hub button and `sonoff_ota.flash`.

Every device is a real virtual DIY Sonoff on 127.0.0.1 (REST, Range downloads from
our plain listener, the result callback, then a virtual Tasmota with a real MQTT
client). The hand-off runs against a real Mosquitto and HA's real MQTT and Tasmota
integrations. Only mDNS is not run: each announcement is handed to the config flow
as a ZeroconfServiceInfo. The virtual Tasmotas share one loopback port standing for
192.168.4.1 (each waits until the previous one's access point has closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from homeassistant.components import persistent_notification
from homeassistant.const import ATTR_ENTITY_ID
from homeassistant.core import Event, EventStateChangedData, HomeAssistant, callback
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import device_registry as dr, entity_registry as er
from homeassistant.helpers.event import async_track_state_change_event
from homeassistant.setup import async_setup_component
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.sonoff_ota.const import DOMAIN
from custom_components.sonoff_ota.device_flashes import BatchOutcome, BatchResult, DeviceFlashes
from custom_components.sonoff_ota.known_devices import find_ha_device, get_device
from custom_components.sonoff_ota.settings import Timeouts
from tests.dashboard_device import mock_mqtt, setup_entry
from tests.harness import discover, install_settings, local_firmware, tasmota_ap_port
from virtual_sonoff.diy import DiyConfig, DiyDevice, DiyStage
from virtual_sonoff.flash_memory import ARDUINO_OFFSET
from virtual_sonoff.lifecycle import TasmotaPlan, VirtualSonoff
from virtual_sonoff.profile import Fault, Faults, Timing

UNLOCK_REFUSED = "1000ee0001"
SHA_MISMATCH = "1000ee0003"


@dataclass(slots=True)
class Fleet:
    """The entry and its discovered virtual devices (by deviceid)."""

    entry: MockConfigEntry
    sonoffs: dict[str, VirtualSonoff]
    tasmota: bytes

    def device(self, deviceid: str) -> DiyDevice:
        device = self.sonoffs[deviceid].ewelink
        assert isinstance(device, DiyDevice)
        return device

    def ota_flashes(self, deviceid: str) -> int:
        return sum(r.path.endswith("ota_flash") for r in self.device(deviceid).requests)


def fleet_configs() -> list[DiyConfig]:
    """Five devices: three good ones (3.5, 3.6, 3.7), two failing in different ways."""
    configs = [
        DiyConfig(deviceid="1000ee0000", fw_version="3.5.0"),
        # the vendor cloud refuses the unlock (reply 500)
        DiyConfig(deviceid=UNLOCK_REFUSED, fw_version="3.6.0", unlock_rejected=True),
        DiyConfig(deviceid="1000ee0002", fw_version="3.7.6", removed_from_ewelink=True),
        # one byte flips on the way: the device refuses the image (reply 471)
        DiyConfig(deviceid=SHA_MISMATCH, fw_version="3.6.0", faults=Faults({Fault.CORRUPT_BYTE})),
        DiyConfig(deviceid="1000ee0004", fw_version="3.6.0"),
    ]
    return [
        replace(
            config,
            sta_mac=f"D8:F1:5B:EE:00:{index:02X}",
            source_host=f"127.0.0.{20 + index}",  # distinct LAN addresses
            timing=Timing(chunk_delay=0.005),
        )
        for index, config in enumerate(configs)
    ]


@asynccontextmanager
async def discovered_fleet(
    hass: HomeAssistant, configs: list[DiyConfig], **settings: Any
) -> AsyncIterator[Fleet]:
    """Entry set up, every device running and discovered (their confirm forms open)."""
    async with local_firmware(tasmota_size=200_000) as firmware, AsyncExitStack() as stack:
        installed = install_settings(hass, firmware, **settings)
        assert await async_setup_component(hass, "http", {})
        if not hass.config_entries.async_entries("mqtt"):
            await mock_mqtt(hass)
        entry = await setup_entry(hass)
        plan = TasmotaPlan(ap_port=tasmota_ap_port(installed))
        sonoffs: dict[str, VirtualSonoff] = {}
        for config in configs:
            sonoff = VirtualSonoff("diy", diy=config, tasmota_plan=plan)
            await stack.enter_async_context(sonoff)
            sonoffs[config.deviceid] = sonoff
            device = sonoff.ewelink
            assert isinstance(device, DiyDevice)
            flow = await discover(hass, device)
            assert flow["type"] is FlowResultType.FORM, flow
            assert flow["step_id"] == "diy_confirm"
        await hass.async_block_till_done()
        try:
            yield Fleet(entry, sonoffs, firmware.tasmota)
        finally:
            for progress in hass.config_entries.flow.async_progress():
                hass.config_entries.flow.async_abort(progress["flow_id"])
            await hass.async_block_till_done(wait_background_tasks=True)


async def wait_for_batch(fleet: Fleet) -> list[BatchResult]:
    """The one batch that the press or the action started."""
    flashes: DeviceFlashes = fleet.entry.runtime_data.flashes
    (task,) = flashes.batches
    async with asyncio.timeout(90):
        return await task


def notifications(hass: HomeAssistant) -> list[dict[str, Any]]:
    return [
        dict(notification)
        for notification_id, notification in (
            persistent_notification._async_get_or_create_notifications(hass).items()
        )
        if notification_id.startswith(f"{DOMAIN}_flash_batch")
    ]


@pytest.mark.mosquitto
@pytest.mark.parametrize("expected_lingering_timers", [True])  # HA's MQTT client
@pytest.mark.parametrize("expected_lingering_tasks", [True])  # hatasmota's debounce
async def test_flash_all_flashes_three_and_reports_two_clear_errors(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    """Five devices, one press: three end as Tasmota devices in HA, two fail and say why."""
    # Generous timeouts: five flashes share the CPU with everything else on the machine,
    # and an ota_flash answered late is (rightly) not a sha256 verdict any more.
    patient = Timeouts(diy_request=5, diy_flash=60, diy_reboot=10, tasmota_ap=30, discovery=30)
    async with discovered_fleet(hass, fleet_configs(), timeouts=patient) as fleet:
        registry = er.async_get(hass)
        button = registry.async_get_entity_id("button", DOMAIN, f"{fleet.entry.entry_id}_flash_all")
        assert button is not None
        state = hass.states.get(button)
        assert state is not None
        assert state.name == "Sonoff OTA Flash all eligible devices"
        (hub,) = (
            device
            for device in dr.async_entries_for_config_entry(
                dr.async_get(hass), fleet.entry.entry_id
            )
            if (DOMAIN, fleet.entry.entry_id) in device.identifiers
        )
        assert hub.entry_type is dr.DeviceEntryType.SERVICE
        assert hub.name == "Sonoff OTA"
        updates = {
            deviceid: registry.async_get_entity_id("update", DOMAIN, f"{deviceid}_firmware")
            for deviceid in fleet.sonoffs
        }
        assert None not in updates.values()
        assert sorted(fleet.entry.runtime_data.flashes.eligible()) == sorted(fleet.sonoffs)

        in_progress: set[str] = set()
        most_at_once = 0
        percentages: dict[str, list[int]] = {}

        @callback
        def follow(event: Event[EventStateChangedData]) -> None:
            nonlocal most_at_once
            new = event.data["new_state"]
            if new is None:
                return
            if new.attributes.get("in_progress"):
                in_progress.add(new.entity_id)
            else:
                in_progress.discard(new.entity_id)
            most_at_once = max(most_at_once, len(in_progress))
            if (percentage := new.attributes.get("update_percentage")) is not None:
                percentages.setdefault(new.entity_id, []).append(percentage)

        unsubscribe = async_track_state_change_event(
            hass, [entity_id for entity_id in updates.values() if entity_id], follow
        )
        try:
            await hass.services.async_call(
                "button", "press", {ATTR_ENTITY_ID: button}, blocking=True
            )
            results = await wait_for_batch(fleet)
        finally:
            unsubscribe()
        await hass.async_block_till_done()

        outcomes = {result.deviceid: (result.outcome, result.key) for result in results}
        good = [d for d in fleet.sonoffs if d not in {UNLOCK_REFUSED, SHA_MISMATCH}]
        assert outcomes == {
            **dict.fromkeys(good, (BatchOutcome.DONE, "")),
            UNLOCK_REFUSED: (BatchOutcome.FAILED, "unlock_rejected"),
            SHA_MISMATCH: (BatchOutcome.FAILED, "sha256_mismatch"),
        }
        assert most_at_once >= 2, "the devices were flashed one after the other"
        # every preflight was decided by the eligibility table
        trackers = fleet.entry.runtime_data.flashes.trackers
        assert {d: trackers[d].details["eligibility"] for d in fleet.sonoffs} == dict.fromkeys(
            fleet.sonoffs, "diy_verified"
        )
        # never flashed twice; the refused unlock never got as far as ota_flash
        assert {d: fleet.ota_flashes(d) for d in fleet.sonoffs} == {
            **dict.fromkeys(good, 1),
            UNLOCK_REFUSED: 0,
            SHA_MISMATCH: 1,
        }
        # the three good devices: our image, one Backlog each, Tasmota devices in HA
        macs: set[str] = set()
        for deviceid in good:
            sonoff = fleet.sonoffs[deviceid]
            assert fleet.device(deviceid).stage is DiyStage.TASMOTA
            assert fleet.device(deviceid).flash.image_at(ARDUINO_OFFSET) == fleet.tasmota
            tasmota = sonoff.tasmota
            assert tasmota is not None
            ssid_commands = [c for c in tasmota.commands if c.lower().startswith("ssid1")]
            assert len(ssid_commands) == 1, (deviceid, tasmota.commands)
            record = get_device(fleet.entry, deviceid)
            assert record is not None and record.state == "tasmota"
            assert record.mac is not None
            macs.add(record.mac.replace(":", "").upper())
            assert find_ha_device(hass, fleet.entry, deviceid) is None
            assert hass.states.get(updates[deviceid] or "") is None
            seen = percentages[updates[deviceid] or ""]
            assert seen == sorted(seen), "progress never goes back"
            assert seen[-1] == 100
        assert macs == {fleet.sonoffs[d].mac for d in good}, "each Tasmota linked once"
        (tasmota_entry,) = hass.config_entries.async_entries("tasmota")
        tasmota_devices = dr.async_entries_for_config_entry(
            dr.async_get(hass), tasmota_entry.entry_id
        )
        assert {
            value.replace(":", "").upper()
            for device in tasmota_devices
            for kind, value in device.connections
            if kind == dr.CONNECTION_NETWORK_MAC
        } == macs
        # the two failures: still eWeLink, untouched flash, and their reason on the sensor
        for deviceid, code in (
            (UNLOCK_REFUSED, "unlock_rejected"),
            (SHA_MISMATCH, "sha256_mismatch"),
        ):
            record = get_device(fleet.entry, deviceid)
            assert record is not None and record.state == "ewelink"
            assert fleet.device(deviceid).flash.image_at(ARDUINO_OFFSET) is None
            sensor = registry.async_get_entity_id("sensor", DOMAIN, f"{deviceid}_flash_stage")
            assert sensor is not None
            sensor_state = hass.states.get(sensor)
            assert sensor_state is not None
            assert sensor_state.state == "idle"
            assert sensor_state.attributes["last_error"] == code
            update_state = hass.states.get(updates[deviceid] or "")
            assert update_state is not None and update_state.attributes["in_progress"] is False
        # ...and one notification that says all of it
        (notification,) = notifications(hass)
        assert notification["title"] == "Sonoff OTA: 3 of 5 devices flashed"
        lines = notification["message"].splitlines()
        assert len(lines) == 5
        by_device = {
            deviceid: next(li for li in lines if deviceid in li) for deviceid in fleet.sonoffs
        }
        for deviceid in good:
            assert "now runs Tasmota and is in Home Assistant as" in by_device[deviceid]
        assert "not flashed" in by_device[UNLOCK_REFUSED]
        assert "The eWeLink cloud refused to unlock this device" in by_device[UNLOCK_REFUSED]
        assert "Remove it from the eWeLink app first" in by_device[UNLOCK_REFUSED]
        assert "received different bytes than announced" in by_device[SHA_MISMATCH]
        assert "{" not in notification["message"], "every placeholder filled"


async def test_flash_action_takes_device_ids_and_flashes_each_once(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """`sonoff_ota.flash` with a device named twice and one the table refuses, in German.

    No broker runs, so the hand-off after each flash fails; the flashes themselves
    are what is checked here (the button test above covers the hand-off).
    """
    hass.config.language = "de"
    timing = Timing(chunk_delay=0.005)
    configs = [
        DiyConfig(deviceid=f"1000dd000{i}", source_host=f"127.0.0.{40 + i}", timing=timing)
        for i in range(2)
    ]
    quick = Timeouts(diy_request=2, diy_flash=10, diy_reboot=5, tasmota_ap=0.5, discovery=0.5)
    async with discovered_fleet(hass, configs, timeouts=quick) as fleet:
        devices = dr.async_get(hass)
        first, second = (find_ha_device(hass, fleet.entry, config.deviceid) for config in configs)
        assert first is not None and second is not None
        # a device the table refuses (R4 hardware), known to the entry
        from custom_components.sonoff_ota.known_devices import (
            DeviceRecord,
            async_remember_device,
        )

        async_remember_device(
            hass,
            fleet.entry,
            DeviceRecord(
                "1000dd00ff", host="127.0.0.1", port=1, model="MINIR4", fw_version="1.2.0"
            ),
        )
        await hass.async_block_till_done()
        refused = find_ha_device(hass, fleet.entry, "1000dd00ff")
        assert refused is not None
        assert "1000dd00ff" not in fleet.entry.runtime_data.flashes.eligible()

        await hass.services.async_call(
            DOMAIN,
            "flash",
            {"device_id": [first.id, second.id, first.id, refused.id]},
            blocking=True,
        )
        results = await wait_for_batch(fleet)
        assert [result.deviceid for result in results] == [
            configs[0].deviceid,
            configs[1].deviceid,
            "1000dd00ff",
        ]
        refused_result = results[2]
        assert (refused_result.outcome, refused_result.key) == (
            BatchOutcome.NOT_ELIGIBLE,
            "diy_new_hardware",
        )
        for config in configs:
            assert fleet.ota_flashes(config.deviceid) == 1, "named twice, flashed once"
            await fleet.device(config.deviceid).wait_for_stage(DiyStage.TASMOTA, 10)
            assert fleet.device(config.deviceid).flash.image_at(ARDUINO_OFFSET) == fleet.tasmota
        (notification,) = notifications(hass)
        assert notification["title"] == "Sonoff OTA: 0 von 3 Geräten geflasht"
        lines = notification["message"].splitlines()
        assert len(lines) == 3
        assert lines[2] == (
            "- Sonoff 1000dd00ff: nicht geflasht. Diese neuere Hardware (R4, BL602 oder ESP32) "
            "kann Tasmota überhaupt nicht ausführen."
        )
        # no broker: HA's MQTT integration says why, in its own (translated) words
        assert all("nicht geflasht" in line for line in lines[:2]), lines
        assert not any("exceptions." in line for line in lines), lines
        assert "{" not in notification["message"]
        assert devices.async_get(refused.id) is not None, "the refused device was left alone"


async def test_flash_all_refuses_when_nothing_is_eligible(hass: HomeAssistant) -> None:
    """Only a setup-mode device and an R4: the press says so and starts nothing."""
    await mock_mqtt(hass)
    devices: dict[str, Any] = {
        "10000abcde": {"path": "setup_mode", "state": "ewelink", "fw_version": "2.0.4"},
        "1000aa00ff": {
            "host": "127.0.0.1",
            "port": 8081,
            "model": "BASICR4",
            "fw_version": "1.1.0",
        },
        "1000aa0001": {"host": "127.0.0.1", "port": 8081, "state": "tasmota"},
    }
    entry = await setup_entry(hass, devices=devices)
    flashes = entry.runtime_data.flashes
    assert flashes.eligible() == []
    button = er.async_get(hass).async_get_entity_id("button", DOMAIN, f"{entry.entry_id}_flash_all")
    assert button is not None
    with pytest.raises(HomeAssistantError) as caught:
        await hass.services.async_call("button", "press", {ATTR_ENTITY_ID: button}, blocking=True)
    assert caught.value.translation_key == "nothing_to_flash"
    assert not flashes.batches
    assert not notifications(hass)
    # the action refuses a device that is not ours before anything starts
    other = MockConfigEntry(domain="demo")
    other.add_to_hass(hass)
    foreign = dr.async_get(hass).async_get_or_create(
        config_entry_id=other.entry_id, identifiers={("demo", "x")}
    )
    with pytest.raises(ServiceValidationError) as invalid:
        await hass.services.async_call(DOMAIN, "flash", {"device_id": [foreign.id]}, blocking=True)
    assert invalid.value.translation_key == "not_a_sonoff_device"
    assert not flashes.batches
