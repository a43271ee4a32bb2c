"""DIY-mode flashing end to end: the config flow against virtual DIY devices.

Every request crosses real sockets on 127.0.0.1: the REST calls on the
device's port, the Range downloads from our plain listener, and the device's
result callback. mDNS itself is not run (the virtual device publishes no
multicast): its announcement is handed to the flow as a ZeroconfServiceInfo,
exactly as HA's zeroconf integration would.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from homeassistant.components.http import ApiConfig
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.setup import async_setup_component
import pytest
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from custom_components.sonoff_ota.const import DOMAIN
from custom_components.sonoff_ota.flash_server import SERVER_KEY, async_get_flash_server
from custom_components.sonoff_ota.settings import Timeouts, get_settings
from tests.harness import (
    LOOPBACK,
    REAL_MQTT_FLOWS,
    SONOFFS,
    add_entry,
    answer,
    assert_tasmota_switch_works,
    bare_diy_devices,
    close_dialog,
    confirm_and_flash,
    discover,
    diy_device,
    enter_address,
    finished_device_id,
    flashed,
    flow_result,
    free_port,
    install_settings,
    local_firmware,
    pick_path,
    start_flashes,
    wait_until,
)
from virtual_sonoff.diy import DiyStage
from virtual_sonoff.profile import Fault, Faults, Timing

pytestmark = REAL_MQTT_FLOWS
INTEGRATION = Path(__file__).parent.parent / "custom_components" / "sonoff_ota"


@pytest.mark.parametrize(
    ("language", "fw_version", "row"),
    [("en", "3.8.0", "diy_unverified"), ("de", "3.8.0", "diy_unverified"), ("en", "3.6.0", None)],
)
async def test_confirm_step_says_why_a_flash_may_not_work_in_the_users_language(
    hass: HomeAssistant,
    socket_enabled: None,
    real_mqtt: None,
    *,
    language: str,
    fw_version: str,
    row: str | None,
) -> None:
    """The eligibility row's own sentence, never its code (`unverified_firmware`)."""
    hass.config.language = language
    translations = INTEGRATION / "translations" / f"{language}.json"
    strings = json.loads(await hass.async_add_executor_job(translations.read_text))
    async with diy_device(hass, fw_version=fw_version) as (device, _firmware):
        result = await discover(hass, device)
        assert result["step_id"] == "diy_confirm"
        expected = strings["selector"]["eligibility"]["options"][row] if row else ""
        assert result["description_placeholders"]["warning"] == expected
        hass.config_entries.flow.async_abort(result["flow_id"])
        await hass.async_block_till_done()


@pytest.mark.parametrize("fw_version", ["3.3.0", "3.5.0", "3.6.0", "3.7.6"])
async def test_discovered_device_is_flashed_with_exactly_our_image(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None, fw_version: str
) -> None:
    async with diy_device(hass, fw_version=fw_version, removed_from_ewelink=True) as (
        device,
        firmware,
    ):
        result = await discover(hass, device)
        assert result["type"] is FlowResultType.FORM
        assert result["step_id"] == "diy_confirm"
        assert result["description_placeholders"]["deviceid"] == device.config.deviceid
        assert not device.downloads, "nothing may change before the user confirms"
        final = await confirm_and_flash(hass, result["flow_id"])
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        await device.wait_for_stage(DiyStage.TASMOTA, 10)
        assert flashed(device) == firmware.tasmota
        assert device.callbacks and device.callbacks[-1].error == 0
        assert all(d.range is not None for d in device.downloads)
        assert not device.advertising
        sent = list(device.requests)
        assert all(r.deviceid != "" for r in sent), "never send an empty deviceid"
        assert sum(r.path.endswith("ota_flash") for r in sent) == 1
        tasmota = SONOFFS[id(device)].tasmota
        assert tasmota is not None
        await assert_tasmota_switch_works(hass, finished_device_id(final), tasmota)
    server = hass.data[SERVER_KEY]
    assert server.active == {}


