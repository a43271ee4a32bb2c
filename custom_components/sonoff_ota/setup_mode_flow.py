"""The setup-mode path of the flow: the device's ITEAD access point (`SetupModeRun`).

The form asks for the address the device calls back, checks the host's network
(a LAN on the device subnets is refused; a host whose Wi-Fi carries HA's own LAN
must confirm the hop) and the listening ports, then starts the flash. When HA
moves its own Wi-Fi, the progress texts say so instead of asking the user to
change networks, and the hop's live status is shown in HA's language.

When the hop's scan sees several `ITEAD-…` networks (several devices in pairing mode),
`pick_setup_aps` lists them (all chosen by default) and the chosen devices are flashed one
after another (`setup_mode_many`): each a whole run with its hand-off, the same home Wi-Fi and
the images already fetched; a device that fails is noted and the next one goes on;
`many_finish` sums up every device.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from homeassistant.components import network
from homeassistant.config_entries import ConfigFlowResult
from homeassistant.helpers.selector import (
    SelectOptionDict,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
)
from homeassistant.helpers.translation import async_get_translations
import voluptuous as vol

from .const import CONF_SSID, CONF_WIFI_PASSWORD, DOMAIN
from .firmware_flow import FirmwareFlow
from .firmware_form import CONF_FIRMWARE, firmware_section
from .flash_flow import FlashRun, FlashState
from .flash_stack import async_load_flash_stack
from .issues import async_update_port_issue
from .known_devices import async_remember_run
from .proto.flash_stages import FlashTracker, Stage
from .settings import get_settings

if TYPE_CHECKING:
    from .proto.firmware_cache import StoredImage
    from .setup_mode_many import DeviceOutcome, ManyDevices
    from .setup_mode_run import SetupModeRun

CONF_CALLBACK_HOST = "callback_host"
CONF_CONFIRM_WIFI_ONLY = "confirm_wifi_only"
CONF_SETUP_APS = "setup_aps"
MANY_PROGRESS: Final = "many_flash"
"""The progress text while one device of several is flashed: "device n of N" + its stage."""
WIFI_HOP_STAGES = frozenset(
    {
        Stage.WAIT_SETUP_AP,
        Stage.WAIT_DISPATCH,
        Stage.WAIT_FINALSTAGE,
        Stage.FINALSTAGE,
        Stage.TASMOTA_AP,
    }
)
"""Stages whose text tells the user to change networks; `<stage>_wifi_hop` when HA hops."""

_LOGGER = logging.getLogger(__name__)


class _Unknown(dict[str, str]):
    """Placeholders for a text built here: one the error did not give reads "?"."""

    def __missing__(self, key: str) -> str:
        return "?"


class SetupModeState:
    """What the setup-mode path keeps between steps."""

    __slots__ = ("callback_host", "config_texts", "found", "images", "many")

    def __init__(self) -> None:
        """Nothing scanned or chosen yet."""
        self.config_texts: dict[str, str] = {}
        """Our `config.*` strings in HA's language: a stage's text inside "device n of N", and
        a failed device's reason in the summary."""
        self.found: tuple[str, ...] = ()
        """The `ITEAD-…` networks in range when the scan saw several (the list offered)."""
        self.callback_host: str = ""
        """The address the user chose on the form (every device of the list calls it back)."""
        self.images: tuple[StoredImage, StoredImage, StoredImage] | None = None
        """The images that run fetched and checked: every device of the list gets these."""
        self.many: ManyDevices | None = None
        """The devices chosen from that list, once the user chose."""


