"""eWeLink station mode: dispatch, the WebSocket session with "the cloud", the OTA upgrade.

Follows shared/spec/setup-mode-ota.md §6 (dispatch, WS, upgrade, downloads)
and §9/§10 (TLS and pinning, see `legacy_tls`). All addresses come from the
`/ap` settings and the dispatch reply; nothing is hard-wired.

Timing (EMULATION CHOICES, the spec gives no figures for the stock firmware; see
`profile` for the values):
- every connect, every read of a download and every awaited reply has its own
  `Timing.station_read_timeout`; a download as a whole has none, so SonOTA's
  slowstream (10 B, 0.9 s, then 1400 B every 0.3 s, ~51 s per image, §6.5) finishes;
- after a failed attempt (TLS refused, dispatch failed, socket closed, 404 ack) the
  device "reconnects later" (§6.3, §13.5): it waits `Timing.retry_delays()`, a back-off
  that doubles up to `retry_delay_max`, before the next dispatch; it never redoes
  dispatch, register and upgrade at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
import contextlib
from dataclasses import dataclass, field
import enum
import hashlib
import json
import ssl
import time
from typing import Any, Literal

import aiohttp
from yarl import URL

from virtual_sonoff.flash_memory import REGION_USER, USER1_OFFSET, USER2_OFFSET, FlashMemory
from virtual_sonoff.legacy_tls import TlsVariant, client_context_for, parse_version
from virtual_sonoff.profile import Fault, Faults, Timing

type RunningSlot = Literal["user1", "user2"]
type EventSink = Callable[[str, Mapping[str, object]], None]

CHUNK_SIZE = 4096  # §6.5: one Range request per 4 KiB
DOWNLOAD_HOST = "dl.itead.cn"  # §6.5: fixed Host header, not the URL host
DOWNLOAD_USER_AGENT = "itead-device"
WS_HOST = "iotgo.iteadstudio.com"  # §6.3: Host seen in the cloud capture
WS_PATH = "/api/ws"
DISPATCH_PATH = "/dispatch/device"
RSSI = -41


class StationPhase(enum.StrEnum):
    """Where station mode is; `setup_mode` maps these onto its `Stage`."""

    DISPATCHING = "dispatching"
    TLS_REJECTED = "tls_rejected"
    CONNECTED = "connected"
    DOWNLOADING = "downloading"
    UPGRADE_ACCEPTED = "upgrade_accepted"


@dataclass(frozen=True, slots=True)
class StationIdentity:
    """Who the device is, as it tells the cloud."""

    deviceid: str
    apikey: str = field(repr=False)
    model: str
    rom_version: str
    sta_mac: str
    running_slot: RunningSlot


@dataclass(frozen=True, slots=True)
class RxBuffer:
    """Emulation of "the 404 problem" of old non-Range firmware (§6.5, §10).

    EMULATION CHOICE (not from the spec): the old firmware is modelled as a
    leaky bucket of `capacity` bytes that the flash writer drains at
    `drain_rate` bytes/s. Each piece of a non-Range 200 body that arrives
    fills it; if it ever overflows, the firmware gives up and acks 404.
    An unpaced body (the whole image in one burst) overflows; SonOTA's
    slowstream (10 bytes, pause, then ~1400-byte pieces with pauses) does not.
    `drain_rate` is per real second: the station divides it by `Timing.scale`.
    """

    capacity: int = 8192
    drain_rate: float = 512_000.0


FAST_RX_BUFFER = RxBuffer()
"""For tests: a paced server with 1400 B per >= 5 ms passes, a burst fails."""
REALISTIC_RX_BUFFER = RxBuffer(capacity=5840, drain_rate=16_000.0)
"""Roughly 4 TCP segments; SonOTA's 1400 B / 0.3 s (~4.7 KB/s) passes."""


def default_uses_range(rom_version: str) -> bool:
    """1.x firmware older than 1.5.5 does one plain GET (§6.5, §10)."""
    version = parse_version(rom_version)
    return not (version[0] == 1 and version < (1, 5, 5))


@dataclass(frozen=True, slots=True)
class DownloadBehaviour:
    """How the firmware downloads an upgrade image."""

    uses_range: bool
    paced_download_required: bool = True
    """Model the 404 problem for non-Range downloads (see `RxBuffer`)."""
    rx_buffer: RxBuffer = FAST_RX_BUFFER


@dataclass(frozen=True, slots=True)
class DownloadRequest:
    """One firmware download request the device sent, and what came back."""

    path: str
    query: dict[str, str]
    range: str | None
    headers: dict[str, str]
    status: int | None
    received: int


