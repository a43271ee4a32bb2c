"""The intermediate "Espressif2Arduino" (E2A) image: FinalStage AP, fetch, write, restart.

Follows shared/spec/setup-mode-ota.md §7 (sillyfrog's E2A) and §12 (timings).
The Wi-Fi radio cannot exist here: the "FinalStage" AP is a flag/event, and
the server at 192.168.4.2:8080 is an injectable (host, port).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
import contextlib
from dataclasses import dataclass
import enum
from typing import Literal

from virtual_sonoff.flash_memory import (
    ARDUINO_OFFSET,
    REGION_ARDUINO,
    REGION_USER,
    USER1_OFFSET,
    USER2_OFFSET,
    FlashMemory,
)
from virtual_sonoff.images import MAGIC_V1, MAGIC_V2
from virtual_sonoff.profile import Fault, Faults, Timing

type Rom = Literal[1, 2]
type EventSink = Callable[[str, Mapping[str, object]], None]
type FinalImageHook = Callable[[bytes], Awaitable[None]]

USER2_PATH = "/ota/image_user2-0x81000.bin"
ARDUINO_PATH = "/ota/image_arduino.bin"
# The URL is compiled into the E2A images (§2), so this is the Host it sends
# whatever address the test injects; servers must ignore it.
COMPILED_HOST = "192.168.4.2:8080"
USER_AGENT = "ESP8266HTTPClient"
TRIES = 3  # §7: 3 retries, then restart
MIN_LENGTH = 4096  # §7: Content-Length >= 4096
MAX_HEADER_BYTES = 16384
READ_PIECE = 1024  # E2A streams in 1 KiB blocks
REBOOT_LOOP_MIN_INTERVAL = 0.05


class E2APhase(enum.StrEnum):
    """Where the intermediate image is; `setup_mode` maps these onto `Stage`."""

    BOOTING = "intermediate_boot"
    FINALSTAGE = "finalstage"
    TASMOTA = "tasmota"
    REBOOT_LOOP = "reboot_loop"


@dataclass(frozen=True, slots=True)
class Plan:
    """What E2A fetches in one boot (§7 step 3)."""

    path: str
    magic: int
    offset: int
    region: int
    final: bool


FLASH_ROM2 = Plan(USER2_PATH, MAGIC_V2, USER2_OFFSET, REGION_USER, final=False)
FLASH_ROM1 = Plan(ARDUINO_PATH, MAGIC_V1, ARDUINO_OFFSET, REGION_ARDUINO, final=True)


def plan_for(rom: Rom, magic_at_0x1000: int | None) -> Plan | None:
    """E2A's mode decision from the running ROM and the magic byte at 0x1000 (§7)."""
    if magic_at_0x1000 == MAGIC_V2:
        return FLASH_ROM2 if rom == 1 else FLASH_ROM1
    if magic_at_0x1000 == MAGIC_V1 and rom == 2:
        return FLASH_ROM1
    return None


@dataclass(frozen=True, slots=True)
class FinalStageFetch:
    """One HTTP/1.0 request E2A made to the FinalStage server."""

    session: int
    path: str
    status: int | None
    content_length: int | None
    ok: bool
    reason: str


class _FetchError(Exception):
    """A failed try (bad status, length, magic, timeout, short body)."""


