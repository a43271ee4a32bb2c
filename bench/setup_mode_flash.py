"""Setup-mode flash benchmark: one device, then N at once, against the `realistic` emulator.

Run from the repository root:

    .envs/ha-oldest/bin/python -m bench.setup_mode_flash [--scale S] [--devices N]

Each device is a `virtual_sonoff.setup_mode.SetupModeDevice` (AP on its own 127.0.0.1 port);
our side is the integration's `SetupModeFlasher` wired exactly as `setup_mode_run.py` does,
on the integration's `FlashServer` listeners (legacy TLS fake cloud + plain image server).
The timed window is `SetupModeFlasher.run()`: from the first `GET /device` to the moment
FinalStage has been served the whole Tasmota image. See bench/README.md for the figures.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
import enum
import itertools
from pathlib import Path
import sys
import tempfile

from custom_components.sonoff_ota.listeners import PrivateListener
from custom_components.sonoff_ota.proto.firmware_image import ImageData
from custom_components.sonoff_ota.proto.flash_stages import FlashPath, FlashTracker
from custom_components.sonoff_ota.proto.image_server import ImageServer
from custom_components.sonoff_ota.proto.setup_ap import SetupApClient
from custom_components.sonoff_ota.proto.setup_mode_errors import SetupModeError
from custom_components.sonoff_ota.proto.setup_mode_flasher import (
    SetupModeFlasher,
    SetupModeImages,
    SetupModeJob,
    SetupModeTimeouts,
)
from custom_components.sonoff_ota.proto.wifi import WifiSettings
from custom_components.sonoff_ota.settings import Settings
from custom_components.sonoff_ota.views import (
    IMAGE_PREFIX,
    FinalStageView,
    FirmwareDownloadView,
    OtaResultView,
)
from virtual_sonoff.ewelink_station import REALISTIC_RX_BUFFER
from virtual_sonoff.flash_memory import ARDUINO_OFFSET
from virtual_sonoff.images import intermediate_user1, intermediate_user2, tasmota_lite
from virtual_sonoff.profile import Timing
from virtual_sonoff.setup_mode import DeviceEvent, SetupModeConfig, SetupModeDevice, Stage

from .common import (
    LOOPBACK,
    OVERHEAD_TARGET,
    PER_DEVICE_HEADERS,
    Batch,
    DeviceRun,
    MemoryProbe,
    Stack,
    base_arguments,
    bench_settings,
    concurrency_lines,
    configure_logging,
    describe_timing,
    flash_bytes,
    gather_bounded,
    per_device_rows,
    ratio,
    render_table,
    scaled_realistic,
    server_stack,
    verdict,
)

WIFI = WifiSettings(ssid="BenchNet", password="bench-password")
TASMOTA_WAIT_MARGIN = 30.0
"""Seconds (beyond the device's last reboot) to wait for it to boot Tasmota before checking."""


class OtaMount(enum.StrEnum):
    """How the FinalStage path `/ota/` is provided to several devices at once."""

    PER_DEVICE = "per-device"
    """Device 0 uses the flash server's plain listener, every other one its own
    ImageServer + plain listener (on a real network each has its own FinalStage AP)."""
    SHARED = "shared"
    """Every device on the flash server's one plain listener and its one `/ota/` mount."""


@dataclass(frozen=True, slots=True)
class Imposed:
    """What the device imposed in the timed window: computed and cross-checked."""

    computed: float
    """Sum over the emulator's delays of (configured figure x occurrences counted)."""
    measured_sleeps: float
    """The same delays except chunk pauses, measured as gaps in the device's event log."""
    configured_sleeps: float
    """The configured figures for exactly the delays in `measured_sleeps`."""
    counts: dict[str, int]


def device_imposed(device: SetupModeDevice, timing: Timing, end: float) -> Imposed:
    """Count the emulator's delays that fall in the timed window (ending at `end`).

    Counted from the device's own records: `joining_wifi` (ap_to_station_delay), Range
    requests minus upgrade attempts (chunk pauses: one between two requests of an attempt),
    the accepted upgrade (reboot), `e2a_boot` events (intermediate boot), E2A writes of a
    non-final image and E2A restarts (reboot), failed FinalStage probes (probe interval).
    The reboot after the final image is written falls after the window and is not counted.
    """
    events = [event for event in device.events if event.at <= end]
    kinds = [event.kind for event in events]
    first_boot = kinds.index("e2a_boot") if "e2a_boot" in kinds else len(events)
    e2a_writes = [
        event
        for event in events[first_boot:]
        if event.kind == "flash_written" and event.details.get("offset") != ARDUINO_OFFSET
    ]
    range_requests = sum(1 for request in device.downloads if request.range is not None)
    attempts = sum(1 for ack in device.acks if ack.action == "upgrade")
    probes = device.intermediate.probes if device.intermediate is not None else 0
    counts = {
        "ap_to_station": kinds.count("joining_wifi"),
        "chunk_pauses": max(range_requests - attempts, 0),
        "station_reboots": 1 if device.accepted_upgrade is not None else 0,
        "e2a_boots": kinds.count("e2a_boot"),
        "e2a_reboots": len(e2a_writes) + kinds.count("e2a_restart"),
        "failed_probes": max(probes - kinds.count("finalstage_server_found"), 0),
    }
    configured_sleeps = (
        counts["ap_to_station"] * timing.ap_to_station_delay
        + (counts["station_reboots"] + counts["e2a_reboots"]) * timing.reboot_delay
        + counts["e2a_boots"] * timing.intermediate_boot_delay
        + counts["failed_probes"] * timing.finalstage_probe_interval
    )
    computed = configured_sleeps + counts["chunk_pauses"] * timing.chunk_delay
    return Imposed(computed, _measured_sleeps(events), configured_sleeps, counts)


def _measured_sleeps(events: Sequence[DeviceEvent]) -> float:
    """Gaps in the event log that end with the emulator waking from a sleep (no chunk pauses).

    joining_wifi -> stage "dispatching": ap_to_station_delay; anything -> stage
    "intermediate_boot": a reboot (after the accepted upgrade, an E2A write or an E2A
    restart; this gap also holds the station closing its WebSocket); e2a_boot -> stage
    "finalstage": intermediate boot; finalstage_up -> finalstage_server_found: probe waits.
    """
    total = 0.0
    for event, following in itertools.pairwise(events):
        stage = following.details.get("stage") if following.kind == "stage" else None
        if (
            (event.kind == "joining_wifi" and stage == Stage.DISPATCHING.value)
            or stage == Stage.INTERMEDIATE_BOOT.value
            or (event.kind == "e2a_boot" and stage == Stage.FINALSTAGE.value)
            or (event.kind == "finalstage_up" and following.kind == "finalstage_server_found")
        ):
            total += following.at - event.at
    return total


@asynccontextmanager
async def finalstage_network(
    stack: Stack, index: int, own: bool
) -> AsyncIterator[tuple[ImageServer, int]]:
    """The image server and plain port device `index` downloads from.

    `own`: a separate ImageServer on its own plain listener, built exactly like
    `FlashServer._make_plain` (same views), standing for this device's FinalStage network.
    """
    server = stack.server
    if not own:
        yield server.images, server.plain_port
        return
    images = ImageServer(prefix=IMAGE_PREFIX, pacing=server.images.pacing)
    listener = PrivateListener(
        stack.hass,
        f"firmware (plain HTTP) #{index}",
        [FirmwareDownloadView(images), FinalStageView(images), OtaResultView(images)],
        LOOPBACK,
        0,
    )
    await listener.start()
    try:
        yield images, listener.port
    finally:
        await listener.stop()


def timeouts_for(
    settings: Settings, timing: Timing, mode: OtaMount, count: int
) -> SetupModeTimeouts:
    """The integration's default stage timeouts; shorter FinalStage ones for a shared mount.

    With a shared mount most flashers never see a FinalStage fetch (see README), so their
    wait is cut to a few E2A boot cycles to keep the run bounded.
    """
    defaults = settings.timeouts
    finalstage = defaults.finalstage
    if mode is OtaMount.SHARED and count > 1:
        finalstage = 3 * (timing.intermediate_boot_delay + timing.reboot_delay) + 15
    return SetupModeTimeouts(
        setup_ap=defaults.setup_ap,
        dispatch=defaults.dispatch,
        upgrade=defaults.upgrade,
        finalstage=finalstage,
        ap_retry_delay=min(2.0, max(defaults.setup_ap / 50, 0.05)),  # as setup_mode_run.py
        pinning_grace=defaults.pinning_grace,
    )


async def flash_one(
    stack: Stack,
    index: int,
    *,
    timing: Timing,
    images: SetupModeImages,
    timeouts: SetupModeTimeouts,
    mode: OtaMount,
) -> tuple[DeviceRun, Imposed]:
    """Flash one virtual device from AP mode to "FinalStage served Tasmota", then verify."""
    server = stack.server
    deviceid = f"1000b7{index:04x}"
    loop = asyncio.get_running_loop()
    # Like SetupModeRun.prepare(): the listeners open before the flash starts.
    async with (
        server.listeners(tls=True, plain=True),
        finalstage_network(stack, index, mode is OtaMount.PER_DEVICE and index > 0) as (
            image_server,
            port,
        ),
    ):
        config = SetupModeConfig(
            deviceid=deviceid,
            sta_mac=f"5C:CF:7F:B7:{index >> 8:02X}:{index & 0xFF:02X}",
            finalstage_server=(LOOPBACK, port),
            rx_buffer=REALISTIC_RX_BUFFER,
            timing=timing,
        )
        async with SetupModeDevice(config) as device:
            tracker = FlashTracker(FlashPath.SETUP_MODE)
            job = SetupModeJob(
                wifi=WIFI,
                callback_host=LOOPBACK,
                tls_port=lambda: server.tls_port,
                download_base=lambda: f"http://{LOOPBACK}:{port}",
                images=images,
                timeouts=timeouts,
            )
            flasher = SetupModeFlasher(
                tracker,
                job,
                ap_client=SetupApClient(stack.session, device.ap_url),
                cloud=server.cloud,
                images=image_server,
                tls_observer=server.tls_observer,
                on_device=lambda info: server.claim(info.deviceid, tracker),
            )
            note = ""
            start = loop.time()
            try:
                await flasher.run()
            except SetupModeError as err:  # StageTimeoutError included
                note = f"{err.code} (device at {device.stage})"
                tracker.fail(err.code)
            else:
                tracker.done()
            end = loop.time()
            # As the config flow does right after the run (SetupModeRun.close()).
            flasher.close()
            server.release(deviceid, tracker)
            flashed = await _verify(device, images.final, timing)
            ok = not note and flashed
            if note:
                note += "; the device has our Tasmota" if flashed else "; device not flashed"
            elif not flashed:
                note = f"Tasmota not verified (device at {device.stage})"
            imposed = device_imposed(device, timing, end)
            held = flash_bytes(device.flash)
    return DeviceRun(deviceid, start, end, imposed.computed, ok, note, emulator_bytes=held), imposed


async def _verify(device: SetupModeDevice, final: ImageData, timing: Timing) -> bool:
    """Wait for the device to boot Tasmota (after the timed window) and compare the flash."""
    try:
        await device.wait_for_stage(Stage.TASMOTA, timing.reboot_delay + TASMOTA_WAIT_MARGIN)
    except TimeoutError:
        return False
    return device.flash.image_at(ARDUINO_OFFSET) == bytes(final)


def expected_device_seconds(timing: Timing, images: SetupModeImages) -> float:
    """A rough upper estimate of one flash, for the run's safety bound."""
    chunks = len(images.user1) // 4096 + 1
    return (
        timing.ap_to_station_delay
        + chunks * timing.chunk_delay
        + 3 * timing.reboot_delay
        + 2 * timing.intermediate_boot_delay
    )


async def run_batch(
    stack: Stack, count: int, first_index: int, timing: Timing, mode: OtaMount
) -> tuple[Batch, list[Imposed]]:
    """Flash `count` devices at the same time; measure wall time and memory."""
    images = SetupModeImages(
        user1=intermediate_user1(), user2=intermediate_user2(), final=tasmota_lite()
    )
    timeouts = timeouts_for(stack.server.settings, timing, mode, count)
    bound = (
        2 * expected_device_seconds(timing, images)
        + 180
        + timeouts.finalstage * (mode is OtaMount.SHARED)
    )
    probe = MemoryProbe(stack.hass)
    await probe.start()
    tasks = [
        asyncio.ensure_future(
            flash_one(
                stack, first_index + i, timing=timing, images=images, timeouts=timeouts, mode=mode
            )
        )
        for i in range(count)
    ]
    results = await gather_bounded(tasks, bound)
    memory = await probe.stop()
    return Batch(tuple(run for run, _ in results), memory), [imp for _, imp in results]


def print_batch(title: str, batch: Batch, imposed: list[Imposed]) -> None:
    """The per-device table plus the event-log cross-check."""
    print(title)
    print(render_table(PER_DEVICE_HEADERS, per_device_rows(batch)))
    counts = imposed[0].counts
    print(
        "  counted on device 1: " + ", ".join(f"{name} {value}" for name, value in counts.items())
    )
    measured = sum(i.measured_sleeps for i in imposed)
    configured = sum(i.configured_sleeps for i in imposed)
    print(
        f"  event-log check (all devices, every delay but chunk pauses): slept "
        f"{measured:.3f} s against {configured:.3f} s configured "
        f"(timer lateness + emulator work {(measured - configured) * 1000:.1f} ms)"
    )
    print(
        f"  RSS: {batch.memory.before.rss_kib / 1024:.1f} MiB before, peak "
        f"{batch.memory.after.hwm_kib / 1024:.1f} MiB, {batch.memory.after.rss_kib / 1024:.1f} "
        f"MiB after (peak growth {batch.memory.peak_growth_mib:.1f} MiB)"
    )
    print()


async def bench(config_dir: Path, scale: float, devices: int, mode: OtaMount) -> int:
    """Run the one-device flash, then `devices` at once; print the tables; 0 if all verified."""
    timing = scaled_realistic(scale)
    print(f"Setup-mode flash benchmark: realistic profile x {scale:g} ({describe_timing(timing)})")
    print(
        "Server side: HomeAssistant core object + the integration's FlashServer "
        "(legacy-TLS fake cloud and plain image server on their own aiohttp AppRunners)"
    )
    print(f"FinalStage /ota/ for concurrent devices: {mode}")
    print()
    async with server_stack(config_dir, bench_settings()) as stack:
        single, single_imposed = await run_batch(stack, 1, 0, timing, mode)
        print_batch("One device alone", single, single_imposed)
        run = single.runs[0]
        share = ratio(run.overhead, run.device_imposed)
        print(
            f"total {run.seconds:.3f} s = device-imposed {run.device_imposed:.3f} s "
            f"+ overhead {run.overhead:.3f} s ({share * 100:.2f} % of device-imposed; "
            f"total/imposed = {ratio(run.seconds, run.device_imposed):.4f})   "
            f"target < 1 %: {verdict(share < OVERHEAD_TARGET)}"
        )
        print()
        all_ok = single.ok
        if devices > 1:
            many, many_imposed = await run_batch(stack, devices, 1, timing, mode)
            print_batch(f"{devices} devices at once", many, many_imposed)
            overhead = many.mean_seconds - many.mean_imposed
            print(
                f"mean overhead with {devices} at once: {overhead:.3f} s "
                f"({ratio(overhead, many.mean_imposed) * 100:.2f} % of device-imposed)"
            )
            for line in concurrency_lines(single, many):
                print(line)
            all_ok = all_ok and many.ok
    return 0 if all_ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run the benchmark in a fresh temporary config directory."""
    parser = base_arguments(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--ota-mount",
        choices=[mode.value for mode in OtaMount],
        default=OtaMount.PER_DEVICE.value,
        help="how concurrent devices get FinalStage's /ota/ (default per-device; see README)",
    )
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if args.scale <= 0 or args.devices < 1:
        parser.error("--scale must be > 0 and --devices >= 1")
    with tempfile.TemporaryDirectory(prefix="sonoff-ota-bench-") as config_dir:
        mode = OtaMount(args.ota_mount)
        return asyncio.run(bench(Path(config_dir), args.scale, args.devices, mode))


if __name__ == "__main__":
    sys.exit(main())
