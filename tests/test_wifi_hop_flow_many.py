"""Several Sonoffs in pairing mode at once, flashed one after another with HA hopping its Wi-Fi.

What cannot exist here is the radio (as in `test_wifi_hop_flow`): a fake NetworkManager on a
private dbus-daemon shows each virtual Sonoff's `ITEAD-<id>` AP while that device has it up.
Each device's setup AP (10.10.7.1:80 on a real network, the same address for every device)
listens on its own loopback port; one gate stands for 10.10.7.1 and forwards to the device
whose ITEAD network the fake reports joined, only while it is joined. Tasmota's first-boot
AP (192.168.4.1) is routed the same way by its SSID. Everything else is real: D-Bus, TLS,
HTTP, Mosquitto, HA's mqtt and tasmota integrations, HA's config flow.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import device_registry as dr
from homeassistant.setup import async_setup_component
import pytest

from custom_components.sonoff_ota.settings import Timeouts
from tests.harness import (
    LOOPBACK,
    REAL_MQTT_FLOWS,
    Firmware,
    flash_result,
    free_port,
    install_settings,
    local_firmware,
    pick_path,
    watching_frontend,
)
from tests.proto.fake_networkmanager import (
    BusConfig,
    FakeNetworkManager,
    bus_config,
    running_fake_nm,
    unix_sockets_allowed,
)
from tests.proto.legacy_clients import expect_failed_handshakes
from tests.wifi_gate import Gate, mirror_radio, mirror_tasmota_radio
from virtual_sonoff.flash_memory import ARDUINO_OFFSET
from virtual_sonoff.lifecycle import TasmotaPlan, VirtualSonoff
from virtual_sonoff.profile import Fault, Timing
from virtual_sonoff.setup_mode import SetupModeConfig, SetupModeDevice, Stage as DeviceStage

pytestmark = REAL_MQTT_FLOWS

DEVICES = (("10000a11a1", "5C:CF:7F:0A:11:A1"), ("10000b22b2", "5C:CF:7F:0B:22:B2"))
"""(deviceid, station MAC) of the two Sonoffs; the list is sorted, so A comes first."""
FIRMWARE_FILES = ("image_user1-0x01000.bin", "image_user2-0x81000.bin", "tasmota-lite.bin")


@pytest.fixture
def bus(tmp_path: Path, socket_enabled: None) -> Iterator[BusConfig]:
    """The bus config; phcc blocks AF_UNIX connects unless allowed (see the fake)."""
    with unix_sockets_allowed():
        yield bus_config(tmp_path)


@dataclass
class Sonoff:
    """One virtual Sonoff of the world, with its ITEAD SSID and its Tasmota AP port."""

    ssid: str
    sonoff: VirtualSonoff
    tasmota_port: int

    @property
    def device(self) -> SetupModeDevice:
        device = self.sonoff.ewelink
        assert isinstance(device, SetupModeDevice)
        return device


@dataclass
class ManyWorld:
    """The fake NM, the two devices, the gates, and what NM joined in order."""

    nm: FakeNetworkManager
    firmware: Firmware
    sonoffs: list[Sonoff]
    ap_gate: Gate
    tasmota_gate: Gate
    connections: list[tuple[str, bool]]
    radios: list[asyncio.Task[None]]

    def unplug(self, index: int) -> None:
        """The device leaves pairing mode: its ITEAD network is gone from the scan."""
        self.radios[index].cancel()
        self.nm.remove_ap(self.sonoffs[index].ssid)


@asynccontextmanager
async def many_world(
    hass: HomeAssistant,
    bus: BusConfig,
    *,
    faults: dict[str, Fault] | None = None,
    dispatch: float = 10,
    setup_ap: float = 5,
) -> AsyncIterator[ManyWorld]:
    """Two Sonoffs in pairing mode at once, both visible to the (fake) NetworkManager."""
    faults = faults or {}
    async with local_firmware() as firmware, AsyncExitStack() as stack:
        settings = install_settings(hass, firmware)
        finalstage_gate = Gate((LOOPBACK, settings.finalstage_port))
        sonoffs: list[Sonoff] = []
        for deviceid, mac in DEVICES:
            config = SetupModeConfig(
                deviceid=deviceid,
                sta_mac=mac,
                finalstage_server=(LOOPBACK, finalstage_gate.port),
                timing=Timing(reboot_delay=0.2),  # outlasts the radio mirror's 10 ms poll
            )
            if deviceid in faults:
                config.faults.add(faults[deviceid])
            tasmota_port = free_port()
            sonoff = VirtualSonoff(
                "setup", setup=config, tasmota_plan=TasmotaPlan(ap_port=tasmota_port)
            )
            await stack.enter_async_context(sonoff)
            sonoffs.append(Sonoff(f"ITEAD-{deviceid}", sonoff, tasmota_port))
        nm = FakeNetworkManager()
        env = await stack.enter_async_context(running_fake_nm(bus, nm))
        by_ssid = {s.ssid: s for s in sonoffs}
        # 10.10.7.1 and 192.168.4.1 are one address for every device: which device answers
        # there depends only on which network NM is on.
        ap_gate = Gate(sonoffs[0].device.ap_address)
        tasmota_gate = Gate((LOOPBACK, sonoffs[0].tasmota_port))
        connections: list[tuple[str, bool]] = []

        def on_connection(ssid: str, up: bool) -> None:
            connections.append((ssid, up))
            if ssid in by_ssid:
                ap_gate.target = by_ssid[ssid].device.ap_address
                ap_gate.set(up)
            elif ssid == "FinalStage":
                finalstage_gate.set(up)
            elif ssid.startswith("tasmota"):
                for s in sonoffs:
                    if s.sonoff.tasmota is not None and s.sonoff.tasmota.ap_ssid == ssid:
                        tasmota_gate.target = (LOOPBACK, s.tasmota_port)
                tasmota_gate.set(up)

        nm.on_connection.append(on_connection)
        radios = [
            asyncio.create_task(mirror_radio(s.device, nm, s.ssid, join_timeout=120))
            for s in sonoffs
        ]
        mirrors = radios + [
            asyncio.create_task(mirror_tasmota_radio(s.sonoff, nm)) for s in sonoffs
        ]
        install_settings(
            hass,
            firmware,
            finalstage_port=settings.finalstage_port,
            setup_ap_url=f"http://{LOOPBACK}:{ap_gate.port}",
            tasmota_ap_url=f"http://{LOOPBACK}:{tasmota_gate.port}",
            wifi_hop="networkmanager",
            nm_bus_address=env.address,
            timeouts=Timeouts(
                setup_ap=setup_ap,
                dispatch=dispatch,
                upgrade=10,
                finalstage=10,
                tasmota_ap=5,
                discovery=10,
                pinning_grace=0.3,
                wifi_join=3,
                wifi_scan=0.05,
            ),
        )
        assert await async_setup_component(hass, "http", {})
        try:
            yield ManyWorld(nm, firmware, sonoffs, ap_gate, tasmota_gate, connections, radios)
        finally:
            for task in mirrors:
                task.cancel()
            await asyncio.gather(*mirrors, return_exceptions=True)
            for gate in (ap_gate, finalstage_gate, tasmota_gate):
                await gate.close()


async def start_and_list(hass: HomeAssistant) -> dict[str, Any]:
    """Start a hands-free setup-mode flash with both devices in range: the list comes up."""
    form = await pick_path(hass, "setup_mode")
    assert form["type"] is FlowResultType.FORM, form
    started = await hass.config_entries.flow.async_configure(
        form["flow_id"], {"callback_host": LOOPBACK}
    )
    assert started["type"] is FlowResultType.SHOW_PROGRESS
    listed = await flash_result(hass, started["flow_id"])
    assert listed["type"] is FlowResultType.FORM, listed
    assert listed["step_id"] == "pick_setup_aps"
    return listed


def offered(form: dict[str, Any]) -> tuple[list[dict[str, str]], list[str]]:
    """The list's options (value, label) and its default selection."""
    (key,) = form["data_schema"].schema
    selector = form["data_schema"].schema[key]
    return list(selector.config["options"]), key.default()