@dataclass(frozen=True, slots=True)
class SentAck:
    """An ack the device sent for a server action."""

    action: str
    sequence: str
    error: int


@dataclass(frozen=True, slots=True)
class AcceptedUpgrade:
    """An upgrade image that passed verification and was written."""

    slot: RunningSlot
    offset: int
    image: bytes = field(repr=False)


class _Download(enum.Enum):
    FAILED = "failed"


_SLOT_OFFSET: dict[RunningSlot, int] = {"user1": USER1_OFFSET, "user2": USER2_OFFSET}


def inactive_slot(running: RunningSlot) -> RunningSlot:
    """Ping-pong OTA: the slot the device is not running (§6.4)."""
    return "user1" if running == "user2" else "user2"


class EwelinkStation:
    """The eWeLink firmware in station mode, from dispatch to an accepted upgrade.

    `run()` loops (dispatch -> WSS -> register sequence -> actions) and
    reconnects after a TLS failure, a closed socket, a wrong-model upgrade or
    a 404 ack, until an upgrade is accepted; it then returns it.
    """

    def __init__(
        self,
        identity: StationIdentity,
        server_name: str,
        port: int,
        *,
        tls_variant: TlsVariant,
        download: DownloadBehaviour,
        timing: Timing,
        faults: Faults,
        flash: FlashMemory,
        on_phase: Callable[[StationPhase], None],
        log: EventSink,
    ) -> None:
        """Set up; nothing runs before `run()`."""
        self._id = identity
        self._server_name = server_name
        self._port = port
        self._tls_variant = tls_variant
        self._download = download
        self._timing = timing
        self._faults = faults
        self._flash = flash
        self._on_phase = on_phase
        self._log = log
        self._boot = time.monotonic()
        self.relay = False
        self.downloads: list[DownloadRequest] = []
        self.acks: list[SentAck] = []
        self.dispatches = 0
        """Dispatch replies received."""
        self.pings_sent = 0
        self.retry_waits: list[float] = []
        """The back-off chosen before each new attempt, in order (schedule, not measured)."""

    # -- main loop -------------------------------------------------------

    async def run(self) -> AcceptedUpgrade:
        """Talk to the cloud until an upgrade is accepted and written."""
        delays = self._timing.retry_delays()
        while True:
            accepted = await self._attempt()
            if accepted is not None:
                return accepted
            # §6.3/§13.5: the device reconnects *later*; consecutive failures back off.
            delay = next(delays)
            self.retry_waits.append(delay)
            self._log("retry_wait", {"attempt": len(self.retry_waits), "delay": delay})
            await asyncio.sleep(delay)

    def _uptime(self) -> int:
        return int(time.monotonic() - self._boot)

    async def _attempt(self) -> AcceptedUpgrade | None:
        context = client_context_for(
            self._id.rom_version, self._tls_variant, refuse=Fault.REFUSE_TLS in self._faults
        )
        connector = aiohttp.TCPConnector(ssl=context, force_close=True)
        # No total timeouts: aiohttp's total-timeout timer of ws_connect can
        # outlive the socket; per-operation timeouts are what the firmware has.
        async with aiohttp.ClientSession(
            connector=connector, auto_decompress=False, timeout=self._timeout()
        ) as session:
            target = await self._dispatch(session)
            if target is None:
                return None
            return await self._websocket(session, *target)

    # -- dispatch ----------------------------------------------------------

    async def _dispatch(self, session: aiohttp.ClientSession) -> tuple[str, int] | None:
        self._on_phase(StationPhase.DISPATCHING)
        url = URL.build(scheme="https", host=self._server_name, port=self._port, path=DISPATCH_PATH)
        # Body as in the cloud capture (§6.2).
        body = {
            "accept": "ws;2",
            "version": 2,
            "ts": self._uptime(),
            "deviceid": self._id.deviceid,
            "apikey": self._id.apikey,
            "model": self._id.model,
            "romVersion": self._id.rom_version,
        }
        try:
            async with session.post(url, json=body) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as err:
            if _is_tls_failure(err):
                # Pinned firmware: the verify error comes right after the server's
                # Certificate, and the device drops the connection (§10). A server
                # without the old suites fails earlier ("no shared cipher", §9).
                detail = str(err)[:300]
                self._log("tls_rejected", {"error": type(err).__name__, "detail": detail})
                self._on_phase(StationPhase.TLS_REJECTED)
                return None
            self._log("dispatch_failed", {"error": type(err).__name__})
            return None
        try:
            reply = json.loads(raw)
            address, ws_port = reply["IP"], reply["port"]
            ok = status == 200 and reply.get("error") == 0
        except (ValueError, KeyError, TypeError, AttributeError):
            ok, address, ws_port = False, None, None
        if not ok or not isinstance(address, str) or not isinstance(ws_port, int):
            self._log("dispatch_rejected", {"status": status})
            return None
        self.dispatches += 1
        self._log("dispatched", {"ip": address, "port": ws_port})
        return address, ws_port

    # -- websocket -------------------------------------------------------

    async def _websocket(
        self, session: aiohttp.ClientSession, address: str, port: int
    ) -> AcceptedUpgrade | None:
        url = URL.build(scheme="wss", host=address, port=port, path=WS_PATH)
        try:
            ws = await session.ws_connect(
                url,
                headers={"Host": WS_HOST},
                timeout=aiohttp.ClientWSTimeout(ws_close=self._timing.station_read_timeout),
            )
        except (aiohttp.ClientError, TimeoutError) as err:
            self._log("ws_failed", {"error": type(err).__name__})
            return None
        ping_task = asyncio.create_task(self._ping_loop(ws))
        try:
            return await self._converse(session, ws)
        finally:
            ping_task.cancel()
            try:
                # Close first: a cancellation arriving in here must not skip it
                # (ws.close() closes the response even when cancelled).
                await ws.close()
                self._log("ws_closed", {})
            finally:
                await asyncio.gather(ping_task, return_exceptions=True)

    async def _ping_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Heartbeat pings (§6.3: hbInterval 145 s, device pings)."""
        while True:
            await asyncio.sleep(self._timing.heartbeat_interval)
            try:
                await ws.ping()
            except (ConnectionError, RuntimeError):
                return
            self.pings_sent += 1

    def _frame(self, action: str, apikey: str, **extra: object) -> dict[str, object]:
        return {
            "userAgent": "device",
            "apikey": apikey,
            "deviceid": self._id.deviceid,
            "action": action,
            **extra,
        }

    def _handshake_frames(self, server_key: str) -> list[dict[str, object]]:
        """date, update, query: sent after register with the server's apikey (§6.3)."""
        return [
            self._frame("date", server_key),
            self._frame(
                "update",
                server_key,
                params={
                    "switch": "on" if self.relay else "off",
                    "fwVersion": self._id.rom_version,
                    "rssi": RSSI,
                    "staMac": self._id.sta_mac,
                    "startup": "off",
                },
            ),
            self._frame("query", server_key, params=["timers"]),
        ]

    async def _converse(
        self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse
    ) -> AcceptedUpgrade | None:
        register = self._frame(
            "register",
            self._id.apikey,
            version=2,
            romVersion=self._id.rom_version,
            model=self._id.model,
            ts=self._uptime(),
        )
        await ws.send_str(json.dumps(register))
        self._log("sent", {"action": "register"})
        pending: list[dict[str, object]] | None = None  # None until register is answered
        server_key = self._id.apikey
        while True:
            awaiting_reply = pending is None or bool(pending)
            try:
                message = await ws.receive(
                    timeout=self._timing.station_read_timeout if awaiting_reply else None
                )
            except TimeoutError:
                self._log("reply_timeout", {})
                return None
            if message.type != aiohttp.WSMsgType.TEXT:
                if message.type in {
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                }:
                    self._log("ws_closed_by_server", {})
                    return None
                continue
            try:
                data = json.loads(message.data)
            except ValueError:
                self._log("unknown_frame", {})
                continue
            if not isinstance(data, dict):
                continue
            if "action" in data:
                outcome = await self._handle_action(session, ws, data, server_key)
                if outcome is _Download.FAILED:
                    return None
                if outcome is not None:
                    return outcome
                continue
            if "error" not in data:
                self._log("unknown_frame", {})
                continue
            if data["error"] != 0:
                self._log("request_rejected", {"error": data["error"]})
                return None
            if pending is None:
                issued = data.get("apikey")
                server_key = issued if isinstance(issued, str) else self._id.apikey
                self._log("registered", {})
                self._on_phase(StationPhase.CONNECTED)
                pending = self._handshake_frames(server_key)
            elif pending:
                pending.pop(0)
            if pending:
                frame = pending[0]
                await ws.send_str(json.dumps(frame))
                self._log("sent", {"action": frame["action"]})

    async def _ack(
        self, ws: aiohttp.ClientWebSocketResponse, action: str, sequence: str, error: int, key: str
    ) -> None:
        ack = {
            "error": error,
            "userAgent": "device",
            "apikey": key,
            "deviceid": self._id.deviceid,
            "sequence": sequence,
        }
        try:
            await ws.send_str(json.dumps(ack))
        except ConnectionError:
            # The server went away meanwhile (e.g. HA restarted): the firmware just
            # reconnects later; the ack is lost.
            self._log("ack_undelivered", {"action": action, "sequence": sequence})
        self.acks.append(SentAck(action, sequence, error))
        self._log("ack", {"action": action, "sequence": sequence, "error": error})

    async def _handle_action(
        self,
        session: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        data: dict[str, Any],
        server_key: str,
    ) -> AcceptedUpgrade | _Download | None:
        action = str(data["action"])
        sequence = str(data.get("sequence", ""))
        params = data.get("params")
        params = params if isinstance(params, dict) else {}
        if action == "update":
            switch = params.get("switch")
            if switch in {"on", "off"}:
                self.relay = switch == "on"
                self._log("relay", {"on": self.relay})
            await self._ack(ws, action, sequence, 0, server_key)
            return None
        if action == "upgrade":
            return await self._upgrade(session, ws, params, sequence, server_key)
        self._log("unknown_action", {"action": action})
        return None

    # -- upgrade -----------------------------------------------------------

    async def _upgrade(
        self,
        session: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        params: dict[str, Any],
        sequence: str,
        server_key: str,
    ) -> AcceptedUpgrade | _Download:
        if params.get("model") != self._id.model:
            # §6.3: with any other model the device closes the socket.
            self._log("upgrade_wrong_model", {"model": str(params.get("model"))})
            await ws.close()
            return _Download.FAILED
        slot = inactive_slot(self._id.running_slot)
        entries = params.get("binList")
        entry = next(
            (e for e in entries or [] if isinstance(e, dict) and e.get("name") == f"{slot}.bin"),
            None,
        )
        self._on_phase(StationPhase.DOWNLOADING)
        image: bytes | None = None
        if entry is None or not isinstance(entry.get("downloadUrl"), str):
            self._log("upgrade_no_entry", {"slot": slot})
        else:
            image = await self._fetch(session, entry["downloadUrl"])
        if image is not None and Fault.CORRUPT_BYTE in self._faults:
            corrupted = bytearray(image)
            corrupted[len(corrupted) // 2] ^= 0xFF
            image = bytes(corrupted)
        digest = str(entry.get("digest", "")).lower() if entry else ""
        if image is None or hashlib.sha256(image).hexdigest() != digest:
            if image is not None:
                self._log("digest_mismatch", {"slot": slot})
            # §6.3: 404 = download or verification failed; then the device
            # closes and later reconnects with a full register sequence.
            await self._ack(ws, "upgrade", sequence, 404, server_key)
            await ws.close()
            return _Download.FAILED
        await self._ack(ws, "upgrade", sequence, 0, server_key)
        offset = _SLOT_OFFSET[slot]
        self._flash.write(offset, image)
        self._log("flash_written", {"offset": offset, "size": len(image)})
        self._on_phase(StationPhase.UPGRADE_ACCEPTED)
        return AcceptedUpgrade(slot, offset, image)

    def _download_url(self, download_url: str) -> URL:
        ts = str(int(time.time()))
        sign = hashlib.sha256(f"{self._id.deviceid}{ts}{self._id.model}".encode()).hexdigest()
        return URL(download_url).update_query(
            {"deviceid": self._id.deviceid, "ts": ts, "sign": sign}
        )

    async def _fetch(self, session: aiohttp.ClientSession, download_url: str) -> bytes | None:
        try:
            url = self._download_url(download_url)
        except ValueError:
            self._log("download_bad_url", {})
            return None
        if url.scheme not in {"http", "https"} or not url.host:
            self._log("download_bad_url", {})
            return None
        try:
            if self._download.uses_range:
                return await self._fetch_ranges(session, url)
            return await self._fetch_whole(session, url)
        except (aiohttp.ClientError, TimeoutError) as err:
            self._log("download_failed", {"error": type(err).__name__})
            return None

    def _record(self, url: URL, headers: dict[str, str], status: int | None, received: int) -> None:
        self.downloads.append(
            DownloadRequest(
                path=url.path,
                query=dict(url.query),
                range=headers.get("Range"),
                headers=dict(headers),
                status=status,
                received=received,
            )
        )

    def _timeout(self) -> aiohttp.ClientTimeout:
        # Per connect and per read, never per transfer (see the module docstring).
        limit = self._timing.station_read_timeout
        return aiohttp.ClientTimeout(total=None, sock_connect=limit, sock_read=limit)

    async def _stall(self) -> None:
        self._log("download_stalled", {})
        await asyncio.Event().wait()

    async def _fetch_ranges(self, session: aiohttp.ClientSession, url: URL) -> bytes | None:
        data = bytearray()
        total: int | None = None
        while total is None or len(data) < total:
            start = len(data)
            headers = {
                "Host": DOWNLOAD_HOST,
                "User-Agent": DOWNLOAD_USER_AGENT,
                "Range": f"bytes={start}-{start + CHUNK_SIZE - 1}",
            }
            async with session.get(
                url,
                headers=headers,
                skip_auto_headers=("Accept", "Accept-Encoding"),
                timeout=self._timeout(),
            ) as response:
                if response.status != 206:
                    # A full 200 body to a Range request breaks these devices (§6.5, #62).
                    self._record(url, headers, response.status, 0)
                    self._log("download_bad_status", {"status": response.status})
                    return None
                span = _parse_content_range(response.headers.get("Content-Range", ""))
                if span is None or span[0] != start:
                    self._record(url, headers, response.status, 0)
                    self._log("download_bad_range", {})
                    return None
                first, last, total = span
                if total > REGION_USER:
                    self._record(url, headers, response.status, 0)
                    self._log("download_too_big", {"size": total})
                    return None
                if Fault.DROP_MID_DOWNLOAD in self._faults and start + CHUNK_SIZE > total // 2:
                    partial = await response.content.read(16)
                    response.close()
                    self._record(url, headers, response.status, len(partial))
                    self._log("download_dropped", {"at": start})
                    return None
                body = await response.read()
                self._record(url, headers, response.status, len(body))
            if len(body) != last - first + 1:
                self._log("download_short", {"at": start})
                return None
            data += body
            if Fault.STALL in self._faults:
                await self._stall()
            if len(data) < total:
                await asyncio.sleep(self._timing.chunk_delay)
        return bytes(data)

    async def _fetch_whole(self, session: aiohttp.ClientSession, url: URL) -> bytes | None:
        headers = {"Host": DOWNLOAD_HOST, "User-Agent": DOWNLOAD_USER_AGENT}
        loop = asyncio.get_running_loop()
        rx = self._download.rx_buffer
        drain_rate = rx.drain_rate / self._timing.scale
        async with session.get(
            url,
            headers=headers,
            skip_auto_headers=("Accept", "Accept-Encoding"),
            timeout=self._timeout(),
        ) as response:
            length = response.content_length
            if (
                response.status != 200
                or length is None
                or "chunked" in (response.headers.get("Transfer-Encoding", "").lower())
            ):
                self._record(url, headers, response.status, 0)
                self._log("download_bad_status", {"status": response.status})
                return None
            if length > REGION_USER:
                self._record(url, headers, response.status, 0)
                self._log("download_too_big", {"size": length})
                return None
            data = bytearray()
            level = 0.0
            last = loop.time()
            async for piece in response.content.iter_any():
                now = loop.time()
                level = max(0.0, level - (now - last) * drain_rate) + len(piece)
                last = now
                data += piece
                if self._download.paced_download_required and level > rx.capacity:
                    response.close()
                    self._record(url, headers, response.status, len(data))
                    self._log("download_overrun", {"received": len(data)})
                    return None
                if Fault.DROP_MID_DOWNLOAD in self._faults and len(data) >= length // 2:
                    response.close()
                    self._record(url, headers, response.status, len(data))
                    self._log("download_dropped", {"at": len(data)})
                    return None
                if Fault.STALL in self._faults:
                    await self._stall()
            self._record(url, headers, response.status, len(data))
        if len(data) != length:
            self._log("download_short", {"received": len(data)})
            return None
        return bytes(data)


def _is_tls_failure(err: BaseException) -> bool:
    """A failed TLS connect (only used for https), as aiohttp reports it.

    Certificate errors come as ClientSSLError; an alert from the server wraps an
    SSLError; a server that aborts the handshake without an alert (Python's
    asyncio server does) shows up as a connection reset while connecting.
    """
    if isinstance(err, aiohttp.ClientSSLError):
        return True
    return isinstance(err, aiohttp.ClientConnectorError) and isinstance(
        err.os_error, ssl.SSLError | ConnectionResetError
    )


def _parse_content_range(value: str) -> tuple[int, int, int] | None:
    """Parse `bytes first-last/total`."""
    with contextlib.suppress(ValueError):
        unit, _, rest = value.partition(" ")
        span, _, total = rest.partition("/")
        first, _, last = span.partition("-")
        if unit == "bytes":
            parsed = int(first), int(last), int(total)
            if 0 <= parsed[0] <= parsed[1] < parsed[2]:
                return parsed
    return None
