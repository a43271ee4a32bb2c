"""The progress ring of the flash dialog, as the frontend shows it (HA 2025.5+).

The dialog is `tests.frontend_dialog.FrontendDialog`, a model of the frontend's (the
browser cannot run in these tests; `scripts/e2e` drives the real one). The flash runs
for real: the setup-mode virtual Sonoff over loopback, HA's real MQTT on a Mosquitto.
Only the Wi-Fi radio is not real (the harness's loopback ports stand for it).
"""

from __future__ import annotations

from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowHandler, FlowResultType
import pytest

from custom_components.sonoff_ota.progress_ring import ProgressRing
from custom_components.sonoff_ota.settings import SETTINGS_KEY, get_settings
from tests.frontend_dialog import FrontendDialog
from tests.harness import (
    REAL_MQTT_FLOWS,
    flow_result,
    held_download,
    setup_device,
    start_setup_mode_flash,
    wait_until,
)
from tests.leak_check import our_timers
from virtual_sonoff.profile import Fault, Faults

pytestmark = [
    *REAL_MQTT_FLOWS,
    pytest.mark.skipif(
        not hasattr(FlowHandler, "async_update_progress"), reason="no ring before HA 2025.5"
    ),
]


def ring_resends(hass: HomeAssistant) -> list[Any]:
    """Pending re-sends of any flow's ring (timers of `ProgressRing`)."""
    return [
        handle
        for handle in our_timers(hass.loop)
        if isinstance(getattr(getattr(handle, "_callback", None), "__self__", None), ProgressRing)
    ]


async def test_a_dialog_opened_while_the_number_stands_still_shows_it(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened mid-download, with the download stalled, the ring shows the text's number.

    The dialog subscribes only after it fetched the step, and the number does not move:
    without a re-send after the fetch it would show a spinner until the download went on.
    """
    with held_download(monkeypatch) as release:
        async with setup_device(hass, faults=Faults({Fault.STALL})) as (device, _firmware, _):
            settings = get_settings(hass)  # the stall must not time out while the test looks
            timeouts = settings.timeouts._replace(upgrade=120)
            hass.data[SETTINGS_KEY] = settings._replace(timeouts=timeouts)
            flow_id = (await start_setup_mode_flash(hass))["flow_id"]
            await wait_until(lambda: "download_stalled" in device.event_kinds(), within=15)
            # (Not `async_block_till_done`: it would wait for the flash, which waits.)

            dialog = FrontendDialog(hass, hass.config_entries.flow, flow_id)
            step = await dialog.open()
            assert step["type"] is FlowResultType.SHOW_PROGRESS, step
            assert step["step_id"] == "flash"
            assert dialog.ring is None  # just subscribed: a spinner for now
            await wait_until(lambda: dialog.ring is not None, within=3)
            assert dialog.ring == dialog.text_percentage > 0

            # A refresh without a new number (HA sends one when a task ends) blanks the
            # ring; the fetch it causes brings the number back.
            flow: Any = hass.config_entries.flow._progress[flow_id]
            flow._ring.notify()
            assert dialog.refreshes == 1
            assert dialog.ring is None
            await wait_until(lambda: dialog.ring is not None, within=3)
            assert dialog.ring == dialog.text_percentage

            # The rest of the flash: every refresh (ours, and HA's when a fetch finds a
            # new text) is followed by the number.
            blank_after: list[int] = []

            def check_ring() -> None:
                task = flow._flash.task
                if task is not None and not task.done() and dialog.ring is None:
                    blank_after.append(dialog.refreshes)

            dialog.on_refresh = check_ring
            release.set()
            await hass.async_block_till_done(wait_background_tasks=True)
            dialog.close()
            final = await flow_result(hass, flow_id)
    assert dialog.refreshes >= 10
    assert blank_after == [], "the ring was left blank after these refreshes"
    assert final["type"] is FlowResultType.CREATE_ENTRY, final
    assert ring_resends(hass) == []  # the step ended: no re-send is left behind
