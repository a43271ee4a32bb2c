"""The `_ewelink._tcp.local.` announcement and the DIY-flash eligibility check.

Facts: shared/spec/diy-ota-and-tasmota.md §1.1 (firmware generations), §1.2 (entering
DIY mode), §1.3 (the mDNS record), §2 (encrypted LAN mode) and §5 item 13 (preflight).
Nothing here changes a device: the eligibility check runs before any request is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
import json
import re
from typing import Any, NotRequired, TypedDict, Unpack

from .eligibility import (
    FLASHABLE_TYPES,
    KNOWN_OTHER_TYPES,
    MIN_DIY_FIRMWARE,
    EligibilityReason,
    EligibilityWarning,
    check_diy,
    diy_version,
)

SERVICE_TYPE = "_ewelink._tcp.local."
DEFAULT_PORT = 8081
# AlexxIT accepts both spellings of the instance prefix (spec §1.3).
_INSTANCE_RE = re.compile(r"^e[wW]e[lL]ink_(?P<id>[0-9A-Za-z]+)")
_DEVICEID_RE = re.compile(r"^[0-9A-Za-z]{1,32}$")
# The device-info JSON is split over data1..data4 in 249-byte chunks (spec §1.3).
_DATA_KEYS = ("data1", "data2", "data3", "data4")

# The eligibility facts live in ONE table (eligibility.py); these names stay importable here.
__all__ = [
    "FLASHABLE_TYPES",
    "KNOWN_OTHER_TYPES",
    "MIN_DIY_FIRMWARE",
    "Eligibility",
    "EligibilityReason",
    "EligibilityWarning",
    "check_advert_eligibility",
    "check_eligibility",
    "parse_advert",
]


class DiyAdvertError(ValueError):
    """An announcement that cannot be used; `code` is a stable key."""

    def __init__(self, code: str, message: str) -> None:
        """Store the key next to the human message."""
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class DiyAdvert:
    """One `_ewelink._tcp` announcement, decoded."""

    deviceid: str
    device_type: str | None
    encrypted: bool
    apivers: str | None
    seq: int | None
    data: dict[str, Any] | None
    """Plain device state (DIY only); None when encrypted or absent."""

    @property
    def fw_version(self) -> str | None:
        """The `fwVersion` from the TXT data, when the firmware puts it there."""
        if self.data is None:
            return None
        value = self.data.get("fwVersion")
        return value if isinstance(value, str) else None


def _text(value: str | bytes | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _normalise_properties(
    properties: Mapping[str, str | bytes | None] | Mapping[bytes, str | bytes | None],
) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for key, value in properties.items():
        name = key.decode("utf-8", errors="replace") if isinstance(key, bytes) else str(key)
        out[name.lower()] = _text(value)
    return out


def deviceid_from_instance_name(name: str) -> str | None:
    """Return the deviceid in `eWeLink_<id>[._ewelink._tcp.local.]`, or None."""
    match = _INSTANCE_RE.match(name.strip())
    return match.group("id") if match else None


def parse_advert(
    properties: Mapping[str, str | bytes | None] | Mapping[bytes, str | bytes | None],
    name: str = "",
) -> DiyAdvert:
    """Decode a TXT record (str or bytes keys/values) plus the instance name.

    Raises DiyAdvertError (`no_deviceid`, `bad_data`) rather than anything else.
    """
    props = _normalise_properties(properties)
    deviceid = (props.get("id") or "").strip() or deviceid_from_instance_name(name)
    if not deviceid or not _DEVICEID_RE.match(deviceid):
        raise DiyAdvertError("no_deviceid", f"no usable deviceid in announcement {name!r}")

    # LAN mode = an `encrypt` key (value "true"); data is base64 ciphertext (spec §1.3, §2).
    encrypted = "encrypt" in props
    device_type = (props.get("type") or "").strip() or None

    seq: int | None
    try:
        seq = int(props.get("seq") or "")
    except ValueError:
        seq = None

    data: dict[str, Any] | None = None
    raw = "".join(props.get(key) or "" for key in _DATA_KEYS)
    if raw and not encrypted:
        try:
            parsed = json.loads(raw)
        except ValueError as err:
            raise DiyAdvertError("bad_data", f"device {deviceid}: TXT data is not JSON") from err
        if not isinstance(parsed, dict):
            raise DiyAdvertError("bad_data", f"device {deviceid}: TXT data is not an object")
        data = parsed

    return DiyAdvert(
        deviceid=deviceid,
        device_type=device_type.lower() if device_type else None,
        encrypted=encrypted,
        apivers=props.get("apivers"),
        seq=seq,
        data=data,
    )


@dataclass(frozen=True, slots=True)
class Eligibility:
    """The preflight verdict: a reason key plus placeholders for its message."""

    ok: bool
    reason: EligibilityReason
    placeholders: dict[str, str] = field(default_factory=dict)
    warnings: tuple[EligibilityWarning, ...] = ()
    row: str = ""
    """The key of the eligibility-table row that decided."""


def parse_fw_version(version: str | None) -> tuple[int, ...] | None:
    """Return `"3.6.0"` as (3, 6, 0); None when absent or not numeric."""
    return diy_version(version)


class _DiyFacts(TypedDict):
    """The keywords of `check_eligibility`: those of `eligibility.check_diy`."""

    device_type: str | None
    fw_version: str | None
    encrypted: bool
    model: NotRequired[str | None]
    """The eWeLink `productModel` when known (cloud), e.g. `BASICR4`."""
    deviceid: NotRequired[str | None]


def check_eligibility(**facts: Unpack[_DiyFacts]) -> Eligibility:
    """Decide, before anything is sent, whether the DIY path may flash this device.

    The verdict is the first matching row of the eligibility table (`check_diy`).
    """
    decision = check_diy(**facts)
    row = decision.row
    return Eligibility(
        ok=decision.ok,
        reason=EligibilityReason(row.reason),
        placeholders=decision.placeholders,
        warnings=(row.warning,) if row.warning is not None else (),
        row=row.key,
    )


def check_advert_eligibility(
    advert: DiyAdvert, *, fw_version: str | None = None, model: str | None = None
) -> Eligibility:
    """Run `check_eligibility` on an announcement (fw from /info or the cloud wins)."""
    return check_eligibility(
        device_type=advert.device_type,
        fw_version=fw_version or advert.fw_version,
        encrypted=advert.encrypted,
        model=model,
        deviceid=advert.deviceid,
    )
