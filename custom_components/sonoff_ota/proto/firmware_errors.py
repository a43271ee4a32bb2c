"""Why an image could not be handed out: `FirmwareErrorCode` and the errors that carry it."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from .firmware_image import ImageReport, Issue


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
