"""The update platform: "Firmware" on eWeLink devices, "Tasmota firmware" on flashed ones.

The entities live in `firmware_update` (eWeLink -> Tasmota lite, the DIY flash) and
`tasmota_firmware_update` (lite -> full, Tasmota's own OTA).
"""

from __future__ import annotations

from datetime import timedelta

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from . import SonoffOtaConfigEntry
from .device_entity import async_add_device_entities
from .firmware_update import FirmwareUpdate
from .tasmota_firmware_devices import async_add_tasmota_entities

PARALLEL_UPDATES = 0
SCAN_INTERVAL = timedelta(hours=6)
"""How often the newest Tasmota release is looked up (the lookup itself is cached)."""


async def async_setup_entry(
    hass: HomeAssistant,
    entry: SonoffOtaConfigEntry,
    async_add_entities: AddEntitiesCallback,
) -> None:
    """Firmware entities: every eWeLink device; Tasmota firmware: see the module docstring."""
    flashes = entry.runtime_data.flashes
    async_add_device_entities(
        hass, entry, async_add_entities, lambda record: [FirmwareUpdate(entry, flashes, record)]
    )
    await async_add_tasmota_entities(hass, entry, async_add_entities)
    options_at_setup = dict(entry.options)

    async def _async_entry_updated(hass: HomeAssistant, entry: ConfigEntry) -> None:
        """New build or opt-in: reload, so the entities match (not on device data changes)."""
        if dict(entry.options) != options_at_setup:
            await hass.config_entries.async_reload(entry.entry_id)

    entry.async_on_unload(entry.add_update_listener(_async_entry_updated))
