"""NetworkManager's D-Bus wire format, as the network hop uses it.

The bus, object and interface names; the state, reason and flag numbers NM sends and takes
(nm-dbus-interface.h), with the deactivation reasons mapped to a `HopErrorCode`; and the
`a{sa{sv}}` connection profile a hop adds (spec §2.3: static address, no gateway
(`never-default`), no DNS (`ignore-auto-dns`)). Facts: shared/spec/host-wifi-hopping.md §2.
No I/O here. No Home Assistant imports.
"""

from __future__ import annotations

from typing import Final
import uuid

from dbus_fast import Variant

from .host_wifi_types import HopErrorCode, HopTarget

NM_BUS: Final = "org.freedesktop.NetworkManager"
NM_PATH: Final = "/org/freedesktop/NetworkManager"
NM_IFACE: Final = "org.freedesktop.NetworkManager"
DEVICE_IFACE: Final = "org.freedesktop.NetworkManager.Device"
WIRELESS_IFACE: Final = "org.freedesktop.NetworkManager.Device.Wireless"
ACTIVE_IFACE: Final = "org.freedesktop.NetworkManager.Connection.Active"
IP4_IFACE: Final = "org.freedesktop.NetworkManager.IP4Config"
AP_IFACE: Final = "org.freedesktop.NetworkManager.AccessPoint"
SETTINGS_CONN_IFACE: Final = "org.freedesktop.NetworkManager.Settings.Connection"
PROPS_IFACE: Final = "org.freedesktop.DBus.Properties"
DBUS_NAME: Final = "org.freedesktop.DBus"
DBUS_PATH: Final = "/org/freedesktop/DBus"
UNKNOWN_METHOD: Final = "org.freedesktop.DBus.Error.UnknownMethod"
NM_GONE_ERRORS: Final = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.Disconnected",
    }
)
"""D-Bus errors meaning NetworkManager itself left the bus (crash/restart)."""

DEVICE_TYPE_WIFI: Final = 2
DEVICE_STATE_ACTIVATED: Final = 100
ACTIVE_ACTIVATING: Final = 1
ACTIVE_ACTIVATED: Final = 2
ACTIVE_DEACTIVATED: Final = 4
CHECKPOINT_DELETE_NEW_CONNECTIONS: Final = 0x02
CHECKPOINT_DISCONNECT_NEW_DEVICES: Final = 0x04

# NMDeviceStateReason values (nm-dbus-interface.h, spec §2.2 step 5).
_DEVICE_REASON_CODES: Final[dict[int, HopErrorCode]] = {
    5: HopErrorCode.NO_ADDRESS,  # IP_CONFIG_UNAVAILABLE
    7: HopErrorCode.WRONG_PSK,  # NO_SECRETS
    8: HopErrorCode.WRONG_PSK,  # SUPPLICANT_DISCONNECT (4-way handshake failed)
    9: HopErrorCode.WRONG_PSK,  # SUPPLICANT_CONFIG_FAILED
    10: HopErrorCode.WRONG_PSK,  # SUPPLICANT_FAILED
    11: HopErrorCode.WRONG_PSK,  # SUPPLICANT_TIMEOUT
    17: HopErrorCode.NO_ADDRESS,  # DHCP_FAILED
    53: HopErrorCode.AP_MISSING,  # SSID_NOT_FOUND
    64: HopErrorCode.NO_ADDRESS,  # IP_ADDRESS_DUPLICATE (someone else has 192.168.4.2)
}
# NMActiveConnectionStateReason values.
_ACTIVE_REASON_CODES: Final[dict[int, HopErrorCode]] = {
    5: HopErrorCode.NO_ADDRESS,  # IP_CONFIG_INVALID
    6: HopErrorCode.ACTIVATION_TIMEOUT,  # CONNECT_TIMEOUT
    9: HopErrorCode.WRONG_PSK,  # NO_SECRETS
}


def failure_code(active_reason: int, device_reason: int) -> HopErrorCode:
    """Map NM's deactivation reasons to a hop error code (the device reason is more specific)."""
    if device_reason in _DEVICE_REASON_CODES:
        return _DEVICE_REASON_CODES[device_reason]
    return _ACTIVE_REASON_CODES.get(active_reason, HopErrorCode.ACTIVATION_FAILED)


def connection_settings(
    target: HopTarget, interface: str, *, conn_uuid: str | None = None
) -> dict[str, dict[str, Variant]]:
    """The `a{sa{sv}}` profile for `target` (spec §2.3): static address, no gateway, no DNS."""
    settings: dict[str, dict[str, Variant]] = {
        "connection": {
            "id": Variant("s", f"sonoff-ota {target.ssid}"),
            "uuid": Variant("s", conn_uuid or str(uuid.uuid4())),
            "type": Variant("s", "802-11-wireless"),
            "interface-name": Variant("s", interface),
            "autoconnect": Variant("b", target.reactivate_on_reappear),
        },
        "802-11-wireless": {
            "ssid": Variant("ay", target.ssid.encode()),
            "mode": Variant("s", "infrastructure"),
        },
        "ipv4": {
            "method": Variant("s", "manual"),
            "address-data": Variant(
                "aa{sv}",
                [
                    {
                        "address": Variant("s", str(target.address.ip)),
                        "prefix": Variant("u", target.address.network.prefixlen),
                    }
                ],
            ),
            "never-default": Variant("b", True),
            "ignore-auto-dns": Variant("b", True),
            "may-fail": Variant("b", False),
        },
        # "disabled" needs NM >= 1.20; "ignore" works everywhere and leaves IPv6 alone.
        "ipv6": {"method": Variant("s", "ignore")},
    }
    if target.psk is not None:
        settings["802-11-wireless-security"] = {
            "key-mgmt": Variant("s", "wpa-psk"),
            "psk": Variant("s", target.psk),
        }
    return settings
