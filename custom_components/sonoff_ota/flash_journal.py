"""The flash journal: what a running flash has done, kept in HA's storage across a restart.

A flash takes minutes and leaves the device half-way for most of them (spec
setup-mode-ota.md §7: after the intermediate download the device runs an image
that only polls 192.168.4.2:8080). If Home Assistant restarts meanwhile, the
flow and its listeners are gone; the journal is how the next start knows which
device is where (see `flash_recovery`).

One record per running flash, in `.storage/sonoff_ota.flash_journal`:
device id, path, stage, the images (name, size, sha256, source URL, cache
path) and what was served of each. Never a secret: no Wi-Fi password, no
apikey, no served-set token (the `JournalRecord` below is the whole record).

Writes go through `Store.async_delay_save` and only on a change that matters
(a stage, the device, a file fully served, the upgrade accepted), so a
download does not write once per 4 KiB chunk; Home Assistant's final write
flushes a pending save on shutdown. A record is removed when its flash ends,
whatever the outcome, except while Home Assistant stops: a flash that HA's
shutdown interrupts is exactly what the journal is for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
import logging
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, NamedTuple
import uuid

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.storage import Store
from homeassistant.util.hass_dict import HassKey

from .const import DOMAIN
from .proto.flash_stages import END_STAGES, FlashPath, FlashTracker, Stage
from .proto.image_names import DIY_NAME, FINAL_NAME, USER1_NAME, USER2_NAME

if TYPE_CHECKING:
    from .proto.firmware_cache import StoredImage
    from .proto.image_server import ServedSet

_LOGGER = logging.getLogger(__name__)

STORAGE_KEY: Final = f"{DOMAIN}.flash_journal"
STORAGE_VERSION: Final = 1
SAVE_DELAY: Final = 1.0
"""Seconds a save waits, so that close changes (stage, then details) make one write."""
JOURNAL_KEY: Final[HassKey[FlashJournal]] = HassKey(f"{DOMAIN}_flash_journal")
_LOCK_KEY: Final[HassKey[asyncio.Lock]] = HassKey(f"{DOMAIN}_flash_journal_lock")


# NamedTuples, not dataclasses: HA imports this module with the integration, and a
# dataclass costs about a millisecond to create (ARCHITECTURE.md, "What loads when").
class JournalImage(NamedTuple):
    """One image of a flash: enough to find and check the same bytes again."""

    name: str
    size: int
    sha256: str
    url: str | None = None
    """Where it came from (user info already removed by the firmware store)."""
    cache_path: str | None = None
    """The verified copy in the firmware cache."""

    @classmethod
    def of(cls, name: str, image: StoredImage) -> JournalImage:
        """A checked image of the firmware store, as the journal keeps it under `name`."""
        return cls(
            name=name,
            size=image.size,
            sha256=image.sha256,
            url=image.source_url,
            cache_path=str(image.path),
        )

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> JournalImage | None:
        """Read a stored image; None when a field is missing or odd."""
        name, size, sha256 = data.get("name"), data.get("size"), data.get("sha256")
        if not isinstance(name, str) or not isinstance(sha256, str):
            return None
        if not isinstance(size, int) or isinstance(size, bool):
            return None
        url, path = data.get("url"), data.get("cache_path")
        return cls(
            name=name,
            size=size,
            sha256=sha256,
            url=url if isinstance(url, str) else None,
            cache_path=path if isinstance(path, str) else None,
        )


class JournalRecord(NamedTuple):
    """One running flash (see the module docstring). Holds no secret."""

    flash_id: str
    path: FlashPath
    stage: Stage
    started_at: float
    updated_at: float
    deviceid: str | None = None
    model: str | None = None
    fw_version: str | None = None
    """eWeLink romVersion (setup mode) or fwVersion (DIY) before the flash."""
    host: str | None = None
    """The DIY device's address (setup-mode devices have none we can reach)."""
    port: int | None = None
    images: Mapping[str, JournalImage] = MappingProxyType({})
    served: Mapping[str, int] = MappingProxyType({})
    """Served name -> highest byte offset written to the device."""
    complete: tuple[str, ...] = ()
    """Served names the device fetched to the last byte at least once."""
    upgrade_accepted: bool = False
    """Setup mode: the device acked the upgrade (it verified the intermediate image)."""
    seen_back: bool = False
    """DIY: after a restart the device answered again with its old eWeLink firmware."""

    @property
    def intermediate_served(self) -> bool:
        """The intermediate image is on the device: it reboots into FinalStage."""
        return self.upgrade_accepted or any(
            name in self.complete for name in (USER1_NAME, USER2_NAME)
        )

    @property
    def final_served(self) -> bool:
        """The Tasmota image was served whole (the device boots Tasmota next)."""
        return FINAL_NAME in self.complete or DIY_NAME in self.complete

    def as_data(self) -> dict[str, Any]:
        """The stored (JSON) form."""
        data = self._asdict()
        data["path"] = str(self.path)
        data["stage"] = str(self.stage)
        data["images"] = {name: image._asdict() for name, image in self.images.items()}
        data["served"] = dict(self.served)
        data["complete"] = list(self.complete)
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> JournalRecord | None:
        """Read a stored record; None when it cannot be understood (it is then dropped)."""
        try:
            path = FlashPath(data["path"])
            stage = Stage(data["stage"])
            flash_id = str(data["flash_id"])
        except (KeyError, ValueError, TypeError):
            return None
        images: dict[str, JournalImage] = {}
        raw_images = data.get("images")
        if isinstance(raw_images, Mapping):
            for name, raw in raw_images.items():
                image = JournalImage.from_data(raw) if isinstance(raw, Mapping) else None
                if image is not None:
                    images[str(name)] = image
        raw_served = data.get("served")
        served = (
            {
                str(k): v
                for k, v in raw_served.items()
                if isinstance(v, int) and not isinstance(v, bool)
            }
            if isinstance(raw_served, Mapping)
            else {}
        )
        raw_complete = data.get("complete")
        complete = (
            tuple(str(n) for n in raw_complete if isinstance(n, str))
            if isinstance(raw_complete, list)
            else ()
        )
        port = data.get("port")

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) and value else None

        def number(key: str) -> float:
            value = data.get(key)
            return float(value) if isinstance(value, int | float) else 0.0

        return cls(
            flash_id=flash_id,
            path=path,
            stage=stage,
            started_at=number("started_at"),
            updated_at=number("updated_at"),
            deviceid=text("deviceid"),
            model=text("model"),
            fw_version=text("fw_version"),
            host=text("host"),
            port=port if isinstance(port, int) and not isinstance(port, bool) else None,
            images=images,
            served=served,
            complete=complete,
            upgrade_accepted=data.get("upgrade_accepted") is True,
            seen_back=data.get("seen_back") is True,
        )


