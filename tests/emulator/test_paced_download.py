"""The virtual Sonoff on old non-Range firmware against a paced server (issue 14, part 4).

SonOTA's fallback for the "404 problem" (spec setup-mode-ota.md §6.3, §6.5, §10): the first
upgrade is served in one burst, the device acks 404, and the offer after its reconnect points
at the slow handler (10 bytes, 0.9 s, then 1400 bytes every 0.3 s). A real device on 1.3 /
1.5.0 / 1.5.2 then flashes. Two servers drive the same device-side checks:

- a SonOTA-like peer (tests/emulator/setup_peers.py, no integration code), and
- the integration's own setup-mode flash (proto `SetupModeFlasher` with its fake cloud and
  image server and their paced fallback), end to end from the setup AP to the final image.

Everything runs on 127.0.0.1 with real TCP/TLS/HTTP/WebSocket. The whole scenario is
time-scaled by `SCALE` (device timing, receive-buffer drain and server pacing alike, so every
ratio is a real device's). Nothing is mocked; the Wi-Fi radio does not exist here (the
device's AP, the home network and FinalStage are loopback ports). Assertions are on counts
and ordering, never on durations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
import contextlib
from dataclasses import replace
import itertools
import json
from pathlib import Path

import aiohttp
from aiohttp import web
import pytest

from custom_components.sonoff_ota.proto.fake_cloud import FakeCloud as IntegrationCloud
from custom_components.sonoff_ota.proto.flash_stages import FlashPath, FlashTracker
from custom_components.sonoff_ota.proto.image_server import ImageServer, Pacing as ServerPacing
from custom_components.sonoff_ota.proto.legacy_tls import (
    ensure_cert_files,
    legacy_server_context as integration_tls_context,
)
from custom_components.sonoff_ota.proto.setup_ap import SetupApClient
from custom_components.sonoff_ota.proto.setup_mode_flasher import (
    SetupModeFlasher,
    SetupModeImages,
    SetupModeJob,
    SetupModeTimeouts,
)
from custom_components.sonoff_ota.proto.wifi import WifiSettings
from virtual_sonoff.ewelink_station import REALISTIC_RX_BUFFER
from virtual_sonoff.flash_memory import ARDUINO_OFFSET, USER1_OFFSET
from virtual_sonoff.images import intermediate_user1, intermediate_user2, tasmota_lite
from virtual_sonoff.profile import FAST, REALISTIC, Timing
from virtual_sonoff.setup_mode import SetupModeConfig, SetupModeDevice, Stage

from .setup_peers import (
    USER1_PATH,
    USER2_PATH,
    CloudScript,
    FakeCloud,
    FileServer,
    Pacing,
    legacy_server_context,
    wait_until,
    write_self_signed,
)

LOOPBACK = "127.0.0.1"
SCALE = 0.1
"""Everything runs ten times faster than on a real device, with every ratio kept."""
TIMING = replace(REALISTIC.scaled(SCALE), ap_to_station_delay=0.0)
"""The realistic profile, scaled; joining the home Wi-Fi is not what this is about."""
OLD_FIRMWARE = ["1.3.0", "1.5.0", "1.5.2"]
"""Non-Range firmware (§6.5, §10): one plain GET per image."""
MODEL = "PSB-B04-GL"
USER1 = intermediate_user1(16_000)
USER2 = intermediate_user2(16_000)
FINAL = tasmota_lite(16_000)
# Per-event waits of the tests (not assertions): generous for a loaded machine.
WITHIN = 30.0


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One RSA-2048 certificate for the module (generated outside the event loop)."""
    return write_self_signed(tmp_path_factory.mktemp("tls"))


def _device_config(rom_version: str, **kwargs: object) -> SetupModeConfig:
    values: dict[str, object] = {
        "rom_version": rom_version,
        "model": MODEL,
        "running_slot": "user2",
        "timing": TIMING,
        "rx_buffer": REALISTIC_RX_BUFFER,
    }
    values.update(kwargs)
    return SetupModeConfig(**values)  # type: ignore[arg-type]


