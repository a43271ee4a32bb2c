"""Fetch, verify and cache firmware images; choose the Tasmota image for a path.

The store downloads the images a flash needs (the two SonOTA intermediate
images at a pinned commit, a Tasmota lite release, or a URL the user gave),
accepts uploads, validates everything with `firmware_image.validate_image`
before a device can see it, and caches verified images on disk keyed by
sha256. A small JSON index maps each source URL to the sha256 it last gave, so
an offline HA still has the images it fetched before (and says so).

- All file I/O goes through the injected `run_blocking` (HA:
  `hass.async_add_executor_job`); HTTP through the injected
  `aiohttp.ClientSession` (HA's shared session).
- A download is kept in memory (capped at `MAX_DOWNLOAD_BYTES`) until it is
  complete and verified, then written to a temporary file in the cache and
  renamed. A partial or failed download never reaches the cache.
- Concurrent requests for one URL share one download (single-flight).
- A download that stalls (headers, a few bytes, then nothing) ends after the
  timeout's `sock_read` seconds without data (`total` bounds a trickle) with
  `FirmwareErrorCode.TIMEOUT`: a clear error, never a hang, nothing kept.
- The cache is an optimisation, never a requirement: when its directory is
  read-only or full (any OSError while writing), the verified bytes stay in
  memory for this flash (`StoredImage.data`) and a warning says why; a cache
  that cannot be read counts as empty.
- We never ship third-party binaries: every image comes from its public source
  at runtime (spec README "Known images").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
import json
import logging
import os
from pathlib import Path
import re
import secrets
import time
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from .firmware_image import (
    KNOWN_IMAGES,
    SONOTA_COMMIT,
    SONOTA_USER1_NAME,
    SONOTA_USER2_NAME,
    ImageReport,
    ImageRole,
    Issue,
    KnownImage,
    name_from_url,
    sha256_hex,
    validate_image,
)

_LOGGER = logging.getLogger(__name__)

# No role accepts more than 524288 bytes; stop reading well before memory matters.
MAX_DOWNLOAD_BYTES = 1024 * 1024
_CHUNK_BYTES = 64 * 1024
_INDEX_VERSION = 1
_INDEX_NAME = "index.json"
_IMAGES_DIR = "images"
_TMP_SUFFIX = ".tmp"

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=300, connect=20, sock_read=60)

type ProgressCallback = Callable[[int, int | None], None]
"""Called as `(received_bytes, total_bytes_or_None)` while a download runs."""


class RunBlocking(Protocol):
    """Runs a blocking callable off the event loop (HA: `hass.async_add_executor_job`)."""

    def __call__[*Ts, T](self, target: Callable[[*Ts], T], *args: *Ts) -> Awaitable[T]:
        """Run `target(*args)` in an executor and await its result."""
        ...


@dataclass(frozen=True, slots=True)
class FirmwareSources:
    """Where every image comes from; tests inject local URLs and pins.

    Tasmota: the official OTA server, plain http (diy §3.7). Nothing about any
    Tasmota release is pinned: its hashes were not available offline.
    The fallback version is the lite that njh's DIY server pinned because it
    fits the 520192-byte cap (spec README; diy §1.8). That the URL
    `release-9.5.0/tasmota-lite.bin` exists and is DOUT is unverified here.
    """

    tasmota_latest_url: str = "http://ota.tasmota.com/tasmota/release/tasmota-lite.bin"
    tasmota_release_url_template: str = (
        "http://ota.tasmota.com/tasmota/release-{version}/tasmota-lite.bin"
    )
    tasmota_fallback_version: str | None = "9.5.0"
    user1_url: str = (
        f"https://raw.githubusercontent.com/mirko/SonOTA/{SONOTA_COMMIT}/static/{SONOTA_USER1_NAME}"
    )
    user1_sha256: str | None = next(k.sha256 for k in KNOWN_IMAGES if k.name == SONOTA_USER1_NAME)
    user2_url: str = (
        f"https://raw.githubusercontent.com/mirko/SonOTA/{SONOTA_COMMIT}/static/{SONOTA_USER2_NAME}"
    )
    user2_sha256: str | None = next(k.sha256 for k in KNOWN_IMAGES if k.name == SONOTA_USER2_NAME)
    # Extra pins, URL -> lowercase sha256 (e.g. a checked Tasmota release).
    pinned_sha256: Mapping[str, str] = field(default_factory=dict)

    def tasmota_release_url(self, version: str) -> str:
        """The URL of the lite build of one Tasmota release (e.g. "14.4.1")."""
        return self.tasmota_release_url_template.format(version=version.strip().lstrip("vV"))

    def intermediate_url(self, role: ImageRole) -> str:
        """The URL of the intermediate image for a setup-mode slot."""
        if role is ImageRole.SETUP_USER1:
            return self.user1_url
        if role is ImageRole.SETUP_USER2:
            return self.user2_url
        raise ValueError(f"{role} is not an intermediate image role")

    def pinned_for(self, url: str) -> str | None:
        """The pinned sha256 for a source URL, if any."""
        if url == self.user1_url and self.user1_sha256:
            return self.user1_sha256.lower()
        if url == self.user2_url and self.user2_sha256:
            return self.user2_sha256.lower()
        pinned = self.pinned_sha256.get(url)
        return pinned.lower() if pinned else None


_VERSION_RE = re.compile(r"^[vV]?(\d{1,3}(?:\.\d{1,3}){1,3})$")


def normalize_tasmota_version(text: str) -> str | None:
    """Turn "v14.4.1" into "14.4.1"; None when `text` is not a release number."""
    match = _VERSION_RE.match(text.strip())
    return match.group(1) if match else None


class FirmwareErrorCode(StrEnum):
    """Why the store could not hand out an image (params in `FirmwareError.params`)."""

    BAD_URL = "bad_url"  # url
    UNREACHABLE_NO_CACHE = "unreachable_no_cache"  # url, reason: no network and nothing cached
    UNREACHABLE = "unreachable"  # url, reason (only seen as StoredImage.fetch_error)
    HTTP_STATUS = "http_status"  # url, status
    TRUNCATED = "truncated"  # url, received, expected
    TIMEOUT = "timeout"  # url, received: the source stopped sending (or was too slow)
    DOWNLOAD_TOO_LARGE = "download_too_large"  # url, received, limit
    INVALID_IMAGE = "invalid_image"  # url or filename; details in `issues`
    CACHE_CORRUPT = "cache_corrupt"  # sha256: the cached file changed on disk
    NO_SUITABLE_IMAGE = "no_suitable_image"  # latest_url, latest_error, fallback_url, ...


class FirmwareError(Exception):
    """A store failure with a machine-readable code and message parameters."""

    def __init__(
        self,
        code: FirmwareErrorCode,
        params: Mapping[str, str | int] | None = None,
        *,
        issues: tuple[Issue, ...] = (),
        report: ImageReport | None = None,
    ) -> None:
        """Keep the code, the parameters, the image issues and the report."""
        self.code = code
        self.params: Mapping[str, str | int] = dict(params or {})
        self.issues = issues
        self.report = report
        detail = ", ".join(f"{k}={v}" for k, v in self.params.items())
        codes = ",".join(issue.code for issue in issues)
        super().__init__(f"{code}: {detail}" + (f" [{codes}]" if codes else ""))


class FirmwareUnavailableError(FirmwareError):
    """The image could not be obtained (network, HTTP status, truncation, cache)."""


class FirmwareInvalidError(FirmwareError):
    """The image was obtained but must not be flashed (see `issues`)."""


@dataclass(frozen=True, slots=True)
class StoredImage:
    """A verified image in the cache, ready to serve.

    `sha256` is the lowercase hex of exactly the bytes at `path` (what the
    protocols put in `digest` / `sha256sum`).
    """

    path: Path
    sha256: str
    size: int
    role: ImageRole
    report: ImageReport
    filename: str
    source_url: str | None  # None for an upload; user info removed
    from_cache: bool = False
    offline: bool = False  # the source was unreachable; `from_cache` is then True
    fetch_error: FirmwareErrorCode | None = None  # why the network copy was not used
    fell_back: bool = False  # get_tasmota used the known-good older lite
    fallback_reason: FirmwareErrorCode | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)
    """The verified bytes, when the cache could not keep them (read-only or full)."""

    @property
    def synthetic(self) -> bool:
        """A synthetic test image (label it "synthetic test image" in the UI)."""
        return self.report.synthetic


class FirmwareSource(StrEnum):
    """Where the Tasmota image of a flash comes from."""

    LATEST = "latest"  # the newest lite release that fits the path (the default)
    VERSION = "version"  # one Tasmota release, lite build
    URL = "url"  # any http(s) URL the user gave
    UPLOAD = "upload"  # a file the user uploaded (already validated and cached)


@dataclass(frozen=True, slots=True)
class FirmwareChoice:
    """The user's choice of Tasmota image; `FirmwareStore.get_chosen` obtains it."""

    source: FirmwareSource = FirmwareSource.LATEST
    version: str | None = None
    url: str | None = None
    upload: StoredImage | None = None

    @classmethod
    def for_version(cls, version: str) -> FirmwareChoice:
        """A Tasmota release; raises ValueError when `version` is not a release number."""
        normalized = normalize_tasmota_version(version)
        if normalized is None:
            raise ValueError(f"not a Tasmota release number: {version!r}")
        return cls(FirmwareSource.VERSION, version=normalized)

    def describe(self) -> str:
        """For logs and diagnostics: never a password from a URL."""
        if self.source is FirmwareSource.VERSION:
            return f"Tasmota {self.version} (lite)"
        if self.source is FirmwareSource.URL and self.url:
            return redact_url(self.url)
        if self.source is FirmwareSource.UPLOAD and self.upload is not None:
            return f"upload {self.upload.filename}"
        return "newest Tasmota lite"