class FlashJournal:
    """The records of all flashes of this HA instance (one, see `async_get_journal`)."""

    def __init__(self, hass: HomeAssistant) -> None:
        """Nothing is read until `async_load()`."""
        self.hass = hass
        self._store: Store[dict[str, Any]] = Store(
            hass, STORAGE_VERSION, STORAGE_KEY, private=True, atomic_writes=True
        )
        self.records: dict[str, JournalRecord] = {}
        self.live: set[str] = set()
        """Flash ids running in this process (never recovered: they are not interrupted)."""

    async def async_load(self) -> None:
        """Read the stored records (once, at creation)."""
        stored = await self._store.async_load()
        raw = stored.get("flashes") if isinstance(stored, dict) else None
        if not isinstance(raw, Mapping):
            return
        for data in raw.values():
            record = JournalRecord.from_data(data) if isinstance(data, Mapping) else None
            if record is not None:
                self.records[record.flash_id] = record

    def _data(self) -> dict[str, Any]:
        return {"flashes": {fid: r.as_data() for fid, r in self.records.items()}}

    @callback
    def _save(self) -> None:
        self._store.async_delay_save(self._data, SAVE_DELAY)

    # -- writing ---------------------------------------------------------------------------

    @callback
    def begin(self, path: FlashPath, stage: Stage, **values: Any) -> JournalRecord:
        """Start a record for a flash of this process."""
        now = time.time()
        record = JournalRecord(
            flash_id=uuid.uuid4().hex,
            path=path,
            stage=stage,
            started_at=now,
            updated_at=now,
            **values,
        )
        self.records[record.flash_id] = record
        self.live.add(record.flash_id)
        self._save()
        return record

    @callback
    def update(self, flash_id: str, *, save: bool = True, **changes: Any) -> None:
        """Change fields of a record; `save=False` keeps the change for the next save."""
        record = self.records.get(flash_id)
        if record is None:
            return
        self.records[flash_id] = record._replace(updated_at=time.time(), **changes)
        if save:
            self._save()

    @callback
    def end(self, flash_id: str) -> None:
        """The flash ended (any outcome): drop its record, unless HA is stopping."""
        self.live.discard(flash_id)
        if self.hass.is_stopping:
            _LOGGER.debug("Flash %s interrupted by the shutdown: record kept", flash_id)
            return
        self.forget(flash_id)

    @callback
    def forget(self, flash_id: str) -> None:
        """Drop a record (its flash ended, or the user dealt with the interrupted one)."""
        if self.records.pop(flash_id, None) is not None:
            self._save()

    # -- reading ---------------------------------------------------------------------------

    def orphans(self) -> list[JournalRecord]:
        """Records of flashes that no longer run (a restart interrupted them)."""
        return [r for r in self.records.values() if r.flash_id not in self.live]

    def orphan_of(self, deviceid: str) -> JournalRecord | None:
        """The interrupted flash of `deviceid`, if any."""
        key = deviceid.lower()
        return next(
            (r for r in self.orphans() if r.deviceid and r.deviceid.lower() == key),
            None,
        )


