"""Shared pieces of the flash benchmarks: the in-process HA server stack, timing, memory, tables.

The harness starts a real `homeassistant.core.HomeAssistant` (not started, no components)
only so that the integration's own `FlashServer`, `PrivateListener`s and views can run
unchanged: the same aiohttp `AppRunner`s, the same legacy TLS context and the same HA view
wrapper that a flash inside Home Assistant uses (see bench/README.md for why).

Everything listens on and connects to 127.0.0.1; ports are bound as 0 and read back.
Reading `/proc/self/status` is blocking file I/O, so inside the event loop it goes
through the HA executor.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
import logging
from pathlib import Path
import statistics

import aiohttp
from homeassistant.core import HomeAssistant

from custom_components.sonoff_ota.flash_server import FlashServer
from custom_components.sonoff_ota.settings import SETTINGS_KEY, Settings
from virtual_sonoff.flash_memory import FlashMemory
from virtual_sonoff.profile import Timing, timing_profile

LOOPBACK = "127.0.0.1"
SCALED_DELAYS = (
    "chunk_delay",
    "ap_to_station_delay",
    "intermediate_boot_delay",
    "reboot_delay",
    "finalstage_probe_interval",
    "discovery_delay",
)
"""The device-imposed delays `--scale` shrinks; timeouts and the heartbeat keep real figures."""
STATUS_PATH = Path("/proc/self/status")
CLEAR_REFS_PATH = Path("/proc/self/clear_refs")
RESET_PEAK = "5"
"""Writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""

OVERHEAD_TARGET = 0.01
CONCURRENCY_TARGET = 0.05
RSS_TARGET_MB = 20.0
MIB = 1024 * 1024
MB = 1000 * 1000


def scaled_realistic(scale: float) -> Timing:
    """The emulator's `realistic` profile with its device-imposed delays multiplied by `scale`."""
    base = timing_profile("realistic")
    values = {name: getattr(base, name) * scale for name in SCALED_DELAYS}
    return replace(base, **values)


def describe_timing(timing: Timing) -> str:
    """One line with the delays in force."""
    names = {f.name for f in fields(timing)}
    parts = [f"{name}={getattr(timing, name):g}s" for name in SCALED_DELAYS if name in names]
    return ", ".join(parts)


