"""Tiny in-test peers for the setup-mode emulator tests.

A minimal fake eWeLink cloud (dispatch + WSS on one TLS port, as SonOTA does),
a plain-HTTP firmware server (Range, paced or burst 200, forced status) and
certificate helpers. Built directly on aiohttp + ssl; they deliberately do not
import custom_components, so the emulator is tested on its own.
Everything binds to 127.0.0.1 port 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
import datetime
import hashlib
import itertools
import json
from pathlib import Path
import ssl
from types import TracebackType
from typing import Any, Self
import uuid
import warnings

from aiohttp import WSMsgType, web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from homeassistant.util.ssl import server_context_modern

SERVER_LEGACY_CIPHERS = "AES128-SHA:AES256-SHA:AES128-SHA256:AES256-SHA256:@SECLEVEL=0"
USER1_PATH = "/ota/image_user1-0x01000.bin"
USER2_PATH = "/ota/image_user2-0x81000.bin"
ARDUINO_PATH = "/ota/image_arduino.bin"
SLOW_PREFIX = "/slowota/"
"""SonOTA's throttled route: the same files as `/ota/`, Range ignored, always paced (§6.5)."""


# -- certificates and server TLS contexts ----------------------------------


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    """RSA-2048 self-signed cert + key as PEM files (call outside the event loop)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sonoff-ota")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def legacy_server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    """TLS 1.0-1.2, RSA-kx AES-CBC suites at SECLEVEL 0 (spec §9 recommendation)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers(SERVER_LEGACY_CIPHERS)
    context.load_cert_chain(*cert)
    return context


def modern_server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    """Home Assistant's modern server context (TLS >= 1.2, ECDHE suites only).

    Python's bare default server context is not a stable reference: on Python 3.14
    with OpenSSL 3.6 it still accepts TLS 1.2 with AES256-SHA256 (RSA key exchange),
    where Python 3.11-3.13 with OpenSSL 3.0 refuse it (spec setup-mode-ota.md §9).
    """
    context = server_context_modern()
    context.load_cert_chain(*cert)
    return context


# -- failed server-side handshakes ---------------------------------------------

TRANSPORT_ERROR = "Error on transport creation for incoming connection"


def record_failed_handshakes(sink: list[BaseException]) -> None:
    """Collect failed TLS accepts instead of letting the debug loop report them.

    phcc runs the loop in debug mode, where asyncio hands every failed server
    handshake to the loop's exception handler, which fails the test. Failed
    handshakes are what some tests are about, so they are collected here and
    everything else is passed on. The handler stays on this test's loop (it
    must still catch reports that arrive while the peers shut down).
    """
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(handler_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == TRANSPORT_ERROR and isinstance(
            exc, ssl.SSLError | ConnectionError
        ):
            sink.append(exc)
            return
        if previous is not None:
            previous(handler_loop, context)
        else:
            handler_loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


# -- running an aiohttp app on 127.0.0.1:0 ---------------------------------


class _Site:
    def __init__(self, app: web.Application, context: ssl.SSLContext | None) -> None:
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        self._context = context
        self.port = 0

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._context)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._runner.cleanup()


