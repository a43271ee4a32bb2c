"""MAC address spellings: Tasmota's (`D8F15BAABBCC`) and HA's (`d8:f1:5b:aa:bb:cc`).

A Tasmota device is matched to its eWeLink record and to HA's device by MAC (spec
diy-ota-and-tasmota.md §2 item 3, §5 item 12); each side spells it its own way.
"""

from __future__ import annotations

import re

_SEPARATORS_RE = re.compile(r"[:\-.\s]")
_HEX12_RE = re.compile(r"^[0-9A-F]{12}$")


class InvalidMacError(ValueError):
    """Not a 48-bit MAC address in any usual spelling."""


def tasmota_mac(mac: str) -> str:
    """`d8:f1:5b:aa:bb:cc` / `D8-F1-5B-...` / `d8f1.5baa.bbcc` → `D8F15BAABBCC`."""
    cleaned = _SEPARATORS_RE.sub("", mac).upper()
    if not _HEX12_RE.match(cleaned):
        raise InvalidMacError(f"not a MAC address: {mac!r}")
    return cleaned


def ha_mac(mac: str) -> str:
    """The spelling of HA's `format_mac`: lowercase with colons (`d8:f1:5b:aa:bb:cc`)."""
    hex12 = tasmota_mac(mac).lower()
    return ":".join(hex12[i : i + 2] for i in range(0, 12, 2))
