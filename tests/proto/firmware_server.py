"""An in-test firmware download server on 127.0.0.1 (real aiohttp, real TCP).

It serves named byte strings at `/fw/<name>` and can misbehave on demand:
- `down()`: stop listening, so connections are refused (the port stays known);
- `truncate`: names whose body stops halfway while Content-Length promises all;
- `replace`: names served with other bytes than registered (wrong bytes);
- `gate`: an event every response waits for (lets a test overlap requests);
- `requests`: how many GETs each name received.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class FirmwareServer:
    """The server's files, switches and counters."""

    files: dict[str, bytes] = field(default_factory=dict)
    truncate: set[str] = field(default_factory=set)
    replace: dict[str, bytes] = field(default_factory=dict)
    gate: asyncio.Event | None = None
    requests: Counter[str] = field(default_factory=Counter)
    port: int = 0
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None

    def url(self, name: str) -> str:
        """The URL of a served file."""
        return f"http://127.0.0.1:{self.port}/fw/{name}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests[name] += 1
        if self.gate is not None:
            await self.gate.wait()
        data = self.replace.get(name, self.files.get(name))
        if data is None:
            raise web.HTTPNotFound
        if name not in self.truncate:
            return web.Response(body=data, content_type="application/octet-stream")
        # Promise the whole file, send half, then drop the connection.
        response = web.StreamResponse(
            headers={"Content-Length": str(len(data)), "Content-Type": "application/octet-stream"}
        )
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        assert request.transport is not None
        request.transport.close()
        return response

    async def start(self) -> None:
        """Listen on 127.0.0.1 (port 0 first time, then the same port again)."""
        app = web.Application()
        app.router.add_get("/fw/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await self._site.start()
        server = self._site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Stop listening: further connections are refused."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None


@asynccontextmanager
async def firmware_server(files: dict[str, bytes] | None = None) -> AsyncIterator[FirmwareServer]:
    """Run a `FirmwareServer` for the duration of a `with` block."""
    server = FirmwareServer(files=dict(files or {}))
    await server.start()
    try:
        yield server
    finally:
        if server.gate is not None:
            server.gate.set()
        await server.down()
