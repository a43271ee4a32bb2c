"""The DIY-mode side of the virtual Sonoff: eWeLink 3.x REST on port 8081 and its mDNS record.

Source of truth: shared/spec/diy-ota-and-tasmota.md §1 (DIY mode) and §2 (LAN mode,
detection only). The REST server is written on raw asyncio streams because the
device's transport quirks need control of the socket: one connection at a time,
a second one is reset (§1.4), and some firmware hangs without answering (§1.1).

There is no real mDNS here: `DiyDevice.announcement()` returns the record the
device would publish, and listeners hear when it changes or is withdrawn.

Emulation choices where the spec is silent or unverified (all [infer]):
- `ota_flash` downloads and verifies the image *before* replying, because the
  spec lists 408/413/424/471 as `ota_flash` replies (§1.7); `reply_before_download`
  switches to "reply 0 at once, report only through the callback" (§1.5, §1.7).
- The result callback carries only `{"error": n}` and goes to the host:port of
  `downloadUrl` (§1.7). Codes: 0 done, 404 download failed (also for 408/413
  failures when the reply already went out), 409 check failure (sha256 mismatch
  when replying first; non-DOUT or non-0xE9 image), 410 internal error (switch).
- 3.8.x gets the 3.7.x quirks (strictest known behaviour; 3.8 is unverified, §1.1).
- 1.x firmware (R4/BL602, §1.1 "treat as not flashable"): `info` and the relay
  work, `ota_unlock`/`ota_flash` answer 422 (unsupported setting).
- On 3.7.x+ an unlock without Internet hangs like a cloud-bound device (§1.1, §6);
  older firmware answers 503 (§1.7).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
import enum
import hashlib
import json
import logging
import os
import re
import socket
import struct
from typing import Any
from urllib.parse import SplitResult, urlsplit

from .flash_memory import ARDUINO_OFFSET, FlashMemory
from .profile import FAST, Fault, Faults, Timing
from .start_stop import StartStop

_LOGGER = logging.getLogger(__name__)

SERVICE_TYPE = "_ewelink._tcp.local."
TXT_CHUNK_SIZE = 249  # §1.3: device-info JSON split into 249-byte chunks
TXT_MAX_CHUNKS = 4  # data1..data4
MAX_IMAGE_SIZE = 520192  # §1.8: 508 KiB
DOWNLOAD_CHUNK = 4096  # §1.8: 4 KiB Range requests (assumed like the legacy cloud OTA)
ITEAD_HOST = "dl.itead.cn"  # §1.1/§1.8: Host header bug of 3.5.0/3.6.0
CALLBACK_PATH = "/api/device/otaFlash"  # §1.7
ESP_MAGIC = 0xE9
FLASH_MODE_DOUT = 3
_MAX_HEAD = 16384
_MAX_BODY = 65536
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_CONTENT_RANGE_RE = re.compile(r"bytes[ =](\d+)-(\d+)/(\d+)")
_PULSE_MIN, _PULSE_MAX, _PULSE_STEP = 500, 36_000_000, 500


class DiyStage(enum.StrEnum):
    """Where the emulated device is in the DIY OTA flow."""

    DIY_IDLE = "diy_idle"
    UNLOCKING = "unlocking"
    DOWNLOADING = "downloading"
    FLASHING = "flashing"
    TASMOTA = "tasmota"
    FAILED = "failed"
    OFFLINE = "offline"
    """`stop()` was called before Tasmota booted: the device vanished."""


class DiyError(enum.IntEnum):
    """The `error` field of a `/zeroconf/*` reply (§1.7)."""

    OK = 0
    BAD_JSON = 400
    ENCRYPTED = 401
    WRONG_DEVICEID = 404
    BAD_PARAMS = 422
    UNLOCK_REJECTED = 500
    NO_INTERNET = 503
    LOCKED = 403
    PREDOWNLOAD_TIMEOUT = 408
    TOO_LARGE = 413
    DOWNLOAD_FAILED = 424
    SHA_MISMATCH = 471


class CallbackError(enum.IntEnum):
    """The `error` of the `POST /api/device/otaFlash` result callback (§1.7)."""

    OK = 0
    DOWNLOAD_FAILED = 404
    CHECK_FAILURE = 409
    INTERNAL = 410


@dataclass(slots=True)
class DiyConfig:
    """How the virtual DIY device is set up. Every address is injectable."""

    deviceid: str = "1000e4c17c"
    fw_version: str = "3.6.0"
    device_type: str = "diy_plug"
    host: str = "127.0.0.1"
    port: int = 0
    """0 = pick a free port (stands for <ip>:8081)."""
    internet: bool = True
    """Whether the device can reach the vendor unlock service."""
    removed_from_ewelink: bool = False
    """3.7.x: unlock only works once the device is removed from the eWeLink account."""
    ota_unlocked: bool = False
    """Start already unlocked (`otaUnlock` persists, §1.9)."""
    unlock_rejected: bool = False
    """The vendor service rejects the unlock: reply 500."""
    internal_error: bool = False
    """The flash fails inside the device after the download: callback 410."""
    encrypted: bool = False
    """eWeLink LAN mode (§2): TXT `encrypt=true`, every REST call answers 401."""
    sta_mac: str = "D8:F1:5B:C1:7C:0A"
    source_host: str | None = None
    """The device's own address for its outgoing connections (downloads, callback).

    On loopback every virtual device would otherwise come from 127.0.0.1; giving each
    its own 127.0.0.x lets a server tell them apart, as their LAN IPs do for real.
    """
    ssid: str = "HomeNet"
    bssid: str = "b4:fb:e4:77:7f:aa"
    signal_strength: int = -47
    timing: Timing = FAST
    faults: Faults = field(default_factory=Faults)
    reply_before_download: bool = False


@dataclass(frozen=True, slots=True)
class MdnsAnnouncement:
    """The `_ewelink._tcp` record the device would publish (§1.3)."""

    service_type: str
    name: str
    server: str
    address: str
    port: int
    properties: dict[str, str]


@dataclass(frozen=True, slots=True)
class RestRequest:
    """One request the REST server read (the body may hold a Wi-Fi password)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = field(repr=False)
    deviceid: str | None
    """The `deviceid` sent; None if the key was omitted or the body is not a JSON object."""
    deviceid_present: bool


