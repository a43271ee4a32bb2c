"""The "Firmware" update entity of every known eWeLink device (eWeLink -> Tasmota lite).

Installing runs the DIY flash of the device (see `device_flashes`): the newest Tasmota
lite that fits, or the release named in `update.install`'s `version` (for example
"14.4.1"). There is no way back to eWeLink, and its release notes say so. Setup-mode
devices cannot be flashed from a button (someone must join the device's access point
from the HA host), so their entity offers no install and points to the flow instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeassistant.components.update import UpdateEntity, UpdateEntityFeature
from homeassistant.exceptions import HomeAssistantError

from .const import DOMAIN, PATH_DIY
from .device_entity import SonoffDeviceEntity
from .flash_stack import async_load_upgrade_stack
from .known_devices import DeviceRecord
from .proto.firmware_choice import FirmwareChoice

if TYPE_CHECKING:
    from .proto.tasmota_releases import TasmotaRelease

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


class FirmwareUpdate(SonoffDeviceEntity, UpdateEntity):
    """See the module docstring."""

    key = "firmware"
    _attr_should_poll = True  # only the newest-release lookup (SCAN_INTERVAL)
    _release: TasmotaRelease | None = None

    @property
    def supported_features(self) -> UpdateEntityFeature:
        """Install where the dashboard may flash (`dashboard_flashable`); the rest always."""
        features = UpdateEntityFeature.PROGRESS | UpdateEntityFeature.RELEASE_NOTES
        if self.record.dashboard_flashable:
            return features | UpdateEntityFeature.INSTALL | UpdateEntityFeature.SPECIFIC_VERSION
        return features

    @property
    def installed_version(self) -> str | None:
        """The eWeLink firmware the device runs."""
        return f"eWeLink {self.record.fw_version or '?'}"

    @property
    def latest_version(self) -> str | None:
        """The firmware an install writes: `Tasmota 14.4.1 (lite)` once the release is known."""
        if self._flashes.synthetic_image:
            return SYNTHETIC_LABEL
        if self._release is not None:
            return f"Tasmota {self._release.version} (lite)"
        return TASMOTA_LABEL

    @property
    def release_url(self) -> str | None:
        """The Tasmota release notes of that release (once known)."""
        return self._release.url if self._release is not None else None

    @property
    def release_summary(self) -> str | None:
        """No way back, or (setup mode) where to flash instead."""
        return _summary(self.record)

    async def async_release_notes(self) -> str | None:
        """What install does and that it cannot be undone (never left loading)."""
        return _summary(self.record)

    async def async_added_to_hass(self) -> None:
        """Follow the tracker and the record; look the release up once now."""
        await super().async_added_to_hass()
        self.async_schedule_update_ha_state(force_refresh=True)

    async def async_update(self) -> None:
        """The newest Tasmota release (cached, and None when offline)."""
        await async_load_upgrade_stack(self.hass)  # the release lookup, off the event loop
        from .tasmota_upgrade_run import async_latest_release  # noqa: PLC0415 - loaded

        self._release = await async_latest_release(self.hass)

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
        # The frontend's Update button sends `latest_version` ("Tasmota 14.4.1 (lite)").
        if version and version not in {TASMOTA_LABEL, SYNTHETIC_LABEL, self.latest_version}:
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
