"""The running flash, shared by both paths: the base of the config flow.

`FlashFlow` holds what every path needs (the home Wi-Fi, the run, the firmware
choice) and shows the flash: each stage of it is a progress step whose text and
percentage come from the run's `FlashTracker`. A waiting stage that times out
offers a retry of that stage; a failure ends the flow with its own message; a
success goes on to `handoff_flow` (which device, and where it is now). An
abort closes every listener and drops the credentials.

The paths sit on top as thin flows (`setup_mode_flow`, `diy_flow`,
`firmware_flow`, `handoff_flow`); `config_flow.SonoffOtaConfigFlow` joins them
and routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import logging
from typing import TYPE_CHECKING, Any

from homeassistant.config_entries import ConfigFlow, ConfigFlowResult
from homeassistant.helpers.translation import async_get_translations

from .const import CONF_SSID, CONF_WIFI_PASSWORD, DOMAIN
from .firmware_form import (
    FirmwareState,
    firmware_error_message,
    notice_placeholders,
    notice_step,
)
from .known_devices import async_remember_run
from .progress_ring import ProgressRing
from .proto.flash_stages import FlashTracker, Stage
from .proto.setup_mode_errors import SetupModeError, StageTimeoutError
from .proto.wifi import WifiSettings
from .tasmota_link import (
    MQTT_SETUP_PATH,
    MqttUnavailableError,
    TasmotaEntryError,
    async_create_mqtt_missing_issue,
    mqtt_unavailable_reason,
)

if TYPE_CHECKING:
    from .diy_run import DiyRun
    from .handoff_run import HandoffOutcome, HandoffRun
    from .proto.tasmota_discovery import TasmotaDevice
    from .setup_mode_run import SetupModeRun

_LOGGER = logging.getLogger(__name__)

type FlashRun = SetupModeRun | DiyRun


class FlashState:
    """One flash as the flow shows it (the run itself is `FlashFlow._run`).

    Like every flow state holder (`DiyState`, `FirmwareState`, `SetupModeState`,
    `UpgradeState`, `FlowTexts`), a plain class, not a dataclass: nothing compares
    or prints flow state, and a dataclass's generated methods would cost HA's
    start-up about a millisecond each.
    """

    __slots__ = (
        "candidates",
        "error",
        "finish_placeholders",
        "finished",
        "finishing",
        "handoff",
        "outcome",
        "remove_listener",
        "resume_stage",
        "task",
    )

    def __init__(self) -> None:
        """No flash yet."""
        self.task: asyncio.Task[None] | None = None
        """The progress task: prepare, run (or resume) the stages, hand off."""
        self.resume_stage: Stage | None = None
        """The stage that timed out; "try again" resumes there."""
        self.error: tuple[str, dict[str, str]] | None = None
        """Why the flash stopped: the abort reason and its placeholders."""
        self.remove_listener: Callable[[], None] | None = None
        self.handoff: HandoffRun | None = None
        self.outcome: HandoffOutcome | None = None
        self.candidates: tuple[TasmotaDevice, ...] = ()
        """New Tasmota devices that appeared at once, when no MAC tells which is ours."""
        self.finished: bool = False
        self.finish_placeholders: dict[str, str] = {}
        self.finishing: asyncio.Lock = asyncio.Lock()
        """Held while the finish step closes the flash: a second fetch of the step (the
        frontend may fetch it twice at once) waits for the placeholders instead of racing."""


class FlowTexts:
    """Our strings in HA's language, for sentences the flow builds at run time."""

    __slots__ = ("selector",)

    def __init__(self) -> None:
        """Not read yet."""
        self.selector: dict[str, str] = {}
        """`selector.*`: the Wi-Fi plan, the hop's status, the eligibility sentences."""


