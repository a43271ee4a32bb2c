"""The devices the integration has met, kept in the config entry.

`entry.data["devices"]` maps deviceid → a plain dict (JSON in HA's storage):
{"host", "port", "device_type", "fw_version", "model", "path", "state", "mac"}.
`DeviceRecord` is its typed form. Writers announce a change with a dispatcher
signal so the entity platforms add entities for new devices without a reload.

When a device has taken Tasmota, its record stays (state "tasmota", so that
it is not offered again) but the integration lets go of its HA device: the
Tasmota integration owns that hardware from now on, and a stale eWeLink
device with a dead "Firmware" entity would only confuse. Our config entry
leaves the device, which removes our entities on it and, when no other entry
holds it, the device itself. When the MAC is known the HA device carries it
as a connection: HA 2025.x merges the Tasmota integration's device (same MAC)
into ours, so the user's name and area carry over and only our part goes;
from HA 2026.x devices are per config entry and ours is simply removed.
"""

from __future__ import annotations

from collections.abc import Mapping
import logging
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, cast

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.util.hass_dict import HassKey

from .const import DOMAIN, PATH_DIY, PATH_SETUP_MODE
from .flash_stack import async_load_device_modules
from .proto.json_fields import opt_str

if TYPE_CHECKING:
    from .diy_run import DiyRun
    from .proto.eligibility import Decision
    from .setup_mode_run import SetupModeRun

_LOGGER = logging.getLogger(__name__)

CONF_DEVICES: Final = "devices"
STATE_EWELINK: Final = "ewelink"
STATE_TASMOTA: Final = "tasmota"
_PENDING_KEY: Final[HassKey[dict[str, DeviceRecord]]] = HassKey(f"{DOMAIN}_pending_devices")

type DevicePath = Literal["diy", "setup_mode"]
type DeviceState = Literal["ewelink", "tasmota"]


def signal_devices_updated(entry_id: str) -> str:
    """Dispatcher signal sent after the device mapping of `entry_id` changed."""
    return f"{DOMAIN}_devices_updated_{entry_id}"


# A NamedTuple, not a dataclass: HA imports this module with the integration, and a
# dataclass costs about a millisecond to create (ARCHITECTURE.md, "What loads when").
class DeviceRecord(NamedTuple):
    """One known device (see the module docstring). Holds no secret."""

    deviceid: str
    path: DevicePath = PATH_DIY
    host: str | None = None
    port: int | None = None
    device_type: str | None = None
    fw_version: str | None = None
    model: str | None = None
    state: DeviceState = STATE_EWELINK
    mac: str | None = None

    @property
    def flashed(self) -> bool:
        """True once the device runs Tasmota."""
        return self.state == STATE_TASMOTA

    @property
    def eligibility(self) -> Decision:
        """What the eligibility table says about this device, from what the record holds.

        Loaded: a record comes from the entry (`async_load_eligibility` at set-up) or
        from a flow's flash (the flash stack imports the table).
        """
        from .proto.eligibility import check_record  # noqa: PLC0415

        return check_record(
            self.path,
            device_type=self.device_type,
            fw_version=self.fw_version,
            model=self.model,
            deviceid=self.deviceid,
        )

    @property
    def dashboard_flashable(self) -> bool:
        """True when the dashboard may flash it: DIY, reachable, eWeLink, not refused."""
        return (
            not self.flashed and self.path == PATH_DIY and bool(self.host) and self.eligibility.ok
        )

    def as_data(self) -> dict[str, Any]:
        """The stored form (without the deviceid, which is the key)."""
        data = self._asdict()
        del data["deviceid"]
        if data["mac"] is None:
            del data["mac"]
        return data

    @classmethod
    def from_data(cls, deviceid: str, data: Mapping[str, Any]) -> DeviceRecord:
        """Read a stored record; tolerate missing or odd fields (older entries)."""
        path = data.get("path")
        state = data.get("state")
        port = data.get("port")
        return cls(
            deviceid=deviceid,
            path=PATH_SETUP_MODE if path == PATH_SETUP_MODE else PATH_DIY,
            host=opt_str(data.get("host")),
            port=port if isinstance(port, int) and not isinstance(port, bool) else None,
            device_type=opt_str(data.get("device_type")),
            fw_version=opt_str(data.get("fw_version")),
            model=opt_str(data.get("model")),
            state=STATE_TASMOTA if state == STATE_TASMOTA else STATE_EWELINK,
            mac=opt_str(data.get("mac")),
        )

    def merged(self, newer: DeviceRecord) -> DeviceRecord:
        """Merge what `newer` knows into this record (unknown fields keep their value)."""
        # Nothing turns Tasmota back into eWeLink (only a serial flash could).
        state: DeviceState = "tasmota" if "tasmota" in (self.state, newer.state) else "ewelink"
        return DeviceRecord(
            deviceid=self.deviceid,
            path=newer.path,
            host=newer.host if newer.host is not None else self.host,
            port=newer.port if newer.port is not None else self.port,
            device_type=newer.device_type or self.device_type,
            fw_version=newer.fw_version or self.fw_version,
            model=newer.model or self.model,
            state=state,
            mac=newer.mac or self.mac,
        )


