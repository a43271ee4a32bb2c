"""Firmware faults: a download that stalls, a cache that cannot be written.

- Stall: "ota.tasmota.com" is a raw TCP server on 127.0.0.1 that sends the
  response headers and a few bytes, then nothing (or one byte now and then:
  a trickle). The download must end with a clear `firmware_timeout`, never hang,
  keep nothing and leave no task behind; the server sees the connection closed.
- Cache: the tests run as root, so a read-only directory (chmod) does not stop a
  write, and a small full filesystem would need a mount. The write error is
  therefore injected where the store writes (`firmware_cache._write_atomic`
  raises `OSError(ENOSPC)` / `OSError(EROFS)`, exactly what the kernel returns);
  one case is real: the cache's `images` path is a regular file, so every write
  fails with the kernel's own NotADirectoryError. The flash must then work from
  memory. Everything else is real (HTTP, the virtual DIY Sonoff, Mosquitto).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
import errno
import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
import pytest

from custom_components.sonoff_ota.const import DOMAIN
from custom_components.sonoff_ota.proto import firmware_cache
from custom_components.sonoff_ota.proto.firmware_errors import (
    FirmwareErrorCode,
    FirmwareUnavailableError,
)
from custom_components.sonoff_ota.proto.firmware_image import ImageRole
from custom_components.sonoff_ota.proto.firmware_sources import FirmwareSources
from custom_components.sonoff_ota.proto.firmware_store import FirmwareStore
from custom_components.sonoff_ota.settings import SETTINGS_KEY, get_settings
from tests.harness import (
    LOOPBACK,
    confirm_and_flash,
    discover,
    diy_device,
    flashed,
    submit,
    unexpected_tracebacks,
)
from tests.leak_check import our_tasks, snapshot
from tests.proto.firmware_server import firmware_server
from tests.test_firmware_flow import untouched
from virtual_sonoff.images import tasmota_lite

PROMISED = 480_000
FIRST_BYTES = b"\xe9\x01\x03\x40" + bytes(60)


@dataclass
class StallingServer:
    """Headers, `FIRST_BYTES`, then silence (or `trickle`: one byte every 50 ms)."""

    trickle: bool = False
    body: bytes | None = None
    """When set, the whole of it is served (the source is healthy)."""
    port: int = 0
    requests: int = 0
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None

    def url(self, name: str = "tasmota-lite.bin") -> str:
        return f"http://{LOOPBACK}:{self.port}/tasmota/release/{name}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            if self.body is not None:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                    + f"Content-Length: {len(self.body)}\r\n\r\n".encode()
                    + self.body
                )
                await writer.drain()
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                + f"Content-Length: {PROMISED}\r\n\r\n".encode()
                + FIRST_BYTES
            )
            await writer.drain()
            if self.trickle:
                while not writer.is_closing():
                    await asyncio.sleep(0.05)
                    writer.write(b"\x00")
                    await writer.drain()
            else:
                await reader.read()  # b"" once the client gives up and closes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed_by_client.set()
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()


@asynccontextmanager
async def stalling_server(*, trickle: bool = False) -> AsyncIterator[StallingServer]:
    stall = StallingServer(trickle=trickle)
    server = await asyncio.start_server(stall._handle, LOOPBACK, 0)
    stall.port = server.sockets[0].getsockname()[1]
    try:
        yield stall
    finally:
        server.close()
        await server.wait_closed()


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


# --------------------------------------------------------------- the store alone


@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickle"])
async def test_stalled_download_times_out_and_keeps_nothing(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path, trickle: bool
) -> None:
    """Silent: `sock_read` ends it; a trickle never stalls that long: `total` ends it."""
    timeout = aiohttp.ClientTimeout(total=1.0, connect=2, sock_read=0.3)
    async with stalling_server(trickle=trickle) as stall, aiohttp.ClientSession() as session:
        store = FirmwareStore(
            tmp_path,
            session,
            hass.async_add_executor_job,
            sources=FirmwareSources(tasmota_latest_url=stall.url()),
            timeout=timeout,
        )
        async with asyncio.timeout(30):  # a hang guard, not a measurement
            with pytest.raises(FirmwareUnavailableError) as caught:
                await store.get_url(stall.url(), ImageRole.DIY)
            await stall.closed_by_client.wait()
        assert caught.value.code is FirmwareErrorCode.TIMEOUT
        assert caught.value.params["url"] == stall.url()
        assert int(caught.value.params["received"]) >= len(FIRST_BYTES)
        assert store._downloader._flights == {}, "no download may still run"
        assert not our_tasks()
        assert await hass.async_add_executor_job(_listing, tmp_path) == []


async def test_stalled_source_with_a_cached_copy_uses_the_copy(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    image = tasmota_lite(470_000)
    timeout = aiohttp.ClientTimeout(total=5, connect=2, sock_read=0.3)
    async with stalling_server() as stall, aiohttp.ClientSession() as session:
        stall.body = image  # healthy first: the image reaches the cache
        store = FirmwareStore(tmp_path, session, hass.async_add_executor_job, timeout=timeout)
        await store.get_url(stall.url(), ImageRole.DIY)
        stall.body = None  # then the same URL stalls
        cached = await store.get_url(stall.url(), ImageRole.DIY)
        assert (cached.offline, cached.fetch_error) == (True, FirmwareErrorCode.TIMEOUT)
        assert bytes(await store.read_bytes(cached)) == image


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["full", "read-only"])
async def test_unwritable_cache_serves_from_memory(
    hass: HomeAssistant,
    socket_enabled: None,
    *,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    code: int,
) -> None:
    """Injected (see the module docstring): every cache write fails like the kernel's."""

    def refuse(dest: Path, data: bytes) -> None:
        raise OSError(code, os.strerror(code), str(dest))

    monkeypatch.setattr(firmware_cache, "_write_atomic", refuse)
    image = tasmota_lite(470_000)
    async with firmware_server({"t.bin": image}) as server, aiohttp.ClientSession() as session:
        store = FirmwareStore(tmp_path, session, hass.async_add_executor_job)
        stored = await store.get_url(server.url("t.bin"), ImageRole.DIY)
        assert stored.data == image  # not cached: held in memory as bytes
        assert bytes(await store.read_bytes(stored)) == image
        again = await store.get_url(server.url("t.bin"), ImageRole.DIY)  # nothing cached
        assert bytes(await store.read_bytes(again)) == image
        assert server.requests["t.bin"] == 2
        upload = await store.store_upload(image, "mine.bin", ImageRole.DIY)
        assert bytes(await store.read_bytes(upload)) == image
    assert "serving it from memory" in caplog.text
    assert await hass.async_add_executor_job(_listing, tmp_path) == []


