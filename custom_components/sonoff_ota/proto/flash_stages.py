"""The flash as an explicit state machine with named stages.

The config flow, the dashboard entities, diagnostics and the log all read the
same `FlashTracker`: its stage, its overall percentage and its history.
No Home Assistant imports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import enum
import logging
import time
from types import MappingProxyType
from typing import NamedTuple

from .stage_progress import Listeners, weighted_fraction

_LOGGER = logging.getLogger(__name__)


class FlashPath(enum.StrEnum):
    """The two ways onto a device."""

    SETUP_MODE = "setup_mode"
    DIY = "diy"


class Stage(enum.StrEnum):
    """Every named stage a flash goes through."""

    PREPARING = "preparing"
    """Images fetched and checked, listeners opened."""
    # Setup mode (shared/spec/setup-mode-ota.md §1)
    WAIT_SETUP_AP = "wait_setup_ap"
    """Waiting until the device's ITEAD-<id> access point answers GET /device."""
    PROVISIONING = "provisioning"
    """POST /ap: handing over the home Wi-Fi and our server address."""
    WAIT_DISPATCH = "wait_dispatch"
    """The device joins the home Wi-Fi and calls our fake cloud."""
    CLOUD_SESSION = "cloud_session"
    """WebSocket open: register, date, update, query."""
    UPGRADING = "upgrading"
    """The device downloads the intermediate image."""
    WAIT_FINALSTAGE = "wait_finalstage"
    """The intermediate image runs; the host must join FinalStage."""
    FINALSTAGE = "finalstage"
    """Serving the images the intermediate firmware fetches."""
    # DIY (shared/spec/diy-ota-and-tasmota.md §1)
    CHECKING = "checking"
    """Reading /zeroconf/info and deciding eligibility."""
    UNLOCKING = "unlocking"
    """/zeroconf/ota_unlock (the device asks the vendor cloud)."""
    FLASHING = "flashing"
    """/zeroconf/ota_flash: the device downloads and writes Tasmota."""
    WAIT_REBOOT = "wait_reboot"
    """Waiting for the result callback and for the device to leave mDNS."""
    # Hand-off to Tasmota (shared/spec/diy-ota-and-tasmota.md §3)
    TASMOTA_AP = "tasmota_ap"
    """Tasmota's first boot: its own access point waits for Wi-Fi settings."""
    CONFIGURING = "configuring"
    """Wi-Fi and MQTT settings sent through /cm."""
    WAIT_DISCOVERY = "wait_discovery"
    """Waiting for tasmota/discovery/<MAC>/config."""
    # Ends
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"


END_STAGES = frozenset({Stage.DONE, Stage.FAILED, Stage.ABORTED})

_SETUP_ORDER = (
    Stage.PREPARING,
    Stage.WAIT_SETUP_AP,
    Stage.PROVISIONING,
    Stage.WAIT_DISPATCH,
    Stage.CLOUD_SESSION,
    Stage.UPGRADING,
    Stage.WAIT_FINALSTAGE,
    Stage.FINALSTAGE,
)
_DIY_ORDER = (
    Stage.PREPARING,
    Stage.CHECKING,
    Stage.UNLOCKING,
    Stage.FLASHING,
    Stage.WAIT_REBOOT,
)
_HANDOFF_ORDER = (Stage.TASMOTA_AP, Stage.CONFIGURING, Stage.WAIT_DISCOVERY, Stage.DONE)

ORDER: Mapping[FlashPath, tuple[Stage, ...]] = {
    FlashPath.SETUP_MODE: _SETUP_ORDER + _HANDOFF_ORDER,
    FlashPath.DIY: _DIY_ORDER + _HANDOFF_ORDER,
}

# Share of the whole job each stage stands for (relative weights), so that the
# long transfers dominate the bar rather than the instant steps.
_WEIGHT: Mapping[Stage, float] = {
    Stage.PREPARING: 3,
    Stage.WAIT_SETUP_AP: 4,
    Stage.PROVISIONING: 2,
    Stage.WAIT_DISPATCH: 8,
    Stage.CLOUD_SESSION: 2,
    Stage.UPGRADING: 25,
    Stage.WAIT_FINALSTAGE: 8,
    Stage.FINALSTAGE: 30,
    Stage.CHECKING: 2,
    Stage.UNLOCKING: 3,
    Stage.FLASHING: 60,
    Stage.WAIT_REBOOT: 8,
    Stage.TASMOTA_AP: 5,
    Stage.CONFIGURING: 3,
    Stage.WAIT_DISCOVERY: 8,
    Stage.DONE: 0,
}


class IllegalTransitionError(RuntimeError):
    """A stage change the state machine does not allow (a programming error)."""


