"""The setup-mode path of the flow: the device's ITEAD access point (`SetupModeRun`).

The form asks for the address the device calls back, checks the host's network
(a LAN on the device subnets is refused; a host whose Wi-Fi carries HA's own LAN
must confirm the hop) and the listening ports, then starts the flash. When HA
moves its own Wi-Fi, the progress texts say so instead of asking the user to
change networks, and the hop's live status is shown in HA's language.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from homeassistant.components import network
from homeassistant.config_entries import ConfigFlowResult
from homeassistant.helpers.selector import (
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
)
from homeassistant.helpers.translation import async_get_translations
import voluptuous as vol

from .const import DOMAIN
from .firmware_flow import FirmwareFlow
from .firmware_form import CONF_FIRMWARE, firmware_section
from .flash_flow import FlashRun
from .flash_server import async_get_flash_server
from .host_wifi_run import async_prepare_hop
from .issues import async_update_port_issue
from .proto.firmware_image import ImageRole
from .proto.flash_stages import Stage
from .proto.host_wifi_types import HopError, HopErrorCode
from .proto.setup_mode_wifi import (
    DETAIL,
    DETAIL_ADDRESS,
    DETAIL_ERROR,
    DETAIL_INTERFACE,
    DETAIL_SSID,
    DETAIL_STATE,
)
from .settings import get_settings
from .setup_mode_run import SetupModeRun

CONF_CALLBACK_HOST = "callback_host"
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


@dataclass(slots=True)
class SetupModeState:
    """What the setup-mode path keeps between steps."""

    selector_texts: dict[str, str] = field(default_factory=dict)
    """Our `selector.*` strings in HA's language (sentences built at run time): the
    Wi-Fi plan on the form and the hop's status during the flash."""


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

    async def _async_selector_texts(self) -> dict[str, str]:
        """Load our `selector.*` strings in HA's language once per flow."""
        state = self._setup_mode
        if not state.selector_texts:
            state.selector_texts = await async_get_translations(
                self.hass, self.hass.config.language, "selector", {DOMAIN}
            )
        return state.selector_texts

    def _selector_text(
        self, selector: str, option: str | None, values: dict[str, str]
    ) -> str | None:
        """One loaded `selector.<selector>.options.<option>` string, filled; None if absent."""
        key = f"component.{DOMAIN}.selector.{selector}.options.{option}"
        template = self._setup_mode.selector_texts.get(key) if option else None
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

    def _progress_action(self, run: FlashRun) -> str:
        stage = run.tracker.stage
        if isinstance(run, SetupModeRun) and run.host_wifi is not None and stage in WIFI_HOP_STAGES:
            return f"{stage}_wifi_hop"  # HA moves its own Wi-Fi: no "connect this host" text
        return super()._progress_action(run)

    def _wifi_hop_text(self, details: dict[str, str]) -> str:
        """The host's Wi-Fi hop, in HA's language (the tracker's English as a fallback)."""
        values = {
            "ssid": details.get(DETAIL_SSID, ""),
            "interface": details.get(DETAIL_INTERFACE, ""),
            "address": details.get(DETAIL_ADDRESS, ""),
            "error": details.get(DETAIL_ERROR, ""),
        }
        text = self._selector_text(DETAIL, details.get(DETAIL_STATE), values)
        return text if text is not None else super()._wifi_hop_text(details)
