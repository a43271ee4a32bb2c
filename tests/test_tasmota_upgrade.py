"""The "Tasmota firmware" entity and the options flow, with HA's real mqtt and tasmota.

A real Mosquitto carries everything between HA and the virtual Tasmota; the device
downloads its image over real HTTP from a 127.0.0.1 file server, which also serves
the "latest release" JSON in GitHub's shape. Nothing is mocked but the radio.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
import json
from typing import Any

from aiohttp import web
from homeassistant.components.update import UpdateEntityFeature
from homeassistant.const import ATTR_ENTITY_ID, ATTR_SUPPORTED_FEATURES
from homeassistant.core import Event, EventStateChangedData, HomeAssistant, callback
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr, entity_registry as er
from homeassistant.helpers.event import async_track_state_change_event
import pytest

from custom_components.sonoff_ota.const import DOMAIN
from custom_components.sonoff_ota.diagnostics import (
    async_get_config_entry_diagnostics,
    async_get_device_diagnostics,
)
from custom_components.sonoff_ota.options_flow import DEFAULTS, OPT_BUILD
from custom_components.sonoff_ota.proto.tasmota_releases import BuildChoice
from custom_components.sonoff_ota.settings import SETTINGS_KEY, Settings, Timeouts
from custom_components.sonoff_ota.tasmota_link import (
    async_ensure_tasmota_entry,
    async_wait_for_ha_device,
)
from custom_components.sonoff_ota.tasmota_upgrade_run import device_upgrades
from tests.dashboard_device import setup_entry
from tests.harness import wait_until
from tests.proto.firmware_server import FirmwareServer, firmware_server
from virtual_sonoff.images import make_image, tasmota_lite
from virtual_sonoff.mosquitto import MosquittoBroker
from virtual_sonoff.tasmota import TasmotaConfig, VirtualTasmota

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.parametrize("expected_lingering_timers", [True]),  # HA's MQTT client
    pytest.mark.parametrize("expected_lingering_tasks", [True]),  # hatasmota's debounce
]

MAC = "5CCF7F3D5E26"
HA_MAC = "5c:cf:7f:3d:5e:26"
DEVICEID = "1000e4c17c"
FULL = make_image(600_000, label="tasmota-full")  # incompressible: too big beside a lite
MINIMAL = make_image(300_000, label="tasmota-minimal")
SMALL_FULL = make_image(400_000, label="tasmota-full")  # fits beside the lite: no hop
UNIQUE_ID = f"{MAC}_tasmota_firmware"


@dataclass(slots=True)
class Rig:
    device: VirtualTasmota
    files: FirmwareServer
    entry: Any


@asynccontextmanager
async def releases_server(tag: str = "v14.5.0") -> AsyncIterator[str]:
    """GitHub's `releases/latest`, in its shape, on 127.0.0.1."""

    async def latest(request: web.Request) -> web.Response:
        body = {
            "tag_name": tag,
            "html_url": f"https://github.com/arendst/Tasmota/releases/tag/{tag}",
        }
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/latest", latest)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/latest"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def rig(
    hass: HomeAssistant,
    broker: MosquittoBroker,
    *,
    flashed_here: bool = True,
    files: dict[str, bytes] | None = None,
) -> AsyncIterator[Rig]:
    """A lite device on MQTT, known to HA's tasmota, and our entry (it flashed it, or not)."""
    served = {"tasmota.bin.gz": FULL, "tasmota-minimal.bin.gz": MINIMAL} if files is None else files
    async with (
        releases_server() as releases_url,
        firmware_server(served) as server,
        VirtualTasmota(
            tasmota_lite(),
            mac=MAC,
            full_version="14.5.0",
            config=TasmotaConfig(ssid1="home", mqtt_host=broker.host, mqtt_port=broker.port),
        ) as device,
    ):
        hass.data[SETTINGS_KEY] = Settings(
            tasmota_releases_url=releases_url,
            tasmota_ota_base_url=server.url("").rstrip("/"),
            timeouts=Timeouts(tasmota_upgrade=12),
        )
        await async_ensure_tasmota_entry(hass)
        await async_wait_for_ha_device(hass, MAC, within=10)
        devices = {}
        if flashed_here:
            devices = {DEVICEID: {"path": "diy", "state": "tasmota", "mac": HA_MAC}}
        entry = await setup_entry(hass, devices=devices)
        try:
            yield Rig(device, server, entry)
        finally:
            await hass.config_entries.async_unload(entry.entry_id)
            await hass.async_block_till_done()


