"""The vocabulary every network hop shares: error codes, backends, targets, plans, outcomes.

A "hop" moves the host's own Wi-Fi onto a device's access point and back (facts:
shared/spec/host-wifi-hopping.md). `host_wifi_hop.WifiHop` and all its backends speak in
these types; the config flow uses `HopErrorCode` values as error keys. No Home Assistant
imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import enum
import ipaddress
from ipaddress import IPv4Interface, IPv4Network
from typing import Final

DEFAULT_JOIN_TIMEOUT: Final = 45.0


class HopErrorCode(enum.StrEnum):
    """Machine-friendly cause of a failed hop (usable as a config-flow error key)."""

    WRONG_PSK = "wrong_psk"
    AP_MISSING = "ap_missing"
    NO_ADDRESS = "no_address"
    ACTIVATION_TIMEOUT = "activation_timeout"
    ACTIVATION_FAILED = "activation_failed"
    """Deactivated for a reason none of the codes above covers."""
    BUS_LOST = "bus_lost"
    LAN_CLASH = "lan_clash"
    NEEDS_CONFIRMATION = "needs_confirmation"
    NEEDS_HOME_CREDENTIALS = "needs_home_credentials"
    """Supervisor backend only: the Wi-Fi carries the LAN and its PSK cannot be read back."""
    NO_WIFI_INTERFACE = "no_wifi_interface"
    SEVERAL_SETUP_APS = "several_setup_aps"
    """More than one `ITEAD-…` AP is in range: which device to flash is ambiguous."""
    SCAN_UNSUPPORTED = "scan_unsupported"
    """The backend cannot list access points (the manual hop)."""
    BACKEND_UNAVAILABLE = "backend_unavailable"


class HopError(Exception):
    """A hop failed or was refused; `code` says why."""

    def __init__(self, code: HopErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __repr__(self) -> str:
        return f"HopError({self.code.value!r}, {self.args[0]!r})"


class HopBackend(enum.StrEnum):
    """Which mechanism moves the Wi-Fi."""

    NETWORKMANAGER = "networkmanager"
    SUPERVISOR = "supervisor"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class HopTarget:
    """An access point to join, with a static address (no gateway, no DNS; spec §0.5).

    `psk=None` means an open network. `reactivate_on_reappear` keeps the host joined across
    the AP disappearing and coming back (FinalStage reboots between images).
    """

    ssid: str
    address: IPv4Interface
    psk: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_JOIN_TIMEOUT
    reactivate_on_reappear: bool = False

    @property
    def is_open(self) -> bool:
        """True for an open (unencrypted) AP."""
        return self.psk is None


@dataclass(frozen=True, slots=True)
class HopPlan:
    """What a hop will do, known after `prepare()` and before anything changes."""

    backend: HopBackend
    interface: str | None
    """The Wi-Fi interface to move (None for a manual hop where it is unknown)."""
    carries_lan: bool
    """The interface carries HA's own LAN / default route: the UI is gone during the hop."""
    lan_networks: tuple[IPv4Network, ...]
    """IPv4 networks the host is on before the hop."""
    confirmed: bool = False
    """The user explicitly accepted losing the LAN for the duration of the hop."""


@dataclass(frozen=True, slots=True)
class JoinedNetwork:
    """The host is on `ssid` via `interface` with `address`."""

    interface: str
    address: IPv4Interface
    ssid: str


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """The hop's link went up or down (e.g. FinalStage rebooting); address set when up."""

    ssid: str
    up: bool
    address: IPv4Interface | None = None


LinkCallback = Callable[[LinkEvent], None]


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """Outcome of `restore()`; `restore()` reports instead of raising (it runs in `finally`)."""

    restored: bool
    method: str
    """How: "nothing" (no change was made), "checkpoint_rollback", "manual", "supervisor"."""
    detail: str = ""


def parse_cidr(value: str) -> IPv4Interface | None:
    """`"10.10.7.2/24"` -> IPv4Interface, None for anything else (IPv6, garbage).

    How the backends read the addresses NetworkManager and the Supervisor report.
    """
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        return None
    return iface if isinstance(iface, IPv4Interface) else None
