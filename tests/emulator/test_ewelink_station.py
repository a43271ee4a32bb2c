"""The virtual Sonoff in station mode (spec setup-mode-ota.md §6, §9, §10).

Real TLS, HTTP and WebSocket on 127.0.0.1 against the in-test fake cloud and
file server (tests/emulator/setup_peers.py). The device starts provisioned
(the /ap step is covered in test_setup_mode.py); nothing is mocked.
"""

from __future__ import annotations

from dataclasses import replace
import hashlib
from pathlib import Path
import re

import pytest

from virtual_sonoff.ewelink_station import RunningSlot
from virtual_sonoff.flash_memory import USER1_OFFSET, USER2_OFFSET
from virtual_sonoff.images import intermediate_user1, intermediate_user2
from virtual_sonoff.legacy_tls import TlsVariant
from virtual_sonoff.profile import FAST, Fault, Faults
from virtual_sonoff.setup_mode import ApSettings, SetupModeConfig, SetupModeDevice, Stage

from .setup_peers import (
    USER1_PATH,
    USER2_PATH,
    CloudScript,
    FakeCloud,
    FileServer,
    Pacing,
    legacy_server_context,
    modern_server_context,
    wait_until,
    write_self_signed,
)

DEVICEID = "100008db11"
APIKEY = "0b7f6a3e-5c1d-4e8a-9f00-123456789abc"
# E2A stays in its boot blink: these tests end at the reboot into it.
STATION_TIMING = replace(FAST, intermediate_boot_delay=60.0)
SMALL_USER1 = intermediate_user1(16_000)
SMALL_USER2 = intermediate_user2(16_000)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One RSA-2048 certificate for the module (generated outside the event loop)."""
    return write_self_signed(tmp_path_factory.mktemp("tls"))


def _config(port: int, **kwargs: object) -> SetupModeConfig:
    settings = ApSettings(ssid="home", password="pw", server_name="127.0.0.1", port=port)
    defaults: dict[str, object] = {
        "deviceid": DEVICEID,
        "apikey": APIKEY,
        "model": "PSC-B01-GL",
        "rom_version": "2.0.4",
        "provisioned": settings,
        "timing": STATION_TIMING,
    }
    defaults.update(kwargs)
    return SetupModeConfig(**defaults)  # type: ignore[arg-type]


# -- TLS --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "server_error"),
    [(TlsVariant.TLS12, "NO_SHARED_CIPHER"), (TlsVariant.TLS11, "UNSUPPORTED_PROTOCOL")],
)
async def test_modern_server_tls_fails_handshake(
    socket_enabled: None, cert: tuple[Path, Path], variant: TlsVariant, server_error: str
) -> None:
    async with (
        FakeCloud(modern_server_context(cert)) as cloud,
        SetupModeDevice(_config(cloud.port, tls_variant=variant)) as device,
    ):
        await device.wait_for_stage(Stage.TLS_REJECTED, timeout=5)
        await wait_until(lambda: device.event_kinds().count("tls_rejected") >= 2)
        await wait_until(lambda: len(cloud.failed_handshakes) >= 1)
        assert server_error in str(cloud.failed_handshakes[0])
        assert cloud.dispatch_bodies == []
        assert not device.reached(Stage.CONNECTED)


@pytest.mark.parametrize(
    ("variant", "expected"), [(TlsVariant.TLS12, "TLSv1.2"), (TlsVariant.TLS11, "TLSv1.1")]
)
async def test_legacy_server_tls_succeeds(
    socket_enabled: None, cert: tuple[Path, Path], variant: TlsVariant, expected: str
) -> None:
    script = CloudScript(send_upgrade=False)
    async with (
        FakeCloud(legacy_server_context(cert), script=script) as cloud,
        SetupModeDevice(_config(cloud.port, tls_variant=variant)) as device,
    ):
        await device.wait_for_stage(Stage.CONNECTED, timeout=5)
        assert cloud.tls[0][0] == expected
        assert cloud.tls[0][1] in {"AES128-SHA", "AES256-SHA", "AES128-SHA256", "AES256-SHA256"}
        assert not device.reached(Stage.TLS_REJECTED)


@pytest.mark.parametrize("rom_version", ["2.6.0", "1.7.0", "3.6.0"])
async def test_pinned_firmware_drops_after_certificate(
    socket_enabled: None, cert: tuple[Path, Path], rom_version: str
) -> None:
    async with (
        FakeCloud(legacy_server_context(cert)) as cloud,
        SetupModeDevice(_config(cloud.port, rom_version=rom_version)) as device,
    ):
        await wait_until(lambda: device.event_kinds().count("tls_rejected") >= 2)
        rejections = [e for e in device.events if e.kind == "tls_rejected"]
        # The handshake got as far as the server's certificate, which failed verification.
        assert all("certificate verify failed" in str(e.details["detail"]) for e in rejections)
        # Server side: its handshake was aborted by the client (alert or reset).
        await wait_until(lambda: len(cloud.failed_handshakes) >= 1)
        assert cloud.dispatch_bodies == []
        assert cloud.connections == 0
        assert not device.reached(Stage.CONNECTED)


async def test_refuse_tls_fault_acts_like_pinning(
    socket_enabled: None, cert: tuple[Path, Path]
) -> None:
    config_kwargs = {"faults": Faults({Fault.REFUSE_TLS})}
    async with (
        FakeCloud(legacy_server_context(cert)) as cloud,
        SetupModeDevice(_config(cloud.port, **config_kwargs)) as device,
    ):
        await device.wait_for_stage(Stage.TLS_REJECTED, timeout=5)
        assert cloud.dispatch_bodies == []


@pytest.mark.parametrize("rom_version", ["2.0.4", "1.5.5"])
async def test_unpinned_firmware_dispatches(
    socket_enabled: None, cert: tuple[Path, Path], rom_version: str
) -> None:
    script = CloudScript(send_upgrade=False)
    async with (
        FakeCloud(legacy_server_context(cert), script=script) as cloud,
        SetupModeDevice(_config(cloud.port, rom_version=rom_version)) as device,
    ):
        await device.wait_for_stage(Stage.CONNECTED, timeout=5)
        assert cloud.dispatch_bodies[0]["romVersion"] == rom_version


# -- the WebSocket session --------------------------------------------------


async def test_register_sequence_fields_and_pings(
    socket_enabled: None, cert: tuple[Path, Path]
) -> None:
    script = CloudScript(send_upgrade=False, toggles=[])
    timing = replace(STATION_TIMING, heartbeat_interval=0.05)
    async with (
        FakeCloud(legacy_server_context(cert), script=script) as cloud,
        SetupModeDevice(_config(cloud.port, timing=timing, sta_mac="D8:F1:5B:00:11:22")) as device,
    ):
        await wait_until(lambda: len(cloud.frames) >= 4 and cloud.pings >= 2)

        dispatch = cloud.dispatch_bodies[0]
        assert set(dispatch) == {
            "accept",
            "version",
            "ts",
            "deviceid",
            "apikey",
            "model",
            "romVersion",
        }
        assert dispatch["accept"] == "ws;2"
        assert dispatch["version"] == 2
        assert isinstance(dispatch["ts"], int)
        assert (dispatch["deviceid"], dispatch["apikey"]) == (DEVICEID, APIKEY)
        assert (dispatch["model"], dispatch["romVersion"]) == ("PSC-B01-GL", "2.0.4")
        assert cloud.dispatch_headers[0]["Content-Type"] == "application/json"
        assert cloud.ws_headers[0]["Host"] == "iotgo.iteadstudio.com"

        register, date, update, query = cloud.frames[:4]
        assert [f["action"] for f in (register, date, update, query)] == [
            "register",
            "date",
            "update",
            "query",
        ]
        assert register["userAgent"] == "device"
        assert register["apikey"] == APIKEY
        assert register["deviceid"] == DEVICEID
        assert register["version"] == 2
        assert register["romVersion"] == "2.0.4"
        assert register["model"] == "PSC-B01-GL"
        assert isinstance(register["ts"], int)
        server_key = cloud.server_keys[0]
        for frame in (date, update, query):
            assert frame["apikey"] == server_key
            assert frame["deviceid"] == DEVICEID
            assert frame["userAgent"] == "device"
        assert update["params"] == {
            "switch": "off",
            "fwVersion": "2.0.4",
            "rssi": update["params"]["rssi"],
            "staMac": "D8:F1:5B:00:11:22",
            "startup": "off",
        }
        assert isinstance(update["params"]["rssi"], int)
        assert query["params"] == ["timers"]
        assert device.stage is Stage.CONNECTED


async def test_relay_updates_are_acked(socket_enabled: None, cert: tuple[Path, Path]) -> None:
    script = CloudScript(send_upgrade=False, toggles=["off", "on", "off", "on"])
    async with (
        FakeCloud(legacy_server_context(cert), script=script) as cloud,
        SetupModeDevice(_config(cloud.port)) as device,
    ):
        await wait_until(lambda: len(cloud.acks) >= 4)
        assert device.relay is True
        sent = [f for f in cloud.frames if f.get("error") == 0]
        assert [a["sequence"] for a in cloud.acks] == [a["sequence"] for a in sent]
        for ack in cloud.acks:
            assert ack["error"] == 0
            assert ack["apikey"] == cloud.server_keys[0]
            assert ack["userAgent"] == "device"


# -- upgrade ----------------------------------------------------------------


async def test_upgrade_with_wrong_model_closes_socket(
    socket_enabled: None, cert: tuple[Path, Path]
) -> None:
    files = FileServer({USER1_PATH: SMALL_USER1, USER2_PATH: SMALL_USER2})
    script = CloudScript(toggles=[], upgrade_model="ITA-GZ1-GL")
    async with (
        files,
        FakeCloud(legacy_server_context(cert), downloads=files, script=script) as cloud,
        SetupModeDevice(_config(cloud.port)) as device,
    ):
        await cloud.ws_closed.wait()
        upgrade_sequence = cloud.upgrades_sent[0]["sequence"]
        assert all(ack["sequence"] != upgrade_sequence for ack in cloud.acks)
        assert files.requests == []
        assert device.flash.image_at(USER1_OFFSET) is None
        assert "upgrade_wrong_model" in device.event_kinds()


@pytest.mark.parametrize(
    ("running", "path", "offset"),
    [("user2", USER1_PATH, USER1_OFFSET), ("user1", USER2_PATH, USER2_OFFSET)],
)
async def test_upgrade_downloads_inactive_slot_in_4k_ranges(
    socket_enabled: None,
    cert: tuple[Path, Path],
    running: RunningSlot,
    path: str,
    offset: int,
) -> None:
    files = FileServer({USER1_PATH: intermediate_user1(), USER2_PATH: intermediate_user2()})
    image = files.files[path]
    async with (
        files,
        FakeCloud(legacy_server_context(cert), downloads=files) as cloud,
        SetupModeDevice(_config(cloud.port, running_slot=running)) as device,
    ):
        await device.wait_for_stage(Stage.INTERMEDIATE_BOOT, timeout=10)

        assert {r.path for r in files.requests} == {path}
        chunks = -(-len(image) // 4096)
        assert len(files.requests) == chunks
        for index, request in enumerate(files.requests):
            start = index * 4096
            assert request.headers["Range"] == f"bytes={start}-{start + 4095}"
            assert request.headers["Host"] == "dl.itead.cn"
            assert request.headers["User-Agent"] == "itead-device"
            assert request.query["deviceid"] == DEVICEID
            assert request.query["ts"].isdigit()
            assert re.fullmatch(r"[0-9a-f]{64}", request.query["sign"])
            assert request.status == 206

        upgrade = cloud.upgrades_sent[0]
        await wait_until(lambda: any(a["sequence"] == upgrade["sequence"] for a in cloud.acks))
        ack = cloud.acks[-1]
        assert ack == {
            "error": 0,
            "sequence": upgrade["sequence"],
            "userAgent": "device",
            "apikey": cloud.server_keys[0],
            "deviceid": DEVICEID,
        }
        assert device.flash.image_at(offset) == image
        assert device.flash.sha256_at(offset) == hashlib.sha256(image).hexdigest()
        assert device.reached(Stage.DOWNLOADING)
        assert device.reached(Stage.REBOOTING)


async def test_corrupt_byte_acks_404_writes_nothing_and_reconnects(
    socket_enabled: None, cert: tuple[Path, Path]
) -> None:
    files = FileServer({USER1_PATH: SMALL_USER1, USER2_PATH: SMALL_USER2})
    config_kwargs = {"faults": Faults({Fault.CORRUPT_BYTE})}
    async with (
        files,
        FakeCloud(legacy_server_context(cert), downloads=files) as cloud,
        SetupModeDevice(_config(cloud.port, **config_kwargs)) as device,
    ):
        await wait_until(lambda: sum(a["error"] == 404 for a in cloud.acks) >= 2)
        # A fresh dispatch + register sequence before the second upgrade.
        assert len(cloud.dispatch_bodies) >= 2
        registers = [f for f in cloud.frames if f.get("action") == "register"]
        assert len(registers) >= 2
        assert device.flash.image_at(USER1_OFFSET) is None
        assert not device.reached(Stage.REBOOTING)


async def test_digest_mismatch_then_reissued_upgrade_succeeds(
    socket_enabled: None, cert: tuple[Path, Path]
) -> None:
    files = FileServer({USER1_PATH: SMALL_USER1, USER2_PATH: SMALL_USER2})
    script = CloudScript(toggles=[], bad_digest_upgrades=1)
    async with (
        files,
        FakeCloud(legacy_server_context(cert), downloads=files, script=script) as cloud,
        SetupModeDevice(_config(cloud.port)) as device,
    ):
        await device.wait_for_stage(Stage.REBOOTING, timeout=10)
        await wait_until(lambda: sum(a["sequence"].startswith("17") for a in cloud.acks) >= 2)
        first, second = cloud.upgrades_sent[:2]
        upgrade_acks = [
            a for a in cloud.acks if a["sequence"] in {first["sequence"], second["sequence"]}
        ]
        assert [(a["sequence"], a["error"]) for a in upgrade_acks] == [
            (first["sequence"], 404),
            (second["sequence"], 0),
        ]
        assert cloud.connections == 2
        assert device.flash.image_at(USER1_OFFSET) == SMALL_USER1
        assert "digest_mismatch" in device.event_kinds()


async def test_drop_mid_download_acks_404(socket_enabled: None, cert: tuple[Path, Path]) -> None:
    files = FileServer({USER1_PATH: SMALL_USER1, USER2_PATH: SMALL_USER2})
    config_kwargs = {"faults": Faults({Fault.DROP_MID_DOWNLOAD})}
    async with (
        files,
        FakeCloud(legacy_server_context(cert), downloads=files) as cloud,
        SetupModeDevice(_config(cloud.port, **config_kwargs)) as device,
    ):
        await cloud.acked.wait()
        await wait_until(lambda: any(a["error"] == 404 for a in cloud.acks))
        # 16000 bytes = 4 chunks; the device gave up in the one that crosses half way.
        assert len([r for r in device.downloads if r.path == USER1_PATH]) <= 3
        assert device.flash.image_at(USER1_OFFSET) is None


async def test_stall_keeps_downloading_stage(socket_enabled: None, cert: tuple[Path, Path]) -> None:
    files = FileServer({USER1_PATH: SMALL_USER1, USER2_PATH: SMALL_USER2})
    config_kwargs = {"faults": Faults({Fault.STALL})}
    async with (
        files,
        FakeCloud(legacy_server_context(cert), downloads=files) as cloud,
        SetupModeDevice(_config(cloud.port, **config_kwargs)) as device,
    ):
        await wait_until(lambda: "download_stalled" in device.event_kinds())
        assert device.stage is Stage.DOWNLOADING
        assert len(files.requests) == 1
        upgrade_sequence = cloud.upgrades_sent[0]["sequence"]
        assert all(ack["sequence"] != upgrade_sequence for ack in cloud.acks)


# -- old firmware: one plain GET ---------------------------------------------


async def test_old_firmware_unpaced_single_get_acks_404(
    socket_enabled: None, cert: tuple[Path, Path]
) -> None:
    big_user1 = intermediate_user1(64_000)
    files = FileServer({USER1_PATH: big_user1, USER2_PATH: SMALL_USER2})
    async with (
        files,
        FakeCloud(legacy_server_context(cert), downloads=files) as cloud,
        SetupModeDevice(_config(cloud.port, rom_version="1.5.2", model="PSB-B04-GL")) as device,
    ):
        await wait_until(lambda: any(a["error"] == 404 for a in cloud.acks))
        request = files.requests[0]
        assert request.path == USER1_PATH
        assert "Range" not in request.headers
        assert request.headers["Host"] == "dl.itead.cn"
        assert request.status == 200
        assert device.flash.image_at(USER1_OFFSET) is None
        assert "download_overrun" in device.event_kinds()


async def test_old_firmware_paced_single_get_succeeds(
    socket_enabled: None, cert: tuple[Path, Path]
) -> None:
    files = FileServer({USER1_PATH: SMALL_USER1, USER2_PATH: SMALL_USER2}, pacing=Pacing())
    async with (
        files,
        FakeCloud(legacy_server_context(cert), downloads=files) as cloud,
        SetupModeDevice(_config(cloud.port, rom_version="1.5.2", model="PSB-B04-GL")) as device,
    ):
        await device.wait_for_stage(Stage.REBOOTING, timeout=10)
        assert len(files.requests) == 1
        assert "Range" not in files.requests[0].headers
        await cloud.acked.wait()
        assert cloud.acks[-1]["error"] == 0
        assert device.flash.image_at(USER1_OFFSET) == SMALL_USER1