async def test_rediscovery_does_not_start_a_second_flow(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with diy_device(hass) as (device, _):
        first = await discover(hass, device)
        assert first["type"] is FlowResultType.FORM
        second = await discover(hass, device)
        assert second["type"] is FlowResultType.ABORT
        assert second["reason"] == "already_in_progress"
        await close_dialog(hass, first["flow_id"])


async def test_known_device_address_is_updated_on_rediscovery(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with diy_device(hass) as (device, _):
        entry = add_entry(
            hass, devices={device.config.deviceid: {"host": "10.1.2.3", "port": 8081}}
        )
        result = await discover(hass, device)
        assert result["type"] is FlowResultType.ABORT
        assert result["reason"] == "already_configured"
        known = entry.data["devices"][device.config.deviceid]
        assert known["host"] == LOOPBACK
        assert known["port"] == device.port


async def test_manual_entry_reaches_the_same_flash(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with diy_device(hass) as (device, firmware):
        result = await pick_path(hass, "diy_manual")
        assert result["step_id"] == "diy_manual"
        result = await enter_address(hass, result["flow_id"], device.port)
        assert result["step_id"] == "diy_confirm"
        final = await confirm_and_flash(hass, result["flow_id"])
        assert final["type"] is FlowResultType.CREATE_ENTRY
        await device.wait_for_stage(DiyStage.TASMOTA, 10)
        assert flashed(device) == firmware.tasmota


async def test_manual_entry_of_a_dead_address_says_so_and_recovers(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with diy_device(hass) as (device, _):
        result = await pick_path(hass, "diy_manual")
        result = await enter_address(hass, result["flow_id"], free_port())
        assert result["type"] is FlowResultType.FORM
        assert result["errors"] == {"base": "diy_unreachable"}
        result = await enter_address(hass, result["flow_id"], device.port)
        assert result["step_id"] == "diy_confirm"
        await close_dialog(hass, result["flow_id"])


async def test_already_unlocked_device_is_not_unlocked_again(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with diy_device(hass, ota_unlocked=True) as (device, _):
        result = await discover(hass, device)
        await confirm_and_flash(hass, result["flow_id"])
        assert not [r for r in device.requests if r.path.endswith("ota_unlock")]
        await device.wait_for_stage(DiyStage.TASMOTA, 10)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"internet": False}, "unlock_no_internet"),
        ({"unlock_rejected": True}, "unlock_rejected"),
        ({"faults": Faults({Fault.CORRUPT_BYTE})}, "sha256_mismatch"),
        ({"faults": Faults({Fault.DROP_MID_DOWNLOAD})}, "download_failed"),
        ({"internal_error": True}, "flash_device_internal_error"),
        (
            {"reply_before_download": True, "faults": Faults({Fault.CORRUPT_BYTE})},
            "flash_check_failed",
        ),
        (
            {"reply_before_download": True, "faults": Faults({Fault.DROP_MID_DOWNLOAD})},
            "flash_download_failed",
        ),
    ],
)
async def test_device_errors_end_with_their_own_message(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None, config: dict[str, Any], reason: str
) -> None:
    async with diy_device(hass, **config) as (device, _):
        result = await discover(hass, device)
        final = await confirm_and_flash(hass, result["flow_id"])
        assert final["type"] is FlowResultType.ABORT
        assert final["reason"] == reason
        assert flashed(device) is None
        assert sum(r.path.endswith("ota_flash") for r in device.requests) <= 1


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"encrypted": True}, "encrypted_lan_mode"),
        ({"fw_version": "1.1.0", "device_type": "plug"}, "cannot_run_tasmota"),
    ],
)
async def test_ineligible_devices_are_refused_before_anything_changes(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None, config: dict[str, Any], reason: str
) -> None:
    async with diy_device(hass, **config) as (device, _):
        result = await discover(hass, device)
        assert result["type"] is FlowResultType.ABORT
        assert result["reason"] == reason
        assert not [r for r in device.requests if r.path.endswith(("ota_unlock", "ota_flash"))]