def assert_paced_fallback_flashed(device: SetupModeDevice, image: bytes, offset: int) -> None:
    """The device-side story, whoever the server is: burst -> 404 -> back off -> paced -> ok."""
    assert device.flash.image_at(offset) == image
    assert [ack.error for ack in device.acks if ack.action == "upgrade"] == [404, 0]
    station = device.station
    assert station is not None
    assert station.dispatches == 2
    assert device.event_kinds().count("registered") == 2
    # One plain GET per offer (no Range): the burst overran, the paced body arrived whole.
    assert [d.range for d in device.downloads] == [None, None]
    assert [d.status for d in device.downloads] == [200, 200]
    assert device.downloads[1].received == len(image)
    # Exactly one back-off, the first of the schedule, between the 404 and the redispatch.
    assert device.retry_waits == [TIMING.retry_delay]
    story = [
        e.kind
        for e in device.events
        if e.kind
        in {"dispatched", "registered", "download_overrun", "ack", "retry_wait", "flash_written"}
        and (e.kind != "ack" or e.details["action"] == "upgrade")
    ]
    assert story[:8] == [
        "dispatched",
        "registered",
        "download_overrun",
        "ack",
        "retry_wait",
        "dispatched",
        "registered",
        "ack",
    ]
    assert story[8] == "flash_written"


async def _sonota_stage1(device: SetupModeDevice, cloud_port: int) -> None:
    """SonOTA's stage 1 (§5): GET /device, then POST /ap with a JSON body, no Content-Type."""
    body = {
        "version": 4,
        "ssid": "home",
        "password": "home-secret",
        "serverName": LOOPBACK,
        "port": cloud_port,
    }
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{device.ap_url}/device") as response:
            assert (await response.json())["accept"] == "post"
        async with session.post(
            f"{device.ap_url}/ap", data=json.dumps(body), skip_auto_headers=("Content-Type",)
        ) as response:
            assert await response.json(content_type=None) == {"error": 0}


@pytest.mark.parametrize("rom_version", OLD_FIRMWARE)
async def test_sonota_slowstream_finishes_after_one_back_off(
    socket_enabled: None, cert: tuple[Path, Path], rom_version: str
) -> None:
    files = FileServer({USER1_PATH: USER1, USER2_PATH: USER2}, slow_pacing=Pacing.slowstream(SCALE))
    script = CloudScript(slowstream_after_404=True)
    # E2A stays in its boot blink: this test ends at the reboot into it.
    timing = replace(TIMING, intermediate_boot_delay=600.0)
    async with (
        files,
        FakeCloud(legacy_server_context(cert), downloads=files, script=script) as cloud,
        SetupModeDevice(_device_config(rom_version, timing=timing)) as device,
    ):
        await _sonota_stage1(device, cloud.port)
        await device.wait_for_stage(Stage.REBOOTING, timeout=WITHIN)
        await wait_until(lambda: len(cloud.acks) >= 12, within=WITHIN)

        assert_paced_fallback_flashed(device, USER1, USER1_OFFSET)
        # The server side saw the same: two sessions, the burst, then the slow handler.
        assert [r.path for r in files.requests] == [USER1_PATH, "/slowota/" + USER1_PATH[5:]]
        assert len(cloud.dispatch_bodies) == 2
        assert [f["action"] for f in cloud.frames if f.get("action") == "register"] == [
            "register",
            "register",
        ]
        assert len(cloud.upgrades_sent) == 2
        assert [a["error"] for a in cloud.acks if a["sequence"] in _sequences(cloud)] == [404, 0]


def _sequences(cloud: FakeCloud) -> set[str]:
    return {str(upgrade["sequence"]) for upgrade in cloud.upgrades_sent}