# NamedTuples and a slotted class, not dataclasses: HA imports this module with the
# integration, and a dataclass costs about a millisecond to create (ARCHITECTURE.md,
# "What loads when").
class HistoryEntry(NamedTuple):
    """One stage change, kept for diagnostics."""

    at: float
    stage: Stage
    note: str | None = None


class FlashError(NamedTuple):
    """Why a flash ended badly: a translation key plus its placeholders."""

    code: str
    placeholders: Mapping[str, str] = MappingProxyType({})


class FlashTracker:
    """The one source of truth for a running flash."""

    __slots__ = (
        "_listeners",
        "details",
        "device_label",
        "error",
        "history",
        "path",
        "stage",
        "stage_fraction",
    )

    def __init__(
        self, path: FlashPath, device_label: str = "", stage: Stage = Stage.PREPARING
    ) -> None:
        """Start at `stage` (a recovered flash starts where it stopped)."""
        self.path = path
        self.device_label = device_label
        """Shown in logs: the device id once known (never a secret)."""
        self.stage = stage
        self.stage_fraction = 0.0
        self.details: dict[str, str] = {}
        """Non-secret facts learnt on the way (deviceid, model, romVersion...)."""
        self.error: FlashError | None = None
        self.history = [HistoryEntry(time.time(), stage)]
        self._listeners: Listeners[FlashTracker] = Listeners()

    def __repr__(self) -> str:
        """The path, the stage and the device (for logs and test failures)."""
        return f"FlashTracker({self.path}, {self.stage}, {self.device_label!r})"

    @property
    def order(self) -> tuple[Stage, ...]:
        """The stages of this path, in order."""
        return ORDER[self.path]

    @property
    def finished(self) -> bool:
        """True once DONE, FAILED or ABORTED."""
        return self.stage in END_STAGES

    @property
    def fraction(self) -> float:
        """Overall progress, 0..1, from the stage weights and the stage's own progress."""
        if self.stage is Stage.DONE:
            return 1.0
        order = self.order
        current: Stage = self.stage
        if current in END_STAGES:
            # keep the bar where it stood when the flash ended
            current = next(
                (h.stage for h in reversed(self.history) if h.stage not in END_STAGES),
                Stage.PREPARING,
            )
        return weighted_fraction(order, _WEIGHT, current, self.stage_fraction)

    @property
    def percentage(self) -> int:
        """Overall progress as a whole percentage."""
        return round(self.fraction * 100)

    def add_listener(self, listener: Callable[[FlashTracker], None]) -> Callable[[], None]:
        """Call `listener` on every change; returns a function that removes it."""
        return self._listeners.add(listener)

    def advance(self, stage: Stage, note: str | None = None, **details: str) -> None:
        """Move to `stage`: forwards along the path, or back to an earlier stage to retry it."""
        if self.finished:
            raise IllegalTransitionError(f"{self.stage} is final, cannot move to {stage}")
        if stage in END_STAGES:
            raise IllegalTransitionError("use done(), fail() or abort() to end a flash")
        if stage not in self.order:
            raise IllegalTransitionError(f"{stage} is not a stage of the {self.path} path")
        self.details.update(details)
        if stage is not self.stage:
            self.stage = stage
            self.stage_fraction = 0.0
            self.history.append(HistoryEntry(time.time(), stage, note))
            _LOGGER.info("%s: %s%s", self._label, stage, f" ({note})" if note else "")
        self._notify()

    def update(self, stage_fraction: float | None = None, **details: str) -> None:
        """Report progress within the current stage and/or new details."""
        if stage_fraction is not None:
            self.stage_fraction = max(0.0, min(stage_fraction, 1.0))
        self.details.update(details)
        self._notify()

    def done(self) -> None:
        """End successfully."""
        self._end(Stage.DONE, None)

    def fail(self, code: str, **placeholders: str) -> None:
        """End with an error the UI can translate."""
        self._end(Stage.FAILED, FlashError(code, placeholders))

    def abort(self) -> None:
        """End because the user gave up (or HA stopped)."""
        self._end(Stage.ABORTED, None)

    def _end(self, stage: Stage, error: FlashError | None) -> None:
        if self.finished:
            return
        self.error = error
        self.stage = stage
        self.history.append(HistoryEntry(time.time(), stage, error.code if error else None))
        if error:
            _LOGGER.warning("%s: failed: %s", self._label, error.code)
        else:
            _LOGGER.info("%s: %s", self._label, stage)
        self._notify()

    @property
    def _label(self) -> str:
        return f"Flash {self.device_label or self.path}"

    def _notify(self) -> None:
        self._listeners.notify(self)
