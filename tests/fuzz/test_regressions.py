"""The crashes the fuzz tests found, one explicit case each (real sockets on 127.0.0.1).

Each case failed before its fix with a 500 and a traceback (or a raw exception from a
client); now it must get the device-facing answer and a log line naming the problem.
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web
import pytest

from custom_components.sonoff_ota.proto.diy_client import DiyClient, DiyError, DiyErrorCode
from custom_components.sonoff_ota.proto.diy_ota_result import OTA_RESULT_PATH
from custom_components.sonoff_ota.proto.fake_cloud import CloudEventKind, FakeCloud
from custom_components.sonoff_ota.proto.image_server import ImageServer
from custom_components.sonoff_ota.proto.tasmota_client import (
    TasmotaClient,
    TasmotaError,
    TasmotaErrorCode,
)
from custom_components.sonoff_ota.proto.tasmota_discovery import (
    TasmotaDiscoveryError,
    parse_discovery,
)
from tests.proto.legacy_clients import running_site

from .driver import http_request, parse_reply, raw_exchange, ws_session, ws_texts
from .strategies import DEVICEID, DeviceReply, WsFrame, WsScript
from .surfaces import HostileDevice

HUGE_INT = b"7" * 5000
DEEP = b"[" * 100_000 + b"]" * 100_000


def _crashes(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize(
    ("body", "logged"),
    [
        (b'{"error":' + HUGE_INT + b"}", "not JSON (ValueError)"),
        (DEEP, "not JSON (RecursionError)"),
        (b'{"error":"' + HUGE_INT + b'","deviceid":"%s"}' % DEVICEID.encode(), None),
        (b'{"error":"\xc2\xb2","deviceid":"%s"}' % DEVICEID.encode(), None),
        (b'{"error":"--1","deviceid":"%s"}' % DEVICEID.encode(), None),
    ],
    ids=["huge-int", "deep-nesting", "huge-int-string", "superscript-two", "double-minus"],
)
async def test_ota_result_with_unusable_numbers_or_depth_answers_200(
    socket_enabled: None, caplog: pytest.LogCaptureFixture, body: bytes, logged: str | None
) -> None:
    images = ImageServer()
    served = images.add_set({"tasmota-lite.bin": b"x" * 100}, deviceid=DEVICEID)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", images.handle)
    async with running_site(app) as port:
        reply = await raw_exchange(port, http_request("POST", OTA_RESULT_PATH, body=body))
    assert reply.status == 200
    assert not _crashes(caplog)
    if logged is None:
        assert served.result is not None
        assert served.result.error is None  # the code is unusable, the report still arrived
    else:
        assert any(logged in r.getMessage() for r in caplog.records)


def _cloud_app(cloud: FakeCloud) -> web.Application:
    app = web.Application()
    app.router.add_post("/dispatch/device", cloud.handle_dispatch)
    app.router.add_get("/api/ws", cloud.handle_websocket)
    return app


@pytest.mark.parametrize(
    ("body", "logged"),
    [
        (b'{"deviceid":' + HUGE_INT + b"}", "not JSON (ValueError)"),
        (DEEP, "not JSON (RecursionError)"),
    ],
    ids=["huge-int", "deep-nesting"],
)
async def test_dispatch_with_unusable_json_still_points_at_our_websocket(
    socket_enabled: None, caplog: pytest.LogCaptureFixture, body: bytes, logged: str
) -> None:
    caplog.set_level(logging.DEBUG)
    cloud = FakeCloud("127.0.0.1", 4443)
    async with running_site(_cloud_app(cloud)) as port:
        reply = await raw_exchange(port, http_request("POST", "/dispatch/device", body=body))
    assert reply.status == 200
    assert parse_reply(reply.raw).body.startswith(b'{"error": 0')
    assert not _crashes(caplog)
    assert any(logged in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "frame",
    [
        '{"sequence":"1","error":"²"}'.encode(),
        b'{"sequence":"1","error":"--1"}',
        b'{"sequence":"1","error":"' + HUGE_INT + b'"}',
        b'{"action":"query","x":' + HUGE_INT + b"}",
        DEEP,
    ],
    ids=["superscript-two", "double-minus", "huge-int-string", "huge-int", "deep-nesting"],
)
async def test_websocket_frame_with_unusable_numbers_keeps_the_session(
    socket_enabled: None, caplog: pytest.LogCaptureFixture, frame: bytes
) -> None:
    cloud = FakeCloud("127.0.0.1", 4443)
    query = b'{"action":"query","deviceid":"%s","sequence":"7"}' % DEVICEID.encode()
    script = WsScript((WsFrame(1, frame), WsFrame(1, query)))
    async with running_site(_cloud_app(cloud)) as port:
        outcome = await ws_session(port, script, linger=0.3)
        await cloud.wait_for(CloudEventKind.CLOSED)
    assert outcome.status == 101
    assert not _crashes(caplog)
    # The session survived the bad frame: the query after it was answered.
    assert any(b'"sequence": "7"' in text for text in ws_texts(outcome.received))


async def test_diy_client_reply_nested_too_deep_is_a_diy_error(socket_enabled: None) -> None:
    async with HostileDevice().running() as device, aiohttp.ClientSession() as session:
        device.reply = DeviceReply(200, b'{"error":0,"data":' + DEEP + b"}")
        client = DiyClient(session, "127.0.0.1", device.port, DEVICEID, min_interval=0)
        with pytest.raises(DiyError) as err:
            await client.info()
        assert err.value.code is DiyErrorCode.BAD_REPLY
        device.reply = DeviceReply(200, b'{"error":0,"data":"' + b"[" * 30_000 + b'"}')
        with pytest.raises(DiyError) as err:
            await client.info()
        assert err.value.code is DiyErrorCode.BAD_REPLY


async def test_tasmota_reply_nested_too_deep_is_a_tasmota_error(socket_enabled: None) -> None:
    async with HostileDevice().running() as device, aiohttp.ClientSession() as session:
        device.reply = DeviceReply(200, DEEP)
        client = TasmotaClient(session, f"http://127.0.0.1:{device.port}")
        with pytest.raises(TasmotaError) as err:
            await client.command("Status")
        assert err.value.code is TasmotaErrorCode.BAD_REPLY


def test_discovery_payload_nested_too_deep_is_bad_json() -> None:
    with pytest.raises(TasmotaDiscoveryError) as err:
        parse_discovery("tasmota/discovery/D8F15BAABBCC/config", DEEP)
    assert err.value.code == "bad_json"
