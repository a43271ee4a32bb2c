"""The config flow."""

from __future__ import annotations

from homeassistant import config_entries
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers.translation import async_get_translations
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.sonoff_ota.const import CONF_SSID, CONF_WIFI_PASSWORD, DOMAIN


async def test_first_step_is_shown_with_translated_strings(hass: HomeAssistant) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_USER}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "user"
    translations = await async_get_translations(hass, "en", "config", [DOMAIN])
    prefix = f"component.{DOMAIN}.config.step.user"
    assert translations[f"{prefix}.title"] == "Your home Wi-Fi"
    schema = result["data_schema"]
    assert schema is not None
    for field in schema.schema:
        assert translations[f"{prefix}.data.{field}"], field
        assert translations[f"{prefix}.data_description.{field}"], field


@pytest.mark.parametrize(
    ("ssid", "password", "errors"),
    [
        ("", "password123", {CONF_SSID: "invalid_ssid"}),
        ("x" * 33, "password123", {CONF_SSID: "invalid_ssid"}),
        ("ü" * 17, "password123", {CONF_SSID: "invalid_ssid"}),  # 34 bytes
        ("home", "short", {CONF_WIFI_PASSWORD: "invalid_wifi_password"}),
        ("home", "p" * 64, {CONF_WIFI_PASSWORD: "invalid_wifi_password"}),
    ],
)
async def test_invalid_wifi_input_is_refused_then_recovers(
    hass: HomeAssistant, ssid: str, password: str, errors: dict[str, str]
) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_USER}
    )
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_SSID: ssid, CONF_WIFI_PASSWORD: password}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == errors
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_SSID: "home", CONF_WIFI_PASSWORD: ""}
    )
    assert result["type"] is FlowResultType.MENU
    assert result["step_id"] == "path"


async def test_saved_wifi_is_not_asked_again(hass: HomeAssistant) -> None:
    MockConfigEntry(
        domain=DOMAIN,
        unique_id=DOMAIN,
        data={CONF_SSID: "home", CONF_WIFI_PASSWORD: "secret-password"},
    ).add_to_hass(hass)
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_USER}
    )
    assert result["type"] is FlowResultType.MENU
    assert result["step_id"] == "path"
