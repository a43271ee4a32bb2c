"""Leaks and idle cost of the integration inside a real Home Assistant (prints figures).

One HA (the core object of pytest-homeassistant-custom-component's
`async_test_home_assistant`, used outside pytest: real config entries, real
`http`, `mqtt` and `tasmota` integrations, a real Mosquitto) gets the Sonoff OTA
entry. Then, through the config flow as the UI drives it, it runs:

- a DIY flash and a setup-mode flash to the end (Tasmota in HA);
- setup-mode flashes aborted while waiting for the access point, mid-download and
  in FinalStage; a DIY flash aborted mid-download;
- a setup-mode flash that times out (no access point) and is cancelled;
- `--flashes` more DIY flashes to the end, for the RSS growth. Those devices run
  in a child process (`bench.device_host`): a virtual Sonoff's 1 MiB flash and
  the images it holds would otherwise count in HA's RSS, which a real device's
  do not.

After every outcome it counts what of ours is left (listening sockets of this
process, tasks running our code, timers calling it, private listener leases)
and threads, file descriptors and RSS. Idle cost: the integration's import time
and `async_setup_entry` time in that HA, and no listener, task or timer of ours
while no flash runs. Everything talks to 127.0.0.1 only.

    .envs/ha-oldest/bin/python -m bench.leaks [--flashes 20] [-v]
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
from contextlib import AsyncExitStack
from dataclasses import replace
import gc
import importlib
import logging
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from homeassistant import config_entries, loader
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.setup import async_setup_component

# Nothing of ours (bench.common imports the integration) before the import timing.

DOMAIN = "sonoff_ota"
RSS_GROWTH_TARGET_MB = 5.0
IDLE_TARGET_MS = 50.0
OUR_MODULES = (
    "custom_components.sonoff_ota",
    "custom_components.sonoff_ota.config_flow",
    "custom_components.sonoff_ota.sensor",
    "custom_components.sonoff_ota.update",
    "custom_components.sonoff_ota.button",
    "custom_components.sonoff_ota.diagnostics",
    "custom_components.sonoff_ota.repairs",
)
"""What HA imports of ours: the package, its config flow and its platforms."""
HA_MODULES = (
    "homeassistant.bootstrap",
    "homeassistant.components.http",
    "homeassistant.components.mqtt",
    "homeassistant.components.network",
    "homeassistant.components.file_upload",
    "homeassistant.components.diagnostics",
    "homeassistant.components.repairs",
    "homeassistant.components.button",
    "homeassistant.components.sensor",
    "homeassistant.components.update",
    "homeassistant.components.zeroconf",
    "homeassistant.helpers.service_info.zeroconf",
)
"""What a running HA has loaded before it imports us (not counted as ours).

First `homeassistant.bootstrap`, which started that HA (`python -m homeassistant` runs
`runner`, which runs `bootstrap`): with it come the helpers HA itself uses, such as
`helpers.aiohttp_client`, which would otherwise be timed as ours.

Among them the entity integrations of our three platforms (button, sensor, update): HA's
own, shared by every integration with such entities (`const.BASE_PLATFORMS`).
"""
HA_SET_UP = ("file_upload", "network", "button", "sensor", "update")
"""What a running HA has set up before our entry (our dependencies, our platforms' entity
integrations): set up first, so `async_setup_entry` times our set-up, not HA's first one."""
BOUND = 120.0
"""Seconds any one scenario may take before the bench gives up on it."""


def _warm_bytecode(cache: Path) -> None:
    """Compile our sources first, as an installed HA has them (`__pycache__`).

    This environment sets PYTHONDONTWRITEBYTECODE, so every import would compile
    from source: the bytecode goes to a private `sys.pycache_prefix` instead.
    """
    sys.dont_write_bytecode = False
    sys.pycache_prefix = str(cache)
    package = Path(__file__).resolve().parent.parent / "custom_components"
    compileall.compile_dir(package, quiet=1)


def _timed_imports() -> list[tuple[str, float]]:
    """Import our modules one by one, in HA's executor as its loader does; ms each."""
    for name in HA_MODULES:
        importlib.import_module(name)
    timings = []
    for name in OUR_MODULES:
        if name in sys.modules:
            raise RuntimeError(f"{name} was imported before the measurement")
        start = time.perf_counter()
        importlib.import_module(name)
        timings.append((name, (time.perf_counter() - start) * 1000))
    return timings


