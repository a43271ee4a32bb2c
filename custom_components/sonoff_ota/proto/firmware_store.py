"""Obtain verified firmware images for a flash: which source, which fallback, which check.

The store is the policy over the downloader (`firmware_download`) and the
cache (`firmware_cache`): it downloads the images a flash needs (the two SonOTA
intermediate images at a pinned commit, a Tasmota lite release, or a URL the
user gave), accepts uploads, validates everything with
`firmware_image.validate_image` before a device can see it, and keeps verified
images in the cache. An image that changes over time (the newest Tasmota, a
user's URL) is asked of the network first; a pinned one of the cache first; an
unreachable source falls back to the cache (and says so), and the newest
Tasmota lite falls back to a known-good older one. A partial or failed
download never reaches the cache.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
import logging
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from .firmware_cache import FirmwareCache, RunBlocking, StoredImage
from .firmware_choice import FirmwareChoice, FirmwareSource
from .firmware_download import DEFAULT_TIMEOUT, FirmwareDownloader, ProgressCallback
from .firmware_errors import (
    FirmwareError,
    FirmwareErrorCode,
    FirmwareInvalidError,
    FirmwareUnavailableError,
)
from .firmware_image import (
    KNOWN_IMAGES,
    ImageData,
    ImageReport,
    ImageRole,
    KnownImage,
    name_from_url,
    validate_image,
)
from .firmware_sources import FirmwareSources, redact_url

_LOGGER = logging.getLogger(__name__)


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
        self.sources = sources if sources is not None else FirmwareSources()
        self._known_images = known_images
        self._cache = FirmwareCache(cache_dir, run_blocking, known_images=known_images)
        self._downloader = FirmwareDownloader(session, timeout=timeout)

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

    async def store_upload(self, data: ImageData, filename: str, role: ImageRole) -> StoredImage:
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
        return await self._keep(data, report, role, filename, url=None)

    async def read_bytes(self, image: StoredImage) -> ImageData:
        """The exact bytes to serve for `image`, checked against its sha256."""
        return await self._cache.read_bytes(image)

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
        await self._cache.ensure_index()

        if prefer_cache:
            cached = await self._cache.lookup(url, role, name, expected)
            if cached is not None and cached.report.ok:
                return cached

        try:
            data = await self._downloader.download(url, progress)
        except FirmwareUnavailableError as err:
            cached = await self._cache.lookup(url, role, name, expected)
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
        return await self._keep(data, report, role, name, url=url)

    async def _keep(
        self,
        data: ImageData,
        report: ImageReport,
        role: ImageRole,
        filename: str,
        *,
        url: str | None,
    ) -> StoredImage:
        """Keep validated bytes in the cache; a download (`url`) is indexed once on disk."""
        path, memory = await self._cache.keep(data, report.sha256)
        if url is not None and memory is None:
            await self._cache.remember(url, report, filename)
        return StoredImage(
            path=path,
            sha256=report.sha256,
            size=report.size,
            role=role,
            report=report,
            filename=filename,
            source_url=None if url is None else redact_url(url),
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
