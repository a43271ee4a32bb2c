"""Validation of the home Wi-Fi settings the device is given.

Plain Python, no Home Assistant imports: the config flow maps the error keys
to translated messages.
"""

from __future__ import annotations

from typing import NamedTuple

SSID_MAX_BYTES = 32
WPA_PASSWORD_MIN = 8
WPA_PASSWORD_MAX = 63


class WifiSettings(NamedTuple):
    """The home network the Sonoff (and later Tasmota) should join."""

    ssid: str
    password: str

    def __repr__(self) -> str:  # never leak the password into logs
        return f"WifiSettings(ssid={self.ssid!r}, password=***)"


def validate_wifi(ssid: str, password: str) -> dict[str, str]:
    """Return field -> error key for invalid input, empty when valid."""
    errors: dict[str, str] = {}
    ssid_bytes = ssid.encode("utf-8")
    if not 1 <= len(ssid_bytes) <= SSID_MAX_BYTES:
        errors["ssid"] = "invalid_ssid"
    if (password and not WPA_PASSWORD_MIN <= len(password) <= WPA_PASSWORD_MAX) or (
        password and not password.isascii()
    ):
        errors["wifi_password"] = "invalid_wifi_password"
    return errors