def entity_id(hass: HomeAssistant) -> str | None:
    return er.async_get(hass).async_get_entity_id("update", DOMAIN, UNIQUE_ID)


async def shown(hass: HomeAssistant, installed: str) -> dict[str, Any]:
    """The entity's attributes once it shows `installed`."""
    await wait_until(lambda: entity_id(hass) is not None, within=10)
    eid = entity_id(hass)
    assert eid is not None
    await wait_until(
        lambda: (
            (s := hass.states.get(eid)) is not None
            and s.attributes.get("installed_version") == installed
        ),
        within=10,
    )
    state = hass.states.get(eid)
    assert state is not None
    return dict(state.attributes)


async def install(hass: HomeAssistant) -> list[tuple[str | None, int | None]]:
    """Press Install; the (stage, percentage) seen on the way."""
    eid = entity_id(hass)
    assert eid is not None
    seen: list[tuple[str | None, int | None]] = []

    @callback
    def record(event: Event[EventStateChangedData]) -> None:
        new = event.data["new_state"]
        if new is not None and new.attributes.get("in_progress"):
            seen.append((new.attributes.get("upgrade_stage"), new.attributes["update_percentage"]))

    unsubscribe = async_track_state_change_event(hass, [eid], record)
    try:
        await hass.services.async_call("update", "install", {ATTR_ENTITY_ID: eid}, blocking=True)
    finally:
        unsubscribe()
    return seen


async def test_flashed_device_upgrades_through_minimal_with_progress(
    hass: HomeAssistant, real_mqtt: None, broker: MosquittoBroker
) -> None:
    async with rig(hass, broker) as setup:
        attributes = await shown(hass, "14.4.1 (lite)")
        assert attributes["latest_version"] == "14.5.0 (tasmota)"
        assert (
            attributes["release_url"] == "https://github.com/arendst/Tasmota/releases/tag/v14.5.0"
        )
        features = UpdateEntityFeature(attributes[ATTR_SUPPORTED_FEATURES])
        assert {UpdateEntityFeature.INSTALL, UpdateEntityFeature.PROGRESS} <= set(features)
        eid = entity_id(hass)
        assert eid is not None
        assert (state := hass.states.get(eid)) is not None and state.state == "on"
        # it sits on the device with the Tasmota's MAC (HA 2025.x: HA's Tasmota device itself)
        entity = er.async_get(hass).async_get(eid)
        assert entity is not None and entity.device_id is not None
        device = dr.async_get(hass).async_get(entity.device_id)
        assert (dr.CONNECTION_NETWORK_MAC, HA_MAC) in getattr(device, "connections", set())

        seen = await install(hass)

        stages = [stage for stage, _ in seen]
        for expected in ("requested", "downloading", "rebooting", "minimal", "confirming"):
            assert expected in stages, stages
        percentages = [p for _, p in seen if p is not None]
        assert percentages == sorted(percentages), "progress never goes back"
        assert setup.device.ota_attempts == [
            setup.files.url("tasmota.bin.gz"),
            setup.files.url("tasmota-minimal.bin.gz"),
            setup.files.url("tasmota.bin.gz"),
        ]
        attributes = await shown(hass, "14.5.0 (tasmota)")
        assert attributes["in_progress"] is False
        assert (state := hass.states.get(eid)) is not None and state.state == "off"
        # the Tasmota integration's device learnt the new version from discovery
        (tasmota_entry,) = hass.config_entries.async_entries("tasmota")

        def sw_version() -> str | None:
            registry = dr.async_get(hass)
            (found,) = dr.async_entries_for_config_entry(registry, tasmota_entry.entry_id)
            return found.sw_version

        await wait_until(lambda: sw_version() == "14.5.0")


async def test_file_too_big_says_so_and_the_retry_works(
    hass: HomeAssistant, real_mqtt: None, broker: MosquittoBroker
) -> None:
    async with rig(hass, broker, files={"tasmota.bin.gz": FULL}) as setup:
        await shown(hass, "14.4.1 (lite)")
        with pytest.raises(HomeAssistantError) as caught:
            await install(hass)
        assert caught.value.translation_key == "upgrade_file_too_big"
        assert "too big" in str(caught.value)
        # Tasmota's last error was the missing -minimal sibling (its rescue for "too big")
        assert "File Not Found (404) for tasmota-minimal.bin.gz" in str(caught.value)
        eid = entity_id(hass)
        assert eid is not None
        state = hass.states.get(eid)
        assert state is not None
        assert state.attributes["in_progress"] is False
        assert state.attributes["upgrade_error"] == "upgrade_file_too_big"
        assert setup.device.version == "14.4.1(lite)"
        # Retry once the server offers the minimal step.
        setup.files.files["tasmota-minimal.bin.gz"] = MINIMAL
        await install(hass)
        await shown(hass, "14.5.0 (tasmota)")


