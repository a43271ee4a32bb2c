"""Home Assistant restarts in the middle of a setup-mode flash, at each stage.

Real sockets on 127.0.0.1 against the virtual Sonoff, a real Mosquitto and HA's
real MQTT and Tasmota integrations. The restart is `restart_harness`: HA's stop
(flows aborted while stopping, listeners closed, the journal's final write),
then a start with none of the process's memory (the entry set up again reads
the journal from HA's storage). What cannot exist here is the Wi-Fi radio: the
host "being on FinalStage" is the virtual intermediate image reaching the
FinalStage listener's loopback port. To stop the device at one exact stage, a
test may hold the virtual device's WebSocket connect (`held_websocket`): that is
the device's timing, not our code, that is controlled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from homeassistant import config_entries, loader
from homeassistant.components.repairs import DOMAIN as REPAIRS_DOMAIN
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowHandler, FlowResultType
from homeassistant.setup import async_setup_component
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_test_home_assistant,
)

from custom_components.sonoff_ota.const import DOMAIN
from custom_components.sonoff_ota.flash_journal import JOURNAL_KEY
from custom_components.sonoff_ota.flash_server import SERVER_KEY
from custom_components.sonoff_ota.known_devices import get_device
from custom_components.sonoff_ota.proto.flash_stages import Stage
from custom_components.sonoff_ota.settings import SETTINGS_KEY, Timeouts
from tests.dashboard_device import setup_entry
from tests.frontend_dialog import FrontendDialog
from tests.harness import (
    LOOPBACK,
    Firmware,
    free_port,
    held_download,
    install_settings,
    local_firmware,
    running_setup_device,
    setup_device,
    setup_real_mqtt,
    wait_until,
)
from tests.restart_harness import (
    assert_no_secret,
    fix,
    journal_records,
    restart_home_assistant,
    restart_issues,
    stop_home_assistant,
)
from virtual_sonoff.ewelink_station import EwelinkStation
from virtual_sonoff.flash_memory import ARDUINO_OFFSET, USER1_OFFSET
from virtual_sonoff.intermediate import ARDUINO_PATH, USER2_PATH
from virtual_sonoff.mosquitto import MosquittoBroker
from virtual_sonoff.profile import FAST, Fault, Faults, Timing
from virtual_sonoff.setup_mode import SetupModeDevice, Stage as DeviceStage

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.parametrize("expected_lingering_timers", [True]),
    pytest.mark.parametrize("expected_lingering_tasks", [True]),
]


@asynccontextmanager
async def flashing_device(
    hass: HomeAssistant,
    *,
    timing: Timing | None = None,
    timeouts: Timeouts | None = None,
    faults: Faults | None = None,
) -> AsyncIterator[tuple[SetupModeDevice, Firmware, MockConfigEntry]]:
    """The entry (it holds the Wi-Fi), the virtual Sonoff in setup mode, its firmware."""
    async with setup_device(
        hass, timeouts=timeouts, timing=timing or FAST, faults=faults or Faults()
    ) as (device, firmware, _):
        assert await async_setup_component(hass, REPAIRS_DOMAIN, {})
        entry = await setup_entry(hass)
        yield device, firmware, entry


async def start_flow(hass: HomeAssistant) -> dict[str, Any]:
    """A setup-mode flash from the config flow (the entry holds the Wi-Fi)."""
    result: Any = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_USER}
    )
    assert result["type"] is FlowResultType.MENU
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"next_step_id": "setup_mode"}
    )
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"callback_host": LOOPBACK}
    )
    assert result["type"] is FlowResultType.SHOW_PROGRESS, result
    return dict(result)


def journal_stage(hass: HomeAssistant) -> Stage | None:
    """The stage the (one) running flash's record is at."""
    records = list(hass.data[JOURNAL_KEY].records.values()) if JOURNAL_KEY in hass.data else []
    return records[0].stage if len(records) == 1 else None


def upgrades(device: SetupModeDevice) -> list[int]:
    """The device's acks of upgrade actions (one per upgrade it was sent)."""
    return [ack.error for ack in device.acks if ack.action == "upgrade"]


@contextmanager
def held_websocket(monkeypatch: pytest.MonkeyPatch) -> Iterator[asyncio.Event]:
    """Hold the virtual device between its dispatch and its WebSocket until released."""
    release = asyncio.Event()
    original: Callable[..., Awaitable[Any]] = EwelinkStation._websocket

    async def held(self: EwelinkStation, *args: Any) -> Any:
        await release.wait()
        return await original(self, *args)

    monkeypatch.setattr(EwelinkStation, "_websocket", held)
    yield release


