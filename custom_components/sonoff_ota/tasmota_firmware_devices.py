"""Which of HA's Tasmota devices get a "Tasmota firmware" entity, added as they come.

Those this integration flashed and, with the entry's opt-in, every other device of
HA's tasmota integration. The entity itself (`tasmota_firmware_update`) and the
upgrade code under it are imported, in HA's executor, only once a device is eligible
(`flash_stack.async_load_upgrade_stack`): an HA without Tasmota devices to upgrade
never loads them.
"""

from __future__ import annotations

from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.helpers import device_registry as dr, entity_registry as er
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from .const import DOMAIN, TASMOTA_FIRMWARE_KEY
from .flash_stack import async_load_upgrade_stack
from .known_devices import get_devices, signal_devices_updated
from .options_flow import OPT_ALL_TASMOTA, options_with_defaults
from .proto.mac_address import InvalidMacError, ha_mac, tasmota_mac
from .tasmota_link import TASMOTA_DOMAIN


def eligible_tasmota_macs(hass: HomeAssistant, entry: ConfigEntry) -> set[str]:
    """MACs (12 uppercase hex) of the HA Tasmota devices that get a "Tasmota firmware".

    Those we flashed (their record carries the MAC) and, with the opt-in, all others.
    Only devices HA's tasmota integration has registered count.
    """
    registry = dr.async_get(hass)
    in_ha: set[str] = set()
    for tasmota_entry in hass.config_entries.async_entries(TASMOTA_DOMAIN):
        for device in dr.async_entries_for_config_entry(registry, tasmota_entry.entry_id):
            for kind, value in device.connections:
                if kind == dr.CONNECTION_NETWORK_MAC:
                    try:
                        in_ha.add(tasmota_mac(value))
                    except InvalidMacError:
                        continue
    if options_with_defaults(entry.options)[OPT_ALL_TASMOTA]:
        return in_ha
    flashed: set[str] = set()
    for record in get_devices(entry).values():
        if record.flashed and record.mac:
            try:
                flashed.add(tasmota_mac(record.mac))
            except InvalidMacError:
                continue
    return flashed & in_ha


def _tasmota_name(hass: HomeAssistant, mac: str) -> str | None:
    """The name of HA's Tasmota device with `mac`."""
    registry = dr.async_get(hass)
    connection = (dr.CONNECTION_NETWORK_MAC, ha_mac(mac))
    for tasmota_entry in hass.config_entries.async_entries(TASMOTA_DOMAIN):
        for device in dr.async_entries_for_config_entry(registry, tasmota_entry.entry_id):
            if connection in device.connections:
                return device.name_by_user or device.name
    return None


async def async_add_tasmota_entities(
    hass: HomeAssistant, entry: ConfigEntry, async_add_entities: AddEntitiesCallback
) -> None:
    """Add a "Tasmota firmware" entity for each eligible device, now and as they come."""
    added: set[str] = set()
    eligible = eligible_tasmota_macs(hass, entry)
    # Entities of devices that are no longer eligible (opt-in withdrawn) go.
    registry = er.async_get(hass)
    suffix = f"_{TASMOTA_FIRMWARE_KEY}"
    for entity in er.async_entries_for_config_entry(registry, entry.entry_id):
        if entity.unique_id.endswith(suffix) and entity.unique_id[: -len(suffix)] not in eligible:
            registry.async_remove(entity.entity_id)

    async def _async_add(macs: list[str]) -> None:
        await async_load_upgrade_stack(hass)
        from .tasmota_firmware_update import TasmotaFirmwareUpdate  # noqa: PLC0415 - loaded

        async_add_entities(
            [TasmotaFirmwareUpdate(entry, mac, _tasmota_name(hass, mac)) for mac in macs],
            update_before_add=True,
        )

    def _new() -> list[str]:
        new = sorted(eligible_tasmota_macs(hass, entry) - added)
        added.update(new)
        return new

    @callback
    def _add_new(*_: Any) -> None:
        if new := _new():
            entry.async_create_task(hass, _async_add(new), f"{DOMAIN} add Tasmota firmware")

    if new := _new():  # those known at set-up are there when the platform is
        await _async_add(new)
    entry.async_on_unload(
        async_dispatcher_connect(hass, signal_devices_updated(entry.entry_id), _add_new)
    )

    @callback
    def _on_device(event: Event[Any]) -> None:
        if event.data.get("action") in {"create", "update"}:
            _add_new()

    entry.async_on_unload(hass.bus.async_listen(dr.EVENT_DEVICE_REGISTRY_UPDATED, _on_device))