LATER_MODULES = (
    ("the eligibility table (set-up of an entry that knows a device)", ("proto.eligibility",)),
    (
        "the Tasmota upgrade stack (a Tasmota device to upgrade, a release lookup)",
        ("tasmota_upgrade_run", "tasmota_firmware_update"),
    ),
)
"""What loads after start-up, in HA's executor, the first time it is needed: not part of
the idle cost of an HA without devices, printed next to it (`flash_stack`, `known_devices`)."""


def _timed_later_imports() -> list[tuple[str, float]]:
    """Import `LATER_MODULES` as their loaders do; ms each (none may be loaded yet)."""
    timings = []
    for label, names in LATER_MODULES:
        start = time.perf_counter()
        for name in names:
            module = f"{OUR_MODULES[0]}.{name}"
            if module in sys.modules:
                raise RuntimeError(f"{module} was imported before it was needed")
            importlib.import_module(module)
        timings.append((label, (time.perf_counter() - start) * 1000))
    return timings


_FRESH_IMPORT = """
import compileall, importlib, sys, time
sys.dont_write_bytecode = False
sys.pycache_prefix = sys.argv[1]
compileall.compile_dir(sys.argv[2], quiet=1)
for name in sys.argv[3].split(","):
    importlib.import_module(name)
start = time.perf_counter()
for name in sys.argv[4].split(","):
    importlib.import_module(name)
print((time.perf_counter() - start) * 1000)
"""


def fresh_import_ms(cache: Path, runs: int) -> list[float]:
    """Our imports in `runs` fresh interpreters (same premise; less disturbed by load)."""
    root = Path(__file__).resolve().parent.parent
    figures = []
    for _ in range(runs):
        done = subprocess.run(  # noqa: S603 - our own interpreter and code
            [
                sys.executable,
                "-c",
                _FRESH_IMPORT,
                str(cache),
                str(root / "custom_components"),
                ",".join(HA_MODULES),
                ",".join(OUR_MODULES),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
            timeout=BOUND,
        )
        figures.append(float(done.stdout.strip().splitlines()[-1]))
    return figures


class Bench:
    """One HA, its settings, and the rows printed at the end."""

    def __init__(self, hass: HomeAssistant) -> None:
        self.hass = hass
        self.rows: list[list[str]] = []
        self.baseline: Any = None
        self.failures: list[str] = []

    async def record(self, label: str, ok: bool) -> None:
        """Count what is left after one outcome and compare with the baseline."""
        from bench.common import read_memory  # noqa: PLC0415
        from tests.leak_check import snapshot  # noqa: PLC0415

        await self.hass.async_block_till_done(wait_background_tasks=True)
        gc.collect()
        now = await snapshot(self.hass)
        leaks = now.ours_vs(self.baseline)
        memory = await self.hass.async_add_executor_job(read_memory)
        if leaks or not ok:
            self.failures.append(f"{label}: {'flash failed ' if not ok else ''}{leaks}")
        self.rows.append(
            [
                label,
                "ok" if ok else "FAILED",
                str(len(now.listening - self.baseline.listening)),
                str(len(now.tasks)),
                str(len(now.timers)),
                str(len(now.listeners)),
                f"{now.threads - self.baseline.threads:+d}",
                f"{now.fds - self.baseline.fds:+d}",
                f"{(memory.rss_kib - self.start_rss_kib) / 1024:+.1f}",
            ]
        )

    start_rss_kib = 0


async def _flow_result(hass: HomeAssistant, flow_id: str) -> dict[str, Any]:
    from tests.harness import flow_result  # noqa: PLC0415

    await hass.async_block_till_done(wait_background_tasks=True)
    return await flow_result(hass, flow_id)


async def _start_setup_mode(hass: HomeAssistant) -> dict[str, Any]:
    from tests.harness import LOOPBACK  # noqa: PLC0415

    result: Any = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_USER}
    )
    assert result["type"] is FlowResultType.MENU, result  # the entry holds the Wi-Fi
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"next_step_id": "setup_mode"}
    )
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"callback_host": LOOPBACK}
    )
    assert result["type"] is FlowResultType.SHOW_PROGRESS, result
    return dict(result)