async def test_restart_while_the_intermediate_image_waits_on_finalstage(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None, hass_storage: dict[str, Any]
) -> None:
    """The listener comes back by itself; the repair flow finishes with the hand-off."""
    slow_boot = Timing(intermediate_boot_delay=1.5)
    async with flashing_device(hass, timing=slow_boot) as (device, firmware, entry):
        await start_flow(hass)
        await wait_until(lambda: journal_stage(hass) is Stage.WAIT_FINALSTAGE, within=15)
        assert device.stage in {DeviceStage.REBOOTING, DeviceStage.INTERMEDIATE_BOOT}
        await restart_home_assistant(hass, entry)

        (issue,) = restart_issues(hass)
        assert issue.translation_key == "restart_finalstage"
        assert issue.is_fixable
        assert (issue.translation_placeholders or {})["deviceid"] == device.config.deviceid
        assert_no_secret(hass_storage, device.config.apikey)
        (record,) = journal_records(hass_storage)
        assert record["deviceid"] == device.config.deviceid
        assert record["upgrade_accepted"] is True
        assert set(record["images"]) == {
            "image_user1-0x01000.bin",
            "image_user2-0x81000.bin",
            "image_arduino.bin",
        }

        # The intermediate image kept polling; the re-opened listener serves it (HTTP/1.0 GETs).
        await device.wait_for_stage(DeviceStage.TASMOTA, timeout=20)
        assert [f.path for f in device.finalstage_fetches if f.ok] == [USER2_PATH, ARDUINO_PATH]
        assert device.flash.image_at(ARDUINO_OFFSET) == firmware.tasmota

        done = await fix(hass, issue.issue_id, [{}])
        assert done["type"] is FlowResultType.CREATE_ENTRY, done
        assert restart_issues(hass) == []
        assert not hass.data[JOURNAL_KEY].records
        known = get_device(entry, device.config.deviceid)
        assert known is not None and known.flashed
        assert upgrades(device) == [0], "nothing is sent twice"
        server = hass.data[SERVER_KEY]
        assert server.active == {}
        assert server.images.fixed is None


async def test_restart_after_the_intermediate_download_before_the_ack(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None, hass_storage: dict[str, Any]
) -> None:
    """The image was served whole: the device reboots into FinalStage, which is served again.

    The device's ack then goes to a dead WebSocket; the journal's "served whole" is
    what says the intermediate image is on the device.
    """
    slow_boot = Timing(intermediate_boot_delay=1.5)
    async with flashing_device(hass, timing=slow_boot) as (device, firmware, entry):
        seen: list[str] = []

        def complete_before_ack() -> bool:
            records = list(hass.data[JOURNAL_KEY].records.values())
            if records and records[0].complete:
                seen.extend(records[0].complete)
                return True
            return False

        await start_flow(hass)
        await wait_until(complete_before_ack, within=15)
        await restart_home_assistant(hass, entry)
        (issue,) = restart_issues(hass)
        assert issue.translation_key == "restart_finalstage"
        assert "image_user1-0x01000.bin" in seen
        await device.wait_for_stage(DeviceStage.TASMOTA, timeout=20)
        assert device.flash.image_at(ARDUINO_OFFSET) == firmware.tasmota
        done = await fix(hass, issue.issue_id, [{}])
        assert done["type"] is FlowResultType.CREATE_ENTRY, done
        assert len(upgrades(device)) == 1
        assert hass.data[SERVER_KEY].images.fixed is None


