"""A virtual Sonoff in eWeLink setup mode, from the ITEAD AP to "restart into Tasmota".

Stage 1 (shared/spec/setup-mode-ota.md §5): the AP-mode HTTP server that
stands for http://10.10.7.1:80 (`GET /device`, `POST /ap`), bound on an
injectable host/port. Then station mode (`ewelink_station`, §6) and the
intermediate E2A image (`intermediate`, §7). This module owns the lifecycle:
stage, flash, event log and introspection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
import contextlib
from dataclasses import dataclass, field
import enum
import json
import logging
import re
import time
import uuid

from virtual_sonoff.ewelink_station import (
    FAST_RX_BUFFER,
    AcceptedUpgrade,
    DownloadBehaviour,
    DownloadRequest,
    EwelinkStation,
    RunningSlot,
    RxBuffer,
    SentAck,
    StationIdentity,
    StationPhase,
    default_uses_range,
)
from virtual_sonoff.flash_memory import USER1_OFFSET, USER2_OFFSET, FlashMemory
from virtual_sonoff.images import MAGIC_V2, make_image
from virtual_sonoff.intermediate import E2APhase, FinalStageFetch, IntermediateImage
from virtual_sonoff.legacy_tls import TlsVariant
from virtual_sonoff.profile import FAST, Fault, Faults, Timing

from .start_stop import StartStop

_LOGGER = logging.getLogger(__name__)

DEVICEID_RE = re.compile(r"^1000[0-9a-f]{6}$")
STOCK_IMAGE_SIZE = 8192  # a stand-in for the stock eWeLink image in the running slot
MAX_REQUEST_BYTES = 65536
AP_READ_TIMEOUT = 10.0


class Stage(enum.StrEnum):
    """Lifecycle of the virtual device."""

    OFF = "off"
    AP_MODE = "ap_mode"
    JOINING_WIFI = "joining_wifi"
    DISPATCHING = "dispatching"
    TLS_REJECTED = "tls_rejected"
    CONNECTED = "connected"
    DOWNLOADING = "downloading"
    REBOOTING = "rebooting"
    INTERMEDIATE_BOOT = "intermediate_boot"
    FINALSTAGE = "finalstage"
    TASMOTA = "tasmota"
    REBOOT_LOOP = "reboot_loop"
    FAILED = "failed"


_STATION_STAGE = {
    StationPhase.DISPATCHING: Stage.DISPATCHING,
    StationPhase.TLS_REJECTED: Stage.TLS_REJECTED,
    StationPhase.CONNECTED: Stage.CONNECTED,
    StationPhase.DOWNLOADING: Stage.DOWNLOADING,
    StationPhase.UPGRADE_ACCEPTED: Stage.REBOOTING,
}
_E2A_STAGE = {
    E2APhase.BOOTING: Stage.INTERMEDIATE_BOOT,
    E2APhase.FINALSTAGE: Stage.FINALSTAGE,
    E2APhase.TASMOTA: Stage.TASMOTA,
    E2APhase.REBOOT_LOOP: Stage.REBOOT_LOOP,
}


@dataclass(frozen=True, slots=True)
class ApSettings:
    """What `POST /ap` hands the device (§5)."""

    ssid: str
    password: str = field(repr=False)
    server_name: str
    port: int
    version: int = 4


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """One entry of the event log (never carries secrets)."""

    at: float
    kind: str
    details: Mapping[str, object]


@dataclass(slots=True)
class SetupModeConfig:
    """Everything that makes one virtual Sonoff in setup mode."""

    deviceid: str = "10000b77c1"
    apikey: str = field(default_factory=lambda: str(uuid.uuid4()), repr=False)
    model: str = "ITA-GZ1-GL"
    rom_version: str = "2.0.4"
    running_slot: RunningSlot = "user2"
    sta_mac: str = "5C:CF:7F:0B:77:C1"
    ap_host: str = "127.0.0.1"
    """Stands for 10.10.7.1."""
    ap_port: int = 0
    """Stands for :80; 0 picks a free port (read it back from `ap_address`)."""
    finalstage_server: tuple[str, int] = ("127.0.0.1", 8080)
    """Stands for 192.168.4.2:8080, compiled into E2A (§2)."""
    tls_variant: TlsVariant = TlsVariant.TLS12
    uses_range: bool | None = None
    """None: from the version (1.x < 1.5.5 does one plain GET)."""
    paced_download_required: bool = True
    """Model the 404 problem of non-Range firmware (see `RxBuffer`)."""
    rx_buffer: RxBuffer = FAST_RX_BUFFER
    provisioned: ApSettings | None = None
    """Already provisioned: skip AP mode and start in station mode."""
    timing: Timing = FAST
    """Also the station's read timeout and its back-off between attempts (see `profile`)."""
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        """Check the identity looks like a real eWeLink one."""
        if not DEVICEID_RE.match(self.deviceid):
            raise ValueError("deviceid must be 10 lowercase hex chars starting with 1000")
        if self.running_slot not in {"user1", "user2"}:
            raise ValueError("running_slot must be user1 or user2")

    def download_behaviour(self) -> DownloadBehaviour:
        """How this firmware downloads (Range or one GET)."""
        uses_range = (
            default_uses_range(self.rom_version) if self.uses_range is None else self.uses_range
        )
        return DownloadBehaviour(uses_range, self.paced_download_required, self.rx_buffer)