# -- reading ---------------------------------------------------------------------------------


def get_entry(hass: HomeAssistant) -> ConfigEntry | None:
    """The Sonoff OTA config entry, if it exists (there is at most one)."""
    entries = hass.config_entries.async_entries(DOMAIN, include_ignore=False)
    return entries[0] if entries else None


def get_devices(entry: ConfigEntry) -> dict[str, DeviceRecord]:
    """Every known device of `entry`, by deviceid."""
    raw = entry.data.get(CONF_DEVICES)
    if not isinstance(raw, Mapping):
        return {}
    return {
        str(deviceid): DeviceRecord.from_data(str(deviceid), cast(Mapping[str, Any], data))
        for deviceid, data in raw.items()
        if isinstance(data, Mapping)
    }


def get_device(entry: ConfigEntry, deviceid: str) -> DeviceRecord | None:
    """One known device, or None."""
    return get_devices(entry).get(deviceid)


# -- writing ---------------------------------------------------------------------------------


@callback
def async_remember_device(
    hass: HomeAssistant, entry: ConfigEntry | None, record: DeviceRecord
) -> DeviceRecord | None:
    """Add `record` to the entry, or merge it into the known one; returns the stored record.

    Without an entry (the first flash creates it) the record waits in memory
    until `async_adopt_pending_devices` runs at entry setup; returns None then.
    """
    if entry is None:
        pending = hass.data.setdefault(_PENDING_KEY, {})
        known = pending.get(record.deviceid)
        pending[record.deviceid] = known.merged(record) if known is not None else record
        return None
    devices = get_devices(entry)
    known = devices.get(record.deviceid)
    stored = known.merged(record) if known is not None else record
    if stored != known:
        _write(hass, entry, {**devices, record.deviceid: stored})
    return stored


@callback
def async_mark_flashed(
    hass: HomeAssistant,
    entry: ConfigEntry | None,
    deviceid: str,
    *,
    mac: str | None = None,
    record: DeviceRecord | None = None,
) -> DeviceRecord | None:
    """Record that `deviceid` runs Tasmota now and let go of its eWeLink HA device.

    `record` describes the device when the entry may not know it yet (a
    setup-mode device met only in the flow that flashed it).
    """
    known = get_device(entry, deviceid) if entry is not None else None
    base = record or known or DeviceRecord(deviceid=deviceid)
    flashed = base._replace(state=STATE_TASMOTA, mac=mac or base.mac)
    stored = async_remember_device(hass, entry, flashed)
    if entry is None:
        return None
    async_release_ha_device(hass, entry, deviceid)
    return stored


@callback
def async_remember_run(
    hass: HomeAssistant,
    run: DiyRun | SetupModeRun,
    *,
    flashed: bool = False,
    mac: str | None = None,
) -> DeviceRecord | None:
    """Record the device a config-flow run met (`flashed`: it runs Tasmota now).

    Nothing happens when the run has not met a device yet (setup mode before GET /device).
    """
    record = record_from_run(run)
    if record is None:
        return None
    entry = get_entry(hass)
    if flashed:
        return async_mark_flashed(hass, entry, record.deviceid, mac=mac, record=record)
    return async_remember_device(hass, entry, record)


