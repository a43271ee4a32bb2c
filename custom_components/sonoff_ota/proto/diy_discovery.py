"""The `_ewelink._tcp.local.` announcement and the DIY-flash eligibility check.

Facts: shared/spec/diy-ota-and-tasmota.md §1.1 (firmware generations), §1.2 (entering
DIY mode), §1.3 (the mDNS record), §2 (encrypted LAN mode) and §5 item 13 (preflight).
Nothing here changes a device: the eligibility check runs before any request is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
import enum
import json
import re
from typing import Any

SERVICE_TYPE = "_ewelink._tcp.local."
DEFAULT_PORT = 8081
# AlexxIT accepts both spellings of the instance prefix (spec §1.3).
_INSTANCE_RE = re.compile(r"^e[wW]e[lL]ink_(?P<id>[0-9A-Za-z]+)")
_DEVICEID_RE = re.compile(r"^[0-9A-Za-z]{1,32}$")
# The device-info JSON is split over data1..data4 in 249-byte chunks (spec §1.3).
_DATA_KEYS = ("data1", "data2", "data3", "data4")

DIY_AP_PASSWORD = "12345678"
DIY_AP_SETUP_URL = "http://10.10.7.1/"

# Only `diy_plug` is documented as an `ota_flash` target (spec §1.3).
FLASHABLE_TYPES = frozenset({"diy_plug"})
# Types known from AlexxIT's devices.py (spec §1.3/§2) that we still refuse.
KNOWN_OTHER_TYPES = frozenset(
    {
        "plug",
        "strip",
        "enhanced_plug",
        "th_plug",
        "rf",
        "fan_light",
        "light",
        "diylight",
        "diy_light",
        "switch_radar",
        "multifun_switch",
        "meter",
    }
)
# R4 / BL602 / ESP32 generation (spec §1.1, §2 item 2): cannot run Tasmota at all.
_NOT_ESP8266_MODEL_RE = re.compile(r"(BL602|ESP32|^BASICR4|^MINIR4|R4M?$)")
MIN_DIY_FIRMWARE = (3, 3, 0)
# 3.3-3.7 have flash reports; 3.8.x is unverified (spec §1.1, §7).
MAX_VERIFIED_FIRMWARE = (3, 7)


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


class EligibilityReason(enum.StrEnum):
    """Why a device can or cannot be flashed over DIY (stable translation keys)."""

    OK = "ok"
    ENCRYPTED_LAN_MODE = "encrypted_lan_mode"
    CANNOT_RUN_TASMOTA = "cannot_run_tasmota"
    UNSUPPORTED_TYPE = "unsupported_type"
    UNKNOWN_TYPE = "unknown_type"
    NEEDS_EWELINK_UPDATE = "needs_ewelink_update"


class EligibilityWarning(enum.StrEnum):
    """Flashing may go ahead, but the user should know this."""

    UNVERIFIED_FIRMWARE = "unverified_firmware"
    FIRMWARE_UNKNOWN = "firmware_unknown"


@dataclass(frozen=True, slots=True)
class Eligibility:
    """The preflight verdict: a reason key plus placeholders for its message."""

    ok: bool
    reason: EligibilityReason
    placeholders: dict[str, str] = field(default_factory=dict)
    warnings: tuple[EligibilityWarning, ...] = ()


def parse_fw_version(version: str | None) -> tuple[int, ...] | None:
    """Return `"3.6.0"` as (3, 6, 0); None when absent or not numeric."""
    if not version:
        return None
    parts = re.findall(r"\d+", version.split("-")[0])
    if not parts:
        return None
    return tuple(int(p) for p in parts)


def _diy_mode_placeholders(deviceid: str | None) -> dict[str, str]:
    # Steps from spec §1.2: 5 s + 5 s long-press, join ITEAD-<id>, set Wi-Fi at 10.10.7.1.
    return {
        "ap_ssid": f"ITEAD-{deviceid}" if deviceid else "ITEAD-<deviceid>",
        "ap_password": DIY_AP_PASSWORD,
        "setup_url": DIY_AP_SETUP_URL,
    }


def check_eligibility(
    *,
    device_type: str | None,
    fw_version: str | None,
    encrypted: bool,
    model: str | None = None,
    deviceid: str | None = None,
) -> Eligibility:
    """Decide, before anything is sent, whether the DIY path may flash this device.

    `model` is the eWeLink `productModel` when known (cloud), e.g. `BASICR4`.
    Order matters: hardware that cannot run Tasmota is reported before the
    "switch to DIY mode" advice, which would be pointless for it.
    """
    fw = parse_fw_version(fw_version)
    dtype = (device_type or "").strip().lower() or None
    shown_fw = fw_version or "?"

    if model and _NOT_ESP8266_MODEL_RE.search(model.strip().upper()):
        return Eligibility(
            ok=False,
            reason=EligibilityReason.CANNOT_RUN_TASMOTA,
            placeholders={"model": model, "fw_version": shown_fw},
        )
    if fw is not None and fw[0] == 1:
        # 1.x = BL602/ESP32 generation (spec §1.1 last row).
        return Eligibility(
            ok=False,
            reason=EligibilityReason.CANNOT_RUN_TASMOTA,
            placeholders={"model": model or dtype or "?", "fw_version": shown_fw},
        )
    if encrypted:
        return Eligibility(
            ok=False,
            reason=EligibilityReason.ENCRYPTED_LAN_MODE,
            placeholders=_diy_mode_placeholders(deviceid),
        )
    if dtype is None or (dtype not in FLASHABLE_TYPES and dtype not in KNOWN_OTHER_TYPES):
        return Eligibility(
            ok=False,
            reason=EligibilityReason.UNKNOWN_TYPE,
            placeholders={"device_type": dtype or "?"},
        )
    if dtype not in FLASHABLE_TYPES:
        return Eligibility(
            ok=False,
            reason=EligibilityReason.UNSUPPORTED_TYPE,
            placeholders={"device_type": dtype},
        )
    if fw is None:
        # v1.4 firmware (3.3/3.4) has no fwVersion in /info (spec §1.6).
        return Eligibility(
            ok=True,
            reason=EligibilityReason.OK,
            placeholders={"fw_version": shown_fw},
            warnings=(EligibilityWarning.FIRMWARE_UNKNOWN,),
        )
    if fw < MIN_DIY_FIRMWARE:
        # [TD] says >= 3.1, the v1.4 doc >= 3.3.0; we require the stricter one.
        return Eligibility(
            ok=False,
            reason=EligibilityReason.NEEDS_EWELINK_UPDATE,
            placeholders={
                "fw_version": shown_fw,
                "min_version": ".".join(map(str, MIN_DIY_FIRMWARE)),
            },
        )
    warnings: tuple[EligibilityWarning, ...] = ()
    if fw[:2] > MAX_VERIFIED_FIRMWARE:
        warnings = (EligibilityWarning.UNVERIFIED_FIRMWARE,)
    return Eligibility(
        ok=True,
        reason=EligibilityReason.OK,
        placeholders={"fw_version": shown_fw},
        warnings=warnings,
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
