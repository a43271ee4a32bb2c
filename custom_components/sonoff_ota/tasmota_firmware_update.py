"""The "Tasmota firmware" update entity (Tasmota lite -> a full build, over Tasmota's OTA).

It is on every Tasmota device this integration flashed (and, when the entry's options
say so, on every other device of HA's tasmota integration). It shows the running build
from `Status 2` (`14.4.1 (lite)`) and the newest release of the build the options
choose; Install runs `tasmota_upgrade_run.async_run_upgrade` (Tasmota's own OTA over
MQTT) with its stage and percentage. HA's tasmota integration shows releases but cannot
install: this entity is the install. Which devices get one, and when, is
`tasmota_firmware_devices`; this module is imported with the upgrade stack.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from homeassistant.components.update import UpdateEntity, UpdateEntityFeature
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.device_registry import DeviceInfo

from .const import DOMAIN, TASMOTA_FIRMWARE_KEY
from .known_devices import DEVICES_PER_ENTRY
from .proto.mac_address import ha_mac
from .proto.tasmota_discovery import TasmotaDevice, TasmotaDiscoveryError, parse_discovery
from .proto.tasmota_releases import RELEASES_PAGE, TasmotaRelease
from .proto.tasmota_upgrade import TasmotaBuild, UpgradeTarget
from .proto.tasmota_upgrade_stages import UpgradeError, UpgradeErrorCode, UpgradeTracker
from .tasmota_upgrade_run import (
    UpgradeBusyError,
    UpgradeSettlingError,
    async_latest_release,
    async_run_upgrade,
    chosen_build,
    device_upgrades,
)

if TYPE_CHECKING:
    from homeassistant.components.mqtt import ReceiveMessage

_LOGGER = logging.getLogger(__name__)

_TASMOTA_NOTES = (
    "Installs the {label} build of Tasmota{version} with Tasmota's own over-the-air "
    "update (plain HTTP from {host}). The device restarts, on 1 MB devices twice "
    "(through tasmota-minimal); keep it powered. Its settings are kept. "
    "Release notes: {url}"
)


class TasmotaFirmwareUpdate(UpdateEntity):
    """Lite → full (or another build) with Tasmota's own OTA; see the module docstring."""

    key = TASMOTA_FIRMWARE_KEY
    _attr_has_entity_name = True
    _attr_translation_key = "tasmota_firmware"
    _attr_should_poll = True  # only the newest-release lookup (SCAN_INTERVAL)
    _attr_supported_features = (
        UpdateEntityFeature.INSTALL
        | UpdateEntityFeature.PROGRESS
        | UpdateEntityFeature.RELEASE_NOTES
    )

    def __init__(self, entry: ConfigEntry, mac: str, name: str | None = None) -> None:
        """Belong to HA's Tasmota device of `mac` (12 uppercase hex), named `name`."""
        self._entry = entry
        self.mac = mac
        self._attr_unique_id = f"{mac}_{self.key}"
        # HA 2025.x: joins HA's Tasmota device (same MAC); a name would overwrite its name.
        # From 2026.x devices belong to one config entry: this makes a device of ours with
        # the same MAC connection, named like the Tasmota one.
        info = DeviceInfo(connections={(dr.CONNECTION_NETWORK_MAC, ha_mac(mac))})
        if DEVICES_PER_ENTRY:
            info["name"] = name or f"Tasmota {mac[6:]}"
            info["manufacturer"] = "Tasmota"
        self._attr_device_info = info
        self.target: UpgradeTarget | None = None
        self.running: TasmotaBuild | None = None
        self.tracker: UpgradeTracker | None = None
        self._release: TasmotaRelease | None = None
        self._device_unsubscribes: list[CALLBACK_TYPE] = []

    # -- state -----------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Until its discovery is known nothing can be sent to the device."""
        return self.target is not None

    @property
    def installed_version(self) -> str | None:
        """`14.4.1 (lite)` from Status 2 (the number from discovery until then)."""
        if self.running is not None:
            return self.running.label
        return self.target.sw if self.target is not None and self.target.sw else None

    @property
    def latest_version(self) -> str | None:
        """`<newest release> (<chosen build>)`."""
        build = chosen_build(self.hass, self._entry)
        number = self._release.version if self._release is not None else None
        if number is None and self.running is not None:
            number = self.running.number
        return f"{number} ({build.label})" if number else None

    @property
    def release_url(self) -> str | None:
        """The release notes on GitHub."""
        return self._release.url if self._release is not None else RELEASES_PAGE

    @property
    def release_summary(self) -> str | None:
        """One sentence on what install does."""
        build = chosen_build(self.hass, self._entry)
        return (
            f"Installs the {build.label} build with Tasmota's own over-the-air update. "
            "Keep the device powered while it restarts."
        )

    async def async_release_notes(self) -> str | None:
        """What install does, where from, and the release notes link."""
        build = chosen_build(self.hass, self._entry)
        host = build.ota_url.split("/")[2] if "//" in build.ota_url else build.ota_url
        return _TASMOTA_NOTES.format(
            label=build.label,
            version=f" {self._release.version}" if self._release else "",
            host=host,
            url=self.release_url,
        )

    @property
    def in_progress(self) -> bool | None:
        """True while an upgrade runs."""
        return self.tracker is not None and not self.tracker.finished

    @property
    def update_percentage(self) -> int | None:
        """The upgrade's percentage while it runs."""
        if self.tracker is None or self.tracker.finished:
            return None
        return self.tracker.percentage

    @property
    def extra_state_attributes(self) -> dict[str, Any] | None:
        """The stage of the running (or last) upgrade and its error key."""
        if self.tracker is None:
            return None
        error = self.tracker.error
        return {
            "upgrade_stage": str(self.tracker.stage),
            "upgrade_error": f"upgrade_{error.code}" if error is not None else None,
        }

    def version_is_newer(self, latest_version: str, installed_version: str) -> bool:
        """Lite (or minimal) always wants the chosen build; else number, then build."""
        latest = TasmotaBuild.parse(latest_version)
        installed = TasmotaBuild.parse(installed_version)
        if latest is None or installed is None:
            return latest_version != installed_version
        if installed.build in {"lite", "minimal"}:
            return True
        if _numbers(latest.number) != _numbers(installed.number):
            return _numbers(latest.number) > _numbers(installed.number)
        wanted = chosen_build(self.hass, self._entry).build
        return wanted is not None and wanted != installed.build

    # -- following the device --------------------------------------------------------------

    async def async_added_to_hass(self) -> None:
        """Follow the device's retained discovery (topic, sw), its LWT and Status 2."""
        from homeassistant.components import mqtt  # noqa: PLC0415

        self.async_on_remove(
            await mqtt.async_subscribe(
                self.hass, f"tasmota/discovery/{self.mac}/config", self._on_discovery
            )
        )
        self.async_on_remove(self._drop_device_subscriptions)

    async def async_update(self) -> None:
        """The newest Tasmota release (cached)."""
        self._release = await async_latest_release(self.hass)

    @callback
    def _drop_device_subscriptions(self) -> None:
        for unsubscribe in self._device_unsubscribes:
            unsubscribe()
        self._device_unsubscribes.clear()

    @callback
    def _on_discovery(self, message: ReceiveMessage) -> None:
        payload = message.payload
        try:
            parsed = parse_discovery(
                message.topic, bytes(payload) if isinstance(payload, bytearray) else payload
            )
        except TasmotaDiscoveryError:
            return
        if not isinstance(parsed, TasmotaDevice) or parsed.mac != self.mac:
            return
        target = UpgradeTarget.from_discovery(parsed)
        changed = self.target is None or target.topic_for("stat", "") != self.target.topic_for(
            "stat", ""
        )
        self.target = target
        if changed:
            self.hass.async_create_task(self._async_follow(target), eager_start=False)
        self.async_write_ha_state()

    async def _async_follow(self, target: UpgradeTarget) -> None:
        from homeassistant.components import mqtt  # noqa: PLC0415

        self._drop_device_subscriptions()
        self._device_unsubscribes.append(
            await mqtt.async_subscribe(
                self.hass, target.topic_for("stat", "STATUS2"), self._on_status
            )
        )
        self._device_unsubscribes.append(
            await mqtt.async_subscribe(self.hass, target.topic_for("tele", "LWT"), self._on_lwt)
        )
        await self._async_ask_status()

    async def _async_ask_status(self) -> None:
        from homeassistant.components import mqtt  # noqa: PLC0415

        if self.target is not None:
            await mqtt.async_publish(self.hass, self.target.topic_for("cmnd", "Status"), "2")

    @callback
    def _on_lwt(self, message: ReceiveMessage) -> None:
        payload = message.payload
        text = payload.decode(errors="replace") if isinstance(payload, bytes) else str(payload)
        if text.strip() == "Online":
            self.hass.async_create_task(self._async_ask_status(), eager_start=False)

    @callback
    def _on_status(self, message: ReceiveMessage) -> None:
        import json  # noqa: PLC0415

        try:
            body = json.loads(message.payload)
        except (TypeError, ValueError):
            return
        fwr = body.get("StatusFWR") if isinstance(body, dict) else None
        version = fwr.get("Version") if isinstance(fwr, dict) else None
        build = TasmotaBuild.parse(version) if isinstance(version, str) else None
        if build is not None and build != self.running:
            self.running = build
            self.async_write_ha_state()

    # -- install ---------------------------------------------------------------------------

    async def async_install(self, version: str | None, backup: bool, **kwargs: Any) -> None:
        """Run the upgrade (raises `HomeAssistantError` with the translated reason)."""
        upgrades = device_upgrades(self.hass, self.mac)
        if self.in_progress or upgrades.running:
            raise _upgrade_error("upgrade_busy", device=self._device_label)
        if upgrades.settling:  # a timed-out download may still be running: never a second
            raise _upgrade_error(
                "upgrade_settling", device=self._device_label, minutes=str(upgrades.minutes_left)
            )
        target = self.target
        if target is None:
            raise _upgrade_error("upgrade_no_discovery", device=self._device_label)
        build = chosen_build(self.hass, self._entry)
        tracker = UpgradeTracker(device_label=self.mac)
        previous, self.tracker = self.tracker, tracker
        remove = tracker.add_listener(lambda _t: self.async_write_ha_state())
        self.async_write_ha_state()
        try:
            result = await async_run_upgrade(
                self.hass, target, build, before=self.running, tracker=tracker
            )
        except UpgradeBusyError as err:  # started elsewhere meanwhile (the flow's last step)
            self.tracker = previous
            raise _upgrade_error("upgrade_busy", device=self._device_label) from err
        except UpgradeSettlingError as err:
            self.tracker = previous
            raise _upgrade_error(
                "upgrade_settling", device=self._device_label, minutes=str(err.minutes)
            ) from err
        except UpgradeError as err:
            tracker.fail(err)  # no-op when the run already ended with it
            raise _upgrade_error(
                f"upgrade_{err.code}", device=self._device_label, **err.placeholders
            ) from err
        except BaseException as err:  # MQTT gone, or cancelled: never "in progress" forever
            tracker.fail(UpgradeError(UpgradeErrorCode.NO_ANSWER, str(err), command="MQTT"))
            raise
        finally:
            remove()
            self.async_write_ha_state()
        self.running = result.after
        _LOGGER.info("Tasmota %s now runs %s", self.mac, result.after.label)
        self.async_write_ha_state()

    @property
    def _device_label(self) -> str:
        if self.device_entry is not None:
            return self.device_entry.name_by_user or self.device_entry.name or self.mac
        return self.mac


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _upgrade_error(key: str, **placeholders: str) -> HomeAssistantError:
    return HomeAssistantError(
        translation_domain=DOMAIN, translation_key=key, translation_placeholders=placeholders
    )
