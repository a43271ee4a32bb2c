"""Fuzz benchmark: >= 10 000 generated cases against every device-facing surface, while a
good DIY flash of a virtual Sonoff runs alongside.

Run from the repository root:

    .envs/ha-oldest/bin/python -m bench.fuzz [--seed N] [--examples-scale F] [--scale S]

The strategies and the per-surface cases (with their invariants) are tests/fuzz/strategies.py
and tests/fuzz/surfaces.py, the same ones the seeded tests in tests/fuzz/ run a small share of.
The server side is the integration's `FlashServer` on a HomeAssistant core object (the
bench/common.py harness): the TLS listener (fake cloud dispatch + WebSocket) and the plain
listener (token downloads, FinalStage `/ota/`, the DIY callback). HA's own HTTP server with its
middlewares is covered by tests/fuzz/test_ha_surfaces.py (phcc's TestServer), not here.
Clients (setup AP, DIY, Tasmota) talk to a hostile server on 127.0.0.1 that answers with
generated raw HTTP; the TXT-record and discovery parsers get generated records directly.

Per surface it prints: cases run, crashes (a raw exception, an ERROR/traceback in the log,
a 5xx or 401/403, a broken invariant), hangs (no answer within the surface's bound) and leaks
(connections from the fuzz still open on our listeners, WebSocket sessions the cloud still
holds, hostile-server handlers still running, a moment after the surface finished). At the
end: tasks and timers left in the loop, listeners still accepting, and whether every good
flash that ran meanwhile ended with exactly our image on the device.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
import logging
from pathlib import Path
import socket
import sys
import tempfile
import time
from typing import Any

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis.strategies import SearchStrategy

from custom_components.sonoff_ota.proto.image_names import FINAL_NAME
from tests.fuzz.driver import Tally, drive
from tests.fuzz.strategies import (
    device_reply,
    discovery_message,
    dispatch_body,
    diy_body,
    ota_result_body,
    setup_ap_body,
    setup_device_body,
    tasmota_body,
    tls_opening,
    txt_record,
    ws_script,
)
from tests.fuzz.surfaces import (
    FUZZ_FILES,
    HostileDevice,
    Target,
    advert_case,
    discovery_case,
    dispatch_case,
    diy_case,
    download_case,
    download_request,
    ota_result_case,
    running_target,
    setup_ap_case,
    tasmota_case,
    tls_case,
    ws_case,
)
from virtual_sonoff.images import tasmota_lite

from .common import (
    LOOPBACK,
    Stack,
    bench_settings,
    configure_logging,
    render_table,
    scaled_realistic,
    server_stack,
)
from .diy_flash import flash_one

DEFAULT_SEED = 14
SETTLE = 0.5
"""Seconds to let connections close before counting what is left."""


@dataclass(frozen=True, slots=True)
class Surface:
    """One surface: its strategy, its case, how many examples, how long one may take."""

    name: str
    strategy: SearchStrategy[Any]
    case: Callable[[Any], Awaitable[None]]
    examples: int
    within: float


async def _sync(check: Callable[[Any], None], value: Any) -> None:
    check(value)


def surfaces(
    target: Target, device: HostileDevice, session: aiohttp.ClientSession
) -> list[Surface]:
    """Every surface with its share of the cases."""
    tokens = (target.served.token, target.expired_token, target.bystander.token)
    size = len(FUZZ_FILES[FINAL_NAME])

    def checked(case: Callable[[Target, Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        return lambda value: target.checked(case(target, value))

    def client(case: Callable[..., Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        return lambda value: target.checked(case(device, session, value))

    def parser(check: Callable[[Any], None]) -> Callable[[Any], Awaitable[None]]:
        return lambda value: target.checked(_sync(check, value))

    return [
        Surface(
            "fake cloud: POST /dispatch/device", dispatch_body, checked(dispatch_case), 1000, 15
        ),
        Surface("fake cloud: broken TLS openings", tls_opening, checked(tls_case), 500, 10),
        Surface("fake cloud: WebSocket /api/ws", ws_script, checked(ws_case), 800, 15),
        Surface(
            "images + FinalStage: any method/path/Range",
            download_request(tokens, size, slow=True),
            checked(download_case),
            2500,
            15,
        ),
        Surface(
            "DIY callback: POST /api/device/otaFlash",
            ota_result_body,
            checked(ota_result_case),
            1000,
            10,
        ),
        Surface(
            "device replies: setup AP /device, /ap",
            device_reply(setup_device_body | setup_ap_body),
            client(setup_ap_case),
            800,
            10,
        ),
        Surface(
            "device replies: DIY /zeroconf/*", device_reply(diy_body), client(diy_case), 800, 15
        ),
        Surface(
            "device replies: Tasmota /cm", device_reply(tasmota_body), client(tasmota_case), 800, 10
        ),
        Surface("mDNS TXT records (parse_advert)", txt_record(), parser(advert_case), 1500, 5),
        Surface(
            "MQTT discovery (parse_discovery)", discovery_message(), parser(discovery_case), 1500, 5
        ),
    ]


def fuzz_connections(stack: Stack) -> int:
    """Connections from 127.0.0.1 (the fuzz; the good device sends from 127.0.0.10) still open."""
    count = 0
    for lease in (stack.server._tls, stack.server._plain):
        listener = lease.listener
        runner = listener._runner if listener is not None else None
        server = runner.server if runner is not None else None
        for handler in server.connections if server is not None else []:
            transport = handler.transport
            peer = transport.get_extra_info("peername") if transport is not None else None
            if peer and peer[0] == LOOPBACK:
                count += 1
    return count


def loop_residue(
    loop: asyncio.AbstractEventLoop, before: set[asyncio.Task[Any]]
) -> tuple[int, int]:
    """Tasks that were not there at the start, and live timers (private `_scheduled`, as phcc)."""
    tasks = {t for t in asyncio.all_tasks(loop) if not t.done()} - before
    current = asyncio.current_task()
    if current is not None:
        tasks.discard(current)
    scheduled = getattr(loop, "_scheduled", [])
    timers = sum(1 for handle in scheduled if not handle.cancelled())
    return len(tasks), timers


def port_accepts(port: int) -> bool:
    """True when something still listens on 127.0.0.1:`port` (blocking; in the executor)."""
    with socket.socket() as probe:
        probe.settimeout(1)
        try:
            probe.connect((LOOPBACK, port))
        except OSError:
            return False
        return True


@dataclass(slots=True)
class GoodFlashes:
    """Good DIY flashes run back to back while the fuzz runs."""

    done: int = 0
    failed: int = 0
    notes: tuple[str, ...] = ()


async def good_flashes(stack: Stack, stop: asyncio.Event, scale: float) -> GoodFlashes:
    """Flash virtual DIY Sonoffs one after another until `stop`; check each image."""
    result = GoodFlashes()
    timing = scaled_realistic(scale)
    image = tasmota_lite()
    index = 0
    while not stop.is_set() or index == 0:
        run = await flash_one(stack, 100 + index % 100, timing, image)
        index += 1
        if run.ok:
            result.done += 1
        else:
            result.failed += 1
            result.notes = (*result.notes, run.note)
    return result


async def bench(config_dir: Path, seed: int, examples_scale: float, scale: float) -> int:
    """Run every surface; print the table; 0 when nothing crashed, hung or leaked."""
    loop = asyncio.get_running_loop()
    print(
        f"Fuzz benchmark: Hypothesis seed {seed}, examples x {examples_scale:g}; good DIY flashes "
        f"alongside at realistic x {scale:g}"
    )
    rows: list[list[str]] = []
    totals = Tally()
    leaks_total = 0
    before_tasks = set(asyncio.all_tasks(loop))
    started = time.monotonic()
    async with server_stack(config_dir, bench_settings()) as stack:
        _, timers_before = loop_residue(loop, before_tasks)
        stop = asyncio.Event()
        async with (
            running_target(stack.hass, None, server=stack.server) as target,
            HostileDevice().running() as device,
            aiohttp.ClientSession() as session,
        ):
            ports = (target.tls_port, target.plain_port)
            flashing = asyncio.ensure_future(good_flashes(stack, stop, scale))
            for surface in surfaces(target, device, session):
                count = max(1, round(surface.examples * examples_scale))
                t0 = time.monotonic()
                tally = await drive(
                    surface.strategy,
                    surface.case,
                    max_examples=count,
                    within=surface.within,
                    seed=seed,
                )
                print(f"  {surface.name}: {tally.cases} cases", file=sys.stderr, flush=True)
                await asyncio.sleep(SETTLE)
                leaks = (
                    fuzz_connections(stack) + len(stack.server.cloud._sockets) + len(device._tasks)
                )
                leaks_total += leaks
                totals.cases += tally.cases
                totals.crashes += tally.crashes
                totals.hangs += tally.hangs
                totals.examples.extend(f"{surface.name}: {e}" for e in tally.examples)
                rows.append(
                    [
                        surface.name,
                        str(tally.cases),
                        str(tally.crashes),
                        str(tally.hangs),
                        str(leaks),
                        f"{time.monotonic() - t0:.1f}",
                    ]
                )
            stop.set()
            flashes = await flashing
            parser_rejections = target.watch.parser_rejections
        await asyncio.sleep(SETTLE)
        still_listening = [p for p in ports if await loop.run_in_executor(None, port_accepts, p)]
        tasks_left, timers_after = loop_residue(loop, before_tasks)
    elapsed = time.monotonic() - started
    rows.append(
        [
            "total",
            str(totals.cases),
            str(totals.crashes),
            str(totals.hangs),
            str(leaks_total),
            f"{elapsed:.1f}",
        ]
    )
    print(render_table(["surface", "cases", "crashes", "hangs", "leaks", "seconds"], rows))
    print()
    timer_growth = max(0, timers_after - timers_before)
    print(
        f"after the run: {tasks_left} tasks left, {timer_growth} more live timers than before, "
        f"listeners still accepting: {len(still_listening)}"
    )
    print(
        "requests aiohttp's own parser refused (400) and logged at ERROR, not counted as "
        f"crashes (aiohttp 3.12+, see bench/README.md): {parser_rejections}"
    )
    print(
        f"good DIY flashes alongside: {flashes.done} done with exactly our image, "
        f"{flashes.failed} failed {list(flashes.notes)[:3]}"
    )
    for example in totals.examples[:20]:
        print("  " + example)
    clean = (
        totals.crashes == 0
        and totals.hangs == 0
        and leaks_total == 0
        and not still_listening
        and tasks_left == 0
        and flashes.failed == 0
        and flashes.done > 0
    )
    print("target (0 crashes, 0 hangs, 0 leaks, good flash done):", "met" if clean else "MISSED")
    return 0 if clean else 1


def _not_a_parser_rejection(record: logging.LogRecord) -> bool:
    """Keep aiohttp's tracebacks for requests its parser refused off the console (counted)."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (record.name == "aiohttp.server" and isinstance(exc, HttpProcessingError))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run in a fresh temporary config directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="Hypothesis seed (default 14)"
    )
    parser.add_argument(
        "--examples-scale",
        type=float,
        default=1.0,
        help="multiply every surface's example count (default 1: 11 200 cases)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=0.1,
        help="device-imposed delays of the good flashes (default 0.1)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    # Hypothesis' own chatter (e.g. "unreliable test timings") is not a finding.
    logging.getLogger("hypothesis").setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_a_parser_rejection)
    if not args.verbose:
        # Our warnings name each bad input (one line per case): thousands here, by design.
        # ERROR records and tracebacks still reach the crash counter.
        logging.getLogger("custom_components").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="sonoff-ota-fuzz-") as config_dir:
        return asyncio.run(bench(Path(config_dir), args.seed, args.examples_scale, args.scale))


if __name__ == "__main__":
    sys.exit(main())
