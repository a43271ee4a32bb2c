"""Setup-AP client against a device AP emulated on 127.0.0.1 (the Wi-Fi radio is what is not real).

The "device" is an aiohttp app (or, where the wire behaviour matters, a raw asyncio server that
drops connections) serving `/device` and `/ap` as described in spec setup-mode-ota.md §5.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
import contextlib
import itertools
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web
import pytest

from custom_components.sonoff_ota.proto.setup_ap import (
    ApRefusedError,
    ApResult,
    DeviceInfo,
    InvalidDeviceReplyError,
    SetupApClient,
    SetupApTimeoutError,
)

from .legacy_clients import LOOPBACK, running_site

DEVICE_KEY = "289a1f0a-1111-2222-3333-fbceb92fe43b"
DEVICE_JSON = {"deviceid": "10000b77c1", "apikey": DEVICE_KEY, "accept": "post"}
WIFI_PASSWORD = "very-secret-psk"


class DeviceAp:
    """An emulated ITEAD setup AP: records `/ap` requests, answers as configured."""

    def __init__(self) -> None:
        self.device_reply: bytes = json.dumps(DEVICE_JSON).encode()
        self.ap_reply: bytes = b'{"error":0}'
        self.ap_status = 200
        self.ap_requests: list[tuple[dict[str, str], dict[str, Any]]] = []

    def app(self) -> web.Application:
        async def device(request: web.Request) -> web.Response:
            return web.Response(body=self.device_reply, content_type="application/json")

        async def ap(request: web.Request) -> web.Response:
            self.ap_requests.append((dict(request.headers), json.loads(await request.read())))
            return web.Response(status=self.ap_status, body=self.ap_reply)

        app = web.Application()
        app.router.add_get("/device", device)
        app.router.add_post("/ap", ap)
        return app


@contextlib.asynccontextmanager
async def raw_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A bare TCP server on 127.0.0.1:0 (for replies that no HTTP framework would send)."""

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client gave up (its own timeout) before sending a whole request
        finally:
            writer.close()

    server = await asyncio.start_server(wrapped, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


async def test_happy_path(socket_enabled: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    device_ap = DeviceAp()
    async with (
        running_site(device_ap.app()) as port,
        aiohttp.ClientSession() as session,
    ):
        client = SetupApClient(session, f"http://{LOOPBACK}:{port}")
        info = await client.wait_for_device(max_wait=5, retry_delay=0.05)
        result = await client.send_ap("HomeWiFi", WIFI_PASSWORD, "192.0.2.10", 8443)
    assert info == DeviceInfo("10000b77c1", DEVICE_KEY, "post")
    assert DEVICE_KEY not in repr(info)
    assert result is ApResult.ACCEPTED
    headers, body = device_ap.ap_requests[0]
    assert headers["Content-Type"] == "application/json"
    assert body == {
        "version": 4,
        "ssid": "HomeWiFi",
        "password": WIFI_PASSWORD,
        "serverName": "192.0.2.10",
        "port": 8443,
    }
    assert WIFI_PASSWORD not in caplog.text
    assert DEVICE_KEY not in caplog.text


async def test_lost_ap_reply_is_maybe_accepted(socket_enabled: None) -> None:
    """The device takes the settings and drops its AP before answering (spec §5, #161)."""
    received: list[bytes] = []

    async def drop_after_request(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        received.append(await _read_request(reader))

    async with raw_server(drop_after_request) as port, aiohttp.ClientSession() as session:
        client = SetupApClient(session, f"http://{LOOPBACK}:{port}")
        result = await client.send_ap("HomeWiFi", WIFI_PASSWORD, "192.0.2.10", 8443)
    assert result is ApResult.MAYBE_ACCEPTED
    assert received[0].startswith(b"POST /ap HTTP/1.1\r\n")
    assert b'"serverName": "192.0.2.10"' in received[0]


async def test_ap_reply_timeout_is_maybe_accepted(socket_enabled: None) -> None:
    release = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await release.wait()

    try:
        async with raw_server(never_answer) as port, aiohttp.ClientSession() as session:
            client = SetupApClient(session, f"http://{LOOPBACK}:{port}", ap_timeout=0.2)
            result = await client.send_ap("HomeWiFi", WIFI_PASSWORD, "192.0.2.10", 8443)
            release.set()
    finally:
        release.set()
    assert result is ApResult.MAYBE_ACCEPTED


@pytest.mark.parametrize(
    ("reply", "expected"),
    [(b"", ApResult.MAYBE_ACCEPTED), (b'{"error":0}', ApResult.ACCEPTED)],
)
async def test_ap_reply_variants(socket_enabled: None, reply: bytes, expected: ApResult) -> None:
    device_ap = DeviceAp()
    device_ap.ap_reply = reply
    async with running_site(device_ap.app()) as port, aiohttp.ClientSession() as session:
        client = SetupApClient(session, f"http://{LOOPBACK}:{port}")
        assert await client.send_ap("HomeWiFi", WIFI_PASSWORD, "192.0.2.10", 8443) is expected


async def test_ap_refused_is_a_typed_error(socket_enabled: None) -> None:
    device_ap = DeviceAp()
    device_ap.ap_reply = b'{"error":400}'
    async with running_site(device_ap.app()) as port, aiohttp.ClientSession() as session:
        client = SetupApClient(session, f"http://{LOOPBACK}:{port}")
        with pytest.raises(ApRefusedError) as err:
            await client.send_ap("HomeWiFi", WIFI_PASSWORD, "192.0.2.10", 8443)
    assert err.value.error == 400
    assert err.value.reason == "error_400"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"<html>captive portal</html>", "not_json"),
        (b"\xff\xfe\x00", "not_utf8"),
        (b"[1, 2]", "not_an_object"),
        (b'{"deviceid": "nope", "apikey": "x"}', "bad_deviceid"),
        (b'{"deviceid": "10000b77c1"}', "bad_apikey"),
        (b'{"deviceid": "10000b77c1", "apikey": "k", "accept": 3}', "bad_accept"),
    ],
)
async def test_garbage_device_reply_is_a_typed_error(
    socket_enabled: None, reply: bytes, reason: str
) -> None:
    device_ap = DeviceAp()
    device_ap.device_reply = reply
    async with running_site(device_ap.app()) as port, aiohttp.ClientSession() as session:
        client = SetupApClient(session, f"http://{LOOPBACK}:{port}")
        with pytest.raises(InvalidDeviceReplyError) as err:
            await client.get_device()
        # The wait helper does not retry a wrong answer: waiting would not fix it.
        with pytest.raises(InvalidDeviceReplyError):
            await client.wait_for_device(max_wait=5, retry_delay=0.05)
    assert err.value.reason == reason


