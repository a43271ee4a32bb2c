"""Firmware image roles, limits, pinned known images and validation (pure functions).

Nothing here touches the network or the disk: `validate_image` looks at bytes
and a file name and says, with machine-readable codes, whether a device may
see them in a given role. The store (`firmware_store`) calls it before it caches
or serves anything.

Facts (spec README "Known images"; setup-mode-ota.md §2, §7, §13.7-8;
diy-ota-and-tasmota.md §1.8):
- setup mode offers two intermediate "E2A" images (ESP v2, magic 0xEA), one
  linked at 0x01000 (user1) and one at 0x81000 (user2); the device picks the one
  for its inactive slot, so both must be right;
- E2A then fetches the final image: magic 0xE9, at most 0x80000 = 524288 bytes,
  Content-Length at least 4096;
- DIY `ota_flash` takes a full Arduino image: 0xE9, flash mode DOUT (byte 2 == 3),
  at most 520192 bytes, and ITEAD's own tool refuses 508000 bytes and more;
- `.bin.gz` and `tasmota-minimal.bin` as the first image bricked devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
import hashlib
import mmap
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from .image_names import FINAL_NAME, USER1_NAME, USER2_NAME
from .sonota_files import (
    SONOTA_ARDUINO_SHA256,
    SONOTA_USER1_SHA256,
    SONOTA_USER2_SHA256,
)

type ImageData = bytes | mmap.mmap
"""An image's bytes: downloaded or uploaded (`bytes`), or read back from the cache.

The cache reads an image into an anonymous mapping (`firmware_cache.read_if_intact`):
every flash reads its images again, and half-megabyte `bytes` objects, freed at
the end of each flash, leave glibc's heap fragmented (the RSS grew by about 4 MB
over 20 DIY flashes, `bench.leaks`). A mapping goes back to the system when the
last reference to it goes. Both index, slice, `find` and hash alike.
"""

# Marker that virtual_sonoff/images.py writes into every synthetic image. Copied
# here on purpose: the integration must not import virtual_sonoff.
SYNTHETIC_MARKER = b"SONOFF-OTA-SYNTHETIC-TEST-IMAGE"
# The synthetic header puts the marker at offset 8; search a little further.
_SYNTHETIC_SEARCH_BYTES = 4096

MAGIC_V1 = 0xE9  # Arduino / Tasmota image (esptool v1 header)
MAGIC_V2 = 0xEA  # Espressif "user" image (esptool elf2image --version 2)
GZIP_MAGIC = b"\x1f\x8b"

FLASH_MODE_DOUT = 3
FLASH_MODE_NAMES: Mapping[int, str] = {0: "QIO", 1: "QOUT", 2: "DIO", 3: "DOUT"}

# setup-mode-ota.md §7: E2A ROM1 path accepts at most 0x80000 bytes.
SETUP_FINAL_MAX_BYTES = 0x80000  # 524288
# setup-mode-ota.md §7: E2A ROM2 path writes at most 0x7F000 bytes from 0x81000.
INTERMEDIATE_MAX_BYTES = 0x7F000  # 520192
# diy-ota-and-tasmota.md §1.8: njh MAX_SIZE, "the maximum allowed by Sonoff OTA flashing".
DIY_MAX_BYTES = 520192
# diy-ota-and-tasmota.md §1.8: ITEAD's tool rejects >= 508000 bytes (old 3.x firmware).
DIY_WARN_BYTES = 508000
# setup-mode-ota.md §2: SonOTA refuses any of its three files under 100000 bytes.
# No real Tasmota or E2A image is anywhere near that small, so every role uses it
# as a sanity floor (E2A itself only needs >= 4096, §7).
MIN_IMAGE_BYTES = 100_000


class ImageRole(StrEnum):
    """What an image is for; each role has its own limits."""

    SETUP_USER1 = "setup_user1"
    SETUP_USER2 = "setup_user2"
    SETUP_FINAL = "setup_final"
    DIY = "diy"


class IssueCode(StrEnum):
    """Machine-readable validation codes (errors and warnings).

    Each maps later to a translated message saying what is wrong and what to do;
    `Issue.params` carries the numbers for that message.
    """

    # errors
    EMPTY = "empty"  # params: -
    TOO_SMALL = "too_small"  # params: size, minimum
    TOO_LARGE = "too_large"  # params: size, limit
    GZIP = "gzip"  # params: - (content starts with 1f 8b)
    GZIP_NAME = "gzip_name"  # params: filename
    MINIMAL_BUILD = "minimal_build"  # params: filename
    BAD_MAGIC = "bad_magic"  # params: found, expected (as "0xE9")
    BAD_FLASH_MODE = "bad_flash_mode"  # params: found, found_name, expected, expected_name
    HASH_MISMATCH = "hash_mismatch"  # params: sha256, expected
    KNOWN_OTHER_ROLE = "known_other_role"  # params: name, role (a pinned image, wrong slot)
    # warnings
    NEAR_DIY_LIMIT = "near_diy_limit"  # params: size, warn_at, limit
    NOT_PINNED = "not_pinned"  # params: - (intermediate image with no known hash)


@dataclass(frozen=True, slots=True)
class Issue:
    """One validation finding: a code and the parameters for its message."""

    code: IssueCode
    params: Mapping[str, str | int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RoleLimits:
    """The checks one role needs."""

    magic: int
    max_size: int
    min_size: int = MIN_IMAGE_BYTES
    require_dout: bool = False
    warn_size: int | None = None
    # Whether an image not in the known table gets a NOT_PINNED warning.
    expect_pinned: bool = False


ROLE_LIMITS: Mapping[ImageRole, RoleLimits] = {
    # The shipped E2A images carry flash-mode byte 0 (`ea 04 00 20`, spec README):
    # no flash-mode check for the intermediates. The link address is not visible
    # in a v2 header (esptool writes irom0 with load address 0), so only the
    # pinned hash can tell user1 from user2.
    ImageRole.SETUP_USER1: RoleLimits(
        magic=MAGIC_V2, max_size=INTERMEDIATE_MAX_BYTES, expect_pinned=True
    ),
    ImageRole.SETUP_USER2: RoleLimits(
        magic=MAGIC_V2, max_size=INTERMEDIATE_MAX_BYTES, expect_pinned=True
    ),
    ImageRole.SETUP_FINAL: RoleLimits(
        magic=MAGIC_V1, max_size=SETUP_FINAL_MAX_BYTES, require_dout=True
    ),
    ImageRole.DIY: RoleLimits(
        magic=MAGIC_V1, max_size=DIY_MAX_BYTES, require_dout=True, warn_size=DIY_WARN_BYTES
    ),
}


@dataclass(frozen=True, slots=True)
class KnownImage:
    """An image whose exact bytes we know (sha256 pinned in code)."""

    name: str
    roles: frozenset[ImageRole]
    size: int
    sha256: str
    description: str


# The only hashes known offline: SonOTA's three files at the pinned commit (spec
# README "Known images"). There was no internet while this was written, so no
# hash of any Tasmota release (lite or otherwise) is pinned here; invented
# hashes would only make good images fail. Add them once they are checked.
KNOWN_IMAGES: tuple[KnownImage, ...] = (
    KnownImage(
        name=USER1_NAME,
        roles=frozenset({ImageRole.SETUP_USER1}),
        size=239220,
        sha256=SONOTA_USER1_SHA256,
        description="SonOTA intermediate (E2A) image linked at 0x01000",
    ),
    KnownImage(
        name=USER2_NAME,
        roles=frozenset({ImageRole.SETUP_USER2}),
        size=239220,
        sha256=SONOTA_USER2_SHA256,
        description="SonOTA intermediate (E2A) image linked at 0x81000",
    ),
    KnownImage(
        # Tasmota 5.9.1, DOUT. Old: it predates Tasmota's MQTT discovery, so it
        # is recognised but never chosen automatically.
        name=FINAL_NAME,
        roles=frozenset({ImageRole.SETUP_FINAL, ImageRole.DIY}),
        size=482432,
        sha256=SONOTA_ARDUINO_SHA256,
        description="Tasmota 5.9.1 as shipped by SonOTA",
    ),
)


@dataclass(frozen=True, slots=True)
class ImageReport:
    """The result of validating one image for one role."""

    role: ImageRole
    sha256: str  # lowercase hex of exactly these bytes
    size: int
    magic: int | None  # byte 0, None for an empty image
    flash_mode: int | None  # byte 2, None when shorter than 3 bytes
    flash_mode_name: str | None
    synthetic: bool  # carries the virtual_sonoff marker: label it "synthetic test image"
    errors: tuple[Issue, ...]
    warnings: tuple[Issue, ...]
    known: KnownImage | None  # the pinned image these bytes are, if any

    @property
    def ok(self) -> bool:
        """True when no error was found (warnings allowed)."""
        return not self.errors

    @property
    def error_codes(self) -> tuple[IssueCode, ...]:
        """The error codes only, for quick checks."""
        return tuple(issue.code for issue in self.errors)

    @property
    def warning_codes(self) -> tuple[IssueCode, ...]:
        """The warning codes only, for quick checks."""
        return tuple(issue.code for issue in self.warnings)


def sha256_hex(data: ImageData) -> str:
    """Lowercase hex sha256 (uppercase made DIY flashes fail, diy §1.8)."""
    return hashlib.sha256(data).hexdigest()


def is_synthetic(data: ImageData) -> bool:
    """Whether `data` is a synthetic test image from virtual_sonoff."""
    return data.find(SYNTHETIC_MARKER, 0, _SYNTHETIC_SEARCH_BYTES) >= 0


def name_from_url(url: str) -> str:
    """The file name at the end of a URL's path (query and fragment ignored)."""
    return PurePosixPath(unquote(urlsplit(url).path)).name


def find_known_image(
    sha256: str, known_images: tuple[KnownImage, ...] = KNOWN_IMAGES
) -> KnownImage | None:
    """The known image with this sha256, if any."""
    for known in known_images:
        if known.sha256 == sha256:
            return known
    return None


def _hex_byte(value: int) -> str:
    return f"0x{value:02X}"


def _name_issues(filename: str | None) -> list[Issue]:
    if not filename:
        return []
    issues: list[Issue] = []
    lowered = filename.lower()
    if lowered.endswith(".gz"):
        issues.append(Issue(IssueCode.GZIP_NAME, {"filename": filename}))
    # diy §1.8: tasmota-minimal has no Wi-Fi setup; as a first image it bricks.
    if "minimal" in lowered:
        issues.append(Issue(IssueCode.MINIMAL_BUILD, {"filename": filename}))
    return issues


def _header_issues(data: ImageData, limits: RoleLimits) -> list[Issue]:
    if data[:2] == GZIP_MAGIC:
        # More specific than "bad magic": say it is compressed.
        return [Issue(IssueCode.GZIP)]
    issues: list[Issue] = []
    if data[0] != limits.magic:
        issues.append(
            Issue(
                IssueCode.BAD_MAGIC,
                {"found": _hex_byte(data[0]), "expected": _hex_byte(limits.magic)},
            )
        )
    elif limits.require_dout and len(data) > 2 and data[2] != FLASH_MODE_DOUT:
        found = data[2]
        issues.append(
            Issue(
                IssueCode.BAD_FLASH_MODE,
                {
                    "found": found,
                    "found_name": FLASH_MODE_NAMES.get(found, "unknown"),
                    "expected": FLASH_MODE_DOUT,
                    "expected_name": FLASH_MODE_NAMES[FLASH_MODE_DOUT],
                },
            )
        )
    return issues


def _size_issues(size: int, limits: RoleLimits) -> tuple[list[Issue], list[Issue]]:
    errors: list[Issue] = []
    warnings: list[Issue] = []
    if size > limits.max_size:
        errors.append(Issue(IssueCode.TOO_LARGE, {"size": size, "limit": limits.max_size}))
    elif size < limits.min_size:
        errors.append(Issue(IssueCode.TOO_SMALL, {"size": size, "minimum": limits.min_size}))
    elif limits.warn_size is not None and size >= limits.warn_size:
        warnings.append(
            Issue(
                IssueCode.NEAR_DIY_LIMIT,
                {"size": size, "warn_at": limits.warn_size, "limit": limits.max_size},
            )
        )
    return errors, warnings


def validate_image(
    data: ImageData,
    role: ImageRole,
    *,
    filename: str | None = None,
    expected_sha256: str | None = None,
    known_images: tuple[KnownImage, ...] = KNOWN_IMAGES,
    limits: RoleLimits | None = None,
) -> ImageReport:
    """Check `data` for `role` before any device sees it.

    `filename` is the upload's name or the URL's last path segment (for the
    `.gz` and `minimal` checks). `expected_sha256` is the pinned hash of the
    source the bytes came from, if known. `known_images` is the pinned table
    (tests inject their own). `limits` overrides `ROLE_LIMITS[role]`.
    """
    limits = limits if limits is not None else ROLE_LIMITS[role]
    digest = sha256_hex(data)
    size = len(data)
    known = find_known_image(digest, known_images)
    errors: list[Issue] = []
    warnings: list[Issue] = []

    errors.extend(_name_issues(filename))
    if size == 0:
        errors.append(Issue(IssueCode.EMPTY))
    else:
        errors.extend(_header_issues(data, limits))
        size_errors, size_warnings = _size_issues(size, limits)
        errors.extend(size_errors)
        warnings.extend(size_warnings)

    if expected_sha256 is not None and digest != expected_sha256.lower():
        errors.append(
            Issue(IssueCode.HASH_MISMATCH, {"sha256": digest, "expected": expected_sha256.lower()})
        )
    elif known is not None and role not in known.roles:
        # e.g. SonOTA's user2 offered as user1: the device would boot garbage.
        errors.append(Issue(IssueCode.KNOWN_OTHER_ROLE, {"name": known.name, "role": str(role)}))
    elif expected_sha256 is None and limits.expect_pinned and known is None:
        # An intermediate image nobody has pinned: the link address cannot be
        # checked from its header, so the UI should say so.
        warnings.append(Issue(IssueCode.NOT_PINNED))

    magic = data[0] if size else None
    flash_mode = data[2] if size > 2 else None
    return ImageReport(
        role=role,
        sha256=digest,
        size=size,
        magic=magic,
        flash_mode=flash_mode,
        flash_mode_name=FLASH_MODE_NAMES.get(flash_mode) if flash_mode is not None else None,
        synthetic=is_synthetic(data),
        errors=tuple(errors),
        warnings=tuple(warnings),
        known=known,
    )
