"""Tasmota's own MQTT discovery message and the Wi-Fi manager SSID (MACs: `mac_address`).

Facts: shared/spec/diy-ota-and-tasmota.md §3.1 (AP name), §3.5 (topics and the
`config` schema), §2 item 3 (eWeLink `staMac`) and §5 item 12 (matching by MAC).
"""

from __future__ import annotations

from dataclasses import dataclass
import json
import re
from typing import Any

from .mac_address import tasmota_mac

DEFAULT_DISCOVERY_PREFIX = "tasmota/discovery"
DEFAULT_FULL_TOPIC = "%prefix%/%topic%/"
"""Tasmota's FullTopic when discovery does not say otherwise."""
# Same character class as hatasmota's topic regex (spec §3.5).
_TOPIC_RE = re.compile(r"^(?P<prefix>.+)/(?P<mac>[A-Z0-9_-]+)/(?P<kind>config|sensors)$")
AP_SSID_RE = re.compile(r"^tasmota[-_][0-9A-F]{6}-\d{4}$")
# WIFI_HOSTNAME "%s-%04d" with ESP_getChipId() & 0x1FFF (checked against the two
# SSIDs quoted in spec §3.1: 0x3D5E26 & 0x1FFF == 7718, 0x62E43F & 0x1FFF == 1087).
_HOSTNAME_SUFFIX_MASK = 0x1FFF


class TasmotaDiscoveryError(ValueError):
    """A discovery message we cannot use; `code` is a stable key."""

    def __init__(self, code: str, message: str) -> None:
        """Store the key next to the human message."""
        super().__init__(message)
        self.code = code


def default_topic(mac: str) -> str:
    """Tasmota's default Topic `tasmota_%06X` (the low 3 MAC bytes) = the AP SSID prefix."""
    return f"tasmota_{tasmota_mac(mac)[6:]}"


def predicted_ssid_prefix(mac: str) -> str:
    """The part of the Wi-Fi manager SSID we can predict with confidence: `tasmota_XXXXXX`."""
    return default_topic(mac)


def predicted_ap_ssid(mac: str) -> str:
    """The full default AP SSID `tasmota_XXXXXX-NNNN` [infer: chip id = low 3 MAC bytes].

    Some builds use `-` instead of `_`; match with `ssid_matches_mac`.
    """
    low = int(tasmota_mac(mac)[6:], 16)
    return f"{default_topic(mac)}-{low & _HOSTNAME_SUFFIX_MASK:04d}"


def ap_ssid_pattern(mac: str | None) -> re.Pattern[str]:
    """The SSID pattern a Wi-Fi scan looks for: this MAC's AP, or any Tasmota AP.

    With a MAC, either separator and any case of the hex match (builds differ).
    """
    if not mac:
        return AP_SSID_RE
    low = re.escape(tasmota_mac(mac)[6:])
    return re.compile(rf"^tasmota[-_]{low}-\d{{4}}$", re.IGNORECASE)


def is_tasmota_ap_ssid(ssid: str) -> bool:
    """True for `tasmota_XXXXXX-NNNN` / `tasmota-XXXXXX-NNNN`."""
    return AP_SSID_RE.match(ssid) is not None


def ssid_matches_mac(ssid: str, mac: str) -> bool:
    """True when a Tasmota AP SSID carries this MAC's low 3 bytes (either separator)."""
    if not is_tasmota_ap_ssid(ssid):
        return False
    return ssid[8:14] == tasmota_mac(mac)[6:]


@dataclass(frozen=True, slots=True)
class TasmotaDevice:
    """The fields of a `tasmota/discovery/<MAC>/config` message we act on."""

    mac: str
    """12 uppercase hex digits, as in the topic."""
    ip: str
    topic: str
    sw: str
    """Discovery `sw`: the version number only; `(lite)` is in Status 2 only."""
    device_name: str
    model: str
    """Discovery `md` (module/template name)."""
    relays: int
    """Relay slots in use (`rl` entries that are not 0)."""
    hostname: str
    relay_types: tuple[int, ...] = ()
    friendly_names: tuple[str, ...] = ()
    full_topic: str | None = None
    """Discovery `ft`; None: Tasmota's default (`DEFAULT_FULL_TOPIC`)."""

    @property
    def is_lite(self) -> bool:
        """True when the version string carries `(lite)`."""
        return "(lite)" in self.sw.lower()


@dataclass(frozen=True, slots=True)
class TasmotaRemoved:
    """An empty retained `config`: discovery was disabled or the device was removed."""

    mac: str


def discovery_topic(mac: str, prefix: str = DEFAULT_DISCOVERY_PREFIX) -> str:
    """`tasmota/discovery/<MAC12>/config` for a MAC in any spelling."""
    return f"{prefix}/{tasmota_mac(mac)}/config"


def _required_str(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise TasmotaDiscoveryError("missing_field", f"discovery config lacks {key!r}")
    return value


def parse_discovery(
    topic: str, payload: bytes | str, prefix: str = DEFAULT_DISCOVERY_PREFIX
) -> TasmotaDevice | TasmotaRemoved:
    """Decode one message from `<prefix>/<MAC>/config`.

    Raises TasmotaDiscoveryError: `unexpected_topic`, `bad_json`, `missing_field`,
    `mac_mismatch` (HA rejects those too), `unsupported_version`.
    """
    match = _TOPIC_RE.match(topic)
    if not match or match["prefix"] != prefix or match["kind"] != "config":
        raise TasmotaDiscoveryError("unexpected_topic", f"not a discovery config topic: {topic}")
    topic_mac = match["mac"]
    text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload
    if not text.strip():
        return TasmotaRemoved(mac=topic_mac)
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as err:  # deep nesting
        raise TasmotaDiscoveryError("bad_json", f"{topic}: payload is not JSON") from err
    if not isinstance(doc, dict):
        raise TasmotaDiscoveryError("bad_json", f"{topic}: payload is not an object")
    mac = _required_str(doc, "mac")
    if mac != topic_mac:
        raise TasmotaDiscoveryError("mac_mismatch", f"{topic}: payload mac {mac!r} differs")
    if doc.get("ver") != 1:
        raise TasmotaDiscoveryError("unsupported_version", f"{topic}: ver {doc.get('ver')!r}")
    relays_raw = doc.get("rl", [])
    if not isinstance(relays_raw, list) or not all(
        isinstance(r, int) and not isinstance(r, bool) for r in relays_raw
    ):
        raise TasmotaDiscoveryError("missing_field", f"{topic}: `rl` is not a list of numbers")
    names_raw = doc.get("fn", [])
    names = tuple(n for n in names_raw if isinstance(n, str)) if isinstance(names_raw, list) else ()
    full_topic = doc.get("ft")
    return TasmotaDevice(
        mac=mac,
        ip=_required_str(doc, "ip"),
        topic=_required_str(doc, "t"),
        sw=_required_str(doc, "sw"),
        device_name=_required_str(doc, "dn"),
        model=_required_str(doc, "md"),
        relays=sum(1 for r in relays_raw if r != 0),
        hostname=_required_str(doc, "hn"),
        relay_types=tuple(relays_raw),
        friendly_names=names,
        full_topic=full_topic if isinstance(full_topic, str) else None,
    )
