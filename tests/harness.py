"""Shared pieces of the Home Assistant-level tests: loopback settings, firmware, devices, flows.

Every address the integration would use on a real network is injected here as
a 127.0.0.1 port (the harness blocks every other address). The virtual Sonoffs
run on loopback; the flow helpers drive the config flow as a user in the UI
does, one named step of the story at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
import hashlib
from ipaddress import ip_address
import random
import socket
import traceback
from typing import Any, Protocol

from hatasmota.mqtt import DEBOUNCE_TIMEOUT  # type: ignore[import-untyped]
from homeassistant import config_entries
from homeassistant.components.mqtt import config_flow as mqtt_config_flow
from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.data_entry_flow import (
    EVENT_DATA_ENTRY_FLOW_PROGRESSED,
    FlowResultType,
    UnknownFlow,
)
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo
from homeassistant.setup import async_setup_component
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.sonoff_ota.const import CONF_SSID, CONF_WIFI_PASSWORD, DOMAIN
from custom_components.sonoff_ota.settings import SETTINGS_KEY, Settings, Timeouts
from tests.proto.firmware_server import FirmwareServer, firmware_server
from virtual_sonoff.diy import DiyConfig, DiyDevice, MdnsAnnouncement
from virtual_sonoff.ewelink_station import EwelinkStation
from virtual_sonoff.flash_memory import ARDUINO_OFFSET
from virtual_sonoff.images import intermediate_user1, intermediate_user2, tasmota_lite
from virtual_sonoff.lifecycle import TasmotaPlan, VirtualSonoff
from virtual_sonoff.mosquitto import MosquittoBroker
from virtual_sonoff.setup_mode import SetupModeConfig, SetupModeDevice
from virtual_sonoff.tasmota import VirtualTasmota

LOOPBACK = "127.0.0.1"
WIFI = {CONF_SSID: "HomeNet", CONF_WIFI_PASSWORD: "correct-horse"}


PORT_PICKS = range(10000, 32768)
"""Below Linux's ephemeral range (32768-60999 by default) that outgoing connections use."""
_handed_out: set[int] = set()
_picker = random.SystemRandom()  # not `random`: Hypothesis seeds that one, every process alike


def free_port() -> int:
    """A port that was free a moment ago (for listeners a device must know in advance).

    Picked at random below the ephemeral range and never twice in one process, so
    neither an outgoing connection (of this test or of a parallel test process) nor a
    second listener of this one is likely to take it before its listener binds.
    """
    if len(_handed_out) > len(PORT_PICKS) // 2:
        _handed_out.clear()  # a very long run: the oldest picks are long closed
    while True:
        port = _picker.choice(PORT_PICKS)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


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
        # The finish step looks up the size of the full build: never ota.tasmota.com.
        "tasmota_ota_base_url": firmware.server.url("").rstrip("/"),
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


async def drain_tasmota_publishes() -> None:
    """Let hatasmota's debounced publishes go out while HA's MQTT is still connected.

    hatasmota delays some publishes (the status queries after a discovery or an LWT) by
    `DEBOUNCE_TIMEOUT` (1 s) in tasks HA does not track (`hatasmota.mqtt.Timer`). Left
    pending when the MQTT entry is unloaded, they fail, and asyncio logs "Task exception
    was never retrieved" when they are collected (at interpreter exit, in a test run).
    """
    pending = [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "Timer._job"
    ]
    if pending:
        await asyncio.wait(pending, timeout=DEBOUNCE_TIMEOUT + 1)


async def stop_tasmota_then_drain(hass: HomeAssistant) -> None:
    """Unload HA's tasmota entries (no LWT starts another publish), then drain the rest."""
    for entry in hass.config_entries.async_entries("tasmota"):
        if entry.state is config_entries.ConfigEntryState.LOADED:
            await hass.config_entries.async_unload(entry.entry_id)
    await drain_tasmota_publishes()


OUR_SOURCE = "/custom_components/sonoff_ota/"
"""Where this integration's frames come from, in a traceback."""


def _broker_or_socket_gone(error: BaseException) -> bool:
    """HA's MQTT client without its broker, or a peer that reset its socket."""
    if isinstance(error, HomeAssistantError):
        return error.translation_key == "mqtt_broker_error"
    return isinstance(error, ConnectionError)


def unexpected_tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records with a traceback, except what others log when a broker or socket vanishes.

    Tests that stop the broker (or drop MQTT) under HA see HA's MQTT client, hatasmota
    and asyncio log the broker's absence or a reset socket: not ours to fix. Any
    other traceback counts, and so does every one that passes through our code
    (whoever logs it) or is logged by our loggers.
    """
    found = []
    for record in caplog.records:
        if record.exc_info is None or record.exc_info[1] is None:
            if "Traceback" in record.getMessage():
                found.append(record.getMessage())
            continue
        error = record.exc_info[1]
        ours = record.name.startswith("custom_components.sonoff_ota") or any(
            OUR_SOURCE in frame.filename for frame in traceback.extract_tb(error.__traceback__)
        )
        if ours or not _broker_or_socket_gone(error):
            found.append(f"{record.name}: {record.getMessage()}: {error!r}")
    return found


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
    submit, with "Upgrade to full Tasmota now" turned off, creates the entry (first
    run) or ends with `flash_successful` (tests/test_flow_upgrade.py leaves it on).
    """
    result: Any = await hass.config_entries.flow.async_configure(flow_id)
    if result["type"] is FlowResultType.FORM and result["step_id"] == "finish":
        shown = dict(result["description_placeholders"])
        result = await hass.config_entries.flow.async_configure(flow_id, {"upgrade": False})
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


