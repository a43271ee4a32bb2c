"""The virtual Sonoff's ITEAD AP (spec setup-mode-ota.md §5): /device, /ap, lost reply.

Real HTTP on 127.0.0.1 stands for 10.10.7.1:80; the Wi-Fi radio cannot exist
here, so "joining the home Wi-Fi" is the device moving on to the fake cloud on
127.0.0.1 (tests/emulator/setup_peers.py).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from virtual_sonoff.profile import Fault, Faults
from virtual_sonoff.setup_mode import SetupModeConfig, SetupModeDevice, Stage

from .setup_peers import CloudScript, FakeCloud, legacy_server_context, write_self_signed

DEVICEID = "10000b77c1"
APIKEY = "289a1f0a-1111-2222-3333-fbceb92fe43b"
WIFI_PASSWORD = "home-wifi-secret"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One RSA-2048 certificate for the module (generated outside the event loop)."""
    return write_self_signed(tmp_path_factory.mktemp("tls"))


def _config(**kwargs: object) -> SetupModeConfig:
    return SetupModeConfig(deviceid=DEVICEID, apikey=APIKEY, **kwargs)  # type: ignore[arg-type]


async def _raw_post(host: str, port: int, path: str, body: bytes) -> bytes:
    """A POST like SonOTA's httplib2 call: JSON body, no Content-Type header."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: 10.10.7.1\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def _ap_body(port: int) -> dict[str, object]:
    return {
        "version": 4,
        "ssid": "home",
        "password": WIFI_PASSWORD,
        "serverName": "127.0.0.1",
        "port": port,
    }


async def test_device_and_ap_happy_path(socket_enabled: None, cert: tuple[Path, Path]) -> None:
    async with (
        FakeCloud(legacy_server_context(cert), script=CloudScript(send_upgrade=False)) as cloud,
        SetupModeDevice(_config()) as device,
    ):
        assert device.stage is Stage.AP_MODE
        host, port = device.ap_address
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{device.ap_url}/device") as response,
        ):
            assert response.status == 200
            assert json.loads(await response.read()) == {
                "deviceid": DEVICEID,
                "apikey": APIKEY,
                "accept": "post",
            }
        raw = await _raw_post(host, port, "/ap", json.dumps(_ap_body(cloud.port)).encode())
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(body) == {"error": 0}

        await device.wait_for_stage(Stage.CONNECTED, timeout=5)
        assert device.ap_settings is not None
        assert device.ap_settings.server_name == "127.0.0.1"
        assert device.ap_settings.port == cloud.port
        # After /ap the ITEAD AP is gone: its URL stops answering.
        with pytest.raises(OSError):
            await asyncio.open_connection(host, port)
        assert cloud.dispatch_bodies[0]["deviceid"] == DEVICEID
        # Secrets never reach the event log or the repr.
        assert WIFI_PASSWORD not in repr(device.events)
        assert WIFI_PASSWORD not in repr(device.ap_settings)
        assert APIKEY not in repr(device.config)


async def test_ap_with_json_content_type(socket_enabled: None) -> None:
    async with SetupModeDevice(_config()) as device, aiohttp.ClientSession() as session:
        async with session.post(f"{device.ap_url}/ap", json=_ap_body(9)) as response:
            assert json.loads(await response.read()) == {"error": 0}
        await device.wait_for_stage(Stage.JOINING_WIFI, timeout=5)


async def test_malformed_ap_body_keeps_ap_up(socket_enabled: None) -> None:
    async with SetupModeDevice(_config()) as device, aiohttp.ClientSession() as session:
        async with session.post(f"{device.ap_url}/ap", json={"ssid": "home"}) as response:
            assert json.loads(await response.read()) == {"error": 400}
        async with session.get(f"{device.ap_url}/nothing") as response:
            assert response.status == 404
        assert device.stage is Stage.AP_MODE
        assert device.ap_settings is None


async def test_lost_ap_reply_still_proceeds_to_dispatch(
    socket_enabled: None, cert: tuple[Path, Path]
) -> None:
    config = _config(faults=Faults({Fault.LOSE_AP_REPLY}))
    async with (
        FakeCloud(legacy_server_context(cert), script=CloudScript(send_upgrade=False)) as cloud,
        SetupModeDevice(config) as device,
        aiohttp.ClientSession() as session,
    ):
        with pytest.raises(aiohttp.ClientError):
            async with session.post(f"{device.ap_url}/ap", json=_ap_body(cloud.port)) as response:
                await response.read()
        await device.wait_for_stage(Stage.DISPATCHING, timeout=5)
        await device.wait_for_stage(Stage.CONNECTED, timeout=5)
        assert len(cloud.dispatch_bodies) >= 1
        assert "ap_reply_lost" in device.event_kinds()
