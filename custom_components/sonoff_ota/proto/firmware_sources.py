"""Where every firmware image comes from: source URLs, pins and Tasmota release numbers.

`FirmwareSources` names the public source of each image (the two SonOTA
intermediate images at a pinned commit, the Tasmota lite releases) and the
sha256 pinned for a URL; `redact_url` is how a source URL is shown in logs and
messages (never with a password). We never ship third-party binaries: every
image comes from its public source at runtime (spec README "Known images").
"""

from __future__ import annotations

from collections.abc import Mapping
import re
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from .image_names import USER1_NAME, USER2_NAME
from .sonota_files import (
    SONOTA_COMMIT,
    SONOTA_USER1_SHA256,
    SONOTA_USER2_SHA256,
)

if TYPE_CHECKING:
    from .firmware_image import ImageRole


class FirmwareSources(NamedTuple):
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
        f"https://raw.githubusercontent.com/mirko/SonOTA/{SONOTA_COMMIT}/static/{USER1_NAME}"
    )
    user1_sha256: str | None = SONOTA_USER1_SHA256
    user2_url: str = (
        f"https://raw.githubusercontent.com/mirko/SonOTA/{SONOTA_COMMIT}/static/{USER2_NAME}"
    )
    user2_sha256: str | None = SONOTA_USER2_SHA256
    # Extra pins, URL -> lowercase sha256 (e.g. a checked Tasmota release).
    pinned_sha256: Mapping[str, str] = MappingProxyType({})

    def tasmota_release_url(self, version: str) -> str:
        """The URL of the lite build of one Tasmota release (e.g. "14.4.1")."""
        return self.tasmota_release_url_template.format(version=version.strip().lstrip("vV"))

    def intermediate_url(self, role: ImageRole) -> str:
        """The URL of the intermediate image for a setup-mode slot."""
        from .firmware_image import ImageRole  # noqa: PLC0415 - loaded: `role` is one

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


def redact_url(url: str) -> str:
    """Drop user info (user:password@) from a URL for logs and messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