class SetupModeFlow(FirmwareFlow):
    """The `setup_mode` step, and the progress texts of a flash where HA hops its Wi-Fi."""

    def __init__(self) -> None:
        """Start with nothing known."""
        super().__init__()
        self._setup_mode = SetupModeState()

    async def async_step_setup_mode(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Choose the address the device calls back; check the Wi-Fi hop and the ports."""
        await async_load_flash_stack(self.hass)  # the setup-mode path starts here
        # Loaded just above.
        from .flash_server import async_get_flash_server  # noqa: PLC0415
        from .host_wifi_run import async_prepare_hop  # noqa: PLC0415
        from .proto.firmware_image import ImageRole  # noqa: PLC0415
        from .proto.host_wifi_types import HopError, HopErrorCode  # noqa: PLC0415
        from .proto.setup_mode_wifi import hop_error  # noqa: PLC0415
        from .setup_mode_run import SetupModeRun  # noqa: PLC0415

        assert self._wifi is not None
        errors: dict[str, str] = {}
        await async_get_flash_server(self.hass)  # a flow does not run async_setup
        settings = get_settings(self.hass)
        placeholders = {"ports": f"{settings.tls_port} and {settings.finalstage_port}"}
        confirmed = bool(user_input and user_input.get(CONF_CONFIRM_WIFI_ONLY))
        # Inspect the host's network (changes nothing): refuse a LAN on the device subnets,
        # and ask for a confirmation when the Wi-Fi carries HA's own LAN.
        try:
            hop, plan = await async_prepare_hop(
                self.hass, settings, home_wifi=self._wifi, confirm_wifi_only=True
            )
        except HopError as err:
            # Before any join: no network yet, but the same texts (and their placeholders).
            error = hop_error(err, "?", None)
            return self.async_abort(reason=error.code, description_placeholders=error.placeholders)
        placeholders["wifi_backend"] = str(plan.backend)
        placeholders["wifi_interface"] = plan.interface or "?"
        # Loads the selector strings the flash's hop status is rendered from, too.
        placeholders["wifi_plan"] = await self._async_wifi_plan_text(
            str(plan.backend), plan.interface
        )
        if user_input is not None and plan.carries_lan and not confirmed:
            errors[CONF_CONFIRM_WIFI_ONLY] = str(HopErrorCode.NEEDS_CONFIRMATION)
        if user_input is not None and not errors:
            errors = await self._async_take_firmware(
                user_input.get(CONF_FIRMWARE) or {}, ImageRole.SETUP_FINAL, placeholders
            )
        if user_input is not None and not errors:
            run = SetupModeRun(self.hass, self._wifi, user_input[CONF_CALLBACK_HOST], hop)
            run.firmware = self._firmware.choice
            busy = await run.check_ports()
            async_update_port_issue(self.hass, busy)
            if busy:
                await run.close()
                errors["base"] = "port_in_use"
                placeholders["ports"] = ", ".join(busy)
            else:
                self._run = run
                return await self.async_step_flash()
        else:
            await hop.restore_shielded()  # only looked: drop its D-Bus connection
        default = settings.callback_host or await network.async_get_source_ip(self.hass)
        choices = sorted(
            {
                str(ip)
                for ip in await network.async_get_enabled_source_ips(self.hass)
                if ip.version == 4
            }
            | {default}
        )
        fields: dict[Any, Any] = {
            vol.Required(CONF_CALLBACK_HOST, default=default): SelectSelector(
                SelectSelectorConfig(
                    options=choices, custom_value=True, mode=SelectSelectorMode.DROPDOWN
                )
            )
        }
        if plan.carries_lan:
            fields[vol.Required(CONF_CONFIRM_WIFI_ONLY, default=False)] = bool
        fields.update(firmware_section())
        schema: Any = vol.Schema(fields)
        return self.async_show_form(
            step_id="setup_mode",
            data_schema=schema,
            errors=errors,
            description_placeholders=placeholders,
        )

    async def _async_wifi_plan_text(self, backend: str, interface: str | None) -> str:
        """Who moves the host's Wi-Fi, as one sentence in HA's language."""
        await self._async_selector_texts()
        text = self._selector_text("wifi_plan", backend, {"interface": interface or "Wi-Fi"})
        return text or backend

    def _progress_action(self, run: FlashRun) -> str:
        if self._setup_mode.many is not None:
            return MANY_PROGRESS  # "device n of N: <the stage's text>"
        return self._stage_action(run)

    def _stage_action(self, run: FlashRun) -> str:
        from .setup_mode_run import SetupModeRun  # noqa: PLC0415 - loaded: `run` exists

        stage = run.tracker.stage
        if isinstance(run, SetupModeRun) and run.host_wifi is not None and stage in WIFI_HOP_STAGES:
            return f"{stage}_wifi_hop"  # HA moves its own Wi-Fi: no "connect this host" text
        return super()._progress_action(run)

    def _placeholders(self, tracker: FlashTracker) -> dict[str, str]:
        placeholders = super()._placeholders(tracker)
        many, run = self._setup_mode.many, self._run
        if many is None or run is None or many.current is None:
            return placeholders
        from .setup_mode_many import device_label  # noqa: PLC0415 - loaded: `many` ran

        action = self._stage_action(run)
        stage_text = self._config_text("progress", action, placeholders)
        placeholders.update(
            device_number=str(many.index + 1),
            device_count=str(len(many.ssids)),
            device_id=device_label(many.current),
            stage_text=stage_text if stage_text is not None else action,
        )
        return placeholders

    # -- several devices in pairing mode ---------------------------------------------------------

    async def _async_config_texts(self) -> None:
        """Load our `config.*` strings in HA's language once per flow."""
        state = self._setup_mode
        if not state.config_texts:
            state.config_texts = await async_get_translations(
                self.hass, self.hass.config.language, "config", {DOMAIN}
            )

    def _config_text(self, part: str, key: str, values: dict[str, str]) -> str | None:
        """One loaded `config.<part>.<key>` string, filled; None if absent or unfillable."""
        template = self._setup_mode.config_texts.get(f"component.{DOMAIN}.config.{part}.{key}")
        if template is None:
            return None
        try:
            return template.format_map(_Unknown(values))
        except (IndexError, ValueError):
            return None

    async def async_step_failed(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Several setup APs in range: list them; one device of the list failed: go on."""
        # Loaded: the flash that failed here (or its hand-off) had a run.
        from .proto.host_wifi_types import HopErrorCode  # noqa: PLC0415
        from .setup_mode_many import DeviceOutcome  # noqa: PLC0415
        from .setup_mode_run import SetupModeRun  # noqa: PLC0415

        state, run, flash = self._setup_mode, self._run, self._flash
        if state.many is not None and isinstance(run, SetupModeRun):
            code, placeholders = flash.error or ("unknown", {})
            # What the tracker knows fills what the error left out (e.g. the ROM version).
            known = self._placeholders(run.tracker)
            known.pop("phone_link", None)  # carries the passwords: never into a summary
            values = {**known, **placeholders}
            reason = self._config_text("abort", code, values) or code
            return await self._async_device_ended(run, DeviceOutcome.FAILED, {"reason": reason})
        if (
            isinstance(run, SetupModeRun)
            and run.host_wifi is not None
            and run.host_wifi.setup_aps_found
            and flash.error is not None
            and flash.error[0] == f"wifi_{HopErrorCode.SEVERAL_SETUP_APS}"
        ):
            state.found = run.host_wifi.setup_aps_found
            state.callback_host, state.images = run.callback_host, run.images
            _LOGGER.info("%d devices in pairing mode: %s", len(state.found), ", ".join(state.found))
            await self._async_close()  # the scan is all this run was for: nothing was joined
            self._run, self._flash = None, FlashState()
            return await self.async_step_pick_setup_aps()
        return await super().async_step_failed(user_input)

    async def async_step_pick_setup_aps(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Several devices are in pairing mode: choose which to flash (all, by default)."""
        # Loaded: the run whose scan found them.
        from .setup_mode_many import ManyDevices, device_label  # noqa: PLC0415

        state = self._setup_mode
        errors: dict[str, str] = {}
        if user_input is not None:
            chosen = set(user_input.get(CONF_SETUP_APS) or ())
            ssids = tuple(ssid for ssid in state.found if ssid in chosen)
            if ssids:
                await self._async_selector_texts()
                await self._async_config_texts()
                state.many = ManyDevices(ssids, state.callback_host, state.images)
                return await self._async_flash_next_device()
            errors["base"] = "no_device_chosen"
        schema: Any = vol.Schema(
            {
                vol.Required(CONF_SETUP_APS, default=list(state.found)): SelectSelector(
                    SelectSelectorConfig(
                        options=[
                            SelectOptionDict(value=ssid, label=device_label(ssid))
                            for ssid in state.found
                        ],
                        multiple=True,
                        mode=SelectSelectorMode.LIST,
                    )
                )
            }
        )
        return self.async_show_form(
            step_id="pick_setup_aps",
            data_schema=schema,
            errors=errors,
            description_placeholders={"count": str(len(state.found))},
        )

    async def _async_flash_next_device(self) -> ConfigFlowResult:
        """Start the next device of the list (its own run and hop); the summary after the last."""
        # Loaded: the run whose scan found the list.
        from .host_wifi_run import async_prepare_hop  # noqa: PLC0415
        from .proto.host_wifi_types import HopError  # noqa: PLC0415
        from .setup_mode_many import DeviceOutcome  # noqa: PLC0415
        from .setup_mode_run import SetupModeRun  # noqa: PLC0415

        many = self._setup_mode.many
        assert many is not None and self._wifi is not None
        while (ssid := many.current) is not None:
            try:
                hop, _plan = await async_prepare_hop(
                    self.hass, get_settings(self.hass), home_wifi=self._wifi, confirm_wifi_only=True
                )
            except HopError as err:  # the host changed since the list was shown
                reason = f"wifi_{err.code.value}"
                text = self._config_text("abort", reason, {"detail": str(err)}) or reason
                many.record(DeviceOutcome.FAILED, self._result_text(ssid, "failed", reason=text))
                continue
            run = SetupModeRun(self.hass, self._wifi, many.callback_host, hop, setup_ssid=ssid)
            run.firmware = self._firmware.choice
            run.images = many.images  # checked once: never fetched again
            _LOGGER.info("Flashing device %d of %d (%s)", many.index + 1, len(many.ssids), ssid)
            self._run, self._flash = run, FlashState()
            return await self.async_step_flash()
        return await self.async_step_many_finish()

    def _result_text(self, ssid: str, outcome: str, **values: str) -> str:
        from .setup_mode_many import device_label  # noqa: PLC0415 - loaded: a list is flashed

        values = {"device": device_label(ssid), **values}
        text = self._selector_text("many_result", outcome, values)
        return text if text is not None else f"{values['device']}: {outcome}"

    async def _async_device_ended(
        self, run: SetupModeRun, outcome: DeviceOutcome, values: dict[str, str]
    ) -> ConfigFlowResult:
        """One device of the list is done (flashed or not): note it, go on with the next."""
        from .setup_mode_many import DeviceOutcome  # noqa: PLC0415 - loaded: `run` exists

        many = self._setup_mode.many
        assert many is not None and many.current is not None
        flashed = outcome is DeviceOutcome.FLASHED
        handoff = self._flash.outcome
        if flashed:
            run.tracker.done()
        elif not run.tracker.finished:
            run.tracker.fail(str(outcome), **values)
        async_remember_run(
            self.hass, run, flashed=flashed, mac=handoff.mac if flashed and handoff else None
        )
        await self._async_close()
        text = self._result_text(many.current, str(outcome), **values)
        _LOGGER.info("Device %d of %d: %s", many.index + 1, len(many.ssids), text)
        many.record(outcome, text)
        return await self._async_flash_next_device()

    async def async_step_stage_timeout(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """One device of the list ran out of time: note it and go on (no retry menu)."""
        # Loaded: the flash that timed out had a run.
        from .setup_mode_many import DeviceOutcome  # noqa: PLC0415
        from .setup_mode_run import SetupModeRun  # noqa: PLC0415

        run = self._run
        if self._setup_mode.many is None or not isinstance(run, SetupModeRun):
            return await super().async_step_stage_timeout(user_input)
        stage = self._flash.resume_stage or Stage.WAIT_SETUP_AP
        return await self._async_device_ended(run, DeviceOutcome.TIMEOUT, {"stage": str(stage)})

    async def _async_flashed(self) -> ConfigFlowResult | None:
        """One device of the list took Tasmota: note where it is and go on with the next."""
        # Loaded: the flash that got here had a run.
        from .setup_mode_many import DeviceOutcome  # noqa: PLC0415
        from .setup_mode_run import SetupModeRun  # noqa: PLC0415

        run = self._run
        if self._setup_mode.many is None or not isinstance(run, SetupModeRun):
            return None
        handoff = self._flash.outcome
        deviceid = run.tracker.details.get("deviceid", "")
        name = handoff.name if handoff else deviceid
        return await self._async_device_ended(run, DeviceOutcome.FLASHED, {"device_name": name})

    async def async_step_many_finish(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Every device of the list had its turn: one line each; "Finish" ends the flow.

        A form first, like `finish`: the frontend may fetch it more than once.
        """
        many = self._setup_mode.many
        assert many is not None and self._wifi is not None
        placeholders = many.summary()
        if user_input is None:
            return self.async_show_form(
                step_id="many_finish", description_placeholders=placeholders, last_step=True
            )
        if self._async_current_entries(include_ignore=False) or placeholders["flashed"] == "0":
            return self.async_abort(reason="many_finished", description_placeholders=placeholders)
        await self.async_set_unique_id(DOMAIN)
        return self.async_create_entry(
            title="Sonoff OTA",
            data={CONF_SSID: self._wifi.ssid, CONF_WIFI_PASSWORD: self._wifi.password},
            description="many_finished",
            description_placeholders=placeholders,
        )