class IntermediateImage:
    """E2A from boot to "restart into Tasmota" (or forever, bounded by cancellation)."""

    def __init__(
        self,
        *,
        rom: Rom,
        server: tuple[str, int],
        timing: Timing,
        faults: Faults,
        flash: FlashMemory,
        on_phase: Callable[[E2APhase], None],
        log: EventSink,
        on_final_image: FinalImageHook | None,
        ap_up: asyncio.Event | None = None,
    ) -> None:
        """Set up; `rom` is the slot the device just rebooted into (1 = user1)."""
        self._rom: Rom = rom
        self._server = server
        self._timing = timing
        self._faults = faults
        self._flash = flash
        self._on_phase = on_phase
        self._log = log
        self._on_final_image = on_final_image
        self.sessions = 0
        """FinalStage AP bring-ups (each boot of E2A is one)."""
        self.ap_up = ap_up if ap_up is not None else asyncio.Event()
        """Set while the open "FinalStage" AP is up."""
        self.fetches: list[FinalStageFetch] = []
        self.probes = 0

    @property
    def rom(self) -> Rom:
        """The slot E2A is currently booted from."""
        return self._rom

    async def run(self) -> bytes:
        """Boot, serve FinalStage sessions and return once Tasmota was started."""
        while True:
            self._on_phase(E2APhase.BOOTING)
            self._log("e2a_boot", {"rom": self._rom})
            await asyncio.sleep(self._timing.intermediate_boot_delay)
            magic = self._magic_at_user1()
            plan = plan_for(self._rom, magic)
            # An always-true condition in E2A brings the AP up even in UNKNOWN mode (§7).
            self.sessions += 1
            self.ap_up.set()
            self._on_phase(E2APhase.FINALSTAGE)
            self._log("finalstage_up", {"session": self.sessions})
            if plan is None:
                self._log("e2a_unknown_mode", {"rom": self._rom})
                await asyncio.Event().wait()  # never set: idles until stopped
                continue
            await self._wait_for_server()
            image = await self._fetch_with_retries(plan)
            self.ap_up.clear()
            self._log("finalstage_down", {"session": self.sessions})
            if image is None:
                self._log("e2a_restart", {})
                await asyncio.sleep(self._timing.reboot_delay)
                continue
            self._flash.write(plan.offset, image)
            self._log("flash_written", {"offset": plan.offset, "size": len(image)})
            await asyncio.sleep(self._timing.reboot_delay)
            if not plan.final:
                # system_upgrade_reboot(): boots user2, where E2A runs again as ROM2.
                self._rom = 2
                continue
            return await self._start_tasmota(image)

    def _magic_at_user1(self) -> int | None:
        image = self._flash.image_at(USER1_OFFSET)
        return image[0] if image else None

    async def _start_tasmota(self, image: bytes) -> bytes:
        if Fault.REBOOT_LOOP in self._faults:
            self._on_phase(E2APhase.REBOOT_LOOP)
            interval = max(self._timing.reboot_delay, REBOOT_LOOP_MIN_INTERVAL)
            while True:
                self._log("reboot", {"reason": "final image does not boot"})
                await asyncio.sleep(interval)
        self._on_phase(E2APhase.TASMOTA)
        self._log("restart_into_tasmota", {"size": len(image)})
        if self._on_final_image is not None:
            await self._on_final_image(image)
        return image

    async def _wait_for_server(self) -> None:
        """TCP-connect to the FinalStage server until it answers (§7 step 5)."""
        host, port = self._server
        while True:
            self.probes += 1
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port),
                    self._timing.finalstage_probe_interval or None,
                )
            except (OSError, TimeoutError):
                await asyncio.sleep(self._timing.finalstage_probe_interval)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._log("finalstage_server_found", {"probes": self.probes})
            return

    async def _fetch_with_retries(self, plan: Plan) -> bytes | None:
        for attempt in range(1, TRIES + 1):
            try:
                image, status, length = await self._fetch(plan)
            except _FetchError as err:
                status, length = err.args[1], err.args[2]
                self._note(plan, status, length, ok=False, reason=str(err.args[0]))
            except (
                OSError,
                TimeoutError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
            ) as err:
                self._note(plan, None, None, ok=False, reason=type(err).__name__)
            else:
                self._note(plan, status, length, ok=True, reason="ok")
                return image
            self._log("fetch_failed", {"path": plan.path, "try": attempt})
        return None

    def _note(
        self, plan: Plan, status: int | None, length: int | None, *, ok: bool, reason: str
    ) -> None:
        self.fetches.append(FinalStageFetch(self.sessions, plan.path, status, length, ok, reason))

    async def _io[T](self, step: Awaitable[T]) -> T:
        """Each connect/read gets HTTPClient's timeout (5 s), not the whole transfer."""
        return await asyncio.wait_for(step, self._timing.http_timeout)

    async def _fetch(self, plan: Plan) -> tuple[bytes, int, int]:
        """One HTTPClient GET with useHTTP10(true) and E2A's checks (§7 step 6)."""
        host, port = self._server
        reader, writer = await self._io(asyncio.open_connection(host, port))
        try:
            request = (
                f"GET {plan.path} HTTP/1.0\r\n"
                f"Host: {COMPILED_HOST}\r\n"
                f"User-Agent: {USER_AGENT}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(request.encode("ascii"))
            await self._io(writer.drain())
            head = await self._io(reader.readuntil(b"\r\n\r\n"))
            if len(head) > MAX_HEADER_BYTES:
                raise _FetchError("headers too long", None, None)
            status, headers = _parse_head(head)
            length_text = headers.get("content-length")
            length = int(length_text) if length_text and length_text.isdigit() else None
            if status != 200:  # §7: exactly 200; a 206 is a failure
                raise _FetchError(f"status {status}", status, length)
            if length is None or not MIN_LENGTH <= length <= plan.region:
                raise _FetchError("bad content-length", status, length)
            first = await self._io(reader.readexactly(1))
            if first[0] != plan.magic:
                raise _FetchError(f"bad magic {first[0]:#04x}", status, length)
            body = bytearray(first)
            while len(body) < length:
                body += await self._io(reader.readexactly(min(READ_PIECE, length - len(body))))
            return bytes(body), status, length
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _parse_head(head: bytes) -> tuple[int | None, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    if not parts[0].startswith("HTTP/1."):
        status = None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers
