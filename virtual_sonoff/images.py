"""Synthetic firmware images for tests and the demo (never real firmware).

They carry the right ESP8266 header (magic, segment count, flash mode) and
size, a marker that the integration shows as "synthetic test image", and
deterministic filler, so a test can check byte for byte what was flashed.
"""

from __future__ import annotations

import hashlib

SYNTHETIC_MARKER = b"SONOFF-OTA-SYNTHETIC-TEST-IMAGE"

MAGIC_V1 = 0xE9  # Arduino/Tasmota image
MAGIC_V2 = 0xEA  # eWeLink/Espressif "user" image
FLASH_MODE_QIO = 0
FLASH_MODE_DIO = 2
FLASH_MODE_DOUT = 3


def make_image(
    size: int,
    *,
    magic: int = MAGIC_V1,
    flash_mode: int = FLASH_MODE_DOUT,
    label: str = "tasmota-lite",
) -> bytes:
    """Build a `size`-byte image whose header looks like a real one."""
    if size < 64:
        raise ValueError("an image needs at least 64 bytes")
    header = bytes([magic, 0x04 if magic == MAGIC_V2 else 0x01, flash_mode, 0x20])
    entry = (0x40100004).to_bytes(4, "little")
    body = header + entry + SYNTHETIC_MARKER + b":" + label.encode() + b"\x00"
    filler = bytearray()
    counter = 0
    seed = label.encode()
    while len(body) + len(filler) < size:
        filler += hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        counter += 1
    return (body + bytes(filler))[:size]


def tasmota_lite(size: int = 480_000) -> bytes:
    """A synthetic Tasmota lite image (0xE9, DOUT) that fits both paths."""
    return make_image(size, label="tasmota-lite")


def intermediate_user1(size: int = 239_220) -> bytes:
    """A synthetic intermediate image for slot user1 (0xEA, linked at 0x01000)."""
    return make_image(size, magic=MAGIC_V2, label="intermediate-user1-0x01000")


def intermediate_user2(size: int = 239_220) -> bytes:
    """A synthetic intermediate image for slot user2 (0xEA, linked at 0x81000)."""
    return make_image(size, magic=MAGIC_V2, label="intermediate-user2-0x81000")
