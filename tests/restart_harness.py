"""Restarting Home Assistant in the middle of a flash, inside one test.

`restart_home_assistant` is what HA's stop and next start do to this
integration: while HA's state is `stopping`, the flows are aborted and the
flash server shuts down (the listeners close; the device loses its server);
HA's final write then writes the journal's pending save; then
everything the process held in memory is dropped (flash server, journal,
resumed flashes) and the config entry is unloaded and set up again, which
reads the journal back from HA's storage. The `EVENT_HOMEASSISTANT_STOP` itself
is not fired: it would also stop HA's MQTT, which the hand-off after the
restart needs.
"""

from __future__ import annotations

import json
from typing import Any

from homeassistant.components.repairs import DOMAIN as REPAIRS_DOMAIN
from homeassistant.config_entries import ConfigEntry
from homeassistant.const import EVENT_HOMEASSISTANT_FINAL_WRITE
from homeassistant.core import CoreState, HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import issue_registry as ir

from custom_components.sonoff_ota.const import DOMAIN
from custom_components.sonoff_ota.flash_journal import JOURNAL_KEY, STORAGE_KEY
from custom_components.sonoff_ota.flash_recovery import RESUMED_KEY
from custom_components.sonoff_ota.flash_server import SERVER_KEY
from custom_components.sonoff_ota.issues import ISSUE_RESTART_PREFIX
from tests.harness import WIFI


async def stop_home_assistant(hass: HomeAssistant) -> None:
    """The stop half (see the module docstring)."""
    hass.set_state(CoreState.stopping)
    try:
        for flow in hass.config_entries.flow.async_progress_by_handler(DOMAIN):
            hass.config_entries.flow.async_abort(flow["flow_id"])
        await hass.async_block_till_done()
        if (server := hass.data.get(SERVER_KEY)) is not None:
            await server.async_shutdown()
        for resumed in list(hass.data.get(RESUMED_KEY, {}).values()):
            await resumed.async_close()
        await hass.async_block_till_done()
        # HA's final write: stores with a pending (delayed) save write it now.
        hass.set_state(CoreState.final_write)
        hass.bus.async_fire(EVENT_HOMEASSISTANT_FINAL_WRITE)
        await hass.async_block_till_done()
    finally:
        hass.set_state(CoreState.running)


async def start_home_assistant(hass: HomeAssistant, entry: ConfigEntry) -> None:
    """The start half: a fresh process's memory, the entry set up again."""
    await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    for key in (JOURNAL_KEY, RESUMED_KEY):
        hass.data.pop(key, None)
    # The flash server's views stay registered on HA's HTTP app (routes cannot be
    # removed from a running aiohttp app); its state was emptied by the shutdown.
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()


async def restart_home_assistant(hass: HomeAssistant, entry: ConfigEntry) -> None:
    """Stop, then start (see the module docstring)."""
    await stop_home_assistant(hass)
    await start_home_assistant(hass, entry)


def journal_json(hass_storage: dict[str, Any]) -> str:
    """The stored journal as JSON text ("" when never written)."""
    stored = hass_storage.get(STORAGE_KEY)
    return json.dumps(stored) if stored is not None else ""


def journal_records(hass_storage: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored journal records."""
    stored = hass_storage.get(STORAGE_KEY) or {}
    return list((stored.get("data") or {}).get("flashes", {}).values())


def assert_no_secret(hass_storage: dict[str, Any], *secrets: str) -> None:
    """Neither the Wi-Fi password nor any given secret is in the stored journal."""
    text = journal_json(hass_storage)
    assert text, "the journal was never written"
    for secret in (WIFI["wifi_password"], *secrets):
        assert secret not in text


def restart_issues(hass: HomeAssistant) -> list[ir.IssueEntry]:
    """Our interrupted-flash issues."""
    return [
        issue
        for (domain, issue_id), issue in ir.async_get(hass).issues.items()
        if domain == DOMAIN and issue_id.startswith(ISSUE_RESTART_PREFIX)
    ]


async def fix(hass: HomeAssistant, issue_id: str, answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the issue's repair flow like the UI: wait out progress, submit `answers` to forms."""
    manager = hass.data[REPAIRS_DOMAIN]["flow_manager"]
    result: Any = await manager.async_init(DOMAIN, data={"issue_id": issue_id})
    pending = list(answers)
    for _ in range(20):
        if result["type"] is FlowResultType.SHOW_PROGRESS:
            await hass.async_block_till_done()
            result = await manager.async_configure(result["flow_id"])
        elif result["type"] is FlowResultType.FORM and pending:
            result = await manager.async_configure(result["flow_id"], pending.pop(0))
        else:
            break
    return dict(result)
