"""From Tasmota's first boot to HA entities: the hand-off against HA's real MQTT and tasmota.

Mocked: only the Wi-Fi radio. The Tasmota AP (192.168.4.1:80) is the virtual
device's AP listener on a 127.0.0.1 port (injected as `tasmota_ap_url`), and
the device's "LAN" is loopback. The `mosquitto` test runs a real broker that HA's
own MQTT client and the virtual Tasmota both connect to; the fast tests use
phcc's `mqtt_mock` with messages injected by `async_fire_mqtt_message`.
"""

from __future__ import annotations

import json
from typing import Any

from homeassistant import config_entries
from homeassistant.const import STATE_OFF, STATE_ON
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er, issue_registry as ir
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.service_info.mqtt import MqttServiceInfo
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_mqtt_message,
)

from custom_components.sonoff_ota.const import DOMAIN
from custom_components.sonoff_ota.proto.flash_stages import FlashPath, FlashTracker, Stage
from custom_components.sonoff_ota.proto.tasmota_handoff import TasmotaHandoff
from custom_components.sonoff_ota.proto.tasmota_handoff_types import (
    ConfiguredBy,
    EwelinkIdentity,
    HandoffTimeouts,
    WifiSettings,
)
from custom_components.sonoff_ota.settings import SETTINGS_KEY, Settings, Timeouts, get_settings
from custom_components.sonoff_ota.tasmota_link import (
    ISSUE_MQTT_MISSING,
    MqttUnavailableError,
    MqttUnavailableReason,
    async_device_mqtt_settings,
    async_discovery_feed,
    async_ensure_tasmota_entry,
    async_mqtt_available,
    async_update_mqtt_issue,
    async_wait_for_ha_device,
    mqtt_unavailable_reason,
)
from tests.harness import LOOPBACK, setup_real_mqtt, wait_until
from virtual_sonoff.images import tasmota_lite
from virtual_sonoff.mosquitto import MosquittoBroker
from virtual_sonoff.tasmota import TasmotaMode, VirtualTasmota

MAC = "5CCF7F3D5E26"
HA_MAC = "5c:cf:7f:3d:5e:26"


def discovery_payload(mac: str = MAC) -> str:
    return json.dumps(VirtualTasmota(b"", mac=mac).discovery_config())


def switch_entities(hass: HomeAssistant, device_id: str) -> list[er.RegistryEntry]:
    return [
        entry
        for entry in er.async_entries_for_device(er.async_get(hass), device_id)
        if entry.domain == "switch"
    ]


# ------------------------------------------------------------ fast: mqtt_mock


@pytest.mark.parametrize("expected_lingering_timers", [True])
# hatasmota answers LWT Online with a 1 s debounced publish (hatasmota.mqtt.Timer) that
# nothing cancels on unload.
@pytest.mark.parametrize("expected_lingering_tasks", [True])
async def test_discovery_message_gives_a_switch(hass: HomeAssistant, mqtt_mock: Any) -> None:
    # MQTT discovery already offered Tasmota (a "Discovered" card): ours replaces it.
    await hass.config_entries.flow.async_init(
        "tasmota",
        context={"source": config_entries.SOURCE_MQTT},
        data=MqttServiceInfo(
            topic=f"tasmota/discovery/{MAC}/config",
            payload=discovery_payload(),
            qos=0,
            retain=True,
            subscribed_topic="tasmota/discovery/#",
            timestamp=0.0,
        ),
    )
    assert hass.config_entries.flow.async_progress_by_handler("tasmota")

    entry = await async_ensure_tasmota_entry(hass)
    assert entry.data == {"discovery_prefix": "tasmota/discovery"}
    assert not hass.config_entries.flow.async_progress_by_handler("tasmota")
    assert await async_ensure_tasmota_entry(hass) is entry  # idempotent

    async with async_discovery_feed(hass) as feed:
        await hass.async_block_till_done()
        async_fire_mqtt_message(hass, f"tasmota/discovery/{MAC}/config", discovery_payload())
        async_fire_mqtt_message(hass, "tele/tasmota_3D5E26/LWT", "Online", retain=True)
        device_id = await async_wait_for_ha_device(hass, MAC, within=5)
        first, second = await feed.get(), await feed.get()
    assert (first.topic, first.retained) == (f"tasmota/discovery/{MAC}/config", False)
    assert (second.topic, second.retained) == ("tele/tasmota_3D5E26/LWT", True)
    await hass.async_block_till_done()

    (switch,) = switch_entities(hass, device_id)
    assert switch.platform == "tasmota"
    state = hass.states.get(switch.entity_id)
    assert state is not None


@pytest.mark.parametrize("expected_lingering_timers", [True])
@pytest.mark.parametrize(
    "mqtt_config_entry_data",
    [{"broker": "core-mosquitto", "port": 1884, "username": "tas", "password": "mqtt-pw"}],
)
async def test_broker_is_translated_for_the_device(hass: HomeAssistant, mqtt_mock: Any) -> None:
    assert mqtt_unavailable_reason(hass) is None
    assert await async_mqtt_available(hass)
    device = await async_device_mqtt_settings(hass)
    # phcc pins the HA host's source IP to 10.10.10.10; Tasmota cannot resolve core-mosquitto.
    assert (device.host, device.port, device.user, device.password) == (
        "10.10.10.10",
        1884,
        "tas",
        "mqtt-pw",
    )
    assert "mqtt-pw" not in repr(device)
    hass.data[SETTINGS_KEY] = Settings(device_broker_host="192.0.2.10")
    assert (await async_device_mqtt_settings(hass)).host == "192.0.2.10"


