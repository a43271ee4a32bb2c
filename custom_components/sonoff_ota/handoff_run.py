"""The last part of every flash inside Home Assistant: from Tasmota's first boot to an HA device.

It subscribes to Tasmota discovery before the device can publish, runs the
protocol-side `TasmotaHandoff` (one Backlog on Tasmota's access point, or the
phone link), makes sure HA's `tasmota` entry exists, and waits until HA's
tasmota integration has created the device. Both flash paths end here.

Where HA moves its own Wi-Fi, the host joins Tasmota's first-boot AP itself: setup mode
hands its flash's hop in (`ap_hop`); the DIY path asks for one of its own (`hop_to_ap`),
prepared at the start of the hand-off and restored at its end in every outcome. Both are
the same `SetupModeWifi` (`host_wifi_run`); a failed hop falls back to the phone link.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging

from homeassistant.const import EVENT_HOMEASSISTANT_STOP
from homeassistant.core import Event, HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.aiohttp_client import async_get_clientsession

from .host_wifi_run import async_tasmota_ap_hop
from .proto.flash_stages import FlashTracker
from .proto.setup_mode_wifi import SetupModeWifi
from .proto.tasmota_discovery import TasmotaDevice
from .proto.tasmota_handoff import TasmotaApHop, TasmotaHandoff
from .proto.tasmota_handoff_types import (
    ConfiguredBy,
    DeviceMqttSettings,
    EwelinkIdentity,
    HandoffResult,
    HandoffTimeouts,
    WifiSettings as TasmotaWifi,
)
from .proto.wifi import WifiSettings
from .settings import get_settings
from .tasmota_link import (
    async_device_mqtt_settings,
    async_discovery_feed,
    async_ensure_tasmota_entry,
    async_wait_for_ha_device,
)

_LOGGER = logging.getLogger(__name__)

TASMOTA_DOMAIN = "tasmota"


@dataclass(frozen=True, slots=True)
class HandoffOutcome:
    """Where the flashed device ended up in Home Assistant."""

    device_id: str
    mac: str
    name: str
    model_known: bool


def _known_tasmota_macs(hass: HomeAssistant) -> set[str]:
    """MACs of the Tasmota devices HA already has (never "the new one")."""
    registry = dr.async_get(hass)
    macs: set[str] = set()
    for entry in hass.config_entries.async_entries(TASMOTA_DOMAIN):
        for device in dr.async_entries_for_config_entry(registry, entry.entry_id):
            macs.update(
                value.replace(":", "").upper()
                for kind, value in device.connections
                if kind == dr.CONNECTION_NETWORK_MAC
            )
    return macs


class HandoffRun:
    """Hand a freshly flashed device over to HA's Tasmota integration."""

    def __init__(
        self,
        hass: HomeAssistant,
        tracker: FlashTracker,
        wifi: WifiSettings,
        identity: EwelinkIdentity,
        *,
        device_ip: str | None = None,
        ap_hop: TasmotaApHop | None = None,
        hop_to_ap: bool = False,
    ) -> None:
        """Prepare; nothing happens until `run()`.

        `ap_hop`: the setup-mode Wi-Fi hop, when HA moves its own Wi-Fi: it then joins
        Tasmota's access point itself instead of asking for a phone.
        `hop_to_ap` (no `ap_hop`: the DIY path): `run()` prepares a hop of its own where a
        backend can move this host's Wi-Fi (`host_wifi_run.async_tasmota_ap_hop`) and
        restores it before it returns or raises; without one, the phone link as before.
        """
        self._ap_hop = ap_hop
        self._hop_to_ap = hop_to_ap and ap_hop is None
        self.host_wifi: SetupModeWifi | None = None
        """The hop `run()` prepared itself (`hop_to_ap`), while it runs."""
        self.hass = hass
        self.tracker = tracker
        self._wifi = wifi
        self._identity = identity
        self._device_ip = device_ip
        self.result: HandoffResult | None = None

    async def run(self) -> HandoffOutcome:
        """Configure Tasmota, find it on MQTT, and wait for its HA device.

        Raises `HandoffError` (its code is a translation key; `AmbiguousDeviceError`
        leaves the choice to the caller, who then calls `adopt()`) or `HandoffLinkError`.
        """
        settings = get_settings(self.hass)
        mqtt_settings = await async_device_mqtt_settings(self.hass, self._device_ip)
        timeouts = HandoffTimeouts(
            ap_window=settings.timeouts.tasmota_ap, discovery=settings.timeouts.discovery
        )
        ap_hop = self._ap_hop
        if self._hop_to_ap:
            ap_hop = self.host_wifi = await async_tasmota_ap_hop(
                self.hass, self.tracker, self._wifi
            )
        if self.host_wifi is None:
            self.result = await self._handoff(mqtt_settings, timeouts, ap_hop)
        else:
            # HA stopping mid-hop: put the network back before it exits.
            unsub_stop = self.hass.bus.async_listen_once(
                EVENT_HOMEASSISTANT_STOP, self._async_hass_stop
            )
            try:
                self.result = await self._handoff(mqtt_settings, timeouts, ap_hop)
            finally:
                unsub_stop()
                await self.host_wifi.restore()  # every outcome (shielded against cancel)
        return await self._link(self.result)

    async def _async_hass_stop(self, _event: Event) -> None:
        if self.host_wifi is not None:
            await self.host_wifi.restore()

    async def _handoff(
        self,
        mqtt_settings: DeviceMqttSettings,
        timeouts: HandoffTimeouts,
        ap_hop: TasmotaApHop | None,
    ) -> HandoffResult:
        settings = get_settings(self.hass)
        async with async_discovery_feed(self.hass) as feed:
            handoff = TasmotaHandoff(
                async_get_clientsession(self.hass),
                self.tracker,
                wifi=TasmotaWifi(self._wifi.ssid, self._wifi.password),
                mqtt=mqtt_settings,
                feed=feed,
                device=self._identity,
                ap_url=settings.tasmota_ap_url,
                timeouts=timeouts,
                known_macs=_known_tasmota_macs(self.hass),
                ap_hop=ap_hop,
            )
            return await handoff.run()

    async def adopt(self, device: TasmotaDevice, model_known: bool) -> HandoffOutcome:
        """Finish with the device the user picked among several new ones."""
        configured_by = ConfiguredBy(
            self.tracker.details.get("tasmota_configured_by", ConfiguredBy.PHONE)
        )
        self.result = HandoffResult.from_device(
            device, model_known=model_known, configured_by=configured_by
        )
        return await self._link(self.result)

    async def _link(self, result: HandoffResult) -> HandoffOutcome:
        await async_ensure_tasmota_entry(self.hass)
        timeouts = get_settings(self.hass).timeouts
        try:
            device_id = await async_wait_for_ha_device(self.hass, result.mac, timeouts.discovery)
        except TimeoutError as err:
            # Seen on MQTT, but HA's tasmota integration never made a device of it.
            raise HandoffLinkError("tasmota_not_in_ha", mac=result.mac) from err
        self.tracker.update(1.0, tasmota_device=result.device_name or result.mac)
        _LOGGER.info("Device %s is now Tasmota %s in Home Assistant", result.mac, result.sw)
        return HandoffOutcome(
            device_id=device_id,
            mac=result.mac,
            name=result.device_name or result.mac,
            model_known=result.model_known,
        )


class HandoffLinkError(Exception):
    """The device reached MQTT but not Home Assistant; `code` is a translation key."""

    def __init__(self, code: str, **placeholders: str) -> None:
        """Keep the key and its placeholders."""
        super().__init__(code)
        self.code = code
        self.placeholders = placeholders
