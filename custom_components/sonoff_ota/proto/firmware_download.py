"""Download one firmware image into memory: size cap, timeouts, progress, single-flight.

- HTTP goes through the injected `aiohttp.ClientSession` (HA's shared session).
- A download is kept in memory (capped at `MAX_DOWNLOAD_BYTES`) until it is
  complete; what to do with the bytes (verify, cache) is the store's business.
  A partial or failed download is an error, never bytes.
- Concurrent requests for one URL share one download (single-flight).
- A download that stalls (headers, a few bytes, then nothing) ends after the
  timeout's `sock_read` seconds without data (`total` bounds a trickle) with
  `FirmwareErrorCode.TIMEOUT`: a clear error, never a hang, nothing kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
import logging

import aiohttp

from .firmware_errors import FirmwareErrorCode, FirmwareInvalidError, FirmwareUnavailableError
from .firmware_sources import redact_url

_LOGGER = logging.getLogger(__name__)

# No role accepts more than 524288 bytes; stop reading well before memory matters.
MAX_DOWNLOAD_BYTES = 1024 * 1024
_CHUNK_BYTES = 64 * 1024

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=300, connect=20, sock_read=60)

type ProgressCallback = Callable[[int, int | None], None]
"""Called as `(received_bytes, total_bytes_or_None)` while a download runs."""


@dataclass(slots=True)
class _Flight:
    """One shared download and the progress listeners of everyone waiting on it."""

    listeners: list[ProgressCallback] = field(default_factory=list)
    waiters: int = 0
    task: asyncio.Task[bytes] | None = None


class FirmwareDownloader:
    """Downloads images over HTTP into memory, one transfer per URL at a time."""

    def __init__(
        self, session: aiohttp.ClientSession, *, timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT
    ) -> None:
        """Use the injected session; `timeout` bounds each transfer."""
        self._session = session
        self._timeout = timeout
        self._flights: dict[str, _Flight] = {}

    async def download(self, url: str, progress: ProgressCallback | None) -> bytes:
        """Download `url`, sharing one transfer between concurrent callers."""
        flight = self._flights.get(url)
        if flight is None:
            flight = _Flight()
            self._flights[url] = flight
            flight.task = asyncio.create_task(
                self._download(url, flight), name=f"sonoff_ota firmware {redact_url(url)}"
            )
            flight.task.add_done_callback(lambda _task: self._forget_flight(url, flight))
        if progress is not None:
            flight.listeners.append(progress)
        assert flight.task is not None
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            if flight.waiters == 1 and not flight.task.done():
                flight.task.cancel()  # nobody else wants it
            raise
        finally:
            flight.waiters -= 1
            if progress is not None and progress in flight.listeners:
                flight.listeners.remove(progress)

    def _forget_flight(self, url: str, flight: _Flight) -> None:
        if self._flights.get(url) is flight:
            del self._flights[url]

    async def _download(self, url: str, flight: _Flight) -> bytes:
        shown = redact_url(url)
        # The chunks, joined once at the end: one allocation of the image's size, not a
        # buffer re-grown ~30 times (each growth a fresh block the allocator keeps).
        chunks: list[bytes] = []
        received = 0
        total: int | None = None
        try:
            async with self._session.get(
                url,
                timeout=self._timeout,
                # The bytes on the wire are the image; never let aiohttp inflate them.
                auto_decompress=False,
                headers={"Accept-Encoding": "identity"},
            ) as resp:
                if resp.status != 200:
                    raise FirmwareUnavailableError(
                        FirmwareErrorCode.HTTP_STATUS, {"url": shown, "status": resp.status}
                    )
                total = resp.content_length
                if total is not None and total > MAX_DOWNLOAD_BYTES:
                    raise FirmwareInvalidError(
                        FirmwareErrorCode.DOWNLOAD_TOO_LARGE,
                        {"url": shown, "received": total, "limit": MAX_DOWNLOAD_BYTES},
                    )
                self._report_progress(flight, 0, total)
                async for chunk in resp.content.iter_chunked(_CHUNK_BYTES):
                    chunks.append(chunk)
                    received += len(chunk)
                    if received > MAX_DOWNLOAD_BYTES:
                        raise FirmwareInvalidError(
                            FirmwareErrorCode.DOWNLOAD_TOO_LARGE,
                            {"url": shown, "received": received, "limit": MAX_DOWNLOAD_BYTES},
                        )
                    self._report_progress(flight, received, total)
        except aiohttp.ClientPayloadError as err:
            raise FirmwareUnavailableError(
                FirmwareErrorCode.TRUNCATED,
                {"url": shown, "received": received, "expected": total or -1},
            ) from err
        except aiohttp.ConnectionTimeoutError as err:  # never connected: unreachable
            raise FirmwareUnavailableError(
                FirmwareErrorCode.UNREACHABLE,
                {"url": shown, "reason": type(err).__name__},
            ) from err
        except TimeoutError as err:  # connected, then no data for sock_read s (or total)
            _LOGGER.warning("Download of %s stalled after %d bytes; given up", shown, received)
            raise FirmwareUnavailableError(
                FirmwareErrorCode.TIMEOUT, {"url": shown, "received": received}
            ) from err
        except (aiohttp.ClientError, OSError) as err:
            raise FirmwareUnavailableError(
                FirmwareErrorCode.UNREACHABLE,
                {"url": shown, "reason": type(err).__name__},
            ) from err
        if total is not None and received != total:
            raise FirmwareUnavailableError(
                FirmwareErrorCode.TRUNCATED,
                {"url": shown, "received": received, "expected": total},
            )
        return b"".join(chunks)

    @staticmethod
    def _report_progress(flight: _Flight, received: int, total: int | None) -> None:
        for listener in list(flight.listeners):
            try:
                listener(received, total)
            except Exception:
                _LOGGER.exception("Firmware progress callback failed")