# -- firmware file server ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pacing:
    """SonOTA slowstream (spec §6.5), scaled down: first bytes, pause, pieces."""

    first: int = 10
    first_pause: float = 0.03
    piece: int = 1400
    pause: float = 0.008

    @classmethod
    def slowstream(cls, scale: float = 1.0) -> Pacing:
        """SonOTA's own figures (§6.5, §12): 10 B, 0.9 s, then 1400 B every 0.3 s, times `scale`."""
        return cls(first=10, first_pause=0.9 * scale, piece=1400, pause=0.3 * scale)


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """A request as the server saw it."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    version: str
    status: int


class FileServer:
    """Plain HTTP, routes on the path only. Range -> 206; otherwise 200 (paced or burst).

    Like SonOTA, `/slowota/<name>` serves `/ota/<name>` through the slow handler.
    """

    def __init__(
        self,
        files: dict[str, bytes],
        *,
        pacing: Pacing | None = None,
        forced_status: dict[str, int] | None = None,
        honour_range: bool = True,
        slow_pacing: Pacing | None = None,
    ) -> None:
        self.files = dict(files)
        self.pacing = pacing
        """Pacing of non-Range GETs on `/ota/` (None: one burst, like tornado's static files)."""
        self.slow_pacing = slow_pacing if slow_pacing is not None else Pacing.slowstream()
        """Pacing of `/slowota/` (SonOTA's own figures unless scaled)."""
        self.forced_status = dict(forced_status or {})
        self.honour_range = honour_range
        self.requests: list[SeenRequest] = []
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._serve)
        self._site = _Site(app, None)

    @property
    def port(self) -> int:
        return self._site.port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> Self:
        await self._site.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._site.stop()

    def _note(self, request: web.Request, status: int) -> None:
        self.requests.append(
            SeenRequest(
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                version=f"HTTP/{request.version.major}.{request.version.minor}",
                status=status,
            )
        )

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        slow = request.path.startswith(SLOW_PREFIX)
        path = "/ota/" + request.path.removeprefix(SLOW_PREFIX) if slow else request.path
        data = self.files.get(path)
        if data is None:
            self._note(request, 404)
            return web.Response(status=404)
        if slow:
            # SonOTA's slow handler: ignores Range, always the whole file, paced (§6.5).
            self._note(request, 200)
            return await self._paced(request, data, self.slow_pacing)
        forced = self.forced_status.get(request.path)
        if forced is not None:
            self._note(request, forced)
            headers = {"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"}
            return web.Response(status=forced, body=data, headers=headers)
        range_header = request.headers.get("Range")
        if range_header and self.honour_range:
            first_text, _, last_text = range_header.removeprefix("bytes=").partition("-")
            first = int(first_text)
            last = min(int(last_text), len(data) - 1)
            self._note(request, 206)
            return web.Response(
                status=206,
                body=data[first : last + 1],
                headers={"Content-Range": f"bytes {first}-{last}/{len(data)}"},
            )
        self._note(request, 200)
        if self.pacing is None:
            return web.Response(body=data)
        return await self._paced(request, data, self.pacing)

    async def _paced(self, request: web.Request, data: bytes, pacing: Pacing) -> web.StreamResponse:
        # The headers of SonOTA's slow handler, which mimic ITEAD's Express server (§6.5).
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "X-Powered-By": "Express",
                "Content-Disposition": f'attachment; filename="{request.path.rsplit("/", 1)[-1]}"',
                "Accept-Ranges": "bytes",
                "Cache-Control": "public, max-age=0",
            }
        )
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: pacing.first])
        await asyncio.sleep(pacing.first_pause)
        for start in range(pacing.first, len(data), pacing.piece):
            await response.write(data[start : start + pacing.piece])
            await asyncio.sleep(pacing.pause)
        await response.write_eof()
        return response


# -- the fake cloud ----------------------------------------------------------


@dataclass(slots=True)
class CloudScript:
    """What the fake cloud does after the device's first `update`."""

    toggles: list[str] = field(default_factory=lambda: ["off", "on", "off", "on", "off"])
    send_upgrade: bool = True
    upgrade_model: str | None = None
    """None: echo the model from register (as SonOTA does)."""
    bad_digest_upgrades: int = 0
    """The first N upgrades carry a wrong digest."""
    slowstream_after_404: bool = False
    """SonOTA: after any 404 ack, later upgrades point at `/slowota/` (§6.3, §6.5)."""


