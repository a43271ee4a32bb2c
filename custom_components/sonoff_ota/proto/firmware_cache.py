"""The on-disk cache of verified firmware images, keyed by sha256, with a URL index.

A small JSON index maps each source URL to the sha256 it last gave, so an
offline HA still has the images it fetched before (and says so).

- All file I/O goes through the injected `run_blocking` (HA:
  `hass.async_add_executor_job`).
- Verified bytes are written to a temporary file in the cache and renamed; a
  crash mid-write leaves only a temporary file, swept on the next start.
- The cache is an optimisation, never a requirement: when its directory is
  read-only or full (any OSError while writing), the verified bytes stay in
  memory for this flash (`StoredImage.data`) and a warning says why; a cache
  that cannot be read counts as empty.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
import json
import logging
import mmap
import os
from pathlib import Path
import secrets
import time
from typing import Any, Protocol

from .firmware_errors import FirmwareErrorCode, FirmwareUnavailableError
from .firmware_image import (
    KNOWN_IMAGES,
    ImageData,
    ImageReport,
    ImageRole,
    KnownImage,
    sha256_hex,
    validate_image,
)
from .firmware_sources import redact_url

_LOGGER = logging.getLogger(__name__)

_INDEX_VERSION = 1
_INDEX_NAME = "index.json"
_IMAGES_DIR = "images"
_TMP_SUFFIX = ".tmp"


class RunBlocking(Protocol):
    """Runs a blocking callable off the event loop (HA: `hass.async_add_executor_job`)."""

    def __call__[*Ts, T](self, target: Callable[[*Ts], T], *args: *Ts) -> Awaitable[T]:
        """Run `target(*args)` in an executor and await its result."""
        ...


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
    data: ImageData | None = field(default=None, repr=False, compare=False)
    """The verified bytes, when the cache could not keep them (read-only or full)."""

    @property
    def synthetic(self) -> bool:
        """A synthetic test image (label it "synthetic test image" in the UI)."""
        return self.report.synthetic


def _write_atomic(dest: Path, data: ImageData) -> None:
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


def _read_mapped(path: Path) -> ImageData:
    """The file's bytes in an anonymous mapping (`firmware_image.ImageData` says why)."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if not size:
            return b""
        data = mmap.mmap(-1, size)
        read = handle.readinto(data)
    if read != size:  # the file changed while being read: what is here is not it
        data.close()
        raise OSError(f"read {read} of {size} bytes")
    return data


def read_if_intact(path: Path, sha256: str) -> ImageData | None:
    """The file's bytes if it exists and still hashes to `sha256`; else None.

    A file that no longer matches is removed (when the cache lets us). An
    unreadable cache is an empty one.
    """
    try:
        data = _read_mapped(path)
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


class FirmwareCache:
    """Verified images on disk under `cache_dir`, and the index of where they came from."""

    def __init__(
        self,
        cache_dir: Path,
        run_blocking: RunBlocking,
        *,
        known_images: tuple[KnownImage, ...] = KNOWN_IMAGES,
    ) -> None:
        """Use `cache_dir` (created on demand) and the injected executor."""
        self._cache_dir = cache_dir
        self._images_dir = cache_dir / _IMAGES_DIR
        self._index_path = cache_dir / _INDEX_NAME
        self._run_blocking = run_blocking
        self._known_images = known_images
        self._index: dict[str, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()  # index and cache writes

    def _image_path(self, sha256: str) -> Path:
        return self._images_dir / f"{sha256}.bin"

    async def ensure_index(self) -> None:
        """Read the index (and tidy crash leftovers) the first time it is needed."""
        if self._index is not None:
            return
        async with self._lock:
            if self._index is None:
                await self._run_blocking(_sweep_temporaries, self._images_dir)
                self._index = await self._run_blocking(_load_index, self._index_path)

    async def lookup(
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
        data = await self._run_blocking(read_if_intact, path, sha256)
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

    async def read_bytes(self, image: StoredImage) -> ImageData:
        """The exact bytes to serve for `image`, checked against its sha256."""
        if image.data is not None:  # the cache could not keep it: verified in memory
            return image.data
        data = await self._run_blocking(read_if_intact, image.path, image.sha256)
        if data is None:
            raise FirmwareUnavailableError(
                FirmwareErrorCode.CACHE_CORRUPT, {"sha256": image.sha256}
            )
        return data

    # ---------------------------------------------------------------- internals
    async def keep(self, data: ImageData, sha256: str) -> tuple[Path, ImageData | None]:
        """Put verified bytes into the cache (temporary file, then rename).

        Returns the cache path, and the bytes themselves when the cache could not
        keep them (read-only, full, or not a directory): the flash then serves them
        from memory.
        """
        path = self._image_path(sha256)
        async with self._lock:
            if await self._run_blocking(read_if_intact, path, sha256) is not None:
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

    async def remember(self, url: str, report: ImageReport, filename: str) -> None:
        """Record URL -> sha256 with the validation facts in the index."""
        await self.ensure_index()
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