async def setup_mode_flash(bench: Bench, settings: Any, abort_at: Any = None) -> bool:
    """One setup-mode flash (to the end, or aborted when the device reaches `abort_at`)."""
    from tests.harness import LOOPBACK, tasmota_ap_port  # noqa: PLC0415
    from virtual_sonoff.lifecycle import TasmotaPlan, VirtualSonoff  # noqa: PLC0415
    from virtual_sonoff.profile import Timing  # noqa: PLC0415
    from virtual_sonoff.setup_mode import (  # noqa: PLC0415
        SetupModeConfig,
        SetupModeDevice,
        Stage as DeviceStage,
    )

    hass = bench.hass
    ap_port = int(settings.setup_ap_url.rsplit(":", 1)[1])
    config = SetupModeConfig(
        finalstage_server=(LOOPBACK, settings.finalstage_port),
        ap_port=ap_port,
    )
    if abort_at is not None:  # slow the download down: there is time to abort it
        config = replace(config, timing=Timing(chunk_delay=0.02))
    sonoff = VirtualSonoff(
        "setup", setup=config, tasmota_plan=TasmotaPlan(ap_port=tasmota_ap_port(settings))
    )
    async with sonoff:
        device = sonoff.ewelink
        assert isinstance(device, SetupModeDevice)
        if abort_at is DeviceStage.AP_MODE:
            await device.stop()  # the flow waits for an access point that never answers
        result = await _start_setup_mode(hass)
        if abort_at is None:
            final = await _flow_result(hass, result["flow_id"])
            return final["type"] is FlowResultType.ABORT and final["reason"] == "flash_successful"
        if abort_at is not DeviceStage.AP_MODE:
            await device.wait_for_stage(abort_at)
        await device.stop()
        hass.config_entries.flow.async_abort(result["flow_id"])
    return True


async def setup_mode_timeout(bench: Bench) -> bool:
    """No access point ever answers: the stage times out, the user cancels."""
    hass = bench.hass
    result = await _start_setup_mode(hass)
    final = await _flow_result(hass, result["flow_id"])
    if final.get("step_id") != "stage_timeout":
        return False
    cancelled: Any = await hass.config_entries.flow.async_configure(
        final["flow_id"], {"next_step_id": "cancel"}
    )
    return bool(cancelled["reason"] == "cancelled")


async def diy_flash(bench: Bench, settings: Any, number: int, *, abort: bool = False) -> bool:
    """One DIY flash of a new device in this process (to the end, or aborted mid-download)."""
    from bench.device_host import diy_config  # noqa: PLC0415
    from tests.harness import tasmota_ap_port  # noqa: PLC0415
    from virtual_sonoff.diy import DiyDevice, DiyStage  # noqa: PLC0415
    from virtual_sonoff.lifecycle import TasmotaPlan, VirtualSonoff  # noqa: PLC0415
    from virtual_sonoff.profile import Timing  # noqa: PLC0415

    config = diy_config(number)
    if abort:
        config = replace(config, timing=Timing(chunk_delay=0.02))
    sonoff = VirtualSonoff(
        "diy", diy=config, tasmota_plan=TasmotaPlan(ap_port=tasmota_ap_port(settings))
    )
    async with sonoff:
        device = sonoff.ewelink
        assert isinstance(device, DiyDevice)
        flow_id = await _start_diy_flash(bench.hass, device)
        if abort:
            await device.wait_for_stage(DiyStage.DOWNLOADING, BOUND)
            await device.stop()
            bench.hass.config_entries.flow.async_abort(flow_id)
            return True
        return await _flashed(bench.hass, flow_id)


async def hosted_diy_flash(bench: Bench, settings: Any, host: Any, number: int) -> bool:
    """One DIY flash to the end of a new device that runs in the device host process."""
    from tests.harness import tasmota_ap_port  # noqa: PLC0415

    device = await host.diy(number, tasmota_ap_port(settings))
    try:
        flow_id = await _start_diy_flash(bench.hass, device)
        done = await _flashed(bench.hass, flow_id)
    finally:
        flashed = await device.stop()
    return done and bool(flashed)


async def _start_diy_flash(hass: HomeAssistant, device: Any) -> str:
    """Discover the device as HA's zeroconf would and confirm the flash; the flow's id."""
    from tests.harness import discover  # noqa: PLC0415

    result = await discover(hass, device)
    assert result["step_id"] == "diy_confirm", result
    started: Any = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    assert started["type"] is FlowResultType.SHOW_PROGRESS, started
    return str(result["flow_id"])


