"""The radio the Wi-Fi hop tests cannot have: gated ports and the scan list of the fake NM.

`Gate(target)` listens on a fixed 127.0.0.1 port and forwards to `target` only while it is
open: the Wi-Fi hop tests open it while the fake NetworkManager (or the fake Supervisor)
reports the host joined to the matching access point, so the device behind it is reachable
exactly as through the radio, which is what cannot exist here. `mirror_radio` and
`mirror_tasmota_radio` keep the fake NetworkManager's scan list in step with the access
points a virtual device has up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from tests.harness import LOOPBACK, free_port
from tests.proto.fake_networkmanager import FakeNetworkManager
from virtual_sonoff.lifecycle import VirtualSonoff
from virtual_sonoff.setup_mode import SetupModeDevice, Stage as DeviceStage
from virtual_sonoff.tasmota import TasmotaMode


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


async def mirror_radio(
    device: SetupModeDevice, nm: FakeNetworkManager, ssid: str, *, join_timeout: float = 60
) -> None:
    """A device's ITEAD AP (`ssid`), then its FinalStage AP, are in NM's scan list while up."""
    nm.add_ap(ssid, "12345678")
    await device.wait_for_stage(DeviceStage.JOINING_WIFI, timeout=join_timeout)
    nm.remove_ap(ssid)
    while True:
        await device.finalstage_ap.wait()
        nm.add_ap("FinalStage", None)
        while device.finalstage_ap.is_set():  # noqa: ASYNC110  (no event for "cleared")
            await asyncio.sleep(0.01)
        nm.remove_ap("FinalStage")


async def mirror_tasmota_radio(sonoff: VirtualSonoff, nm: FakeNetworkManager) -> None:
    """A device's Tasmota first-boot AP is in NM's scan list while it is up (open network)."""
    shown: str | None = None
    while True:
        tasmota = sonoff.tasmota
        up = tasmota is not None and tasmota.mode is TasmotaMode.AP
        if up and shown is None:
            assert tasmota is not None
            shown = tasmota.ap_ssid
            nm.add_ap(shown, None)
        elif not up and shown is not None:
            nm.remove_ap(shown)
            shown = None
        await asyncio.sleep(0.01)
