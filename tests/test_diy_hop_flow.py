"""The DIY hand-off without a phone: HA hops its own Wi-Fi onto Tasmota's first-boot AP.

Only the Wi-Fi radio is mocked. `tests/proto/fake_networkmanager.py` runs a fake
NetworkManager on a private dbus-daemon (and `tests/proto/fake_supervisor.py` a fake
Supervisor network API on 127.0.0.1); Tasmota's open `tasmota_XXXXXX-NNNN` AP is in their
scan lists exactly while the virtual Tasmota has it up, and the loopback port standing for
192.168.4.1 (`Gate`) accepts connections only while the fake reports the host joined to it.
Everything else is real: the DIY REST calls and downloads, HA's config flow and dashboard
install, D-Bus, HTTP, a real Mosquitto and HA's mqtt and tasmota integrations.

Every outcome ends with the home network restored: success, the hop failing (phone link),
the Backlog failing, the user closing the dialog mid-hop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.exceptions import HomeAssistantError
from homeassistant.setup import async_setup_component
import pytest
import yarl

from custom_components.sonoff_ota.device_flashes import BatchOutcome, DeviceFlashes
from custom_components.sonoff_ota.host_wifi_run import async_tasmota_ap_hop
from custom_components.sonoff_ota.known_devices import get_device
from custom_components.sonoff_ota.proto.flash_stages import FlashPath, FlashTracker
from custom_components.sonoff_ota.proto.wifi import WifiSettings
from custom_components.sonoff_ota.settings import Timeouts
from tests.dashboard_device import setup_entry
from tests.harness import (
    LOOPBACK,
    REAL_MQTT_FLOWS,
    SONOFFS,
    WIFI,
    assert_tasmota_switch_works,
    close_dialog,
    confirm_and_flash,
    discover,
    finished_device_id,
    flash_result,
    install_settings,
    local_firmware,
    tasmota_ap_port,
    wait_until,
    watching_frontend,
)
from tests.proto.fake_networkmanager import (
    BusConfig,
    FakeNetworkManager,
    bus_config,
    running_fake_nm,
    unix_sockets_allowed,
)
from tests.proto.fake_supervisor import FakeSupervisor, running_supervisor
from tests.wifi_gate import Gate
from virtual_sonoff.diy import DiyConfig, DiyDevice, DiyStage
from virtual_sonoff.lifecycle import TasmotaPlan, VirtualSonoff
from virtual_sonoff.tasmota import TasmotaMode, VirtualTasmota

pytestmark = REAL_MQTT_FLOWS

HOME = WIFI["ssid"]
TIMEOUTS = Timeouts(
    diy_request=2,
    diy_flash=10,
    diy_reboot=5,
    tasmota_ap=8,
    discovery=15,
    wifi_join=3,
    wifi_scan=0.05,
)


@dataclass
class Radio:
    """What the fake host Wi-Fi shows and does (NetworkManager or the Supervisor)."""

    show: Callable[[str, str | None], object]
    hide: Callable[[str], object]
    on_wifi: Callable[[], str | None]
    """The SSID the host's Wi-Fi is on now (None while it is off or associating)."""
    ups: list[str] = field(default_factory=list)
    """Every SSID the host's Wi-Fi came up on, in order."""


@dataclass
class DiyHopWorld:
    """The devices, the gate standing for 192.168.4.1, and the fake radio."""

    sonoffs: list[VirtualSonoff]
    gate: Gate
    radio: Radio
    ap_port: int
    """The real loopback port of the Tasmota AP (what a phone on that AP reaches)."""

    def device(self, index: int = 0) -> DiyDevice:
        device = self.sonoffs[index].ewelink
        assert isinstance(device, DiyDevice)
        return device

    def tasmota(self, index: int = 0) -> VirtualTasmota:
        tasmota = self.sonoffs[index].tasmota
        assert tasmota is not None
        return tasmota

    def tasmota_ups(self) -> list[str]:
        return [ssid for ssid in self.radio.ups if ssid.startswith("tasmota_")]


