"""Config flow for Sonoff OTA."""

from __future__ import annotations

from typing import Any

from homeassistant.config_entries import ConfigFlow, ConfigFlowResult
import voluptuous as vol

from .const import CONF_SSID, CONF_WIFI_PASSWORD, DOMAIN
from .wifi_settings import validate_wifi


class SonoffOtaConfigFlow(ConfigFlow, domain=DOMAIN):
    """Collect the home Wi-Fi settings and drive a flash."""

    VERSION = 1

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Ask for the home Wi-Fi the device will join."""
        errors: dict[str, str] = {}
        if user_input is not None:
            errors = validate_wifi(user_input[CONF_SSID], user_input[CONF_WIFI_PASSWORD])
            if not errors:
                await self.async_set_unique_id(DOMAIN)
                self._abort_if_unique_id_configured()
                return self.async_create_entry(
                    title="Sonoff OTA",
                    data={
                        CONF_SSID: user_input[CONF_SSID],
                        CONF_WIFI_PASSWORD: user_input[CONF_WIFI_PASSWORD],
                    },
                )
        # `Any`: HA 2026.x types forms as probatio schemas (voluptuous is aliased
        # to probatio at runtime), 2025.x as voluptuous schemas.
        schema: Any = vol.Schema(
            {
                vol.Required(CONF_SSID): str,
                vol.Optional(CONF_WIFI_PASSWORD, default=""): str,
            }
        )
        if user_input is not None:
            schema = self.add_suggested_values_to_schema(schema, {CONF_SSID: user_input[CONF_SSID]})
        return self.async_show_form(step_id="user", data_schema=schema, errors=errors)
