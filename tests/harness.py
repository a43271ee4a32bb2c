"""Shared pieces of the Home Assistant-level tests: loopback settings and firmware.

Every address the integration would use on a real network is injected here as
a 127.0.0.1 port (the harness blocks every other address).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
import hashlib
import socket
from typing import Any

from homeassistant.components.mqtt import config_flow as mqtt_config_flow
from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.data_entry_flow import (
    EVENT_DATA_ENTRY_FLOW_PROGRESSED,
    FlowResultType,
    UnknownFlow,
)
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.sonoff_ota.const import CONF_SSID, CONF_WIFI_PASSWORD
from custom_components.sonoff_ota.settings import SETTINGS_KEY, Settings, Timeouts
from tests.proto.firmware_server import FirmwareServer, firmware_server
from virtual_sonoff.images import intermediate_user1, intermediate_user2, tasmota_lite
from virtual_sonoff.mosquitto import MosquittoBroker
from virtual_sonoff.tasmota import VirtualTasmota

LOOPBACK = "127.0.0.1"
WIFI = {CONF_SSID: "HomeNet", CONF_WIFI_PASSWORD: "correct-horse"}


def free_port() -> int:
    """A port that was free a moment ago (for listeners a device must know in advance)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Firmware:
    """The synthetic images a test serves, and the server serving them."""

    server: FirmwareServer
    user1: bytes
    user2: bytes
    tasmota: bytes

    def settings(self) -> dict[str, str]:
        """`Settings.firmware` overrides pointing at the local server, with pins."""
        return {
            "tasmota_latest_url": self.server.url("tasmota-lite.bin"),
            "tasmota_release_url_template": self.server.url("tasmota-{version}-lite.bin"),
            "user1_url": self.server.url("image_user1-0x01000.bin"),
            "user1_sha256": hashlib.sha256(self.user1).hexdigest(),
            "user2_url": self.server.url("image_user2-0x81000.bin"),
            "user2_sha256": hashlib.sha256(self.user2).hexdigest(),
        }


@asynccontextmanager
async def local_firmware(tasmota_size: int = 480_000) -> AsyncIterator[Firmware]:
    """Serve synthetic user1/user2/Tasmota images from 127.0.0.1."""
    user1, user2, tasmota = intermediate_user1(), intermediate_user2(), tasmota_lite(tasmota_size)
    files = {
        "image_user1-0x01000.bin": user1,
        "image_user2-0x81000.bin": user2,
        "tasmota-lite.bin": tasmota,
    }
    async with firmware_server(files) as server:
        yield Firmware(server, user1, user2, tasmota)


def install_settings(hass: HomeAssistant, firmware: Firmware, **overrides: object) -> Settings:
    """Point the integration at loopback ports with short timeouts."""
    values: dict[str, object] = {
        "tls_bind": LOOPBACK,
        "tls_port": 0,
        "finalstage_bind": LOOPBACK,
        "finalstage_port": free_port(),
        "callback_host": LOOPBACK,
        "tasmota_ap_url": f"http://{LOOPBACK}:{free_port()}",
        "device_broker_host": LOOPBACK,
        "pacing_scale": 0.02,
        "serve_from_ha": False,
        # Never probe the real system D-Bus / Supervisor: hop tests bring their own fakes.
        "wifi_hop": "manual",
        "firmware": firmware.settings(),
        "timeouts": Timeouts(
            setup_ap=5,
            dispatch=5,
            upgrade=10,
            finalstage=10,
            diy_request=2,
            diy_flash=10,
            diy_reboot=5,
            tasmota_ap=5,
            discovery=10,
            pinning_grace=0.3,
        ),
    }
    values.update(overrides)
    settings = Settings(**values)  # type: ignore[arg-type]
    hass.data[SETTINGS_KEY] = settings
    return settings


async def wait_until(predicate: Callable[[], object], within: float = 5.0) -> None:
    """Poll `predicate` (for state that offers no event to wait on)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - nothing to await but the state
            await asyncio.sleep(0.01)


async def setup_real_mqtt(hass: HomeAssistant, broker: MosquittoBroker) -> MockConfigEntry:
    """HA's MQTT entry pointing at a real broker (entry version of this HA's MQTT flow)."""
    entry = MockConfigEntry(
        domain="mqtt",
        data={"broker": broker.host, "port": broker.port},
        version=mqtt_config_flow.FlowHandler.VERSION,
        minor_version=mqtt_config_flow.FlowHandler.MINOR_VERSION,
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    return entry


def tasmota_ap_port(settings: Settings) -> int:
    """The loopback port standing for Tasmota's 192.168.4.1 in these settings."""
    return int(settings.tasmota_ap_url.rsplit(":", 1)[1])


async def assert_tasmota_switch_works(
    hass: HomeAssistant, device_id: str, tasmota: VirtualTasmota
) -> None:
    """HA's tasmota device has a switch; turning it on flips the relay and comes back."""
    registry = er.async_get(hass)

    def switches() -> list[er.RegistryEntry]:
        return [
            entry
            for entry in er.async_entries_for_device(registry, device_id)
            if entry.domain == "switch"
        ]

    await wait_until(switches)
    (switch,) = switches()
    await wait_until(lambda: (s := hass.states.get(switch.entity_id)) and s.state == "off")
    await hass.services.async_call(
        "switch", "turn_on", {"entity_id": switch.entity_id}, blocking=True
    )
    await tasmota.wait_until(lambda: tasmota.relays[0], within=5)
    await wait_until(lambda: (s := hass.states.get(switch.entity_id)) and s.state == "on")


async def flow_result(hass: HomeAssistant, flow_id: str) -> dict[str, Any]:
    """Fetch a flow whose progress ended, as the UI does, and press Submit on "finish".

    A finished flash first shows the "finish" form (where the new device is); its
    submit creates the entry (first run) or ends with `flash_successful`.
    """
    result: Any = await hass.config_entries.flow.async_configure(flow_id)
    if result["type"] is FlowResultType.FORM and result["step_id"] == "finish":
        shown = dict(result["description_placeholders"])
        result = await hass.config_entries.flow.async_configure(flow_id, {})
        assert result["description_placeholders"] == shown
    return dict(result)


@dataclass(slots=True)
class FrontendWatch:
    """What a watching frontend fetched: every result, and fetches that found no flow."""

    flow_id: str = ""
    fetched: list[Any] = field(default_factory=list)
    lost: list[Exception] = field(default_factory=list)

    def progress_placeholders(self, key: str) -> list[str]:
        """The values of one placeholder across the progress steps fetched."""
        return [
            r["description_placeholders"][key]
            for r in self.fetched
            if r["type"] is FlowResultType.SHOW_PROGRESS and r.get("description_placeholders")
        ]


@asynccontextmanager
async def watching_frontend(hass: HomeAssistant) -> AsyncIterator[FrontendWatch]:
    """Like the UI: fetch the flow `watch.flow_id` on every `data_entry_flow_progressed`."""
    watch = FrontendWatch()

    async def fetch() -> None:
        try:
            watch.fetched.append(await hass.config_entries.flow.async_configure(watch.flow_id))
        except UnknownFlow as err:
            watch.lost.append(err)

    @callback
    def on_progress(event: Event[Any]) -> None:
        if watch.flow_id and event.data["flow_id"] == watch.flow_id:
            hass.async_create_task(fetch())

    unsubscribe = hass.bus.async_listen(EVENT_DATA_ENTRY_FLOW_PROGRESSED, on_progress)
    try:
        yield watch
    finally:
        unsubscribe()
