"""The MQTT broker goes away during the hand-off (and maybe comes back).

A real Mosquitto is stopped as soon as the hand-off starts (Tasmota's AP stage),
so the freshly configured virtual Tasmota cannot reach it, and HA's own MQTT
client loses its connection too. Then either the broker is started again on
the same port (the hand-off waits, HA reconnects and resubscribes, the device
reconnects and announces itself: the hand-off completes and HA gets the device)
or it stays away (the hand-off times out with `broker_unreachable`, a clear
translated message, and nothing of ours keeps running).

Mocked: only the Wi-Fi radio (the Tasmota AP is the virtual device's AP listener
on a 127.0.0.1 port). HA's real mqtt and tasmota integrations are used.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
import pytest

from custom_components.sonoff_ota.handoff_run import HandoffRun
from custom_components.sonoff_ota.proto.flash_stages import FlashPath, FlashTracker, Stage
from custom_components.sonoff_ota.proto.tasmota_handoff_types import (
    EwelinkIdentity,
    HandoffError,
    HandoffErrorCode,
)
from custom_components.sonoff_ota.proto.wifi import WifiSettings
from custom_components.sonoff_ota.settings import SETTINGS_KEY, Settings, Timeouts
from tests.harness import (
    LOOPBACK,
    WIFI,
    setup_real_mqtt,
    unexpected_tracebacks,
    wait_until,
)
from tests.leak_check import snapshot
from virtual_sonoff.images import tasmota_lite
from virtual_sonoff.mosquitto import MosquittoBroker
from virtual_sonoff.tasmota import TasmotaMode, VirtualTasmota

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.usefixtures("ha_mqtt_tasks_may_fail_while_the_broker_is_away"),
    pytest.mark.parametrize("expected_lingering_timers", [True]),  # HA's MQTT client
    pytest.mark.parametrize("expected_lingering_tasks", [True]),  # hatasmota's debounce
]

MAC = "5CCF7F3D5E26"
HA_MAC = "5c:cf:7f:3d:5e:26"
STRINGS = Path(__file__).parent.parent / "custom_components" / "sonoff_ota" / "strings.json"


# HA's own tasks that publish over MQTT from a bare task, without a handler: the
# birth message after each (re)connect and hatasmota's debounced status polls.
HA_MQTT_TASKS = {"MQTT._async_resubscribe_and_publish_birth_message", "Timer._job"}


@pytest.fixture
async def ha_mqtt_tasks_may_fail_while_the_broker_is_away(hass: HomeAssistant) -> None:
    """Drop only HA's own "MQTT not connected" task failures; any other still fails the test.

    These tests stop the broker under HA on purpose. When that happens while HA's
    MQTT client is about to publish its birth message, or hatasmota a status poll,
    HA's task ends with `mqtt_broker_error` and nobody retrieves it: HA's code, not
    ours, so it must not fail the test (`hass` re-raises every unretrieved one).
    """
    loop = asyncio.get_running_loop()
    handler = loop.get_exception_handler()

    def filtered(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error, task = context.get("exception"), context.get("future")
        if (
            isinstance(error, HomeAssistantError)
            and error.translation_key == "mqtt_broker_error"
            and isinstance(task, asyncio.Task)
            and getattr(task.get_coro(), "__qualname__", "") in HA_MQTT_TASKS
        ):
            return
        if handler is None:
            loop.default_exception_handler(context)
        else:
            handler(loop, context)

    loop.set_exception_handler(filtered)


def stop_broker_when_the_handoff_starts(
    hass: HomeAssistant, tracker: FlashTracker, broker: MosquittoBroker
) -> asyncio.Event:
    """Stop the broker the moment the tracker enters TASMOTA_AP; the event says it is down."""
    stopped = asyncio.Event()
    started = False

    async def stop() -> None:
        await broker.stop()
        stopped.set()

    def on_change(changed: FlashTracker) -> None:
        nonlocal started
        if changed.stage is Stage.TASMOTA_AP and not started:
            started = True
            hass.async_create_task(stop())

    tracker.add_listener(on_change)
    return stopped


def handoff(hass: HomeAssistant, tracker: FlashTracker) -> HandoffRun:
    return HandoffRun(
        hass,
        tracker,
        WifiSettings(WIFI["ssid"], WIFI["wifi_password"]),
        EwelinkIdentity(deviceid="1000e4c17c", model="MINIR2", sta_mac=HA_MAC),
    )


async def test_broker_away_and_back_the_handoff_waits_and_completes(
    hass: HomeAssistant, mock_hass_config: None, broker: MosquittoBroker
) -> None:
    async with VirtualTasmota(tasmota_lite(4096), mac=MAC) as device:
        hass.data[SETTINGS_KEY] = Settings(
            tasmota_ap_url=f"http://{LOOPBACK}:{device.ap_port}",
            device_broker_host=LOOPBACK,
            # HA's MQTT client retries every 10 s: room for one retry and the discovery.
            timeouts=Timeouts(tasmota_ap=5, discovery=60),
        )
        entry = await setup_real_mqtt(hass, broker)
        # HA's MQTT publishes its birth message in a background task after connecting: a
        # broker that vanishes under it leaves HA's own task failing (not ours to fix).
        await hass.async_block_till_done(wait_background_tasks=True)
        port = broker.port
        tracker = FlashTracker(FlashPath.DIY, stage=Stage.WAIT_REBOOT)
        stopped = stop_broker_when_the_handoff_starts(hass, tracker, broker)
        task = hass.async_create_task(handoff(hass, tracker).run())
        try:
            await asyncio.wait_for(stopped.wait(), 10)
            # The device has its settings and keeps failing to reach the broker.
            await device.wait_until(
                lambda: device.mode is TasmotaMode.STATION and device.mqtt_connect_failures >= 2,
                within=20,
            )
            assert tracker.stage is Stage.WAIT_DISCOVERY
            assert not task.done(), "the hand-off waits for the broker"
            await broker.start()
            assert broker.port == port, "back on the same port"
            outcome = await asyncio.wait_for(task, 60)  # a hang guard, not a measurement
        finally:
            if not task.done():
                task.cancel()
        assert outcome.mac == MAC
        assert device.mqtt_connected
        assert tracker.details["tasmota_mac"] == MAC
        assert outcome.device_id
        assert tracker.error is None
        await hass.config_entries.async_unload(entry.entry_id)
        await hass.async_block_till_done()


async def test_broker_away_for_good_times_out_with_a_clear_message(
    hass: HomeAssistant,
    mock_hass_config: None,
    broker: MosquittoBroker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with VirtualTasmota(tasmota_lite(4096), mac=MAC) as device:
        hass.data[SETTINGS_KEY] = Settings(
            tasmota_ap_url=f"http://{LOOPBACK}:{device.ap_port}",
            device_broker_host=LOOPBACK,
            timeouts=Timeouts(tasmota_ap=5, discovery=2),
        )
        entry = await setup_real_mqtt(hass, broker)
        # HA's MQTT publishes its birth message in a background task after connecting: a
        # broker that vanishes under it leaves HA's own task failing (not ours to fix).
        await hass.async_block_till_done(wait_background_tasks=True)
        before = await snapshot(hass)
        tracker = FlashTracker(FlashPath.DIY, stage=Stage.WAIT_REBOOT)
        stop_broker_when_the_handoff_starts(hass, tracker, broker)
        with pytest.raises(HandoffError) as caught:
            await asyncio.wait_for(handoff(hass, tracker).run(), 60)  # a hang guard
        assert caught.value.code is HandoffErrorCode.BROKER_UNREACHABLE
        assert caught.value.placeholders == {"mac": MAC}
        assert tracker.stage is Stage.FAILED
        assert tracker.error is not None
        assert tracker.error.code == "broker_unreachable"
        assert device.mode is TasmotaMode.STATION  # it got its settings; only MQTT is missing
        await wait_until(lambda: device.mqtt_connect_failures >= 1)
        # The message the user gets (config flow abort and dashboard error) names the device.
        strings = json.loads(await hass.async_add_executor_job(STRINGS.read_text))
        for text in (
            strings["config"]["abort"]["broker_unreachable"],
            strings["exceptions"]["broker_unreachable"]["message"],
        ):
            assert "{mac}" in text
            assert "MQTT broker" in text
        station = (LOOPBACK, device.station_port)  # the device's web server, not ours
        assert (await snapshot(hass)).ours_vs(before, others=[station]) == {}
        assert unexpected_tracebacks(caplog) == []
        await hass.config_entries.async_unload(entry.entry_id)
        await hass.async_block_till_done()
