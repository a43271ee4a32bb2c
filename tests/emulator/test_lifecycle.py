"""One virtual Sonoff from eWeLink to Tasmota, and the command line that runs it."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
import signal
import sys

import aiohttp

from tests.emulator.diy_peers import FirmwareServer, zeroconf
from virtual_sonoff.diy import DiyConfig
from virtual_sonoff.images import tasmota_lite
from virtual_sonoff.lifecycle import TasmotaPlan, VirtualSonoff
from virtual_sonoff.tasmota import TasmotaMode


async def test_diy_device_boots_into_tasmota_with_the_flashed_bytes(socket_enabled: None) -> None:
    image = tasmota_lite(40_960)
    async with (
        FirmwareServer(image) as server,
        VirtualSonoff("diy", diy=DiyConfig(ota_unlocked=True)) as device,
    ):
        assert device.ewelink is not None
        port = device.ewelink.port  # type: ignore[union-attr]
        reply = await zeroconf(
            port,
            "ota_flash",
            {
                "deviceid": "1000e4c17c",
                "data": {
                    "downloadUrl": server.url,
                    "sha256sum": hashlib.sha256(image).hexdigest(),
                },
            },
        )
        assert reply["error"] == 0
        await asyncio.wait_for(device.tasmota_started.wait(), 10)
        assert device.tasmota is not None
        assert device.tasmota.image == image
        assert device.tasmota.mode is TasmotaMode.AP
        assert device.tasmota.ap_ssid.startswith("tasmota_")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{device.tasmota.ap_port}/cm?cmnd=Status%202") as resp,
        ):
            assert resp.headers["Server"].startswith("Tasmota/")


async def test_second_tasmota_waits_for_the_shared_ap_port(socket_enabled: None) -> None:
    """Two devices on loopback share "192.168.4.1": the second boots once the first left it."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        device = VirtualSonoff(
            "diy", diy=DiyConfig(), tasmota_plan=TasmotaPlan(ap_port=port, retry_interval=0.01)
        )
        boot = asyncio.ensure_future(device._boot_tasmota(tasmota_lite(8_192)))
        await asyncio.sleep(0.05)
        assert not boot.done()
    await asyncio.wait_for(boot, 5)
    assert device.tasmota is not None
    assert device.tasmota.ap_port == port
    await device.stop()


async def test_command_line_runs_a_device_until_interrupted(socket_enabled: None) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "virtual_sonoff",
        "diy",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert b"DIY Sonoff 1000e4c17c" in line
        assert b"http://127.0.0.1:" in line
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
