"""The integration's server side: views on HA's server, private listeners, device claims."""

from __future__ import annotations

import socket

import aiohttp
from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
import pytest
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from custom_components.sonoff_ota.flash_server import DeviceBusyError, async_get_flash_server
from custom_components.sonoff_ota.listeners import PortInUseError
from custom_components.sonoff_ota.proto.flash_stages import FlashPath, FlashTracker
from custom_components.sonoff_ota.settings import SETTINGS_KEY, Settings
from virtual_sonoff.images import tasmota_lite

LOOPBACK = "127.0.0.1"


@pytest.fixture
def loopback_settings(hass: HomeAssistant) -> Settings:
    settings = Settings(tls_bind=LOOPBACK, tls_port=0, finalstage_bind=LOOPBACK, finalstage_port=0)
    hass.data[SETTINGS_KEY] = settings
    return settings


async def test_device_views_on_has_server_answer_404_never_401(
    hass: HomeAssistant, hass_client_no_auth: ClientSessionGenerator, socket_enabled: None
) -> None:
    assert await async_setup_component(hass, "http", {})
    server = await async_get_flash_server(hass)
    assert await async_get_flash_server(hass) is server  # idempotent
    client = await hass_client_no_auth()
    served = server.images.add_set({"tasmota-lite.bin": tasmota_lite(20_000)})
    try:
        resp = await client.get("/api/sonoff_ota/fw/not-a-token/tasmota-lite.bin")
        assert resp.status == 404
        resp = await client.get(
            served.url_path("tasmota-lite.bin"),
            headers={"Range": "bytes=4096-8191", "Host": "dl.itead.cn"},
        )
        assert resp.status == 206
        assert resp.headers["Content-Range"] == "bytes 4096-8191/20000"
        assert await resp.read() == tasmota_lite(20_000)[4096:8192]
        resp = await client.post("/api/device/otaFlash", data=b"not json")
        assert resp.status == 200
        resp = await client.post("/dispatch/device", data=b"{}")
        assert resp.status == 200
    finally:
        server.images.remove_set(served)


async def test_private_listeners_open_only_while_needed(
    hass: HomeAssistant, loopback_settings: Settings, socket_enabled: None
) -> None:
    assert await async_setup_component(hass, "http", {})
    server = await async_get_flash_server(hass)
    served = server.images.add_set({"image_arduino.bin": tasmota_lite(8_192)})
    server.images.mount_fixed(served)
    async with server.listeners(plain=True):
        port = server.plain_port
        async with server.listeners(plain=True):  # a second flash shares the listener
            assert server.plain_port == port
        async with aiohttp.ClientSession(version=aiohttp.HttpVersion10) as session:
            async with session.get(f"http://{LOOPBACK}:{port}/ota/image_arduino.bin") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Length"] == "8192"
                assert await resp.read() == tasmota_lite(8_192)
            async with session.get(f"http://{LOOPBACK}:{port}/api/config") as resp:
                assert resp.status == 404, "HA's API must not be reachable on the listener"
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect((LOOPBACK, port))


async def test_port_in_use_is_reported(hass: HomeAssistant, socket_enabled: None) -> None:
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        port = holder.getsockname()[1]
        hass.data[SETTINGS_KEY] = Settings(finalstage_bind=LOOPBACK, finalstage_port=port)
        assert await async_setup_component(hass, "http", {})
        server = await async_get_flash_server(hass)
        with pytest.raises(PortInUseError) as err:
            async with server.listeners(plain=True):
                pass
        assert err.value.port == port


async def test_two_flashes_of_one_device_are_refused(hass: HomeAssistant) -> None:
    assert await async_setup_component(hass, "http", {})
    server = await async_get_flash_server(hass)
    first = FlashTracker(FlashPath.DIY)
    server.claim("1000E4C17C", first)
    with pytest.raises(DeviceBusyError):
        server.claim("1000e4c17c", FlashTracker(FlashPath.SETUP_MODE))
    first.fail("timeout")
    server.claim("1000e4c17c", FlashTracker(FlashPath.DIY))  # a finished flash frees it
