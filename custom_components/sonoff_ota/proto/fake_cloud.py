"""The fake eWeLink cloud: the HTTPS `/dispatch/device` and WebSocket `/api/ws` server (stage 2).

Facts (shared/spec/setup-mode-ota.md §6.2, §6.3, §13.2-§13.5):
- dispatch: never require headers or body fields; reply
  `{"error":0,"reason":"ok","IP":"<dotted IPv4>","port":<int>}`;
- WebSocket: ignore Host, Origin and the constant `Sec-WebSocket-Key` the firmware sends; answer
  every device action with `{"error":0,"deviceid","apikey":<server UUID ≠ device key>}` plus
  register → `config`, date → `date` (UTC, ms, `Z`), query → `params:0`; answer pings;
- after the reply to the first `update`, send `upgrade` with both `user1.bin` and `user2.bin`
  (the device picks the inactive slot, §6.4) and `model` equal to the registered model (any other
  model makes the device close the socket mid-JSON, §6.3);
- sequences must be unique strings (SonOTA's ms timestamps collided, §6.3): a counter;
- the `upgrade` ack arrives after the download: 0 = accepted (device reboots), 404 = download or
  verification failed; the device reconnects and redoes register, so re-offering is idempotent,
  and after a 404 the caller's `PacingPolicy` may switch to the paced variant (SonOTA's slowstream).

The messages themselves are in `ewelink_messages`. Plain aiohttp handlers and per-device
state; Home Assistant mounts them as views.
Apikeys (device and server) never appear in logs or reprs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
import enum
import ipaddress
import itertools
import json
import logging
import time
from typing import Any
import uuid

from aiohttp import WSCloseCode, WSMsgType, web

from .ewelink_messages import (
    DEFAULT_MODEL,
    HEARTBEAT_CONFIG,
    UpgradeOffer,
    dispatch_reply,
    upgrade_message,
    utc_timestamp,
)
from .json_fields import opt_int, opt_str
from .legacy_tls import TlsHandshakeObserver

_LOGGER = logging.getLogger(__name__)


class PacingPolicy(enum.StrEnum):
    """Which variant of the offer (normal or paced URLs) a device gets."""

    NEVER = "never"
    AFTER_404 = "after_404"
    """Like SonOTA: switch to the paced variant once the device acked 404 (spec §6.3)."""
    ALWAYS = "always"


class CloudEventKind(enum.StrEnum):
    """Milestones of the stage-2 exchange."""

    DISPATCHED = "dispatched"
    REGISTERED = "registered"
    UPGRADE_SENT = "upgrade_sent"
    ACK = "ack"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """One milestone; `index` is its position in the history it was appended to."""

    index: int
    kind: CloudEventKind
    deviceid: str | None
    model: str | None = None
    rom_version: str | None = None
    error: int | None = None
    """The ack's error code (ACK only): 0 accepted, 404 download/verification failed."""
    paced: bool = False
    """UPGRADE_SENT only: the paced variant was offered."""
    sequence: str | None = None
    known_device: bool = False


class _History:
    """An append-only list of events that can be awaited by index (no polling)."""

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []
        self._wakeup = asyncio.Event()

    def append(self, kind: CloudEventKind, **fields: Any) -> CloudEvent:
        event = CloudEvent(len(self.events), kind, **fields)
        self.events.append(event)
        self._wakeup.set()
        self._wakeup = asyncio.Event()
        return event

    async def next_event(self, index: int) -> CloudEvent:
        while len(self.events) <= index:
            await self._wakeup.wait()
        return self.events[index]

    async def wait_for(self, kind: CloudEventKind, start: int) -> CloudEvent:
        index = start
        while True:
            event = await self.next_event(index)
            if event.kind is kind:
                return event
            index += 1


class _HasHistory:
    """Reads and awaits `_history`: one device's events, or the whole cloud's."""

    _history: _History

    @property
    def history(self) -> list[CloudEvent]:
        """Every event, in order."""
        return self._history.events

    async def next_event(self, index: int) -> CloudEvent:
        """Return history[index], waiting until it exists."""
        return await self._history.next_event(index)

    async def wait_for(self, kind: CloudEventKind, *, start: int = 0) -> CloudEvent:
        """Wait for the first event of `kind` at or after history index `start`."""
        return await self._history.wait_for(kind, start)


