"""A set-up Sonoff OTA entry plus a virtual DIY device it has discovered.

Shared by the dashboard tests (update, sensor, diagnostics). The device is a
real `DiyDevice` on 127.0.0.1; its mDNS announcement is handed to the config
flow as a `ZeroconfServiceInfo`, as HA's zeroconf integration would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from homeassistant.components.mqtt import config_flow as mqtt_config_flow
from homeassistant.config_entries import ConfigEntry, ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import entity_registry as er
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    MockModule,
    mock_integration,
    mock_platform,
)

from custom_components.sonoff_ota.const import DOMAIN
from custom_components.sonoff_ota.settings import Timeouts
from tests.harness import (
    WIFI,
    Firmware,
    discover,
    install_settings,
    local_firmware,
    tasmota_ap_port,
)
from virtual_sonoff.diy import DiyConfig, DiyDevice
from virtual_sonoff.lifecycle import TasmotaPlan, VirtualSonoff


@dataclass(slots=True)
class Dashboard:
    """The entry, the device, its firmware, and the flow that discovered it."""

    entry: MockConfigEntry
    device: DiyDevice
    firmware: Firmware
    flow: dict[str, Any]
    sonoff: VirtualSonoff

    @property
    def deviceid(self) -> str:
        """The virtual device's id."""
        return self.device.config.deviceid

    def entity_id(self, hass: HomeAssistant, platform: str, key: str) -> str | None:
        """The entity id of our `platform` entity `key` of the device (None once removed)."""
        return er.async_get(hass).async_get_entity_id(platform, DOMAIN, f"{self.deviceid}_{key}")


async def mock_mqtt(hass: HomeAssistant) -> MockConfigEntry:
    """A loaded MQTT entry of a mock MQTT integration (the flow refuses to start without).

    No broker runs: tests using it stop before the Tasmota hand-off, which needs one
    (those that go on request the `real_mqtt` fixture instead).
    """

    async def setup_or_unload(hass: HomeAssistant, entry: ConfigEntry) -> bool:
        return True

    mock_integration(
        hass,
        MockModule("mqtt", async_setup_entry=setup_or_unload, async_unload_entry=setup_or_unload),
    )
    mock_platform(hass, "mqtt.config_flow", None)
    entry = MockConfigEntry(
        domain="mqtt",
        data={"broker": "127.0.0.1"},
        # the version of this HA's MQTT flow, or HA wants to migrate the entry
        version=mqtt_config_flow.FlowHandler.VERSION,
        minor_version=mqtt_config_flow.FlowHandler.MINOR_VERSION,
    )
    await hass.config_entries.async_add(entry)
    await hass.async_block_till_done()
    return entry


async def setup_entry(hass: HomeAssistant, **data: Any) -> MockConfigEntry:
    """Add and set up the Sonoff OTA entry (home Wi-Fi plus `data`)."""
    entry = MockConfigEntry(domain=DOMAIN, unique_id=DOMAIN, data={**WIFI, **data})
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    return entry


@asynccontextmanager
async def discovered_device(
    hass: HomeAssistant, *, timeouts: Timeouts | None = None, **config: Any
) -> AsyncIterator[Dashboard]:
    """Entry set up, device running and discovered (its confirm form still open).

    `timeouts` must be given here: the flash server keeps the settings of its creation.
    """
    async with local_firmware() as firmware:
        if timeouts is None:
            settings = install_settings(hass, firmware)
        else:
            settings = install_settings(hass, firmware, timeouts=timeouts)
        assert await async_setup_component(hass, "http", {})
        if not any(  # a test may bring a real broker
            entry.state is ConfigEntryState.LOADED
            for entry in hass.config_entries.async_entries("mqtt")
        ):
            await mock_mqtt(hass)
        entry = await setup_entry(hass)
        sonoff = VirtualSonoff(
            "diy",
            diy=DiyConfig(**config),
            tasmota_plan=TasmotaPlan(ap_port=tasmota_ap_port(settings)),
        )
        async with sonoff:
            device = sonoff.ewelink
            assert isinstance(device, DiyDevice)
            flow = await discover(hass, device)
            assert flow["type"] is FlowResultType.FORM, flow
            assert flow["step_id"] == "diy_confirm"
            await hass.async_block_till_done()
            try:
                yield Dashboard(entry, device, firmware, flow, sonoff)
            finally:
                for progress in hass.config_entries.flow.async_progress():
                    hass.config_entries.flow.async_abort(progress["flow_id"])
                await hass.async_block_till_done(wait_background_tasks=True)
