"""Flashes started from the dashboard: one device (its update entity) or several at once.

One `DeviceFlashes` per config entry (in `entry.runtime_data`). It runs a DIY
flash of a known device, keeps the latest `FlashTracker` of each device (for
the entities and diagnostics) and tells subscribers about every change.
Failures become `HomeAssistantError`s with a translated message naming the
reason (the `exceptions` section of strings.json).

Several devices (the hub's "Flash all eligible devices" button, the
`sonoff_ota.flash` action) run concurrently, each as its own single-device
flash with its own tracker, so every device's stage sensor and update
percentage move as usual. One failure never stops the others; a device is
never flashed twice (a device already being flashed, or named twice, is left
alone: `_active` is claimed before the first await). The scheduling is
`proto.flash_batch.run_isolated`, which the benchmark times as well. At the end a persistent
notification in HA's language lists each device's result.

The flashes overlap; the hand-offs after them take turns (`_handoff_lock`).
Tasmota's first-boot access point stands at one address (192.168.4.1) and
takes one client, and a DIY device tells no MAC, so a hand-off recognises
"its" Tasmota only as the one it configured on that access point, or as the
one new Tasmota on MQTT: two at once would configure the same device twice or
link one device to two records. Each hand-off starts once the previous one
has its device in HA (it is then "known", never "the new one"). Where HA moves its
own Wi-Fi, a hand-off's hop onto that access point (and back home) happens inside
its turn (`handoff_run.HandoffRun(hop_to_ap=True)`, run by `after_flash`), so two
hops never overlap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
import enum
import itertools
import logging
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from homeassistant.components import network, persistent_notification
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.translation import async_get_translations

from .const import DOMAIN, PATH_DIY
from .firmware_form import firmware_error_message
from .flash_stack import async_load_flash_stack
from .issues import async_update_port_issue
from .known_devices import DeviceRecord, async_mark_flashed, get_device, get_devices
from .proto.firmware_choice import FirmwareChoice
from .proto.flash_batch import run_isolated
from .proto.flash_stages import FlashTracker
from .settings import get_settings
from .tasmota_link import MQTT_SETUP_PATH, MqttUnavailableError

if TYPE_CHECKING:
    from .diy_run import DiyRun, DiyTarget

_LOGGER = logging.getLogger(__name__)

type TrackerListener = Callable[[FlashTracker], None]
type AfterFlash = Callable[[DiyRun], Awaitable[str | None]]
"""Runs after a successful DIY flash (the Tasmota hand-off); returns the MAC if learnt."""

# Config-flow step that holds a device's claim while only waiting for the user.
_CONFIRM_STEP = "diy_confirm"
SUMMARY_SELECTOR = "flash_summary"
"""`selector.flash_summary.options.*` in strings.json: the end-of-batch notification."""
_batch_numbers = itertools.count(1)


class BatchOutcome(enum.StrEnum):
    """How one device of a batch ended."""

    DONE = "done"
    FAILED = "failed"
    """The flash (or the hand-off) failed; `key` names why (an `exceptions` key)."""
    NOT_ELIGIBLE = "not_eligible"
    """Left alone, the eligibility table refuses it; `key` is the row."""
    BUSY = "busy"
    """Left alone, it is being flashed already (or was named twice)."""


class BatchResult(NamedTuple):
    """One device of a batch."""

    deviceid: str
    outcome: BatchOutcome
    key: str = ""
    placeholders: Mapping[str, str] = MappingProxyType({})
    tasmota_device: str | None = None
    domain: str = DOMAIN
    """The integration whose `exceptions.<key>` names the failure (HA's MQTT, for example)."""
    message: str = ""
    """The failure in English, shown when no translation is found."""


class DeviceFlashes:
    """See the module docstring."""

    def __init__(self, hass: HomeAssistant, entry: ConfigEntry) -> None:
        """Nothing runs yet."""
        self.hass = hass
        self.entry = entry
        self.trackers: dict[str, FlashTracker] = {}
        """The latest tracker of each device (running or ended), by deviceid."""
        self.synthetic_image = False
        """The last image flashed from here was a synthetic test image."""
        self.after_flash: AfterFlash | None = None
        """Optional hand-off step run after a successful flash (set by the integration)."""
        self._listeners: dict[str, list[TrackerListener]] = {}
        self._unsubscribe_tracker: dict[str, Callable[[], None]] = {}
        self._active: set[str] = set()
        """Devices with an install from here underway (claimed before any await)."""
        self._handoff_lock = asyncio.Lock()
        """One hand-off at a time (see the module docstring)."""
        self.batches: set[asyncio.Task[list[BatchResult]]] = set()
        """Running batches (the button and the action return once one has started)."""

    # -- observing -------------------------------------------------------------------------

    def tracker(self, deviceid: str) -> FlashTracker | None:
        """The latest tracker of `deviceid`, if a flash ran since startup."""
        return self.trackers.get(deviceid)

    def running(self, deviceid: str) -> bool:
        """True while a dashboard flash of `deviceid` runs."""
        tracker = self.trackers.get(deviceid)
        return tracker is not None and not tracker.finished

    def busy(self, deviceid: str) -> bool:
        """True from the moment an install of `deviceid` is asked for until it ends."""
        return deviceid in self._active or self.running(deviceid)

    @callback
    def subscribe(self, deviceid: str, listener: TrackerListener) -> Callable[[], None]:
        """Call `listener` on every change of `deviceid`'s tracker (also a new one)."""
        self._listeners.setdefault(deviceid, []).append(listener)

        def remove() -> None:
            listeners = self._listeners.get(deviceid, [])
            if listener in listeners:
                listeners.remove(listener)

        return remove

    def _track(self, deviceid: str, tracker: FlashTracker) -> None:
        if (old := self._unsubscribe_tracker.pop(deviceid, None)) is not None:
            old()
        self.trackers[deviceid] = tracker
        self._unsubscribe_tracker[deviceid] = tracker.add_listener(
            lambda changed: self._notify(deviceid, changed)
        )
        self._notify(deviceid, tracker)

    def _notify(self, deviceid: str, tracker: FlashTracker) -> None:
        for listener in list(self._listeners.get(deviceid, [])):
            listener(tracker)

    # -- flashing --------------------------------------------------------------------------

    async def async_install(self, deviceid: str, firmware: FirmwareChoice | None = None) -> None:
        """Flash Tasmota onto the known DIY device `deviceid`; raise `HomeAssistantError`.

        `firmware`: the image to write (default: the newest lite that fits).
        """
        record = get_device(self.entry, deviceid)
        if record is None or record.flashed:
            raise _error("unknown_device", deviceid=deviceid)
        if record.path != PATH_DIY or not record.host:
            raise _error("needs_setup_mode_flow", deviceid=deviceid)
        if self.busy(deviceid):
            raise _error("device_busy", deviceid=deviceid)
        self._active.add(deviceid)
        try:
            await self._async_install(record, firmware)
        finally:
            self._active.discard(deviceid)

    async def _async_install(self, record: DeviceRecord, firmware: FirmwareChoice | None) -> None:
        await async_load_flash_stack(self.hass)
        # Loaded just above (the first dashboard flash imports them off the event loop).
        from .diy_run import DiyRun  # noqa: PLC0415
        from .flash_server import DeviceBusyError, async_get_flash_server  # noqa: PLC0415
        from .handoff_run import HandoffLinkError  # noqa: PLC0415
        from .listeners import PortInUseError  # noqa: PLC0415
        from .proto.diy_flasher import DiyFlashError  # noqa: PLC0415
        from .proto.firmware_errors import FirmwareError  # noqa: PLC0415
        from .proto.tasmota_handoff_types import AmbiguousDeviceError, HandoffError  # noqa: PLC0415

        deviceid = record.deviceid
        assert record.host is not None  # checked by async_install
        await async_get_flash_server(self.hass)  # flows may not have created it yet
        self._abort_waiting_flows(deviceid)
        callback_host = get_settings(self.hass).callback_host or (
            await network.async_get_source_ip(self.hass, target_ip=record.host)
        )
        run = DiyRun(self.hass, _target(record), callback_host)
        run.firmware = firmware or FirmwareChoice()
        tracker = run.tracker
        self._track(deviceid, tracker)
        mac: str | None = None
        try:
            try:
                # No download progress: run() checks the device first, so it would
                # move the bar of the finished CHECKING stage back.
                await run.run()
                if self.after_flash is not None:
                    async with self._handoff_lock:
                        mac = await self.after_flash(run)
            finally:
                self.synthetic_image = run.synthetic_image or self.synthetic_image
                await run.close()
        except DiyFlashError as err:
            raise _fail(tracker, err.code, err.placeholders) from err
        except DeviceBusyError as err:
            raise _fail(tracker, "device_busy", {"deviceid": err.deviceid}) from err
        except PortInUseError as err:
            async_update_port_issue(self.hass, [f"{err.host}:{err.port}"])
            raise _fail(tracker, "port_in_use", {"ports": f"{err.host}:{err.port}"}) from err
        except FirmwareError as err:
            _LOGGER.warning("Firmware for %s not usable: %s", deviceid, err)
            key, placeholders = firmware_error_message(err)
            raise _fail(tracker, key, placeholders) from err
        except AmbiguousDeviceError as err:
            raise _fail(tracker, "ambiguous_device", dict(err.placeholders)) from err
        except (HandoffError, HandoffLinkError) as err:
            raise _fail(tracker, str(err.code), dict(err.placeholders)) from err
        except MqttUnavailableError as err:
            raise _fail(tracker, str(err.reason), {"mqtt_path": MQTT_SETUP_PATH}) from err
        except HomeAssistantError:
            tracker.fail("unknown")
            raise
        except BaseException:
            if not tracker.finished:
                tracker.abort()
            raise
        tracker.done()
        async_mark_flashed(self.hass, self.entry, deviceid, mac=mac)

    # -- several devices ------------------------------------------------------------------

    def eligible(self) -> list[str]:
        """Devices "Flash all eligible devices" takes: flashable from here and not running."""
        return [
            record.deviceid
            for record in get_devices(self.entry).values()
            if record.dashboard_flashable and not self.busy(record.deviceid)
        ]

    @callback
    def async_start_batch(self, deviceids: Iterable[str]) -> asyncio.Task[list[BatchResult]]:
        """Flash `deviceids` concurrently in the background; raise if none can start.

        Raises `HomeAssistantError` (`nothing_to_flash`) when no named device is
        flashable from here right now; nothing is started then.
        """
        wanted = list(dict.fromkeys(deviceids))
        startable = [
            deviceid
            for deviceid in wanted
            if (record := get_device(self.entry, deviceid)) is not None
            and record.dashboard_flashable
            and not self.busy(deviceid)
        ]
        if not startable:
            raise _error("nothing_to_flash")
        task = self.entry.async_create_background_task(
            self.hass, self.async_flash_many(wanted), f"{DOMAIN} flash of {len(wanted)} devices"
        )
        self.batches.add(task)
        task.add_done_callback(self.batches.discard)
        return task

    async def async_flash_many(self, deviceids: Iterable[str]) -> list[BatchResult]:
        """Flash several devices at once; every one ends with a result, then a notification."""
        wanted = list(dict.fromkeys(deviceids))  # named twice: flashed once
        results: dict[str, BatchResult] = {}
        todo: list[str] = []
        for deviceid in wanted:
            record = get_device(self.entry, deviceid)
            if record is not None and self.busy(deviceid):
                results[deviceid] = BatchResult(deviceid, BatchOutcome.BUSY)
            elif record is None or record.flashed:
                results[deviceid] = _failed(deviceid, "unknown_device", deviceid=deviceid)
            elif record.path != PATH_DIY or not record.host:
                results[deviceid] = _failed(deviceid, "needs_setup_mode_flow", deviceid=deviceid)
            elif not (decision := record.eligibility).ok:
                results[deviceid] = BatchResult(
                    deviceid, BatchOutcome.NOT_ELIGIBLE, decision.row.key, decision.placeholders
                )
            else:
                todo.append(deviceid)
        _LOGGER.info("Flashing %d of %d devices at once", len(todo), len(wanted))
        results.update(await run_isolated(todo, self._async_flash_one, _unexpected))
        ordered = [results[deviceid] for deviceid in wanted]
        await self._async_notify(ordered)
        return ordered

    async def _async_flash_one(self, deviceid: str) -> BatchResult:
        try:
            await self.async_install(deviceid)
        except HomeAssistantError as err:
            return BatchResult(
                deviceid,
                BatchOutcome.FAILED,
                err.translation_key or "unknown",
                dict(err.translation_placeholders or {}),
                domain=err.translation_domain or DOMAIN,
                message=str(err),
            )
        tracker = self.trackers.get(deviceid)
        name = tracker.details.get("tasmota_device") if tracker is not None else None
        return BatchResult(deviceid, BatchOutcome.DONE, tasmota_device=name)

    async def _async_notify(self, results: list[BatchResult]) -> None:
        """One persistent notification listing every device's result, in HA's language."""
        language = self.hass.config.language
        domains = {DOMAIN, *(result.domain for result in results)}
        texts = {
            **await async_get_translations(self.hass, language, "selector", [DOMAIN]),
            **await async_get_translations(self.hass, language, "exceptions", domains),
        }
        done = sum(result.outcome is BatchOutcome.DONE for result in results)
        title = _render(
            texts,
            f"selector.{SUMMARY_SELECTOR}.options.title",
            {"done": str(done), "total": str(len(results))},
        )
        lines = [f"- {_summary_line(texts, result)}" for result in results]
        persistent_notification.async_create(
            self.hass,
            "\n".join(lines),
            title=title,
            notification_id=f"{DOMAIN}_flash_batch_{next(_batch_numbers)}",
        )

    def _abort_waiting_flows(self, deviceid: str) -> None:
        """A discovery flow still asking "Flash it?" holds the device: the button answers it."""
        flows = self.hass.config_entries.flow
        for flow in flows.async_progress_by_handler(DOMAIN):
            if flow["context"].get("unique_id") == deviceid and flow["step_id"] == _CONFIRM_STEP:
                _LOGGER.debug("Closing the waiting confirmation of %s", deviceid)
                flows.async_abort(flow["flow_id"])

    @callback
    def async_shutdown(self) -> None:
        """Forget listeners (the entry unloads); running flashes end with their tasks."""
        for unsubscribe in self._unsubscribe_tracker.values():
            unsubscribe()
        self._unsubscribe_tracker.clear()
        self._listeners.clear()


def _unexpected(deviceid: str, err: BaseException) -> BatchResult:
    """A flash that ended without a `HomeAssistantError` (a bug, or cancelled alone)."""
    if not isinstance(err, asyncio.CancelledError):
        _LOGGER.error("Flash of %s failed unexpectedly", deviceid, exc_info=err)
    return _failed(deviceid, "unknown")


def _failed(device: str, key: str, **placeholders: str) -> BatchResult:
    return BatchResult(device, BatchOutcome.FAILED, key, placeholders)


def _render(
    texts: Mapping[str, str],
    key: str,
    values: Mapping[str, str],
    *,
    domain: str = DOMAIN,
    fallback: str | None = None,
) -> str:
    """One loaded translation, filled in; `fallback` (or the key) when missing or broken."""
    template = texts.get(f"component.{domain}.{key}")
    if template is None:
        return fallback or key
    try:
        return template.format_map(_Placeholders(values))
    except (IndexError, ValueError):
        return template


class _Placeholders(dict[str, str]):
    """Unknown placeholders stay visible as `{name}` instead of raising."""

    def __missing__(self, key: str) -> str:
        return f"{{{key}}}"


def _summary_line(texts: Mapping[str, str], result: BatchResult) -> str:
    values: dict[str, Any] = {"deviceid": result.deviceid}
    base = f"selector.{SUMMARY_SELECTOR}.options"
    match result.outcome:
        case BatchOutcome.DONE:
            values["tasmota_device"] = result.tasmota_device or result.deviceid
            return _render(texts, f"{base}.done", values)
        case BatchOutcome.BUSY:
            return _render(texts, f"{base}.busy", values)
        case BatchOutcome.NOT_ELIGIBLE:
            # Loaded: a refusal comes from `DeviceRecord.eligibility`, which loaded it.
            from .proto.eligibility import ELIGIBILITY_SELECTOR  # noqa: PLC0415

            key = f"selector.{ELIGIBILITY_SELECTOR}.options.{result.key}"
        case _:
            values["message"] = _render(
                texts,
                f"exceptions.{result.key}.message",
                result.placeholders,
                domain=result.domain,
                fallback=result.message,
            )
            return _render(texts, f"{base}.failed", values)
    values["message"] = _render(texts, key, result.placeholders)
    return _render(texts, f"{base}.failed", values)


def _target(record: DeviceRecord) -> DiyTarget:
    from .diy_run import DIY_PORT, DiyTarget  # noqa: PLC0415 - loaded by `_async_install`

    assert record.host is not None
    return DiyTarget(
        deviceid=record.deviceid,
        host=record.host,
        port=record.port or DIY_PORT,
        device_type=record.device_type or "diy_plug",
        model=record.model,
    )


def _error(key: str, **placeholders: str) -> HomeAssistantError:
    return HomeAssistantError(
        translation_domain=DOMAIN,
        translation_key=key,
        translation_placeholders=placeholders,
    )


def _fail(tracker: FlashTracker, code: str, placeholders: dict[str, str]) -> HomeAssistantError:
    tracker.fail(code, **placeholders)
    return _error(code, **placeholders)
