"""Repair flows.

- `port_in_use` is fixed by checking the ports again: the user stops the other
  program, then presses Submit; the flow binds each port for a moment and
  closes the issue only when all are free.
- `interrupted_<flash id>` (a restart cut a flash, see `flash_recovery`):
  - FinalStage / hand-off: progress until the intermediate image has fetched
    Tasmota from the re-opened listener, then the usual Tasmota hand-off
    (`HandoffRun`, as every flash ends); done when HA has the Tasmota device;
  - an earlier setup-mode stage: a confirmation that explains how to start over
    and forgets the interrupted flash;
  - DIY, once the device is back on eWeLink: flash it again (the dashboard's
    `DeviceFlashes.async_install`, so exactly the same checks run).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from homeassistant.components.repairs import RepairsFlow
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
import voluptuous as vol

from .const import DOMAIN
from .flash_journal import async_get_journal
from .flash_stack import async_load_flash_stack
from .issues import (
    ISSUE_PORT_IN_USE,
    ISSUE_RESTART_PREFIX,
    RESUMABLE,
    RestartState,
    async_delete_restart_issue,
    async_update_port_issue,
)
from .listeners import async_check_port_free
from .progress_ring import ProgressRing
from .proto.flash_stages import FlashTracker
from .proto.setup_mode_errors import SetupModeError, StageTimeoutError
from .tasmota_link import MqttUnavailableError

if TYPE_CHECKING:
    from .flash_recovery import ResumedFlash
    from .handoff_run import HandoffOutcome

_LOGGER = logging.getLogger(__name__)

_HANDOFF_ACTIONS = frozenset({"tasmota_ap", "configuring", "wait_discovery"})


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


class _ProgressFlow(RepairsFlow):
    """A repair flow that shows a tracker's progress (shared by the flash repairs)."""

    _task: asyncio.Task[None] | None = None
    _error: tuple[str, dict[str, str]] | None = None
    _remove_listener: Any = None

    def __init__(self) -> None:
        """Nothing shown yet."""
        self._ring = ProgressRing(self)

    def _follow(self, tracker: FlashTracker) -> None:
        if self._remove_listener is None:
            self._remove_listener = tracker.add_listener(self._changed)

    def _changed(self, tracker: FlashTracker) -> None:
        """The text shows the stage, its number and details: refresh it, then the ring."""
        if tracker.finished:
            self._ring.stop()
            return
        if self._task is None:
            return
        state = (str(tracker.stage), tracker.percentage, dict(tracker.details))
        self._ring.show(state, tracker.percentage)

    def _progress(self, step_id: str, action: str, placeholders: dict[str, str]) -> Any:
        assert self._task is not None
        percentage = placeholders.get("percentage")
        self._ring.fetched(int(percentage) if percentage is not None else None)
        return self.async_show_progress(
            step_id=step_id,
            progress_action=action,
            progress_task=self._task,
            description_placeholders=placeholders,
        )

    def _progress_done(self, next_step_id: str) -> Any:
        """The progress step ended: no more numbers for its ring."""
        self._ring.stop()
        return self.async_show_progress_done(next_step_id=next_step_id)

    async def async_step_failed(self, user_input: dict[str, str] | None = None) -> Any:
        """Say why the flash did not finish (the issue stays: it can be tried again)."""
        code, placeholders = self._error or ("unknown", {})
        return self.async_abort(reason=code, description_placeholders=placeholders)

    def async_remove(self) -> None:
        """Stop listening (a running flash goes on without the dialog)."""
        self._ring.stop()
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None