async def test_without_mqtt_the_flow_stops_and_a_repair_is_raised(hass: HomeAssistant) -> None:
    assert mqtt_unavailable_reason(hass) is MqttUnavailableReason.NOT_CONFIGURED
    assert not await async_mqtt_available(hass)
    with pytest.raises(MqttUnavailableError) as caught:
        await async_device_mqtt_settings(hass)
    assert caught.value.reason is MqttUnavailableReason.NOT_CONFIGURED

    assert async_update_mqtt_issue(hass) is MqttUnavailableReason.NOT_CONFIGURED
    issue = ir.async_get(hass).async_get_issue(DOMAIN, ISSUE_MQTT_MISSING)
    assert issue is not None
    assert issue.translation_key == "mqtt_missing"
    assert issue.translation_placeholders == {"reason": "mqtt_not_configured"}

    MockConfigEntry(domain="mqtt", data={"broker": "x"}, disabled_by=None).add_to_hass(hass)
    assert mqtt_unavailable_reason(hass) is MqttUnavailableReason.NOT_LOADED


@pytest.mark.parametrize("expected_lingering_timers", [True])
async def test_mqtt_missing_issue_is_removed_once_mqtt_is_there(
    hass: HomeAssistant, mqtt_mock: Any
) -> None:
    ir.async_create_issue(
        hass,
        DOMAIN,
        ISSUE_MQTT_MISSING,
        is_fixable=False,
        severity=ir.IssueSeverity.WARNING,
        translation_key=ISSUE_MQTT_MISSING,
    )
    assert async_update_mqtt_issue(hass) is None
    assert ir.async_get(hass).async_get_issue(DOMAIN, ISSUE_MQTT_MISSING) is None


# --------------------------------------------------- real: Mosquitto end to end


@pytest.mark.mosquitto
@pytest.mark.parametrize("expected_lingering_timers", [True])
@pytest.mark.parametrize("expected_lingering_tasks", [True])  # hatasmota's debounce, as above
async def test_handoff_end_to_end_with_a_real_broker(
    hass: HomeAssistant, mock_hass_config: None, broker: MosquittoBroker
) -> None:
    async with VirtualTasmota(tasmota_lite(4096), mac=MAC) as device:
        hass.data[SETTINGS_KEY] = Settings(
            tasmota_ap_url=f"http://{LOOPBACK}:{device.ap_port}",
            device_broker_host=LOOPBACK,
            timeouts=Timeouts(tasmota_ap=5, discovery=10),
        )
        entry = await setup_real_mqtt(hass, broker)
        assert await async_mqtt_available(hass)
        settings = get_settings(hass)
        tracker = FlashTracker(FlashPath.DIY, stage=Stage.WAIT_REBOOT)
        try:
            assert not hass.config_entries.async_entries("tasmota")
            async with async_discovery_feed(hass) as feed:
                await hass.async_block_till_done()
                handoff = TasmotaHandoff(
                    async_get_clientsession(hass),
                    tracker,
                    wifi=WifiSettings("HomeNet", "wifi-pw"),
                    mqtt=await async_device_mqtt_settings(hass),
                    feed=feed,
                    device=EwelinkIdentity(deviceid="1000e4c17c", model="MINIR2", sta_mac=HA_MAC),
                    ap_url=settings.tasmota_ap_url,
                    timeouts=HandoffTimeouts(
                        ap_window=settings.timeouts.tasmota_ap,
                        discovery=settings.timeouts.discovery,
                        probe=1.0,
                        probe_interval=0.05,
                    ),
                )
                result = await handoff.run()
            assert result.mac == MAC
            assert result.configured_by is ConfiguredBy.HA
            assert result.model_known
            assert device.mode is TasmotaMode.STATION
            assert (device.config.mqtt_host, device.config.mqtt_port) == (LOOPBACK, broker.port)
            assert device.config.template is not None  # Mini R2: Template + Module 0
            assert device.config.module == 0

            await async_ensure_tasmota_entry(hass)
            device_id = await async_wait_for_ha_device(hass, MAC, within=10)
            tracker.done()
            assert tracker.stage is Stage.DONE
            await wait_until(lambda: switch_entities(hass, device_id), within=5)
            (switch,) = switch_entities(hass, device_id)
            await wait_until(
                lambda: (
                    (s := hass.states.get(switch.entity_id)) is not None and s.state == STATE_OFF
                ),
                within=5,
            )

            await hass.services.async_call(
                "switch", "turn_on", {"entity_id": switch.entity_id}, blocking=True
            )
            await device.wait_until(lambda: device.relays == [True], within=5)
            await wait_until(
                lambda: (
                    (s := hass.states.get(switch.entity_id)) is not None and s.state == STATE_ON
                ),
                within=5,
            )
        finally:
            await hass.config_entries.async_unload(entry.entry_id)
            await hass.async_block_till_done()
    await broker.stop()
    assert not broker.running