def record_from_run(run: DiyRun | SetupModeRun) -> DeviceRecord | None:
    """What a run knows about its device (no secret: no apikey, no Wi-Fi)."""
    from .diy_run import DiyRun  # noqa: PLC0415 - loaded with the flash stack `run` came from

    details = run.tracker.details
    if isinstance(run, DiyRun):
        target = run.target
        return DeviceRecord(
            deviceid=target.deviceid,
            path=PATH_DIY,
            host=target.host,
            port=target.port,
            device_type=target.device_type,
            fw_version=opt_str(details.get("fw_version", "").replace("?", "")),
            model=target.model,
        )
    deviceid = details.get("deviceid")
    if not deviceid:
        return None
    return DeviceRecord(
        deviceid=deviceid,
        path=PATH_SETUP_MODE,
        model=details.get("model"),
        fw_version=details.get("rom_version"),
    )


@callback
async def async_load_eligibility(hass: HomeAssistant, entry: ConfigEntry) -> None:
    """The eligibility table, in HA's executor, once the entry knows a device.

    Its entities ask every record (`DeviceRecord.eligibility`); an entry without
    devices never loads the table until a flow flashes one (the flash stack has it).
    """
    if get_devices(entry):
        await async_load_device_modules(hass)


def async_adopt_pending_devices(hass: HomeAssistant, entry: ConfigEntry) -> None:
    """Move the records met before the entry existed into it (at entry setup)."""
    pending = hass.data.pop(_PENDING_KEY, {})
    devices = get_devices(entry)
    for deviceid, record in pending.items():
        known = devices.get(deviceid)
        devices[deviceid] = known.merged(record) if known is not None else record
    if pending:
        _write(hass, entry, devices)


def find_ha_device(hass: HomeAssistant, entry: ConfigEntry, deviceid: str) -> dr.DeviceEntry | None:
    """Our HA device of `deviceid`, if any.

    Looked up among the entry's own devices: from HA 2026.x identifiers are unique
    per config entry only, and the global lookup is deprecated.
    """
    identifier = (DOMAIN, deviceid)
    return next(
        (
            device
            for device in dr.async_entries_for_config_entry(dr.async_get(hass), entry.entry_id)
            if identifier in device.identifiers
        ),
        None,
    )


DEVICES_PER_ENTRY = hasattr(dr.DeviceRegistry, "async_get_or_create_child")
"""HA 2026.x: a device belongs to one config entry (before: several, e.g. merged by MAC)."""


@callback
def async_release_ha_device(hass: HomeAssistant, entry: ConfigEntry, deviceid: str) -> None:
    """Remove our entities from the HA device of `deviceid` and our entry from the device.

    The device registry removes the device when no other integration holds it,
    and the entity registry drops our entities on it (see the module docstring).
    """
    registry = dr.async_get(hass)
    device = find_ha_device(hass, entry, deviceid)
    if device is None:
        return
    _LOGGER.debug("Device %s runs Tasmota: releasing its eWeLink device", deviceid)
    # Drop our identifier too: a device HA merged with the Tasmota one (same MAC) would
    # otherwise be "ours" again once our "Tasmota firmware" entity links to it (update.py).
    remaining = device.identifiers - {(DOMAIN, deviceid)}
    if remaining or device.connections:  # a device needs one of the two
        registry.async_update_device(device.id, new_identifiers=remaining)
    if DEVICES_PER_ENTRY:  # HA 2026.x: the device is ours alone; it goes as a whole
        registry.async_remove_device(device.id)
    else:
        registry.async_update_device(device.id, remove_config_entry_id=entry.entry_id)


def _write(hass: HomeAssistant, entry: ConfigEntry, devices: Mapping[str, DeviceRecord]) -> None:
    data = {
        **entry.data,
        CONF_DEVICES: {deviceid: record.as_data() for deviceid, record in devices.items()},
    }
    hass.config_entries.async_update_entry(entry, data=data)
    async_dispatcher_send(hass, signal_devices_updated(entry.entry_id))