class FlashFlow(ConfigFlow):
    """The base of the config flow: the home Wi-Fi, the run, and the flash steps."""

    def __init__(self) -> None:
        """Start with nothing known."""
        super().__init__()
        self._wifi: WifiSettings | None = None
        self._run: FlashRun | None = None
        self._flash = FlashState()
        self._firmware = FirmwareState()
        self._texts = FlowTexts()
        self._ring = ProgressRing(self)

    def _load_saved_wifi(self) -> None:
        """Take the home Wi-Fi from the config entry (once set up, it is never asked again)."""
        if self._wifi is None and (entries := self._async_current_entries(include_ignore=False)):
            data = entries[0].data
            self._wifi = WifiSettings(data[CONF_SSID], data[CONF_WIFI_PASSWORD])

    def _abort_without_mqtt(self) -> ConfigFlowResult | None:
        """Flashed devices report through MQTT: stop before anything is flashed without it."""
        reason = mqtt_unavailable_reason(self.hass)
        if reason is None:
            return None
        async_create_mqtt_missing_issue(self.hass, reason)
        return self.async_abort(
            reason=str(reason), description_placeholders={"mqtt_path": MQTT_SETUP_PATH}
        )

    # -- the running flash ---------------------------------------------------------------------

    async def async_step_flash(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Show the running flash; every stage is a progress step of its own."""
        run = self._run
        assert run is not None
        flash = self._flash
        if flash.task is None:
            await self._async_selector_texts()  # the hop's status, in HA's language
            if flash.remove_listener is None:
                flash.remove_listener = run.tracker.add_listener(self._on_tracker_change)
            flash.task = self.hass.async_create_task(
                self._async_flash(run), f"{DOMAIN} flash", eager_start=False
            )
        if not flash.task.done():
            placeholders = self._placeholders(run.tracker)
            self._ring.fetched(int(placeholders.get("percentage") or 0))
            return self.async_show_progress(
                step_id="flash",
                progress_action=self._progress_action(run),
                description_placeholders=placeholders,
                progress_task=flash.task,
            )
        task, flash.task = flash.task, None
        self._ring.stop()
        try:
            await task
        except StageTimeoutError as err:
            flash.resume_stage = err.stage
            return self.async_show_progress_done(next_step_id="stage_timeout")
        except Exception:
            return self.async_show_progress_done(next_step_id="failed")
        if flash.error is not None:
            return self.async_show_progress_done(next_step_id="failed")
        if (firmware_step := self._firmware.step_after_check()) is not None:
            return self.async_show_progress_done(next_step_id=firmware_step)
        if flash.candidates:
            return self.async_show_progress_done(next_step_id="pick_device")
        return self.async_show_progress_done(next_step_id="finish")

    async def _async_flash(self, run: FlashRun) -> None:
        """The progress task: prepare once, then run (or resume) the stages."""
        # Loaded: the step that created `run` loaded the flash stack.
        from .diy_run import DiyRun  # noqa: PLC0415
        from .flash_server import DeviceBusyError  # noqa: PLC0415
        from .handoff_run import HandoffLinkError, HandoffRun  # noqa: PLC0415
        from .listeners import PortInUseError  # noqa: PLC0415
        from .proto.diy_flasher import DiyFlashError  # noqa: PLC0415
        from .proto.firmware_errors import FirmwareError  # noqa: PLC0415
        from .proto.setup_ap import SetupApError  # noqa: PLC0415
        from .proto.tasmota_handoff_types import (  # noqa: PLC0415
            AmbiguousDeviceError,
            EwelinkIdentity,
            HandoffError,
        )
        from .setup_mode_run import SetupModeRun  # noqa: PLC0415

        flash, firmware = self._flash, self._firmware
        try:
            if flash.handoff is None:
                if not firmware.checked:
                    # Before any device or listener: a bad image sends the user back to
                    # the firmware choice, an image other than the one asked for is shown.
                    firmware.checked = True
                    await self._async_check_firmware(run)
                    if firmware.notice is not None:
                        return
                if isinstance(run, SetupModeRun):
                    if run.flasher is None:
                        await run.prepare(progress=self._on_download_progress)
                    await run.run(flash.resume_stage or Stage.WAIT_SETUP_AP)
                else:
                    await run.run(progress=self._on_download_progress)
                await run.release_flash()
                assert self._wifi is not None
                flash.handoff = HandoffRun(
                    self.hass,
                    run.tracker,
                    self._wifi,
                    EwelinkIdentity(
                        deviceid=run.tracker.details.get("deviceid"),
                        model=run.tracker.details.get("model"),
                        sta_mac=run.tracker.details.get("sta_mac"),
                    ),
                    device_ip=run.target.host if isinstance(run, DiyRun) else None,
                    ap_hop=run.host_wifi if isinstance(run, SetupModeRun) else None,
                    hop_to_ap=isinstance(run, DiyRun),
                )
            flash.outcome = await flash.handoff.run()
        except StageTimeoutError:
            raise
        except AmbiguousDeviceError as err:
            flash.candidates = err.candidates
        except HandoffError as err:
            self._fail(run.tracker, str(err.code), dict(err.placeholders))
        except HandoffLinkError as err:
            self._fail(run.tracker, err.code, err.placeholders)
        except MqttUnavailableError as err:
            self._fail(run.tracker, str(err.reason), {"mqtt_path": MQTT_SETUP_PATH})
        except TasmotaEntryError:
            self._fail(run.tracker, "tasmota_entry_failed", {})
        except (SetupModeError, DiyFlashError) as err:
            self._fail(run.tracker, err.code, err.placeholders)
        except SetupApError as err:
            self._fail(run.tracker, "setup_ap_error", {"reason": err.reason})
        except DeviceBusyError as err:
            self._fail(run.tracker, "device_busy", {"deviceid": err.deviceid})
        except PortInUseError as err:
            self._fail(run.tracker, "port_in_use", {"ports": f"{err.host}:{err.port}"})
        except FirmwareError as err:
            _LOGGER.warning("Firmware %s not usable: %s", run.firmware.describe(), err)
            firmware.checked = False
            firmware.error = firmware_error_message(err)
        except asyncio.CancelledError:
            raise
        except Exception:
            _LOGGER.exception("Unexpected error during the flash")
            self._fail(run.tracker, "unknown", {})
        if flash.error is not None:
            # Stop offering images at once: a device that keeps reconnecting must not get
            # another try while the user reads the error.
            await run.release_flash()

    async def _async_check_firmware(self, run: FlashRun) -> None:
        """Fetch and check the chosen image; note when it is not exactly what was asked."""
        # Loaded: the step that created `run` loaded the flash stack.
        from .flash_server import async_get_flash_server  # noqa: PLC0415
        from .setup_mode_run import SetupModeRun  # noqa: PLC0415

        if isinstance(run, SetupModeRun):
            run.images = None
            image = await run.fetch_images(self._on_download_progress)
        else:
            run.image = None
            image = await run.fetch_image(self._on_download_progress)
        step = notice_step(image)
        if step is not None:
            store = (await async_get_flash_server(self.hass)).firmware
            placeholders = notice_placeholders(image, run.firmware)
            placeholders["version"] = store.sources.tasmota_fallback_version or "?"
            _LOGGER.warning(
                "Firmware for %s: %s (%s); asking before the flash",
                run.tracker.details.get("deviceid", "a device"),
                step,
                placeholders["reason"],
            )
            self._firmware.notice = (step, placeholders)

    def _fail(self, tracker: FlashTracker, code: str, placeholders: dict[str, str]) -> None:
        self._flash.error = (code, placeholders)
        tracker.fail(code, **placeholders)

    def _on_download_progress(self, received: int, total: int | None) -> None:
        if self._run is not None and total:
            self._run.tracker.update(received / total)

    def _on_tracker_change(self, tracker: FlashTracker) -> None:
        """Show the tracker's one number in the text and in the ring, and new texts."""
        if tracker.finished:
            self._ring.stop()
            return
        if self._flash.task is None:
            return
        self._show_progress_change(str(tracker.stage), self._placeholders(tracker))

    def _show_progress_change(self, stage: str, placeholders: dict[str, str]) -> None:
        """Refresh the text when its stage, number or details change; then set the ring.

        One number per step: the text's `{percentage}` (overall progress, whole percent)
        is the ring's number too (HA 2025.5+; 2025.4 has the text only).
        """
        self._ring.show((stage, placeholders), int(placeholders.get("percentage") or 0))

    def _progress_action(self, run: FlashRun) -> str:
        """The progress text's key: the stage (the setup-mode flow adds HA's Wi-Fi hop)."""
        return str(run.tracker.stage)

    async def _async_selector_texts(self) -> dict[str, str]:
        """Load our `selector.*` strings in HA's language once per flow."""
        if not self._texts.selector:
            self._texts.selector = await async_get_translations(
                self.hass, self.hass.config.language, "selector", {DOMAIN}
            )
        return self._texts.selector

    def _selector_text(
        self, selector: str, option: str | None, values: dict[str, str]
    ) -> str | None:
        """One loaded `selector.<selector>.options.<option>` string, filled; None if absent."""
        key = f"component.{DOMAIN}.selector.{selector}.options.{option}"
        template = self._texts.selector.get(key) if option else None
        if template is None:
            return None
        try:
            return template.format_map(values)
        except (KeyError, IndexError, ValueError):
            return None

    def _wifi_hop_text(self, details: dict[str, str]) -> str:
        """The host's Wi-Fi hop, in HA's language (the tracker's English as a fallback)."""
        from .proto.setup_mode_wifi import (  # noqa: PLC0415 - loaded: a run is shown
            DETAIL,
            DETAIL_ADDRESS,
            DETAIL_ERROR,
            DETAIL_INTERFACE,
            DETAIL_SSID,
            DETAIL_STATE,
        )

        values = {
            "ssid": details.get(DETAIL_SSID, ""),
            "interface": details.get(DETAIL_INTERFACE, ""),
            "address": details.get(DETAIL_ADDRESS, ""),
            "error": details.get(DETAIL_ERROR, ""),
        }
        text = self._selector_text(DETAIL, details.get(DETAIL_STATE), values)
        return text if text is not None else details.get(DETAIL, "")

    def _placeholders(self, tracker: FlashTracker) -> dict[str, str]:
        details = tracker.details
        return {
            "percentage": str(tracker.percentage),
            "deviceid": details.get("deviceid", "?"),
            "model": details.get("model", "?"),
            "rom_version": details.get("rom_version", "?"),
            "fw_version": details.get("fw_version", "?"),
            "session": details.get("finalstage_session", "1"),
            "sessions": details.get("finalstage_sessions", "1"),
            "callback_host": self._run.callback_host if self._run else "",
            "ssid": self._wifi.ssid if self._wifi else "",
            "tasmota_ssid": details.get("tasmota_ssid", "tasmota_…"),
            # The one-tap link carries the Wi-Fi and MQTT passwords (the text warns):
            # shown only while Tasmota's AP waits for a phone, never logged.
            "phone_link": details.get("tasmota_phone_link_secret", ""),
            "wifi_hop": self._wifi_hop_text(details),
        }

    # -- a timeout, a failure, the end ------------------------------------------------------------

    async def async_step_stage_timeout(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """A waiting stage ran out of time: retry it, or give up."""
        stage = self._flash.resume_stage or Stage.WAIT_SETUP_AP
        return self.async_show_menu(
            step_id="stage_timeout",
            menu_options=["flash", "cancel"],
            description_placeholders={"stage": str(stage)},
        )

    async def async_step_cancel(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Give up after a timeout."""
        await self._async_close()
        return self.async_abort(reason="cancelled")

    async def async_step_failed(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Show why the flash stopped."""
        if self._run is not None:
            async_remember_run(self.hass, self._run)
        await self._async_close()
        code, placeholders = self._flash.error or ("unknown", {})
        return self.async_abort(reason=code, description_placeholders=placeholders)

    async def _async_flashed(self) -> ConfigFlowResult | None:
        """The flash and hand-off succeeded: a step to go on with instead of `finish`, or None.

        The setup-mode flow goes on with the next of several devices here.
        """
        return None

    async def _async_close(self) -> None:
        if self._flash.remove_listener is not None:
            self._flash.remove_listener()
            self._flash.remove_listener = None
        if self._run is not None:
            await self._run.close()

    def async_remove(self) -> None:
        """The flow is gone (finished, aborted or closed): stop everything it started."""
        self._ring.stop()
        task = self._flash.task
        if task is not None and not task.done():
            task.cancel()
        run, self._run = self._run, None
        if run is not None:
            if not run.tracker.finished:
                run.tracker.abort()
            self.hass.async_create_task(run.close(), f"{DOMAIN} close flash", eager_start=True)
        self._wifi = None