@pytest.fixture
def bus(tmp_path: Path, socket_enabled: None) -> Iterator[BusConfig]:
    """The bus config; phcc blocks AF_UNIX connects unless allowed (see the fake)."""
    with unix_sockets_allowed():
        yield bus_config(tmp_path)


def diy_configs(count: int) -> list[DiyConfig]:
    return [
        DiyConfig(
            deviceid=f"1000dd{index:04x}",
            sta_mac=f"D8:F1:5B:DD:00:{index:02X}",
            source_host=f"127.0.0.{40 + index}",
        )
        for index in range(count)
    ]


async def mirror_tasmota_aps(
    sonoffs: list[VirtualSonoff],
    radio: Radio,
    *,
    psk: str | None,
    before_shown: Callable[[VirtualTasmota], None] | None,
) -> None:
    """Each Tasmota's first-boot AP is in the scan list while it is up."""
    shown: dict[int, str] = {}
    while True:
        for sonoff in sonoffs:
            tasmota = sonoff.tasmota
            up = tasmota is not None and tasmota.mode is TasmotaMode.AP
            if up and id(sonoff) not in shown:
                assert tasmota is not None
                if before_shown is not None:
                    before_shown(tasmota)
                shown[id(sonoff)] = tasmota.ap_ssid
                radio.show(tasmota.ap_ssid, psk)
            elif not up and id(sonoff) in shown:
                radio.hide(shown.pop(id(sonoff)))
        await asyncio.sleep(0.01)


@asynccontextmanager
async def diy_hop_world(
    hass: HomeAssistant,
    radio_settings: dict[str, Any],
    radio: Radio,
    *,
    count: int = 1,
    ap_psk: str | None = None,
    before_shown: Callable[[VirtualTasmota], None] | None = None,
) -> AsyncIterator[DiyHopWorld]:
    """`count` DIY devices on loopback, HA's settings hopping through `radio_settings`."""
    async with local_firmware(tasmota_size=200_000) as firmware, AsyncExitStack() as stack:
        ap_port = tasmota_ap_port(install_settings(hass, firmware))
        gate = Gate((LOOPBACK, ap_port))
        stack.push_async_callback(gate.close)
        install_settings(
            hass,
            firmware,
            tasmota_ap_url=f"http://{LOOPBACK}:{gate.port}",
            timeouts=TIMEOUTS,
            **radio_settings,
        )
        plan = TasmotaPlan(ap_port=ap_port)
        sonoffs = []
        for config in diy_configs(count):
            sonoff = VirtualSonoff("diy", diy=config, tasmota_plan=plan)
            await stack.enter_async_context(sonoff)
            sonoffs.append(sonoff)
            assert isinstance(sonoff.ewelink, DiyDevice)
            SONOFFS[id(sonoff.ewelink)] = sonoff
        mirror = asyncio.create_task(
            mirror_tasmota_aps(sonoffs, radio, psk=ap_psk, before_shown=before_shown)
        )

        async def stop_mirror() -> None:
            mirror.cancel()
            await asyncio.gather(mirror, return_exceptions=True)

        stack.push_async_callback(stop_mirror)
        assert await async_setup_component(hass, "http", {})
        yield DiyHopWorld(sonoffs, gate, radio, ap_port)


@asynccontextmanager
async def nm_radio(
    bus: BusConfig,
) -> AsyncIterator[tuple[dict[str, Any], Radio, FakeNetworkManager]]:
    """The fake NetworkManager on its private bus, the gate following its connections."""
    nm = FakeNetworkManager()
    async with running_fake_nm(bus, nm) as env:
        radio = Radio(
            show=nm.add_ap,
            hide=nm.remove_ap,
            on_wifi=nm.wifi_ssid,
        )
        yield {"wifi_hop": "networkmanager", "nm_bus_address": env.address}, radio, nm