def bench_settings(**overrides: object) -> Settings:
    """Integration settings for loopback: both listeners on 127.0.0.1, ports picked by the OS."""
    values: dict[str, object] = {
        "tls_bind": LOOPBACK,
        "tls_port": 0,
        "finalstage_bind": LOOPBACK,
        "finalstage_port": 0,
        "callback_host": LOOPBACK,
        "serve_from_ha": False,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Stack:
    """The running server side: HA core object, the integration's flash server, an HTTP client."""

    hass: HomeAssistant
    server: FlashServer
    session: aiohttp.ClientSession


@asynccontextmanager
async def server_stack(config_dir: Path, settings: Settings) -> AsyncIterator[Stack]:
    """A HomeAssistant core object in `config_dir` with the integration's `FlashServer`.

    The flash server is built directly (not through `async_get_flash_server`, which also
    registers the views on HA's own HTTP server: that server is not used by these paths).
    The client session is a plain aiohttp one: HA's shared session pulls in zeroconf, which
    would send multicast; the flashers accept any session.
    """
    hass = HomeAssistant(str(config_dir))
    hass.data[SETTINGS_KEY] = settings
    server = FlashServer(hass, settings)
    session = aiohttp.ClientSession()
    try:
        yield Stack(hass, server, session)
    finally:
        await session.close()
        await server.async_shutdown()
        await hass.async_stop(force=True)


# -- memory -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryStatus:
    """VmRSS and VmHWM of this process, in KiB."""

    rss_kib: int
    hwm_kib: int


def read_memory() -> MemoryStatus:
    """Parse /proc/self/status (blocking: call through an executor inside the loop)."""
    values: dict[str, int] = {}
    for line in STATUS_PATH.read_text(encoding="ascii").splitlines():
        key, _, rest = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            values[key] = int(rest.split()[0])
    return MemoryStatus(rss_kib=values["VmRSS"], hwm_kib=values["VmHWM"])


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False when the kernel does not allow it."""
    try:
        CLEAR_REFS_PATH.write_text(RESET_PEAK, encoding="ascii")
    except OSError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class MemoryGrowth:
    """RSS before a run, its peak during the run and RSS after, in KiB."""

    before: MemoryStatus
    after: MemoryStatus
    peak_was_reset: bool

    @property
    def peak_growth_mib(self) -> float:
        """Peak RSS during the run minus RSS at its start."""
        return (self.after.hwm_kib - self.before.rss_kib) / 1024

    @property
    def peak_growth_mb(self) -> float:
        """The same in MB (10^6 bytes), the unit of the target."""
        return (self.after.hwm_kib - self.before.rss_kib) * 1024 / MB

    @property
    def retained_mib(self) -> float:
        """RSS after the run minus RSS at its start."""
        return (self.after.rss_kib - self.before.rss_kib) / 1024


class MemoryProbe:
    """Measures one run: `await probe.start()` before, `await probe.stop()` after."""

    def __init__(self, hass: HomeAssistant) -> None:
        self._hass = hass
        self._before: MemoryStatus | None = None
        self._reset = False

    async def start(self) -> None:
        """Reset the peak and read the baseline."""
        self._reset = await self._hass.async_add_executor_job(reset_peak)
        self._before = await self._hass.async_add_executor_job(read_memory)

    async def stop(self) -> MemoryGrowth:
        """Read the peak and the final RSS."""
        assert self._before is not None
        after = await self._hass.async_add_executor_job(read_memory)
        return MemoryGrowth(self._before, after, self._reset)


def flash_bytes(memory: FlashMemory) -> int:
    """Bytes held by an emulated flash (each distinct image object counted once)."""
    unique = {id(write.data): len(write.data) for write in memory.writes}
    return sum(unique.values())


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceRun:
    """One device's flash: wall time of our side's run and the delays the device imposed."""

    deviceid: str
    started: float
    """Loop time at the start of the timed window."""
    ended: float
    """Loop time at its end."""
    device_imposed: float
    ok: bool
    note: str = ""
    emulator_bytes: int = 0
    """Bytes the emulated device's flash memory holds (its written images), at the end."""

    @property
    def seconds(self) -> float:
        """Length of the timed window."""
        return self.ended - self.started

    @property
    def overhead(self) -> float:
        """Wall time the device did not impose: our side plus the emulator's own work."""
        return self.seconds - self.device_imposed


@dataclass(frozen=True, slots=True)
class Batch:
    """Devices flashed at the same time."""

    runs: tuple[DeviceRun, ...]
    memory: MemoryGrowth

    @property
    def wall(self) -> float:
        """From the first window's start to the last one's end (verification excluded)."""
        return max(run.ended for run in self.runs) - min(run.started for run in self.runs)

    @property
    def start_spread(self) -> float:
        """How far apart the devices' windows started."""
        return max(run.started for run in self.runs) - min(run.started for run in self.runs)

    @property
    def ok(self) -> bool:
        """Every device flashed and verified."""
        return all(run.ok for run in self.runs)

    @property
    def mean_seconds(self) -> float:
        """Mean per-device time."""
        return statistics.fmean(run.seconds for run in self.runs)

    @property
    def max_seconds(self) -> float:
        """Slowest device."""
        return max(run.seconds for run in self.runs)

    @property
    def emulator_mib(self) -> float:
        """What the emulated flash memories of all devices hold, in MiB."""
        return sum(run.emulator_bytes for run in self.runs) / MIB

    @property
    def mean_imposed(self) -> float:
        """Mean device-imposed time."""
        return statistics.fmean(run.device_imposed for run in self.runs)


def ratio(part: float, whole: float) -> float:
    """part / whole (0 when whole is 0)."""
    return part / whole if whole else 0.0


def verdict(met: bool) -> str:
    """How a target line ends."""
    return "met" if met else "MISSED"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with right-aligned columns (first column left-aligned)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def per_device_rows(batch: Batch) -> list[list[str]]:
    """Rows of the per-device table."""
    return [
        [
            run.deviceid,
            f"{run.seconds:.3f}",
            f"{run.device_imposed:.3f}",
            f"{run.overhead:.3f}",
            f"{ratio(run.overhead, run.device_imposed) * 100:.2f} %",
            "ok" if run.ok else "FAILED",
            run.note,
        ]
        for run in batch.runs
    ]


PER_DEVICE_HEADERS = (
    "device",
    "total s",
    "device-imposed s",
    "overhead s",
    "overhead/imposed",
    "result",
    "note",
)


def concurrency_lines(single: Batch, many: Batch) -> list[str]:
    """The N-at-once comparison and the memory lines, with targets."""
    count = len(many.runs)
    base = single.mean_seconds
    mean_diff = ratio(many.mean_seconds - base, base)
    max_diff = ratio(many.max_seconds - base, base)
    growth = many.memory.peak_growth_mb
    reset_note = "" if many.memory.peak_was_reset else " (VmHWM could not be reset: lifetime peak)"
    return [
        f"one device alone:            {base:.3f} s",
        f"{count} at once, mean per device: {many.mean_seconds:.3f} s "
        f"({mean_diff * 100:+.2f} %)   target within 5 %: "
        f"{verdict(abs(mean_diff) <= CONCURRENCY_TARGET)}",
        f"{count} at once, slowest device:  {many.max_seconds:.3f} s ({max_diff * 100:+.2f} %)",
        f"{count} at once, wall clock:      {many.wall:.3f} s "
        f"(first start to last end; starts spread over {many.start_spread * 1000:.0f} ms)",
        f"peak RSS growth, {count} devices: {growth:.1f} MB "
        f"= {many.memory.peak_growth_mib:.1f} MiB "
        f"(VmHWM {many.memory.after.hwm_kib} KiB - VmRSS before {many.memory.before.rss_kib} KiB)"
        f"{reset_note}   target < {RSS_TARGET_MB:g} MB: {verdict(growth < RSS_TARGET_MB)}",
        f"  of which the emulated devices' flash memories hold {many.emulator_mib:.1f} MiB "
        f"(same process); our side's share is at most "
        f"{many.memory.peak_growth_mib - many.emulator_mib:.1f} MiB",
        f"RSS retained after the run:  {many.memory.retained_mib:.1f} MiB",
    ]


def base_arguments(description: str) -> argparse.ArgumentParser:
    """`--scale`, `--devices` and `-v`, shared by both scripts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the emulator's device-imposed delays (default 1 = real figures)",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=10,
        help="devices flashed at once after the one-device run (default 10; 1 = only that run)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    return parser


def configure_logging(verbose: bool) -> None:
    """Quiet by default: the figures are the output."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def gather_bounded[T](coros: Sequence[asyncio.Future[T]], bound: float) -> list[T]:
    """Await every future, cancelling all of them once `bound` seconds have passed."""
    try:
        async with asyncio.timeout(bound):
            return list(await asyncio.gather(*coros))
    finally:
        for future in coros:
            future.cancel()
        await asyncio.gather(*coros, return_exceptions=True)