async def test_wait_retries_with_a_delay_until_the_device_answers(socket_enabled: None) -> None:
    """The first attempts are dropped (AP not ready); every retry comes after a pause."""
    accepted_at: list[float] = []
    device = json.dumps(DEVICE_JSON).encode()

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted_at.append(time.monotonic())
        await _read_request(reader)
        if len(accepted_at) < 5:
            return  # drop the connection without a reply
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(device)}\r\nConnection: close\r\n\r\n".encode()
            + device
        )
        await writer.drain()

    async with raw_server(flaky) as port, aiohttp.ClientSession() as session:
        client = SetupApClient(session, f"http://{LOOPBACK}:{port}")
        info = await client.wait_for_device(max_wait=5, retry_delay=0.1)
    assert info.deviceid == "10000b77c1"
    # aiohttp itself retries an idempotent GET once, at once, after a dropped connection; so
    # connections come in pairs: (1, 2) dropped, pause, (3, 4) dropped, pause, 5 answered.
    assert len(accepted_at) == 5
    gaps = [b - a for a, b in itertools.pairwise(accepted_at)]
    assert [gap >= 0.09 for gap in gaps] == [False, True, False, True], gaps


async def test_wait_times_out_cleanly(socket_enabled: None) -> None:
    attempts = 0

    async def always_drop(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        await _read_request(reader)

    async with raw_server(always_drop) as port, aiohttp.ClientSession() as session:
        client = SetupApClient(session, f"http://{LOOPBACK}:{port}")
        with pytest.raises(SetupApTimeoutError) as err:
            await client.wait_for_device(max_wait=0.5, retry_delay=0.1)
    assert err.value.reason == "ServerDisconnectedError"
    # A delay between attempts: a handful, not the thousands of a tight loop (SonOTA's bug).
    # At most 6 client attempts in 0.5 s, each at most 2 connections (aiohttp retries once).
    assert 2 <= attempts <= 12


async def test_device_reply_arriving_in_pieces_is_read_whole(socket_enabled: None) -> None:
    """A slow radio delivers the body in several segments; the client must not parse a prefix."""
    device = json.dumps(DEVICE_JSON).encode()

    async def piecewise(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(device)}\r\nConnection: close\r\n\r\n".encode()
        )
        for start in range(0, len(device), 16):
            writer.write(device[start : start + 16])
            await writer.drain()
            await asyncio.sleep(0.01)

    async with raw_server(piecewise) as port, aiohttp.ClientSession() as session:
        info = await SetupApClient(session, f"http://{LOOPBACK}:{port}").get_device()
    assert info.deviceid == "10000b77c1"
    assert info.apikey == DEVICE_KEY