async def _flashed(hass: HomeAssistant, flow_id: str) -> bool:
    """Wait for the flow's end; True when it ended with the device flashed."""
    final = await _flow_result(hass, flow_id)
    return final["type"] is FlowResultType.ABORT and final["reason"] == "flash_successful"


async def run(args: argparse.Namespace) -> int:
    """Set up, measure, flash, print; 1 when a target is missed or a flash failed."""
    from pytest_homeassistant_custom_component.common import (  # noqa: PLC0415
        MockConfigEntry,
        async_test_home_assistant,
    )

    with tempfile.TemporaryDirectory() as tmp:
        # MQTT reads the YAML configuration when its entry is set up: an empty one.
        (Path(tmp) / "configuration.yaml").write_text("{}\n", encoding="utf-8")
        async with async_test_home_assistant(config_dir=tmp) as hass, AsyncExitStack() as stack:
            hass.data.pop(loader.DATA_CUSTOM_COMPONENTS, None)  # find ours in custom_components/
            from homeassistant.components.mqtt import (  # noqa: PLC0415
                config_flow as mqtt_config_flow,
            )

            from virtual_sonoff.mosquitto import MosquittoBroker  # noqa: PLC0415

            broker = await stack.enter_async_context(MosquittoBroker(Path(tmp) / "mosquitto"))
            assert await async_setup_component(hass, "http", {})
            mqtt = MockConfigEntry(
                domain="mqtt",
                data={"broker": broker.host, "port": broker.port},
                version=mqtt_config_flow.FlowHandler.VERSION,
                minor_version=mqtt_config_flow.FlowHandler.MINOR_VERSION,
            )
            mqtt.add_to_hass(hass)
            assert await hass.config_entries.async_setup(mqtt.entry_id)
            await hass.async_block_till_done()

            # -- idle cost: imports, then async_setup_entry -------------------------------
            await hass.async_add_executor_job(_warm_bytecode, Path(tmp) / "pycache")
            imports = await hass.async_add_executor_job(_timed_imports)
            fresh = await hass.async_add_executor_job(
                fresh_import_ms, Path(tmp) / "pycache", args.import_runs
            )
            from bench.common import read_memory, render_table, verdict  # noqa: PLC0415
            from tests.harness import WIFI, install_settings, local_firmware  # noqa: PLC0415
            from tests.leak_check import snapshot  # noqa: PLC0415

            firmware = await stack.enter_async_context(local_firmware())
            from tests.harness import LOOPBACK, free_port  # noqa: PLC0415

            settings = install_settings(
                hass, firmware, setup_ap_url=f"http://{LOOPBACK}:{free_port()}"
            )
            for domain in HA_SET_UP:
                assert await async_setup_component(hass, domain, {})
            await hass.async_block_till_done()
            before_entry = await snapshot(hass)
            entry = MockConfigEntry(domain=DOMAIN, unique_id=DOMAIN, data=dict(WIFI))
            entry.add_to_hass(hass)
            start = time.perf_counter()
            assert await hass.config_entries.async_setup(entry.entry_id)
            setup_ms = (time.perf_counter() - start) * 1000
            await hass.async_block_till_done(wait_background_tasks=True)
            idle = await snapshot(hass)
            idle_leaks = idle.ours_vs(before_entry)
            later = await hass.async_add_executor_job(_timed_later_imports)

            # -- outcomes -------------------------------------------------------------------
            from virtual_sonoff.setup_mode import Stage as DeviceStage  # noqa: PLC0415

            bench = Bench(hass)
            bench.baseline = idle
            bench.start_rss_kib = (await hass.async_add_executor_job(read_memory)).rss_kib
            scenarios: list[tuple[str, Any]] = [
                ("DIY flash to the end", lambda: diy_flash(bench, settings, 1)),
                ("setup-mode flash to the end", lambda: setup_mode_flash(bench, settings)),
                (
                    "setup mode aborted: waiting for the AP",
                    lambda: setup_mode_flash(bench, settings, DeviceStage.AP_MODE),
                ),
                (
                    "setup mode aborted: downloading",
                    lambda: setup_mode_flash(bench, settings, DeviceStage.DOWNLOADING),
                ),
                (
                    "setup mode aborted: FinalStage",
                    lambda: setup_mode_flash(bench, settings, DeviceStage.FINALSTAGE),
                ),
                ("DIY aborted: downloading", lambda: diy_flash(bench, settings, 2, abort=True)),
                ("setup mode timed out, cancelled", lambda: setup_mode_timeout(bench)),
            ]
            for label, scenario in scenarios:
                try:
                    async with asyncio.timeout(BOUND):
                        ok = await scenario()
                except Exception as err:  # a bench reports and goes on
                    print(f"{label}: {type(err).__name__}: {err}")
                    ok = False
                await bench.record(label, ok)

            from bench.device_host import DeviceHost  # noqa: PLC0415

            # The devices of the RSS figure run in a process of their own: HA's RSS only.
            host = await stack.enter_async_context(DeviceHost())
            async with asyncio.timeout(BOUND):  # the host's start-up, before the baseline
                ok = await hosted_diy_flash(bench, settings, host, 99)
            if not ok:
                bench.failures.append("DIY flash of a device in the device host failed")
            await hass.async_block_till_done(wait_background_tasks=True)
            gc.collect()
            rss_before = (await hass.async_add_executor_job(read_memory)).rss_kib
            for number in range(args.flashes):
                async with asyncio.timeout(BOUND):
                    ok = await hosted_diy_flash(bench, settings, host, 100 + number)
                if not ok:
                    bench.failures.append(f"DIY flash {number + 1} of {args.flashes} failed")
            await hass.async_block_till_done(wait_background_tasks=True)
            gc.collect()
            rss_after = (await hass.async_add_executor_job(read_memory)).rss_kib
            await bench.record(f"after {args.flashes} more DIY flashes", True)

            from tests.harness import stop_tasmota_then_drain  # noqa: PLC0415

            await hass.config_entries.async_unload(entry.entry_id)
            await stop_tasmota_then_drain(hass)
            await hass.config_entries.async_unload(mqtt.entry_id)
            await hass.async_block_till_done(wait_background_tasks=True)

    import_ms = sum(ms for _, ms in imports)
    growth_mb = (rss_after - rss_before) * 1024 / 1_000_000
    print("Idle cost (in this HA; HA's own modules imported first)")
    for name, ms in imports:
        print(f"  import {name:45s} {ms:7.1f} ms")
    print(f"  imports together                                    {import_ms:7.1f} ms")
    print(
        f"  the same imports in {len(fresh)} fresh interpreters: min {min(fresh):.1f} ms, "
        f"median {statistics.median(fresh):.1f} ms (the machine's load shows in the spread)"
    )
    print(f"  async_setup_entry (with its platforms)              {setup_ms:7.1f} ms")
    print(f"    (HA's {', '.join(HA_SET_UP)} set up before, as in a running HA)")
    idle_total = import_ms + setup_ms
    print(
        f"  together {idle_total:.1f} ms   target < {IDLE_TARGET_MS:g} ms: "
        f"{verdict(idle_total < IDLE_TARGET_MS)}"
    )
    print("  loaded later, in HA's executor, when first needed (not in the figure above):")
    for label, ms in later:
        print(f"    {label:71s} {ms:5.1f} ms")
    print(
        f"  while idle: listeners {list(idle.listeners)}, tasks {list(idle.tasks)}, "
        f"timers {list(idle.timers)}, new listening sockets "
        f"{sorted(idle.listening - before_entry.listening)}: "
        f"{verdict(not idle_leaks)}"
    )
    print()
    print("Left after each outcome (vs. the idle baseline)")
    print(
        render_table(
            (
                "outcome",
                "flash",
                "new listening",
                "our tasks",
                "our timers",
                "our leases",
                "threads",
                "fds",
                "RSS MiB",
            ),
            bench.rows,
        )
    )
    print()
    print(
        f"RSS growth over {args.flashes} DIY flashes: {growth_mb:.2f} MB "
        f"({rss_before} -> {rss_after} KiB)   target < {RSS_GROWTH_TARGET_MB:g} MB: "
        f"{verdict(growth_mb < RSS_GROWTH_TARGET_MB)}"
    )
    for failure in bench.failures:
        print(f"LEAK/FAILURE: {failure}")
    missed = bool(bench.failures or idle_leaks) or growth_mb >= RSS_GROWTH_TARGET_MB
    return 1 if missed else 0


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flashes", type=int, default=20, help="DIY flashes for the RSS figure")
    parser.add_argument(
        "--import-runs", type=int, default=5, help="fresh interpreters timing the imports"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
