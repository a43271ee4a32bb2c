"""Setup mode with HA hopping its own Wi-Fi through (fake) NetworkManager, end to end.

What cannot exist here is the radio. `tests/proto/fake_networkmanager.py` runs a fake NM on a
private dbus-daemon; the device's ITEAD AP and FinalStage AP exist in the fake exactly while
the virtual Sonoff has them up, and the loopback ports standing for 10.10.7.1:80 and
192.168.4.2:8080 accept connections only while the fake reports the matching Wi-Fi connection
active (`Gate`, driven by the fake's `on_connection` hook). Everything else is real: D-Bus,
TLS, HTTP, MQTT, HA's config flow.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.setup import async_setup_component
import pytest

from custom_components.sonoff_ota.settings import Timeouts
from tests.harness import (
    LOOPBACK,
    REAL_MQTT_FLOWS,
    close_dialog,
    flash_result,
    install_settings,
    local_firmware,
    pick_path,
    tasmota_ap_port,
    wait_until,
    watching_frontend,
)
from tests.proto.fake_networkmanager import (
    BusConfig,
    FakeNetworkManager,
    NmEnv,
    bus_config,
    running_fake_nm,
    unix_sockets_allowed,
)
from tests.wifi_gate import Gate, mirror_radio, mirror_tasmota_radio
from virtual_sonoff.flash_memory import ARDUINO_OFFSET
from virtual_sonoff.lifecycle import TasmotaPlan, VirtualSonoff
from virtual_sonoff.profile import Timing
from virtual_sonoff.setup_mode import SetupModeConfig, SetupModeDevice, Stage as DeviceStage

pytestmark = REAL_MQTT_FLOWS

DEVICEID = "10000b77c1"
ITEAD = f"ITEAD-{DEVICEID}"


@dataclass
class HopWorld:
    """The fake NM, the device and the two gates."""

    env: NmEnv
    device: SetupModeDevice
    ap_gate: Gate
    finalstage_gate: Gate
    tasmota_gate: Gate
    connections: list[tuple[str, bool]]
    sonoff: VirtualSonoff

    @property
    def nm(self) -> FakeNetworkManager:
        return self.env.nm


@pytest.fixture
def bus(tmp_path: Path, socket_enabled: None) -> Iterator[BusConfig]:
    """The bus config; phcc blocks AF_UNIX connects unless allowed (see the fake)."""
    with unix_sockets_allowed():
        yield bus_config(tmp_path)


@asynccontextmanager
async def hop_world(
    hass: HomeAssistant, bus: BusConfig, *, itead_psk: str = "12345678", **nm_kwargs: Any
) -> AsyncIterator[HopWorld]:
    async with local_firmware() as firmware:
        settings = install_settings(hass, firmware)
        finalstage_gate = Gate((LOOPBACK, settings.finalstage_port))
        # Tasmota's AP (192.168.4.1) is reachable only while the host is joined to it.
        tasmota_gate = Gate((LOOPBACK, tasmota_ap_port(settings)))
        sonoff = VirtualSonoff(
            "setup",
            setup=SetupModeConfig(
                deviceid=DEVICEID,
                finalstage_server=(LOOPBACK, finalstage_gate.port),
                # E2A's reboot must outlast the radio mirror's 10 ms poll (FinalStage flaps).
                timing=Timing(reboot_delay=0.2),
            ),
            tasmota_plan=TasmotaPlan(ap_port=tasmota_ap_port(settings)),
        )
        nm = FakeNetworkManager(**nm_kwargs)
        async with running_fake_nm(bus, nm) as env, sonoff:
            device = sonoff.ewelink
            assert isinstance(device, SetupModeDevice)
            ap_gate = Gate(device.ap_address)
            connections: list[tuple[str, bool]] = []

            def on_connection(ssid: str, up: bool) -> None:
                connections.append((ssid, up))
                if ssid == ITEAD:
                    ap_gate.set(up)
                elif ssid == "FinalStage":
                    finalstage_gate.set(up)
                elif ssid.startswith("tasmota"):
                    tasmota_gate.set(up)

            nm.on_connection.append(on_connection)
            if itead_psk != "12345678":
                mirror = asyncio.create_task(asyncio.sleep(0))
                nm.add_ap(ITEAD, itead_psk)
            else:
                mirror = asyncio.create_task(mirror_radio(device, nm, ITEAD))
            install_settings(
                hass,
                firmware,
                finalstage_port=settings.finalstage_port,
                setup_ap_url=f"http://{LOOPBACK}:{ap_gate.port}",
                tasmota_ap_url=f"http://{LOOPBACK}:{tasmota_gate.port}",
                wifi_hop="networkmanager",
                nm_bus_address=env.address,
                timeouts=Timeouts(
                    setup_ap=5,
                    dispatch=5,
                    upgrade=10,
                    finalstage=10,
                    tasmota_ap=5,
                    discovery=10,
                    pinning_grace=0.3,
                    wifi_join=3,
                    wifi_scan=0.05,
                ),
            )
            tasmota_mirror = asyncio.create_task(mirror_tasmota_radio(sonoff, nm))
            assert await async_setup_component(hass, "http", {})
            try:
                yield HopWorld(
                    env, device, ap_gate, finalstage_gate, tasmota_gate, connections, sonoff
                )
            finally:
                for task in (mirror, tasmota_mirror):
                    task.cancel()
                await asyncio.gather(mirror, tasmota_mirror, return_exceptions=True)
                await ap_gate.close()
                await finalstage_gate.close()
                await tasmota_gate.close()


async def test_flash_with_automatic_wifi_hops(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None
) -> None:
    """ITEAD, home, FinalStage (twice: it reboots in between), home, Tasmota's AP, home.

    Nobody touches Wi-Fi and no phone is needed: Tasmota's AP is reachable only through
    the hop (a gate opens while NM is joined to it).
    """
    async with hop_world(hass, bus) as world:
        form = await pick_path(hass, "setup_mode")
        assert form["type"] is FlowResultType.FORM
        assert form["description_placeholders"]["wifi_backend"] == "networkmanager"
        assert form["description_placeholders"]["wifi_interface"] == "wlan0"
        assert form["description_placeholders"]["wifi_plan"] == (
            "this host joins the device's networks by itself through NetworkManager on wlan0."
        )
        assert "confirm_wifi_only" not in str(form["data_schema"].schema)
        result = await hass.config_entries.flow.async_configure(
            form["flow_id"], {"callback_host": LOOPBACK}
        )
        assert result["type"] is FlowResultType.SHOW_PROGRESS
        final = await flash_result(hass, result["flow_id"])
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        device = world.device
        await device.wait_for_stage(DeviceStage.TASMOTA)
        assert device.flash.image_at(ARDUINO_OFFSET) is not None
        assert device.finalstage_sessions == 2
        assert world.ap_gate.opened == 1
        assert world.finalstage_gate.opened == 2  # re-joined after the E2A reboot
        ups = [ssid for ssid, up in world.connections if up]
        assert ups[:3] == [ITEAD, "HomeNet", "FinalStage"]
        tasmota = world.sonoff.tasmota
        assert tasmota is not None
        assert ups[-2:] == [tasmota.ap_ssid, "HomeNet"]
        assert world.tasmota_gate.opened == 1
        assert tasmota.config.ssid1 == "HomeNet"  # configured by HA over the hop
        assert world.nm.wifi_ssid() == "HomeNet"  # restored at the end
        assert world.nm.checkpoints == {}
        assert not [p for p in world.nm.settings.values() if p.conn_id.startswith("sonoff-ota")]


async def test_hop_progress_speaks_has_language(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None
) -> None:
    """The hop's live status in the progress text follows HA's language (German here)."""
    hass.config.language = "de"
    async with hop_world(hass, bus), watching_frontend(hass) as watch:
        form = await pick_path(hass, "setup_mode")
        result = await hass.config_entries.flow.async_configure(
            form["flow_id"], {"callback_host": LOOPBACK}
        )
        watch.flow_id = result["flow_id"]
        final = await flash_result(hass, result["flow_id"])
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        await hass.async_block_till_done()
    texts = watch.progress_placeholders("wifi_hop")
    assert any(text.startswith("mit FinalStage verbunden als 192.168.4.2") for text in texts), texts
    assert not any(" as 192.168." in text for text in texts), "no English left"


async def test_lan_on_a_device_subnet_is_refused(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None
) -> None:
    async with hop_world(hass, bus, eth_address="192.168.4.10/24") as world:
        result = await pick_path(hass, "setup_mode")
        assert result["type"] is FlowResultType.ABORT
        assert result["reason"] == "wifi_lan_clash"
        assert "192.168.4.0/24" in result["description_placeholders"]["detail"]
        assert "AddAndActivateConnection2" not in world.nm.log.names()


async def test_wifi_only_host_needs_an_explicit_confirmation(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None
) -> None:
    async with hop_world(hass, bus, eth_address=None) as world:
        form = await pick_path(hass, "setup_mode")
        assert form["type"] is FlowResultType.FORM
        assert "confirm_wifi_only" in str(form["data_schema"].schema)
        again = await hass.config_entries.flow.async_configure(
            form["flow_id"], {"callback_host": LOOPBACK, "confirm_wifi_only": False}
        )
        assert again["type"] is FlowResultType.FORM
        assert again["errors"] == {"confirm_wifi_only": "needs_confirmation"}
        assert "AddAndActivateConnection2" not in world.nm.log.names()
        started = await hass.config_entries.flow.async_configure(
            form["flow_id"], {"callback_host": LOOPBACK, "confirm_wifi_only": True}
        )
        assert started["type"] is FlowResultType.SHOW_PROGRESS
        await wait_until(lambda: world.device.reached(DeviceStage.JOINING_WIFI), within=10)
        await close_dialog(hass, started["flow_id"])
        await wait_until(lambda: world.nm.wifi_ssid() == "HomeNet")


async def test_abort_mid_hop_restores_the_network(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None
) -> None:
    """The user closes the dialog while the (fake) radio is still associating to ITEAD."""
    async with hop_world(hass, bus) as world:
        world.nm.hold_activation = True
        form = await pick_path(hass, "setup_mode")
        result = await hass.config_entries.flow.async_configure(
            form["flow_id"], {"callback_host": LOOPBACK}
        )
        await wait_until(lambda: "AddAndActivateConnection2" in world.nm.log.names(), within=10)
        assert world.nm.wifi_ssid() is None  # home dropped, ITEAD still associating
        await close_dialog(hass, result["flow_id"])
        world.nm.hold_activation = False
        await wait_until(lambda: world.nm.wifi_ssid() == "HomeNet")
        assert "CheckpointRollback" in world.nm.log.names()
        assert world.device.stage is DeviceStage.AP_MODE  # nothing reached the device


async def test_wrong_psk_ends_with_its_message(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None
) -> None:
    """The setup AP does not take 12345678 (e.g. a changed firmware)."""
    async with hop_world(hass, bus, itead_psk="other-psk") as world:
        form = await pick_path(hass, "setup_mode")
        result = await hass.config_entries.flow.async_configure(
            form["flow_id"], {"callback_host": LOOPBACK}
        )
        final = await flash_result(hass, result["flow_id"])
        assert final["type"] is FlowResultType.ABORT
        assert final["reason"] == "wifi_wrong_psk"
        assert final["description_placeholders"]["ssid"] == ITEAD
        assert final["description_placeholders"]["interface"] == "wlan0"
        assert world.nm.wifi_ssid() == "HomeNet"
        assert world.ap_gate.opened == 0