def follow_radio(world: DiyHopWorld, nm: FakeNetworkManager) -> None:
    def on_connection(ssid: str, up: bool) -> None:
        if up:
            world.radio.ups.append(ssid)
        if ssid.startswith("tasmota_"):
            world.gate.set(up)

    nm.on_connection.append(on_connection)


def assert_nm_restored(nm: FakeNetworkManager) -> None:
    """Home again, nothing of ours left in NetworkManager."""
    assert nm.wifi_ssid() == HOME
    assert nm.checkpoints == {}
    assert not [p for p in nm.settings.values() if p.conn_id.startswith("sonoff-ota")]


async def phone_sends_the_link(hass: HomeAssistant, flow_id: str, world: DiyHopWorld) -> None:
    """The user's phone joins Tasmota's AP and opens the one-tap link the flow shows."""
    link = ""

    async def shown() -> bool:
        nonlocal link
        result = await hass.config_entries.flow.async_configure(flow_id)
        link = (result.get("description_placeholders") or {}).get("phone_link", "")
        return bool(link)

    async with asyncio.timeout(15):
        while not await shown():  # noqa: ASYNC110 - the frontend polls the step, too
            await asyncio.sleep(0.05)
    # The phone is on the AP: it reaches 192.168.4.1 itself, not through this host's gate.
    url = yarl.URL(link, encoded=True).with_port(world.ap_port)
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200


# -- the config flow ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "joined"), [("en", "on {} as"), ("de", "mit {} verbunden als")]
)
async def test_diy_flow_hops_to_tasmotas_ap_and_back(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None, language: str, joined: str
) -> None:
    """Discovered, confirmed, flashed; HA joins tasmota_… itself, sends the Backlog, goes home.

    Tasmota's AP is reachable only through the hop (the gate opens while NM is joined),
    so the device in HA proves the hop configured it; no phone link was needed. The
    hop's status in the progress text is in HA's language.
    """
    hass.config.language = language
    async with (
        nm_radio(bus) as (settings, radio, nm),
        diy_hop_world(hass, settings, radio) as world,
        watching_frontend(hass) as watch,
    ):
        follow_radio(world, nm)
        flow = await discover(hass, world.device())
        assert flow["step_id"] == "diy_confirm"
        watch.flow_id = flow["flow_id"]
        final = await confirm_and_flash(hass, flow["flow_id"])
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        tasmota = world.tasmota()
        assert world.radio.ups == [tasmota.ap_ssid, HOME]
        assert world.gate.opened == 1
        assert tasmota.config.ssid1 == HOME  # configured by HA over the hop
        assert_nm_restored(nm)
        await assert_tasmota_switch_works(hass, finished_device_id(final), tasmota)
        await hass.async_block_till_done()
    actions = {
        r.get("progress_action") for r in watch.fetched if r["type"] is FlowResultType.SHOW_PROGRESS
    }
    assert "tasmota_ap_wifi_hop" in actions, actions
    hops = watch.progress_placeholders("wifi_hop")
    on_ap = f"{joined.format(tasmota.ap_ssid)} 192.168.4.2"
    assert any(text.startswith(on_ap) for text in hops), hops


async def test_failed_hop_falls_back_to_the_phone_link(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None
) -> None:
    """NM cannot join tasmota_… (it wants a key): home again at once, then the phone link."""
    async with (
        nm_radio(bus) as (settings, radio, nm),
        diy_hop_world(hass, settings, radio, ap_psk="not-open") as world,
    ):
        follow_radio(world, nm)
        flow = await discover(hass, world.device())
        started = await hass.config_entries.flow.async_configure(flow["flow_id"], {})
        if started["type"] is FlowResultType.FORM and started["step_id"] == "user":
            started = await hass.config_entries.flow.async_configure(flow["flow_id"], WIFI)
        assert started["type"] is FlowResultType.SHOW_PROGRESS
        await phone_sends_the_link(hass, flow["flow_id"], world)
        final = await flash_result(hass, flow["flow_id"])
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        assert world.gate.opened == 0  # never reached through the host
        assert world.tasmota_ups() == []
        assert world.tasmota().config.ssid1 == HOME  # the phone configured it
        assert_nm_restored(nm)


