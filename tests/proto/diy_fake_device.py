"""A scriptable raw-socket stand-in for a DIY-mode device's :8081 web server.

Raw asyncio streams (not aiohttp.web) so tests see the exact request bytes and can
make the device hang, hang up, or reset the connection, as real firmware does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
import contextlib
from dataclasses import dataclass, field
import json
import socket
import struct
from typing import Any


@dataclass(slots=True)
class Received:
    """One request as the server read it."""

    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer with this JSON (or raw bytes) and HTTP status."""

    body: Any = field(default_factory=lambda: {"seq": 1, "error": 0})
    status: int = 200


class Hang:
    """Read the request, then never answer (until the client gives up)."""


class HangUp:
    """Read the request, then close cleanly without a reply ("Empty reply")."""


class ResetBeforeRead:
    """Accept, then RST at once without reading (a busy device)."""


class ResetAfterRead:
    """Read the request, then RST."""


Action = Reply | Hang | HangUp | ResetBeforeRead | ResetAfterRead
Script = Callable[[Received | None, int], Action]
"""Called per connection with the request (None before reading) and its index."""


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


class FakeDiyDevice:
    """Serve `POST /zeroconf/*` on 127.0.0.1:<free port>."""

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or (lambda _req, _i: Reply())
        self.received: list[Received] = []
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def _read(self, reader: asyncio.StreamReader) -> Received:
        head = await reader.readuntil(b"\r\n\r\n")
        at = asyncio.get_running_loop().time()
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        return Received(at=at, path=path, headers=headers, body=body)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        index = self.connections
        self.connections += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            first = self.script(None, index)
            if isinstance(first, ResetBeforeRead):
                _rst(writer)
                return
            request = await self._read(reader)
            self.received.append(request)
            action = self.script(request, index)
            if isinstance(action, ResetAfterRead):
                _rst(writer)
                return
            if isinstance(action, HangUp):
                writer.close()
                return
            if isinstance(action, Hang):
                await reader.read()  # until the client closes
                writer.close()
                return
            assert isinstance(action, Reply)
            payload = (
                action.body if isinstance(action.body, bytes) else json.dumps(action.body).encode()
            )
            writer.write(
                f"HTTP/1.1 {action.status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
            writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            writer.close()
            self._handlers.discard(task)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeDiyDevice]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            for task in list(self._handlers):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._server.wait_closed()

    def bodies(self) -> list[bytes]:
        return [r.body for r in self.received]
