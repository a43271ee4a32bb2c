"""Repair issues: conditions the user must fix outside the flow.

- `mqtt_missing` (created and worded by `tasmota_link`): no usable MQTT entry,
  so a flashed Tasmota device cannot be handed to HA's Tasmota integration.
  Checked at setup and on every change of an MQTT entry: withdrawn as soon as
  one is loaded, raised again if it goes.
- `port_in_use`: a port a flash needs (8080 for FinalStage and the plain
  download listener; the TLS port for the fake cloud) is held by another
  program. Raised when a port check or a listener fails (a bind can fail after
  the check passed: another program took the port in between), withdrawn when a
  later check finds the port free or a listener binds it. The issue is fixable:
  its repair flow checks again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from homeassistant.config_entries import (
    SIGNAL_CONFIG_ENTRY_CHANGED,
    ConfigEntry,
    ConfigEntryChange,
)
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.dispatcher import async_dispatcher_connect

from .const import DOMAIN
from .tasmota_link import MQTT_DOMAIN, async_update_mqtt_issue

ISSUE_PORT_IN_USE: Final = "port_in_use"


@callback
def async_check_mqtt(hass: HomeAssistant) -> bool:
    """Raise or withdraw `mqtt_missing`; True when MQTT is usable (an entry is loaded)."""
    return async_update_mqtt_issue(hass) is None


@callback
def async_track_mqtt(hass: HomeAssistant) -> Callable[[], None]:
    """Check now and whenever an MQTT entry changes (added, removed, loaded, unloaded)."""
    async_check_mqtt(hass)

    @callback
    def _changed(change: ConfigEntryChange, entry: ConfigEntry) -> None:
        if entry.domain == MQTT_DOMAIN:
            async_check_mqtt(hass)

    return async_dispatcher_connect(hass, SIGNAL_CONFIG_ENTRY_CHANGED, _changed)


@callback
def async_update_port_issue(hass: HomeAssistant, busy: Iterable[str]) -> None:
    """Raise `port_in_use` for the `host:port` strings in `busy`, or withdraw it if none."""
    ports = sorted(set(busy))
    if not ports:
        ir.async_delete_issue(hass, DOMAIN, ISSUE_PORT_IN_USE)
        return
    ir.async_create_issue(
        hass,
        DOMAIN,
        ISSUE_PORT_IN_USE,
        is_fixable=True,
        severity=ir.IssueSeverity.ERROR,
        translation_key=ISSUE_PORT_IN_USE,
        translation_placeholders={"ports": ", ".join(ports)},
        data={"ports": ",".join(ports)},
    )


def _issue_ports(hass: HomeAssistant) -> list[str]:
    """The `host:port` strings the `port_in_use` issue names now (none if no issue)."""
    issue = ir.async_get(hass).async_get_issue(DOMAIN, ISSUE_PORT_IN_USE)
    if issue is None or not issue.data:
        return []
    return [port for port in str(issue.data.get("ports") or "").split(",") if port]


@callback
def async_port_busy(hass: HomeAssistant, port: str) -> None:
    """A bind of `host:port` failed: add it to `port_in_use` (raise the issue if needed)."""
    async_update_port_issue(hass, [*_issue_ports(hass), port])


@callback
def async_port_bound(hass: HomeAssistant, port: str) -> None:
    """A listener bound `host:port`: take it out of `port_in_use` (withdrawn when empty)."""
    ports = _issue_ports(hass)
    if port in ports:
        async_update_port_issue(hass, [p for p in ports if p != port])
