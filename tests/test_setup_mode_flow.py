"""Setup-mode flashing end to end: the config flow against the virtual Sonoff.

Real sockets on 127.0.0.1 for every hop (setup AP, TLS dispatch, WebSocket,
Range downloads, FinalStage over HTTP/1.0). What cannot exist here is the Wi-Fi
radio: the host "joining" ITEAD-<id> and FinalStage is simulated by the
virtual device listening on loopback ports that the settings point at.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.setup import async_setup_component
import pytest

from custom_components.sonoff_ota.const import DOMAIN
from custom_components.sonoff_ota.flash_server import SERVER_KEY
from custom_components.sonoff_ota.settings import Timeouts
from tests.harness import (
    LOOPBACK,
    REAL_MQTT_FLOWS,
    SONOFFS,
    WIFI,
    assert_tasmota_switch_works,
    close_dialog,
    finished_device_id,
    flash_result,
    flow_result,
    free_port,
    install_settings,
    local_firmware,
    pick_path,
    running_setup_device,
    setup_device,
    start_setup_mode_flash,
    wait_until,
    watching_frontend,
)
from tests.proto.legacy_clients import expect_failed_handshakes, legacy_client_context
from virtual_sonoff.flash_memory import ARDUINO_OFFSET
from virtual_sonoff.legacy_tls import TlsVariant
from virtual_sonoff.profile import Fault, Faults, Timing
from virtual_sonoff.setup_mode import Stage as DeviceStage

pytestmark = REAL_MQTT_FLOWS


@pytest.mark.parametrize(("slot", "sessions"), [("user2", 2), ("user1", 1)])
async def test_happy_path_flashes_exactly_the_tasmota_we_served(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None, slot: str, sessions: int
) -> None:
    async with setup_device(hass, running_slot=slot) as (device, firmware, _):
        result = await start_setup_mode_flash(hass)
        final = await flash_result(hass, result["flow_id"])
        entries = hass.config_entries.async_entries(DOMAIN)
        assert len(entries) == 1, final
        assert {key: entries[0].data[key] for key in WIFI} == WIFI
        await device.wait_for_stage(DeviceStage.TASMOTA)
        assert device.flash.image_at(ARDUINO_OFFSET) == firmware.tasmota
        assert device.finalstage_sessions == sessions
        assert device.ap_settings is not None
        assert device.ap_settings.ssid == WIFI["ssid"]
        # ...and the flashed device works in HA through Tasmota discovery
        tasmota = SONOFFS[id(device)].tasmota
        assert tasmota is not None
        assert tasmota.config.ssid1 == WIFI["ssid"]
        await assert_tasmota_switch_works(hass, finished_device_id(final), tasmota)
    server = hass.data[SERVER_KEY]
    assert server.active == {}
    assert server.images.fixed is None


async def test_lost_ap_reply_is_maybe_accepted_and_the_flash_goes_on(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    faults = Faults({Fault.LOSE_AP_REPLY})
    async with setup_device(hass, faults=faults) as (device, firmware, _):
        result = await start_setup_mode_flash(hass)
        await flash_result(hass, result["flow_id"])
        await device.wait_for_stage(DeviceStage.TASMOTA)
        assert device.flash.image_at(ARDUINO_OFFSET) == firmware.tasmota
        assert hass.config_entries.async_entries(DOMAIN)


async def test_tls_1_1_only_firmware_completes(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with setup_device(hass, tls_variant=TlsVariant.TLS11) as (device, firmware, _):
        result = await start_setup_mode_flash(hass)
        await flash_result(hass, result["flow_id"])
        await device.wait_for_stage(DeviceStage.TASMOTA)
        assert device.flash.image_at(ARDUINO_OFFSET) == firmware.tasmota


@pytest.mark.parametrize("rom_version", ["2.6.0", "1.7.0", "3.6.0"])
async def test_pinned_certificate_firmware_gets_the_clear_error(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None, rom_version: str
) -> None:
    # The handler outlives the device: it retries its handshake until it is stopped.
    async with (
        expect_failed_handshakes(1),
        setup_device(hass, rom_version=rom_version) as (device, _, _),
    ):
        result = await start_setup_mode_flash(hass)
        final = await flash_result(hass, result["flow_id"])
        assert final["type"] is FlowResultType.ABORT
        assert final["reason"] == "certificate_pinned"
        assert final["description_placeholders"] == {"rom_version": "?"}  # the text has one
        assert device.reached(DeviceStage.TLS_REJECTED)
        assert not hass.config_entries.async_entries(DOMAIN)


async def test_old_non_range_firmware_gets_404_then_the_paced_retry(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    """Old firmware does one plain GET and rejects an unpaced body (the "404 problem")."""
    async with setup_device(hass, rom_version="1.5.2", uses_range=False) as (device, firmware, _):
        result = await start_setup_mode_flash(hass)
        await flash_result(hass, result["flow_id"])
        await device.wait_for_stage(DeviceStage.TASMOTA)
        assert [ack.error for ack in device.acks if ack.action == "upgrade"] == [404, 0]
        assert all(d.range is None for d in device.downloads)
        assert device.flash.image_at(ARDUINO_OFFSET) == firmware.tasmota


async def test_corrupted_download_gives_404_twice_and_no_flash(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    faults = Faults({Fault.CORRUPT_BYTE})
    async with setup_device(hass, faults=faults) as (device, _, _):
        result = await start_setup_mode_flash(hass)
        final = await flash_result(hass, result["flow_id"])
        assert final["type"] is FlowResultType.ABORT
        assert final["reason"] == "upgrade_rejected"
        assert [ack.error for ack in device.acks if ack.action == "upgrade"] == [404, 404]
        assert device.accepted_upgrade is None
        assert ARDUINO_OFFSET not in device.flash_regions()


async def test_disconnect_mid_download_recovers_on_the_retry(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    faults = Faults({Fault.DROP_MID_DOWNLOAD})
    async with setup_device(hass, faults=faults) as (device, firmware, _):
        result = await start_setup_mode_flash(hass)
        await wait_until(lambda: device.acks, within=10)
        faults.discard(Fault.DROP_MID_DOWNLOAD)  # the network is fine again
        await flash_result(hass, result["flow_id"])
        await device.wait_for_stage(DeviceStage.TASMOTA)
        assert [ack.error for ack in device.acks if ack.action == "upgrade"] == [404, 0]
        assert device.flash.image_at(ARDUINO_OFFSET) == firmware.tasmota


async def test_busy_port_is_reported_before_anything_happens(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with setup_device(hass) as (device, _, settings):
        with socket.socket() as holder:
            holder.bind((LOOPBACK, settings.finalstage_port))
            holder.listen()
            result: Any = await pick_path(hass, "setup_mode")
            result = await hass.config_entries.flow.async_configure(
                result["flow_id"], {"callback_host": LOOPBACK}
            )
            assert result["type"] is FlowResultType.FORM
            assert result["errors"] == {"base": "port_in_use"}
            assert str(settings.finalstage_port) in result["description_placeholders"]["ports"]
        assert device.stage is DeviceStage.AP_MODE  # nothing was sent to the device
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"], {"callback_host": LOOPBACK}
        )
        assert result["type"] is FlowResultType.SHOW_PROGRESS
        await flash_result(hass, result["flow_id"])


async def test_setup_ap_timeout_offers_a_retry_then_succeeds(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    """The host is not on ITEAD-<id> yet (the AP port is closed), then it is."""
    async with local_firmware() as firmware:
        settings = install_settings(hass, firmware)
        ap_port = free_port()
        install_settings(
            hass,
            firmware,
            finalstage_port=settings.finalstage_port,
            setup_ap_url=f"http://{LOOPBACK}:{ap_port}",
            timeouts=Timeouts(setup_ap=0.3, dispatch=5, upgrade=10, finalstage=10),
        )
        assert await async_setup_component(hass, "http", {})
        result = await start_setup_mode_flash(hass)
        final = await flash_result(hass, result["flow_id"])
        assert final["type"] is FlowResultType.MENU
        assert final["step_id"] == "stage_timeout"
        assert final["description_placeholders"]["stage"] == "wait_setup_ap"
        async with running_setup_device(hass, firmware, settings, ap_port=ap_port) as device:
            resumed = await hass.config_entries.flow.async_configure(
                final["flow_id"], {"next_step_id": "flash"}
            )
            assert resumed["type"] is FlowResultType.SHOW_PROGRESS
            done = await flash_result(hass, resumed["flow_id"])
            assert done["type"] is FlowResultType.CREATE_ENTRY, done
            await device.wait_for_stage(DeviceStage.TASMOTA)
            assert device.flash.image_at(ARDUINO_OFFSET) == firmware.tasmota


@pytest.mark.parametrize(
    ("stage", "timing", "timeouts"),
    [
        (
            "wait_dispatch",
            Timing(ap_to_station_delay=1.5),
            Timeouts(dispatch=0.3, upgrade=10, finalstage=10),
        ),
        (
            "upgrading",
            Timing(chunk_delay=0.03),
            Timeouts(dispatch=5, upgrade=0.4, finalstage=10),
        ),
        (
            "wait_finalstage",
            Timing(intermediate_boot_delay=1.5),
            Timeouts(dispatch=5, upgrade=10, finalstage=0.3),
        ),
    ],
    ids=["dispatch", "upgrade", "finalstage"],
)
async def test_slow_device_times_out_and_the_retry_waits_on_without_restarting(
    *,
    hass: HomeAssistant,
    socket_enabled: None,
    real_mqtt: None,
    stage: str,
    timing: Timing,
    timeouts: Timeouts,
) -> None:
    """Each waiting stage times out on a slow device; "try again" only waits longer.

    Nothing is sent twice: one dispatch, one accepted upgrade, one Tasmota written,
    even when the timeout fell in the middle of the intermediate download.
    """
    async with setup_device(hass, timing=timing, timeouts=timeouts) as (device, firmware, _):
        result = await start_setup_mode_flash(hass)
        final = await flash_result(hass, result["flow_id"])
        assert final["type"] is FlowResultType.MENU, final
        assert final["step_id"] == "stage_timeout"
        assert final["description_placeholders"]["stage"] == stage
        flow_id = final["flow_id"]
        for _retry in range(3):  # the user presses "try again"
            if final["type"] is not FlowResultType.MENU:
                break
            resumed = await hass.config_entries.flow.async_configure(
                flow_id, {"next_step_id": "flash"}
            )
            assert resumed["type"] is FlowResultType.SHOW_PROGRESS
            final = await flash_result(hass, flow_id)
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        await device.wait_for_stage(DeviceStage.TASMOTA)
        assert device.flash.image_at(ARDUINO_OFFSET) == firmware.tasmota
        assert [ack.error for ack in device.acks if ack.action == "upgrade"] == [0]


async def test_timeout_then_cancel_closes_every_port(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with local_firmware() as firmware:
        settings = install_settings(
            hass,
            firmware,
            setup_ap_url=f"http://{LOOPBACK}:{free_port()}",
            timeouts=Timeouts(setup_ap=0.2),
        )
        assert await async_setup_component(hass, "http", {})
        result = await start_setup_mode_flash(hass)
        server = hass.data[SERVER_KEY]
        final = await flash_result(hass, result["flow_id"])
        assert final["step_id"] == "stage_timeout"
        tls_port = server.tls_port
        assert tls_port
        await assert_tls_listening(tls_port)
        assert_listening(settings.finalstage_port)
        cancelled = await hass.config_entries.flow.async_configure(
            final["flow_id"], {"next_step_id": "cancel"}
        )
        assert cancelled["type"] is FlowResultType.ABORT
        assert cancelled["reason"] == "cancelled"
        assert_closed(tls_port)
        assert_closed(settings.finalstage_port)


@pytest.mark.parametrize(
    "device_stage", [DeviceStage.AP_MODE, DeviceStage.DOWNLOADING, DeviceStage.FINALSTAGE]
)
async def test_abort_at_any_stage_closes_every_port(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None, device_stage: DeviceStage
) -> None:
    """The user closes the dialog while the flash waits; nothing stays open."""
    slow = Timing(chunk_delay=0.05)
    async with setup_device(hass, timing=slow) as (device, _, settings):
        if device_stage is DeviceStage.AP_MODE:
            # the flow waits on the AP: make the device unreachable before it starts
            await device.stop()
        result = await start_setup_mode_flash(hass)
        server = hass.data[SERVER_KEY]
        if device_stage is DeviceStage.AP_MODE:
            await wait_until(lambda: server.tls_port)  # the flow opened its listeners
        else:
            await device.wait_for_stage(device_stage)
        tls_port = server.tls_port
        await assert_tls_listening(tls_port)
        # Power the device off first: CPython 3.13.0's debug loop asserts when a connection
        # is accepted while a server closes, a race of the test loop, not of the flow.
        await device.stop()
        assert result["flow_id"] in {
            f["flow_id"] for f in hass.config_entries.flow.async_progress()
        }
        await close_dialog(hass, result["flow_id"])
        assert_closed(tls_port)
        assert_closed(settings.finalstage_port)
        assert server.active == {}
        assert server.images.fixed is None
        assert not server.cloud.sessions


def assert_listening(port: int) -> None:
    with socket.create_connection((LOOPBACK, port), timeout=2):
        pass


async def assert_tls_listening(port: int) -> None:
    """A full legacy handshake (a bare TCP probe would be a failed handshake)."""
    context = legacy_client_context(ssl.TLSVersion.TLSv1_2, "AES128-SHA")
    _, writer = await asyncio.open_connection(LOOPBACK, port, ssl=context)
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


def assert_closed(port: int) -> None:
    with pytest.raises(ConnectionRefusedError), socket.create_connection((LOOPBACK, port)):
        pass


async def test_two_fetches_at_once_of_the_ended_progress_both_show_the_finish_form(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    """The frontend fetches the step again (progress event + its own) while the first runs.

    The first fetch of "finish" closes the flash's listeners (it awaits); a second one
    arriving meanwhile found the flash marked finished but no placeholders yet and
    answered with a KeyError (the browser showed an empty "Error" dialog).
    """
    async with setup_device(hass) as (device, _firmware, _):
        result = await start_setup_mode_flash(hass)
        flow_id = result["flow_id"]
        await hass.async_block_till_done(wait_background_tasks=True)
        first, second = await asyncio.gather(
            hass.config_entries.flow.async_configure(flow_id),
            hass.config_entries.flow.async_configure(flow_id),
        )
        for fetched in (first, second):
            assert fetched["type"] is FlowResultType.FORM, fetched
            assert fetched["step_id"] == "finish"
        shown = first["description_placeholders"]
        assert shown is not None
        assert second["description_placeholders"] == shown
        assert shown["deviceid"] == device.config.deviceid
        # the upgrade to full Tasmota is off: this test is about the end of the flash
        done = await hass.config_entries.flow.async_configure(flow_id, {"upgrade": False})
        assert done["type"] is FlowResultType.CREATE_ENTRY


async def test_a_watching_frontend_sees_each_stage_and_then_the_result(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    """Like the UI: fetch the flow on every `data_entry_flow_progressed` event.

    Every fetch must find the flow until the one that returns the final result
    (a refresh that ran the flow to its end itself made the UI say "Invalid flow").
    """
    async with setup_device(hass) as (device, firmware, _), watching_frontend(hass) as watch:
        result = await start_setup_mode_flash(hass)
        flow_id = watch.flow_id = result["flow_id"]
        await hass.async_block_till_done(wait_background_tasks=True)
        await wait_until(lambda: any(r["step_id"] == "finish" for r in watch.fetched))
        await hass.async_block_till_done()
        fetched = watch.fetched
        assert watch.lost == []
        # fetching again is harmless; Submit ends the flow
        done = await flow_result(hass, flow_id)
        assert done["type"] is FlowResultType.CREATE_ENTRY
        actions = [
            r.get("progress_action") for r in fetched if r["type"] is FlowResultType.SHOW_PROGRESS
        ]
        assert {"upgrading", "finalstage"} <= set(actions), actions
        await device.wait_for_stage(DeviceStage.TASMOTA)
        assert device.flash.image_at(ARDUINO_OFFSET) == firmware.tasmota
