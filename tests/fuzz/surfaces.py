"""One fuzz case per surface, with its invariants: shared by tests/fuzz/ and bench/fuzz.py.

Each `*_case` coroutine sends one generated input through real sockets on 127.0.0.1 and
raises `CrashError` when an invariant breaks. The invariants (issue 14):

- a server answer to a device is never 5xx and never 401/403 (HA's ban middleware counts a
  401 as a failed login; a 403 is what a banned IP sees); a 2xx only for a real image, with
  exactly its bytes;
- a client (setup AP, DIY, Tasmota) returns a typed result or raises its typed error, never
  a raw KeyError/TypeError/ValueError/JSONDecodeError/UnicodeError/RecursionError;
- the fake cloud offers the upgrade only to the device being flashed, and closes every
  WebSocket it opened (no leaked session).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
import contextlib
from dataclasses import dataclass
import json
import re
import socket
import ssl
import struct
from typing import Final

import aiohttp
from homeassistant.core import HomeAssistant
from hypothesis import strategies as st

from custom_components.sonoff_ota.flash_server import FlashServer, async_get_flash_server
from custom_components.sonoff_ota.proto.diy_client import DiyClient, DiyError
from custom_components.sonoff_ota.proto.diy_discovery import DiyAdvertError, parse_advert
from custom_components.sonoff_ota.proto.ewelink_messages import UpgradeOffer
from custom_components.sonoff_ota.proto.fake_cloud import CloudEventKind
from custom_components.sonoff_ota.proto.image_names import FINAL_NAME, USER1_NAME, USER2_NAME
from custom_components.sonoff_ota.proto.image_server import ServedSet
from custom_components.sonoff_ota.proto.setup_ap import SetupApClient, SetupApError
from custom_components.sonoff_ota.proto.tasmota_client import TasmotaClient, TasmotaError
from custom_components.sonoff_ota.proto.tasmota_discovery import (
    TasmotaDiscoveryError,
    parse_discovery,
)
from virtual_sonoff.images import tasmota_lite

from .driver import (
    LOOPBACK,
    CrashError,
    LogWatch,
    RawReply,
    http_request,
    raw_exchange,
    tolerating_failed_handshakes,
    watching_logs,
    ws_session,
    ws_texts,
)
from .strategies import (
    DEVICEID,
    DeviceReply,
    TlsOpening,
    WsScript,
    http_method,
    range_header,
    request_path,
)

OTA_RESULT = "/api/device/otaFlash"
BYSTANDER = "1000bbbbbb"
"""A device with a served set that no fuzz input names: its result must stay untouched."""
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def check_status(reply: RawReply, what: str) -> int:
    """The device-facing status rule; returns the status."""
    status = reply.status
    if status is None:
        raise CrashError(f"{what}: no HTTP answer ({reply.raw[:80]!r})")
    if status >= 500 or status in (401, 403):
        raise CrashError(f"{what}: HTTP {status} ({reply.body[:120]!r})")
    return status


@dataclass(slots=True)
class Target:
    """The running integration: HA's own server port, the private listeners, the served sets."""

    server: FlashServer
    ha_port: int | None
    """HA's HTTP server (phcc's TestServer on `hass.http.app`); None when not running."""
    served: ServedSet
    expired_token: str
    bystander: ServedSet
    tls_client: ssl.SSLContext
    watch: LogWatch
    loop_reports: list[str]
    ws_sessions: int = 0

    async def checked(self, case: Awaitable[None]) -> None:
        """Run one case; a logged traceback/ERROR or a loop report during it is a crash."""
        await case
        await asyncio.sleep(0)  # let the server finish logging about this connection
        problems = self.watch.take() + self.loop_reports
        self.loop_reports.clear()
        if problems:
            raise CrashError("; ".join(problems))

    @property
    def tls_port(self) -> int:
        """The fake cloud's TLS listener."""
        return self.server.tls_port

    @property
    def plain_port(self) -> int:
        """The plain listener (FinalStage, downloads, the DIY callback)."""
        return self.server.plain_port

    def http_ports(self) -> list[int]:
        """HA's server (when running) and the plain listener."""
        return [port for port in (self.ha_port, self.plain_port) if port is not None]

    def check_bystander(self) -> None:
        """No input names the bystander: its result must still be empty."""
        if self.bystander.result is not None:
            raise CrashError(
                f"a callback landed on a device not being flashed: {self.bystander.result}"
            )


