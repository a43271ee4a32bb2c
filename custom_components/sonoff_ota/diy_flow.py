"""The DIY path of the flow: eWeLink 3.x on the LAN (`DiyRun`).

A device is found by zeroconf (`_ewelink._tcp`) or entered by hand (mDNS fails
on many networks). Its eligibility is checked before anything changes, and the
flash starts only once the user confirms; with the integration set up, the
device can instead wait on the dashboard (its Firmware update entity). Where HA
moves its own Wi-Fi, the hand-off joins Tasmota's first-boot AP itself, and the
progress text says so (the phone link stays as the fallback).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeassistant.components import network
from homeassistant.config_entries import ConfigFlowResult
from homeassistant.const import CONF_HOST, CONF_PORT
from homeassistant.data_entry_flow import AbortFlow
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo
import voluptuous as vol

from .firmware_flow import FirmwareFlow
from .firmware_form import CONF_FIRMWARE, firmware_section
from .flash_flow import FlashRun
from .flash_stack import async_load_flash_stack
from .known_devices import CONF_DEVICES, async_remember_run
from .proto.flash_stages import Stage
from .settings import get_settings

if TYPE_CHECKING:
    from .diy_run import DiyTarget

CONF_DEVICEID = "deviceid"
CONF_FLASH_NOW = "flash_now"


class DiyState:
    """What the DIY path keeps between steps."""

    __slots__ = ("confirm_placeholders", "target")

    def __init__(self) -> None:
        """Nothing found yet."""
        self.target: DiyTarget | None = None
        """The device found or entered; set before the Wi-Fi is asked, if it is asked."""
        self.confirm_placeholders: dict[str, str] = {}
        """The eligibility verdict the `diy_confirm` form shows."""


class DiyFlow(FirmwareFlow):
    """Find the DIY device (zeroconf or by hand), check it, and confirm the flash."""

    def __init__(self) -> None:
        """Start with nothing known."""
        super().__init__()
        self._diy = DiyState()

    async def async_step_zeroconf(self, discovery_info: ZeroconfServiceInfo) -> ConfigFlowResult:
        """An eWeLink device announced itself on the LAN (`_ewelink._tcp`)."""
        await async_load_flash_stack(self.hass)  # the discovered DIY path starts here
        from .diy_run import DIY_PORT, DiyTarget  # noqa: PLC0415 - loaded just above
        from .flash_recovery import async_device_announced  # noqa: PLC0415
        from .proto.diy_discovery import DiyAdvertError, parse_advert  # noqa: PLC0415

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
        self._diy.target = target
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
        await async_load_flash_stack(self.hass)  # the manual DIY path starts here
        from .diy_run import DIY_PORT, DiyTarget  # noqa: PLC0415 - loaded just above
        from .proto.diy_client import DiyClient, DiyError  # noqa: PLC0415

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
                    self._diy.target = DiyTarget(deviceid=deviceid, host=host, port=port)
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

    async def _async_eligibility_warning(self, details: dict[str, str]) -> str:
        """Why the flash may not work, in HA's language: the eligibility row's sentence."""
        from .proto.eligibility import ELIGIBILITY_SELECTOR  # noqa: PLC0415 - the flash stack's

        if not details.get("warnings"):
            return ""
        await self._async_selector_texts()
        text = self._selector_text(ELIGIBILITY_SELECTOR, details.get("eligibility"), {})
        return text if text is not None else details["warnings"]

    async def async_step_diy_confirm(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Show the eligibility verdict; flashing starts only after the user confirms."""
        # Loaded: the step that found the device (zeroconf or diy_manual) loaded them.
        from .diy_run import DiyRun  # noqa: PLC0415
        from .flash_server import DeviceBusyError  # noqa: PLC0415
        from .proto.diy_flasher import DiyFlashError  # noqa: PLC0415
        from .proto.firmware_image import ImageRole  # noqa: PLC0415

        if (mqtt_missing := self._abort_without_mqtt()) is not None:
            return mqtt_missing
        target = self._diy.target
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
            self._diy.confirm_placeholders = {
                "deviceid": target.deviceid,
                "device_type": target.device_type,
                "fw_version": info.fw_version or "?",
                "warning": await self._async_eligibility_warning(run.tracker.details),
            }
        has_entry = bool(self._async_current_entries(include_ignore=False))
        errors: dict[str, str] = {}
        placeholders = dict(self._diy.confirm_placeholders)
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
        self._run.firmware = self._firmware.choice
        if self._wifi is None and not has_entry:
            return await self.async_step_user()
        return await self.async_step_diy_flash()

    async def async_step_diy_flash(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Flash the confirmed DIY device."""
        self._load_saved_wifi()
        return await self.async_step_flash()

    def _progress_action(self, run: FlashRun) -> str:
        from .diy_run import DiyRun  # noqa: PLC0415 - loaded: `run` exists

        handoff = self._flash.handoff
        if (
            isinstance(run, DiyRun)
            and handoff is not None
            and handoff.host_wifi is not None
            and run.tracker.stage is Stage.TASMOTA_AP
        ):
            return f"{Stage.TASMOTA_AP}_wifi_hop"  # HA joins Tasmota's AP itself: no phone first
        return super()._progress_action(run)
