"""The firmware steps of the flow: take the user's choice, and ask again when it fails.

Both paths' forms carry the collapsed "Firmware" section; `_async_take_firmware`
turns it into the flow's `FirmwareState.choice` (an upload is checked right
there). The flash task checks the chosen image before any device or listener
(`FlashFlow._async_check_firmware`): an image that cannot be used ends the
progress on the `firmware` step (why, and another choice), an image other than
the one asked for on a notice (`firmware_offline`, `firmware_fallback`) that
the user confirms before the flash goes on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeassistant.config_entries import ConfigFlowResult
import voluptuous as vol

from .firmware_form import CONF_FIRMWARE_FILE, async_parse_choice, firmware_fields
from .flash_flow import FlashFlow

if TYPE_CHECKING:
    from .proto.firmware_image import ImageRole


class FirmwareFlow(FlashFlow):
    """Take the firmware choice from a form; the `firmware` step and the notices."""

    async def _async_take_firmware(
        self, values: dict[str, Any], role: ImageRole, placeholders: dict[str, str]
    ) -> dict[str, str]:
        """Parse the firmware fields into the flow's choice; return the form errors."""
        # Loaded by the step of the path that asks (diy_manual or zeroconf, setup_mode).
        from .flash_server import async_get_flash_server  # noqa: PLC0415

        server = await async_get_flash_server(self.hass)
        result = await async_parse_choice(self.hass, server.firmware, values, role)
        # Keep what was typed (never the upload: its id is gone once read).
        self._firmware.values = {k: v for k, v in values.items() if k != CONF_FIRMWARE_FILE}
        if result.choice is None:
            assert result.error is not None
            placeholders.update(result.placeholders or {})
            return {"base": result.error}
        self._firmware.choice = result.choice
        return {}

    async def async_step_firmware(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """The image could not be used: say why, and take another choice (or retry)."""
        # Loaded: the flash that failed here.
        from .diy_run import DiyRun  # noqa: PLC0415
        from .proto.firmware_image import ImageRole  # noqa: PLC0415

        run, firmware = self._run, self._firmware
        assert run is not None
        role = ImageRole.DIY if isinstance(run, DiyRun) else ImageRole.SETUP_FINAL
        errors: dict[str, str] = {}
        placeholders: dict[str, str] = {}
        if firmware.error is not None:
            key, placeholders = firmware.error
            errors["base"] = key
        if user_input is not None:
            placeholders = {}
            errors = await self._async_take_firmware(user_input, role, placeholders)
            if not errors:
                firmware.error = None
                firmware.checked = False
                run.firmware = firmware.choice
                return await self.async_step_flash()
            firmware.error = (errors["base"], placeholders)
        schema: Any = vol.Schema(firmware_fields(firmware.values))
        return self.async_show_form(
            step_id="firmware",
            data_schema=schema,
            errors=errors,
            description_placeholders={"choice": firmware.choice.describe(), **placeholders},
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
        notice = self._firmware.notice
        assert notice is not None
        if user_input is None:
            return self.async_show_form(step_id=step_id, description_placeholders=notice[1])
        self._firmware.notice = None
        return await self.async_step_flash()
