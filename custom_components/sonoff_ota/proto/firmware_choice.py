"""The user's choice of Tasmota image for a flash (`FirmwareChoice`) and where it comes from."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

from .firmware_sources import normalize_tasmota_version, redact_url

if TYPE_CHECKING:
    from .firmware_cache import StoredImage


class FirmwareSource(StrEnum):
    """Where the Tasmota image of a flash comes from."""

    LATEST = "latest"  # the newest lite release that fits the path (the default)
    VERSION = "version"  # one Tasmota release, lite build
    URL = "url"  # any http(s) URL the user gave
    UPLOAD = "upload"  # a file the user uploaded (already validated and cached)


class FirmwareChoice(NamedTuple):
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
