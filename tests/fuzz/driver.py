"""Run Hypothesis against servers and clients that live in a running asyncio event loop.

Why this pattern. Hypothesis has no async support of its own: a `@given` test is a plain
function that Hypothesis calls once per example. The surfaces under test run in an event loop
that is already running (phcc's `hass` loop, or the bench's `asyncio.run`), so the `@given`
function can neither `asyncio.run()` (a loop is running) nor block that loop. `drive()`
therefore runs the whole Hypothesis search in a worker thread (`asyncio.to_thread`) while the
loop stays free, and each example hands its coroutine back to the loop with the public
`asyncio.run_coroutine_threadsafe`, waiting for it with a bound (a case that does not finish
in time is a hang). Only public APIs are used: `given`, `settings`, `seed`, `HealthCheck`.
The tests pass `derandomize=True` (the same examples every run, so CI is stable); the bench
passes a seed and many more examples, and counts outcomes instead of stopping at the first.

All I/O stays in the loop, on 127.0.0.1; the worker thread only generates and waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeoutError
import contextlib
from dataclasses import dataclass, field
import logging
import ssl
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings
from hypothesis.strategies import SearchStrategy

from .strategies import WsFrame, WsScript

LOOPBACK = "127.0.0.1"
TRANSPORT_ERROR = "Error on transport creation for incoming connection"


class HangError(AssertionError):
    """A case got no answer within its surface's timeout."""


class CrashError(AssertionError):
    """The code under test failed: a 5xx, a 401/403, a raw exception or a logged traceback."""


@dataclass(slots=True)
class Tally:
    """Per-surface outcome counts (the bench prints them; tests only need `cases`)."""

    cases: int = 0
    crashes: int = 0
    hangs: int = 0
    examples: list[str] = field(default_factory=list)
    """The first few failures, for the report."""

    def note(self, kind: str, detail: str) -> None:
        """Count one failure and keep its description (the first 5)."""
        if kind == "hang":
            self.hangs += 1
        else:
            self.crashes += 1
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {detail}")


