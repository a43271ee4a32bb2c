"""Several devices in pairing mode at once: what the flow keeps while it flashes them in turn.

When HA hops its own Wi-Fi and its scan sees more than one `ITEAD-…` network, the setup-mode
flow (`setup_mode_flow`) lists them; the devices the user keeps are flashed one after another,
each through the whole setup-mode path and the Tasmota hand-off, with the saved home Wi-Fi and
the images fetched and checked once. This module holds that queue and each device's result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import enum

from .proto.firmware_cache import StoredImage
from .proto.host_wifi_targets import ITEAD_SSID_PREFIX


class DeviceOutcome(enum.StrEnum):
    """How one device of the list ended (`selector.many_result.options.<outcome>`)."""

    FLASHED = "flashed"
    FAILED = "failed"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class DeviceResult:
    """One device of the list, as the end step sums it up."""

    ssid: str
    outcome: DeviceOutcome
    text: str
    """One line in HA's language (`selector.many_result.options.<outcome>`, filled)."""


def device_label(ssid: str) -> str:
    """The device id an `ITEAD-<id>` network names (what the list shows)."""
    return ssid.removeprefix(ITEAD_SSID_PREFIX)


@dataclass(slots=True)
class ManyDevices:
    """The devices chosen from the list, the one being flashed, and the results so far."""

    ssids: tuple[str, ...]
    callback_host: str
    images: tuple[StoredImage, StoredImage, StoredImage] | None
    """Fetched and checked once (before the list was shown): every device gets these."""
    index: int = 0
    results: list[DeviceResult] = field(default_factory=list)

    @property
    def current(self) -> str | None:
        """The SSID being flashed now; None once every device had its turn."""
        return self.ssids[self.index] if self.index < len(self.ssids) else None

    def record(self, outcome: DeviceOutcome, text: str) -> None:
        """The current device ended: note it and move on to the next."""
        ssid = self.current
        assert ssid is not None
        self.results.append(DeviceResult(ssid, outcome, text))
        self.index += 1

    def summary(self) -> dict[str, str]:
        """The end step's placeholders: one line per device, and the counts."""
        return {
            "results": "\n".join(f"- {result.text}" for result in self.results),
            "flashed": str(sum(r.outcome is DeviceOutcome.FLASHED for r in self.results)),
            "count": str(len(self.ssids)),
        }