# -- virtual devices on loopback -------------------------------------------------------------

SONOFFS: dict[int, VirtualSonoff] = {}
"""The whole virtual Sonoff behind each eWeLink device a test holds."""


@asynccontextmanager
async def running_setup_device(
    hass: HomeAssistant,
    firmware: Firmware,
    settings: Settings,
    *,
    timeouts: Timeouts | None = None,
    **config: Any,
) -> AsyncIterator[SetupModeDevice]:
    """A virtual Sonoff in setup mode (Tasmota once flashed), the settings pointing at it."""
    sonoff = VirtualSonoff(
        "setup",
        setup=SetupModeConfig(finalstage_server=(LOOPBACK, settings.finalstage_port), **config),
        tasmota_plan=TasmotaPlan(ap_port=tasmota_ap_port(settings)),
    )
    async with sonoff:
        device = sonoff.ewelink
        assert isinstance(device, SetupModeDevice)
        SONOFFS[id(device)] = sonoff
        install_settings(
            hass,
            firmware,
            finalstage_port=settings.finalstage_port,
            setup_ap_url=device.ap_url,
            tasmota_ap_url=settings.tasmota_ap_url,
            **({"timeouts": timeouts} if timeouts is not None else {}),
        )
        try:
            yield device
        finally:
            SONOFFS.pop(id(device), None)


@contextmanager
def held_download(monkeypatch: pytest.MonkeyPatch) -> Iterator[asyncio.Event]:
    """With `Fault.STALL`, the device pauses after a chunk until released (not forever).

    So the restart does not close a listener while the device connects to it (a race
    that the debug event loop reports as an error of the test's loop, not of the flow).
    """
    release = asyncio.Event()

    async def stall(self: EwelinkStation) -> None:
        self._log("download_stalled", {})
        await release.wait()

    monkeypatch.setattr(EwelinkStation, "_stall", stall)
    yield release


@asynccontextmanager
async def setup_device(
    hass: HomeAssistant, *, timeouts: Timeouts | None = None, **config: Any
) -> AsyncIterator[tuple[SetupModeDevice, Firmware, Settings]]:
    """Firmware served, a setup-mode device running (`config`), HA's http set up."""
    async with local_firmware() as firmware:
        settings = install_settings(hass, firmware)
        async with running_setup_device(
            hass, firmware, settings, timeouts=timeouts, **config
        ) as device:
            assert await async_setup_component(hass, "http", {})
            yield device, firmware, settings


@asynccontextmanager
async def diy_device(
    hass: HomeAssistant, *, tasmota_size: int = 480_000, **config: Any
) -> AsyncIterator[tuple[DiyDevice, Firmware]]:
    """Firmware served, a DIY-mode device running (`config`), HA's http set up."""
    async with local_firmware(tasmota_size) as firmware:
        settings = install_settings(hass, firmware)
        sonoff = VirtualSonoff(
            "diy",
            diy=DiyConfig(**config),
            tasmota_plan=TasmotaPlan(ap_port=tasmota_ap_port(settings)),
        )
        async with sonoff:
            device = sonoff.ewelink
            assert isinstance(device, DiyDevice)
            SONOFFS[id(device)] = sonoff
            assert await async_setup_component(hass, "http", {})
            try:
                yield device, firmware
            finally:
                SONOFFS.pop(id(device), None)


@asynccontextmanager
async def bare_diy_devices(count: int, first: int) -> AsyncIterator[list[DiyDevice]]:
    """`count` eWeLink DIY devices alone (no Tasmota behind them), each from its own
    127.0.0.x source address, numbered from `first`."""
    devices = [
        DiyDevice(DiyConfig(deviceid=f"1000e4{first + i:04x}", source_host=f"127.0.0.{first + i}"))
        for i in range(count)
    ]
    try:
        for device in devices:
            await device.start()
        yield devices
    finally:
        for device in devices:
            await device.stop()


def flashed(device: DiyDevice) -> bytes | None:
    """The image the device has at the Arduino offset (None: never flashed)."""
    return device.flash.image_at(ARDUINO_OFFSET)


# -- the flow, as the user drives it ------------------------------------------------------------

REAL_MQTT_FLOWS = [
    pytest.mark.mosquitto,
    pytest.mark.parametrize("expected_lingering_timers", [True]),
    pytest.mark.parametrize("expected_lingering_tasks", [True]),
]
"""`pytestmark` of the modules whose flows run on: every flow needs HA's MQTT (flashed
devices report through it), a real Mosquitto. MQTT's periodic timer and hatasmota's
debounce outlive a test by design."""