# -- fake cloud ------------------------------------------------------------------------------


async def dispatch_case(target: Target, body: bytes) -> None:
    """`POST /dispatch/device` with `body` on HA's server, the TLS listener (and plain)."""
    request = http_request("POST", "/dispatch/device", body=body)
    replies = [await raw_exchange(port, request) for port in target.http_ports()]
    replies.append(await raw_exchange(target.tls_port, request, ssl_context=target.tls_client))
    for reply in replies:
        status = check_status(reply, "dispatch")
        if status == 200:
            answer = json.loads(reply.body)
            if answer.get("error") != 0 or not isinstance(answer.get("port"), int):
                raise CrashError(f"dispatch answered 200 with {reply.body[:200]!r}")


async def tls_case(target: Target, opening: TlsOpening) -> None:
    """Start a TLS connection badly (cut ClientHello, plain HTTP, garbage), then a good one."""
    reader, writer = await asyncio.open_connection(LOOPBACK, target.tls_port)
    try:
        if opening.kind == "client_hello_prefix":
            writer.write(client_hello(target.tls_client)[: opening.cut])
        elif opening.kind != "nothing":
            writer.write(opening.data)
        await writer.drain()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(0.05):
                await reader.read(65536)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            await writer.wait_closed()
    reply = await raw_exchange(
        target.tls_port,
        http_request("POST", "/dispatch/device", body=b"{}"),
        ssl_context=target.tls_client,
    )
    if reply.status != 200:
        raise CrashError(f"the TLS listener stopped answering after {opening.kind}: {reply.status}")


def client_hello(context: ssl.SSLContext) -> bytes:
    """The first flight of a TLS client with `context` (no SNI, like the Sonoff)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=None)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def ws_case(target: Target, script: WsScript) -> None:
    """Run a hostile `/api/ws` session on HA's server or the TLS listener (alternating)."""
    cloud = target.server.cloud
    target.ws_sessions += 1
    use_tls = target.ha_port is None or target.ws_sessions % 2 == 0
    start = len(cloud.history)
    outcome = await ws_session(
        target.tls_port if use_tls else target.ha_port or 0,
        script,
        ssl_context=target.tls_client if use_tls else None,
    )
    if outcome.status != 101:
        raise CrashError(f"/api/ws handshake answered {outcome.status}")
    try:
        async with asyncio.timeout(5):
            await cloud.wait_for(CloudEventKind.CLOSED, start=start)
    except TimeoutError as err:
        raise CrashError("the fake cloud did not close the WebSocket session") from err
    for text in ws_texts(outcome.received):
        message = json.loads(text)
        if message.get("action") == "upgrade" and message.get("deviceid") != DEVICEID:
            raise CrashError(f"upgrade offered to {message.get('deviceid')!r}")
    registered = [e for e in cloud.history[start:] if e.kind is CloudEventKind.UPGRADE_SENT]
    if any(e.deviceid != DEVICEID for e in registered):
        raise CrashError("an upgrade went to a device that is not being flashed")


# -- images, FinalStage, the DIY callback ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class DownloadRequest:
    """One request to an image endpoint."""

    method: str
    target: str
    range: str | None
    port_index: int
    """0 = HA's server (if running), 1 = the plain listener."""
    slow: bool = False
    """Send it a few bytes at a time (slowloris-style)."""


