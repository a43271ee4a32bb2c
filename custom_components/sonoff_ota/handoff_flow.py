"""How a flash that reached Tasmota ends in the flow: which device, and where it is now.

The hand-off (`HandoffRun`) finds the flashed device on MQTT and waits for its
HA device. When several new Tasmota devices appear at once and no MAC tells
which one is ours, `pick_device` asks; `finish` then says where the device is
and, on the first run, creates the entry that keeps the home Wi-Fi.
"""

from __future__ import annotations

from typing import Any

from homeassistant.config_entries import ConfigFlowResult
from homeassistant.helpers.selector import (
    SelectOptionDict,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
)
import voluptuous as vol

from .const import CONF_SSID, CONF_WIFI_PASSWORD, DOMAIN
from .flash_flow import FlashFlow
from .handoff_run import HandoffLinkError
from .known_devices import async_remember_run

CONF_TASMOTA_MAC = "tasmota_mac"


class HandoffFlow(FlashFlow):
    """The steps after the flash: pick the device among several, then finish."""

    async def async_step_pick_device(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Several new Tasmota devices appeared at once and no MAC tells which is ours."""
        flash = self._flash
        by_mac = {device.mac: device for device in flash.candidates}
        errors: dict[str, str] = {}
        if user_input is not None and flash.handoff is not None and self._run is not None:
            device = by_mac[user_input[CONF_TASMOTA_MAC]]
            try:
                flash.outcome = await flash.handoff.adopt(device, model_known=False)
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

    async def async_step_finish(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """The device took Tasmota: say where it is, then end the flow on "Finish".

        A form first (not the final result at once): the frontend may fetch this step
        more than once right after the progress ends, and a flow that had already
        ended would answer the later fetch with "Invalid flow specified".
        """
        if (instead := await self._async_flashed()) is not None:
            return instead  # one of several devices: the next one, or the summary
        run, flash = self._run, self._flash
        assert run is not None and self._wifi is not None
        if not flash.finished:
            flash.finished = True
            outcome = flash.outcome
            deviceid = run.tracker.details.get("deviceid", "")
            # Before any await: a second fetch of this step may arrive while we close.
            flash.finish_placeholders = {
                "deviceid": deviceid,
                "device_name": outcome.name if outcome else deviceid,
                "device_path": f"/config/devices/device/{outcome.device_id}" if outcome else "",
            }
            run.tracker.done()
            async_remember_run(self.hass, run, flashed=True, mac=outcome.mac if outcome else None)
            await self._async_close()
        placeholders = flash.finish_placeholders
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
