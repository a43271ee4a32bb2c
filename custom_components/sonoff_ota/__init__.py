"""Sonoff OTA: flash Tasmota onto eWeLink Sonoff switches from Home Assistant."""

from __future__ import annotations

from dataclasses import dataclass

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.helpers.typing import ConfigType
import voluptuous as vol

from .const import DOMAIN
from .settings import SETTINGS_KEY, SETTINGS_SCHEMA, settings_from_config

CONFIG_SCHEMA = vol.Schema({vol.Optional(DOMAIN): SETTINGS_SCHEMA}, extra=vol.ALLOW_EXTRA)


@dataclass
class SonoffOtaData:
    """Runtime data of a config entry."""


type SonoffOtaConfigEntry = ConfigEntry[SonoffOtaData]


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Take the optional YAML settings (device and listener addresses)."""
    if DOMAIN in config:
        hass.data[SETTINGS_KEY] = settings_from_config(config[DOMAIN])
    return True


async def async_setup_entry(hass: HomeAssistant, entry: SonoffOtaConfigEntry) -> bool:
    """Set up Sonoff OTA from a config entry."""
    entry.runtime_data = SonoffOtaData()
    return True


async def async_unload_entry(hass: HomeAssistant, entry: SonoffOtaConfigEntry) -> bool:
    """Unload a config entry."""
    return True
