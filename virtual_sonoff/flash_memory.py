"""The emulated SPI flash: what was written where, so tests can read it back."""

from __future__ import annotations

from dataclasses import dataclass, field
import hashlib

FLASH_SIZE = 0x100000  # 1 MiB, as on Sonoff Basic/Mini (ESP8266 1M)
USER1_OFFSET = 0x01000
USER2_OFFSET = 0x81000
ARDUINO_OFFSET = 0x00000
REGION_USER = 0x7F000  # bytes available to one eWeLink/E2A user slot
REGION_ARDUINO = 0x80000  # 524288: the largest 0xE9 image E2A writes (setup-mode-ota.md §7)


@dataclass(frozen=True, slots=True)
class Write:
    """One image written to flash."""

    offset: int
    data: bytes

    @property
    def sha256(self) -> str:
        """Lowercase hex digest of the bytes written."""
        return hashlib.sha256(self.data).hexdigest()


@dataclass(slots=True)
class FlashMemory:
    """A write log over a 1 MiB flash. The newest write at an offset wins."""

    writes: list[Write] = field(default_factory=list)

    def write(self, offset: int, data: bytes) -> None:
        """Record an image written at `offset`."""
        if offset < 0 or offset + len(data) > FLASH_SIZE:
            raise ValueError(f"write of {len(data)} bytes at {offset:#x} exceeds the flash")
        self.writes.append(Write(offset, bytes(data)))

    def image_at(self, offset: int) -> bytes | None:
        """The newest image written at exactly `offset`, if any."""
        for write in reversed(self.writes):
            if write.offset == offset:
                return write.data
        return None

    def sha256_at(self, offset: int) -> str | None:
        """Digest of the newest image at `offset`."""
        data = self.image_at(offset)
        return None if data is None else hashlib.sha256(data).hexdigest()

    def regions(self) -> dict[int, str]:
        """Offset -> sha256 of the newest image there (for introspection)."""
        return {w.offset: w.sha256 for w in self.writes}
