"""HTTP `Range: bytes=...` headers: one range, parsed and clamped against a file's size.

Only a single range is accepted (RFC 9110 §14.1.2); anything else is refused
with ValueError, which the image server answers with 416.
"""

from __future__ import annotations

from dataclasses import dataclass
import re
from typing import Final

_RANGE_RE: Final = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range `start..end` of a file."""

    start: int
    end: int

    @property
    def length(self) -> int:
        """Number of bytes in the range."""
        return self.end - self.start + 1


def parse_range(header: str, size: int) -> ByteRange | None:
    """Parse a single `bytes=a-b` / `bytes=a-` / `bytes=-n` range against `size`.

    Returns the clamped range; raises ValueError when unsatisfiable or malformed.
    """
    match = _RANGE_RE.match(header)
    if match is None:
        raise ValueError("malformed or multi-range header")
    first, last = match.group(1), match.group(2)
    if not first and not last:
        raise ValueError("empty range")
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise ValueError("unsatisfiable suffix range")
        return ByteRange(max(size - suffix, 0), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        raise ValueError("unsatisfiable range")
    return ByteRange(start, min(end, size - 1))