class DeviceSession(_HasHistory):
    """What the cloud knows and plans for one expected device, across reconnects.

    Its history holds the events of this device only.
    """

    def __init__(
        self,
        deviceid: str,
        offer: UpgradeOffer | None,
        paced_offer: UpgradeOffer | None,
        policy: PacingPolicy,
    ) -> None:
        self.deviceid = deviceid
        self.offer = offer
        self.paced_offer = paced_offer
        self.policy = policy
        self.model: str | None = None
        self.rom_version: str | None = None
        self.dispatches = 0
        self.connections = 0
        self.upgrades_sent = 0
        self.acks: list[int | None] = []
        self.saw_404 = False
        self._history = _History()

    def __repr__(self) -> str:
        return (
            f"DeviceSession(deviceid={self.deviceid!r}, model={self.model!r}, "
            f"rom_version={self.rom_version!r}, acks={self.acks!r})"
        )

    def set_offer(
        self,
        offer: UpgradeOffer | None,
        paced_offer: UpgradeOffer | None = None,
        policy: PacingPolicy | None = None,
    ) -> None:
        """Replace the offer (takes effect on the next connection that has not had one)."""
        self.offer = offer
        self.paced_offer = paced_offer
        if policy is not None:
            self.policy = policy

    def current_offer(self) -> tuple[UpgradeOffer, bool] | None:
        """The offer the next upgrade carries and whether it is the paced variant."""
        if self.offer is None:
            return None
        wants_paced = self.policy is PacingPolicy.ALWAYS or (
            self.policy is PacingPolicy.AFTER_404 and self.saw_404
        )
        if wants_paced and self.paced_offer is not None:
            return self.paced_offer, True
        return self.offer, False


@dataclass(slots=True)
class _Connection:
    """State of one WebSocket connection."""

    server_apikey: str
    deviceid: str | None = None
    model: str | None = None
    updates: int = 0
    upgrade_sequence: str | None = None
    sequences: set[str] = field(default_factory=set)


CloudListener = Callable[[CloudEvent], None]


