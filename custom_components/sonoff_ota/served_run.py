"""What a flash run holds while it serves one device, and how it lets go of it.

Both runs (`diy_run.DiyRun`, `setup_mode_run.SetupModeRun`) claim their device on
the flash server, open listeners into an exit stack, keep a record in the flash
journal and drive a flasher that serves the images. `ServedRun` owns those four and
ends them in the order that matters: the journal record first (HA's shutdown keeps
it, see `flash_journal`), then the flasher, the claim and the listeners.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Protocol

from homeassistant.core import HomeAssistant

from .flash_journal import (
    FlashJournal,
    JournalImage,
    JournalRecord,
    RunJournal,
    async_get_journal,
)

if TYPE_CHECKING:
    from .flash_server import FlashServer
    from .proto.firmware_cache import StoredImage
    from .proto.flash_stages import FlashTracker
    from .proto.image_server import ServedSet


class ServingFlasher(Protocol):
    """A flasher as its run sees it: the set it serves, and a way to stop serving."""

    served: ServedSet | None

    def close(self) -> None:
        """Stop serving (idempotent)."""


class ServedRun[F: ServingFlasher]:
    """The claim, listeners, journal record and flasher of one run (module docstring)."""

    def __init__(self, hass: HomeAssistant, tracker: FlashTracker) -> None:
        """Hold nothing yet: the run claims, listens and journals as it goes."""
        self.hass = hass
        self.tracker = tracker
        self.flasher: F | None = None
        self._stack = AsyncExitStack()
        self._server: FlashServer | None = None
        self._claimed: str | None = None
        """The device this run holds on the flash server."""
        self._journal: RunJournal | None = None

    def _claim(self, server: FlashServer, deviceid: str) -> None:
        """Hold `deviceid` on `server` until `close()` (raises when another run has it)."""
        server.claim(deviceid, self.tracker)
        self._claimed = deviceid

    async def _async_journal(self, images: Mapping[str, StoredImage], **fields: Any) -> None:
        """Start this run's journal record (its images and `fields`) and keep it current."""
        journal = await async_get_journal(self.hass)
        record = journal.begin(
            self.tracker.path,
            self.tracker.stage,
            images={name: JournalImage.of(name, image) for name, image in images.items()},
            **fields,
        )
        self._follow(journal, record)

    def _follow(self, journal: FlashJournal, record: JournalRecord) -> None:
        """Keep `record` current from the tracker until `close()`."""
        self._journal = RunJournal(
            journal, record, self.tracker, lambda: self.flasher.served if self.flasher else None
        )

    async def release_flash(self) -> None:
        """The device has Tasmota: stop serving images and close the listeners."""
        if self.flasher is not None:
            self.flasher.close()
        await self._stack.aclose()

    def _end_journal(self) -> None:
        """End the journal record; first in every `close()` (see the module docstring)."""
        if self._journal is not None:
            self._journal.end()

    async def _release(self) -> None:
        """Stop serving, free the device, close the listeners (the end of every `close()`)."""
        if self.flasher is not None:
            self.flasher.close()
        if self._server is not None and self._claimed is not None:
            self._server.release(self._claimed, self.tracker)
            self._claimed = None
        await self._stack.aclose()
