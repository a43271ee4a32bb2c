"""Home Assistant restarts during a DIY download.

Real sockets on 127.0.0.1 against a virtual DIY device, a real Mosquitto and HA's
real MQTT and Tasmota integrations; the restart is `restart_harness`. mDNS
itself is not run: the device's announcement is handed to the config flow's
zeroconf step as HA's zeroconf integration would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from homeassistant.components.repairs import DOMAIN as REPAIRS_DOMAIN
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.exceptions import HomeAssistantError
from homeassistant.setup import async_setup_component
import pytest

from custom_components.sonoff_ota.flash_journal import JOURNAL_KEY
from custom_components.sonoff_ota.known_devices import get_device
from tests.dashboard_device import Dashboard, discovered_device
from tests.harness import discover, wait_until
from tests.restart_harness import (
    assert_no_secret,
    fix,
    journal_records,
    restart_home_assistant,
    restart_issues,
)
from virtual_sonoff.diy import DiyDevice, DiyStage
from virtual_sonoff.flash_memory import ARDUINO_OFFSET

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.parametrize("expected_lingering_timers", [True]),
    pytest.mark.parametrize("expected_lingering_tasks", [True]),
]


@dataclass(slots=True)
class HeldDownload:
    """Pause the virtual device's download before a chunk, until released."""

    paused: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@contextmanager
def held_download(monkeypatch: pytest.MonkeyPatch, at: int) -> Iterator[HeldDownload]:
    """The device pauses before fetching byte `at` (between two chunks, no socket open).

    So the restart does not close a listener while the device connects to it (a race
    that the debug event loop reports as an error of the test's loop, not of the flow).
    """
    held = HeldDownload()
    original: Callable[..., Awaitable[Any]] = DiyDevice._fetch_range

    async def fetch_range(self: DiyDevice, parts: Any, start: int, *args: Any) -> Any:
        if start >= at and not held.release.is_set():
            held.paused.set()
            await held.release.wait()
        return await original(self, parts, start, *args)

    monkeypatch.setattr(DiyDevice, "_fetch_range", fetch_range)
    yield held


def ota_flashes(device: Any) -> int:
    """How many `ota_flash` requests the device received."""
    return sum(1 for request in device.requests if request.path == "/zeroconf/ota_flash")


async def test_restart_during_a_diy_download(
    hass: HomeAssistant,
    socket_enabled: None,
    real_mqtt: None,
    hass_storage: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not flashed again until it is back on eWeLink with its old version; then it is."""
    assert await async_setup_component(hass, REPAIRS_DOMAIN, {})
    held = held_download(monkeypatch, at=4 * 4096)
    async with discovered_device(hass) as dash:
        with held as download:
            result: Any = await hass.config_entries.flow.async_configure(dash.flow["flow_id"], {})
            assert result["type"] is FlowResultType.SHOW_PROGRESS, result
            await asyncio.wait_for(download.paused.wait(), 10)
            await wait_until(lambda: any(r.served for r in hass.data[JOURNAL_KEY].records.values()))
            await restart_home_assistant(hass, dash.entry)
            await _back_on_ewelink(hass, hass_storage, dash, download)


async def _back_on_ewelink(
    hass: HomeAssistant, hass_storage: dict[str, Any], dash: Dashboard, download: HeldDownload
) -> None:
    """After the restart: refused while it may download, offered once it is back."""
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
    download.release.set()
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
    *,
    hass: HomeAssistant,
    socket_enabled: None,
    real_mqtt: None,
    hass_storage: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The journal noted 3.6.0; a device answering 3.7.6 is not "back with its old version"."""
    assert await async_setup_component(hass, REPAIRS_DOMAIN, {})
    async with discovered_device(hass) as dash:
        with held_download(monkeypatch, at=4 * 4096) as download:
            await hass.config_entries.flow.async_configure(dash.flow["flow_id"], {})
            await asyncio.wait_for(download.paused.wait(), 10)
            await restart_home_assistant(hass, dash.entry)
            download.release.set()
        await dash.device.wait_for_stage(DiyStage.FAILED, timeout=10)
        dash.device.config.fw_version = "3.7.6"
        await discover(hass, dash.device)
        (issue,) = restart_issues(hass)
        assert issue.translation_key == "restart_diy_download"
        assert "back with eWeLink 3.7.6 (was 3.6.0)" in caplog.text
        assert ota_flashes(dash.device) == 1
