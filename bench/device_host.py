"""Virtual DIY Sonoffs in a process of their own, driven over stdin/stdout (for bench.leaks).

A bench that measures Home Assistant's RSS must not count the devices it flashes: each
virtual Sonoff holds its 1 MiB flash chip and the images written to it, and in HA's
process those buffers (and the holes they leave in the allocator) would show as HA's
memory. Here the devices run in this child's own event loop, talking to HA only over
127.0.0.1 sockets, as a real device would over Wi-Fi.

One JSON object per line each way:

    -> {"op": "diy", "number": 7, "tasmota_ap_port": 8092}
    <- {"announcement": {...}}          (the device's `_ewelink._tcp` record)
    -> {"op": "stop"}
    <- {"stopped": true, "flashed": true}

End of input stops the device and the process.

    python -m bench.device_host
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
import json
import logging
import sys
from typing import Any

from virtual_sonoff.diy import DiyConfig, DiyDevice, MdnsAnnouncement
from virtual_sonoff.lifecycle import TasmotaPlan, VirtualSonoff

_LOGGER = logging.getLogger(__name__)


def diy_config(number: int) -> DiyConfig:
    """The device id and station MAC of device `number` (unique per number)."""
    return DiyConfig(
        deviceid=f"1000e4{number:04x}",
        sta_mac=f"D8:F1:5B:00:{number // 256:02X}:{number % 256:02X}",
    )


class HostedDevice:
    """The parent's handle on a device of the child: its record, and a way to stop it."""

    def __init__(self, host: DeviceHost, announcement: MdnsAnnouncement) -> None:
        """A device the child started; `announcement()` as `tests.harness.discover` reads it."""
        self._host = host
        self._announcement = announcement

    def announcement(self) -> MdnsAnnouncement:
        """The device's `_ewelink._tcp` record, as the child sent it."""
        return self._announcement

    async def stop(self) -> bool:
        """Stop the device in the child; True when it had been flashed to Tasmota."""
        reply = await self._host.call({"op": "stop"})
        return bool(reply["flashed"])


class DeviceHost:
    """The parent side: `async with DeviceHost() as host: device = await host.diy(7, port)`."""

    def __init__(self) -> None:
        """Nothing runs before `__aenter__`."""
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> DeviceHost:
        """Start the child process (this interpreter, this module)."""
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the child's input (it stops its device and exits), then wait for it."""
        process = self._process
        if process is None:
            return
        self._process = None
        assert process.stdin is not None
        process.stdin.close()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request line and read the child's one reply line."""
        process = self._process
        assert process is not None
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(json.dumps(request).encode() + b"\n")
        await process.stdin.drain()
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError(f"the device host exited (code {await process.wait()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the device host failed: {reply['error']}")
        return reply

    async def diy(self, number: int, tasmota_ap_port: int) -> HostedDevice:
        """Start DIY device `number` in the child; its Tasmota's AP will be on that port."""
        reply = await self.call({"op": "diy", "number": number, "tasmota_ap_port": tasmota_ap_port})
        return HostedDevice(self, MdnsAnnouncement(**reply["announcement"]))


async def _serve() -> None:
    """Read requests from stdin until its end; one device at a time."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    device: VirtualSonoff | None = None

    async def stop() -> bool:
        nonlocal device
        if device is None:
            return False
        flashed = device.tasmota is not None
        await device.stop()
        device = None
        return flashed

    while line := await reader.readline():
        request = json.loads(line)
        reply: dict[str, Any]
        try:
            if request["op"] == "diy":
                await stop()
                device = VirtualSonoff(
                    "diy",
                    diy=diy_config(int(request["number"])),
                    tasmota_plan=TasmotaPlan(ap_port=int(request["tasmota_ap_port"])),
                )
                await device.start()
                assert isinstance(device.ewelink, DiyDevice)
                reply = {"announcement": asdict(device.ewelink.announcement())}
            elif request["op"] == "stop":
                reply = {"stopped": True, "flashed": await stop()}
            else:
                reply = {"error": f"unknown op {request['op']!r}"}
        except Exception as err:  # the parent reports it
            _LOGGER.exception("Request %s failed", request)
            reply = {"error": f"{type(err).__name__}: {err}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    await stop()


def main() -> None:
    """Serve until stdin ends; logs go to stderr (stdout carries the replies)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_serve())


if __name__ == "__main__":
    main()
