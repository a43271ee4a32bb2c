"""The other side of a DIY flash, for the emulator tests: a firmware server and a REST client.

The firmware server is a small aiohttp app on 127.0.0.1 that serves one image with
single byte ranges (206) and receives the device's `POST /api/device/otaFlash`.
The client speaks raw HTTP/1.1 over asyncio streams so a test sees exactly what the
virtual device does on the wire (including resets and hangs).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
import json
import re
from typing import Any

from aiohttp import web

_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass(frozen=True, slots=True)
class ServedRequest:
    """One GET the firmware server answered."""

    path: str
    range: str | None
    host: str | None
    status: int


class FirmwareServer:
    """Serve `image` at `path`; record requests and result callbacks.

    `range_support=False` answers every GET with 200 and the whole file;
    `missing=True` answers 404; `stall_from` holds back every range from that
    offset on until the server stops.
    """

    def __init__(
        self,
        image: bytes,
        *,
        path: str = "/firmware/tasmota-lite.bin",
        range_support: bool = True,
        missing: bool = False,
        stall_from: int | None = None,
    ) -> None:
        self.image = image
        self.path = path
        self.range_support = range_support
        self.missing = missing
        self.stall_from = stall_from
        self.requests: list[ServedRequest] = []
        self.callbacks: list[dict[str, Any]] = []
        self.callback_received = asyncio.Event()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The downloadUrl to hand to the device."""
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def __aenter__(self) -> FirmwareServer:
        app = web.Application()
        app.router.add_post("/api/device/otaFlash", self._callback)
        app.router.add_get("/{tail:.*}", self._get)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _get(self, request: web.Request) -> web.StreamResponse:
        range_header = request.headers.get("Range")
        host = request.headers.get("Host")

        def record(status: int) -> None:
            self.requests.append(ServedRequest(request.path, range_header, host, status))

        if request.path != self.path or self.missing:
            record(404)
            return web.Response(status=404)
        match = _RANGE_RE.fullmatch(range_header or "")
        if not self.range_support or match is None:
            record(200)
            return web.Response(body=self.image, content_type="application/octet-stream")
        total = len(self.image)
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else total - 1, total - 1)
        if self.stall_from is not None and start >= self.stall_from:
            record(0)
            await self._closing.wait()
            return web.Response(status=503)
        record(206)
        return web.Response(
            status=206,
            body=self.image[start : end + 1],
            headers={"Content-Range": f"bytes {start}-{end}/{total}"},
            content_type="application/octet-stream",
        )

    async def _callback(self, request: web.Request) -> web.Response:
        self.callbacks.append(await request.json())
        self.callback_received.set()
        return web.Response(status=200, text="{}")


async def http_exchange(port: int, raw_request: bytes, *, wait: float = 2.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port and read the answer until the server closes."""
    async with asyncio.timeout(wait):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(raw_request)
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()


def zeroconf_request(port: int, path: str, body: bytes) -> bytes:
    """A `POST /zeroconf/<path>` as an integration would send it (§1.4)."""
    return (
        f"POST /zeroconf/{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def zeroconf(
    port: int,
    path: str,
    payload: dict[str, Any] | bytes,
    *,
    wait: float = 2.0,
    retries: int = 10,
) -> dict[str, Any]:
    """POST to the device and return the JSON reply; retry a reset like AlexxIT (§1.4).

    `wait` bounds one attempt (TimeoutError when the device hangs).
    """
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    for attempt in range(retries):
        try:
            raw = await http_exchange(port, zeroconf_request(port, path, body), wait=wait)
        except ConnectionResetError:
            if attempt == retries - 1:
                raise
            await asyncio.sleep(0.05)
            continue
        head, _, content = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        reply: dict[str, Any] = json.loads(content)
        return reply
    raise AssertionError("unreachable")
