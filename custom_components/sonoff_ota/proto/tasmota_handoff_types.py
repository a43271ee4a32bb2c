"""What the Tasmota hand-off is given and gives back: settings, timeouts, result, errors.

The tracker detail keys (`DETAIL_*`) are what the hand-off reports on its
`FlashTracker` for the flow and the diagnostics to read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
import enum
from typing import Final

from .tasmota_discovery import TasmotaDevice

# Tracker detail keys (values are strings; FlashTracker.details is dict[str, str]).
DETAIL_SSID: Final = "tasmota_ssid"
DETAIL_PHONE_LINK: Final = "tasmota_phone_link_secret"
"""The one-tap `/cm?cmnd=Backlog ...` link: it CONTAINS THE WI-FI AND MQTT PASSWORDS.
Show it only behind a warning; never log it; redact it in diagnostics."""
DETAIL_MAC: Final = "tasmota_mac"
DETAIL_IP: Final = "tasmota_ip"
DETAIL_CONFIGURED_BY: Final = "tasmota_configured_by"
DETAIL_CANDIDATES: Final = "tasmota_candidates"
DETAIL_MAC_MISMATCH: Final = "tasmota_mac_mismatch"
SECRET_DETAILS: Final = frozenset({DETAIL_PHONE_LINK})


class HandoffErrorCode(enum.StrEnum):
    """Stable keys of a failed hand-off (also the `FlashTracker.fail` codes)."""

    INVALID_SETTINGS = "invalid_tasmota_settings"
    TASMOTA_DENIED = "tasmota_denied"
    BACKLOG_FAILED = "backlog_failed"
    AMBIGUOUS_DEVICE = "ambiguous_device"
    TASMOTA_NOT_FOUND = "tasmota_not_found"
    BROKER_UNREACHABLE = "broker_unreachable"
    DISCOVERY_BLOCKED = "discovery_blocked"
    UPGRADE_FAILED = "upgrade_failed"


class ConfiguredBy(enum.StrEnum):
    """Who gave the device its settings."""

    HA = "ha"
    """We sent the Backlog to the AP and it was confirmed."""
    UNCONFIRMED = "unconfirmed"
    """We sent it but could not confirm it took (the AP dropped mid-request)."""
    PHONE = "phone"
    """The AP never answered us: the user's phone had to do it."""


class HandoffError(Exception):
    """A hand-off failure; `code` is a translation key, `placeholders` its values."""

    def __init__(self, code: HandoffErrorCode, message: str, **placeholders: str) -> None:
        """Keep the key and the (non-secret) placeholders."""
        super().__init__(message)
        self.code = code
        self.placeholders = placeholders


class AmbiguousDeviceError(HandoffError):
    """Two or more new Tasmota devices appeared and no MAC tells which one is ours.

    The tracker is NOT ended: the UI asks the user to pick one of `candidates`,
    then calls `HandoffResult.from_device(choice, ...)` and `tracker.done()`.
    """

    def __init__(self, candidates: tuple[TasmotaDevice, ...]) -> None:
        """Keep the candidates (MAC, IP, name each)."""
        macs = ", ".join(device.mac for device in candidates)
        super().__init__(
            HandoffErrorCode.AMBIGUOUS_DEVICE, f"new Tasmota devices: {macs}", candidates=macs
        )
        self.candidates = candidates


@dataclass(frozen=True, slots=True)
class WifiSettings:
    """The home Wi-Fi the device joins (2.4 GHz)."""

    ssid: str
    password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class DeviceMqttSettings:
    """The broker as the DEVICE must reach it (host already translated to a LAN address)."""

    host: str
    port: int = 1883
    user: str = ""
    password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class EwelinkIdentity:
    """What we know of the device from its eWeLink life; every field optional."""

    deviceid: str | None = None
    model: str | None = None
    sta_mac: str | None = None
    """eWeLink cloud `staMac` (any spelling); Tasmota's MAC is expected to equal it."""
    name: str | None = None
    """The user's eWeLink name (becomes DeviceName / FriendlyName1)."""


@dataclass(frozen=True, slots=True)
class HandoffTimeouts:
    """Seconds; `ap_window` / `discovery` come from `Settings.timeouts` (tasmota_ap, discovery)."""

    ap_window: float = 180.0
    """How long the AP is probed (Tasmota's Wi-Fi manager lives ~3 min, spec §3.1)."""
    discovery: float = 300.0
    """After the configuration (or after the AP window on the phone path)."""
    probe: float = 3.0
    """One AP probe request."""
    probe_interval: float = 1.0
    phone_link_delay: float = 5.0
    """The phone link is shown once the AP has not answered for this long."""
    confirm: float = 20.0
    """A Backlog reply that confirms nothing: how long we watch the AP go away."""
    ambiguity_window: float = 3.0
    """MAC unknown: after the first new device, how long a second one makes it ambiguous."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffResult(TasmotaDevice):
    """The Tasmota device HA will get: its discovery, and how it got there."""

    model_known: bool
    """False: the eWeLink model was not in the table and Tasmota kept its default module."""
    configured_by: ConfiguredBy

    @classmethod
    def from_device(
        cls, device: TasmotaDevice, *, model_known: bool, configured_by: ConfiguredBy
    ) -> HandoffResult:
        """Build the result from a parsed discovery message."""
        discovered = {name.name: getattr(device, name.name) for name in fields(TasmotaDevice)}
        return cls(**discovered, model_known=model_known, configured_by=configured_by)
