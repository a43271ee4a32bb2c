"""The "Flash stage" sensor follows the tracker of a dashboard flash.

The flash runs against a virtual DIY device over real sockets on 127.0.0.1
(only mDNS is replaced by handing its announcement to the flow).
"""

from __future__ import annotations

from homeassistant.components.sensor import ATTR_OPTIONS, SensorDeviceClass
from homeassistant.const import ATTR_DEVICE_CLASS, ATTR_ENTITY_ID
from homeassistant.core import Event, EventStateChangedData, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.event import async_track_state_change_event
from homeassistant.helpers.translation import async_get_translations
import pytest

from custom_components.sonoff_ota.const import DOMAIN
from custom_components.sonoff_ota.proto.flash_stages import END_STAGES, Stage
from tests.dashboard_device import discovered_device
from virtual_sonoff.profile import Fault, Faults


async def test_stage_sensor_follows_a_flash_and_returns_to_idle(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    async with discovered_device(hass, faults=Faults({Fault.CORRUPT_BYTE})) as dash:
        sensor_id = dash.entity_id(hass, "sensor", "flash_stage")
        update_id = dash.entity_id(hass, "update", "firmware")
        assert sensor_id is not None and update_id is not None
        state = hass.states.get(sensor_id)
        assert state is not None
        assert state.state == "idle"
        assert state.attributes[ATTR_DEVICE_CLASS] == SensorDeviceClass.ENUM
        assert state.name == f"Sonoff {dash.deviceid} Flash stage"
        seen: list[str] = []

        @callback
        def record(event: Event[EventStateChangedData]) -> None:
            new = event.data["new_state"]
            if new is not None and (not seen or seen[-1] != new.state):
                seen.append(new.state)

        unsubscribe = async_track_state_change_event(hass, [sensor_id], record)
        try:
            with pytest.raises(HomeAssistantError):
                await hass.services.async_call(
                    "update", "install", {ATTR_ENTITY_ID: update_id}, blocking=True
                )
        finally:
            unsubscribe()
        assert seen == ["preparing", "checking", "unlocking", "flashing", "idle"], seen
        state = hass.states.get(sensor_id)
        assert state is not None
        assert state.attributes["last_result"] == "failed"
        assert state.attributes["last_error"] == "sha256_mismatch"


async def test_every_option_is_a_translated_stage(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    async with discovered_device(hass) as dash:
        sensor_id = dash.entity_id(hass, "sensor", "flash_stage")
        assert sensor_id is not None
        state = hass.states.get(sensor_id)
        assert state is not None
        options = state.attributes[ATTR_OPTIONS]
        assert set(options) == {"idle"} | {str(s) for s in Stage if s not in END_STAGES}
        translations = await async_get_translations(hass, "en", "entity", {DOMAIN})
        prefix = f"component.{DOMAIN}.entity.sensor.flash_stage.state."
        missing = [option for option in options if not translations.get(prefix + option)]
        assert not missing
