"""Options: which Tasmota build the "Tasmota firmware" entities install, and for whom.

- `build`: the full `tasmota` build (default), `tasmota-sensors`, a localised build
  (`language`), or any plain-http URL (`custom_url`): Tasmota's ESP8266 OTA has no
  TLS and wants a `.bin.gz` (spec diy-ota-and-tasmota.md §3.3, §3.7);
- `all_tasmota_devices`: also offer the entity on Tasmota devices this integration
  did not flash (off by default).

The keys and defaults are read at idle (which devices get the entity); the builds, the
languages and the URL check come with the upgrade stack, which the form loads first.
"""

from __future__ import annotations

from typing import Any, Final

from homeassistant.config_entries import ConfigFlowResult, OptionsFlow
from homeassistant.helpers.selector import (
    BooleanSelector,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
    TextSelector,
    TextSelectorConfig,
    TextSelectorType,
)
import voluptuous as vol

from .flash_stack import async_load_upgrade_stack

OPT_BUILD: Final = "build"
OPT_LANGUAGE: Final = "language"
OPT_CUSTOM_URL: Final = "custom_url"
OPT_ALL_TASMOTA: Final = "all_tasmota_devices"
DEFAULT_BUILD: Final = "tasmota"
"""`tasmota_releases.BuildChoice.TASMOTA`: the full build."""
DEFAULTS: Final[dict[str, Any]] = {
    OPT_BUILD: DEFAULT_BUILD,
    OPT_LANGUAGE: "DE",
    OPT_CUSTOM_URL: "",
    OPT_ALL_TASMOTA: False,
}


def options_with_defaults(options: dict[str, Any] | Any) -> dict[str, Any]:
    """The entry's options, every key present."""
    return {**DEFAULTS, **dict(options or {})}


def validate_options(values: dict[str, Any]) -> dict[str, str]:
    """Form errors (field -> key); empty when the options can be used.

    Needs the upgrade stack (`async_load_upgrade_stack`), as the form does.
    """
    from .proto.tasmota_releases import LANGUAGES, BuildChoice  # noqa: PLC0415 - loaded
    from .proto.tasmota_upgrade import check_ota_url  # noqa: PLC0415
    from .proto.tasmota_upgrade_stages import UpgradeError  # noqa: PLC0415

    choice = values.get(OPT_BUILD)
    if choice not in {item.value for item in BuildChoice}:
        return {OPT_BUILD: "unknown_build"}
    if choice == BuildChoice.URL:
        url = str(values.get(OPT_CUSTOM_URL) or "").strip()
        if not url:
            return {OPT_CUSTOM_URL: "url_required"}
        try:
            check_ota_url(url)
        except UpgradeError:
            return {OPT_CUSTOM_URL: "url_not_plain_http"}
    if choice == BuildChoice.LOCALIZED and values.get(OPT_LANGUAGE) not in LANGUAGES:
        return {OPT_LANGUAGE: "unknown_language"}
    return {}


class SonoffOtaOptionsFlow(OptionsFlow):
    """One form (see the module docstring)."""

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Show or save the options."""
        await async_load_upgrade_stack(self.hass)
        from .proto.tasmota_releases import LANGUAGES, BuildChoice  # noqa: PLC0415 - loaded

        errors: dict[str, str] = {}
        current = options_with_defaults(self.config_entry.options)
        if user_input is not None:
            values = {**current, **user_input}
            values[OPT_CUSTOM_URL] = str(values.get(OPT_CUSTOM_URL) or "").strip()
            errors = validate_options(values)
            if not errors:
                return self.async_create_entry(data=values)
            current = values
        schema: Any = vol.Schema(  # Any: HA 2026.x types it as probatio's Schema
            {
                vol.Required(OPT_BUILD, default=current[OPT_BUILD]): SelectSelector(
                    SelectSelectorConfig(
                        options=[item.value for item in BuildChoice],
                        mode=SelectSelectorMode.LIST,
                        translation_key=OPT_BUILD,
                    )
                ),
                vol.Optional(OPT_LANGUAGE, default=current[OPT_LANGUAGE]): SelectSelector(
                    SelectSelectorConfig(options=list(LANGUAGES), mode=SelectSelectorMode.DROPDOWN)
                ),
                vol.Optional(OPT_CUSTOM_URL, default=current[OPT_CUSTOM_URL]): TextSelector(
                    TextSelectorConfig(type=TextSelectorType.URL)
                ),
                vol.Required(OPT_ALL_TASMOTA, default=current[OPT_ALL_TASMOTA]): (
                    BooleanSelector()
                ),
            }
        )
        return self.async_show_form(step_id="init", data_schema=schema, errors=errors)