async def run_to_summary(hass: HomeAssistant, flow_id: str, chosen: list[str]) -> dict[str, Any]:
    """Submit the list, then let each device's flash end, as the UI would, up to the summary.

    A watching frontend may already have moved the flow on to the next device.
    """
    result: Any = await hass.config_entries.flow.async_configure(flow_id, {"setup_aps": chosen})
    assert result["type"] is FlowResultType.SHOW_PROGRESS, result
    for _ in chosen:
        if result["type"] is not FlowResultType.SHOW_PROGRESS:
            break
        result = await flash_result(hass, flow_id)
    assert result["type"] is FlowResultType.FORM, result
    assert result["step_id"] == "many_finish"
    return dict(result)


async def test_two_devices_are_listed_and_flashed_one_after_another(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None
) -> None:
    """Both devices end up in HA as Tasmota devices; the images are downloaded once."""
    async with many_world(hass, bus) as world, watching_frontend(hass) as watch:
        listed = await start_and_list(hass)
        watch.flow_id = listed["flow_id"]
        options, default = offered(listed)
        ssids = [s.ssid for s in world.sonoffs]
        assert options == [
            {"value": ssids[0], "label": DEVICES[0][0]},
            {"value": ssids[1], "label": DEVICES[1][0]},
        ]
        assert default == ssids  # all chosen by default
        assert listed["description_placeholders"] == {"count": "2"}
        assert world.ap_gate.opened == 0  # the scan only looked: nothing was joined yet
        summary = await run_to_summary(hass, listed["flow_id"], default)
        placeholders = summary["description_placeholders"]
        assert placeholders["flashed"] == "2"
        assert placeholders["count"] == "2"
        lines = placeholders["results"].splitlines()
        assert len(lines) == 2
        for line, (deviceid, _mac) in zip(lines, DEVICES, strict=True):
            assert line.startswith(f"- {deviceid}: runs Tasmota, in Home Assistant as "), line
        done = await hass.config_entries.flow.async_configure(listed["flow_id"], {})
        assert done["type"] is FlowResultType.CREATE_ENTRY, done
        assert done["description"] == "many_finished"
        await hass.async_block_till_done()
        texts = watch.progress_placeholders("device_number")
    for sonoff in world.sonoffs:
        device = sonoff.device
        assert device.reached(DeviceStage.TASMOTA)
        assert device.flash.image_at(ARDUINO_OFFSET) is not None
        tasmota = sonoff.sonoff.tasmota
        assert tasmota is not None
        assert tasmota.config.ssid1 == "HomeNet"  # configured by HA over the hop
    # Each image was fetched once, for both devices.
    assert {name: world.firmware.server.requests[name] for name in FIRMWARE_FILES} == dict.fromkeys(
        FIRMWARE_FILES, 1
    )
    ups = [ssid for ssid, up in world.connections if up]
    first, second = (ups.index(s.ssid) for s in world.sonoffs)
    assert first < second  # one after another, A first
    assert world.ap_gate.opened == 2
    assert world.nm.wifi_ssid() == "HomeNet"
    assert world.nm.checkpoints == {}
    # Both devices are in HA (tasmota integration over the real broker).
    registry = dr.async_get(hass)
    (tasmota_entry,) = hass.config_entries.async_entries("tasmota")
    macs = {
        connection
        for device in dr.async_entries_for_config_entry(registry, tasmota_entry.entry_id)
        for connection in device.connections
    }
    for _deviceid, mac in DEVICES:
        assert (dr.CONNECTION_NETWORK_MAC, dr.format_mac(mac)) in macs, macs
    # The progress said which device of the two was being flashed.
    assert "1" in texts and "2" in texts, texts


