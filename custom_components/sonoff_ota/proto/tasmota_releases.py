"""The newest Tasmota release (number and release-notes page) and the OTA URL of a build.

The number comes from GitHub's "latest release" of arendst/Tasmota, as HA's own
tasmota update entity does (spec §3.6); the image from Tasmota's OTA server over
plain http (`<base>/<build>.bin.gz`, spec §3.3, §3.7). No HA imports.
"""

from __future__ import annotations

from dataclasses import dataclass
import enum
import logging
from typing import Final

import aiohttp

from .firmware_sources import normalize_tasmota_version

_LOGGER = logging.getLogger(__name__)

DEFAULT_RELEASES_URL = "https://api.github.com/repos/arendst/Tasmota/releases/latest"
"""Read at call time (tests point it at loopback)."""
DEFAULT_OTA_BASE_URL = "http://ota.tasmota.com/tasmota/release"
RELEASES_PAGE: Final = "https://github.com/arendst/Tasmota/releases"
_TIMEOUT = aiohttp.ClientTimeout(total=20)
# Tasmota's localised ESP8266 builds (tasmota-XX.bin.gz on the OTA server).
LANGUAGES: Final = (
    "AD", "AF", "BG", "BR", "CN", "CZ", "DE", "ES", "FR", "FY", "GR", "HE", "HU", "IT",
    "KO", "NL", "PL", "PT", "RO", "RU", "SE", "SK", "TR", "TW", "UK", "VN",
)  # fmt: skip


class BuildChoice(enum.StrEnum):
    """What the user picks in the options flow."""

    TASMOTA = "tasmota"
    SENSORS = "tasmota-sensors"
    LOCALIZED = "localized"
    URL = "url"


@dataclass(frozen=True, slots=True)
class TasmotaRelease:
    """One release: `14.4.1` and its notes page."""

    version: str
    url: str


@dataclass(frozen=True, slots=True)
class TargetBuild:
    """The image an upgrade sends: its OtaUrl and the build `Status 2` will then name."""

    ota_url: str
    build: str | None
    """`tasmota`, `sensors`...; None for a URL of unknown build."""
    label: str
    """Shown after the number: `tasmota`, `sensors`, `tasmota-DE`, `custom`."""


def target_build(
    choice: BuildChoice | str,
    *,
    language: str | None = None,
    custom_url: str | None = None,
    base_url: str = DEFAULT_OTA_BASE_URL,
) -> TargetBuild:
    """The OtaUrl of a choice (ValueError for an incomplete one)."""
    base = base_url.rstrip("/")
    choice = BuildChoice(choice)
    if choice is BuildChoice.SENSORS:
        return TargetBuild(f"{base}/tasmota-sensors.bin.gz", "sensors", "sensors")
    if choice is BuildChoice.LOCALIZED:
        if language not in LANGUAGES:
            raise ValueError(f"unknown Tasmota language {language!r}")
        # The localised builds name themselves "tasmota" in Status 2 [infer].
        return TargetBuild(f"{base}/tasmota-{language}.bin.gz", "tasmota", f"tasmota-{language}")
    if choice is BuildChoice.URL:
        if not custom_url:
            raise ValueError("a URL build needs its URL")
        return TargetBuild(custom_url, None, "custom")
    return TargetBuild(f"{base}/tasmota.bin.gz", "tasmota", "tasmota")


async def fetch_latest_release(
    session: aiohttp.ClientSession, url: str | None = None
) -> TasmotaRelease | None:
    """The latest release, or None when it cannot be learnt (logged at debug level)."""
    try:
        async with session.get(
            url or DEFAULT_RELEASES_URL,
            timeout=_TIMEOUT,
            headers={"Accept": "application/vnd.github+json"},
        ) as response:
            if response.status != 200:
                _LOGGER.debug("Tasmota releases: HTTP %s", response.status)
                return None
            body = await response.json(content_type=None)
    except Exception as err:
        _LOGGER.debug("Tasmota releases unavailable: %s", err)
        return None
    if not isinstance(body, dict) or not isinstance(body.get("tag_name"), str):
        return None
    version = normalize_tasmota_version(body["tag_name"])
    if version is None:
        return None
    page = body.get("html_url")
    if not isinstance(page, str) or not page.startswith("https://"):
        page = f"{RELEASES_PAGE}/tag/v{version}"
    return TasmotaRelease(version, page)