@dataclass(slots=True)
class _Flight:
    """One shared download and the progress listeners of everyone waiting on it."""

    listeners: list[ProgressCallback] = field(default_factory=list)
    waiters: int = 0
    task: asyncio.Task[bytes] | None = None


def redact_url(url: str) -> str:
    """Drop user info (user:password@) from a URL for logs and messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _write_atomic(dest: Path, data: bytes) -> None:
    """Write to a temporary file beside `dest`, fsync, then rename over it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_if_intact(path: Path, sha256: str) -> bytes | None:
    """The file's bytes if it exists and still hashes to `sha256`; else None.

    A file that no longer matches is removed (when the cache lets us). An
    unreadable cache is an empty one.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        _LOGGER.warning("Firmware cache file %s unreadable (%s); ignoring it", path, err)
        return None
    if sha256_hex(data) != sha256:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            _LOGGER.warning("Cannot remove the damaged cache file %s: %s", path, err)
        return None
    return data


def _load_index(path: Path) -> dict[str, dict[str, Any]]:
    """Read the URL index; a missing or damaged index is an empty one."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        _LOGGER.warning("Firmware cache index %s is unreadable; starting afresh", path)
        return {}
    if not isinstance(raw, dict) or raw.get("version") != _INDEX_VERSION:
        return {}
    entries = raw.get("entries")
    if not isinstance(entries, dict):
        return {}
    return {
        url: entry
        for url, entry in entries.items()
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
    }


