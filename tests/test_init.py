"""Setting up and unloading the integration."""

from __future__ import annotations

from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry
import voluptuous as vol

from custom_components.sonoff_ota.const import CONF_SSID, CONF_WIFI_PASSWORD, DOMAIN
from custom_components.sonoff_ota.settings import SETTINGS_SCHEMA, settings_from_config


async def test_setup_and_unload(hass: HomeAssistant) -> None:
    entry = MockConfigEntry(
        domain=DOMAIN,
        unique_id=DOMAIN,
        data={CONF_SSID: "home", CONF_WIFI_PASSWORD: "secret-password"},
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED
    assert entry.runtime_data is not None

    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.NOT_LOADED


def test_yaml_firmware_sources_are_checked() -> None:
    """A local mirror can replace every firmware URL; a misspelt key is a YAML error."""
    mirror = {"tasmota_latest_url": "http://mirror.lan/tasmota-lite.bin"}
    settings = settings_from_config(SETTINGS_SCHEMA({"firmware": mirror}))
    assert settings.firmware == mirror
    with pytest.raises(vol.Invalid):
        SETTINGS_SCHEMA({"firmware": {"tasmota_lastest_url": "http://mirror.lan/x.bin"}})
