"""The hub's "Flash all eligible devices" button.

The hub is the config entry's own HA device ("Sonoff OTA", a service device).
Pressing the button flashes, concurrently, every known DIY device that the
eligibility table allows and that is not being flashed already (see
`device_flashes`); it returns once the flashes have started, and a persistent
notification lists each device's result at the end.
"""

from __future__ import annotations

from homeassistant.components.button import ButtonEntity
from homeassistant.core import HomeAssistant
from homeassistant.helpers.device_registry import DeviceEntryType, DeviceInfo
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from . import SonoffOtaConfigEntry
from .const import DOMAIN

PARALLEL_UPDATES = 0
HUB_NAME = "Sonoff OTA"


def hub_device_info(entry: SonoffOtaConfigEntry) -> DeviceInfo:
    """The entry's own HA device, holding the entities that act on several devices."""
    return DeviceInfo(
        identifiers={(DOMAIN, entry.entry_id)},
        name=HUB_NAME,
        entry_type=DeviceEntryType.SERVICE,
    )


async def async_setup_entry(
    hass: HomeAssistant,
    entry: SonoffOtaConfigEntry,
    async_add_entities: AddEntitiesCallback,
) -> None:
    """Add the hub's button."""
    async_add_entities([FlashAllButton(entry)])


class FlashAllButton(ButtonEntity):
    """See the module docstring."""

    _attr_has_entity_name = True
    _attr_should_poll = False
    _attr_translation_key = "flash_all"

    def __init__(self, entry: SonoffOtaConfigEntry) -> None:
        """Belong to the hub device of `entry`."""
        self._flashes = entry.runtime_data.flashes
        self._attr_unique_id = f"{entry.entry_id}_flash_all"
        self._attr_device_info = hub_device_info(entry)

    async def async_press(self) -> None:
        """Start the batch (raises `nothing_to_flash` when no device can be flashed now)."""
        self._flashes.async_start_batch(self._flashes.eligible())