def _save_index(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    payload = json.dumps({"version": _INDEX_VERSION, "entries": entries}, indent=1, sort_keys=True)
    _write_atomic(path, payload.encode("utf-8"))


def _sweep_temporaries(images_dir: Path) -> None:
    """Remove temporary files left by a crash in the middle of a write."""
    try:
        if not images_dir.is_dir():
            return
        for leftover in images_dir.glob(f".*{_TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)
    except OSError as err:
        _LOGGER.warning("Cannot tidy the firmware cache %s: %s", images_dir, err)


class FirmwareStore:
    """Obtains verified images for each role, from the network, the cache or an upload."""

    def __init__(
        self,
        cache_dir: Path,
        session: aiohttp.ClientSession,
        run_blocking: RunBlocking,
        *,
        sources: FirmwareSources | None = None,
        known_images: tuple[KnownImage, ...] = KNOWN_IMAGES,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
    ) -> None:
        """Use `cache_dir` (created on demand) and the injected session and executor."""
        self._cache_dir = cache_dir
        self._images_dir = cache_dir / _IMAGES_DIR
        self._index_path = cache_dir / _INDEX_NAME
        self._session = session
        self._run_blocking = run_blocking
        self.sources = sources if sources is not None else FirmwareSources()
        self._known_images = known_images
        self._timeout = timeout
        self._index: dict[str, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()  # index and cache writes
        self._flights: dict[str, _Flight] = {}

    # ---------------------------------------------------------------- entry points

    async def get_intermediate(
        self, role: ImageRole, *, progress: ProgressCallback | None = None
    ) -> StoredImage:
        """The setup-mode intermediate image for `role` (user1 or user2), pin-checked."""
        url = self.sources.intermediate_url(role)
        return await self._obtain(url, role, prefer_cache=True, progress=progress)

    async def get_setup_images(
        self, *, final: FirmwareChoice | None = None, progress: ProgressCallback | None = None
    ) -> tuple[StoredImage, StoredImage, StoredImage]:
        """user1, user2 and the final Tasmota image for the setup-mode path.

        The three are fetched concurrently; `progress` is called for each
        download separately (its `total` tells them apart).
        """
        user1, user2, final_image = await asyncio.gather(
            self.get_intermediate(ImageRole.SETUP_USER1, progress=progress),
            self.get_intermediate(ImageRole.SETUP_USER2, progress=progress),
            self.get_chosen(final or FirmwareChoice(), ImageRole.SETUP_FINAL, progress=progress),
        )
        return user1, user2, final_image

    async def get_chosen(
        self, choice: FirmwareChoice, role: ImageRole, *, progress: ProgressCallback | None = None
    ) -> StoredImage:
        """The Tasmota image `choice` names, validated for `role` (SETUP_FINAL or DIY)."""
        if choice.source is FirmwareSource.VERSION and choice.version:
            return await self.get_tasmota(role, version=choice.version, progress=progress)
        if choice.source is FirmwareSource.URL and choice.url:
            return await self.get_url(choice.url, role, progress=progress)
        if choice.source is FirmwareSource.UPLOAD and choice.upload is not None:
            upload = choice.upload
            if upload.role is role:
                return upload
            # Validated for another path: check it again against this one's limits.
            data = await self.read_bytes(upload)
            return await self.store_upload(data, upload.filename, role)
        return await self.get_tasmota(role, progress=progress)

    async def get_tasmota(
        self,
        role: ImageRole,
        *,
        version: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> StoredImage:
        """A Tasmota lite image for `role` (SETUP_FINAL or DIY).

        With `version`, exactly that release (no fallback: the user chose it).
        Without, the newest lite if it is reachable (or cached) and fits the
        role's limits, else the known-good older lite (`fell_back=True`).
        """
        if role not in (ImageRole.SETUP_FINAL, ImageRole.DIY):
            raise ValueError(f"{role} is not a Tasmota image role")
        if version is not None:
            url = self.sources.tasmota_release_url(version)
            return await self._obtain(url, role, prefer_cache=True, progress=progress)
        latest_url = self.sources.tasmota_latest_url
        try:
            # The newest release changes over time: ask the network first.
            return await self._obtain(latest_url, role, prefer_cache=False, progress=progress)
        except FirmwareError as latest_err:
            fallback_version = self.sources.tasmota_fallback_version
            if fallback_version is None:
                raise
            fallback_url = self.sources.tasmota_release_url(fallback_version)
            _LOGGER.info(
                "Newest Tasmota lite not usable for %s (%s); trying %s",
                role,
                latest_err.code,
                fallback_version,
            )
            try:
                image = await self._obtain(fallback_url, role, prefer_cache=True, progress=progress)
            except FirmwareError as fallback_err:
                if latest_err.code == fallback_err.code == FirmwareErrorCode.UNREACHABLE_NO_CACHE:
                    raise latest_err from fallback_err
                raise FirmwareUnavailableError(
                    FirmwareErrorCode.NO_SUITABLE_IMAGE,
                    {
                        "latest_url": redact_url(latest_url),
                        "latest_error": latest_err.code,
                        "fallback_url": redact_url(fallback_url),
                        "fallback_version": fallback_version,
                        "fallback_error": fallback_err.code,
                    },
                    issues=latest_err.issues + fallback_err.issues,
                    report=latest_err.report,
                ) from fallback_err
            unreachable = latest_err.code is FirmwareErrorCode.UNREACHABLE_NO_CACHE
            return replace(
                image,
                fell_back=True,
                fallback_reason=latest_err.code,
                offline=image.offline or unreachable,
            )

    async def get_url(
        self,
        url: str,
        role: ImageRole,
        *,
        filename: str | None = None,
        expected_sha256: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> StoredImage:
        """An image from a URL the user gave, validated like every other.

        The network is asked first; the cache is used when it is unreachable.
        `expected_sha256` defaults to the pin for that URL, if any.
        """
        return await self._obtain(
            url,
            role,
            prefer_cache=False,
            progress=progress,
            filename=filename,
            expected_sha256=expected_sha256,
        )

    async def store_upload(self, data: bytes, filename: str, role: ImageRole) -> StoredImage:
        """Validate an uploaded file and keep it in the cache."""
        report = validate_image(
            data, role, filename=filename or None, known_images=self._known_images
        )
        if not report.ok:
            raise FirmwareInvalidError(
                FirmwareErrorCode.INVALID_IMAGE,
                {"filename": filename},
                issues=report.errors,
                report=report,
            )
        path, memory = await self._keep(data, report.sha256)
        return StoredImage(
            path=path,
            sha256=report.sha256,
            size=report.size,
            role=role,
            report=report,
            filename=filename,
            source_url=None,
            data=memory,
        )

    async def read_bytes(self, image: StoredImage) -> bytes:
        """The exact bytes to serve for `image`, checked against its sha256."""
        if image.data is not None:  # the cache could not keep it: verified in memory
            return image.data
        data = await self._run_blocking(_read_if_intact, image.path, image.sha256)
        if data is None:
            raise FirmwareUnavailableError(
                FirmwareErrorCode.CACHE_CORRUPT, {"sha256": image.sha256}
            )
        return data

    # ---------------------------------------------------------------- internals

    async def _obtain(
        self,
        url: str,
        role: ImageRole,
        *,
        prefer_cache: bool,
        progress: ProgressCallback | None,
        filename: str | None = None,
        expected_sha256: str | None = None,
    ) -> StoredImage:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FirmwareInvalidError(FirmwareErrorCode.BAD_URL, {"url": redact_url(url)})
        name = filename or name_from_url(url)
        expected = (expected_sha256 or self.sources.pinned_for(url) or "").lower() or None
        await self._ensure_index()

        if prefer_cache:
            cached = await self._from_cache(url, role, name, expected)
            if cached is not None and cached.report.ok:
                return cached

        try:
            data = await self._download_shared(url, progress)
        except FirmwareUnavailableError as err:
            cached = await self._from_cache(url, role, name, expected)
            if cached is not None:
                _LOGGER.info("Using cached firmware for %s (%s)", redact_url(url), err.code)
                if not cached.report.ok:
                    raise self._invalid(cached.report, url) from err
                return replace(cached, offline=True, fetch_error=err.code)
            if err.code is FirmwareErrorCode.UNREACHABLE:
                raise FirmwareUnavailableError(
                    FirmwareErrorCode.UNREACHABLE_NO_CACHE, err.params
                ) from err
            raise

        report = validate_image(
            data,
            role,
            filename=name,
            expected_sha256=expected,
            known_images=self._known_images,
        )
        if not report.ok:
            raise self._invalid(report, url)
        path, memory = await self._keep(data, report.sha256)
        if memory is None:
            await self._remember(url, report, name)
        return StoredImage(
            path=path,
            sha256=report.sha256,
            size=report.size,
            role=role,
            report=report,
            filename=name,
            source_url=redact_url(url),
            data=memory,
        )

    @staticmethod
    def _invalid(report: ImageReport, url: str) -> FirmwareInvalidError:
        return FirmwareInvalidError(
            FirmwareErrorCode.INVALID_IMAGE,
            {"url": redact_url(url)},
            issues=report.errors,
            report=report,
        )

    async def _from_cache(
        self, url: str, role: ImageRole, name: str, expected: str | None
    ) -> StoredImage | None:
        """The cached copy for `url`, validated for `role`, or None if absent/damaged."""
        assert self._index is not None
        key = redact_url(url)  # the index never stores user info (passwords)
        entry = self._index.get(key)
        if entry is None:
            return None
        sha256 = str(entry["sha256"])
        path = self._image_path(sha256)
        data = await self._run_blocking(_read_if_intact, path, sha256)
        if data is None:
            async with self._lock:
                self._index.pop(key, None)
                await self._save_index()
            return None
        report = validate_image(
            data, role, filename=name, expected_sha256=expected, known_images=self._known_images
        )
        return StoredImage(
            path=path,
            sha256=sha256,
            size=len(data),
            role=role,
            report=report,
            filename=name,
            source_url=redact_url(url),
            from_cache=True,
        )

    async def _download_shared(self, url: str, progress: ProgressCallback | None) -> bytes:
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
        received = bytearray()
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
                    received += chunk
                    if len(received) > MAX_DOWNLOAD_BYTES:
                        raise FirmwareInvalidError(
                            FirmwareErrorCode.DOWNLOAD_TOO_LARGE,
                            {"url": shown, "received": len(received), "limit": MAX_DOWNLOAD_BYTES},
                        )
                    self._report_progress(flight, len(received), total)
        except aiohttp.ClientPayloadError as err:
            raise FirmwareUnavailableError(
                FirmwareErrorCode.TRUNCATED,
                {"url": shown, "received": len(received), "expected": total or -1},
            ) from err
        except aiohttp.ConnectionTimeoutError as err:  # never connected: unreachable
            raise FirmwareUnavailableError(
                FirmwareErrorCode.UNREACHABLE,
                {"url": shown, "reason": type(err).__name__},
            ) from err
        except TimeoutError as err:  # connected, then no data for sock_read s (or total)
            _LOGGER.warning("Download of %s stalled after %d bytes; given up", shown, len(received))
            raise FirmwareUnavailableError(
                FirmwareErrorCode.TIMEOUT, {"url": shown, "received": len(received)}
            ) from err
        except (aiohttp.ClientError, OSError) as err:
            raise FirmwareUnavailableError(
                FirmwareErrorCode.UNREACHABLE,
                {"url": shown, "reason": type(err).__name__},
            ) from err
        if total is not None and len(received) != total:
            raise FirmwareUnavailableError(
                FirmwareErrorCode.TRUNCATED,
                {"url": shown, "received": len(received), "expected": total},
            )
        return bytes(received)

    @staticmethod
    def _report_progress(flight: _Flight, received: int, total: int | None) -> None:
        for listener in list(flight.listeners):
            try:
                listener(received, total)
            except Exception:
                _LOGGER.exception("Firmware progress callback failed")

    def _image_path(self, sha256: str) -> Path:
        return self._images_dir / f"{sha256}.bin"

    async def _ensure_index(self) -> None:
        if self._index is not None:
            return
        async with self._lock:
            if self._index is None:
                await self._run_blocking(_sweep_temporaries, self._images_dir)
                self._index = await self._run_blocking(_load_index, self._index_path)

    async def _keep(self, data: bytes, sha256: str) -> tuple[Path, bytes | None]:
        """Put verified bytes into the cache (temporary file, then rename).

        Returns the cache path, and the bytes themselves when the cache could not
        keep them (read-only, full, or not a directory): the flash then serves them
        from memory.
        """
        path = self._image_path(sha256)
        async with self._lock:
            if await self._run_blocking(_read_if_intact, path, sha256) is not None:
                return path, None
            try:
                await self._run_blocking(_write_atomic, path, data)
            except OSError as err:
                _LOGGER.warning(
                    "Firmware cache %s cannot keep image %s (%s); serving it from memory",
                    self._cache_dir,
                    sha256,
                    err.strerror or type(err).__name__,
                )
                return path, data
        return path, None

    async def _save_index(self) -> None:
        """Write the index (lock held); a cache that cannot be written only loses it."""
        assert self._index is not None
        try:
            await self._run_blocking(_save_index, self._index_path, dict(self._index))
        except OSError as err:
            _LOGGER.warning(
                "Firmware cache index %s not saved (%s)",
                self._index_path,
                err.strerror or type(err).__name__,
            )

    async def _remember(self, url: str, report: ImageReport, filename: str) -> None:
        """Record URL -> sha256 with the validation facts in the index."""
        await self._ensure_index()
        assert self._index is not None
        async with self._lock:
            self._index[redact_url(url)] = {
                "sha256": report.sha256,
                "size": report.size,
                "filename": filename,
                "magic": report.magic,
                "flash_mode": report.flash_mode,
                "synthetic": report.synthetic,
                "validated_role": str(report.role),
                "warnings": [str(issue.code) for issue in report.warnings],
                "fetched_at": int(time.time()),
            }
            await self._save_index()
