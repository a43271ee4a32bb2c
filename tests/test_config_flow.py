"""The config flow."""

from __future__ import annotations

from typing import Any

from homeassistant import config_entries
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.translation import async_get_translations
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.sonoff_ota.const import CONF_SSID, CONF_WIFI_PASSWORD, DOMAIN

# The flow needs a loaded MQTT entry; its periodic timer outlives a test on HA 2025.4.
pytestmark = pytest.mark.parametrize("expected_lingering_timers", [True])


async def test_first_step_is_shown_with_translated_strings(
    hass: HomeAssistant, mqtt_mock: Any
) -> None:
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
    hass: HomeAssistant, mqtt_mock: Any, ssid: str, password: str, errors: dict[str, str]
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


async def test_saved_wifi_is_not_asked_again(hass: HomeAssistant, mqtt_mock: Any) -> None:
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


async def test_without_mqtt_the_first_step_stops_with_a_repair(hass: HomeAssistant) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_USER}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "mqtt_not_configured"
    assert result["description_placeholders"] == {
        "mqtt_path": "/config/integrations/integration/mqtt"
    }
    assert ir.async_get(hass).async_get_issue(DOMAIN, "mqtt_missing") is not None