@dataclass(frozen=True, slots=True)
class DownloadRequest:
    """One Range request the device sent to the firmware server."""

    url: str
    range: str
    host: str
    status: int | None
    """HTTP status of the answer; None when none came (refused, reset, timeout)."""


@dataclass(frozen=True, slots=True)
class FlashCallback:
    """One `POST /api/device/otaFlash` the device sent."""

    url: str
    host: str
    error: int
    status: int | None


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A route's answer: reply `error`/`data`, then run `after` in the background."""

    error: int
    data: Any = None
    after: Callable[[], Coroutine[Any, Any, None]] | None = None


class _FlashFailedError(Exception):
    """The download or verification failed: what to reply, or what to call back."""

    def __init__(self, reply: DiyError, callback: CallbackError) -> None:
        super().__init__(f"flash failed: reply {int(reply)}, callback {int(callback)}")
        self.reply = reply
        self.callback = callback


@dataclass(frozen=True, slots=True)
class FirmwareQuirks:
    """Behaviour that depends on the eWeLink firmware version (§1.1)."""

    version: tuple[int, ...]

    @classmethod
    def parse(cls, fw_version: str) -> FirmwareQuirks:
        """Read a dotted version such as "3.6.0"."""
        try:
            return cls(tuple(int(part) for part in fw_version.split(".")))
        except ValueError:
            raise ValueError(f"not a firmware version: {fw_version!r}") from None

    @property
    def _major_minor(self) -> tuple[int, ...]:
        return (*self.version, 0)[:2]

    @property
    def info_as_string(self) -> bool:
        """3.3/3.4 (DIY v1.4) return `/info` data as a JSON string (§1.1, ITD#10)."""
        return (3, 3) <= self._major_minor < (3, 5)

    @property
    def v2_fields(self) -> bool:
        """DIY v2.0 info fields: fwVersion, deviceid, bssid, signalStrength (§1.6)."""
        return not self.info_as_string

    @property
    def itead_host(self) -> bool:
        """3.5.0/3.6.0 always send `Host: dl.itead.cn` when downloading (§1.8)."""
        return self._major_minor in ((3, 5), (3, 6))

    @property
    def strict(self) -> bool:
        """3.7.x+: hangs on `"deviceid": ""`, unlock needs cloud and unbinding (§1.1)."""
        return self.version[0] == 3 and self._major_minor >= (3, 7)

    @property
    def flashable(self) -> bool:
        """Only the 3.x (ESP8266) generation can DIY-OTA; 1.x is R4/BL602 (§1.1)."""
        return self.version[0] == 3


