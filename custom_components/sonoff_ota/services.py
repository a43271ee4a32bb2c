"""The `sonoff_ota.flash` action: flash the chosen devices at once.

Takes HA device ids (a device selector limited to this integration) and runs
the same code as the hub's "Flash all eligible devices" button (see
`device_flashes.DeviceFlashes.async_start_batch`): concurrent flashes, a device
named twice is flashed once, and a persistent notification lists each result.
It returns once the flashes have started. Devices the eligibility table refuses
are left alone and say why in that notification.
"""

from __future__ import annotations

from typing import Any, Final

from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant, ServiceCall, callback
from homeassistant.exceptions import ServiceValidationError
from homeassistant.helpers import config_validation as cv, device_registry as dr
import voluptuous as vol

from .const import DOMAIN
from .known_devices import get_entry

SERVICE_FLASH: Final = "flash"
ATTR_DEVICE_ID: Final = "device_id"
# Typed Any, as the config flow's schemas: HA 2026.x types schemas as probatio's.
FLASH_SCHEMA: Any = vol.Schema({vol.Required(ATTR_DEVICE_ID): vol.All(cv.ensure_list, [cv.string])})


@callback
def async_setup_services(hass: HomeAssistant) -> None:
    """Register the integration's actions (once, at integration setup)."""

    async def flash(call: ServiceCall) -> None:
        entry = get_entry(hass)
        if entry is None or entry.state is not ConfigEntryState.LOADED:
            raise ServiceValidationError(translation_domain=DOMAIN, translation_key="not_loaded")
        registry = dr.async_get(hass)
        deviceids: list[str] = []
        for device_id in call.data[ATTR_DEVICE_ID]:
            device = registry.async_get(device_id)
            ours = (
                sorted(
                    identifier
                    for domain, identifier in device.identifiers
                    if domain == DOMAIN and identifier != entry.entry_id
                )
                if device is not None and entry.entry_id in device.config_entries
                else []
            )
            if not ours:
                raise ServiceValidationError(
                    translation_domain=DOMAIN,
                    translation_key="not_a_sonoff_device",
                    translation_placeholders={"device_id": device_id},
                )
            deviceids.append(ours[0])
        entry.runtime_data.flashes.async_start_batch(deviceids)

    hass.services.async_register(DOMAIN, SERVICE_FLASH, flash, schema=FLASH_SCHEMA)