def fuzz_settings(max_examples: int, *, derandomize: bool = True, shrink: bool = True) -> settings:
    """Hypothesis settings for a surface: no deadline (network), no database, no health checks."""
    phases = (Phase.explicit, Phase.generate, Phase.shrink) if shrink else (Phase.generate,)
    return settings(
        max_examples=max_examples,
        derandomize=derandomize,
        database=None,
        deadline=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


async def drive[T](
    strategy: SearchStrategy[T],
    case: Callable[[T], Awaitable[None]],
    *,
    max_examples: int,
    within: float,
    tally: Tally | None = None,
    seed: int | None = None,
) -> Tally:
    """Run `case` on examples of `strategy` (see the module docstring); return the tally.

    Without `seed`: derandomized, and the first failure propagates (shrunk) to the caller.
    With `seed` (the bench): random from that seed, and failures are counted in the tally
    (`CrashError`/`HangError`/any exception) without stopping the search.
    """
    loop = asyncio.get_running_loop()
    tally = tally if tally is not None else Tally()
    counting = seed is not None

    def run_one(value: T) -> None:
        tally.cases += 1
        future = asyncio.run_coroutine_threadsafe(_bounded(case(value), within), loop)
        try:
            future.result(within + 5)
        except FutureTimeoutError:
            future.cancel()
            failure: BaseException = HangError(f"no result within {within + 5} s")
        except BaseException as err:
            failure = err
        else:
            return
        if not counting:
            raise failure
        kind = "hang" if isinstance(failure, HangError) else "crash"
        tally.note(kind, f"{type(failure).__name__}: {str(failure)[:300]}")

    test = given(strategy)(run_one)
    test = fuzz_settings(max_examples, derandomize=not counting, shrink=not counting)(test)
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    await asyncio.to_thread(test)
    return tally


async def _bounded(awaitable: Awaitable[None], within: float) -> None:
    try:
        async with asyncio.timeout(within):
            await awaitable
    except TimeoutError as err:
        raise HangError(f"no answer within {within} s") from err


# -- what a case may leave in the log --------------------------------------------------------


class LogWatch(logging.Handler):
    """Collects records that mean "something crashed": ERROR and above, or any traceback."""

    def __init__(self) -> None:
        """Start empty."""
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.parser_rejections = 0
        """aiohttp's ERROR-level logs of requests its parser refused (see `emit`)."""

    def emit(self, record: logging.LogRecord) -> None:
        """Keep crash-like records (not aiohttp's own 400 for a request it cannot parse).

        aiohttp 3.12+ logs a malformed request line or header (`HttpProcessingError`, answered
        400 before any handler runs) at ERROR with a traceback, on HA's server as on ours.
        That is aiohttp's parser, not our code: it is left out here and reported instead.
        """
        if not (record.levelno >= logging.ERROR or record.exc_info):
            return
        exc = record.exc_info[1] if record.exc_info else None
        if record.name == "aiohttp.server" and isinstance(exc, HttpProcessingError):
            self.parser_rejections += 1
            return
        self.records.append(record)

    def take(self) -> list[str]:
        """The crash-like records so far (as text), and forget them."""
        taken = [f"{r.name}: {r.getMessage()[:300]}" for r in self.records]
        self.records.clear()
        return taken


@contextlib.contextmanager
def watching_logs() -> Iterator[LogWatch]:
    """Attach a `LogWatch` to the root logger for the block."""
    watch = LogWatch()
    root = logging.getLogger()
    root.addHandler(watch)
    try:
        yield watch
    finally:
        root.removeHandler(watch)


@contextlib.contextmanager
def tolerating_failed_handshakes(loop: asyncio.AbstractEventLoop) -> Iterator[list[str]]:
    """Swallow the debug loop's reports of failed server-side TLS handshakes; keep the rest.

    phcc runs the loop in debug mode, where asyncio reports every client that hangs up during
    the handshake to the loop's exception handler (production loops stay silent). A TLS fuzz
    provokes those on purpose. Any other report is collected and returned as a crash.
    """
    previous = loop.get_exception_handler()
    others: list[str] = []

    def handler(handler_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == TRANSPORT_ERROR and isinstance(
            exc, ConnectionError | ssl.SSLError | TimeoutError
        ):
            return
        others.append(f"{context.get('message')}: {exc!r}")

    loop.set_exception_handler(handler)
    try:
        yield others
    finally:
        loop.set_exception_handler(previous)


# -- raw clients -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawReply:
    """What came back on a raw connection: status (None when nothing parseable) and body."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    raw: bytes


def parse_reply(data: bytes) -> RawReply:
    """Split a raw HTTP reply (status None when it is not one)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawReply(status, headers, body, data)


async def raw_exchange(
    port: int,
    request: bytes,
    *,
    ssl_context: ssl.SSLContext | None = None,
    within: float = 5.0,
    piece: int = 0,
    pause: float = 0.0,
) -> RawReply:
    """Send `request` verbatim on a new connection and read until the server closes.

    With `piece`, the request goes out `piece` bytes at a time with `pause` between (slow
    headers). Reading runs alongside writing, so an early answer (a 400 before the request
    was complete, then a reset) is kept rather than lost to the reset.
    """
    reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=ssl_context)
    received = bytearray()

    async def read_all() -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := await reader.read(65536):
                received.extend(chunk)

    reading = asyncio.ensure_future(read_all())
    try:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            step = piece or len(request) or 1
            for offset in range(0, len(request), step):
                writer.write(request[offset : offset + step])
                await writer.drain()
                if pause and not reading.done():
                    await asyncio.sleep(pause)
        async with asyncio.timeout(within):
            await asyncio.shield(reading)
    except TimeoutError as err:
        raise HangError(f"no reply within {within} s") from err
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            await writer.wait_closed()
    return parse_reply(bytes(received))


def http_request(
    method: str, target: str, *, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """An HTTP/1.1 request closed by `Connection: close` (target sent verbatim)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: dl.itead.cn", "Connection: close"]
    all_headers = dict(headers or {})
    if body or method in {"POST", "PUT", "PATCH"}:
        all_headers.setdefault("Content-Length", str(len(body)))
    lines.extend(f"{name}: {value}" for name, value in all_headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- a raw WebSocket client ------------------------------------------------------------------

_MASK = b"\x37\xfa\x21\x3d"
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
"""The firmware sends a constant key too (spec setup-mode-ota.md §6.3)."""


def encode_frame(frame: WsFrame) -> bytes:
    """One masked client frame (the firmware masks, as RFC 6455 requires of clients)."""
    first = (0x80 if frame.fin else 0) | (frame.opcode & 0x0F)
    length = len(frame.payload)
    if length < 126:
        header = bytes([first, 0x80 | length])
    elif length < 65536:
        header = bytes([first, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([first, 0x80 | 127]) + length.to_bytes(8, "big")
    masked = bytes(b ^ _MASK[i % 4] for i, b in enumerate(frame.payload))
    return header + _MASK + masked


@dataclass(frozen=True, slots=True)
class WsOutcome:
    """What the server sent back on `/api/ws`: handshake status and the text frames' bytes."""

    status: int | None
    received: bytes


async def ws_session(
    port: int,
    script: WsScript,
    *,
    ssl_context: ssl.SSLContext | None = None,
    within: float = 5.0,
    linger: float = 0.05,
) -> WsOutcome:
    """Upgrade on `/api/ws`, write the script's frames, read what comes back, hang up."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=ssl_context)
    received = bytearray()
    try:
        writer.write(
            (
                "GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        async with asyncio.timeout(within):
            head = await reader.readuntil(b"\r\n\r\n")
        status = parse_reply(head).status
        if status != 101:
            return WsOutcome(status, bytes(head))
        data = b"".join(encode_frame(frame) * frame.repeat for frame in script.frames)
        if script.cut_last and script.frames:
            data = data[: len(data) - max(len(encode_frame(script.frames[-1])) // 2, 1)]
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        # Read whatever comes back until the server closes or goes quiet.
        with contextlib.suppress(TimeoutError, ConnectionError, ssl.SSLError):
            while True:
                async with asyncio.timeout(linger):
                    chunk = await reader.read(65536)
                if not chunk:
                    break
                received += chunk
        return WsOutcome(status, bytes(received))
    except TimeoutError as err:
        raise HangError(f"no WebSocket handshake within {within} s") from err
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            await writer.wait_closed()


def ws_texts(received: bytes) -> list[bytes]:
    """The payloads of the (unmasked) text frames the server sent."""
    texts: list[bytes] = []
    offset = 0
    while offset + 2 <= len(received):
        first, second = received[offset], received[offset + 1]
        length = second & 0x7F
        offset += 2
        if length == 126:
            length = int.from_bytes(received[offset : offset + 2], "big")
            offset += 2
        elif length == 127:
            length = int.from_bytes(received[offset : offset + 8], "big")
            offset += 8
        payload = received[offset : offset + length]
        offset += length
        if first & 0x0F == 1:
            texts.append(payload)
    return texts