class FakeCloud:
    """Dispatch + WSS `/api/ws` on one TLS listener (spec §6.1-§6.3)."""

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        downloads: FileServer | None = None,
        script: CloudScript | None = None,
    ) -> None:
        self.script = script if script is not None else CloudScript()
        self.downloads = downloads
        self.dispatch_bodies: list[dict[str, Any]] = []
        self.dispatch_headers: list[dict[str, str]] = []
        self.tls: list[tuple[str, str]] = []
        """(protocol, cipher) negotiated for each dispatch."""
        self.ws_headers: list[dict[str, str]] = []
        self.frames: list[dict[str, Any]] = []
        """Every device -> server text frame, per connection in order."""
        self.acks: list[dict[str, Any]] = []
        self.server_keys: list[str] = []
        self.upgrades_sent: list[dict[str, Any]] = []
        self.pings = 0
        self.slowstream = False
        """SonOTA's global switch: set by the first 404 ack (with `slowstream_after_404`)."""
        self.connections = 0
        self.closed = 0
        self.failed_handshakes: list[BaseException] = []
        self.ws_closed = asyncio.Event()
        self.acked = asyncio.Event()
        self.pinged = asyncio.Event()
        self._sequence = itertools.count(1_700_000_000_000)
        self._sockets: set[web.WebSocketResponse] = set()
        app = web.Application()
        app.router.add_post("/dispatch/device", self._dispatch)
        app.router.add_get("/api/ws", self._ws)
        self._site = _Site(app, context)

    @property
    def port(self) -> int:
        return self._site.port

    async def __aenter__(self) -> Self:
        record_failed_handshakes(self.failed_handshakes)
        await self._site.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for ws in list(self._sockets):
            await ws.close()
        await self._site.stop()

    async def _dispatch(self, request: web.Request) -> web.Response:
        self.dispatch_bodies.append(json.loads(await request.read()))
        self.dispatch_headers.append(dict(request.headers))
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        cipher = ssl_object.cipher() if isinstance(ssl_object, ssl.SSLObject) else None
        if isinstance(ssl_object, ssl.SSLObject) and cipher is not None:
            self.tls.append((str(ssl_object.version()), cipher[0]))
        return web.json_response({"error": 0, "reason": "ok", "IP": "127.0.0.1", "port": self.port})

    def _next_sequence(self) -> str:
        return str(next(self._sequence))

    def _upgrade(self, deviceid: str, key: str, model: str) -> dict[str, Any]:
        assert self.downloads is not None
        bin_list = []
        for name, path in (("user1.bin", USER1_PATH), ("user2.bin", USER2_PATH)):
            digest = hashlib.sha256(self.downloads.files[path]).hexdigest()
            if len(self.upgrades_sent) < self.script.bad_digest_upgrades:
                digest = "0" * 64
            url_path = SLOW_PREFIX + path.removeprefix("/ota/") if self.slowstream else path
            bin_list.append(
                {"downloadUrl": self.downloads.url(url_path), "digest": digest, "name": name}
            )
        return {
            "action": "upgrade",
            "deviceid": deviceid,
            "apikey": key,
            "userAgent": "app",
            "sequence": self._next_sequence(),
            "ts": 0,
            "params": {
                "binList": bin_list,
                "model": self.script.upgrade_model or model,
                "version": "23.42.5",
            },
        }

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self._sockets.add(ws)
        self.connections += 1
        self.ws_headers.append(dict(request.headers))
        key = str(uuid.uuid4())
        self.server_keys.append(key)
        model = "ITA-GZ1-GL"
        actions_sent = False
        try:
            async for message in ws:
                if message.type == WSMsgType.PING:
                    self.pings += 1
                    self.pinged.set()
                    await ws.pong(message.data)
                    continue
                if message.type != WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                self.frames.append(data)
                action = data.get("action")
                if action is None:
                    self.acks.append(data)
                    self.acked.set()
                    if data.get("error") == 404 and self.script.slowstream_after_404:
                        self.slowstream = True
                    continue
                reply: dict[str, Any] = {"error": 0, "deviceid": data["deviceid"], "apikey": key}
                if action == "register":
                    reply["config"] = {"hb": 1, "hbInterval": 145}
                    model = data["model"]
                elif action == "date":
                    now = datetime.datetime.now(datetime.UTC)
                    reply["date"] = now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
                elif action == "query":
                    reply["params"] = 0
                await ws.send_json(reply)
                if action == "update" and not actions_sent:
                    actions_sent = True
                    await self._send_actions(ws, data["deviceid"], key, model)
        finally:
            self._sockets.discard(ws)
            self.closed += 1
            self.ws_closed.set()
        return ws

    async def _send_actions(
        self, ws: web.WebSocketResponse, deviceid: str, key: str, model: str
    ) -> None:
        for switch in self.script.toggles:
            await ws.send_json(
                {
                    "action": "update",
                    "deviceid": deviceid,
                    "apikey": key,
                    "userAgent": "app",
                    "sequence": self._next_sequence(),
                    "ts": 0,
                    "params": {"switch": switch},
                    "from": "app",
                }
            )
        if self.script.send_upgrade and self.downloads is not None:
            upgrade = self._upgrade(deviceid, key, model)
            self.upgrades_sent.append(upgrade)
            await ws.send_json(upgrade)


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition on the loop (for counters that have no event)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - plain counters, no event to wait on
            await asyncio.sleep(0.01)
