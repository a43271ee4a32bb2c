"""The intermediate E2A image (spec setup-mode-ota.md §7) and the whole setup-mode run.

Real HTTP/1.0 over 127.0.0.1, which stands for the FinalStage server at
192.168.4.2:8080. The open "FinalStage" AP itself needs a Wi-Fi radio, so it
is only a flag/event here; the in-test file server plays the PC on it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from virtual_sonoff.ewelink_station import RunningSlot
from virtual_sonoff.flash_memory import ARDUINO_OFFSET, USER1_OFFSET, USER2_OFFSET, FlashMemory
from virtual_sonoff.images import (
    MAGIC_V2,
    intermediate_user1,
    intermediate_user2,
    make_image,
    tasmota_lite,
)
from virtual_sonoff.intermediate import E2APhase, IntermediateImage, Rom
from virtual_sonoff.profile import FAST, Fault, Faults
from virtual_sonoff.setup_mode import ApSettings, SetupModeConfig, SetupModeDevice, Stage

from .setup_peers import (
    ARDUINO_PATH,
    USER1_PATH,
    USER2_PATH,
    FakeCloud,
    FileServer,
    legacy_server_context,
    wait_until,
    write_self_signed,
)

TASMOTA = tasmota_lite(100_000)
USER1 = intermediate_user1(20_000)
USER2 = intermediate_user2(20_000)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One RSA-2048 certificate for the module (generated outside the event loop)."""
    return write_self_signed(tmp_path_factory.mktemp("tls"))


