"""The ring of a progress step, kept showing the step's number.

What the frontend does (home-assistant-frontend 20260930.5, `dialog-data-entry-flow`):
- on `data_entry_flow_progressed` for its flow it fetches the step again and blanks
  the ring;
- when a dialog first shows a progress step it blanks the ring and only then
  subscribes to `data_entry_flow_progress_update`: a number sent before that
  subscription is active is lost;
- on `data_entry_flow_progress_update` (of any flow) it shows `ceil(100 * progress)`;
  with no number it shows a spinner.

HA fires refresh events too: 2026.x when a fetch finds the step's text changed
(so every change of ours is followed by a second refresh), and every version when the
progress task ends. So while a progress step is shown the ring listens to its flow's
refresh events and sends the number right after each one, whoever fired it (after the
event has reached every listener, the frontend's subscription included). And each fetch
of the step sends the number again a little later, for a dialog that has just
subscribed. Without that, the ring is a spinner after each refresh, and in a dialog
opened while a stage's number stands still (a device joining Wi-Fi, a stalled download)
until the number moves.

HA 2025.4 has no ring (no `async_update_progress`): its text carries the number.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from homeassistant.core import Event, callback
from homeassistant.data_entry_flow import EVENT_DATA_ENTRY_FLOW_PROGRESSED, FlowHandler

RESEND_AFTER: tuple[float, ...] = (0.5, 2.0, 5.0)
"""Seconds after a fetch at which the number is sent again (a slow link subscribes late)."""


class ProgressRing:
    """One flow's ring: the refresh events and the numbers, in the frontend's order."""

    __slots__ = ("_flow", "_resends", "_unlisten", "last_state", "percentage")

    def __init__(self, flow: FlowHandler[Any, Any, Any]) -> None:
        """Nothing shown yet."""
        self._flow = flow
        self._resends: list[asyncio.TimerHandle] = []
        self._unlisten: Callable[[], None] | None = None
        self.last_state: object = None
        """What the frontend was last told to fetch (the step's text and placeholders)."""
        self.percentage: int | None = None
        """The number last sent to the ring."""

    def show(self, state: object, percentage: int) -> None:
        """Show `percentage`; when `state` (the text) changed, refresh the step first."""
        changed = percentage != self.percentage
        self.percentage = percentage
        if state != self.last_state:
            self.last_state = state
            self.notify()  # the number follows the refresh event (`_refreshed`)
            if self._unlisten is not None:
                return
        if changed:
            self._send()

    def fetched(self, percentage: int | None = None) -> None:
        """The step was fetched: send the number again once a new dialog listens.

        `percentage` is the number the fetched text shows, if it shows one.
        """
        if percentage is not None:
            self.percentage = percentage
        for handle in self._resends:
            handle.cancel()
        self._resends = []
        if not hasattr(self._flow, "async_update_progress"):
            return
        hass = self._flow.hass
        if self._unlisten is None:
            flow_id = self._flow.flow_id
            self._unlisten = hass.bus.async_listen(
                EVENT_DATA_ENTRY_FLOW_PROGRESSED,
                self._refreshed,
                event_filter=callback(lambda data: data.get("flow_id") == flow_id),
            )
        self._resends = [hass.loop.call_later(delay, self._send) for delay in RESEND_AFTER]

    def stop(self) -> None:
        """No more numbers: the step ended, or the flow is gone."""
        for handle in self._resends:
            handle.cancel()
        self._resends = []
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    def notify(self) -> None:
        """Ask the frontend to fetch the step again (new stage, text or number).

        Only an event: calling `async_configure` here would race the frontend's own
        fetch and, once the task is done, run the flow to its end under its feet
        (the frontend then shows "Invalid flow specified").
        """
        flow = self._flow
        notify = getattr(flow, "async_notify_flow_changed", None)  # HA 2026.x
        if notify is not None:
            notify()
            return
        flow.hass.bus.async_fire_internal(
            EVENT_DATA_ENTRY_FLOW_PROGRESSED,
            {"handler": flow.handler, "flow_id": flow.flow_id, "refresh": True},
        )

    @callback
    def _refreshed(self, _event: Event[Any]) -> None:
        """A refresh event: the number right after it has reached every listener."""
        self._flow.hass.loop.call_soon(self._send)

    def _send(self) -> None:
        """The ring at `percentage` (HA 2025.5+).

        The frontend shows `ceil(100 * progress)`. `percentage / 100` would show 8 for 7
        (100 * 0.07 is 7.000000000000001 in floating point), so a quarter percent less
        is sent: ceil and round both give `percentage` back.
        """
        update = getattr(self._flow, "async_update_progress", None)
        if update is not None and self.percentage is not None:
            update(max(self.percentage - 0.25, 0.0) / 100)
