"""Diagnostics of the entry and of each device.

What helps to understand a flash: the known devices (firmware, model, path,
state), the stages and errors of recent flashes (tracker history), image
hashes, the last lite → full upgrade of each Tasmota device (stage, history, error
code), and the non-secret settings. Redacted: the SSID, passwords, apikeys,
MQTT credentials and tokens, by key (`async_redact_data`) and then by value,
so that a secret quoted inside some text does not slip through either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from homeassistant.components.diagnostics import REDACTED, async_redact_data
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from yarl import URL

from . import SonoffOtaConfigEntry
from .const import CONF_SSID, CONF_WIFI_PASSWORD, DOMAIN
from .flash_stack import async_load_upgrade_stack
from .known_devices import get_device, get_devices
from .proto.flash_stages import FlashTracker
from .settings import get_settings

if TYPE_CHECKING:
    from .proto.tasmota_upgrade_stages import UpgradeTracker

TO_REDACT: Final = frozenset(
    {
        CONF_SSID,
        CONF_WIFI_PASSWORD,
        "password",
        "passwd",
        "apikey",
        "api_key",
        "token",
        "access_token",
        "refresh_token",
        "username",
        "user",
        "mqtt_user",
        "mqtt_username",
        "mqtt_password",
        "bssid",
    }
)
_MQTT_DOMAIN: Final = "mqtt"


async def async_get_config_entry_diagnostics(
    hass: HomeAssistant, entry: SonoffOtaConfigEntry
) -> dict[str, Any]:
    """Everything the integration knows, secrets removed."""
    flashes = entry.runtime_data.flashes
    upgrades = await _async_upgrade_trackers(hass)
    result = {
        "entry": dict(entry.data),
        "devices": {deviceid: record.as_data() for deviceid, record in get_devices(entry).items()},
        "flashes": {deviceid: _tracker(tracker) for deviceid, tracker in flashes.trackers.items()},
        "last_image_synthetic": flashes.synthetic_image,
        "tasmota_upgrades": {mac: _upgrade(tracker) for mac, tracker in upgrades.items()},
        "settings": _settings(hass),
        "mqtt_configured": bool(hass.config_entries.async_entries(_MQTT_DOMAIN)),
    }
    return _redact(result, _secrets(hass, entry))


async def async_get_device_diagnostics(
    hass: HomeAssistant, entry: SonoffOtaConfigEntry, device: dr.DeviceEntry
) -> dict[str, Any]:
    """One device's record and its latest flash, secrets removed."""
    deviceid = next((ident for domain, ident in device.identifiers if domain == DOMAIN), None)
    record = get_device(entry, deviceid) if deviceid else None
    tracker = entry.runtime_data.flashes.tracker(deviceid) if deviceid else None
    macs = {
        value.replace(":", "").upper()
        for kind, value in device.connections
        if kind == dr.CONNECTION_NETWORK_MAC
    }
    if record is not None and record.mac:
        macs.add(record.mac.replace(":", "").upper())
    upgrades = await _async_upgrade_trackers(hass)
    upgrade = next((t for mac, t in upgrades.items() if mac in macs), None)
    result = {
        "deviceid": deviceid,
        "record": record.as_data() if record else None,
        "flash": _tracker(tracker) if tracker else None,
        "tasmota_upgrade": _upgrade(upgrade) if upgrade else None,
        "last_image_synthetic": entry.runtime_data.flashes.synthetic_image,
    }
    return _redact(result, _secrets(hass, entry))


async def _async_upgrade_trackers(hass: HomeAssistant) -> dict[str, UpgradeTracker]:
    """The last Tasmota upgrade of each device (the upgrade stack loaded off the loop)."""
    await async_load_upgrade_stack(hass)
    from .tasmota_upgrade_run import upgrade_trackers  # noqa: PLC0415 - loaded

    return upgrade_trackers(hass)


def _tracker(tracker: FlashTracker) -> dict[str, Any]:
    return {
        "path": str(tracker.path),
        "stage": str(tracker.stage),
        "percentage": tracker.percentage,
        "error": (
            {"code": tracker.error.code, "placeholders": dict(tracker.error.placeholders)}
            if tracker.error
            else None
        ),
        "details": dict(tracker.details),
        "image_sha256": {
            key: value for key, value in tracker.details.items() if key.endswith("sha256")
        },
        "history": [
            {
                "at": datetime.fromtimestamp(entry.at, UTC).isoformat(),
                "stage": str(entry.stage),
                "note": entry.note,
            }
            for entry in tracker.history
        ],
    }


def _upgrade(tracker: UpgradeTracker) -> dict[str, Any]:
    """Stage, progress, history and error code; URLs without any user:password part."""
    error = tracker.error
    return {
        "stage": str(tracker.stage),
        "percentage": tracker.percentage,
        "error": (
            {
                "code": str(error.code),
                "placeholders": {k: _no_userinfo(v) for k, v in error.placeholders.items()},
            }
            if error is not None
            else None
        ),
        "details": {k: _no_userinfo(v) for k, v in tracker.details.items()},
        "history": [
            {
                "at": datetime.fromtimestamp(entry.at, UTC).isoformat(),
                "stage": str(entry.stage),
                "note": entry.note,
            }
            for entry in tracker.history
        ],
    }


def _no_userinfo(value: str) -> str:
    """A URL's `user:password@` (a custom OtaUrl may carry one) replaced by REDACTED."""
    if "://" not in value or "@" not in value:
        return value
    try:
        url = URL(value)
    except ValueError:
        return REDACTED
    if url.user is None and url.password is None:
        return value
    return str(url.with_user(None)).replace("://", f"://{REDACTED}@", 1)


def _settings(hass: HomeAssistant) -> dict[str, Any]:
    settings = get_settings(hass)
    return {
        "setup_ap_url": settings.setup_ap_url,
        "tasmota_ap_url": settings.tasmota_ap_url,
        "finalstage": f"{settings.finalstage_bind}:{settings.finalstage_port}",
        "tls": f"{settings.tls_bind}:{settings.tls_port}",
        "callback_host": settings.callback_host,
        "device_broker_host": settings.device_broker_host,
        "serve_from_ha": settings.serve_from_ha,
        "pacing_scale": settings.pacing_scale,
        # URLs may carry credentials: only which ones are overridden, and the pinned hashes.
        "firmware_overrides": sorted(settings.firmware),
        "firmware_pins": {
            key: value for key, value in settings.firmware.items() if key.endswith("sha256")
        },
        "timeouts": settings.timeouts._asdict(),
    }


def _secrets(hass: HomeAssistant, entry: ConfigEntry) -> set[str]:
    """Values that must not appear anywhere: our Wi-Fi, and MQTT credentials."""
    values: set[Any] = {entry.data.get(CONF_SSID), entry.data.get(CONF_WIFI_PASSWORD)}
    for mqtt in hass.config_entries.async_entries(_MQTT_DOMAIN):
        values |= {mqtt.data.get("username"), mqtt.data.get("password")}
    # Very short values would blank out unrelated text; they carry little secret anyway.
    return {value for value in values if isinstance(value, str) and len(value) >= 3}


def _redact(data: dict[str, Any], secrets: Iterable[str]) -> dict[str, Any]:
    redacted: dict[str, Any] = async_redact_data(data, TO_REDACT)
    scrubbed = _scrub(redacted, sorted(secrets, key=len, reverse=True))
    assert isinstance(scrubbed, dict)
    return scrubbed


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, Mapping):
        return {_scrub(key, secrets): _scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(item, secrets) for item in value]
    return value
