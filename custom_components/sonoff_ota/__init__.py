"""Sonoff OTA: flash Tasmota onto eWeLink Sonoff switches from Home Assistant."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeassistant.config_entries import ConfigEntry
from homeassistant.const import Platform
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.typing import ConfigType
import voluptuous as vol

from .const import CONF_SSID, CONF_WIFI_PASSWORD, DOMAIN
from .device_entity import async_sync_ha_devices
from .device_flashes import DeviceFlashes
from .flash_journal import async_get_journal
from .flash_stack import async_load_flash_stack
from .issues import async_track_mqtt
from .known_devices import (
    async_adopt_pending_devices,
    async_load_eligibility,
    signal_devices_updated,
)
from .services import async_setup_services
from .settings import SETTINGS_KEY, SETTINGS_SCHEMA, settings_from_config

if TYPE_CHECKING:
    from .diy_run import DiyRun

PLATFORMS = [Platform.BUTTON, Platform.SENSOR, Platform.UPDATE]

CONFIG_SCHEMA = vol.Schema({vol.Optional(DOMAIN): SETTINGS_SCHEMA}, extra=vol.ALLOW_EXTRA)


class SonoffOtaData:
    """Runtime data of a config entry (a plain class: see ARCHITECTURE.md, "What loads when")."""

    __slots__ = ("flashes",)

    def __init__(self, flashes: DeviceFlashes) -> None:
        """Hold the entry's dashboard flashes."""
        self.flashes = flashes
        """Dashboard flashes and the latest tracker of each device."""


type SonoffOtaConfigEntry = ConfigEntry[SonoffOtaData]


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Take the optional YAML settings (device and listener addresses)."""
    if DOMAIN in config:
        hass.data[SETTINGS_KEY] = settings_from_config(config[DOMAIN])
    async_setup_services(hass)
    return True


async def async_setup_entry(hass: HomeAssistant, entry: SonoffOtaConfigEntry) -> bool:
    """Set up Sonoff OTA from a config entry."""
    flashes = DeviceFlashes(hass, entry)

    async def hand_over(run: DiyRun) -> str | None:
        """After a dashboard flash: Tasmota's Wi-Fi and MQTT, then its HA device."""
        # Loaded: the dashboard flash that calls this loaded the flash stack.
        from .handoff_run import HandoffRun  # noqa: PLC0415
        from .proto.tasmota_handoff_types import EwelinkIdentity  # noqa: PLC0415
        from .proto.wifi import WifiSettings  # noqa: PLC0415

        await run.release_flash()
        wifi = WifiSettings(entry.data[CONF_SSID], entry.data[CONF_WIFI_PASSWORD])
        identity = EwelinkIdentity(deviceid=run.target.deviceid, model=run.target.model)
        outcome = await HandoffRun(
            hass, run.tracker, wifi, identity, device_ip=run.target.host, hop_to_ap=True
        ).run()
        return outcome.mac

    flashes.after_flash = hand_over
    entry.runtime_data = SonoffOtaData(flashes=flashes)
    entry.async_on_unload(flashes.async_shutdown)
    entry.async_on_unload(async_track_mqtt(hass))

    @callback
    def _sync_devices() -> None:
        async_sync_ha_devices(hass, entry)

    async_adopt_pending_devices(hass, entry)
    await async_load_eligibility(hass, entry)
    _sync_devices()
    entry.async_on_unload(
        async_dispatcher_connect(hass, signal_devices_updated(entry.entry_id), _sync_devices)
    )
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    # A restart cut a flash: say where its device is, and serve FinalStage again.
    if (await async_get_journal(hass)).orphans():
        await async_load_flash_stack(hass)
        from .flash_recovery import async_recover  # noqa: PLC0415 - loaded just above

        await async_recover(hass, entry)
    return True


async def async_unload_entry(hass: HomeAssistant, entry: SonoffOtaConfigEntry) -> bool:
    """Unload a config entry."""
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)
