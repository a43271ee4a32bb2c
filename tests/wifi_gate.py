"""A loopback port that stands for a device's address reachable only over Wi-Fi.

`Gate(target)` listens on a fixed 127.0.0.1 port and forwards to `target` only while it is
open: the Wi-Fi hop tests open it while the fake NetworkManager (or the fake Supervisor)
reports the host joined to the matching access point, so the device behind it is reachable
exactly as through the radio, which is what cannot exist here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from tests.harness import LOOPBACK, free_port


class Gate:
    """A fixed loopback port forwarding to `target`, listening only while open."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.port = free_port()
        self.target = target
        self.opened = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def set(self, up: bool) -> None:
        """Open or close synchronously (the bound socket listens at once)."""
        if up and self._server is None and not self._tasks:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOOPBACK, self.port))
            sock.listen()
            sock.setblocking(False)
            self.opened += 1
            self._spawn(self._serve(sock))
        elif not up and self._server is not None:
            self._server.close()
            self._server = None
            for writer in list(self._writers):
                writer.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._forward, sock=sock)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers.difference_update({writer, up_writer})

    async def close(self) -> None:
        self.set(False)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
