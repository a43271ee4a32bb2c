"""The "Flash stage" sensor: which stage a dashboard flash of the device is in.

An enum sensor: the `Stage` values while a flash runs, `idle` otherwise. The
outcome of the last flash (done, failed, aborted) and its error code stay in
the attributes.
"""

from __future__ import annotations

from typing import Any, Final

from homeassistant.components.sensor import SensorDeviceClass, SensorEntity
from homeassistant.const import EntityCategory
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from . import SonoffOtaConfigEntry
from .device_entity import SonoffDeviceEntity, async_add_device_entities
from .proto.flash_stages import END_STAGES, Stage

PARALLEL_UPDATES = 0

IDLE: Final = "idle"
OPTIONS: Final = [IDLE, *(str(stage) for stage in Stage if stage not in END_STAGES)]


async def async_setup_entry(
    hass: HomeAssistant,
    entry: SonoffOtaConfigEntry,
    async_add_entities: AddEntitiesCallback,
) -> None:
    """Add a flash-stage sensor for every known eWeLink device (and every new one)."""
    flashes = entry.runtime_data.flashes
    async_add_device_entities(
        hass, entry, async_add_entities, lambda record: [FlashStageSensor(entry, flashes, record)]
    )


class FlashStageSensor(SonoffDeviceEntity, SensorEntity):
    """See the module docstring."""

    key = "flash_stage"
    _attr_device_class = SensorDeviceClass.ENUM
    _attr_options = OPTIONS
    _attr_entity_category = EntityCategory.DIAGNOSTIC

    @property
    def native_value(self) -> str:
        """The running stage, or idle."""
        tracker = self.tracker
        if tracker is None or tracker.finished:
            return IDLE
        return str(tracker.stage)

    @property
    def extra_state_attributes(self) -> dict[str, Any]:
        """Progress of the running flash; outcome and error of the last one."""
        tracker = self.tracker
        if tracker is None:
            return {}
        if not tracker.finished:
            return {"progress": tracker.percentage}
        return {
            "last_result": str(tracker.stage),
            "last_error": tracker.error.code if tracker.error else None,
        }
