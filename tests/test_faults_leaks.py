"""Nothing of ours outlives a flash: listeners, tasks, timers (not timed).

After a finished DIY flash, a setup-mode flash aborted mid-download and one that
timed out and was cancelled, the process has the same listening sockets as
before the flash (apart from the simulated devices' own), no task running our
code, no timer calling it and no private listener lease. Real sockets and
devices on 127.0.0.1; MQTT is a real Mosquitto.
"""

from __future__ import annotations

from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.setup import async_setup_component
import pytest

from custom_components.sonoff_ota.settings import Timeouts
from tests.harness import (
    LOOPBACK,
    SONOFFS as DIY_SONOFFS,
    confirm_and_flash,
    discover,
    diy_device,
    flash_result,
    free_port,
    install_settings,
    local_firmware,
    setup_device,
    start_setup_mode_flash,
)
from tests.leak_check import Snapshot, listening_sockets, snapshot
from virtual_sonoff.profile import Timing
from virtual_sonoff.setup_mode import Stage as DeviceStage

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.parametrize("expected_lingering_timers", [True]),  # HA's MQTT client
    pytest.mark.parametrize("expected_lingering_tasks", [True]),  # hatasmota's debounce
]


async def settle(hass: HomeAssistant) -> None:
    await hass.async_block_till_done(wait_background_tasks=True)


def leaks(after: Snapshot, before: Snapshot, devices: set[tuple[str, int]]) -> dict[str, object]:
    return after.ours_vs(before, others=devices)


async def test_finished_diy_flash_leaves_nothing(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with diy_device(hass) as (device, _firmware):
        result = await discover(hass, device)
        await settle(hass)
        before = await snapshot(hass)
        final = await confirm_and_flash(hass, result["flow_id"])
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        await settle(hass)
        # The device now runs Tasmota: its own web servers are new, and not ours.
        tasmota = DIY_SONOFFS[id(device)].tasmota
        assert tasmota is not None
        devices = {(LOOPBACK, tasmota.station_port), (LOOPBACK, tasmota.ap_port)}
        assert leaks(await snapshot(hass), before, devices) == {}


async def test_setup_mode_flash_aborted_mid_download_leaves_nothing(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with setup_device(hass, timing=Timing(chunk_delay=0.05)) as (device, _, settings):
        await settle(hass)
        before = await snapshot(hass)
        result = await start_setup_mode_flash(hass)
        await device.wait_for_stage(DeviceStage.DOWNLOADING)
        during = await snapshot(hass)
        assert during.listeners, "the flash had its listeners open"
        assert during.tasks, "and its task running"
        await device.stop()
        hass.config_entries.flow.async_abort(result["flow_id"])
        await settle(hass)
        assert leaks(await snapshot(hass), before, set()) == {}
        assert (LOOPBACK, settings.finalstage_port) not in await hass.async_add_executor_job(
            listening_sockets
        )


async def test_setup_mode_flash_that_timed_out_and_was_cancelled_leaves_nothing(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with local_firmware() as firmware:
        install_settings(
            hass,
            firmware,
            setup_ap_url=f"http://{LOOPBACK}:{free_port()}",
            timeouts=Timeouts(setup_ap=0.2),
        )
        assert await async_setup_component(hass, "http", {})
        await settle(hass)
        before = await snapshot(hass)
        result = await start_setup_mode_flash(hass)
        final = await flash_result(hass, result["flow_id"])
        assert final["step_id"] == "stage_timeout"
        cancelled = await hass.config_entries.flow.async_configure(
            final["flow_id"], {"next_step_id": "cancel"}
        )
        assert cancelled["type"] is FlowResultType.ABORT
        await settle(hass)
        assert leaks(await snapshot(hass), before, set()) == {}
