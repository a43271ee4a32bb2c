"""Config flow for Sonoff OTA: the UI on top of the flash runs.

The first run asks for the home Wi-Fi and stores it in the config entry (the
only place HA keeps credentials); every run then flashes one device. This
module only routes: the Wi-Fi, then the path. The steps live with their path,
on a shared base (as HA's `homeassistant_hardware` firmware flows do):

- `flash_flow`: the base (the Wi-Fi, the run, the progress of the flash, the
  timeout menu, the failure);
- `setup_mode_flow`: setup mode (the ITEAD access point; `SetupModeRun`);
- `diy_flow`: DIY mode (eWeLink 3.x on the LAN, found by zeroconf or entered
  by hand; `DiyRun`);
- `firmware_flow`: the firmware choice, and the steps when it fails;
- `handoff_flow`: the end (which Tasmota device, and where it is now).
"""

from __future__ import annotations

from typing import Any

from homeassistant.config_entries import ConfigEntry, ConfigFlowResult, OptionsFlow
from homeassistant.core import callback
import voluptuous as vol

from .const import CONF_SSID, CONF_WIFI_PASSWORD, DOMAIN
from .diy_flow import DiyFlow
from .handoff_flow import HandoffFlow
from .proto.wifi import WifiSettings, validate_wifi
from .setup_mode_flow import SetupModeFlow


class SonoffOtaConfigFlow(SetupModeFlow, DiyFlow, HandoffFlow, domain=DOMAIN):
    """Collect the home Wi-Fi settings and drive a flash."""

    VERSION = 1

    @staticmethod
    @callback
    def async_get_options_flow(config_entry: ConfigEntry) -> OptionsFlow:
        """The Tasmota build the "Tasmota firmware" entities install (options_flow.py)."""
        from .options_flow import SonoffOtaOptionsFlow  # noqa: PLC0415

        return SonoffOtaOptionsFlow()

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Ask for the home Wi-Fi the device will join (once; later runs reuse it)."""
        if (mqtt_missing := self._abort_without_mqtt()) is not None:
            return mqtt_missing
        self._load_saved_wifi()
        if self._wifi is not None:
            return await self._async_after_wifi()
        errors: dict[str, str] = {}
        if user_input is not None:
            errors = validate_wifi(user_input[CONF_SSID], user_input[CONF_WIFI_PASSWORD])
            if not errors:
                self._wifi = WifiSettings(user_input[CONF_SSID], user_input[CONF_WIFI_PASSWORD])
                return await self._async_after_wifi()
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

    async def _async_after_wifi(self) -> ConfigFlowResult:
        if self._diy.target is not None:  # a discovered device that was confirmed before Wi-Fi
            return await self.async_step_diy_flash()
        return await self.async_step_path()

    async def async_step_path(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Choose how to reach the device."""
        return self.async_show_menu(step_id="path", menu_options=["diy_manual", "setup_mode"])
