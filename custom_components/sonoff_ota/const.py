"""Constants shared by the Home Assistant side of sonoff_ota."""

from __future__ import annotations

import logging
from typing import Final

DOMAIN: Final = "sonoff_ota"
LOGGER: Final = logging.getLogger(__package__)

CONF_PATH: Final = "path"
CONF_SSID: Final = "ssid"
CONF_WIFI_PASSWORD: Final = "wifi_password"

PATH_SETUP_MODE: Final = "setup_mode"
PATH_DIY: Final = "diy"

TASMOTA_FIRMWARE_KEY: Final = "tasmota_firmware"
"""The "Tasmota firmware" entity's key: its unique id is `<MAC>_tasmota_firmware`."""