async def test_oversize_image_is_caught_before_the_device_sees_it(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with diy_device(hass, tasmota_size=520_193) as (device, _):
        result = await discover(hass, device)
        final = await confirm_and_flash(hass, result["flow_id"])
        assert final["type"] is FlowResultType.FORM
        assert final["step_id"] == "firmware"
        assert final["errors"] == {"base": "firmware_no_suitable_image"}
        assert not [r for r in device.requests if r.path.endswith("ota_flash")]


async def test_device_vanishing_mid_flash_is_never_flashed_twice(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    slow = Timing(chunk_delay=0.02)
    async with diy_device(hass, timing=slow) as (device, firmware):
        install_settings(
            hass, firmware, timeouts=Timeouts(diy_request=2, diy_flash=1.5, diy_reboot=1)
        )
        result = await discover(hass, device)
        flow_id = result["flow_id"]
        await answer(hass, flow_id, {})
        await wait_until(lambda: len(device.downloads) >= 3)
        await device.stop()  # power cut in the middle of the download
        await hass.async_block_till_done(wait_background_tasks=True)
        final = await hass.config_entries.flow.async_configure(flow_id)
        assert final["type"] is FlowResultType.ABORT
        assert final["reason"] == "flash_result_missing"
        assert sum(r.path.endswith("ota_flash") for r in device.requests) == 1


async def test_lost_result_callback_after_a_whole_download_goes_on_to_tasmota(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    """The device flashed but its result POST never arrived (its target is only inferred).

    The whole image went out, so the hand-off looks for Tasmota instead of giving up,
    and the device ends up in HA; `ota_flash` is still sent exactly once.
    """
    async with diy_device(
        hass, faults=Faults({Fault.LOSE_RESULT_CALLBACK}), removed_from_ewelink=True
    ) as (device, firmware):
        install_settings(
            hass,
            firmware,
            tasmota_ap_url=get_settings(hass).tasmota_ap_url,
            timeouts=Timeouts(diy_request=2, diy_flash=1.5, diy_reboot=5, discovery=10),
        )
        result = await discover(hass, device)
        final = await confirm_and_flash(hass, result["flow_id"])
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        assert not device.callbacks
        assert flashed(device) == firmware.tasmota
        assert sum(r.path.endswith("ota_flash") for r in device.requests) == 1
        tasmota = SONOFFS[id(device)].tasmota
        assert tasmota is not None
        await assert_tasmota_switch_works(hass, finished_device_id(final), tasmota)


async def test_stalled_device_times_out_at_the_flash(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with diy_device(hass, faults=Faults({Fault.STALL})) as (device, firmware):
        install_settings(
            hass, firmware, timeouts=Timeouts(diy_request=2, diy_flash=1, diy_reboot=1)
        )
        result = await discover(hass, device)
        final = await confirm_and_flash(hass, result["flow_id"])
        assert final["type"] is FlowResultType.ABORT
        assert final["reason"] == "flash_result_missing"
        assert sum(r.path.endswith("ota_flash") for r in device.requests) == 1


async def test_unlock_that_hangs_times_out(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    """eWeLink 3.7 hangs on unlock while the device is still bound to an eWeLink account."""
    async with diy_device(hass, fw_version="3.7.6", removed_from_ewelink=False) as (device, fw):
        install_settings(hass, fw, timeouts=Timeouts(diy_request=0.5, diy_flash=5))
        result = await discover(hass, device)
        final = await confirm_and_flash(hass, result["flow_id"])
        assert final["type"] is FlowResultType.ABORT
        assert final["reason"] == "timeout"
        assert flashed(device) is None


async def test_ten_devices_flash_at_once(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with local_firmware() as firmware:
        install_settings(hass, firmware)
        assert await async_setup_component(hass, "http", {})
        add_entry(hass)
        # The DIY part is what this test is about: the ten Tasmotas boot with their APs
        # out of reach, so each flow stops at the hand-off (a real host joins one AP at a
        # time; that is the phone-link path).
        install_settings(
            hass,
            firmware,
            timeouts=Timeouts(diy_request=2, diy_flash=20, tasmota_ap=0.5, discovery=0.5),
        )
        async with bare_diy_devices(10, first=10) as devices:
            flows = await start_flashes(hass, devices)
            await hass.async_block_till_done(wait_background_tasks=True)
            await asyncio.gather(*(d.wait_for_stage(DiyStage.TASMOTA, 20) for d in devices))
            for device in devices:
                assert flashed(device) == firmware.tasmota
                assert sum(r.path.endswith("ota_flash") for r in device.requests) == 1
            for flow in flows:
                final = await flow_result(hass, flow["flow_id"])
                assert final["type"] is FlowResultType.ABORT
                assert final["reason"] == "tasmota_not_found"
            assert not hass.config_entries.flow.async_progress()


async def test_image_is_served_from_has_own_server_when_it_is_plain_http(
    hass: HomeAssistant,
    socket_enabled: None,
    real_mqtt: None,
    hass_client_no_auth: ClientSessionGenerator,
) -> None:
    """The default (`serve_from_ha`): downloads and the result callback go to HA's server.

    phcc does not bind HA's own server; `hass_client_no_auth` serves HA's real app on a
    127.0.0.1 port, and `hass.config.api` is pointed at it as HA does at startup.
    """
    async with diy_device(hass, removed_from_ewelink=True) as (device, firmware):
        install_settings(
            hass,
            firmware,
            serve_from_ha=True,
            tasmota_ap_url=get_settings(hass).tasmota_ap_url,
        )
        # Everything that adds routes first: the router freezes once the client serves.
        assert await async_setup_component(hass, DOMAIN, {})
        await async_get_flash_server(hass)  # its views (downloads, result callback)
        client = await hass_client_no_auth()
        ha_port = client.port
        assert ha_port is not None
        hass.config.api = ApiConfig(LOOPBACK, LOOPBACK, ha_port, use_ssl=False)
        result = await discover(hass, device)
        final = await confirm_and_flash(hass, result["flow_id"])
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        assert flashed(device) == firmware.tasmota
        assert device.downloads
        assert all(f":{ha_port}/api/sonoff_ota/fw/" in d.url for d in device.downloads)
        assert all(d.status == 206 for d in device.downloads)
        assert device.callbacks and all(f":{ha_port}/" in c.url for c in device.callbacks)
        assert not any(str(get_settings(hass).finalstage_port) in d.url for d in device.downloads)