class _E2ARun:
    """An IntermediateImage run as a task, with what it reported."""

    def __init__(self, rom: Rom, server: FileServer, faults: Faults | None = None) -> None:
        self.flash = FlashMemory()
        # The eWeLink user1 slot holds a 0xEA image, as after the station download.
        self.flash.write(USER1_OFFSET, USER1)
        self.phases: list[E2APhase] = []
        self.final_images: list[bytes] = []
        self.e2a = IntermediateImage(
            rom=rom,
            server=("127.0.0.1", server.port),
            timing=FAST,
            faults=faults if faults is not None else Faults(),
            flash=self.flash,
            on_phase=self.phases.append,
            log=lambda kind, details: None,
            on_final_image=self._final,
        )
        self.task: asyncio.Task[bytes] | None = None

    async def _final(self, image: bytes) -> None:
        self.final_images.append(image)

    async def __aenter__(self) -> _E2ARun:
        self.task = asyncio.create_task(self.e2a.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_206_answer_breaks_e2a(socket_enabled: None) -> None:
    files = FileServer(
        {USER2_PATH: USER2, ARDUINO_PATH: TASMOTA}, forced_status={ARDUINO_PATH: 206}
    )
    async with files, _E2ARun(2, files) as run:
        await wait_until(lambda: run.e2a.sessions >= 2)
        failed = [f for f in run.e2a.fetches if f.session == 1]
        assert [f.status for f in failed] == [206, 206, 206]  # 3 tries, then restart
        assert not any(f.ok for f in run.e2a.fetches)
        assert run.flash.image_at(ARDUINO_OFFSET) is None
        assert run.final_images == []
        request = files.requests[0]
        assert request.version == "HTTP/1.0"
        assert request.path == ARDUINO_PATH
        assert "Range" not in request.headers


@pytest.mark.parametrize(
    ("served", "reason"),
    [
        (make_image(100_000, magic=MAGIC_V2, label="not-arduino"), "bad magic 0xea"),
        (tasmota_lite(1000), "bad content-length"),
        (tasmota_lite(524_289), "bad content-length"),
    ],
    ids=["wrong-magic", "too-small", "too-big"],
)
async def test_bad_final_image_rejected(socket_enabled: None, served: bytes, reason: str) -> None:
    files = FileServer({ARDUINO_PATH: served})
    async with files, _E2ARun(2, files) as run:
        await wait_until(lambda: len(run.e2a.fetches) >= 3)
        assert run.e2a.fetches[0].reason == reason
        assert not run.e2a.fetches[0].ok
        assert run.flash.image_at(ARDUINO_OFFSET) is None
        assert run.final_images == []


async def test_rom1_fetches_user2_then_arduino_in_two_sessions(socket_enabled: None) -> None:
    files = FileServer({USER2_PATH: USER2, ARDUINO_PATH: TASMOTA})
    async with files, _E2ARun(1, files) as run:
        assert run.task is not None
        assert await asyncio.wait_for(run.task, 5) == TASMOTA
        assert [r.path for r in files.requests] == [USER2_PATH, ARDUINO_PATH]
        assert all(r.version == "HTTP/1.0" for r in files.requests)
        assert run.e2a.sessions == 2
        assert run.e2a.rom == 2
        assert run.flash.image_at(USER2_OFFSET) == USER2
        assert run.flash.image_at(ARDUINO_OFFSET) == TASMOTA
        assert run.final_images == [TASMOTA]
        assert run.phases[-1] is E2APhase.TASMOTA
        assert not run.e2a.ap_up.is_set()


async def test_reboot_loop_fault_never_comes_up(socket_enabled: None) -> None:
    files = FileServer({ARDUINO_PATH: TASMOTA})
    async with files, _E2ARun(2, files, Faults({Fault.REBOOT_LOOP})) as run:
        await wait_until(lambda: E2APhase.REBOOT_LOOP in run.phases)
        await asyncio.sleep(0.1)
        assert run.final_images == []
        assert run.phases[-1] is E2APhase.REBOOT_LOOP
        assert run.task is not None
        assert not run.task.done()


# -- the whole setup-mode run ----------------------------------------------


@pytest.mark.parametrize(("running", "sessions"), [("user1", 1), ("user2", 2)])
async def test_full_setup_mode_run_ends_in_tasmota(
    socket_enabled: None, cert: tuple[Path, Path], running: RunningSlot, sessions: int
) -> None:
    """AP -> cloud -> Range download -> E2A -> Tasmota, all over loopback."""
    downloads = FileServer({USER1_PATH: USER1, USER2_PATH: USER2})
    finalstage = FileServer({USER2_PATH: USER2, ARDUINO_PATH: TASMOTA})
    final_images: list[bytes] = []

    async def on_final_image(image: bytes) -> None:
        final_images.append(image)

    async with (
        downloads,
        finalstage,
        FakeCloud(legacy_server_context(cert), downloads=downloads) as cloud,
    ):
        config = SetupModeConfig(
            running_slot=running,
            finalstage_server=("127.0.0.1", finalstage.port),
            provisioned=ApSettings("home", "pw", "127.0.0.1", cloud.port),
        )
        async with SetupModeDevice(config, on_final_image=on_final_image) as device:
            await device.wait_for_stage(Stage.TASMOTA, timeout=10)
            assert device.finalstage_sessions == sessions
            assert final_images == [TASMOTA]
            image = device.flash.image_at(ARDUINO_OFFSET)
            assert image == finalstage.files[ARDUINO_PATH]
            expected = [USER2_PATH, ARDUINO_PATH] if running == "user2" else [ARDUINO_PATH]
            assert [r.path for r in finalstage.requests] == expected
            if running == "user2":
                assert device.flash.image_at(USER1_OFFSET) == USER1
                assert device.flash.image_at(USER2_OFFSET) == USER2
            else:
                assert device.flash.image_at(USER2_OFFSET) == USER2
            assert device.reached(Stage.FINALSTAGE)
            assert device.stage is Stage.TASMOTA


async def test_full_run_with_reboot_loop_shows_stage(
    socket_enabled: None, cert: tuple[Path, Path]
) -> None:
    downloads = FileServer({USER1_PATH: USER1, USER2_PATH: USER2})
    finalstage = FileServer({USER2_PATH: USER2, ARDUINO_PATH: TASMOTA})
    async with (
        downloads,
        finalstage,
        FakeCloud(legacy_server_context(cert), downloads=downloads) as cloud,
    ):
        config = SetupModeConfig(
            running_slot="user1",
            finalstage_server=("127.0.0.1", finalstage.port),
            provisioned=ApSettings("home", "pw", "127.0.0.1", cloud.port),
            faults=Faults({Fault.REBOOT_LOOP}),
        )
        async with SetupModeDevice(config) as device:
            await device.wait_for_stage(Stage.REBOOT_LOOP, timeout=10)
            assert device.stage is Stage.REBOOT_LOOP
            assert not device.reached(Stage.TASMOTA)
