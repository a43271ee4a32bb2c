"""Firmware download server shared by the setup-mode and DIY paths.

Facts this follows (shared/spec):
- route on the path only; ignore the query string (`?deviceid&ts&sign`) and `Host: dl.itead.cn`
  (setup-mode-ota.md §6.5, diy-ota-and-tasmota.md §1.8);
- `Range` → 206 with an exact `Content-Range: bytes a-b/total`, end clamped; whole GET → 200 with
  `Content-Length`; never chunked, never compressed (§13.6, DIY §1.8: the DIY firmware answers 424
  without Range support); the header is parsed in `http_range`;
- pacing (10 bytes, pause, then 1400-byte pieces) only for clients that did **not** send Range:
  pacing a Range client broke downloads at ~11 % (SonOTA #62, §6.5);
- the intermediate image hard-codes `http://192.168.4.2:8080/ota/image_user2-0x81000.bin` and
  `/ota/image_arduino.bin` (HTTP/1.0, no Range, status must be exactly 200; §7), so a served set
  can also be mounted at `/ota/<name>` while a flash runs;
- DIY devices POST their result to `/api/device/otaFlash` on the download host (DIY §1.7,
  inferred host:port, unverified); always answer 200 (the body: `diy_ota_result`).

Images are held in memory, once per served set: they are at most 512 KiB each (§13.8, DIY §1.8),
the sha256 given to the device must be of the exact bytes served, and nothing then reads the disk
on the event loop. Each request slices the shared `bytes` (a Range reply copies at most its
range; a whole reply writes the shared object without copying).

The handler routes on `request.path`, so it can be mounted under any catch-all route
(an aiohttp `add_route("*", "/{tail:.*}", ...)` or HA views with a `{tail:.*}` url).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
import enum
import hashlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Final, TypedDict, Unpack

from aiohttp import web

from .diy_ota_result import OTA_RESULT_PATH, OtaResult, parse_ota_result
from .http_range import ByteRange, parse_range

if TYPE_CHECKING:
    from .firmware_image import ImageData

_LOGGER = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "/sonoff_ota/fw"
FIXED_PREFIX: Final = "/ota"
"""Where the intermediate image looks for its files (spec §7)."""
PACED_SEGMENT: Final = "paced"
CONTENT_TYPE: Final = "application/octet-stream"
TOKEN_BYTES: Final = 16
FETCH_LOG_SIZE: Final = 512
"""Requests kept in `fetch_log` (each flash adds about 120; a result callback needs only the
latest of its peer): about 130 KB at most, though HA runs for months."""


@dataclass(frozen=True, slots=True)
class Pacing:
    """How a non-Range client is fed slowly (SonOTA's slowstream figures, spec §6.5/§12)."""

    first_bytes: int = 10
    first_pause: float = 0.9
    piece_size: int = 1400
    piece_pause: float = 0.3


class ImageEventKind(enum.StrEnum):
    """What happened on the image server."""

    FETCH_STARTED = "fetch_started"
    PROGRESS = "progress"
    FETCH_DONE = "fetch_done"
    FETCH_ABORTED = "fetch_aborted"
    OTA_RESULT = "ota_result"


@dataclass(frozen=True, slots=True)
class FetchRecord:
    """One download request, as logged (no query strings: they may carry a signature)."""

    set_token: str
    name: str
    peer: str | None
    byte_range: ByteRange | None
    """None for a whole-file request."""
    status: int
    fixed_path: bool
    """True when it came in on `/ota/<name>` (the intermediate image, i.e. FinalStage)."""
    paced: bool
    at: float


@dataclass(frozen=True, slots=True)
class ImageEvent:
    """An event of one served set; `index` is its position in the set's history."""

    index: int
    kind: ImageEventKind
    name: str | None = None
    high_water: int = 0
    size: int = 0
    record: FetchRecord | None = None
    result: OtaResult | None = None


class _EventFields(TypedDict, total=False):
    """What an event is told besides its kind (the optional fields of `ImageEvent`)."""

    name: str | None
    high_water: int
    size: int
    record: FetchRecord | None
    result: OtaResult | None


@dataclass(slots=True)
class FileProgress:
    """How far one file of a served set has been served."""

    size: int
    high_water: int = 0
    """Highest byte offset (exclusive end) ever written to a client."""
    requests: int = 0
    complete_fetches: int = 0
    """Whole-file 200s written to the end, plus Range replies that reached the last byte."""

    @property
    def fraction(self) -> float:
        """high_water / size, in 0..1."""
        return self.high_water / self.size if self.size else 0.0


@dataclass(frozen=True, slots=True)
class ServedFile:
    """One image in a served set: its bytes (shared, never copied) and their sha256."""

    name: str
    data: ImageData = field(repr=False)
    sha256: str


class ServedSet:
    """The images of one flash, reachable at `<prefix>/<token>/<name>` while registered.

    Create through `ImageServer.add_set`. Holds progress, a history of events and the DIY result.
    """

    def __init__(
        self,
        token: str,
        files: Mapping[str, ImageData],
        prefix: str,
        *,
        deviceid: str | None,
        peer: str | None,
    ) -> None:
        self.token = token
        self.deviceid = deviceid
        self.peer = peer
        self._prefix = prefix
        self.files: dict[str, ServedFile] = {
            name: ServedFile(name, data, hashlib.sha256(data).hexdigest())
            for name, data in files.items()
        }
        self.progress: dict[str, FileProgress] = {
            name: FileProgress(size=len(data)) for name, data in files.items()
        }
        self.result: OtaResult | None = None
        self.history: list[ImageEvent] = []
        self._wakeup = asyncio.Event()

    def __repr__(self) -> str:
        """Show the files but not the token (it is the only access control)."""
        return f"ServedSet(files={sorted(self.files)}, deviceid={self.deviceid!r})"

    def digest(self, name: str) -> str:
        """Lowercase sha256 hex of the exact bytes served as `name` (DIY §1.8: never uppercase)."""
        return self.files[name].sha256

    def url_path(self, name: str, *, paced: bool = False) -> str:
        """The path (no host) a device should fetch `name` from; prepend `http://<ip>:<port>`."""
        if name not in self.files:
            raise KeyError(name)
        if paced:
            return f"{self._prefix}/{self.token}/{PACED_SEGMENT}/{name}"
        return f"{self._prefix}/{self.token}/{name}"

    @property
    def fraction(self) -> float:
        """Progress of the set: the furthest any of its files got.

        A device fetches one file at a time, and in setup mode only one of user1/user2 at all.
        """
        return max((p.fraction for p in self.progress.values()), default=0.0)

    def _emit(self, kind: ImageEventKind, **fields: Unpack[_EventFields]) -> ImageEvent:
        event = ImageEvent(len(self.history), kind, **fields)
        self.history.append(event)
        self._wakeup.set()
        self._wakeup = asyncio.Event()
        return event

    async def next_event(self, index: int) -> ImageEvent:
        """Return history[index], waiting until it exists (no polling)."""
        while len(self.history) <= index:
            await self._wakeup.wait()
        return self.history[index]

    async def wait_for(
        self,
        kind: ImageEventKind,
        *,
        start: int = 0,
        name: str | None = None,
    ) -> ImageEvent:
        """Wait for the first event of `kind` (and file `name`) at or after index `start`."""
        index = start
        while True:
            event = await self.next_event(index)
            if event.kind is kind and (name is None or event.name == name):
                return event
            index += 1


ImageListener = Callable[[ServedSet, ImageEvent], None]


class ImageServer:
    """Registry of served sets plus the aiohttp handlers that serve them.

    `prefix` is the path under which token URLs live (`<prefix>/<token>/<name>`, and
    `<prefix>/<token>/paced/<name>` for the paced variant). `pacing` gives the figures used for
    non-Range clients of paced URLs. `listener` is called for every event of every set.
    """

    def __init__(
        self,
        prefix: str = DEFAULT_PREFIX,
        *,
        pacing: Pacing | None = None,
        listener: ImageListener | None = None,
    ) -> None:
        self.prefix = "/" + prefix.strip("/")
        self.pacing = pacing or Pacing()
        self._listener = listener
        self._sets: dict[str, ServedSet] = {}
        self._fixed: ServedSet | None = None
        self.fetch_log: deque[FetchRecord] = deque(maxlen=FETCH_LOG_SIZE)
        """The latest requests (diagnostics; a result callback is matched to its peer's set)."""

    # -- registry -------------------------------------------------------------------------

    def add_set(
        self,
        files: Mapping[str, ImageData],
        *,
        deviceid: str | None = None,
        peer: str | None = None,
    ) -> ServedSet:
        """Register images under a fresh unguessable token and return the served set.

        `deviceid`/`peer` let the DIY result callback find this set.
        """
        for name in files:
            if not name or "/" in name or name in {".", ".."}:
                raise ValueError(f"invalid file name {name!r}")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        served = ServedSet(token, files, self.prefix, deviceid=deviceid, peer=peer)
        self._sets[token] = served
        return served

    def remove_set(self, served: ServedSet) -> None:
        """Stop serving a set (also unmounts it from `/ota/`)."""
        self._sets.pop(served.token, None)
        if self._fixed is served:
            self._fixed = None

    def mount_fixed(self, served: ServedSet) -> None:
        """Serve `served`'s files at `/ota/<name>` too (for the intermediate image, spec §7)."""
        if served.token not in self._sets:
            raise ValueError("the set is not registered")
        if self._fixed is not None and self._fixed is not served:
            # One host is on one FinalStage AP at a time; replacing the mount would send
            # another flash's fetch events here (callers serialise FinalStage).
            raise RuntimeError("another flash is using the FinalStage paths")
        self._fixed = served

    def unmount_fixed(self) -> None:
        """Stop serving anything at `/ota/`."""
        self._fixed = None

    @property
    def fixed(self) -> ServedSet | None:
        """The set mounted at `/ota/`, if any."""
        return self._fixed

    def _emit(
        self, served: ServedSet, kind: ImageEventKind, **fields: Unpack[_EventFields]
    ) -> None:
        event = served._emit(kind, **fields)
        if self._listener is not None:
            try:
                self._listener(served, event)
            except Exception:
                _LOGGER.exception("Image server listener failed")

    # -- routing --------------------------------------------------------------------------

    def _resolve(self, path: str) -> tuple[ServedSet, ServedFile, bool, bool] | None:
        """Map a request path to (set, file, paced, fixed); None for anything unknown."""
        parts = path.split("/")
        # "/ota/<name>" → ["", "ota", name]
        if len(parts) == 3 and f"/{parts[1]}" == FIXED_PREFIX and self._fixed is not None:
            served_file = self._fixed.files.get(parts[2])
            if served_file is not None and self._fixed.token in self._sets:
                return self._fixed, served_file, False, True
            return None
        if not path.startswith(self.prefix + "/"):
            return None
        rest = path[len(self.prefix) + 1 :].split("/")
        if len(rest) == 2:
            token, name, paced = rest[0], rest[1], False
        elif len(rest) == 3 and rest[1] == PACED_SEGMENT:
            token, name, paced = rest[0], rest[2], True
        else:
            return None
        served = self._lookup_token(token)
        if served is None:
            return None
        served_file = served.files.get(name)
        if served_file is None:
            return None
        return served, served_file, paced, False

    def _lookup_token(self, token: str) -> ServedSet | None:
        for known, served in self._sets.items():
            if secrets.compare_digest(known.encode(), token.encode()):
                return served
        return None

    # -- handlers -------------------------------------------------------------------------

    async def handle_download(self, request: web.Request) -> web.StreamResponse:
        """Serve GET/HEAD of a registered image; 404 for everything else (never 401)."""
        if request.method not in {"GET", "HEAD"}:
            raise web.HTTPNotFound
        resolved = self._resolve(request.path)
        if resolved is None:
            _LOGGER.debug("Download of an unknown path answered 404")
            raise web.HTTPNotFound
        served, served_file, paced, fixed = resolved
        size = len(served_file.data)
        range_header = request.headers.get("Range")
        byte_range: ByteRange | None = None
        if range_header is not None:
            try:
                byte_range = parse_range(range_header, size)
            except ValueError:
                self._record(
                    served,
                    served_file,
                    request,
                    byte_range=None,
                    status=416,
                    fixed=fixed,
                    paced=False,
                )
                raise web.HTTPRequestRangeNotSatisfiable(
                    headers={"Content-Range": f"bytes */{size}"}
                ) from None
        response = web.StreamResponse(status=200 if byte_range is None else 206)
        response.content_type = CONTENT_TYPE
        response.headers["Accept-Ranges"] = "bytes"
        response.headers["Cache-Control"] = "no-store"
        if byte_range is None:
            start, end = 0, size  # exclusive end
        else:
            start, end = byte_range.start, byte_range.end + 1
            response.headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{size}"
        # An explicit length keeps aiohttp from using chunked encoding (also for HTTP/1.0).
        response.content_length = end - start
        # Never pace a Range client (SonOTA #62); pace only the paced URL variant.
        pace = paced and byte_range is None
        record = self._record(
            served,
            served_file,
            request,
            byte_range=byte_range,
            status=response.status,
            fixed=fixed,
            paced=pace,
        )
        await response.prepare(request)
        if request.method == "HEAD":
            await response.write_eof()
            return response
        try:
            if pace:
                await self._write_paced(served, served_file, response, start, end)
            else:
                await response.write(memoryview(served_file.data)[start:end])
                self._advance(served, served_file, end)
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self._emit(served, ImageEventKind.FETCH_ABORTED, name=served_file.name, record=record)
            raise
        progress = served.progress[served_file.name]
        if end == size:
            progress.complete_fetches += 1
        self._emit(
            served,
            ImageEventKind.FETCH_DONE,
            name=served_file.name,
            high_water=progress.high_water,
            size=size,
            record=record,
        )
        return response

    def _record(
        self,
        served: ServedSet,
        served_file: ServedFile,
        request: web.Request,
        *,
        byte_range: ByteRange | None,
        status: int,
        fixed: bool,
        paced: bool,
    ) -> FetchRecord:
        record = FetchRecord(
            set_token=served.token,
            name=served_file.name,
            peer=request.remote,
            byte_range=byte_range,
            status=status,
            fixed_path=fixed,
            paced=paced,
            at=time.time(),
        )
        self.fetch_log.append(record)
        served.progress[served_file.name].requests += 1
        if byte_range is None or byte_range.start == 0:
            _LOGGER.debug(
                "Serving %s (%s, status %d)",
                served_file.name,
                "fixed path" if fixed else "token path",
                status,
            )
        self._emit(served, ImageEventKind.FETCH_STARTED, name=served_file.name, record=record)
        return record

    def _advance(self, served: ServedSet, served_file: ServedFile, offset: int) -> None:
        progress = served.progress[served_file.name]
        if offset > progress.high_water:
            progress.high_water = offset
            self._emit(
                served,
                ImageEventKind.PROGRESS,
                name=served_file.name,
                high_water=offset,
                size=progress.size,
            )

    async def _write_paced(
        self,
        served: ServedSet,
        served_file: ServedFile,
        response: web.StreamResponse,
        start: int,
        end: int,
    ) -> None:
        """SonOTA's slowstream: a few bytes, a pause, then small pieces with pauses (§6.5)."""
        view = memoryview(served_file.data)
        pacing = self.pacing
        offset = start
        first_end = min(start + pacing.first_bytes, end)
        await response.write(view[offset:first_end])
        offset = first_end
        self._advance(served, served_file, offset)
        await asyncio.sleep(pacing.first_pause)
        while offset < end:
            piece_end = min(offset + pacing.piece_size, end)
            await response.write(view[offset:piece_end])
            offset = piece_end
            self._advance(served, served_file, offset)
            if offset < end:
                await asyncio.sleep(pacing.piece_pause)

    async def handle_ota_result(self, request: web.Request) -> web.Response:
        """`POST /api/device/otaFlash` from a DIY device: always 200, body parsed defensively.

        The result goes to the set registered for the body's deviceid, else for the peer
        address, else to the set this peer downloaded from most recently.
        """
        raw = await request.read()  # bounded by the app's client_max_size
        result = parse_ota_result(raw, request.remote)
        served = self._set_for_result(result.deviceid, request.remote)
        if served is None:
            _LOGGER.warning("otaFlash callback (error %s) matches no served set", result.error)
        else:
            served.result = result
            self._emit(served, ImageEventKind.OTA_RESULT, result=result)
        return web.json_response({"error": 0})

    def _set_for_result(self, deviceid: str | None, peer: str | None) -> ServedSet | None:
        sets = list(self._sets.values())
        if deviceid is not None:
            for served in sets:
                if served.deviceid is not None and served.deviceid.lower() == deviceid:
                    return served
        if peer is not None:
            for served in sets:
                if served.peer == peer:
                    return served
            for record in reversed(self.fetch_log):
                if record.peer == peer and record.set_token in self._sets:
                    return self._sets[record.set_token]
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One entry point for a catch-all route: the otaFlash callback or a download."""
        if request.path == OTA_RESULT_PATH and request.method == "POST":
            return await self.handle_ota_result(request)
        return await self.handle_download(request)
