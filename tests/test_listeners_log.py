"""What the private listeners log about requests: the peer's faults in one line, ours in full.

Real TCP on 127.0.0.1 against a `PrivateListener`; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine
from homeassistant.core import HomeAssistant
from homeassistant.helpers.http import HomeAssistantView
import pytest

from custom_components.sonoff_ota.listeners import _HTTP_LOGGER, PrivateListener

LOOPBACK = "127.0.0.1"


class _Views(HomeAssistantView):
    url = "/ok"
    name = "test:ok"
    requires_auth = False

    async def get(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


class _Broken(HomeAssistantView):
    url = "/broken"
    name = "test:broken"
    requires_auth = False

    async def get(self, request: web.Request) -> web.Response:
        raise RuntimeError("a bug of ours")


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(4096)
    finally:
        writer.close()


def test_a_refused_request_is_one_warning_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The filter itself, with the record aiohttp writes (deterministic on every aiohttp)."""
    caplog.set_level(logging.DEBUG, logger=_HTTP_LOGGER.name)
    try:
        raise BadStatusLine("GET *")  # noqa: TRY301 - a real exception with its traceback
    except BadStatusLine:
        _HTTP_LOGGER.exception("Error handling request from %s", "127.0.0.1")
    (record,) = [r for r in caplog.records if r.name == _HTTP_LOGGER.name]
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert "127.0.0.1" in record.getMessage()
    assert "malformed request" in record.getMessage()
    assert "GET *" in record.getMessage()
    assert "Traceback" not in caplog.text


async def test_malformed_requests_on_a_listener_log_no_error(
    hass: HomeAssistant, socket_enabled: None, caplog: pytest.LogCaptureFixture
) -> None:
    listener = PrivateListener(hass, "test listener", [_Views(), _Broken()], LOOPBACK, 0)
    await listener.start()
    try:
        caplog.set_level(logging.DEBUG)
        # a valid request first, so a bad method later is not "the first request" (which
        # aiohttp logs at debug by itself), then request lines the parser refuses
        reader, writer = await asyncio.open_connection(LOOPBACK, listener.port)
        try:
            writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            async with asyncio.timeout(5):
                assert (await reader.read(4096)).startswith(b"HTTP/1.1 200")
                writer.write(b"BREW /ok HTTP/1.1\r\n\r\n")
                assert (await reader.read(4096)).startswith(b"HTTP/1.")
        finally:
            writer.close()
        for junk in (
            b"GET * HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1",  # TLS to the plain port
            b"GET /ok HTTP/9.9\r\n\r\n",
        ):
            await _raw(listener.port, junk)  # answered 400 or closed: either is fine
        refused = [r for r in caplog.records if r.name.startswith(("aiohttp", _HTTP_LOGGER.name))]
        assert all(r.levelno < logging.ERROR for r in refused), [r.getMessage() for r in refused]
        assert all(r.exc_info is None for r in refused if r.levelno >= logging.INFO)
        # a bug in one of our views is still an error with its traceback
        caplog.clear()
        answer = await _raw(listener.port, b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 500")
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors, "our own exception must not be hidden"
        assert any(r.exc_info is not None and r.exc_info[0] is RuntimeError for r in errors)
    finally:
        await listener.stop()
