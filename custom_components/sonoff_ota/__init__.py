"""Sonoff OTA: flash Tasmota onto eWeLink Sonoff switches from Home Assistant."""

from __future__ import annotations

from dataclasses import dataclass

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.helpers import config_validation as cv

from .const import DOMAIN

CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)


@dataclass
class SonoffOtaData:
    """Runtime data of a config entry."""


type SonoffOtaConfigEntry = ConfigEntry[SonoffOtaData]


async def async_setup_entry(hass: HomeAssistant, entry: SonoffOtaConfigEntry) -> bool:
    """Set up Sonoff OTA from a config entry."""
    entry.runtime_data = SonoffOtaData()
    return True


async def async_unload_entry(hass: HomeAssistant, entry: SonoffOtaConfigEntry) -> bool:
    """Unload a config entry."""
    return True