async def test_backlog_refused_ends_with_its_message_and_home_again(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None
) -> None:
    """The hop works but Tasmota refuses the Backlog (a web password): error, network back."""

    def lock(tasmota: VirtualTasmota) -> None:
        tasmota.config.web_password = "someone-else"

    async with (
        nm_radio(bus) as (settings, radio, nm),
        diy_hop_world(hass, settings, radio, before_shown=lock) as world,
    ):
        follow_radio(world, nm)
        flow = await discover(hass, world.device())
        final = await confirm_and_flash(hass, flow["flow_id"])
        assert final["type"] is FlowResultType.ABORT
        assert final["reason"] == "tasmota_denied"
        assert world.gate.opened == 1
        assert world.tasmota_ups() == [world.tasmota().ap_ssid]
        assert_nm_restored(nm)


async def test_closing_the_dialog_mid_hop_restores_the_network(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None
) -> None:
    """The user closes the dialog while the (fake) radio still associates to tasmota_…."""
    async with (
        nm_radio(bus) as (settings, radio, nm),
        diy_hop_world(
            hass, settings, radio, before_shown=lambda _: setattr(nm, "hold_activation", True)
        ) as world,
    ):
        follow_radio(world, nm)
        flow = await discover(hass, world.device())
        started = await hass.config_entries.flow.async_configure(flow["flow_id"], {})
        if started["type"] is FlowResultType.FORM and started["step_id"] == "user":
            started = await hass.config_entries.flow.async_configure(flow["flow_id"], WIFI)
        assert started["type"] is FlowResultType.SHOW_PROGRESS
        await wait_until(lambda: "AddAndActivateConnection2" in nm.log.names(), within=20)
        assert nm.wifi_ssid() is None  # home dropped, tasmota_… still associating
        await close_dialog(hass, flow["flow_id"])
        nm.hold_activation = False
        await wait_until(lambda: nm.wifi_ssid() == HOME)
        assert "CheckpointRollback" in nm.log.names()
        assert world.gate.opened == 0
        assert_nm_restored(nm)
        await hass.async_block_till_done(wait_background_tasks=True)


