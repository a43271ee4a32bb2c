"""Repair flows: `port_in_use` is fixed by checking the ports again.

The user stops the other program, then presses Submit: the flow binds each
port for a moment and closes the issue only when all are free.
"""

from __future__ import annotations

from typing import Any

from homeassistant.components.repairs import RepairsFlow
from homeassistant.core import HomeAssistant
import voluptuous as vol

from .issues import ISSUE_PORT_IN_USE, async_update_port_issue
from .listeners import async_check_port_free


async def async_busy_ports(ports: list[str]) -> list[str]:
    """The `host:port` strings of `ports` that cannot be bound right now."""
    busy: list[str] = []
    for item in ports:
        host, _, port = item.rpartition(":")
        if host and port.isdigit() and not await async_check_port_free(host, int(port)):
            busy.append(item)
    return busy


class PortInUseRepairFlow(RepairsFlow):
    """Check the ports again; done when they are free."""

    def __init__(self, ports: list[str]) -> None:
        """Remember the ports the issue names."""
        self._ports = ports

    async def async_step_init(self, user_input: dict[str, str] | None = None) -> Any:
        """Start at the confirmation."""
        return await self.async_step_confirm()

    async def async_step_confirm(self, user_input: dict[str, str] | None = None) -> Any:
        """Ask the user to free the ports; check them on submit."""
        errors: dict[str, str] = {}
        if user_input is not None:
            busy = await async_busy_ports(self._ports)
            if not busy:
                return self.async_create_entry(data={})
            self._ports = busy
            async_update_port_issue(self.hass, busy)
            errors["base"] = "still_in_use"
        # `Any`: HA 2026.x types forms as probatio schemas, 2025.x as voluptuous ones.
        schema: Any = vol.Schema({})
        return self.async_show_form(
            step_id="confirm",
            data_schema=schema,
            errors=errors,
            description_placeholders={"ports": ", ".join(self._ports)},
        )


async def async_create_fix_flow(
    hass: HomeAssistant,
    issue_id: str,
    data: dict[str, str | int | float | None] | None,
) -> RepairsFlow:
    """Create the fix flow of a fixable issue."""
    if issue_id != ISSUE_PORT_IN_USE:
        raise ValueError(f"{issue_id} has no repair flow")
    ports = str((data or {}).get("ports") or "")
    return PortInUseRepairFlow([p for p in ports.split(",") if p])