async def test_unreachable_server_is_named(
    hass: HomeAssistant, real_mqtt: None, broker: MosquittoBroker
) -> None:
    async with rig(hass, broker) as setup:
        await shown(hass, "14.4.1 (lite)")
        await setup.files.down()
        with pytest.raises(HomeAssistantError) as caught:
            await install(hass)
        assert caught.value.translation_key == "upgrade_unreachable"
        assert "could not reach the download server" in str(caught.value)
        assert "connection failed" in str(caught.value)


async def test_foreign_devices_only_with_the_opt_in(
    hass: HomeAssistant, real_mqtt: None, broker: MosquittoBroker
) -> None:
    async with rig(hass, broker, flashed_here=False) as setup:
        await hass.async_block_till_done()
        assert entity_id(hass) is None, "not flashed here: no entity without the opt-in"

        result = await hass.config_entries.options.async_init(setup.entry.entry_id)
        assert result["type"] is FlowResultType.FORM
        result = await hass.config_entries.options.async_configure(
            result["flow_id"],
            {"build": "tasmota", "all_tasmota_devices": True},
        )
        assert result["type"] is FlowResultType.CREATE_ENTRY
        await hass.async_block_till_done()
        await shown(hass, "14.4.1 (lite)")

        # Withdrawn again: the entity goes.
        result = await hass.config_entries.options.async_init(setup.entry.entry_id)
        result = await hass.config_entries.options.async_configure(
            result["flow_id"], {"build": "tasmota", "all_tasmota_devices": False}
        )
        await hass.async_block_till_done()
        assert entity_id(hass) is None


def test_default_build_is_the_full_build() -> None:
    """`options_flow` names the default without importing the release code (idle)."""
    assert DEFAULTS[OPT_BUILD] == BuildChoice.TASMOTA


async def test_options_flow_chooses_the_build(
    hass: HomeAssistant, real_mqtt: None, broker: MosquittoBroker
) -> None:
    async with rig(hass, broker) as setup:
        await shown(hass, "14.4.1 (lite)")
        flow = await hass.config_entries.options.async_init(setup.entry.entry_id)
        result = await hass.config_entries.options.async_configure(
            flow["flow_id"], {"build": "url", "custom_url": "https://example.invalid/t.bin.gz"}
        )
        assert result["type"] is FlowResultType.FORM
        assert result["errors"] == {"custom_url": "url_not_plain_http"}
        result = await hass.config_entries.options.async_configure(
            flow["flow_id"], {"build": "url", "custom_url": ""}
        )
        assert result["errors"] == {"custom_url": "url_required"}
        result = await hass.config_entries.options.async_configure(
            flow["flow_id"], {"build": "localized", "language": "DE"}
        )
        assert result["type"] is FlowResultType.CREATE_ENTRY
        assert setup.entry.options["build"] == "localized"
        await hass.async_block_till_done()
        attributes = await shown(hass, "14.4.1 (lite)")
        assert attributes["latest_version"] == "14.5.0 (tasmota-DE)"

        setup.files.files["tasmota-DE.bin.gz"] = make_image(400_000, label="de")
        await install(hass)
        assert setup.device.ota_attempts == [setup.files.url("tasmota-DE.bin.gz")]
        await shown(hass, "14.5.0 (tasmota)")


