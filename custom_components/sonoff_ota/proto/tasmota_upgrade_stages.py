"""A lite → full Tasmota upgrade as a state machine: its stages, its tracker, its errors.

`UpgradeTracker` is to an upgrade what `flash_stages.FlashTracker` is to a flash:
stage, percentage (from the stage weights), details, history and listeners, read
by a flow step, an update entity and the diagnostics. `tasmota_upgrade` drives it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import enum
import logging
import time
from typing import Final

from .stage_progress import Listeners, weighted_fraction

_LOGGER = logging.getLogger(__name__)


class UpgradeStage(enum.StrEnum):
    """The named stages of a lite → full upgrade (also translation keys)."""

    REQUESTED = "requested"
    DOWNLOADING = "downloading"
    REBOOTING = "rebooting"
    MINIMAL = "minimal"
    CONFIRMING = "confirming"
    DONE = "done"
    FAILED = "failed"


_ORDER: Final = (
    UpgradeStage.REQUESTED,
    UpgradeStage.DOWNLOADING,
    UpgradeStage.REBOOTING,
    UpgradeStage.MINIMAL,
    UpgradeStage.CONFIRMING,
    UpgradeStage.DONE,
)
_WEIGHT: Final = {
    UpgradeStage.REQUESTED: 5,
    UpgradeStage.DOWNLOADING: 40,
    UpgradeStage.REBOOTING: 15,
    UpgradeStage.MINIMAL: 30,
    UpgradeStage.CONFIRMING: 10,
    UpgradeStage.DONE: 0,
}


class UpgradeErrorCode(enum.StrEnum):
    """Why an upgrade failed (translation keys, prefixed `upgrade_` in the HA layer)."""

    BAD_URL = "bad_url"
    """OtaUrl is not a plain http:// URL Tasmota can take (no TLS on ESP8266)."""
    NO_ANSWER = "no_answer"
    """The device did not answer OtaUrl / Upgrade over MQTT (offline?)."""
    OTA_REFUSED = "ota_refused"
    """The device answered but did not start (or did not keep our URL)."""
    FILE_TOO_BIG = "file_too_big"
    """Not Enough space, and no -minimal step rescued it."""
    UNREACHABLE = "unreachable"
    """The device could not connect to the web server (no HTTP reachability)."""
    DOWNLOAD_FAILED = "download_failed"
    """The server answered with an error (404, 403, no size...)."""
    IMAGE_REJECTED = "image_rejected"
    """Downloaded, but Tasmota would not write it (not an ESP8266 image)."""
    NOT_UPGRADED = "not_upgraded"
    """The device came back still running the old build."""
    TIMEOUT = "timeout"
    """Nothing decisive within the time allowed."""


class UpgradeError(Exception):
    """A failed upgrade: `code` (translation key) and its non-secret `placeholders`."""

    def __init__(self, code: UpgradeErrorCode, message: str, **placeholders: str) -> None:
        """Keep the key and the placeholders."""
        super().__init__(message)
        self.code = code
        self.placeholders = placeholders


@dataclass(frozen=True, slots=True)
class UpgradeHistory:
    """One stage change (diagnostics)."""

    at: float
    stage: UpgradeStage
    note: str | None = None


@dataclass(slots=True)
class UpgradeTracker:
    """FlashTracker-like state of one upgrade: stage, progress, details, error."""

    device_label: str = ""
    stage: UpgradeStage = UpgradeStage.REQUESTED
    stage_fraction: float = 0.0
    details: dict[str, str] = field(default_factory=dict)
    error: UpgradeError | None = None
    history: list[UpgradeHistory] = field(default_factory=list)
    _listeners: Listeners[UpgradeTracker] = field(default_factory=Listeners)

    def __post_init__(self) -> None:
        """Record the first stage."""
        self.history.append(UpgradeHistory(time.time(), self.stage))

    @property
    def finished(self) -> bool:
        """True once DONE or FAILED."""
        return self.stage in (UpgradeStage.DONE, UpgradeStage.FAILED)

    @property
    def fraction(self) -> float:
        """0..1 from the stage weights (a skipped MINIMAL counts as done)."""
        if self.stage is UpgradeStage.DONE:
            return 1.0
        current: UpgradeStage = self.stage
        if current is UpgradeStage.FAILED:
            current = next(
                (h.stage for h in reversed(self.history) if h.stage is not UpgradeStage.FAILED),
                UpgradeStage.REQUESTED,
            )
        return weighted_fraction(_ORDER, _WEIGHT, current, self.stage_fraction)

    @property
    def percentage(self) -> int:
        """Whole percent."""
        return round(self.fraction * 100)

    def add_listener(self, listener: Callable[[UpgradeTracker], None]) -> Callable[[], None]:
        """Call `listener` on every change; returns the remover."""
        return self._listeners.add(listener)

    def advance(self, stage: UpgradeStage, note: str | None = None, **details: str) -> None:
        """Move forward (never back: the bar only grows)."""
        if self.finished:
            return
        self.details.update(details)
        if _ORDER.index(stage) > _ORDER.index(self.stage):
            self.stage = stage
            self.stage_fraction = 0.0
            self.history.append(UpgradeHistory(time.time(), stage, note))
            _LOGGER.info("Upgrade %s: %s%s", self.device_label, stage, f" ({note})" if note else "")
        self._notify()

    def update(self, stage_fraction: float | None = None, **details: str) -> None:
        """Progress within the stage and/or details."""
        if stage_fraction is not None:
            self.stage_fraction = max(self.stage_fraction, min(max(stage_fraction, 0.0), 1.0))
        self.details.update(details)
        self._notify()

    def done(self) -> None:
        """End well."""
        if not self.finished:
            self.stage = UpgradeStage.DONE
            self.history.append(UpgradeHistory(time.time(), UpgradeStage.DONE))
            self._notify()

    def fail(self, error: UpgradeError) -> None:
        """End with `error`."""
        if self.finished:
            return
        self.error = error
        self.stage = UpgradeStage.FAILED
        self.history.append(UpgradeHistory(time.time(), UpgradeStage.FAILED, str(error.code)))
        _LOGGER.warning("Upgrade %s failed: %s (%s)", self.device_label, error.code, error)
        self._notify()

    def _notify(self) -> None:
        self._listeners.notify(self)