async def test_diy_flow_hops_through_the_supervisor(
    hass: HomeAssistant,
    socket_enabled: None,
    real_mqtt: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same hand-off through the Supervisor's network API (a fake one on 127.0.0.1)."""
    supervisor = FakeSupervisor(token="sup-token", home_ssid=HOME, home_psk=WIFI["wifi_password"])
    monkeypatch.setenv("SUPERVISOR_TOKEN", "sup-token")

    def on_wifi() -> str | None:
        wlan = supervisor.wlan0
        return wlan.active.ssid if wlan.connected and wlan.active is not None else None

    radio = Radio(
        show=supervisor.access_points.__setitem__,
        hide=lambda ssid: supervisor.access_points.pop(ssid, None),
        on_wifi=on_wifi,
    )
    async with running_supervisor(supervisor) as url:
        settings = {"wifi_hop": "supervisor", "supervisor_url": url}
        async with diy_hop_world(hass, settings, radio) as world:

            async def follow() -> None:
                last: str | None = HOME
                while True:
                    now = on_wifi()
                    if now != last and now is not None:
                        radio.ups.append(now)
                    last = now
                    world.gate.set(now is not None and now.startswith("tasmota_"))
                    await asyncio.sleep(0.005)

            follower = asyncio.create_task(follow())
            try:
                flow = await discover(hass, world.device())
                final = await confirm_and_flash(hass, flow["flow_id"])
            finally:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
            assert final["type"] is FlowResultType.CREATE_ENTRY, final
            tasmota = world.tasmota()
            assert radio.ups == [tasmota.ap_ssid, HOME]
            assert tasmota.config.ssid1 == HOME
            assert on_wifi() == HOME  # restored
            await assert_tasmota_switch_works(hass, finished_device_id(final), tasmota)
            await hass.async_block_till_done()


# -- the dashboard --------------------------------------------------------------------------


async def test_dashboard_batch_hops_once_per_hand_off_turn(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None
) -> None:
    """ "Flash all eligible devices" with two devices: each hop inside its own hand-off turn.

    The flashes overlap; the hops do not: tasmota_A, home, tasmota_B, home.
    """
    async with (
        nm_radio(bus) as (settings, radio, nm),
        diy_hop_world(hass, settings, radio, count=2) as world,
    ):
        follow_radio(world, nm)
        entry = await setup_entry(hass)
        for index in range(2):
            flow = await discover(hass, world.device(index))
            assert flow["step_id"] == "diy_confirm"
        await hass.async_block_till_done()
        flashes: DeviceFlashes = entry.runtime_data.flashes
        ids = [world.device(index).config.deviceid for index in range(2)]
        async with asyncio.timeout(90):
            results = await flashes.async_flash_many(ids)
        assert [r.outcome for r in results] == [BatchOutcome.DONE] * 2, results
        for index in range(2):
            await world.device(index).wait_for_stage(DiyStage.TASMOTA, 10)
            assert world.tasmota(index).config.ssid1 == HOME
            record = get_device(entry, ids[index])
            assert record is not None and record.state == "tasmota"
        aps = [world.tasmota(index).ap_ssid for index in range(2)]
        ups = world.radio.ups
        assert sorted(ups[0::2]) == sorted(aps) and ups[1::2] == [HOME, HOME], ups
        assert world.gate.opened == 2
        assert_nm_restored(nm)
        for progress in hass.config_entries.flow.async_progress():
            hass.config_entries.flow.async_abort(progress["flow_id"])
        await hass.async_block_till_done(wait_background_tasks=True)


async def test_dashboard_install_restores_after_a_refused_backlog(
    hass: HomeAssistant, bus: BusConfig, real_mqtt: None
) -> None:
    """The update entity's install: the hop works, the Backlog is refused, home again."""

    def lock(tasmota: VirtualTasmota) -> None:
        tasmota.config.web_password = "someone-else"

    async with (
        nm_radio(bus) as (settings, radio, nm),
        diy_hop_world(hass, settings, radio, before_shown=lock) as world,
    ):
        follow_radio(world, nm)
        entry = await setup_entry(hass)
        flow = await discover(hass, world.device())
        assert flow["step_id"] == "diy_confirm"
        flashes: DeviceFlashes = entry.runtime_data.flashes
        deviceid = world.device().config.deviceid
        with pytest.raises(HomeAssistantError) as caught:
            await flashes.async_install(deviceid)
        assert caught.value.translation_key == "tasmota_denied"
        assert world.gate.opened == 1
        assert_nm_restored(nm)
        await hass.async_block_till_done(wait_background_tasks=True)


async def test_wifi_only_host_keeps_the_phone_link(
    hass: HomeAssistant, bus: BusConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """The Wi-Fi carries HA's own LAN and nobody confirmed losing it: no hop, nothing moved."""
    nm = FakeNetworkManager(eth_address=None)
    async with running_fake_nm(bus, nm) as env, local_firmware() as firmware:
        install_settings(hass, firmware, wifi_hop="networkmanager", nm_bus_address=env.address)
        tracker = FlashTracker(FlashPath.DIY, device_label="1000dd0000")
        hop = await async_tasmota_ap_hop(hass, tracker, WifiSettings(HOME, "correct-horse"))
        assert hop is None
        assert "needs_confirmation" in caplog.text
        assert "AddAndActivateConnection2" not in nm.log.names()
        assert "CheckpointCreate" not in nm.log.names()
        assert nm.wifi_ssid() == HOME
