"""The "Firmware" update entity: eWeLink installed, Tasmota offered.

Installing runs the DIY flash of the device (see `device_flashes`): the newest
Tasmota lite that fits, or the release named in `update.install`'s `version`
(for example "14.4.1"). There is
no way back to eWeLink, and the summary says so. Setup-mode devices cannot be
flashed from a button (someone must join the device's access point from the
HA host), so their entity offers no install and points to the flow instead.
"""

from __future__ import annotations

from typing import Any

from homeassistant.components.update import UpdateEntity, UpdateEntityFeature
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from . import SonoffOtaConfigEntry
from .const import DOMAIN, PATH_DIY
from .device_entity import SonoffDeviceEntity, async_add_device_entities
from .known_devices import DeviceRecord
from .proto.firmware_store import FirmwareChoice

PARALLEL_UPDATES = 0

TASMOTA_LABEL = "Tasmota (lite)"
SYNTHETIC_LABEL = "Tasmota (lite, synthetic test image)"
_NO_WAY_BACK = (
    "Installing replaces eWeLink with Tasmota for good: there is no way back to eWeLink. "
    "Keep the device powered until the install has finished."
)
_SETUP_MODE = (
    "Cannot be flashed from here: someone must join the device's ITEAD access point from "
    "this host. Use Settings > Devices & services > Add integration > Sonoff OTA. "
    "There is no way back to eWeLink."
)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: SonoffOtaConfigEntry,
    async_add_entities: AddEntitiesCallback,
) -> None:
    """Add a firmware entity for every known eWeLink device (and every new one)."""
    flashes = entry.runtime_data.flashes
    async_add_device_entities(
        hass, entry, async_add_entities, lambda record: [FirmwareUpdate(entry, flashes, record)]
    )


class FirmwareUpdate(SonoffDeviceEntity, UpdateEntity):
    """See the module docstring."""

    key = "firmware"

    @property
    def supported_features(self) -> UpdateEntityFeature:
        """Install only for DIY devices; progress always."""
        if self.record.path == PATH_DIY and self.record.host:
            return (
                UpdateEntityFeature.INSTALL
                | UpdateEntityFeature.PROGRESS
                | UpdateEntityFeature.SPECIFIC_VERSION
            )
        return UpdateEntityFeature.PROGRESS

    @property
    def installed_version(self) -> str | None:
        """The eWeLink firmware the device runs."""
        return f"eWeLink {self.record.fw_version or '?'}"

    @property
    def latest_version(self) -> str | None:
        """The firmware an install writes."""
        return SYNTHETIC_LABEL if self._flashes.synthetic_image else TASMOTA_LABEL

    @property
    def release_summary(self) -> str | None:
        """No way back, or (setup mode) where to flash instead."""
        return _summary(self.record)

    @property
    def in_progress(self) -> bool | None:
        """True while a flash of this device runs from the dashboard."""
        return self._flashes.running(self._deviceid) or self._attr_in_progress

    @property
    def update_percentage(self) -> int | None:
        """The tracker's overall percentage (100 once done)."""
        tracker = self.tracker
        return tracker.percentage if tracker is not None else None

    def version_is_newer(self, latest_version: str, installed_version: str) -> bool:
        """Any Tasmota replaces any eWeLink (the labels do not compare as versions)."""
        return latest_version != installed_version

    async def async_install(self, version: str | None, backup: bool, **kwargs: Any) -> None:
        """Flash Tasmota (raises `HomeAssistantError` with the translated reason)."""
        firmware = FirmwareChoice()
        # The frontend's Update button sends `latest_version` ("Tasmota (lite)").
        if version and version not in {TASMOTA_LABEL, SYNTHETIC_LABEL}:
            try:
                firmware = FirmwareChoice.for_version(version)
            except ValueError as err:
                raise HomeAssistantError(
                    translation_domain=DOMAIN,
                    translation_key="firmware_bad_version",
                    translation_placeholders={"version": version},
                ) from err
        self._attr_in_progress = True
        self.async_write_ha_state()
        await self._flashes.async_install(self._deviceid, firmware)


def _summary(record: DeviceRecord) -> str:
    if record.path == PATH_DIY and record.host:
        return _NO_WAY_BACK
    return _SETUP_MODE
