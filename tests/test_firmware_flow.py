"""Choosing, refusing and reusing firmware images in the flow (issue 4), end to end.

The images come from a real HTTP server on 127.0.0.1 (tests.proto.firmware_server),
uploads go through HA's real `/api/file_upload` endpoint, and the devices are the
virtual DIY and setup-mode Sonoffs on loopback. Nothing is mocked. Every refusal
must happen before the device sees a byte: no `ota_flash`, no download.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import FormData
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.setup import async_setup_component
import pytest
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from custom_components.sonoff_ota.const import DOMAIN
from custom_components.sonoff_ota.flash_server import async_get_flash_server
from custom_components.sonoff_ota.proto.firmware_image import ImageRole
from custom_components.sonoff_ota.settings import Timeouts
from tests.harness import (
    REAL_MQTT_FLOWS,
    add_entry,
    bare_diy_devices,
    discover,
    diy_device,
    flash_result,
    flashed,
    flow_result,
    free_port,
    install_settings,
    local_firmware,
    setup_device,
    start_flashes,
    start_setup_mode_flash,
    submit,
)
from virtual_sonoff.diy import DiyDevice, DiyStage
from virtual_sonoff.flash_memory import ARDUINO_OFFSET
from virtual_sonoff.images import MAGIC_V2, make_image, tasmota_lite
from virtual_sonoff.setup_mode import Stage as DeviceStage

pytestmark = REAL_MQTT_FLOWS

OTHER_RELEASE = "14.4.1"


def untouched(device: DiyDevice) -> bool:
    """The device got no flash request and served no download."""
    return not device.downloads and not [r for r in device.requests if r.path.endswith("flash")]


async def upload(client_factory: ClientSessionGenerator, name: str, data: bytes) -> str:
    """Upload a file through HA's real file_upload endpoint; return its id."""
    client = await client_factory()
    form = FormData()
    form.add_field("file", data, filename=name, content_type="application/octet-stream")
    response = await client.post("/api/file_upload", data=form)
    assert response.status == 200, await response.text()
    file_id: str = (await response.json())["file_id"]
    return file_id