@pytest.mark.skipif(
    not hasattr(FlowHandler, "async_update_progress"), reason="no ring before HA 2025.5"
)
async def test_the_repair_dialog_keeps_its_ring_through_each_refresh(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    """The repair's hand-off refreshes its text at each stage; the ring follows each refresh.

    The frontend blanks the ring on each refresh event (`tests.frontend_dialog`): the
    number must come after it, or the dialog shows a spinner until the next change.
    """
    slow_boot = Timing(intermediate_boot_delay=1.5)
    async with flashing_device(hass, timing=slow_boot) as (device, _firmware, entry):
        await start_flow(hass)
        await wait_until(lambda: journal_stage(hass) is Stage.WAIT_FINALSTAGE, within=15)
        await restart_home_assistant(hass, entry)
        (issue,) = restart_issues(hass)
        await device.wait_for_stage(DeviceStage.TASMOTA, timeout=20)

        manager = hass.data[REPAIRS_DOMAIN]["flow_manager"]
        result: Any = await manager.async_init(DOMAIN, data={"issue_id": issue.issue_id})
        assert result["type"] is FlowResultType.SHOW_PROGRESS, result
        assert result["step_id"] == "handoff"
        flow: Any = manager._progress[result["flow_id"]]
        dialog = FrontendDialog(hass, manager, result["flow_id"])
        blank_after: list[int] = []

        def check_ring() -> None:
            if flow._task is not None and not flow._task.done() and dialog.ring is None:
                blank_after.append(dialog.refreshes)

        dialog.on_refresh = check_ring
        await dialog.open()
        await hass.async_block_till_done()  # the hand-off runs to its end
        dialog.close()
        assert dialog.refreshes >= 1
        assert blank_after == [], "the ring was left blank after these refreshes"

        done = await manager.async_configure(result["flow_id"])
        assert done["step_id"] == "done", done
        done = await manager.async_configure(result["flow_id"], {})
        assert done["type"] is FlowResultType.CREATE_ENTRY, done


async def test_restart_during_the_intermediate_download(
    hass: HomeAssistant,
    socket_enabled: None,
    real_mqtt: None,
    hass_storage: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Part of the image served: the device keeps its old slot; the issue says how to start over."""
    with held_download(monkeypatch) as release:
        async with flashing_device(hass, faults=Faults({Fault.STALL})) as (device, _, entry):
            await start_flow(hass)
            await wait_until(lambda: "download_stalled" in device.event_kinds(), within=15)
            await wait_until(lambda: any(r.served for r in hass.data[JOURNAL_KEY].records.values()))
            await restart_home_assistant(hass, entry)
            release.set()  # the device goes on with its download: the server is gone
            await _download_cut(hass, hass_storage, device)


async def _download_cut(
    hass: HomeAssistant, hass_storage: dict[str, Any], device: SetupModeDevice
) -> None:
    """After the restart: the issue, the device on its old slot, no second upgrade."""
    (issue,) = restart_issues(hass)
    assert issue.translation_key == "restart_download"
    assert (issue.translation_placeholders or {})["fw_version"] == device.config.rom_version
    assert_no_secret(hass_storage, device.config.apikey)
    # The device's download fails; it keeps its old slot and calls a cloud that is gone.
    await wait_until(lambda: device.acks, within=10)
    assert upgrades(device) == [404]
    assert device.accepted_upgrade is None
    assert USER1_OFFSET not in device.flash_regions()
    await wait_until(lambda: device.station is not None and device.station.dispatches, 1)
    # The repair flow explains and forgets; no upgrade was offered again.
    done = await fix(hass, issue.issue_id, [{}])
    assert done["type"] is FlowResultType.CREATE_ENTRY
    assert restart_issues(hass) == []
    assert not hass.data[JOURNAL_KEY].records
    assert upgrades(device) == [404]


async def test_restart_after_dispatch_before_the_download(
    hass: HomeAssistant,
    socket_enabled: None,
    real_mqtt: None,
    hass_storage: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dispatched, WebSocket not yet open: nothing written; no upgrade after the restart."""
    with held_websocket(monkeypatch) as release:
        async with flashing_device(hass) as (device, _, entry):
            await start_flow(hass)
            await wait_until(lambda: journal_stage(hass) is Stage.CLOUD_SESSION, within=15)
            await restart_home_assistant(hass, entry)
            (issue,) = restart_issues(hass)
            assert issue.translation_key == "restart_session"
            assert_no_secret(hass_storage, device.config.apikey)
            release.set()  # the device goes on calling: nobody answers with an upgrade
            await wait_until(lambda: "dispatch_failed" in device.event_kinds())
            assert upgrades(device) == []
            assert device.accepted_upgrade is None
            done = await fix(hass, issue.issue_id, [{}])
            assert done["type"] is FlowResultType.CREATE_ENTRY
            assert restart_issues(hass) == []


async def test_restart_before_the_ap_step_and_the_flash_starts_over(
    hass: HomeAssistant,
    socket_enabled: None,
    real_mqtt: None,
    hass_storage: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HA restarts while it waits for the device's setup AP; a new flash then just works.

    The new flash's journal is saved on changes that matter, not once per 4 KiB chunk.
    """
    async with local_firmware() as firmware:
        settings = install_settings(
            hass,
            firmware,
            setup_ap_url=f"http://{LOOPBACK}:{free_port()}",  # the AP is not reachable yet
            timeouts=Timeouts(setup_ap=30, dispatch=5, upgrade=10, finalstage=10),
        )
        assert await async_setup_component(hass, "http", {})
        assert await async_setup_component(hass, REPAIRS_DOMAIN, {})
        entry = await setup_entry(hass)
        await start_flow(hass)
        await wait_until(lambda: journal_stage(hass) is Stage.WAIT_SETUP_AP)
        await restart_home_assistant(hass, entry)
        (issue,) = restart_issues(hass)
        assert issue.translation_key == "restart_setup_ap"
        assert issue.is_fixable
        assert_no_secret(hass_storage)
        done = await fix(hass, issue.issue_id, [{}])
        assert done["type"] is FlowResultType.CREATE_ENTRY
        assert restart_issues(hass) == []

        # The user holds the button and starts again: the flash runs to its end.
        journal = hass.data[JOURNAL_KEY]
        saves: list[object] = []
        delay_save = journal._store.async_delay_save

        def counted(*args: Any, **kwargs: Any) -> None:
            saves.append(args)
            delay_save(*args, **kwargs)

        monkeypatch.setattr(journal._store, "async_delay_save", counted)
        async with running_setup_device(hass, firmware, settings) as device:
            hass.data.pop(SERVER_KEY)  # the flash server keeps the settings of its creation
            result = await start_flow(hass)
            await hass.async_block_till_done(wait_background_tasks=True)
            final = await hass.config_entries.flow.async_configure(result["flow_id"])
            assert final["step_id"] == "finish", final
            await device.wait_for_stage(DeviceStage.TASMOTA)
            assert upgrades(device) == [0]
            chunks = [d for d in device.downloads if d.range is not None]
            assert len(chunks) > 50
            assert 0 < len(saves) < len(chunks) / 3, "a write per chunk"
            # end the flow without the upgrade to full Tasmota (this test is about the flash)
            await hass.config_entries.flow.async_configure(result["flow_id"], {"upgrade": False})
        assert not hass.data[JOURNAL_KEY].records, "every outcome ends its record"


async def test_a_fresh_home_assistant_finishes_the_flash_from_storage(
    hass: HomeAssistant,
    socket_enabled: None,
    real_mqtt: None,
    hass_storage: dict[str, Any],
    broker: MosquittoBroker,
) -> None:
    """A second HA instance with the same storage and config dir (a real new start).

    The first one stops at FinalStage; the second starts from the shared storage
    (`hass_storage`: the journal; the config dir: the firmware cache), with the
    same config entry, and finishes the flash.
    """
    slow_boot = Timing(intermediate_boot_delay=1.5)
    async with flashing_device(hass, timing=slow_boot) as (device, firmware, entry):
        await start_flow(hass)
        await wait_until(lambda: journal_stage(hass) is Stage.WAIT_FINALSTAGE, within=15)
        await stop_home_assistant(hass)
        async with async_test_home_assistant(config_dir=hass.config.config_dir) as fresh:
            try:
                await _finish_in(
                    fresh,
                    hass=hass,
                    entry=entry,
                    device=device,
                    firmware=firmware,
                    broker=broker,
                )
            finally:
                await fresh.async_stop(force=True)  # its final write, its executors
        # the record's removal reached the storage (at the latest with the final write)
        assert journal_records(hass_storage) == []


async def _finish_in(
    fresh: HomeAssistant,
    *,
    hass: HomeAssistant,
    entry: MockConfigEntry,
    device: SetupModeDevice,
    firmware: Firmware,
    broker: MosquittoBroker,
) -> None:
    """The second instance: same YAML settings and entry; the flash is finished there."""
    fresh.data.pop(loader.DATA_CUSTOM_COMPONENTS)
    fresh.data[SETTINGS_KEY] = hass.data[SETTINGS_KEY]  # the same YAML
    assert await async_setup_component(fresh, "http", {})
    assert await async_setup_component(fresh, REPAIRS_DOMAIN, {})
    await setup_real_mqtt(fresh, broker)
    again = MockConfigEntry(domain=DOMAIN, unique_id=DOMAIN, data=dict(entry.data))
    again.add_to_hass(fresh)
    assert await fresh.config_entries.async_setup(again.entry_id)
    await fresh.async_block_till_done()

    (issue,) = restart_issues(fresh)
    assert issue.translation_key == "restart_finalstage"
    await device.wait_for_stage(DeviceStage.TASMOTA, timeout=20)
    assert device.flash.image_at(ARDUINO_OFFSET) == firmware.tasmota
    done = await fix(fresh, issue.issue_id, [{}])
    assert done["type"] is FlowResultType.CREATE_ENTRY, done
    known = get_device(again, device.config.deviceid)
    assert known is not None and known.flashed
    assert upgrades(device) == [0]
    assert not fresh.data[JOURNAL_KEY].records