def download_request(
    tokens: tuple[str, ...], size: int, *, slow: bool = False
) -> st.SearchStrategy[DownloadRequest]:
    """Requests of every method, target and Range shape (slow ones when `slow`)."""
    return st.builds(
        DownloadRequest,
        http_method,
        request_path(tokens),
        st.none() | range_header(size),
        st.integers(0, 1),
        st.just(False) | (st.booleans() if slow else st.just(False)),
    )


async def download_case(target: Target, request: DownloadRequest) -> None:
    """An image/FinalStage request; 2xx only for a served image, with exactly its bytes."""
    ports = target.http_ports()
    port = ports[request.port_index % len(ports)]
    headers = {"Range": request.range} if request.range is not None else {}
    data = http_request(request.method, request.target, headers=headers)
    reply = await raw_exchange(port, data, piece=7 if request.slow else 0, pause=0.01)
    status = check_status(reply, f"{request.method} {request.target[:80]}")
    if not 200 <= status < 300:
        return
    if request.method not in ("GET", "HEAD"):
        raise CrashError(f"{request.method} {request.target[:80]} answered {status}")
    if target.expired_token in request.target:
        raise CrashError(f"an expired token was served: {request.target[:80]}")
    files = {f.name: f.data for f in target.served.files.values()}
    if request.method == "HEAD":
        return
    if status == 200:
        if reply.body not in files.values():
            raise CrashError(f"200 with {len(reply.body)} bytes that are no served image")
        return
    if status != 206:
        raise CrashError(f"unexpected {status} for an image")
    match = _CONTENT_RANGE_RE.match(reply.headers.get("content-range", ""))
    if match is None:
        raise CrashError(f"206 without a valid Content-Range: {reply.headers}")
    first, last, total = (int(g) for g in match.groups())
    if not any(
        len(blob) == total and blob[first : last + 1] == reply.body for blob in files.values()
    ):
        raise CrashError(f"206 {first}-{last}/{total} with bytes that are not that range")


async def ota_result_case(target: Target, body: bytes) -> None:
    """`POST /api/device/otaFlash` with `body`, on HA's server and the plain listener."""
    request = http_request("POST", OTA_RESULT, body=body)
    for port in target.http_ports():
        check_status(await raw_exchange(port, request), "otaFlash")
    target.check_bystander()


# -- what devices answer us ------------------------------------------------------------------


class HostileDevice:
    """A TCP server on 127.0.0.1 that answers every request with `reply` (set per case)."""

    def __init__(self) -> None:
        """Not listening yet."""
        self.reply = DeviceReply(200, b"{}")
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
                match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if match:
                    await reader.readexactly(int(match.group(1)))
            first, rest = self.reply.render()
            writer.write(first)
            await writer.drain()
            if self.reply.ending == "reset_mid_body":
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            writer.write(rest)
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HostileDevice]:
        """Listen on 127.0.0.1 (port 0) for the block."""
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await self._server.wait_closed()


def _raw_exception(err: BaseException, typed: tuple[type[BaseException], ...]) -> CrashError:
    return CrashError(f"raw {type(err).__name__} escaped (expected {typed[0].__name__}): {err}")


async def setup_ap_case(
    device: HostileDevice, session: aiohttp.ClientSession, reply: DeviceReply
) -> None:
    """`GET /device` and `POST /ap` against a hostile setup AP."""
    device.reply = reply
    client = SetupApClient(
        session, f"http://{LOOPBACK}:{device.port}", request_timeout=2, ap_timeout=2
    )
    for call in (client.get_device, lambda: client.send_ap("Net", "pw", "127.0.0.1", 443)):
        try:
            await call()
        except SetupApError:
            pass
        except Exception as err:
            raise _raw_exception(err, (SetupApError,)) from err


