"""The HA device of each known eWeLink device, and the base of its entities.

`async_sync_ha_devices` keeps one HA device per known device that still runs
eWeLink (and lets go of the ones that run Tasmota now, see `known_devices`).
`async_add_device_entities` adds a platform's entities for every such device,
now and whenever the entry learns a new one (dispatcher signal, no reload).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.device_registry import DeviceInfo
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity import Entity
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from .const import DOMAIN
from .known_devices import (
    DeviceRecord,
    async_release_ha_device,
    get_device,
    get_devices,
    signal_devices_updated,
)
from .proto.flash_stages import FlashTracker

if TYPE_CHECKING:
    from .device_flashes import DeviceFlashes

MANUFACTURER = "ITEAD"


def device_info(record: DeviceRecord) -> DeviceInfo:
    """The HA device of `record` (MAC as a connection when known)."""
    info = DeviceInfo(
        identifiers={(DOMAIN, record.deviceid)},
        name=f"Sonoff {record.deviceid}",
        manufacturer=MANUFACTURER,
        model=record.model or record.device_type,
        sw_version=record.fw_version,
    )
    if record.mac:
        info["connections"] = {(dr.CONNECTION_NETWORK_MAC, dr.format_mac(record.mac))}
    return info


@callback
def async_sync_ha_devices(hass: HomeAssistant, entry: ConfigEntry) -> None:
    """Create or refresh the HA device of every eWeLink device; release flashed ones."""
    registry = dr.async_get(hass)
    for record in get_devices(entry).values():
        if record.flashed:
            async_release_ha_device(hass, entry, record.deviceid)
        else:
            registry.async_get_or_create(config_entry_id=entry.entry_id, **device_info(record))


@callback
def async_add_device_entities(
    hass: HomeAssistant,
    entry: ConfigEntry,
    async_add_entities: AddEntitiesCallback,
    factory: Callable[[DeviceRecord], Iterable[Entity]],
) -> None:
    """Add `factory`'s entities for every eWeLink device, now and when one is learnt."""
    added: set[str] = set()

    @callback
    def _add_new() -> None:
        new = [
            record
            for record in get_devices(entry).values()
            if not record.flashed and record.deviceid not in added
        ]
        added.update(record.deviceid for record in new)
        entities = [entity for record in new for entity in factory(record)]
        if entities:
            async_add_entities(entities)

    _add_new()
    entry.async_on_unload(
        async_dispatcher_connect(hass, signal_devices_updated(entry.entry_id), _add_new)
    )


class SonoffDeviceEntity(Entity):
    """An entity of one known eWeLink device, fed by its flash tracker."""

    _attr_has_entity_name = True
    _attr_should_poll = False

    def __init__(self, entry: ConfigEntry, flashes: DeviceFlashes, record: DeviceRecord) -> None:
        """Belong to `record`'s device."""
        self._entry = entry
        self._flashes = flashes
        self._deviceid = record.deviceid
        self._record = record
        self._attr_device_info = device_info(record)
        self._attr_unique_id = f"{record.deviceid}_{self.key}"
        self._attr_translation_key = self.key

    key = "entity"
    """Names the entity in unique ids and translations (set by subclasses)."""

    @property
    def record(self) -> DeviceRecord:
        """The device's record as the entry holds it now."""
        return get_device(self._entry, self._deviceid) or self._record

    @property
    def tracker(self) -> FlashTracker | None:
        """The latest dashboard flash of this device, if any."""
        return self._flashes.tracker(self._deviceid)

    async def async_added_to_hass(self) -> None:
        """Follow the tracker and the record."""
        self.async_on_remove(self._flashes.subscribe(self._deviceid, self._on_tracker))
        self.async_on_remove(
            async_dispatcher_connect(
                self.hass, signal_devices_updated(self._entry.entry_id), self._on_record
            )
        )

    @callback
    def _on_tracker(self, tracker: FlashTracker) -> None:
        self.async_write_ha_state()

    @callback
    def _on_record(self) -> None:
        record = self.record
        if record != self._record and not record.flashed:
            self._record = record
            self.async_write_ha_state()