class FakeCloud(_HasHistory):
    """Registry of expected devices plus the dispatch and WebSocket handlers.

    Its history holds every event, of expected and unexpected devices alike.

    `advertise_ip`/`advertise_port`: what dispatch tells the device (the TLS listener that also
    serves `/api/ws`). With `advertise_ip="0.0.0.0"` the reply carries the local IPv4 address
    the dispatch request itself arrived on: the address the device evidently reaches us at.
    `tls_observer`: told about every request that came over TLS, so it can tell "hello but no
    request" (certificate pinning). `listener`: called with every event.
    Call `close()` before stopping the runner: open WebSockets otherwise hold up its shutdown.
    """

    def __init__(
        self,
        advertise_ip: str,
        advertise_port: int,
        *,
        tls_observer: TlsHandshakeObserver | None = None,
        listener: CloudListener | None = None,
    ) -> None:
        self.advertise_ip = str(ipaddress.IPv4Address(advertise_ip))
        self.advertise_port = int(advertise_port)
        self._tls_observer = tls_observer
        self._listener = listener
        self.sessions: dict[str, DeviceSession] = {}
        self._history = _History()
        self._sequence = itertools.count(int(time.time() * 1000))
        self._sockets: set[web.WebSocketResponse] = set()

    # -- registry -------------------------------------------------------------------------

    def expect_device(
        self,
        deviceid: str,
        offer: UpgradeOffer | None = None,
        *,
        paced_offer: UpgradeOffer | None = None,
        policy: PacingPolicy = PacingPolicy.AFTER_404,
    ) -> DeviceSession:
        """Register (or update) the device to upgrade; returns its session."""
        key = deviceid.lower()
        session = self.sessions.get(key)
        if session is None:
            session = DeviceSession(key, offer, paced_offer, policy)
            self.sessions[key] = session
        else:
            session.set_offer(offer, paced_offer, policy)
        return session

    def forget_device(self, deviceid: str) -> None:
        """Stop offering anything to this device."""
        self.sessions.pop(deviceid.lower(), None)

    def _emit(self, kind: CloudEventKind, deviceid: str | None, **fields: Any) -> None:
        session = self.sessions.get(deviceid) if deviceid else None
        fields["known_device"] = session is not None
        event = self._history.append(kind, deviceid=deviceid, **fields)
        if session is not None:
            session._history.append(kind, deviceid=deviceid, **fields)
        if self._listener is not None:
            try:
                self._listener(event)
            except Exception:
                _LOGGER.exception("Fake cloud listener failed")

    def _next_sequence(self) -> str:
        return str(next(self._sequence))

    def _note_request(self, request: web.Request) -> None:
        if self._tls_observer is not None and request.secure:
            self._tls_observer.note_request()

    async def close(self) -> None:
        """Close every open WebSocket (call before stopping the aiohttp runner)."""
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    # -- dispatch -------------------------------------------------------------------------

    async def handle_dispatch(self, request: web.Request) -> web.Response:
        """`POST /dispatch/device`: learn what the body tells, always point at our WSS."""
        self._note_request(request)
        raw = await request.read()  # bounded by the app's client_max_size
        payload: dict[str, Any] = {}
        try:
            decoded = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (ValueError, RecursionError) as err:
            # ValueError also covers bad UTF-8 and numbers past Python's int conversion limit;
            # RecursionError is JSON nested deeper than the stack. Never required (§6.2).
            _LOGGER.debug("Dispatch body is not JSON (%s): answering anyway", type(err).__name__)
            decoded = {}
        if isinstance(decoded, dict):
            payload = decoded
        deviceid = opt_str(payload.get("deviceid"))
        deviceid = deviceid.lower() if deviceid else None
        model = opt_str(payload.get("model"))
        rom_version = opt_str(payload.get("romVersion"))
        session = self.sessions.get(deviceid) if deviceid else None
        if session is not None:
            session.dispatches += 1
            session.model = model or session.model
            session.rom_version = rom_version or session.rom_version
        _LOGGER.debug("Dispatch from %s (model %s, romVersion %s)", deviceid, model, rom_version)
        self._emit(CloudEventKind.DISPATCHED, deviceid, model=model, rom_version=rom_version)
        return web.json_response(
            dispatch_reply(self._advertised_ip_for(request), self.advertise_port)
        )

    def _advertised_ip_for(self, request: web.Request) -> str:
        """`advertise_ip`, or for 0.0.0.0 the local IPv4 the request came in on (see class)."""
        if self.advertise_ip != "0.0.0.0":  # noqa: S104 - a sentinel, nothing binds here
            return self.advertise_ip
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if isinstance(sockname, tuple) and sockname and isinstance(sockname[0], str):
            try:
                local = ipaddress.ip_address(sockname[0].split("%", 1)[0])
            except ValueError:
                local = None
            if isinstance(local, ipaddress.IPv6Address) and local.ipv4_mapped is not None:
                local = local.ipv4_mapped
            if isinstance(local, ipaddress.IPv4Address) and not local.is_unspecified:
                return str(local)
        _LOGGER.warning("Dispatch: no IPv4 address to advertise, replying 0.0.0.0")
        return self.advertise_ip

    # -- WebSocket ------------------------------------------------------------------------

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        """`/api/ws`: the device's register/date/update/query exchange and our `upgrade`."""
        self._note_request(request)
        # autoping answers the firmware's pings (every hbInterval s, spec §6.3).
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        conn = _Connection(server_apikey=str(uuid.uuid4()))
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_text(ws, conn, msg.data)
                elif msg.type is WSMsgType.ERROR:
                    break
                else:
                    _LOGGER.debug("Ignoring a %s WebSocket frame", msg.type.name)
        except ConnectionError:
            _LOGGER.debug("Device %s dropped the WebSocket while we wrote", conn.deviceid)
        finally:
            self._sockets.discard(ws)
            self._emit(CloudEventKind.CLOSED, conn.deviceid)
        return ws

    async def _on_text(self, ws: web.WebSocketResponse, conn: _Connection, data: str) -> None:
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError) as err:
            _LOGGER.debug("Ignoring a WebSocket frame that is not JSON (%s)", type(err).__name__)
            return
        if not isinstance(payload, dict):
            _LOGGER.debug("Ignoring a WebSocket frame that is not a JSON object")
            return
        if isinstance(payload.get("action"), str):
            await self._on_action(ws, conn, payload)
        elif "sequence" in payload and "error" in payload:
            self._on_ack(conn, payload)
        else:
            _LOGGER.debug("Ignoring an unknown WebSocket frame (keys %s)", sorted(payload))

    async def _on_action(
        self, ws: web.WebSocketResponse, conn: _Connection, payload: dict[str, Any]
    ) -> None:
        action: str = payload["action"]
        deviceid = opt_str(payload.get("deviceid"))
        if deviceid is not None and conn.deviceid is None:
            conn.deviceid = deviceid.lower()
            session = self.sessions.get(conn.deviceid)
            if session is not None:
                session.connections += 1
        reply: dict[str, Any] = {
            "error": 0,
            "deviceid": deviceid if deviceid is not None else (conn.deviceid or ""),
            "apikey": conn.server_apikey,
        }
        if action == "register":
            self._on_register(conn, payload)
            reply["apikey"] = conn.server_apikey  # may have been re-drawn
            reply["config"] = dict(HEARTBEAT_CONFIG)
        elif action == "date":
            reply["date"] = utc_timestamp()
        elif action == "query":
            reply["params"] = 0
        elif action == "update":
            conn.updates += 1
        else:
            _LOGGER.debug("Answering unknown device action %r with a plain ok", action)
        sequence = payload.get("sequence")
        if isinstance(sequence, str | int) and not isinstance(sequence, bool):
            # Not in SonOTA's replies; harmless and lets the device match its request.
            reply["sequence"] = str(sequence)
        await ws.send_str(json.dumps(reply))
        if action == "update" and conn.updates == 1:
            await self._maybe_send_upgrade(ws, conn)

    def _on_register(self, conn: _Connection, payload: dict[str, Any]) -> None:
        if payload.get("apikey") == conn.server_apikey:
            # The device must get a key that is not its own (spec §6.3).
            conn.server_apikey = str(uuid.uuid4())
        model = opt_str(payload.get("model"))
        rom_version = opt_str(payload.get("romVersion"))
        conn.model = model
        session = self.sessions.get(conn.deviceid) if conn.deviceid else None
        if session is not None:
            session.model = model or session.model
            session.rom_version = rom_version or session.rom_version
        _LOGGER.debug(
            "Register from %s (model %s, romVersion %s)", conn.deviceid, model, rom_version
        )
        self._emit(CloudEventKind.REGISTERED, conn.deviceid, model=model, rom_version=rom_version)

    async def _maybe_send_upgrade(self, ws: web.WebSocketResponse, conn: _Connection) -> None:
        session = self.sessions.get(conn.deviceid) if conn.deviceid else None
        if session is None or conn.upgrade_sequence is not None:
            if session is None:
                _LOGGER.debug("No upgrade for unexpected device %s", conn.deviceid)
            return
        chosen = session.current_offer()
        if chosen is None:
            _LOGGER.debug("Device %s has no offer yet", conn.deviceid)
            return
        offer, paced = chosen
        sequence = self._next_sequence()
        conn.upgrade_sequence = sequence
        model = conn.model or session.model or DEFAULT_MODEL
        message = upgrade_message(session.deviceid, conn.server_apikey, sequence, offer, model)
        await ws.send_str(json.dumps(message))
        session.upgrades_sent += 1
        _LOGGER.debug("Sent upgrade to %s (paced: %s)", session.deviceid, paced)
        self._emit(
            CloudEventKind.UPGRADE_SENT,
            session.deviceid,
            model=model,
            paced=paced,
            sequence=sequence,
        )

    def _on_ack(self, conn: _Connection, payload: dict[str, Any]) -> None:
        sequence = str(payload.get("sequence"))
        error = opt_int(payload.get("error"))
        if conn.upgrade_sequence is None or sequence != conn.upgrade_sequence:
            _LOGGER.debug("Ack for an unknown sequence (error %s)", error)
            return
        session = self.sessions.get(conn.deviceid) if conn.deviceid else None
        if session is not None:
            session.acks.append(error)
            if error == 404:
                session.saw_404 = True
        _LOGGER.debug("Upgrade ack from %s: error %s", conn.deviceid, error)
        self._emit(CloudEventKind.ACK, conn.deviceid, error=error, sequence=sequence)