class ResumeFlashRepairFlow(_ProgressFlow):
    """Finish a flash a restart interrupted at FinalStage (or before the hand-off)."""

    def __init__(self, flash_id: str) -> None:
        """Remember which flash."""
        super().__init__()
        self._flash_id = flash_id
        self._outcome: HandoffOutcome | None = None

    def _resumed(self) -> ResumedFlash | None:
        from .flash_recovery import get_resumed  # noqa: PLC0415 - loaded by async_step_init

        return get_resumed(self.hass, self._flash_id)

    def _placeholders(self) -> dict[str, str]:
        resumed = self._resumed()
        details = resumed.tracker.details if resumed is not None else {}
        return {
            "deviceid": (resumed.deviceid if resumed else None) or "?",
            "percentage": str(resumed.tracker.percentage) if resumed else "0",
            "tasmota_ssid": details.get("tasmota_ssid", "tasmota_…"),
            # Carries the Wi-Fi and MQTT passwords (the text warns): only while Tasmota's
            # AP waits for a phone, as in the config flow; never logged.
            "phone_link": details.get("tasmota_phone_link_secret", ""),
            "ssid": resumed.wifi_ssid if resumed is not None else "",
        }

    async def async_step_init(self, user_input: dict[str, str] | None = None) -> Any:
        """Serve FinalStage first unless Tasmota was already served."""
        await async_load_flash_stack(self.hass)  # the resumed flash's steps use it
        resumed = self._resumed()
        if resumed is None:
            return self.async_abort(reason="resume_unavailable")
        self._follow(resumed.tracker)
        if not resumed.served:
            return await self.async_step_finalstage()
        return await self.async_step_handoff()

    async def async_step_finalstage(self, user_input: dict[str, str] | None = None) -> Any:
        """Progress until the intermediate image has fetched Tasmota."""
        resumed = self._resumed()
        if resumed is None:
            return self.async_abort(reason="resume_unavailable")
        if self._task is None:
            serving = resumed.start_serving()
            self._task = self.hass.async_create_task(
                _wait(serving), f"{DOMAIN} repair FinalStage", eager_start=False
            )
        if not self._task.done():
            return self._progress("finalstage", "finalstage", self._placeholders())
        task, self._task = self._task, None
        try:
            await task
        except StageTimeoutError as err:
            self._error = ("finalstage_timeout", {"stage": str(err.stage)})
            return self._progress_done("failed")
        except (SetupModeError, asyncio.CancelledError) as err:
            code = err.code if isinstance(err, SetupModeError) else "cancelled"
            self._error = ("finalstage_failed", {"reason": code})
            return self._progress_done("failed")
        return self._progress_done("handoff")

    async def async_step_handoff(self, user_input: dict[str, str] | None = None) -> Any:
        """The usual hand-off: Tasmota's Wi-Fi and MQTT, then its HA device."""
        resumed = self._resumed()
        if resumed is None:
            return self.async_abort(reason="resume_unavailable")
        if self._task is None:
            self._task = self.hass.async_create_task(
                self._handoff(resumed), f"{DOMAIN} repair hand-off", eager_start=False
            )
        if not self._task.done():
            stage = str(resumed.tracker.stage)
            action = stage if stage in _HANDOFF_ACTIONS else "tasmota_ap"
            return self._progress("handoff", action, self._placeholders())
        task, self._task = self._task, None
        await task
        if self._error is not None:
            return self._progress_done("failed")
        return self._progress_done("done")

    async def _handoff(self, resumed: ResumedFlash) -> None:
        # Loaded by async_step_init.
        from .handoff_run import HandoffLinkError  # noqa: PLC0415
        from .proto.tasmota_handoff_types import HandoffError  # noqa: PLC0415

        try:
            self._outcome = await resumed.async_handoff()
        except (HandoffError, HandoffLinkError) as err:
            self._error = ("handoff_failed", {"reason": str(err.code)})
        except MqttUnavailableError as err:
            self._error = ("handoff_failed", {"reason": str(err.reason)})

    async def async_step_done(self, user_input: dict[str, str] | None = None) -> Any:
        """Tasmota is in HA: end the flash (the issue is withdrawn)."""
        resumed = self._resumed()
        if resumed is not None and self._outcome is not None:
            await resumed.async_finish(self._outcome)
        placeholders = {
            "device_name": self._outcome.name if self._outcome else "",
            "device_path": (
                f"/config/devices/device/{self._outcome.device_id}" if self._outcome else ""
            ),
        }
        if user_input is None:
            return self.async_show_form(step_id="done", description_placeholders=placeholders)
        return self.async_create_entry(data={})


