"""The DIY-mode flash (eWeLink 3.x), stage by stage, without Home Assistant.

CHECKING → UNLOCKING (only if needed) → FLASHING → WAIT_REBOOT, reported through
a `FlashTracker`. Progress comes from the Range offsets the device fetches.
`ota_flash` is sent exactly once: a half-flashed device is the worst outcome,
so an ambiguous failure waits for the device's result callback instead of
retrying (shared/spec/diy-ota-and-tasmota.md §1.4, §1.7, §5 items 8-9).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
import contextlib
from dataclasses import dataclass, field
import logging
from typing import TYPE_CHECKING, Final

from .diy_client import DiyClient, DiyError, DiyErrorCode, DiyInfo
from .diy_discovery import check_eligibility
from .diy_ota_result import FlashResult, flash_result
from .flash_stages import FlashTracker, Stage
from .image_names import DIY_NAME
from .image_server import ImageEventKind, ImageServer, ServedSet

if TYPE_CHECKING:
    from .firmware_image import ImageData

_LOGGER = logging.getLogger(__name__)

IMAGE_NAME: Final = DIY_NAME


class DiyFlashError(Exception):
    """A DIY flash cannot go on; `code` is a translation key."""

    def __init__(self, code: str, **placeholders: str) -> None:
        super().__init__(code)
        self.code = code
        self.placeholders = placeholders


@dataclass(frozen=True, slots=True)
class DiyTimeouts:
    """Seconds each waiting stage waits."""

    flash: float = 600.0
    """From sending ota_flash to the device's result callback (it downloads piecewise)."""
    reboot: float = 300.0
    """From the callback to the device leaving `_ewelink._tcp` (when that is observed)."""


@dataclass(slots=True)
class DiyJob:
    """Everything one DIY flash needs."""

    deviceid: str
    device_type: str
    image: ImageData = field(repr=False)
    download_base: Callable[[], str]
    """`http://<ip literal>:<port>` the device downloads from (plain HTTP, never https)."""
    encrypted: bool = False
    model: str | None = None
    timeouts: DiyTimeouts = field(default_factory=DiyTimeouts)


class DiyFlasher:
    """Runs the stages of one DIY flash; see the module docstring."""

    def __init__(
        self,
        tracker: FlashTracker,
        job: DiyJob,
        *,
        client: DiyClient,
        images: ImageServer,
        wait_gone: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Prepare a flash; nothing happens until `run()`."""
        self.tracker = tracker
        self.job = job
        self._client = client
        self._images = images
        self._wait_gone = wait_gone
        self.info: DiyInfo | None = None
        self.served: ServedSet | None = None
        self.flash_sent = False

    async def check(self) -> DiyInfo:
        """CHECKING: read /zeroconf/info and decide eligibility before anything changes."""
        self.tracker.advance(Stage.CHECKING)
        try:
            info = await self._client.info()
        except DiyError as err:
            raise DiyFlashError(str(err.code)) from err
        self.info = info
        eligibility = check_eligibility(
            device_type=self.job.device_type,
            fw_version=info.fw_version,
            encrypted=self.job.encrypted,
            model=self.job.model,
            deviceid=self.job.deviceid,
        )
        details = {
            "deviceid": self.job.deviceid,
            "fw_version": info.fw_version or "?",
            # the eligibility-table row (its sentence: selector.eligibility.options.<row>)
            "eligibility": eligibility.row,
        }
        if eligibility.warnings:
            details["warnings"] = ", ".join(str(w) for w in eligibility.warnings)
        self.tracker.update(1.0, **details)
        if not eligibility.ok:
            raise DiyFlashError(str(eligibility.reason), **eligibility.placeholders)
        return info

    async def run(self) -> None:
        """Check (if not done yet), unlock if needed, flash, and wait for the result."""
        info = self.info or await self.check()
        if not info.ota_unlock:
            self.tracker.advance(Stage.UNLOCKING)
            try:
                await self._client.ota_unlock()
            except DiyError as err:
                raise DiyFlashError(str(err.code)) from err
            self.tracker.update(1.0)
        else:
            _LOGGER.debug("Device %s is already unlocked", self.job.deviceid)
        await self._flash()

    async def _flash(self) -> None:
        self.tracker.advance(Stage.FLASHING)
        served = self.served = self._images.add_set(
            {IMAGE_NAME: self.job.image}, deviceid=self.job.deviceid
        )
        start = len(served.history)
        progress = asyncio.ensure_future(self._report_progress(served))
        try:
            url = self.job.download_base() + served.url_path(IMAGE_NAME)
            try:
                async with asyncio.timeout(self.job.timeouts.flash):
                    self.flash_sent = True
                    await self._client.ota_flash(url, served.digest(IMAGE_NAME))
            except TimeoutError:
                _LOGGER.warning(
                    "Device %s did not answer ota_flash in time; waiting for its result",
                    self.job.deviceid,
                )
            except DiyError as err:
                if err.code is not DiyErrorCode.FLASH_MAY_BE_RUNNING:
                    raise DiyFlashError(str(err.code)) from err
                # Never re-send: the device may be downloading. Its callback decides.
                _LOGGER.warning(
                    "ota_flash to %s ended ambiguously; waiting for its result callback",
                    self.job.deviceid,
                )
            self.tracker.advance(Stage.WAIT_REBOOT)
            await self._wait_result(served, start)
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress

    async def _report_progress(self, served: ServedSet) -> None:
        index = len(served.history)
        while True:
            event = await served.next_event(index)
            index += 1
            if event.name == IMAGE_NAME and event.size and self.tracker.stage is Stage.FLASHING:
                self.tracker.update(event.high_water / event.size)

    async def _wait_result(self, served: ServedSet, start: int) -> None:
        try:
            async with asyncio.timeout(self.job.timeouts.flash):
                event = await served.wait_for(ImageEventKind.OTA_RESULT, start=start)
        except TimeoutError as err:
            progress = served.progress[IMAGE_NAME]
            if progress.high_water < progress.size:
                raise DiyFlashError("flash_result_missing") from err
            # The whole image went out but no result came. Where the device posts its
            # result is inferred, not verified (diy §1.7), and success is also "gone from
            # _ewelink._tcp, then a tasmota AP or discovery" (diy §6 item 8): let the
            # hand-off decide. Nothing is ever sent to the device again.
            _LOGGER.warning(
                "Device %s downloaded the whole image but sent no result; "
                "looking for Tasmota instead",
                self.job.deviceid,
            )
            self.tracker.update(1.0, flash_result="no_callback")
            return
        result = event.result
        code = result.error if result is not None else None
        outcome = flash_result(code) if code is not None else FlashResult.UNKNOWN
        self.tracker.update(0.5, flash_result=str(outcome))
        if outcome is not FlashResult.DONE:
            raise DiyFlashError(f"flash_{outcome}", error=str(code))
        if self._wait_gone is not None:
            try:
                async with asyncio.timeout(self.job.timeouts.reboot):
                    await self._wait_gone()
            except TimeoutError:
                # The callback said done; a device that still advertises is odd, not fatal.
                _LOGGER.warning(
                    "Device %s still advertises eWeLink after its flash", self.job.deviceid
                )
        self.tracker.update(1.0)

    def close(self) -> None:
        """Stop serving the image (idempotent)."""
        if self.served is not None:
            self._images.remove_set(self.served)
            self.served = None