async def async_get_journal(hass: HomeAssistant) -> FlashJournal:
    """The journal of this instance, loaded on first use."""
    if (journal := hass.data.get(JOURNAL_KEY)) is not None:
        return journal
    lock = hass.data.setdefault(_LOCK_KEY, asyncio.Lock())
    async with lock:
        if (journal := hass.data.get(JOURNAL_KEY)) is not None:
            return journal
        journal = FlashJournal(hass)
        await journal.async_load()
        hass.data[JOURNAL_KEY] = journal
        return journal


class RunJournal:
    """Keeps one run's record current from its tracker (see the module docstring)."""

    def __init__(
        self,
        journal: FlashJournal,
        record: JournalRecord,
        tracker: FlashTracker,
        served: Callable[[], ServedSet | None],
    ) -> None:
        """Follow `tracker`; `served` returns the run's served set once it exists."""
        self.journal = journal
        self.flash_id = record.flash_id
        self._served = served
        self._remove = tracker.add_listener(self._changed)
        self._ended = False
        self._changed(tracker)

    @property
    def record(self) -> JournalRecord | None:
        """The current record (None once ended)."""
        return self.journal.records.get(self.flash_id)

    def _changed(self, tracker: FlashTracker) -> None:
        record = self.record
        if record is None or self._ended:
            return
        if tracker.stage in END_STAGES:
            return  # `end()` follows from the run's close
        details = tracker.details
        changes: dict[str, Any] = {
            "stage": tracker.stage,
            "deviceid": details.get("deviceid") or record.deviceid,
            "model": details.get("model") or record.model,
            "upgrade_accepted": record.upgrade_accepted or details.get("upgrade") == "accepted",
        }
        if record.path is FlashPath.SETUP_MODE and details.get("rom_version"):
            changes["fw_version"] = details["rom_version"]
        # What was served only grows (a resumed flash serves a fresh set: merge).
        served_now = dict(record.served)
        complete = set(record.complete)
        if (served := self._served()) is not None:
            for name, progress in served.progress.items():
                if progress.requests:
                    served_now[name] = max(served_now.get(name, 0), progress.high_water)
                whole = progress.size and progress.high_water >= progress.size
                if progress.complete_fetches or whole:
                    complete.add(name)
        changes["served"], changes["complete"] = served_now, tuple(sorted(complete))
        matters = any(
            changes[key] != getattr(record, key)
            for key in ("stage", "deviceid", "model", "upgrade_accepted", "complete")
        )
        self.journal.update(self.flash_id, save=matters, **changes)

    def end(self) -> None:
        """The run is over (any outcome): stop following, drop the record (see `end`)."""
        if self._ended:
            return
        self._ended = True
        self._remove()
        self.journal.end(self.flash_id)
