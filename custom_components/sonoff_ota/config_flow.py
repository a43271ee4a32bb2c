"""Config flow for Sonoff OTA: the UI on top of the flash runs.

The first run asks for the home Wi-Fi and stores it in the config entry (the
only place HA keeps credentials). Every run then flashes one device and shows
each stage of the flash as a progress step whose text and percentage come from
the run's `FlashTracker`. A waiting stage that times out offers a retry of
that stage; an abort closes every listener and drops the credentials.

Two paths: setup mode (the ITEAD access point; `SetupModeRun`) and DIY mode
(eWeLink 3.x on the LAN, found by zeroconf or entered by hand; `DiyRun`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from homeassistant.components import network
from homeassistant.config_entries import ConfigFlow, ConfigFlowResult
from homeassistant.const import CONF_HOST, CONF_PORT
from homeassistant.data_entry_flow import EVENT_DATA_ENTRY_FLOW_PROGRESSED, AbortFlow
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.selector import (
    SelectOptionDict,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
)
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo
from homeassistant.helpers.translation import async_get_translations
import voluptuous as vol

from .const import CONF_SSID, CONF_WIFI_PASSWORD, DOMAIN
from .diy_run import DIY_PORT, DiyRun, DiyTarget
from .firmware_form import (
    CONF_FIRMWARE,
    async_parse_choice,
    firmware_error_message,
    firmware_fields,
    firmware_section,
    notice_placeholders,
    notice_step,
)
from .flash_recovery import async_device_announced
from .flash_server import DeviceBusyError, async_get_flash_server
from .handoff_run import HandoffLinkError, HandoffOutcome, HandoffRun
from .host_wifi_run import async_prepare_hop
from .issues import async_update_port_issue
from .known_devices import async_remember_run
from .listeners import PortInUseError
from .proto.diy_client import DiyClient, DiyError
from .proto.diy_discovery import DiyAdvertError, parse_advert
from .proto.diy_flasher import DiyFlashError
from .proto.firmware_image import ImageRole
from .proto.firmware_store import FirmwareChoice, FirmwareError
from .proto.flash_stages import FlashTracker, Stage
from .proto.host_wifi import HopError, HopErrorCode
from .proto.setup_ap import SetupApError
from .proto.setup_mode_flasher import SetupModeError, StageTimeoutError
from .proto.setup_mode_wifi import (
    DETAIL,
    DETAIL_ADDRESS,
    DETAIL_ERROR,
    DETAIL_INTERFACE,
    DETAIL_SSID,
    DETAIL_STATE,
)
from .proto.tasmota_discovery import TasmotaDevice
from .proto.tasmota_handoff import AmbiguousDeviceError, EwelinkIdentity, HandoffError
from .proto.wifi import WifiSettings, validate_wifi
from .settings import get_settings
from .setup_mode_run import SetupModeRun
from .tasmota_link import (
    MQTT_SETUP_PATH,
    MqttUnavailableError,
    TasmotaEntryError,
    async_create_mqtt_missing_issue,
    mqtt_unavailable_reason,
)

_LOGGER = logging.getLogger(__name__)

CONF_CALLBACK_HOST = "callback_host"
CONF_DEVICEID = "deviceid"
CONF_DEVICES = "devices"
CONF_TASMOTA_MAC = "tasmota_mac"
CONF_FLASH_NOW = "flash_now"
CONF_CONFIRM_WIFI_ONLY = "confirm_wifi_only"
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

type FlashRun = SetupModeRun | DiyRun


class SonoffOtaConfigFlow(ConfigFlow, domain=DOMAIN):
    """Collect the home Wi-Fi settings and drive a flash."""

    VERSION = 1

    def __init__(self) -> None:
        """Start with nothing known."""
        self._wifi: WifiSettings | None = None
        self._run: FlashRun | None = None
        self._diy: DiyTarget | None = None
        self._task: asyncio.Task[None] | None = None
        self._resume_stage: Stage | None = None
        self._error: tuple[str, dict[str, str]] | None = None
        self._last_notified: tuple[tuple[str, int | None], dict[str, str]] | None = None
        self._remove_listener: Any = None
        self._diy_placeholders: dict[str, str] = {}
        self._finished = False
        self._finish_placeholders: dict[str, str] = {}
        self._handoff: HandoffRun | None = None
        self._outcome: HandoffOutcome | None = None
        self._candidates: tuple[TasmotaDevice, ...] = ()
        self._firmware: FirmwareChoice = FirmwareChoice()
        self._firmware_values: dict[str, Any] = {}
        self._firmware_error: tuple[str, dict[str, str]] | None = None
        self._firmware_checked = False
        self._notice: tuple[str, dict[str, str]] | None = None
        self._selector_texts: dict[str, str] = {}
        """Our `selector.*` strings in HA's language (sentences built at run time)."""

    # -- Wi-Fi and path ----------------------------------------------------------------------

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Ask for the home Wi-Fi the device will join (once; later runs reuse it)."""
        if (mqtt_missing := self._abort_without_mqtt()) is not None:
            return mqtt_missing
        if self._wifi is None and (entries := self._async_current_entries(include_ignore=False)):
            data = entries[0].data
            self._wifi = WifiSettings(data[CONF_SSID], data[CONF_WIFI_PASSWORD])
        if self._wifi is not None:
            return await self._async_after_wifi()
        errors: dict[str, str] = {}
        if user_input is not None:
            errors = validate_wifi(user_input[CONF_SSID], user_input[CONF_WIFI_PASSWORD])
            if not errors:
                self._wifi = WifiSettings(user_input[CONF_SSID], user_input[CONF_WIFI_PASSWORD])
                return await self._async_after_wifi()
        # `Any`: HA 2026.x types forms as probatio schemas (voluptuous is aliased
        # to probatio at runtime), 2025.x as voluptuous schemas.
        schema: Any = vol.Schema(
            {
                vol.Required(CONF_SSID): str,
                vol.Optional(CONF_WIFI_PASSWORD, default=""): str,
            }
        )
        if user_input is not None:
            schema = self.add_suggested_values_to_schema(schema, {CONF_SSID: user_input[CONF_SSID]})
        return self.async_show_form(step_id="user", data_schema=schema, errors=errors)

    def _abort_without_mqtt(self) -> ConfigFlowResult | None:
        """Flashed devices report through MQTT: stop before anything is flashed without it."""
        reason = mqtt_unavailable_reason(self.hass)
        if reason is None:
            return None
        async_create_mqtt_missing_issue(self.hass, reason)
        return self.async_abort(
            reason=str(reason), description_placeholders={"mqtt_path": MQTT_SETUP_PATH}
        )

    async def _async_after_wifi(self) -> ConfigFlowResult:
        if self._diy is not None:  # a discovered device that was confirmed before Wi-Fi
            return await self.async_step_diy_flash()
        return await self.async_step_path()

    async def async_step_path(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Choose how to reach the device."""
        return self.async_show_menu(step_id="path", menu_options=["diy_manual", "setup_mode"])

    # -- setup mode --------------------------------------------------------------------------

    async def async_step_setup_mode(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Choose the address the device calls back; check the Wi-Fi hop and the ports."""
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
            return self.async_abort(
                reason=f"wifi_{err.code.value}", description_placeholders={"detail": str(err)}
            )
        placeholders["wifi_backend"] = str(plan.backend)
        placeholders["wifi_interface"] = plan.interface or "?"
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
            run.firmware = self._firmware
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

    async def _async_selector_texts(self) -> dict[str, str]:
        """Load our `selector.*` strings in HA's language once per flow."""
        if not self._selector_texts:
            self._selector_texts = await async_get_translations(
                self.hass, self.hass.config.language, "selector", {DOMAIN}
            )
        return self._selector_texts

    def _selector_text(
        self, selector: str, option: str | None, values: dict[str, str]
    ) -> str | None:
        """One loaded `selector.<selector>.options.<option>` string, filled; None if absent."""
        key = f"component.{DOMAIN}.selector.{selector}.options.{option}"
        template = self._selector_texts.get(key) if option else None
        if template is None:
            return None
        try:
            return template.format_map(values)
        except (KeyError, IndexError, ValueError):
            return None

    async def _async_wifi_plan_text(self, backend: str, interface: str | None) -> str:
        """Who moves the host's Wi-Fi, as one sentence in HA's language."""
        await self._async_selector_texts()
        text = self._selector_text("wifi_plan", backend, {"interface": interface or "Wi-Fi"})
        return text or backend

    # -- DIY mode ----------------------------------------------------------------------------

    async def async_step_zeroconf(self, discovery_info: ZeroconfServiceInfo) -> ConfigFlowResult:
        """An eWeLink device announced itself on the LAN (`_ewelink._tcp`)."""
        try:
            advert = parse_advert(discovery_info.properties, discovery_info.name)
        except DiyAdvertError:
            return self.async_abort(reason="not_ewelink")
        target = DiyTarget(
            deviceid=advert.deviceid,
            host=str(discovery_info.ip_address),
            port=discovery_info.port or DIY_PORT,
            device_type=advert.device_type or "unknown",
            encrypted=advert.encrypted,
        )
        await async_device_announced(self.hass, target.deviceid, target.host, target.port)
        await self.async_set_unique_id(advert.deviceid)
        self._abort_if_known_device(target)
        self._diy = target
        self.context["title_placeholders"] = {"name": f"{target.device_type} {target.deviceid}"}
        return await self.async_step_diy_confirm()

    def _abort_if_known_device(self, target: DiyTarget) -> None:
        """A device we know already: keep its address current, start no second flow."""
        for entry in self._async_current_entries(include_ignore=False):
            devices: dict[str, Any] = dict(entry.data.get(CONF_DEVICES, {}))
            known = devices.get(target.deviceid)
            if known is None:
                continue
            if known.get(CONF_HOST) != target.host or known.get(CONF_PORT) != target.port:
                devices[target.deviceid] = {**known, CONF_HOST: target.host, CONF_PORT: target.port}
                self.hass.config_entries.async_update_entry(
                    entry, data={**entry.data, CONF_DEVICES: devices}
                )
            raise AbortFlow("already_configured")

    async def async_step_diy_manual(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """MDNS fails on many networks: take the device's IP address by hand."""
        errors: dict[str, str] = {}
        if user_input is not None:
            host = user_input[CONF_HOST].strip()
            port = int(user_input.get(CONF_PORT, DIY_PORT))
            deviceid = (user_input.get(CONF_DEVICEID) or "").strip().lower() or None
            client = DiyClient(async_get_clientsession(self.hass), host, port, deviceid=deviceid)
            try:
                info = await client.info()
            except DiyError as err:
                errors["base"] = f"diy_{err.code}"
            else:
                deviceid = deviceid or info.deviceid or client.deviceid
                if not deviceid:
                    errors[CONF_DEVICEID] = "deviceid_needed"
                else:
                    await self.async_set_unique_id(deviceid, raise_on_progress=False)
                    self._diy = DiyTarget(deviceid=deviceid, host=host, port=port)
                    return await self.async_step_diy_confirm()
        schema: Any = vol.Schema(
            {
                vol.Required(CONF_HOST): str,
                vol.Optional(CONF_PORT, default=DIY_PORT): vol.All(
                    vol.Coerce(int), vol.Range(min=1, max=65535)
                ),
                vol.Optional(CONF_DEVICEID): str,
            }
        )
        if user_input is not None:
            schema = self.add_suggested_values_to_schema(schema, user_input)
        return self.async_show_form(step_id="diy_manual", data_schema=schema, errors=errors)

    async def async_step_diy_confirm(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Show the eligibility verdict; flashing starts only after the user confirms."""
        if (mqtt_missing := self._abort_without_mqtt()) is not None:
            return mqtt_missing
        target = self._diy
        assert target is not None
        if not isinstance(self._run, DiyRun):
            host = get_settings(self.hass).callback_host or await network.async_get_source_ip(
                self.hass, target_ip=target.host
            )
            run = DiyRun(self.hass, target, host)
            try:
                info = await run.check()
            except DiyFlashError as err:
                await run.close()
                return self.async_abort(reason=err.code, description_placeholders=err.placeholders)
            except DeviceBusyError as err:
                await run.close()
                return self.async_abort(
                    reason="device_busy", description_placeholders={"deviceid": err.deviceid}
                )
            self._run = run
            async_remember_run(self.hass, run)
            self._diy_placeholders = {
                "deviceid": target.deviceid,
                "device_type": target.device_type,
                "fw_version": info.fw_version or "?",
                "warning": run.tracker.details.get("warnings", ""),
            }
        has_entry = bool(self._async_current_entries(include_ignore=False))
        errors: dict[str, str] = {}
        placeholders = dict(self._diy_placeholders)
        if user_input is not None and user_input.get(CONF_FLASH_NOW, True):
            errors = await self._async_take_firmware(
                user_input.get(CONF_FIRMWARE) or {}, ImageRole.DIY, placeholders
            )
        if user_input is None or errors:
            # With the integration set up, the device can also wait on the dashboard
            # (its Firmware update entity) and be flashed from there later.
            fields: dict[Any, Any] = (
                {vol.Optional(CONF_FLASH_NOW, default=True): bool} if has_entry else {}
            )
            schema: Any = vol.Schema({**fields, **firmware_section()})
            return self.async_show_form(
                step_id="diy_confirm",
                data_schema=schema,
                errors=errors,
                description_placeholders=placeholders,
            )
        if has_entry and not user_input.get(CONF_FLASH_NOW, True):
            run, self._run = self._run, None
            if run is not None:
                await run.close()
            return self.async_abort(
                reason="device_added", description_placeholders={"deviceid": target.deviceid}
            )
        self._run.firmware = self._firmware
        if self._wifi is None and not has_entry:
            return await self.async_step_user()
        return await self.async_step_diy_flash()

    # -- firmware ----------------------------------------------------------------------------

    async def _async_take_firmware(
        self, values: dict[str, Any], role: ImageRole, placeholders: dict[str, str]
    ) -> dict[str, str]:
        """Parse the firmware fields into `self._firmware`; return the form errors."""
        server = await async_get_flash_server(self.hass)
        result = await async_parse_choice(self.hass, server.firmware, values, role)
        # Keep what was typed (never the upload: its id is gone once read).
        self._firmware_values = {k: v for k, v in values.items() if k != "firmware_file"}
        if result.choice is None:
            assert result.error is not None
            placeholders.update(result.placeholders or {})
            return {"base": result.error}
        self._firmware = result.choice
        return {}

    async def async_step_firmware(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """The image could not be used: say why, and take another choice (or retry)."""
        run = self._run
        assert run is not None
        role = ImageRole.DIY if isinstance(run, DiyRun) else ImageRole.SETUP_FINAL
        errors: dict[str, str] = {}
        placeholders: dict[str, str] = {}
        if self._firmware_error is not None:
            key, placeholders = self._firmware_error
            errors["base"] = key
        if user_input is not None:
            placeholders = {}
            errors = await self._async_take_firmware(user_input, role, placeholders)
            if not errors:
                self._firmware_error = None
                self._firmware_checked = False
                run.firmware = self._firmware
                return await self.async_step_flash()
            self._firmware_error = (errors["base"], placeholders)
        schema: Any = vol.Schema(firmware_fields(self._firmware_values))
        return self.async_show_form(
            step_id="firmware",
            data_schema=schema,
            errors=errors,
            description_placeholders={"choice": self._firmware.describe(), **placeholders},
        )

    async def async_step_firmware_offline(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """No network: the cached copy of the image is used; the user says go on."""
        return await self._async_notice("firmware_offline", user_input)

    async def async_step_firmware_fallback(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """The newest lite does not fit (or cannot be had): an older known-good one is used."""
        return await self._async_notice("firmware_fallback", user_input)

    async def _async_notice(
        self, step_id: str, user_input: dict[str, Any] | None
    ) -> ConfigFlowResult:
        assert self._notice is not None
        if user_input is None:
            return self.async_show_form(step_id=step_id, description_placeholders=self._notice[1])
        self._notice = None
        return await self.async_step_flash()

    async def async_step_diy_flash(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Flash the confirmed DIY device."""
        if self._wifi is None and (entries := self._async_current_entries(include_ignore=False)):
            data = entries[0].data
            self._wifi = WifiSettings(data[CONF_SSID], data[CONF_WIFI_PASSWORD])
        return await self.async_step_flash()

    # -- the running flash ---------------------------------------------------------------------

    async def async_step_flash(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Show the running flash; every stage is a progress step of its own."""
        run = self._run
        assert run is not None
        if self._task is None:
            if isinstance(run, SetupModeRun) and run.host_wifi is not None:
                await self._async_selector_texts()  # the hop status is rendered from them
            if self._remove_listener is None:
                self._remove_listener = run.tracker.add_listener(self._on_tracker_change)
            self._task = self.hass.async_create_task(
                self._async_flash(run), f"{DOMAIN} flash", eager_start=False
            )
        if not self._task.done():
            return self.async_show_progress(
                step_id="flash",
                progress_action=self._progress_action(run),
                description_placeholders=self._placeholders(run.tracker),
                progress_task=self._task,
            )
        task, self._task = self._task, None
        try:
            await task
        except StageTimeoutError as err:
            self._resume_stage = err.stage
            return self.async_show_progress_done(next_step_id="stage_timeout")
        except Exception:
            return self.async_show_progress_done(next_step_id="failed")
        if self._error is not None:
            return self.async_show_progress_done(next_step_id="failed")
        if self._firmware_error is not None:
            return self.async_show_progress_done(next_step_id="firmware")
        if self._notice is not None:
            return self.async_show_progress_done(next_step_id=self._notice[0])
        if self._candidates:
            return self.async_show_progress_done(next_step_id="pick_device")
        return self.async_show_progress_done(next_step_id="finish")

    async def async_step_pick_device(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Several new Tasmota devices appeared at once and no MAC tells which is ours."""
        by_mac = {device.mac: device for device in self._candidates}
        errors: dict[str, str] = {}
        if user_input is not None and self._handoff is not None and self._run is not None:
            device = by_mac[user_input[CONF_TASMOTA_MAC]]
            try:
                self._outcome = await self._handoff.adopt(device, model_known=False)
            except HandoffLinkError as err:
                self._fail(self._run.tracker, err.code, err.placeholders)
                return await self.async_step_failed()
            return await self.async_step_finish()
        schema: Any = vol.Schema(
            {
                vol.Required(CONF_TASMOTA_MAC): SelectSelector(
                    SelectSelectorConfig(
                        options=[
                            SelectOptionDict(
                                value=mac, label=f"{dev.device_name or mac} ({dev.ip}, {mac})"
                            )
                            for mac, dev in by_mac.items()
                        ],
                        mode=SelectSelectorMode.LIST,
                    )
                )
            }
        )
        return self.async_show_form(step_id="pick_device", data_schema=schema, errors=errors)

    async def _async_flash(self, run: FlashRun) -> None:
        """The progress task: prepare once, then run (or resume) the stages."""
        try:
            if self._handoff is None:
                if not self._firmware_checked:
                    # Before any device or listener: a bad image sends the user back to
                    # the firmware choice, an image other than the one asked for is shown.
                    self._firmware_checked = True
                    await self._async_check_firmware(run)
                    if self._notice is not None:
                        return
                if isinstance(run, SetupModeRun):
                    if run.flasher is None:
                        await run.prepare(progress=self._on_download_progress)
                    await run.run(self._resume_stage or Stage.WAIT_SETUP_AP)
                else:
                    await run.run(progress=self._on_download_progress)
                await run.release_flash()
                assert self._wifi is not None
                self._handoff = HandoffRun(
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
                )
            self._outcome = await self._handoff.run()
        except StageTimeoutError:
            raise
        except AmbiguousDeviceError as err:
            self._candidates = err.candidates
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
            self._firmware_checked = False
            self._firmware_error = firmware_error_message(err)
        except asyncio.CancelledError:
            raise
        except Exception:
            _LOGGER.exception("Unexpected error during the flash")
            self._fail(run.tracker, "unknown", {})
        if self._error is not None:
            # Stop offering images at once: a device that keeps reconnecting must not get
            # another try while the user reads the error.
            await run.release_flash()

    async def _async_check_firmware(self, run: FlashRun) -> None:
        """Fetch and check the chosen image; note when it is not exactly what was asked."""
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
            self._notice = (step, placeholders)

    def _fail(self, tracker: FlashTracker, code: str, placeholders: dict[str, str]) -> None:
        self._error = (code, placeholders)
        tracker.fail(code, **placeholders)

    def _on_download_progress(self, received: int, total: int | None) -> None:
        if self._run is not None and total:
            self._run.tracker.update(received / total)

    def _on_tracker_change(self, tracker: FlashTracker) -> None:
        """Push the new percentage, and refresh the text when the stage or details change."""
        if tracker.finished or self._task is None:
            return
        if hasattr(self, "async_update_progress"):  # HA 2025.5+
            self.async_update_progress(tracker.fraction)
            shown: tuple[str, int | None] = (tracker.stage, None)
        else:  # HA 2025.4: the percentage lives in the text
            shown = (tracker.stage, tracker.percentage)
        # Text changes other than the percentage (device id, model, Wi-Fi hop...).
        details = {k: v for k, v in self._placeholders(tracker).items() if k != "percentage"}
        state = (shown, details)
        if state != self._last_notified:
            self._last_notified = state
            self._notify_flow_changed()

    def _notify_flow_changed(self) -> None:
        """Ask the frontend to fetch the step again (new stage, text or percentage).

        Only an event: calling `async_configure` here would race the frontend's own
        fetch and, once the task is done, run the flow to its end under its feet
        (the frontend then shows "Invalid flow specified").
        """
        notify = getattr(self, "async_notify_flow_changed", None)  # HA 2026.x
        if notify is not None:
            notify()
            return
        self.hass.bus.async_fire_internal(
            EVENT_DATA_ENTRY_FLOW_PROGRESSED,
            {"handler": self.handler, "flow_id": self.flow_id, "refresh": True},
        )

    @staticmethod
    def _progress_action(run: FlashRun) -> str:
        stage = run.tracker.stage
        if isinstance(run, SetupModeRun) and run.host_wifi is not None and stage in WIFI_HOP_STAGES:
            return f"{stage}_wifi_hop"  # HA moves its own Wi-Fi: no "connect this host" text
        return str(stage)

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

    def _wifi_hop_text(self, details: dict[str, str]) -> str:
        """The host's Wi-Fi hop, in HA's language (the tracker's English as a fallback)."""
        values = {
            "ssid": details.get(DETAIL_SSID, ""),
            "interface": details.get(DETAIL_INTERFACE, ""),
            "address": details.get(DETAIL_ADDRESS, ""),
            "error": details.get(DETAIL_ERROR, ""),
        }
        text = self._selector_text(DETAIL, details.get(DETAIL_STATE), values)
        return text if text is not None else details.get(DETAIL, "")

    async def async_step_stage_timeout(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """A waiting stage ran out of time: retry it, or give up."""
        stage = self._resume_stage or Stage.WAIT_SETUP_AP
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
        code, placeholders = self._error or ("unknown", {})
        return self.async_abort(reason=code, description_placeholders=placeholders)

    async def async_step_finish(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """The device took Tasmota: say where it is, then end the flow on "Finish".

        A form first (not the final result at once): the frontend may fetch this step
        more than once right after the progress ends, and a flow that had already
        ended would answer the later fetch with "Invalid flow specified".
        """
        run = self._run
        assert run is not None and self._wifi is not None
        if not self._finished:
            self._finished = True
            outcome = self._outcome
            deviceid = run.tracker.details.get("deviceid", "")
            run.tracker.done()
            async_remember_run(self.hass, run, flashed=True, mac=outcome.mac if outcome else None)
            await self._async_close()
            self._finish_placeholders = {
                "deviceid": deviceid,
                "device_name": outcome.name if outcome else deviceid,
                "device_path": f"/config/devices/device/{outcome.device_id}" if outcome else "",
            }
        placeholders = self._finish_placeholders
        # The frontend's list of flows in progress formats this step's title (and text)
        # with the context's title placeholders: give it the same values.
        self.context["title_placeholders"] = {
            "name": placeholders["device_name"],  # flow_title, unless discovery named it
            **self.context.get("title_placeholders", {}),
            **placeholders,
        }
        if user_input is None:
            return self.async_show_form(
                step_id="finish", description_placeholders=placeholders, last_step=True
            )
        if self._async_current_entries(include_ignore=False):
            return self.async_abort(
                reason="flash_successful", description_placeholders=placeholders
            )
        await self.async_set_unique_id(DOMAIN)
        return self.async_create_entry(
            title="Sonoff OTA",
            data={CONF_SSID: self._wifi.ssid, CONF_WIFI_PASSWORD: self._wifi.password},
            description_placeholders=placeholders,
        )

    async def _async_close(self) -> None:
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        if self._run is not None:
            await self._run.close()

    def async_remove(self) -> None:
        """The flow is gone (finished, aborted or closed): stop everything it started."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        run, self._run = self._run, None
        if run is not None:
            if not run.tracker.finished:
                run.tracker.abort()
            self.hass.async_create_task(run.close(), f"{DOMAIN} close flash", eager_start=True)
        self._wifi = None
