"""The access points a network hop joins, and the address the host takes on each.

Setup mode needs the host on `ITEAD-<deviceid>` (WPA2, PSK `12345678`, device 10.10.7.1, we
take 10.10.7.2) and later on the open `FinalStage` AP as exactly 192.168.4.2, staying joined
while the intermediate image reboots; the Tasmota hand-off joins Tasmota's first-boot AP.
Facts: shared/spec/host-wifi-hopping.md, setup-mode-ota.md §5 and §7. No Home Assistant
imports.
"""

from __future__ import annotations

from ipaddress import IPv4Interface
import re
from typing import Final

from .host_wifi_types import DEFAULT_JOIN_TIMEOUT, HopTarget

ITEAD_SSID_PREFIX: Final = "ITEAD-"
ITEAD_SSID_RE: Final = re.compile(r"^ITEAD-1000[0-9A-Fa-f]{2,8}$")
"""`ITEAD-10000xxxxx`: a (suffix of the) deviceid, which starts with 1000 (setup-mode-ota.md §5).
The deviceid is unknown before the host is on this AP, so the hop finds the SSID by a scan."""
ITEAD_PSK: Final = "12345678"
"""The setup AP's fixed WPA2 PSK (setup-mode-ota.md, host-wifi-hopping.md scope)."""
ITEAD_ADDRESS: Final = IPv4Interface("10.10.7.2/24")
FINALSTAGE_SSID: Final = "FinalStage"
FINALSTAGE_ADDRESS: Final = IPv4Interface("192.168.4.2/24")
"""FinalStage fetches from 192.168.4.2:8080, compiled into the image (setup-mode-ota.md §7)."""
TASMOTA_AP_ADDRESS: Final = IPv4Interface("192.168.4.2/24")
"""Tasmota's Wi-Fi manager AP is 192.168.4.1 and takes one client (diy §3.1, §6 item 10):
a static .2 cannot clash with another client. [design, unverified on a device]"""
HOP_NETWORKS: Final = (ITEAD_ADDRESS.network, FINALSTAGE_ADDRESS.network)
"""If the home LAN uses one of these, traffic to the ESP would leave via eth0 (spec §1.4)."""


def itead_target(
    deviceid: str,
    *,
    address: IPv4Interface = ITEAD_ADDRESS,
    timeout: float = DEFAULT_JOIN_TIMEOUT,
) -> HopTarget:
    """The setup AP `ITEAD-<deviceid>` (WPA2, PSK 12345678), host at 10.10.7.2/24."""
    return HopTarget(
        ssid=f"{ITEAD_SSID_PREFIX}{deviceid}", address=address, psk=ITEAD_PSK, timeout=timeout
    )


def setup_ap_target(
    ssid: str,
    *,
    address: IPv4Interface = ITEAD_ADDRESS,
    timeout: float = DEFAULT_JOIN_TIMEOUT,
) -> HopTarget:
    """The setup AP by the SSID a scan found (`ITEAD-…`, WPA2, PSK 12345678), host 10.10.7.2/24."""
    return HopTarget(ssid=ssid, address=address, psk=ITEAD_PSK, timeout=timeout)


def finalstage_target(
    *,
    address: IPv4Interface = FINALSTAGE_ADDRESS,
    timeout: float = DEFAULT_JOIN_TIMEOUT,
) -> HopTarget:
    """The open `FinalStage` AP, host at exactly 192.168.4.2/24, re-joined when it reappears."""
    return HopTarget(
        ssid=FINALSTAGE_SSID, address=address, timeout=timeout, reactivate_on_reappear=True
    )


def tasmota_ap_target(
    ssid: str,
    *,
    address: IPv4Interface = TASMOTA_AP_ADDRESS,
    timeout: float = DEFAULT_JOIN_TIMEOUT,
) -> HopTarget:
    """Tasmota's first-boot AP (`tasmota_XXXXXX-NNNN`, open), host at 192.168.4.2/24."""
    return HopTarget(ssid=ssid, address=address, timeout=timeout)