type FinalImageHook = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _HttpRequest:
    method: str
    path: str
    body: bytes


class SetupModeDevice(StartStop):
    """The virtual Sonoff, from AP mode to Tasmota. Use as `async with`."""

    def __init__(
        self,
        config: SetupModeConfig | None = None,
        *,
        on_final_image: FinalImageHook | None = None,
    ) -> None:
        """Create the device; nothing listens before `start()`."""
        self.config = config if config is not None else SetupModeConfig()
        self.on_final_image = on_final_image
        """Awaited with the Tasmota image once E2A restarts into it."""
        self.flash = FlashMemory()
        self.events: list[DeviceEvent] = []
        self.ap_settings: ApSettings | None = None
        self.station: EwelinkStation | None = None
        self.intermediate: IntermediateImage | None = None
        self.accepted_upgrade: AcceptedUpgrade | None = None
        self.error: BaseException | None = None
        self.finalstage_ap = asyncio.Event()
        """Set while the open "FinalStage" AP is up."""
        self._stage = Stage.OFF
        self._reached = {stage: asyncio.Event() for stage in Stage}
        self._reached[Stage.OFF].set()
        self._ap_server: asyncio.Server | None = None
        self._ap_writers: set[asyncio.StreamWriter] = set()
        self._ap_address: tuple[str, int] | None = None
        self._settings_received = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        offset = USER1_OFFSET if self.config.running_slot == "user1" else USER2_OFFSET
        stock = make_image(
            STOCK_IMAGE_SIZE,
            magic=MAGIC_V2,
            label=f"ewelink-stock-{self.config.rom_version}-{self.config.running_slot}",
        )
        self.flash.write(offset, stock)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Bring the ITEAD AP's HTTP server up (unless provisioned) and run."""
        if self._task is not None:
            raise RuntimeError("already started")
        if self.config.provisioned is None:
            self._ap_server = await asyncio.start_server(
                self._handle_ap, self.config.ap_host, self.config.ap_port
            )
            host, port = self._ap_server.sockets[0].getsockname()[:2]
            self._ap_address = (host, port)
            self._enter(Stage.AP_MODE)
            self._log("ap_up", {"ssid": f"ITEAD-{self.config.deviceid}", "port": port})
        self._task = asyncio.create_task(self._run(), name=f"virtual-sonoff-{self.config.deviceid}")

    async def stop(self) -> None:
        """Stop everything: the AP server, station mode, E2A."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close_ap()
        self.finalstage_ap.clear()

    @property
    def running(self) -> bool:
        """Whether the device's main task is alive."""
        return self._task is not None and not self._task.done()

    # -- introspection -----------------------------------------------------

    @property
    def stage(self) -> Stage:
        """The current stage."""
        return self._stage

    def reached(self, stage: Stage) -> bool:
        """Whether the device has been in `stage` at some point."""
        return self._reached[stage].is_set()

    async def wait_for_stage(self, stage: Stage, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Return once the device has reached `stage` (now or earlier)."""
        async with asyncio.timeout(timeout):
            await self._reached[stage].wait()

    @property
    def ap_address(self) -> tuple[str, int]:
        """Where the AP-mode HTTP server listens (stands for 10.10.7.1:80)."""
        if self._ap_address is None:
            raise RuntimeError("the AP is not started")
        return self._ap_address

    @property
    def ap_url(self) -> str:
        """Base URL of the AP-mode HTTP server."""
        host, port = self.ap_address
        return f"http://{host}:{port}"

    def event_kinds(self) -> list[str]:
        """The kinds of the logged events, in order."""
        return [event.kind for event in self.events]

    @property
    def relay(self) -> bool:
        """Relay state (switched by the cloud's `update` actions)."""
        return self.station.relay if self.station is not None else False

    @property
    def downloads(self) -> list[DownloadRequest]:
        """Every firmware download request the station sent."""
        return list(self.station.downloads) if self.station is not None else []

    @property
    def retry_waits(self) -> list[float]:
        """The station's back-off before each new attempt (its schedule, not a measurement)."""
        return list(self.station.retry_waits) if self.station is not None else []

    @property
    def acks(self) -> list[SentAck]:
        """Every ack the station sent."""
        return list(self.station.acks) if self.station is not None else []

    @property
    def finalstage_sessions(self) -> int:
        """How many times E2A brought the FinalStage AP up."""
        return self.intermediate.sessions if self.intermediate is not None else 0

    @property
    def finalstage_fetches(self) -> list[FinalStageFetch]:
        """Every HTTP/1.0 request E2A made."""
        return list(self.intermediate.fetches) if self.intermediate is not None else []

    def flash_regions(self) -> dict[int, str]:
        """Offset -> sha256 of the newest image written there."""
        return self.flash.regions()

    # -- internals -----------------------------------------------------------

    def _enter(self, stage: Stage) -> None:
        if stage is not self._stage:
            self._log("stage", {"stage": stage.value})
        self._stage = stage
        self._reached[stage].set()

    def _log(self, kind: str, details: Mapping[str, object]) -> None:
        self.events.append(DeviceEvent(time.monotonic(), kind, dict(details)))
        _LOGGER.debug("%s %s %s", self.config.deviceid, kind, dict(details))

    async def _run(self) -> None:
        try:
            settings = self.config.provisioned
            if settings is None:
                await self._settings_received.wait()
                settings = self.ap_settings
                await self._close_ap()
            assert settings is not None
            self._enter(Stage.JOINING_WIFI)
            self._log("joining_wifi", {"ssid": settings.ssid})
            await asyncio.sleep(self.config.timing.ap_to_station_delay)
            await self._station_then_intermediate(settings)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            _LOGGER.exception("virtual Sonoff %s failed", self.config.deviceid)
            self.error = err
            self._log("failed", {"error": type(err).__name__})
            self._enter(Stage.FAILED)

    async def _station_then_intermediate(self, settings: ApSettings) -> None:
        config = self.config
        self.station = EwelinkStation(
            StationIdentity(
                deviceid=config.deviceid,
                apikey=config.apikey,
                model=config.model,
                rom_version=config.rom_version,
                sta_mac=config.sta_mac,
                running_slot=config.running_slot,
            ),
            settings.server_name,
            settings.port,
            tls_variant=config.tls_variant,
            download=config.download_behaviour(),
            timing=config.timing,
            faults=config.faults,
            flash=self.flash,
            on_phase=lambda phase: self._enter(_STATION_STAGE[phase]),
            log=self._log,
        )
        accepted = await self.station.run()
        self.accepted_upgrade = accepted
        self._enter(Stage.REBOOTING)
        await asyncio.sleep(config.timing.reboot_delay)
        self.intermediate = IntermediateImage(
            rom=1 if accepted.slot == "user1" else 2,
            server=config.finalstage_server,
            timing=config.timing,
            faults=config.faults,
            flash=self.flash,
            on_phase=lambda phase: self._enter(_E2A_STAGE[phase]),
            log=self._log,
            on_final_image=self._final_image,
            ap_up=self.finalstage_ap,
        )
        await self.intermediate.run()

    async def _final_image(self, image: bytes) -> None:
        if self.on_final_image is not None:
            await self.on_final_image(image)

    async def _close_ap(self) -> None:
        server, self._ap_server = self._ap_server, None
        if server is None:
            return
        server.close()
        for writer in list(self._ap_writers):
            writer.close()
        await server.wait_closed()
        self._log("ap_down", {})

    # -- the AP-mode HTTP server (§5) ------------------------------------------

    async def _handle_ap(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._ap_writers.add(writer)
        try:
            request = await asyncio.wait_for(_read_request(reader), AP_READ_TIMEOUT)
            if request is not None:
                await self._route(request, writer)
        except (
            OSError,
            TimeoutError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            self._ap_writers.discard(writer)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _route(self, request: _HttpRequest, writer: asyncio.StreamWriter) -> None:
        self._log("ap_request", {"method": request.method, "path": request.path})
        if request.method == "GET" and request.path == "/device":
            await _respond(
                writer,
                200,
                {"deviceid": self.config.deviceid, "apikey": self.config.apikey, "accept": "post"},
            )
            return
        if request.method == "POST" and request.path == "/ap":
            settings = _parse_ap_body(request.body)
            if settings is None or self._settings_received.is_set():
                # [infer] the reply to a malformed /ap is not documented.
                await _respond(writer, 200, {"error": 400})
                return
            self.ap_settings = settings
            self._log(
                "ap_settings",
                {"ssid": settings.ssid, "serverName": settings.server_name, "port": settings.port},
            )
            if Fault.LOSE_AP_REPLY in self.config.faults:
                # The settings are taken, but the AP drops before the reply (§5, #161).
                self._log("ap_reply_lost", {})
            else:
                await _respond(writer, 200, {"error": 0})
            self._settings_received.set()
            return
        await _respond(writer, 404, {"error": 404})


def _parse_ap_body(body: bytes) -> ApSettings | None:
    """The `/ap` JSON body, with or without Content-Type (§5)."""
    try:
        data = json.loads(body)
        ssid, password, server_name = data["ssid"], data["password"], data["serverName"]
        port, version = int(data["port"]), int(data.get("version", 4))
    except (ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(value, str) for value in (ssid, password, server_name)):
        return None
    return ApSettings(ssid, password, server_name, port, version)


async def _read_request(reader: asyncio.StreamReader) -> _HttpRequest | None:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    method, target, _ = parts
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length > MAX_REQUEST_BYTES:
        return None
    body = await reader.readexactly(length) if length else b""
    return _HttpRequest(method.upper(), target.partition("?")[0], body)


async def _respond(writer: asyncio.StreamWriter, status: int, payload: object) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    reason = {200: "OK", 404: "Not Found"}.get(status, "OK")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode("ascii") + body)
    await writer.drain()
