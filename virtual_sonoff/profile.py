"""Timing profiles and fault injection shared by every part of the virtual Sonoff.

Station-mode figures (the stock eWeLink firmware after `/ap`), EMULATION CHOICES where
shared/spec/setup-mode-ota.md is silent:

- `station_read_timeout` (5 s): the spec gives no read timeout for the stock firmware. It
  must outlast SonOTA's slowstream pauses (0.9 s after the first 10 bytes, then 0.3 s per
  1400 bytes, §6.5), because slowstream is the documented fix for old 1.x firmware (§10, §14).
  We take E2A's HTTPClient figure (5 s, §7, §12) and apply it per connect and per read, never
  to a whole transfer (one slowstream image takes ~51 s).
- `retry_delay` / `retry_delay_max` (realistic 5 s doubling up to 60 s): the spec only says the
  device "reconnects later" after a 404 ack or a closed socket (§6.3, §13.5) and that it may
  take minutes to (re)try dispatch (§5, §10, #70). The back-off between failed attempts is
  therefore exponential and capped at a minute; it is our choice, not a measured figure.
  The `fast` profile (tests) starts at 50 ms and caps at 0.4 s.

`Timing.scaled(k)` multiplies every duration by `k` and records `k` in `scale`, so that rates
(the non-Range receive buffer's drain, see `ewelink_station.RxBuffer`) speed up with it and
every ratio stays as on a real device.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
import enum


@dataclass(frozen=True, slots=True)
class Timing:
    """How long the emulated firmware takes for the steps a real device is slow at.

    `fast` is for tests; `realistic` follows the figures in
    shared/spec/setup-mode-ota.md §12 (timing summary).
    """

    chunk_delay: float = 0.0
    """Pause between two 4 KiB Range requests (real devices: ~90-120 ms)."""
    ap_to_station_delay: float = 0.0
    """From the `/ap` reply to the first dispatch (real devices: up to 1-2 min)."""
    intermediate_boot_delay: float = 0.0
    """E2A's boot blink before FinalStage comes up (real: ~10 s)."""
    reboot_delay: float = 0.0
    """Any other reboot, e.g. into Tasmota."""
    finalstage_probe_interval: float = 0.05
    """E2A's TCP probe of the FinalStage server (real: 500 ms)."""
    http_timeout: float = 5.0
    """E2A's HTTP timeout (real: 5 s)."""
    heartbeat_interval: float = 145.0
    """WebSocket ping interval of the eWeLink firmware (real: 145 s)."""
    tasmota_ap_window: float = 180.0
    """How long Tasmota's Wi-Fi manager AP stays up (real: ~3 min)."""
    discovery_delay: float = 0.0
    """From MQTT connect to the discovery publish (real: ~10 s)."""
    station_read_timeout: float = 5.0
    """Stock firmware: per connect / per read / per awaited reply (emulation choice: 5 s)."""
    retry_delay: float = 0.05
    """Stock firmware: pause after the first failed attempt (emulation choice, see module)."""
    retry_delay_max: float = 0.4
    """Stock firmware: the back-off doubles per failed attempt up to this (emulation choice)."""
    scale: float = 1.0
    """The factor `scaled()` applied (1.0: a real device's pace); rates are divided by it."""

    def scaled(self, factor: float) -> Timing:
        """Every duration times `factor` (ratios kept); `scale` records the factor."""
        if factor <= 0:
            raise ValueError("factor must be positive")
        return replace(self, **{f.name: getattr(self, f.name) * factor for f in fields(self)})

    def retry_delays(self) -> Iterator[float]:
        """The pauses before the 2nd, 3rd, ... attempt: doubling from `retry_delay`, capped."""
        delay = self.retry_delay
        while True:
            yield min(delay, self.retry_delay_max)
            delay *= 2


FAST = Timing()
REALISTIC = Timing(
    chunk_delay=0.1,
    ap_to_station_delay=60.0,
    intermediate_boot_delay=10.0,
    reboot_delay=3.0,
    finalstage_probe_interval=0.5,
    http_timeout=5.0,
    heartbeat_interval=145.0,
    tasmota_ap_window=180.0,
    discovery_delay=10.0,
    station_read_timeout=5.0,
    retry_delay=5.0,
    retry_delay_max=60.0,
)
PROFILES: dict[str, Timing] = {"fast": FAST, "realistic": REALISTIC}


def timing_profile(name: str, **overrides: float) -> Timing:
    """Return a named profile, with individual figures overridden."""
    return replace(PROFILES[name], **overrides)


class Fault(enum.StrEnum):
    """Faults a test can inject. Each component honours the ones that concern it."""

    DROP_MID_DOWNLOAD = "drop_mid_download"
    """Close the download connection half way (device gives up: ack 404 / callback 404)."""
    CORRUPT_BYTE = "corrupt_byte"
    """Flip one byte of the downloaded image before the hash check."""
    STALL = "stall"
    """Stop answering / stop downloading, without closing anything."""
    REFUSE_TLS = "refuse_tls"
    """Abort every TLS handshake (e.g. a firmware that pins the vendor certificate)."""
    REBOOT_LOOP = "reboot_loop"
    """After a bad final image the device keeps rebooting and never comes up."""
    LOSE_AP_REPLY = "lose_ap_reply"
    """Drop the setup AP before answering `POST /ap` (the settings are taken)."""
    LOSE_RESULT_CALLBACK = "lose_result_callback"
    """DIY: flash normally but never deliver `POST /api/device/otaFlash` (its target is
    only inferred, diy §1.7)."""
    BROKER_UNREACHABLE = "broker_unreachable"
    """Tasmota cannot reach the MQTT broker: LWT never `Online`."""


@dataclass(slots=True)
class Faults:
    """The set of active faults; tests may change it while a device runs."""

    active: set[Fault] = field(default_factory=set)

    def __contains__(self, fault: object) -> bool:
        """Tell whether a fault is active."""
        return fault in self.active

    def add(self, fault: Fault) -> None:
        """Switch a fault on."""
        self.active.add(fault)

    def discard(self, fault: Fault) -> None:
        """Switch a fault off."""
        self.active.discard(fault)