async def test_image_too_big_for_diy_sends_the_user_to_the_firmware_step(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    """The newest lite is too big and the older fallback is not served: no image fits.

    The flow says so (its own message), keeps the device untouched, and a release
    number typed into the firmware step then flashes exactly that release.
    """
    async with diy_device(hass, tasmota_size=520_193) as (device, firmware):
        good = tasmota_lite(470_000)
        firmware.server.files[f"tasmota-{OTHER_RELEASE}-lite.bin"] = good
        result = await discover(hass, device)
        result = await submit(hass, result["flow_id"], {})
        assert result["type"] is FlowResultType.FORM, result
        assert result["step_id"] == "firmware"
        assert result["errors"] == {"base": "firmware_no_suitable_image"}
        placeholders = result["description_placeholders"]
        assert placeholders["latest_error"] == "invalid_image"
        assert placeholders["fallback_version"] == "9.5.0"
        assert untouched(device)

        result = await submit(hass, result["flow_id"], {"tasmota_version": "nonsense"})
        assert result["errors"] == {"base": "firmware_bad_version"}
        assert untouched(device)

        final = await submit(hass, result["flow_id"], {"tasmota_version": f"v{OTHER_RELEASE}"})
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        await device.wait_for_stage(DiyStage.TASMOTA, 10)
        assert flashed(device) == good


@pytest.mark.parametrize(
    ("name", "data", "error"),
    [
        ("esp32.bin", make_image(480_000, magic=MAGIC_V2), "firmware_bad_magic"),
        ("dio.bin", make_image(480_000, flash_mode=2), "firmware_bad_flash_mode"),
        ("lite.bin", b"\x1f\x8b" + bytes(300_000), "firmware_gzip"),
        ("tasmota-lite.bin.gz", tasmota_lite(), "firmware_gzip_name"),
        ("tasmota-minimal.bin", tasmota_lite(), "firmware_minimal_build"),
        ("page.bin", b"<html>not found</html>", "firmware_too_small"),
        ("huge.bin", bytes(1024 * 1024 + 1), "firmware_download_too_large"),
    ],
    ids=lambda value: value if isinstance(value, str) and not value.endswith(".bin") else "",
)
async def test_bad_image_urls_get_their_own_message_and_never_reach_the_device(
    *,
    hass: HomeAssistant,
    socket_enabled: None,
    real_mqtt: None,
    name: str,
    data: bytes,
    error: str,
) -> None:
    async with diy_device(hass) as (device, firmware):
        firmware.server.files[name] = data
        url = firmware.server.url(name)
        result = await discover(hass, device)
        result = await submit(hass, result["flow_id"], {"firmware": {"firmware_url": url}})
        assert result["type"] is FlowResultType.FORM, result
        assert result["step_id"] == "firmware"
        assert result["errors"] == {"base": error}
        assert result["description_placeholders"]["source"] == url
        assert untouched(device)
        # The same (still bad) choice, submitted again, is refused again.
        result = await submit(hass, result["flow_id"], {"firmware_url": url})
        assert result["errors"] == {"base": error}
        assert untouched(device)
        # Emptying the field means "the newest lite": that one is good.
        final = await submit(hass, result["flow_id"], {})
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        assert flashed(device) == firmware.tasmota


@pytest.mark.parametrize(
    ("trouble", "error"),
    [("missing", "firmware_http_status"), ("truncated", "firmware_truncated")],
)
async def test_failed_downloads_say_why(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None, trouble: str, error: str
) -> None:
    async with diy_device(hass) as (device, firmware):
        name = "custom.bin"
        if trouble == "truncated":
            firmware.server.files[name] = tasmota_lite()
            firmware.server.truncate.add(name)
        result = await discover(hass, device)
        result = await submit(
            hass, result["flow_id"], {"firmware": {"firmware_url": firmware.server.url(name)}}
        )
        assert result["step_id"] == "firmware"
        assert result["errors"] == {"base": error}
        assert untouched(device)
        cache = hass.config.path(DOMAIN, "firmware", "images")
        stored = await hass.async_add_executor_job(_listing, cache)
        assert stored == [], "a failed download must never reach the cache"


def _listing(path: str) -> list[str]:
    folder = Path(path)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


async def test_a_bad_upload_is_refused_on_the_form_and_a_good_one_is_flashed(
    hass: HomeAssistant,
    socket_enabled: None,
    real_mqtt: None,
    hass_client: ClientSessionGenerator,
) -> None:
    async with diy_device(hass) as (device, _firmware):
        assert await async_setup_component(hass, "file_upload", {})
        result = await discover(hass, device)
        flow_id = result["flow_id"]
        bad = await upload(hass_client, "tasmota.bin", make_image(480_000, flash_mode=0))
        result = await submit(hass, flow_id, {"firmware": {"firmware_file": bad}})
        assert result["type"] is FlowResultType.FORM
        assert result["step_id"] == "diy_confirm", "the form it was picked in says why"
        assert result["errors"] == {"base": "firmware_bad_flash_mode"}
        assert result["description_placeholders"]["found_name"] == "QIO"
        assert untouched(device)

        result = await submit(
            hass,
            flow_id,
            {"firmware": {"firmware_file": bad, "tasmota_version": "14.4.1"}},
        )
        assert result["errors"] == {"base": "firmware_choose_one"}

        mine = tasmota_lite(460_000)
        good = await upload(hass_client, "my-tasmota.bin", mine)
        final = await submit(hass, flow_id, {"firmware": {"firmware_file": good}})
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        await device.wait_for_stage(DiyStage.TASMOTA, 10)
        assert flashed(device) == mine


async def test_offline_with_a_warm_cache_says_so_then_flashes_the_cached_copy(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with diy_device(hass) as (device, firmware):
        store = (await async_get_flash_server(hass)).firmware
        warm = await store.get_tasmota(ImageRole.DIY)  # an earlier flash fetched it
        await firmware.server.down()
        result = await discover(hass, device)
        result = await submit(hass, result["flow_id"], {})
        assert result["type"] is FlowResultType.FORM, result
        assert result["step_id"] == "firmware_offline"
        placeholders = result["description_placeholders"]
        assert placeholders["sha256"] == warm.sha256
        assert placeholders["reason"] == "unreachable"
        assert untouched(device), "the user is asked before the device sees anything"
        final = await submit(hass, result["flow_id"], {})
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        assert flashed(device) == firmware.tasmota


async def test_offline_with_a_cold_cache_stops_before_the_flash(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with diy_device(hass) as (device, firmware):
        await firmware.server.down()
        result = await discover(hass, device)
        result = await submit(hass, result["flow_id"], {})
        assert result["step_id"] == "firmware"
        assert result["errors"] == {"base": "firmware_unreachable_no_cache"}
        assert (
            result["description_placeholders"]["url"] == firmware.settings()["tasmota_latest_url"]
        )
        assert untouched(device)
        # Back online: submitting the unchanged (empty) choice retries and flashes.
        await firmware.server.start()
        final = await submit(hass, result["flow_id"], {})
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        assert flashed(device) == firmware.tasmota


async def test_two_flows_needing_the_same_image_download_it_once(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with local_firmware() as firmware:
        install_settings(
            hass,
            firmware,
            tasmota_ap_url=f"http://127.0.0.1:{free_port()}",
            timeouts=Timeouts(diy_request=2, diy_flash=20, tasmota_ap=0.5, discovery=0.5),
        )
        assert await async_setup_component(hass, "http", {})
        add_entry(hass)
        async with bare_diy_devices(2, first=30) as devices:
            firmware.server.gate = asyncio.Event()  # hold the first download open
            flows = await start_flashes(hass, devices)
            await asyncio.sleep(0.2)
            firmware.server.gate.set()
            await hass.async_block_till_done(wait_background_tasks=True)
            for device in devices:
                await device.wait_for_stage(DiyStage.TASMOTA, 20)
                assert flashed(device) == firmware.tasmota
            assert firmware.server.requests["tasmota-lite.bin"] == 1
            for flow in flows:
                await flow_result(hass, flow["flow_id"])


async def test_setup_mode_flashes_the_release_chosen_in_the_form(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with setup_device(hass) as (device, firmware, _):
        chosen = tasmota_lite(500_000)
        firmware.server.files[f"tasmota-{OTHER_RELEASE}-lite.bin"] = chosen
        result = await start_setup_mode_flash(hass, firmware={"tasmota_version": OTHER_RELEASE})
        final = await flash_result(hass, result["flow_id"])
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        await device.wait_for_stage(DeviceStage.TASMOTA)
        assert device.flash.image_at(ARDUINO_OFFSET) == chosen
        assert firmware.server.requests["tasmota-lite.bin"] == 0