async def test_progress_names_the_device_in_has_language(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None
) -> None:
    """ "Device n of N (id): <stage text>", the stage text in HA's language (German here)."""
    hass.config.language = "de"
    async with many_world(hass, bus), watching_frontend(hass) as watch:
        listed = await start_and_list(hass)
        watch.flow_id = listed["flow_id"]
        _options, default = offered(listed)
        summary = await run_to_summary(hass, listed["flow_id"], default[1:])  # only B
        assert summary["description_placeholders"]["count"] == "1"
        await hass.config_entries.flow.async_configure(listed["flow_id"], {})
        await hass.async_block_till_done()
    progress = [
        r
        for r in watch.fetched
        if r["type"] is FlowResultType.SHOW_PROGRESS and r.get("description_placeholders")
    ]
    assert progress
    assert {r["progress_action"] for r in progress} == {"many_flash"}
    ids = {r["description_placeholders"]["device_id"] for r in progress}
    assert ids == {DEVICES[1][0]}
    stage_texts = [r["description_placeholders"]["stage_text"] for r in progress]
    assert any("mit FinalStage verbunden als 192.168.4.2" in text for text in stage_texts)
    assert {r["description_placeholders"]["device_count"] for r in progress} == {"1"}


async def test_a_device_that_fails_does_not_stop_the_next(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None
) -> None:
    """A never dispatches (it trusts only the vendor's certificate); B is still flashed."""
    # A's station retries its refused handshake until it is stopped (see the single-device test).
    async with (
        expect_failed_handshakes(1),
        many_world(hass, bus, faults={DEVICES[0][0]: Fault.REFUSE_TLS}, dispatch=2) as world,
    ):
        listed = await start_and_list(hass)
        _options, default = offered(listed)
        summary = await run_to_summary(hass, listed["flow_id"], default)
        placeholders = summary["description_placeholders"]
        assert placeholders["flashed"] == "1"
        first, second = placeholders["results"].splitlines()
        assert first == (
            f"- {DEVICES[0][0]}: not flashed. This device's eWeLink firmware (?) only "
            "trusts the vendor's certificate, so setup mode cannot flash it. If it runs "
            "eWeLink 3.3 to 3.7, use the DIY path; otherwise only a serial flash can free it."
        )
        assert second.startswith(f"- {DEVICES[1][0]}: runs Tasmota"), second
        done = await hass.config_entries.flow.async_configure(listed["flow_id"], {})
        assert done["type"] is FlowResultType.CREATE_ENTRY, done
        await hass.async_block_till_done()
    a, b = world.sonoffs
    assert a.device.reached(DeviceStage.TLS_REJECTED)
    assert not a.device.reached(DeviceStage.TASMOTA)
    assert b.device.reached(DeviceStage.TASMOTA)
    assert world.nm.wifi_ssid() == "HomeNet"
    assert world.firmware.server.requests["tasmota-lite.bin"] == 1


async def test_a_device_that_left_pairing_mode_times_out_and_the_next_goes_on(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None
) -> None:
    """A's ITEAD network is gone after the list came up: no retry menu, B is still flashed."""
    async with many_world(hass, bus, setup_ap=1) as world:
        listed = await start_and_list(hass)
        _options, default = offered(listed)
        world.unplug(0)
        summary = await run_to_summary(hass, listed["flow_id"], default)
        placeholders = summary["description_placeholders"]
        assert placeholders["flashed"] == "1"
        first, second = placeholders["results"].splitlines()
        assert first == f"- {DEVICES[0][0]}: not flashed, no answer in time (stage wait_setup_ap)"
        assert second.startswith(f"- {DEVICES[1][0]}: runs Tasmota"), second
        await hass.config_entries.flow.async_configure(listed["flow_id"], {})
        await hass.async_block_till_done()
    a, b = world.sonoffs
    assert a.device.stage is DeviceStage.AP_MODE  # nothing reached it
    assert b.device.reached(DeviceStage.TASMOTA)
    assert next(ssid for ssid, up in world.connections if up) == b.ssid
    assert world.nm.wifi_ssid() == "HomeNet"
