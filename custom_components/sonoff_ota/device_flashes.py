"""Flashes started from the dashboard (the update entity's install action).

One `DeviceFlashes` per config entry (in `entry.runtime_data`). It runs a DIY
flash of a known device, keeps the latest `FlashTracker` of each device (for
the entities and diagnostics) and tells subscribers about every change.
Failures become `HomeAssistantError`s with a translated message naming the
reason (the `exceptions` section of strings.json).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
import logging

from homeassistant.components import network
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError

from .const import DOMAIN, PATH_DIY
from .diy_run import DIY_PORT, DiyRun, DiyTarget
from .firmware_form import firmware_error_message
from .flash_server import DeviceBusyError, async_get_flash_server
from .handoff_run import HandoffLinkError
from .issues import async_update_port_issue
from .known_devices import DeviceRecord, async_mark_flashed, get_device
from .listeners import PortInUseError
from .proto.diy_flasher import DiyFlashError
from .proto.firmware_choice import FirmwareChoice
from .proto.firmware_errors import FirmwareError
from .proto.flash_stages import FlashTracker
from .proto.tasmota_handoff_types import AmbiguousDeviceError, HandoffError
from .settings import get_settings
from .tasmota_link import MQTT_SETUP_PATH, MqttUnavailableError

_LOGGER = logging.getLogger(__name__)

type TrackerListener = Callable[[FlashTracker], None]
type AfterFlash = Callable[[DiyRun], Awaitable[str | None]]
"""Runs after a successful DIY flash (the Tasmota hand-off); returns the MAC if learnt."""

# Config-flow step that holds a device's claim while only waiting for the user.
_CONFIRM_STEP = "diy_confirm"


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

    # -- observing -------------------------------------------------------------------------

    def tracker(self, deviceid: str) -> FlashTracker | None:
        """The latest tracker of `deviceid`, if a flash ran since startup."""
        return self.trackers.get(deviceid)

    def running(self, deviceid: str) -> bool:
        """True while a dashboard flash of `deviceid` runs."""
        tracker = self.trackers.get(deviceid)
        return tracker is not None and not tracker.finished

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
        if self.running(deviceid):
            raise _error("device_busy", deviceid=deviceid)
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


def _target(record: DeviceRecord) -> DiyTarget:
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
