"""The crashes the fuzz tests found, one explicit case each (real sockets on 127.0.0.1).

Each case failed before its fix with a 500 and a traceback (or a raw exception from a
client); now it must get the device-facing answer and a log line naming the problem.
"""

from __future__ import annotations

import logging

from aiohttp import web
import pytest

from custom_components.sonoff_ota.proto.image_server import OTA_RESULT_PATH, ImageServer
from tests.proto.legacy_clients import running_site

from .driver import http_request, raw_exchange
from .strategies import DEVICEID

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