async def test_cache_path_that_is_a_file_serves_from_memory(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    """Real kernel errors: `images` is a regular file, the index cannot be written either."""
    await hass.async_add_executor_job((tmp_path / "images").write_bytes, b"not a folder")
    image = tasmota_lite(470_000)
    async with firmware_server({"t.bin": image}) as server, aiohttp.ClientSession() as session:
        store = FirmwareStore(tmp_path, session, hass.async_add_executor_job)
        stored = await store.get_url(server.url("t.bin"), ImageRole.DIY)
        assert bytes(await store.read_bytes(stored)) == image


# ----------------------------------------------------------- the flow, end to end


@pytest.mark.mosquitto
@pytest.mark.parametrize("expected_lingering_timers", [True])
@pytest.mark.parametrize("expected_lingering_tasks", [True])
async def test_stalled_download_in_the_flow_says_so_then_another_image_flashes(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    async with diy_device(hass) as (device, firmware), stalling_server() as stall:
        settings = get_settings(hass)
        hass.data[SETTINGS_KEY] = settings._replace(
            timeouts=settings.timeouts._replace(download_stall=0.3)
        )
        result = await discover(hass, device)
        flow_id = result["flow_id"]
        before = await snapshot(hass)
        async with asyncio.timeout(60):  # a hang guard, not a measurement
            result = await submit(hass, flow_id, {"firmware": {"firmware_url": stall.url()}})
            await stall.closed_by_client.wait()
        assert result["type"] is FlowResultType.FORM
        assert result["step_id"] == "firmware"
        assert result["errors"] == {"base": "firmware_timeout"}
        assert result["description_placeholders"]["url"] == stall.url()
        assert untouched(device)
        assert (await snapshot(hass)).ours_vs(before) == {}
        # Nothing lost: the default image is flashed from the same flow.
        final: Any = await submit(hass, flow_id, {})
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        assert flashed(device) == firmware.tasmota


@pytest.mark.mosquitto
@pytest.mark.parametrize("expected_lingering_timers", [True])
@pytest.mark.parametrize("expected_lingering_tasks", [True])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["full", "read-only"])
async def test_flash_works_when_the_cache_cannot_be_written(
    hass: HomeAssistant,
    socket_enabled: None,
    *,
    real_mqtt: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    code: int,
) -> None:
    """Injected write error (see the module docstring); the flash itself is real."""

    def refuse(dest: Path, data: bytes) -> None:
        raise OSError(code, os.strerror(code), str(dest))

    monkeypatch.setattr(firmware_cache, "_write_atomic", refuse)
    caplog.set_level(logging.WARNING)
    async with diy_device(hass) as (device, firmware):
        result = await discover(hass, device)
        final = await confirm_and_flash(hass, result["flow_id"])
        assert final["type"] is FlowResultType.CREATE_ENTRY, final
        assert flashed(device) == firmware.tasmota
    assert "serving it from memory" in caplog.text
    assert unexpected_tracebacks(caplog) == []
    cache = Path(hass.config.path(DOMAIN, "firmware"))
    assert await hass.async_add_executor_job(_listing, cache) == []