async def diy_case(
    device: HostileDevice, session: aiohttp.ClientSession, reply: DeviceReply
) -> None:
    """`/zeroconf/info`, `ota_unlock` and `ota_flash` against a hostile DIY device."""
    device.reply = reply
    client = DiyClient(
        session,
        LOOPBACK,
        device.port,
        DEVICEID,
        min_interval=0,
        timeout=2,
        connect_timeout=2,
        flash_timeout=2,
        reset_retries=1,
        reset_retry_delay=0,
    )
    url = f"http://{LOOPBACK}:9/ota/tasmota-lite.bin"
    for call in (client.info, client.ota_unlock, lambda: client.ota_flash(url, "ab" * 32)):
        try:
            await call()
        except DiyError:
            pass
        except Exception as err:
            raise _raw_exception(err, (DiyError,)) from err


async def tasmota_case(
    device: HostileDevice, session: aiohttp.ClientSession, reply: DeviceReply
) -> None:
    """`/cm?cmnd=Status` against a hostile Tasmota."""
    device.reply = reply
    client = TasmotaClient(session, f"http://{LOOPBACK}:{device.port}", timeout=2)
    try:
        result = await client.command("Status")
    except TasmotaError:
        return
    except Exception as err:
        raise _raw_exception(err, (TasmotaError,)) from err
    if not isinstance(result, dict):
        raise CrashError(f"Tasmota result is a {type(result).__name__}")


def advert_case(
    record: tuple[dict[str, str | bytes | None] | dict[bytes, str | bytes | None], str],
) -> None:
    """parse_advert on one TXT record (what HA's zeroconf hands the config flow)."""
    properties, name = record
    try:
        parse_advert(properties, name)
    except DiyAdvertError:
        pass
    except Exception as err:
        raise _raw_exception(err, (DiyAdvertError,)) from err


def discovery_case(message: tuple[str, bytes]) -> None:
    """parse_discovery on one MQTT message (what HA's MQTT hands the hand-off)."""
    topic, payload = message
    try:
        parse_discovery(topic, payload)
    except TasmotaDiscoveryError:
        pass
    except Exception as err:
        raise _raw_exception(err, (TasmotaDiscoveryError,)) from err


# -- the running integration -----------------------------------------------------------------

FUZZ_FILES: Final = {
    FINAL_NAME: tasmota_lite(8_192),
    USER1_NAME: b"user1-image-" * 300,
    USER2_NAME: b"user2-image-" * 300,
}


def tls_client_context() -> ssl.SSLContext:
    """A client the legacy TLS listener accepts (TLS 1.2, AES128-SHA, as old firmware)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("AES128-SHA:@SECLEVEL=0")
    return context


@contextlib.asynccontextmanager
async def running_target(
    hass: HomeAssistant, ha_port: int | None, server: FlashServer | None = None
) -> AsyncIterator[Target]:
    """The integration's flash server with both listeners open, sets served, a device expected.

    `hass` must have the settings in `hass.data` (loopback binds) and, when `ha_port` is
    given, `http` set up (the views are registered on HA's server too). `server`: an existing
    flash server (the bench builds its own on a bare HomeAssistant, see bench/README.md).
    """
    if server is None:
        server = await async_get_flash_server(hass)
    images = server.images
    served = images.add_set(FUZZ_FILES, deviceid=DEVICEID)
    expired = images.add_set(FUZZ_FILES)
    images.remove_set(expired)
    bystander = images.add_set({"other.bin": b"other"}, deviceid=BYSTANDER, peer="192.0.2.1")
    with watching_logs() as watch, tolerating_failed_handshakes(hass.loop) as reports:
        try:
            async with server.listeners(tls=True, plain=True):
                images.mount_fixed(served)
                base = f"http://{LOOPBACK}:{server.plain_port}"
                server.cloud.expect_device(DEVICEID, UpgradeOffer.from_served_set(served, base))
                yield Target(
                    server=server,
                    ha_port=ha_port,
                    served=served,
                    expired_token=expired.token,
                    bystander=bystander,
                    tls_client=tls_client_context(),
                    watch=watch,
                    loop_reports=reports,
                )
        finally:
            server.cloud.forget_device(DEVICEID)
            images.remove_set(served)
            images.remove_set(bystander)