def txt_data_chunks(text: str) -> dict[str, str]:
    """Split the TXT device info into `data1`..`data4` of at most 249 bytes (§1.3)."""
    raw = text.encode()
    chunks = [raw[i : i + TXT_CHUNK_SIZE] for i in range(0, len(raw), TXT_CHUNK_SIZE)] or [b""]
    if len(chunks) > TXT_MAX_CHUNKS:
        raise ValueError(f"TXT data of {len(raw)} bytes does not fit into data1..data4")
    return {f"data{i}": chunk.decode() for i, chunk in enumerate(chunks, start=1)}


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP RST (SO_LINGER 0), like the device does (§1.4)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """Split an HTTP head into its first line and lower-cased headers."""
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


class _Connection:
    """The one REST connection being served."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    async def hang(self) -> None:
        """Answer nothing and keep the socket open until the client gives up (§1.1)."""
        while await self._reader.read(4096):
            pass


type _Route = Callable[[dict[str, Any], _Connection], Awaitable[_Outcome | None]]
type AnnouncementListener = Callable[[MdnsAnnouncement, bool], None]


class DiyDevice(StartStop):
    """A virtual Sonoff in DIY mode: REST on <host>:<port>, Range download, reboot to Tasmota.

    Use as `async with DiyDevice(config) as device:`; the real port is `device.port`.
    `on_final_image` is awaited with the flashed image once the device "reboots into
    Tasmota" (after the callback, the end of advertising and of the REST server).
    """

    def __init__(
        self,
        config: DiyConfig | None = None,
        *,
        on_final_image: Callable[[bytes], Awaitable[None]] | None = None,
        flash: FlashMemory | None = None,
    ) -> None:
        self.config = config if config is not None else DiyConfig()
        self.quirks = FirmwareQuirks.parse(self.config.fw_version)
        self.flash = flash if flash is not None else FlashMemory()
        self._on_final_image = on_final_image
        # Device state
        self.stage = DiyStage.DIY_IDLE
        self.seq = 1  # §1.3: resets to 1 on boot
        self.switch = "off"
        self.startup = "off"
        self.pulse = "off"
        self.pulse_width = 500
        self.ssid = self.config.ssid
        self.ota_unlocked = self.config.ota_unlocked
        self.advertising = False
        # Introspection
        self.requests: list[RestRequest] = []
        self.downloads: list[DownloadRequest] = []
        self.callbacks: list[FlashCallback] = []
        self.rejected_connections = 0
        self.final_image: bytes | None = None
        # Machinery
        self._server: asyncio.Server | None = None
        self._port = 0
        self._busy = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._listeners: list[AnnouncementListener] = []
        self._cipher_cache: tuple[int, dict[str, str]] | None = None
        self._routes: dict[str, _Route] = {
            "info": self._info,
            "switch": self._switch,
            "startup": self._startup,
            "signal_strength": self._signal_strength,
            "pulse": self._pulse,
            "wifi": self._wifi,
            "ota_unlock": self._ota_unlock,
            "ota_flash": self._ota_flash,
        }

    def __repr__(self) -> str:
        """Short description, without secrets."""
        return (
            f"<DiyDevice {self.config.deviceid} fw={self.config.fw_version} "
            f"stage={self.stage} port={self._port}>"
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the REST server and start advertising."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._on_connection, self.config.host, self.config.port, limit=_MAX_HEAD
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._set_advertising(True)

    async def stop(self) -> None:
        """Power off: withdraw the record, drop connections, cancel a running flash."""
        self._set_advertising(False)
        self._close_rest()
        current = asyncio.current_task()
        pending = [task for task in self._tasks if task is not current]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self.stage is not DiyStage.TASMOTA:
            self._set_stage(DiyStage.OFFLINE)

    @property
    def host(self) -> str:
        """The address the REST server is bound to."""
        return self.config.host

    @property
    def port(self) -> int:
        """The real REST port (stands for 8081)."""
        return self._port

    @property
    def base_url(self) -> str:
        """`http://<host>:<port>`."""
        return f"http://{self.config.host}:{self._port}"

    # ------------------------------------------------------------------ introspection

    @property
    def _local_addr(self) -> tuple[str, int] | None:
        host = self.config.source_host
        return (host, 0) if host else None

    def announcement(self) -> MdnsAnnouncement:
        """The mDNS record the device publishes while `advertising` (§1.3, §2)."""
        cfg = self.config
        properties = {
            "txtvers": "1",
            "id": cfg.deviceid,
            "type": cfg.device_type,
            "apivers": "1",
            "seq": str(self.seq),
        }
        if cfg.encrypted:
            properties.update(self._cipher_properties())
        else:
            properties.update(txt_data_chunks(self._txt_info()))
        return MdnsAnnouncement(
            service_type=SERVICE_TYPE,
            name=f"eWeLink_{cfg.deviceid}.{SERVICE_TYPE}",
            server=f"eWeLink_{cfg.deviceid}.local.",
            address=cfg.host,
            port=self._port,
            properties=properties,
        )

    def add_announcement_listener(self, listener: AnnouncementListener) -> Callable[[], None]:
        """Call `listener(record, advertising)` on every change; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def wait_for_stage(self, stage: DiyStage, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until the device reaches `stage` (TimeoutError otherwise)."""
        async with asyncio.timeout(timeout):
            while self.stage is not stage:
                await self._changed.wait()

    async def wait_for_advertising(self, advertising: bool, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until the device is (or is no longer) in `_ewelink._tcp`."""
        async with asyncio.timeout(timeout):
            while self.advertising is not advertising:
                await self._changed.wait()

    # ------------------------------------------------------------------ state changes

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _set_stage(self, stage: DiyStage) -> None:
        if stage is not self.stage:
            _LOGGER.debug("%s: stage %s -> %s", self.config.deviceid, self.stage, stage)
            self.stage = stage
            self._notify()

    def _set_advertising(self, advertising: bool) -> None:
        if advertising is self.advertising:
            return
        self.advertising = advertising
        self._announce()

    def _bump_seq(self) -> None:
        """§1.3: `seq` increments on every state change (and is re-announced)."""
        self.seq += 1
        if self.advertising:
            self._announce()
        else:
            self._notify()

    def _announce(self) -> None:
        record = self.announcement()
        for listener in list(self._listeners):
            listener(record, self.advertising)
        self._notify()

    def _info_fields(self) -> dict[str, Any]:
        """The `/zeroconf/info` data: v1.4 fields, plus v2.0 ones from 3.5 (§1.6)."""
        cfg = self.config
        fields: dict[str, Any] = {
            "switch": self.switch,
            "startup": self.startup,
            "pulse": self.pulse,
            "pulseWidth": self.pulse_width,
            "ssid": self.ssid,
            "otaUnlock": self.ota_unlocked,
        }
        if self.quirks.v2_fields:
            fields |= {
                "fwVersion": cfg.fw_version,
                "deviceid": cfg.deviceid,
                "bssid": cfg.bssid,
                "signalStrength": cfg.signal_strength,
            }
        return fields

    def _txt_info(self) -> str:
        """TXT data as in the spec's example (§1.3)."""
        return json.dumps(
            {
                "switch": self.switch,
                "startup": self.startup,
                "pulse": self.pulse,
                "pulseWidth": self.pulse_width,
                "rssi": self.config.signal_strength,
            },
            separators=(",", ":"),
        )

    def _cipher_properties(self) -> dict[str, str]:
        """LAN mode (§2): `encrypt`, `iv` and fake base64 ciphertext (random bytes)."""
        if self._cipher_cache is None or self._cipher_cache[0] != self.seq:
            plain_len = len(self._txt_info().encode())
            padded = (plain_len // 16 + 1) * 16  # AES-CBC + PKCS7 length
            props = {"encrypt": "true", "iv": base64.b64encode(os.urandom(16)).decode()}
            props |= txt_data_chunks(base64.b64encode(os.urandom(padded)).decode())
            self._cipher_cache = (self.seq, props)
        return dict(self._cipher_cache[1])

    # ------------------------------------------------------------------ REST transport

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._busy or self._server is None or not self._server.is_serving():
            # §1.4: the web server handles one connection at a time; others get a RST.
            self.rejected_connections += 1
            _reset(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._busy = True
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            _LOGGER.debug("%s: REST connection lost", self.config.deviceid)
        except ValueError as err:
            _LOGGER.debug("%s: bad HTTP request: %s", self.config.deviceid, err)
        finally:
            # Free the slot before closing, so a client that saw EOF can connect again.
            self._busy = False
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, headers = _parse_head(head)
        method, target, _version = request_line.split(" ", 2)
        length = int(headers.get("content-length", "0"))
        if not 0 <= length <= _MAX_BODY:
            raise ValueError(f"body of {length} bytes")
        body = await reader.readexactly(length)
        path = target.split("?", 1)[0]
        payload: Any = None
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        has_id = isinstance(payload, dict) and "deviceid" in payload
        deviceid = payload.get("deviceid") if isinstance(payload, dict) else None
        self.requests.append(
            RestRequest(
                method=method,
                path=path,
                headers=headers,
                body=body,
                deviceid=deviceid if isinstance(deviceid, str) else None,
                deviceid_present=has_id,
            )
        )
        name = path.removeprefix("/zeroconf/")
        route = self._routes.get(name) if path.startswith("/zeroconf/") else None
        if route is None:
            await self._write_http(writer, 404, "Not Found", b"")
            return
        if method != "POST":
            await self._write_http(writer, 405, "Method Not Allowed", b"")
            return
        conn = _Connection(reader)
        outcome = await self._dispatch(route, payload, conn)
        if outcome is None:
            return  # the device hung; the client gave up
        reply: dict[str, Any] = {"seq": self.seq, "error": int(outcome.error)}
        if outcome.data is not None:
            reply["data"] = outcome.data
        await self._write_http(writer, 200, "OK", json.dumps(reply).encode())
        if outcome.after is not None:
            self._spawn(outcome.after())

    async def _write_http(
        self, writer: asyncio.StreamWriter, status: int, reason: str, body: bytes
    ) -> None:
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()

    async def _dispatch(self, route: _Route, payload: Any, conn: _Connection) -> _Outcome | None:
        if not isinstance(payload, dict):
            return _Outcome(DiyError.BAD_JSON)
        if "deviceid" in payload:
            deviceid = payload["deviceid"]
            if deviceid == "" and self.quirks.strict:
                # §1.1 (NJH#18, ITD#138): 3.7.x hangs on "deviceid": ""; omitting the key works.
                await conn.hang()
                return None
            if not isinstance(deviceid, str):
                return _Outcome(DiyError.BAD_PARAMS)
            if deviceid and deviceid != self.config.deviceid:
                return _Outcome(DiyError.WRONG_DEVICEID)
        if self.config.encrypted:
            # §2: a LAN-mode device wants encrypted requests; plain DIY calls get 401.
            return _Outcome(DiyError.ENCRYPTED)
        data = payload.get("data", {})
        if not isinstance(data, dict):
            return _Outcome(DiyError.BAD_PARAMS)
        return await route(data, conn)

    # ------------------------------------------------------------------ routes

    async def _info(self, data: dict[str, Any], conn: _Connection) -> _Outcome:
        fields = self._info_fields()
        if self.quirks.info_as_string:
            # §1.4 (ITD#10): 3.3/3.4 send `data` as a JSON *string*.
            return _Outcome(DiyError.OK, json.dumps(fields, separators=(",", ":")))
        return _Outcome(DiyError.OK, fields)

    async def _switch(self, data: dict[str, Any], conn: _Connection) -> _Outcome:
        value = data.get("switch")
        if value not in ("on", "off"):
            return _Outcome(DiyError.BAD_PARAMS)
        self.switch = str(value)
        self._bump_seq()
        return _Outcome(DiyError.OK)

    async def _startup(self, data: dict[str, Any], conn: _Connection) -> _Outcome:
        value = data.get("startup")
        if value not in ("on", "off", "stay"):
            return _Outcome(DiyError.BAD_PARAMS)
        self.startup = str(value)
        self._bump_seq()
        return _Outcome(DiyError.OK)

    async def _signal_strength(self, data: dict[str, Any], conn: _Connection) -> _Outcome:
        return _Outcome(DiyError.OK, {"signalStrength": self.config.signal_strength})

    async def _pulse(self, data: dict[str, Any], conn: _Connection) -> _Outcome:
        pulse = data.get("pulse")
        width = data.get("pulseWidth", self.pulse_width)
        if pulse not in ("on", "off") or not isinstance(width, int) or isinstance(width, bool):
            return _Outcome(DiyError.BAD_PARAMS)
        if not _PULSE_MIN <= width <= _PULSE_MAX or width % _PULSE_STEP:
            return _Outcome(DiyError.BAD_PARAMS)
        self.pulse, self.pulse_width = str(pulse), width
        self._bump_seq()
        return _Outcome(DiyError.OK)

    async def _wifi(self, data: dict[str, Any], conn: _Connection) -> _Outcome:
        ssid, password = data.get("ssid"), data.get("password")
        if not isinstance(ssid, str) or not ssid or not isinstance(password, str):
            return _Outcome(DiyError.BAD_PARAMS)
        self.ssid = ssid  # the password is not kept
        self._bump_seq()
        return _Outcome(DiyError.OK)

    async def _ota_unlock(self, data: dict[str, Any], conn: _Connection) -> _Outcome | None:
        cfg = self.config
        if not self.quirks.flashable:
            return _Outcome(DiyError.BAD_PARAMS)
        if self.ota_unlocked:
            return _Outcome(DiyError.OK)  # §1.9: otaUnlock persists
        self._set_stage(DiyStage.UNLOCKING)
        try:
            if self.quirks.strict and not (cfg.internet and cfg.removed_from_ewelink):
                # §1.1 (ITD#137, NJH#15): 3.7.x unlock hangs without cloud or while bound.
                await conn.hang()
                return None
            if not cfg.internet:
                return _Outcome(DiyError.NO_INTERNET)
            if cfg.unlock_rejected:
                return _Outcome(DiyError.UNLOCK_REJECTED)
            self.ota_unlocked = True
            self._bump_seq()
            return _Outcome(DiyError.OK)
        finally:
            self._set_stage(DiyStage.DIY_IDLE)

    async def _ota_flash(self, data: dict[str, Any], conn: _Connection) -> _Outcome:
        if not self.quirks.flashable:
            return _Outcome(DiyError.BAD_PARAMS)  # 1.x (R4/BL602): no DIY OTA, see module doc
        if self.stage in (DiyStage.DOWNLOADING, DiyStage.FLASHING):
            return _Outcome(DiyError.BAD_PARAMS)  # one flash at a time [infer]
        if not self.ota_unlocked:
            return _Outcome(DiyError.LOCKED)
        url, sha = data.get("downloadUrl"), data.get("sha256sum")
        if not isinstance(url, str) or not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
            return _Outcome(DiyError.BAD_PARAMS)
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            return _Outcome(DiyError.BAD_PARAMS)
        if parts.scheme != "http" or not parts.hostname or port == 0:
            return _Outcome(DiyError.BAD_PARAMS)  # §1.8: plain http only
        if self.config.reply_before_download:
            return _Outcome(DiyError.OK, after=lambda: self._flash_job(parts, sha))
        # [infer] §1.7 lists 408/413/424/471 as ota_flash replies, so by default the
        # device pre-downloads and verifies the image before it answers.
        try:
            image = await self._download_and_verify(parts, sha)
        except _FlashFailedError as failure:
            return _Outcome(failure.reply)
        return _Outcome(DiyError.OK, after=lambda: self._finish_flash(parts, image))

    # ------------------------------------------------------------------ OTA

    def _host_header(self, parts: SplitResult) -> str:
        if self.quirks.itead_host:
            return ITEAD_HOST  # §1.8: 3.5.0/3.6.0 bug
        return parts.netloc.rpartition("@")[2]

    async def _flash_job(self, parts: SplitResult, sha: str) -> None:
        """`reply_before_download`: failures are only reported through the callback."""
        try:
            image = await self._download_and_verify(parts, sha)
        except _FlashFailedError as failure:
            await self._send_callback(parts, failure.callback)
            return
        await self._finish_flash(parts, image)

    async def _download_and_verify(self, parts: SplitResult, sha: str) -> bytes:
        self._set_stage(DiyStage.DOWNLOADING)
        try:
            image = bytearray(await self._download(parts))
        except _FlashFailedError:
            self._set_stage(DiyStage.FAILED)
            raise
        if Fault.CORRUPT_BYTE in self.config.faults and image:
            image[len(image) // 2] ^= 0xFF
        # §1.8 (ITD#102): an uppercase hash "made the flash fail": compare as sent.
        if hashlib.sha256(image).hexdigest() != sha:
            self._set_stage(DiyStage.FAILED)
            raise _FlashFailedError(DiyError.SHA_MISMATCH, CallbackError.CHECK_FAILURE)
        self._set_stage(DiyStage.FLASHING)
        return bytes(image)

    async def _download(self, parts: SplitResult) -> bytes:
        faults = self.config.faults
        buffer = bytearray()
        total: int | None = None
        while total is None or len(buffer) < total:
            offset = len(buffer)
            if offset and self.config.timing.chunk_delay:
                await asyncio.sleep(self.config.timing.chunk_delay)
            # The chunk that holds the middle byte is where a mid-download fault strikes.
            halfway = total is not None and offset + DOWNLOAD_CHUNK > total // 2
            if halfway and Fault.STALL in faults:
                # Stop mid-download without closing anything: no reply, no callback.
                await asyncio.get_running_loop().create_future()
            end = offset + DOWNLOAD_CHUNK - 1
            if total is not None:
                end = min(end, total - 1)
            drop = halfway and Fault.DROP_MID_DOWNLOAD in faults
            start, chunk_total, body = await self._fetch_range(parts, offset, end, drop)
            if start != offset or (total is not None and chunk_total != total) or not body:
                raise _FlashFailedError(DiyError.DOWNLOAD_FAILED, CallbackError.DOWNLOAD_FAILED)
            if total is None:
                total = chunk_total
                if total > MAX_IMAGE_SIZE:
                    # §1.8: 413 decided from the total announced in Content-Range.
                    raise _FlashFailedError(DiyError.TOO_LARGE, CallbackError.DOWNLOAD_FAILED)
            buffer += body
        return bytes(buffer)

    async def _fetch_range(
        self, parts: SplitResult, start: int, end: int, drop: bool
    ) -> tuple[int, int, bytes]:
        """One `Range: bytes=start-end` GET; returns (first byte, total size, body)."""
        host = self._host_header(parts)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        byte_range = f"bytes={start}-{end}"
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nRange: {byte_range}\r\n"
            "User-Agent: itead-device\r\nConnection: close\r\n\r\n"
        ).encode()
        status: int | None = None
        failed = _FlashFailedError(DiyError.DOWNLOAD_FAILED, CallbackError.DOWNLOAD_FAILED)
        try:
            async with asyncio.timeout(self.config.timing.http_timeout):
                reader, writer = await asyncio.open_connection(
                    parts.hostname, parts.port or 80, limit=_MAX_HEAD, local_addr=self._local_addr
                )
                try:
                    writer.write(request)
                    await writer.drain()
                    status_line, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
                    status = int(status_line.split(" ", 2)[1])
                    if drop:
                        writer.transport.abort()  # Fault.DROP_MID_DOWNLOAD
                        raise failed
                    if status != 206:
                        # §1.7/§1.8: 404, or a server without Range support (200) -> 424.
                        raise failed
                    if "transfer-encoding" in headers or headers.get(
                        "content-encoding", "identity"
                    ) not in ("", "identity"):
                        raise failed  # §1.8: no chunked, no gzip
                    match = _CONTENT_RANGE_RE.fullmatch(headers.get("content-range", ""))
                    if match is None:
                        raise failed
                    first, last, total = (int(group) for group in match.groups())
                    length = int(headers["content-length"])
                    if length != last - first + 1 or last < first or total <= last:
                        raise failed
                    body = await reader.readexactly(length)
                finally:
                    writer.close()
        except TimeoutError:
            raise _FlashFailedError(
                DiyError.PREDOWNLOAD_TIMEOUT, CallbackError.DOWNLOAD_FAILED
            ) from None
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            KeyError,
            IndexError,
        ):
            raise failed from None
        finally:
            self.downloads.append(
                DownloadRequest(url=parts.geturl(), range=byte_range, host=host, status=status)
            )
        return first, total, body

    async def _finish_flash(self, parts: SplitResult, image: bytes) -> None:
        """Write the image, call back, leave `_ewelink._tcp` and boot Tasmota."""
        self._set_stage(DiyStage.FLASHING)
        code = CallbackError.OK
        if self.config.internal_error:
            code = CallbackError.INTERNAL
        elif len(image) < 3 or image[0] != ESP_MAGIC or image[2] != FLASH_MODE_DOUT:
            # [unverified] the device rejecting a non-DOUT image with 409 "check failure"
            # mirrors the official tool's b[2]==3 check (§1.8, §5.7).
            code = CallbackError.CHECK_FAILURE
        if code is not CallbackError.OK:
            await self._send_callback(parts, code)
            self._set_stage(DiyStage.FAILED)
            return
        self.flash.write(ARDUINO_OFFSET, image)
        await self._send_callback(parts, CallbackError.OK)
        self._set_advertising(False)
        self._close_rest()
        if self.config.timing.reboot_delay:
            await asyncio.sleep(self.config.timing.reboot_delay)
        self.final_image = image
        self._set_stage(DiyStage.TASMOTA)
        if self._on_final_image is not None:
            await self._on_final_image(image)

    async def _send_callback(self, parts: SplitResult, code: CallbackError) -> None:
        """`POST /api/device/otaFlash` to the download server (§1.7, inferred target)."""
        if Fault.LOSE_RESULT_CALLBACK in self.config.faults:
            _LOGGER.debug("%s: result callback lost (fault)", self.config.deviceid)
            return
        host = self._host_header(parts)
        body = json.dumps({"error": int(code)}).encode()
        request = (
            f"POST {CALLBACK_PATH} HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        status: int | None = None
        try:
            async with asyncio.timeout(self.config.timing.http_timeout):
                reader, writer = await asyncio.open_connection(
                    parts.hostname, parts.port or 80, local_addr=self._local_addr
                )
                try:
                    writer.write(request)
                    await writer.drain()
                    status_line = await reader.readline()
                    status = int(status_line.split(b" ", 2)[1])
                finally:
                    writer.close()
        except (TimeoutError, OSError, ValueError, IndexError):
            _LOGGER.debug("%s: result callback not delivered", self.config.deviceid)
        url = f"http://{parts.netloc.rpartition('@')[2]}{CALLBACK_PATH}"
        self.callbacks.append(FlashCallback(url=url, host=host, error=int(code), status=status))
        self._notify()

    def _close_rest(self) -> None:
        """Stop accepting and drop open REST connections (not the running flash job)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
