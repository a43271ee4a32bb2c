"""The flow dialog's progress ring, as the frontend keeps it.

Modelled on home-assistant-frontend 20260930.5 (`dialog-data-entry-flow`, chunk
11846): when the dialog first shows a progress step it blanks the ring and only then
subscribes to `data_entry_flow_progressed` (refetch the step, blank the ring) and
`data_entry_flow_progress_update` (ring = `ceil(100 * progress)`, of any flow). So a
number sent before the dialog fetched the step is lost, like one sent before the
real dialog's subscription is active; with no number the dialog shows a spinner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import math
from typing import Any

from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.data_entry_flow import (
    EVENT_DATA_ENTRY_FLOW_PROGRESSED,
    FlowManager,
    FlowResultType,
)

PROGRESS_UPDATE = "data_entry_flow_progress_update"  # its event (no constant on 2025.4)


@dataclass(slots=True)
class FrontendDialog:
    """One open dialog on `flow_id` of `manager` (config flows or repairs)."""

    hass: HomeAssistant
    manager: FlowManager[Any, Any]
    flow_id: str
    ring: int | None = None
    """The ring's number; None shows a spinner."""
    step: dict[str, Any] = field(default_factory=dict)
    """The step it fetched last."""
    refreshes: int = 0
    on_refresh: Callable[[], None] | None = None
    """Called after each refresh event, once the events sent in answer were handled."""
    _unsubscribe: list[Callable[[], None]] = field(default_factory=list)

    async def open(self) -> dict[str, Any]:
        """Open the dialog on the flow (as from the list of flows in progress)."""
        self.step = dict(await self.manager.async_configure(self.flow_id))
        if self.step["type"] is FlowResultType.SHOW_PROGRESS and not self._unsubscribe:
            self.ring = None
            self._unsubscribe = [
                self.hass.bus.async_listen(EVENT_DATA_ENTRY_FLOW_PROGRESSED, self._progressed),
                self.hass.bus.async_listen(PROGRESS_UPDATE, self._update),
            ]
        return self.step

    def close(self) -> None:
        """Close the dialog (the flow goes on)."""
        for stop in self._unsubscribe:
            stop()
        self._unsubscribe = []

    @property
    def text_percentage(self) -> int:
        """The number in the text of the step fetched last."""
        return int((self.step.get("description_placeholders") or {})["percentage"])

    @callback
    def _progressed(self, event: Event[Any]) -> None:
        if event.data["flow_id"] != self.flow_id:
            return
        self.hass.async_create_task(self._fetch(), eager_start=False)  # a reply comes later
        self.ring = None
        self.refreshes += 1
        if self.on_refresh is not None:
            # Once what the server sends in answer (at once, or on the next turn of
            # the loop) has arrived: two turns later.
            self.hass.loop.call_soon(self.hass.loop.call_soon, self.on_refresh)

    @callback
    def _update(self, event: Event[Any]) -> None:
        self.ring = math.ceil(100 * event.data["progress"])

    async def _fetch(self) -> None:
        if self.flow_id not in {f["flow_id"] for f in self.manager.async_progress()}:
            return
        self.step = dict(await self.manager.async_configure(self.flow_id))
