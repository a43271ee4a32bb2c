"""Repair issues: MQTT missing, and a port another program holds.

MQTT itself is replaced by a mock integration (no broker runs here): only its
config entry appearing (loaded) and going matters. The busy port is a real listening
socket on 127.0.0.1; the repair flow checks it again with a real bind.
"""

from __future__ import annotations

import socket
from typing import Any

from homeassistant import config_entries
from homeassistant.components.repairs import DOMAIN as REPAIRS_DOMAIN
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import issue_registry as ir
from homeassistant.setup import async_setup_component

from custom_components.sonoff_ota.const import DOMAIN
from custom_components.sonoff_ota.issues import ISSUE_PORT_IN_USE
from custom_components.sonoff_ota.tasmota_link import ISSUE_MQTT_MISSING
from tests.dashboard_device import mock_mqtt, setup_entry
from tests.harness import LOOPBACK, free_port, install_settings, local_firmware


def issue(hass: HomeAssistant, issue_id: str) -> ir.IssueEntry | None:
    return ir.async_get(hass).async_get_issue(DOMAIN, issue_id)


async def test_mqtt_missing_is_raised_and_withdrawn(hass: HomeAssistant) -> None:
    await setup_entry(hass)
    raised = issue(hass, ISSUE_MQTT_MISSING)
    assert raised is not None
    assert raised.translation_key == ISSUE_MQTT_MISSING
    assert raised.severity is ir.IssueSeverity.WARNING

    mqtt = await mock_mqtt(hass)  # the user sets MQTT up: the issue goes by itself
    assert issue(hass, ISSUE_MQTT_MISSING) is None

    await hass.config_entries.async_remove(mqtt.entry_id)
    await hass.async_block_till_done()
    assert issue(hass, ISSUE_MQTT_MISSING) is not None


async def test_no_issue_when_mqtt_is_there_from_the_start(hass: HomeAssistant) -> None:
    await mock_mqtt(hass)
    await setup_entry(hass)
    assert issue(hass, ISSUE_MQTT_MISSING) is None


async def test_busy_port_is_raised_by_the_check_and_fixed_once_free(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    holder = socket.socket()
    holder.bind((LOOPBACK, 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        async with local_firmware() as firmware:
            # the device side is a dead loopback port: nothing may go to 10.10.7.1
            dead_ap = f"http://{LOOPBACK}:{free_port()}"
            install_settings(hass, firmware, finalstage_port=port, setup_ap_url=dead_ap)
            assert await async_setup_component(hass, "http", {})
            await mock_mqtt(hass)
            await setup_entry(hass)
            result: Any = await hass.config_entries.flow.async_init(
                DOMAIN, context={"source": config_entries.SOURCE_USER}
            )
            assert result["type"] is FlowResultType.MENU  # the entry holds the Wi-Fi
            flow_id = result["flow_id"]
            result = await hass.config_entries.flow.async_configure(
                flow_id, {"next_step_id": "setup_mode"}
            )
            result = await hass.config_entries.flow.async_configure(
                flow_id, {"callback_host": LOOPBACK}
            )
            assert result["errors"] == {"base": "port_in_use"}
            raised = issue(hass, ISSUE_PORT_IN_USE)
            assert raised is not None
            assert raised.is_fixable
            assert raised.translation_placeholders == {"ports": f"{LOOPBACK}:{port}"}

            assert await async_setup_component(hass, REPAIRS_DOMAIN, {})
            await hass.async_block_till_done()
            manager = hass.data[REPAIRS_DOMAIN]["flow_manager"]
            fix: Any = await manager.async_init(DOMAIN, data={"issue_id": ISSUE_PORT_IN_USE})
            assert fix["step_id"] == "confirm"
            assert fix["description_placeholders"] == {"ports": f"{LOOPBACK}:{port}"}
            fix = await manager.async_configure(fix["flow_id"], {})
            assert fix["errors"] == {"base": "still_in_use"}, "still held: stays open"
            assert issue(hass, ISSUE_PORT_IN_USE) is not None

            holder.close()  # the other program stops
            fix = await manager.async_configure(fix["flow_id"], {})
            assert fix["type"] is FlowResultType.CREATE_ENTRY
            assert issue(hass, ISSUE_PORT_IN_USE) is None

            # and the flow's own check withdraws it too when the port is free again
            result = await hass.config_entries.flow.async_configure(
                flow_id, {"callback_host": LOOPBACK}
            )
            assert result["type"] is FlowResultType.SHOW_PROGRESS
            hass.config_entries.flow.async_abort(flow_id)
            await hass.async_block_till_done(wait_background_tasks=True)
    finally:
        holder.close()


async def test_a_check_that_finds_the_port_free_withdraws_the_issue(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    from custom_components.sonoff_ota.issues import async_update_port_issue

    async_update_port_issue(hass, [f"{LOOPBACK}:8080"])
    assert issue(hass, ISSUE_PORT_IN_USE) is not None
    async_update_port_issue(hass, [])
    assert issue(hass, ISSUE_PORT_IN_USE) is None
