"""DIY-mode flash benchmark: one device, then N at once, against the `realistic` emulator.

Run from the repository root:

    .envs/ha-oldest/bin/python -m bench.diy_flash [--scale S] [--devices N] [--failing K]

Each device is a `virtual_sonoff.diy.DiyDevice` (REST on its own 127.0.0.1 port, downloads
and result callback sent from its own 127.0.0.x source address, as distinct LAN IPs would be);
our side is the integration's `DiyFlasher` and `DiyClient`, wired as `diy_run.py` does, with
the image on the integration's `FlashServer` plain listener shared by every device. The timed
window is `DiyFlasher.run()`: `/zeroconf/info`, `ota_unlock`, `ota_flash` (the device
pre-downloads in 4 KiB Range requests before it answers) and the result callback.

The N-at-once runs go through `proto.flash_batch.run_isolated`, the scheduling the
dashboard's "Flash all eligible devices" button and `sonoff_ota.flash` use. A last run
flashes N at once of which K fail as the spec describes (the vendor cloud refuses the
unlock; the device finds a sha256 mismatch): the others' times are compared to one device
alone, and the failing ones must fail with exactly their reason and stay unflashed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
import os
from pathlib import Path
import statistics
import sys
import tempfile

from custom_components.sonoff_ota.proto.diy_client import DEFAULT_MIN_INTERVAL, DiyClient
from custom_components.sonoff_ota.proto.diy_flasher import (
    DiyFlasher,
    DiyFlashError,
    DiyJob,
    DiyTimeouts,
)
from custom_components.sonoff_ota.proto.flash_batch import run_isolated
from custom_components.sonoff_ota.proto.flash_stages import FlashPath, FlashTracker
from virtual_sonoff.diy import DOWNLOAD_CHUNK, DiyConfig, DiyDevice, DiyStage
from virtual_sonoff.flash_memory import ARDUINO_OFFSET
from virtual_sonoff.images import tasmota_lite
from virtual_sonoff.profile import Fault, Faults, Timing

from .common import (
    CONCURRENCY_TARGET,
    LOOPBACK,
    PER_DEVICE_HEADERS,
    RSS_TARGET_MB,
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
    per_device_rows,
    ratio,
    render_table,
    scaled_realistic,
    server_stack,
    verdict,
)

FW_VERSION = "3.6.0"
SOURCE_BASE = 10
"""Device i sends its downloads and callback from 127.0.0.(SOURCE_BASE + i)."""
MAX_DEVICES = 200
REST_CALLS = 3
"""info, ota_unlock, ota_flash: the client keeps >= DEFAULT_MIN_INTERVAL between them."""
TASMOTA_WAIT_MARGIN = 30.0
FAILURES: tuple[tuple[str, dict[str, object]], ...] = (
    ("unlock_rejected", {"unlock_rejected": True}),
    ("sha256_mismatch", {"faults": Faults({Fault.CORRUPT_BYTE})}),
)
"""The ways a device of the mixed run fails (expected code, DiyConfig overrides), in turn."""


async def flash_one(
    stack: Stack, index: int, timing: Timing, image: bytes, failure: str | None = None
) -> DeviceRun:
    """Flash one virtual DIY device and check its flash holds exactly our image.

    `failure`: the code this device is set up to fail with (see FAILURES); its run is
    ok when it fails with exactly that code and its flash stays empty.
    """
    server = stack.server
    timeouts = server.settings.timeouts
    deviceid = f"1000e4{index:04x}"
    loop = asyncio.get_running_loop()
    # Like DiyRun.run() with serve_from_ha off: the plain listener is held for the flash.
    async with server.listeners(plain=True):
        config = DiyConfig(
            deviceid=deviceid,
            fw_version=FW_VERSION,
            host=LOOPBACK,
            port=0,
            sta_mac=f"D8:F1:5B:E4:{index >> 8:02X}:{index & 0xFF:02X}",
            source_host=f"127.0.0.{SOURCE_BASE + index}",
            timing=timing,
            **dict(FAILURES)[failure] if failure else {},  # type: ignore[arg-type]
        )
        async with DiyDevice(config) as device:
            tracker = FlashTracker(FlashPath.DIY, device_label=deviceid)
            job = DiyJob(
                deviceid=deviceid,
                device_type=config.device_type,
                image=image,
                download_base=lambda: f"http://{LOOPBACK}:{server.plain_port}",
                timeouts=DiyTimeouts(flash=timeouts.diy_flash, reboot=timeouts.diy_reboot),
            )
            client = DiyClient(
                stack.session,
                LOOPBACK,
                device.port,
                deviceid=deviceid,
                timeout=timeouts.diy_request,
                flash_timeout=timeouts.diy_flash,
            )
            flasher = DiyFlasher(tracker, job, client=client, images=server.images)
            server.claim(deviceid, tracker)
            note = ""
            start = loop.time()
            try:
                await flasher.run()
            except DiyFlashError as err:
                note = f"{err.code} (device at {device.stage})"
                tracker.fail(err.code)
            else:
                tracker.done()
            end = loop.time()
            flasher.close()
            server.release(deviceid, tracker)
            if failure is not None:
                flashed = device.flash.image_at(ARDUINO_OFFSET) is not None
                ok = note.startswith(f"{failure} ") and not flashed
                note = f"expected {failure}: " + (note or "flashed anyway")
            else:
                flashed = await _verify(device, image, timing)
                ok = not note and flashed
                if note:
                    note += "; the device has our Tasmota" if flashed else "; device not flashed"
                elif not flashed:
                    note = f"Tasmota not verified (device at {device.stage})"
            # One pause between two Range requests; the reboot comes after the callback,
            # outside the timed window.
            imposed = max(len(device.downloads) - 1, 0) * timing.chunk_delay
            held = flash_bytes(device.flash)
    return DeviceRun(deviceid, start, end, imposed, ok, note, emulator_bytes=held)


async def _verify(device: DiyDevice, image: bytes, timing: Timing) -> bool:
    """Wait for "Tasmota" (after the timed window) and compare the flash."""
    try:
        await device.wait_for_stage(DiyStage.TASMOTA, timing.reboot_delay + TASMOTA_WAIT_MARGIN)
    except TimeoutError:
        return False
    return device.flash.image_at(ARDUINO_OFFSET) == image


async def run_batch(
    stack: Stack, count: int, first_index: int, timing: Timing, failing: int = 0
) -> Batch:
    """Flash `count` devices at the same time (the last `failing` of them fail on purpose).

    Runs through `run_isolated`, as the dashboard's batch does; measures wall time and memory.
    """
    image = tasmota_lite()
    chunks = len(image) // DOWNLOAD_CHUNK + 1
    bound = 2 * chunks * timing.chunk_delay + timing.reboot_delay + 180
    failures = {first_index + count - 1 - i: FAILURES[i % len(FAILURES)][0] for i in range(failing)}
    probe = MemoryProbe(stack.hass)
    await probe.start()

    async def one(key: str) -> DeviceRun:
        index = int(key)
        return await flash_one(stack, index, timing, image, failures.get(index))

    def crashed(key: str, err: BaseException) -> DeviceRun:
        now = asyncio.get_running_loop().time()
        return DeviceRun(f"#{key}", now, now, 0.0, ok=False, note=f"crashed: {err!r}")

    keys = [str(first_index + i) for i in range(count)]
    runs = await asyncio.wait_for(run_isolated(keys, one, crashed), bound)
    return Batch(tuple(runs[key] for key in keys), await probe.stop())


def print_batch(title: str, batch: Batch) -> None:
    """The per-device table and the memory line."""
    print(title)
    print(render_table(PER_DEVICE_HEADERS, per_device_rows(batch)))
    print(
        f"  RSS: {batch.memory.before.rss_kib / 1024:.1f} MiB before, peak "
        f"{batch.memory.after.hwm_kib / 1024:.1f} MiB, {batch.memory.after.rss_kib / 1024:.1f} "
        f"MiB after (peak growth {batch.memory.peak_growth_mib:.1f} MiB)"
    )
    print()


def mixed_lines(single: Batch, mixed: Batch, failing: int) -> list[str]:
    """The succeeding devices of the mixed run against one device alone."""
    good = [run for run in mixed.runs if not run.note.startswith("expected")]
    failed = [run for run in mixed.runs if run.note.startswith("expected")]
    base = single.mean_seconds
    mean = statistics.fmean(run.seconds for run in good)
    diff = ratio(mean - base, base)
    growth = mixed.memory.peak_growth_mb
    return [
        f"{len(good)} succeeding of {len(mixed.runs)}, mean per device: {mean:.3f} s "
        f"({diff * 100:+.2f} % against one alone)   target within 5 %: "
        f"{verdict(abs(diff) <= CONCURRENCY_TARGET)}",
        f"{failing} failing on purpose: "
        + ", ".join(f"{run.deviceid} {'as expected' if run.ok else 'WRONG'}" for run in failed)
        + " (each ended with its own reason, unflashed; the others went on)",
        f"peak RSS growth, {len(mixed.runs)} devices: {growth:.1f} MB   "
        f"target < {RSS_TARGET_MB:g} MB: {verdict(growth < RSS_TARGET_MB)}",
    ]


async def bench(config_dir: Path, scale: float, devices: int, failing: int = 2) -> int:
    """Run the one-device flash, then `devices` at once; print the tables; 0 if all verified."""
    timing = scaled_realistic(scale)
    print(f"DIY flash benchmark: realistic profile x {scale:g} ({describe_timing(timing)})")
    print(
        "Server side: HomeAssistant core object + the integration's FlashServer "
        "(plain image server on its own aiohttp AppRunner, shared by every device)"
    )
    print(f"Devices: eWeLink {FW_VERSION}, image {len(tasmota_lite())} B (synthetic Tasmota lite)")
    print()
    spacing = (REST_CALLS - 1) * DEFAULT_MIN_INTERVAL
    async with server_stack(config_dir, bench_settings()) as stack:
        single = await run_batch(stack, 1, 0, timing)
        print_batch("One device alone", single)
        run = single.runs[0]
        print(
            f"total {run.seconds:.3f} s = device-imposed {run.device_imposed:.3f} s "
            f"+ overhead {run.overhead:.3f} s ({ratio(run.overhead, run.device_imposed) * 100:.2f}"
            f" % of device-imposed); up to {spacing:.1f} s of that overhead is the >= 200 ms "
            "spacing between REST calls the spec asks for (diy-ota-and-tasmota.md §1.4)"
        )
        print()
        all_ok = single.ok
        if devices > 1:
            many = await run_batch(stack, devices, 1, timing)
            print_batch(f"{devices} devices at once", many)
            for line in concurrency_lines(single, many):
                print(line)
            print()
            all_ok = all_ok and many.ok
        if devices > 1 and 0 < failing < devices:
            mixed = await run_batch(stack, devices, 1 + devices, timing, failing)
            print_batch(f"{devices} devices at once, {failing} of them failing", mixed)
            for line in mixed_lines(single, mixed, failing):
                print(line)
            all_ok = all_ok and mixed.ok
    return 0 if all_ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run the benchmark in a fresh temporary config directory."""
    parser = base_arguments(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--failing",
        type=int,
        default=2,
        help="devices of a last N-at-once run that fail on purpose (default 2; 0 = no such run)",
    )
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if args.scale <= 0 or not 1 <= args.devices < MAX_DEVICES // 2:
        parser.error(f"--scale must be > 0 and 1 <= --devices < {MAX_DEVICES // 2}")
    if not 0 <= args.failing < max(args.devices, 1):
        parser.error("--failing must be >= 0 and below --devices")
    # Other processes' CPU load shows in every figure (they share our cores): say how much.
    print(f"load average before: {_load()} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="sonoff-ota-bench-") as config_dir:
        code = asyncio.run(bench(Path(config_dir), args.scale, args.devices, args.failing))
    print(f"load average after:  {_load()}")
    return code


def _load() -> str:
    """The 1, 5 and 15 minute load averages (read outside the event loop)."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