def add_entry(hass: HomeAssistant, **data: Any) -> MockConfigEntry:
    """An earlier run's entry: the home Wi-Fi (plus `data`) is known, not asked again."""
    entry = MockConfigEntry(domain=DOMAIN, unique_id=DOMAIN, data={**WIFI, **data})
    entry.add_to_hass(hass)
    return entry


async def pick_path(hass: HomeAssistant, path: str) -> dict[str, Any]:
    """The user opens the flow, gives the home Wi-Fi and picks `path` from the menu."""
    result: Any = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_USER}
    )
    result = await hass.config_entries.flow.async_configure(result["flow_id"], WIFI)
    assert result["type"] is FlowResultType.MENU
    return dict(
        await hass.config_entries.flow.async_configure(result["flow_id"], {"next_step_id": path})
    )


async def close_dialog(hass: HomeAssistant, flow_id: str) -> None:
    """The user closes the flow's dialog (whatever step it is at)."""
    hass.config_entries.flow.async_abort(flow_id)
    await hass.async_block_till_done()


async def start_setup_mode_flash(hass: HomeAssistant, **fields: Any) -> dict[str, Any]:
    """Setup mode: the user keeps the callback address (127.0.0.1) and starts the flash.

    The host moves its own Wi-Fi (the harness's `wifi_hop`), and the form says so.
    `fields` are more of the form's fields (e.g. `firmware`).
    """
    result: Any = await pick_path(hass, "setup_mode")
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "setup_mode"
    assert result["description_placeholders"]["wifi_plan"].startswith("you move this host")
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"callback_host": LOOPBACK, **fields}
    )
    assert result["type"] is FlowResultType.SHOW_PROGRESS, result
    return dict(result)


class Announcing(Protocol):
    """A DIY device here, or one in another process (`bench.device_host`)."""

    def announcement(self) -> MdnsAnnouncement:
        """The device's `_ewelink._tcp` record."""


async def discover(hass: HomeAssistant, device: Announcing) -> dict[str, Any]:
    """HA's zeroconf hands the device's `_ewelink._tcp` announcement to the flow."""
    record = device.announcement()
    result = await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": config_entries.SOURCE_ZEROCONF},
        data=ZeroconfServiceInfo(
            ip_address=ip_address(record.address),
            ip_addresses=[ip_address(record.address)],
            port=record.port,
            hostname=record.server,
            type=record.service_type,
            name=record.name,
            properties=dict(record.properties),
        ),
    )
    return dict(result)


async def enter_address(hass: HomeAssistant, flow_id: str, port: int) -> dict[str, Any]:
    """DIY by hand: the user types the device's address (127.0.0.1 and its `port`)."""
    return dict(
        await hass.config_entries.flow.async_configure(flow_id, {"host": LOOPBACK, "port": port})
    )


async def answer(hass: HomeAssistant, flow_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """The user submits a step, and gives the home Wi-Fi when the flow asks for it next."""
    result: Any = await hass.config_entries.flow.async_configure(flow_id, data)
    if result["type"] is FlowResultType.FORM and result["step_id"] == "user":
        result = await hass.config_entries.flow.async_configure(flow_id, WIFI)
    return dict(result)


async def submit(hass: HomeAssistant, flow_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """`answer`; when that starts the flash, let it end and fetch what follows."""
    result = await answer(hass, flow_id, data)
    if result["type"] is not FlowResultType.SHOW_PROGRESS:
        return result
    await hass.async_block_till_done(wait_background_tasks=True)
    return await flow_result(hass, flow_id)


async def flash_result(hass: HomeAssistant, flow_id: str) -> dict[str, Any]:
    """Let the progress task run to its end, then fetch the flow's result as the UI does.

    The flow must still be there: progress refreshes must never run it to its end
    behind the frontend's back (that showed "Invalid flow specified" in the UI).
    """
    await hass.async_block_till_done(wait_background_tasks=True)
    flows = {flow["flow_id"] for flow in hass.config_entries.flow.async_progress()}
    assert flow_id in flows, "the flow ended before the frontend could fetch its result"
    return await flow_result(hass, flow_id)


async def confirm_and_flash(hass: HomeAssistant, flow_id: str) -> dict[str, Any]:
    """The user confirms the DIY device (giving the Wi-Fi if asked); the flash runs to its end."""
    result = await answer(hass, flow_id, {})
    assert result["type"] is FlowResultType.SHOW_PROGRESS, result
    return await flash_result(hass, flow_id)


async def start_flashes(hass: HomeAssistant, devices: Iterable[DiyDevice]) -> list[dict[str, Any]]:
    """Every device is discovered and its flash confirmed, all before any of them ends."""
    flows = [await discover(hass, device) for device in devices]
    for flow in flows:
        result = await hass.config_entries.flow.async_configure(flow["flow_id"], {})
        assert result["type"] is FlowResultType.SHOW_PROGRESS
    return flows


def finished_device_id(final: dict[str, Any]) -> str:
    """The HA device the finish step points at (`/config/devices/device/<id>`)."""
    device_id: str = final["description_placeholders"]["device_path"].rsplit("/", 1)[1]
    return device_id
