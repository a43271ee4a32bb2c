"""Loopback harness for the protocol tests: clients that speak like old firmware, and a site runner.

- `legacy_client_context`: an ssl client context limited to one TLS version and one cipher, as the
  ESP8266 stacks of the eWeLink era (spec setup-mode-ota.md §9);
- `abort_after_server_hello`: a client that sends a ClientHello, reads the server's first flight
  (ServerHello + Certificate) and drops the connection, like firmware that pins the vendor
  certificate (§10, #164);
- `raw_http`: a byte-level HTTP client, so tests see exactly what goes on the wire (status line,
  headers, body) and can send paths that aiohttp's client would normalise (`..`);
- `running_site`: mounts an aiohttp app on 127.0.0.1, port 0, and stops it afterwards;
- `expect_failed_handshakes`: phcc runs the loop in debug mode, where asyncio reports every failed
  server-side TLS handshake to the loop's exception handler (and phcc's `hass` fixture turns those
  into test errors). Production loops (no debug) stay silent. This swallows exactly those reports
  for the duration of a test that provokes them on purpose, and waits until they all arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
import contextlib
from dataclasses import dataclass, field
import ssl
from typing import Any
import warnings

from aiohttp import web

LOOPBACK = "127.0.0.1"
TRANSPORT_ERROR = "Error on transport creation for incoming connection"


@contextlib.asynccontextmanager
async def expect_failed_handshakes(count: int) -> AsyncIterator[list[BaseException]]:
    """Swallow `count` failed-handshake reports of the debug loop; yield what was swallowed."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    swallowed: list[BaseException] = []
    arrived = asyncio.Event()

    def handler(handler_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == TRANSPORT_ERROR and isinstance(
            exc, ConnectionError | ssl.SSLError
        ):
            swallowed.append(exc)
            if len(swallowed) >= count:
                arrived.set()
            return
        if previous is not None:
            previous(handler_loop, context)
        else:
            handler_loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    try:
        yield swallowed
        if loop.get_debug() and count:
            await asyncio.wait_for(arrived.wait(), timeout=5)
    finally:
        loop.set_exception_handler(previous)


def legacy_client_context(version: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    """A client context pinned to `version` and `ciphers`, no certificate checks, no SNI use."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    return context


@contextlib.asynccontextmanager
async def running_site(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """Serve `app` on 127.0.0.1 (port 0) and yield the real port; always clean up."""
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, LOOPBACK, 0, ssl_context=ssl_context)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        yield server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


async def abort_after_server_hello(port: int, context: ssl.SSLContext) -> int:
    """Send a ClientHello, read the server's reply flight, then close. Return bytes received.

    No SNI is sent (`server_hostname=None`), as the Sonoff does not send one.
    """
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    incoming = ssl.MemoryBIO()
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=None)
    try:
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        writer.write(outgoing.read())
        await writer.drain()
        received = await asyncio.wait_for(reader.read(65536), timeout=5)
        assert received[:1] == b"\x16", "expected a TLS handshake record from the server"
        return len(received)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


@dataclass(slots=True)
class RawResponse:
    """An HTTP response as received byte for byte."""

    status_line: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    """Lower-cased names; a repeated header keeps the last value."""
    header_names: list[str] = field(default_factory=list)
    body: bytes = b""


async def raw_http(
    port: int,
    request: bytes,
    *,
    ssl_context: ssl.SSLContext | None = None,
    read_timeout: float = 10.0,
) -> RawResponse:
    """Send `request` verbatim and read until the server closes (send `Connection: close`)."""
    # An IP literal as host: Python's ssl then sends no SNI, like the Sonoff.
    reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=ssl_context)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=read_timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    response = RawResponse(status_line=lines[0], status=int(lines[0].split()[1]), body=body)
    for line in lines[1:]:
        name, _, value = line.partition(":")
        response.header_names.append(name.strip().lower())
        response.headers[name.strip().lower()] = value.strip()
    return response


def get_request(path: str, *, headers: dict[str, str] | None = None, http10: bool = False) -> bytes:
    """A GET request line plus headers, closed by `Connection: close` (HTTP/1.1)."""
    version = "HTTP/1.0" if http10 else "HTTP/1.1"
    lines = [f"GET {path} {version}"]
    all_headers = {"Host": "dl.itead.cn", "User-Agent": "itead-device"}
    if not http10:
        all_headers["Connection"] = "close"
    all_headers.update(headers or {})
    lines.extend(f"{name}: {value}" for name, value in all_headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