class StartOverRepairFlow(RepairsFlow):
    """An interrupted flash that cannot be finished: explain, then forget it."""

    def __init__(self, flash_id: str, state: str) -> None:
        """Remember which flash."""
        self._flash_id = flash_id
        self._state = state

    async def async_step_init(self, user_input: dict[str, str] | None = None) -> Any:
        """Start at the confirmation."""
        return await self.async_step_confirm()

    async def async_step_confirm(self, user_input: dict[str, str] | None = None) -> Any:
        """The issue's text says what to do; Submit forgets the interrupted flash."""
        if user_input is not None:
            journal = await async_get_journal(self.hass)
            journal.forget(self._flash_id)
            return self.async_create_entry(data={})
        schema: Any = vol.Schema({})
        return self.async_show_form(step_id="confirm", data_schema=schema)


class FlashAgainRepairFlow(_ProgressFlow):
    """A DIY device is back on eWeLink after an interrupted download: flash it again."""

    def __init__(self, flash_id: str) -> None:
        """Remember which flash."""
        super().__init__()
        self._flash_id = flash_id
        self._deviceid: str | None = None

    async def async_step_init(self, user_input: dict[str, str] | None = None) -> Any:
        """Ask first."""
        return await self.async_step_confirm()

    async def async_step_confirm(self, user_input: dict[str, str] | None = None) -> Any:
        """Flash again on Submit."""
        journal = await async_get_journal(self.hass)
        record = journal.records.get(self._flash_id)
        if record is None or not record.seen_back or not record.deviceid:
            return self.async_abort(reason="resume_unavailable")
        self._deviceid = record.deviceid
        if user_input is None:
            schema: Any = vol.Schema({})
            return self.async_show_form(
                step_id="confirm",
                data_schema=schema,
                description_placeholders={"deviceid": record.deviceid},
            )
        return await self.async_step_flash()

    async def async_step_flash(self, user_input: dict[str, str] | None = None) -> Any:
        """The flash, exactly as the dashboard's Install runs it."""
        if self._task is None:
            self._task = self.hass.async_create_task(
                self._flash(), f"{DOMAIN} repair flash", eager_start=False
            )
        if not self._task.done():
            return self._progress("flash", "flash", {"deviceid": self._deviceid or "?"})
        task, self._task = self._task, None
        await task
        if self._error is not None:
            return self._progress_done("failed")
        return self._progress_done("done")

    async def _flash(self) -> None:
        from .known_devices import get_entry  # noqa: PLC0415 - avoids an import cycle

        entry = get_entry(self.hass)
        if entry is None or self._deviceid is None:
            self._error = ("resume_unavailable", {})
            return
        flashes = entry.runtime_data.flashes
        journal = await async_get_journal(self.hass)
        journal.forget(self._flash_id)  # the new flash keeps its own record
        remove = flashes.subscribe(self._deviceid, self._changed)
        try:
            await flashes.async_install(self._deviceid)
        except HomeAssistantError as err:
            placeholders = dict(err.translation_placeholders or {})
            self._error = ("flash_failed", {"reason": str(err), **placeholders})
            # The record went with the new flash: the device's Firmware entity retries.
            async_delete_restart_issue(self.hass, self._flash_id)
        finally:
            remove()

    async def async_step_done(self, user_input: dict[str, str] | None = None) -> Any:
        """Flashed and handed over."""
        return self.async_create_entry(data={})


async def _wait(task: asyncio.Task[None]) -> None:
    """Wait for `task` without cancelling it when the dialog closes."""
    await asyncio.shield(task)


async def async_create_fix_flow(
    hass: HomeAssistant,
    issue_id: str,
    data: dict[str, str | int | float | None] | None,
) -> RepairsFlow:
    """Create the fix flow of a fixable issue."""
    if issue_id.startswith(ISSUE_RESTART_PREFIX):
        flash_id = str((data or {}).get("flash_id") or issue_id[len(ISSUE_RESTART_PREFIX) :])
        state = str((data or {}).get("state") or "")
        if state in RESUMABLE:
            return ResumeFlashRepairFlow(flash_id)
        if state == RestartState.DIY_BACK:
            return FlashAgainRepairFlow(flash_id)
        return StartOverRepairFlow(flash_id, state)
    if issue_id != ISSUE_PORT_IN_USE:
        raise ValueError(f"{issue_id} has no repair flow")
    ports = str((data or {}).get("ports") or "")
    return PortInUseRepairFlow([p for p in ports.split(",") if p])