async def test_ewelink_firmware_entity_names_the_release_and_has_notes(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """Part 5: `Tasmota 14.5.0 (lite)` once the release is known, notes instead of a spinner."""
    async with releases_server() as releases_url:
        hass.data[SETTINGS_KEY] = Settings(tasmota_releases_url=releases_url)
        devices = {DEVICEID: {"path": "diy", "host": "127.0.0.1", "port": 8081}}
        await setup_entry(hass, devices=devices)
        eid = f"update.sonoff_{DEVICEID}_firmware"
        await wait_until(
            lambda: (
                (s := hass.states.get(eid)) is not None
                and s.attributes.get("latest_version") == "Tasmota 14.5.0 (lite)"
            )
        )
        state = hass.states.get(eid)
        assert state is not None
        assert state.attributes["release_url"].endswith("/releases/tag/v14.5.0")
        features = UpdateEntityFeature(state.attributes[ATTR_SUPPORTED_FEATURES])
        assert UpdateEntityFeature.RELEASE_NOTES in features
        component = hass.data["update"]
        entity = component.get_entity(eid)
        notes = await entity.async_release_notes()
        assert notes is not None and "no way back to eWeLink" in notes


async def test_install_is_refused_while_a_timed_out_download_may_run_and_diagnostics_say_so(
    hass: HomeAssistant, real_mqtt: None, broker: MosquittoBroker
) -> None:
    """The server holds its answer past the upgrade's timeout: the device keeps trying."""
    async with rig(hass, broker, files={"tasmota.bin.gz": SMALL_FULL}) as setup:
        await shown(hass, "14.4.1 (lite)")
        settings = hass.data[SETTINGS_KEY]
        hass.data[SETTINGS_KEY] = settings._replace(
            timeouts=settings.timeouts._replace(tasmota_upgrade=1.5, tasmota_upgrade_cooldown=600),
        )
        gate = setup.files.gate = asyncio.Event()
        with pytest.raises(HomeAssistantError) as caught:
            await install(hass)
        assert caught.value.translation_key == "upgrade_timeout"
        with pytest.raises(HomeAssistantError) as refused:
            await install(hass)
        assert refused.value.translation_key == "upgrade_settling"
        assert "may still be downloading" in str(refused.value)
        assert "10 minutes" in str(refused.value)
        attempts = list(setup.device.ota_attempts)
        assert attempts == [setup.files.url("tasmota.bin.gz")], "no second OtaUrl/Upgrade"

        diagnostics = await async_get_config_entry_diagnostics(hass, setup.entry)
        upgrade = diagnostics["tasmota_upgrades"][MAC]
        assert upgrade["stage"] == "failed"
        assert upgrade["error"]["code"] == "timeout"
        assert [h["stage"] for h in upgrade["history"]][:2] == ["requested", "downloading"]
        assert upgrade["history"][-1] == {
            "at": upgrade["history"][-1]["at"],
            "stage": "failed",
            "note": "timeout",
        }
        assert_no_secrets(hass, diagnostics)

        gate.set()  # the download goes through; the device restarts and announces itself
        await shown(hass, "14.5.0 (tasmota)")
        await wait_until(lambda: not device_upgrades(hass, MAC).settling, within=20)
        assert setup.device.ota_attempts == attempts


async def test_custom_ota_url_credentials_stay_out_of_diagnostics(
    hass: HomeAssistant, real_mqtt: None, broker: MosquittoBroker
) -> None:
    async with rig(hass, broker, files={"tasmota.bin.gz": SMALL_FULL}) as setup:
        await shown(hass, "14.4.1 (lite)")
        url = setup.files.url("tasmota.bin.gz").replace("http://", "http://me:hunter22@")
        result = await hass.config_entries.options.async_init(setup.entry.entry_id)
        await hass.config_entries.options.async_configure(
            result["flow_id"], {"build": "url", "custom_url": url}
        )
        await hass.async_block_till_done()
        await shown(hass, "14.4.1 (lite)")
        await install(hass)
        diagnostics = await async_get_config_entry_diagnostics(hass, setup.entry)
        upgrade = diagnostics["tasmota_upgrades"][MAC]
        assert upgrade["stage"] == "done"
        assert "hunter22" not in json.dumps(diagnostics)
        assert upgrade["details"]["url"].startswith("http://**REDACTED**@127.0.0.1:")
        eid = entity_id(hass)
        assert eid is not None
        entity = er.async_get(hass).async_get(eid)
        assert entity is not None and entity.device_id is not None
        device: Any = dr.async_get(hass).async_get(entity.device_id)  # 2026.x: or a child
        assert device is not None
        per_device = await async_get_device_diagnostics(hass, setup.entry, device)
        assert per_device["tasmota_upgrade"]["stage"] == "done"
        assert "hunter22" not in json.dumps(per_device)


def assert_no_secrets(hass: HomeAssistant, diagnostics: dict[str, Any]) -> None:
    text = json.dumps(diagnostics)
    (mqtt_entry,) = hass.config_entries.async_entries("mqtt")
    for secret in (mqtt_entry.data.get("password"), "correct-horse"):
        if secret:
            assert secret not in text