@contextlib.asynccontextmanager
async def _site(app: web.Application, context: object = None) -> AsyncIterator[int]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, LOOPBACK, 0, ssl_context=context)  # type: ignore[arg-type]
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None)
        assert sockets
        yield int(sockets[0].getsockname()[1])
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("rom_version", OLD_FIRMWARE)
async def test_integration_paced_fallback_flashes_end_to_end(
    socket_enabled: None, tmp_path: Path, rom_version: str
) -> None:
    """The integration's setup-mode flash, AP to FinalStage, with its own paced fallback."""
    cert_files = ensure_cert_files(tmp_path / "tls")
    pacing = ServerPacing()
    images = ImageServer(
        pacing=replace(
            pacing,
            first_pause=pacing.first_pause * SCALE,
            piece_pause=pacing.piece_pause * SCALE,
        )
    )
    files_app = web.Application()
    files_app.router.add_route("*", "/{tail:.*}", images.handle)
    cloud = IntegrationCloud(LOOPBACK, 0)
    cloud_app = web.Application()
    cloud_app.router.add_post("/dispatch/device", cloud.handle_dispatch)
    cloud_app.router.add_get("/api/ws", cloud.handle_websocket)
    async with (
        _site(files_app) as files_port,
        _site(cloud_app, integration_tls_context(*cert_files)) as cloud_port,
        aiohttp.ClientSession() as session,
    ):
        cloud.advertise_port = cloud_port
        config = _device_config(rom_version, finalstage_server=(LOOPBACK, files_port))
        try:
            async with SetupModeDevice(config) as device:
                tracker = FlashTracker(FlashPath.SETUP_MODE)
                flasher = SetupModeFlasher(
                    tracker,
                    SetupModeJob(
                        wifi=WifiSettings(ssid="home", password="home-secret"),
                        callback_host=LOOPBACK,
                        tls_port=lambda: cloud_port,
                        download_base=lambda: f"http://{LOOPBACK}:{files_port}",
                        images=SetupModeImages(user1=USER1, user2=USER2, final=FINAL),
                        timeouts=SetupModeTimeouts(
                            setup_ap=WITHIN,
                            dispatch=WITHIN,
                            upgrade=WITHIN,
                            finalstage=WITHIN,
                            ap_retry_delay=0.05,
                        ),
                    ),
                    ap_client=SetupApClient(session, device.ap_url),
                    cloud=cloud,
                    images=images,
                )
                try:
                    await flasher.run()
                finally:
                    flasher.close()
                await device.wait_for_stage(Stage.TASMOTA, timeout=WITHIN)

                assert_paced_fallback_flashed(device, USER1, USER1_OFFSET)
                assert device.flash.image_at(ARDUINO_OFFSET) == FINAL
                assert flasher.paced_retry_used
                fetched = [(r.name, r.paced, r.fixed_path) for r in images.fetch_log]
                assert fetched[:2] == [
                    ("image_user1-0x01000.bin", False, False),
                    ("image_user1-0x01000.bin", True, False),
                ]
        finally:
            await cloud.close()


async def test_repeated_404_backs_off_and_never_redispatches_at_once(
    socket_enabled: None, cert: tuple[Path, Path]
) -> None:
    """A server that never paces: every offer ends in 404; the retries must slow down."""
    files = FileServer({USER1_PATH: USER1, USER2_PATH: USER2})  # burst only, like plain /ota/
    timing = replace(FAST, intermediate_boot_delay=600.0)
    async with (
        files,
        FakeCloud(legacy_server_context(cert), downloads=files) as cloud,
        SetupModeDevice(_device_config("1.5.0", timing=timing)) as device,
    ):
        await _sonota_stage1(device, cloud.port)
        await wait_until(lambda: len(device.retry_waits) >= 6, within=WITHIN)
        waits = device.retry_waits[:6]
        # Doubling from the first delay, then held at the cap.
        assert waits == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]
        assert waits == [min(FAST.retry_delay * 2**n, FAST.retry_delay_max) for n in range(6)]
        # Every redispatch comes after a back-off, never straight after the 404.
        kinds = [
            e.kind
            for e in device.events
            if e.kind in {"dispatched", "retry_wait"}
            or (e.kind == "ack" and e.details["action"] == "upgrade")
        ]
        cycles = kinds[: kinds.index("retry_wait", 0) + 1]
        assert cycles == ["dispatched", "ack", "retry_wait"]
        for previous, current in itertools.pairwise(kinds):
            if current == "dispatched":
                assert previous == "retry_wait"
        assert device.flash.image_at(USER1_OFFSET) is None


def test_realistic_back_off_bounds_the_attempts() -> None:
    """Issue 14: 1,400 redispatches in 110 s. The schedule allows a handful, and a minute apart."""
    delays = REALISTIC.retry_delays()
    waited, attempts = 0.0, 1
    while True:
        waited += next(delays)
        if waited > 110.0:
            break
        attempts += 1
    assert attempts <= 5
    assert list(itertools.islice(REALISTIC.retry_delays(), 7)) == [5, 10, 20, 40, 60, 60, 60]


def test_scaled_timing_keeps_every_ratio() -> None:
    scaled = REALISTIC.scaled(0.1)
    assert scaled.scale == pytest.approx(0.1)
    assert scaled.station_read_timeout / scaled.retry_delay == pytest.approx(
        REALISTIC.station_read_timeout / REALISTIC.retry_delay
    )
    assert scaled.http_timeout == pytest.approx(0.5)
    # The station's read timeout outlasts SonOTA's longest pause (0.9 s), at any scale.
    assert scaled.station_read_timeout > 0.9 * scaled.scale
    assert isinstance(scaled, Timing)
    with pytest.raises(ValueError):
        REALISTIC.scaled(0)
