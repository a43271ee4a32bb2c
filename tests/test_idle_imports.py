"""What Home Assistant imports of ours at start-up leaves the flash stack unloaded.

HA imports the package, its config flow, platforms, diagnostics and repairs when it
starts (`bench.leaks.OUR_MODULES`), while nothing is flashed. The flash stack (the runs,
their listeners and servers, the protocol code under them) is imported only by
`flash_stack.async_load_flash_stack`, in HA's executor, right before a flow, the
dashboard, a repair or a recovery uses it; after that, the function-local imports of
those modules are lookups in `sys.modules`. A module-level import of a run in, say,
`config_flow` puts the whole stack back into HA's start-up: the first test fails.

The tests import in a fresh interpreter (this one's executable), so nothing this
test session imported counts. Nothing is mocked.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
import json
from pathlib import Path
import subprocess
import sys

from bench.leaks import HA_MODULES, LATER_MODULES, OUR_MODULES
from custom_components.sonoff_ota.flash_stack import DEVICE_MODULES, FLASH_MODULES, UPGRADE_MODULES

PACKAGE = "custom_components.sonoff_ota"
ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "custom_components" / "sonoff_ota"

ONLY_FLASHING: tuple[str, ...] = (
    *FLASH_MODULES,
    "host_wifi_run",
    "views",
    "proto.diy_flasher",
    "proto.fake_cloud",
    "proto.firmware_cache",
    "proto.firmware_image",
    "proto.firmware_store",
    "proto.image_server",
    "proto.legacy_tls",
    "proto.setup_ap",
    "proto.setup_mode_flasher",
    "proto.setup_mode_wifi",
    "proto.tasmota_client",
    "proto.tasmota_handoff",
    "proto.tasmota_handoff_types",
    "proto.tasmota_settings",
)
"""Our modules that only a flash, a hand-off or a recovery uses (with the stack's own)."""

ONLY_UPGRADING: tuple[str, ...] = (
    *UPGRADE_MODULES,
    "proto.tasmota_releases",
    "proto.tasmota_upgrade",
    "proto.tasmota_upgrade_stages",
)
"""Our modules that only the Tasmota upgrade, its entity and the release lookup use:
loaded when a "Tasmota firmware" entity or a release is first needed (none at start-up
without devices)."""

ONLY_WITH_DEVICES = DEVICE_MODULES
"""Loaded at set-up only when the entry knows a device (`known_devices.async_load_eligibility`),
or with the flash stack."""

_IMPORT_GROUPS = """
import importlib, json, sys
for group in sys.argv[1:]:
    for name in group.split(","):
        importlib.import_module(name)
"""
_LOADED = _IMPORT_GROUPS + "print(json.dumps(sorted(sys.modules)))\n"


def _printed_after(script: str, *args: str) -> set[str]:
    """The names a fresh interpreter prints (a JSON list) once `script` ran with `args`."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def loaded_after(*groups: tuple[str, ...]) -> set[str]:
    """`sys.modules` of a fresh interpreter once it imported `groups`, one after another."""
    return _printed_after(_LOADED, *(",".join(group) for group in groups))


def test_start_up_imports_no_flash_module() -> None:
    loaded = loaded_after(HA_MODULES, OUR_MODULES)
    assert set(OUR_MODULES) <= loaded  # the subprocess imported what HA imports
    leaked = sorted({f"{PACKAGE}.{name}" for name in ONLY_FLASHING} & loaded)
    assert not leaked, "imported at start-up, though only flashes use them: " + ", ".join(leaked)


def test_start_up_imports_no_upgrade_module() -> None:
    loaded = loaded_after(HA_MODULES, OUR_MODULES)
    leaked = sorted(
        {f"{PACKAGE}.{name}" for name in (*ONLY_UPGRADING, *ONLY_WITH_DEVICES)} & loaded
    )
    assert not leaked, "imported at start-up without devices: " + ", ".join(leaked)


_DATACLASSES = (
    _IMPORT_GROUPS
    + """
print(json.dumps(sorted(
    f"{name}.{cls.__qualname__}"
    for name, module in list(sys.modules.items())
    if name.startswith("custom_components.sonoff_ota")
    for cls in vars(module).values()
    if isinstance(cls, type) and cls.__module__ == name and "__dataclass_fields__" in vars(cls)
)))
"""
)


def test_start_up_creates_no_dataclass() -> None:
    """Creating a dataclass costs about a millisecond each (it compiles its methods);
    14 of them were 45 % of the integration's import time. The records HA imports with
    the integration are NamedTuples or slotted classes (ARCHITECTURE.md, "What loads when")."""
    created = _printed_after(_DATACLASSES, ",".join(HA_MODULES), ",".join(OUR_MODULES))
    assert not created, "dataclasses created at start-up: " + ", ".join(sorted(created))


_IN_HA = """
import asyncio, json, sys, tempfile
from types import SimpleNamespace
from homeassistant.core import HomeAssistant
from custom_components.sonoff_ota.flash_stack import async_load_flash_stack
from custom_components.sonoff_ota.known_devices import async_load_eligibility

async def main(what):
    with tempfile.TemporaryDirectory() as config_dir:
        hass = HomeAssistant(config_dir)
        if what == "flash_stack":
            await async_load_flash_stack(hass)
        else:
            devices = {"1000abcdef": {"path": "diy"}} if what == "entry_with_device" else {}
            await async_load_eligibility(hass, SimpleNamespace(data={"devices": devices}))
        hass.import_executor.shutdown()
asyncio.run(main(sys.argv[1]))
print(json.dumps(sorted(sys.modules)))
"""


def loaded_in_ha(what: str) -> set[str]:
    """`sys.modules` of a fresh interpreter after one of our loaders ran in a real
    (not started) `HomeAssistant` with its import executor."""
    return _printed_after(_IN_HA, what)


def test_flash_stack_brings_the_upgrade_stack() -> None:
    """A flash's flow ends on the upgrade offer: `async_load_flash_stack` loads both
    (and the eligibility table, which the flows' records ask)."""
    loaded = loaded_in_ha("flash_stack")
    wanted = {f"{PACKAGE}.{name}" for name in (*FLASH_MODULES, *ONLY_UPGRADING, *ONLY_WITH_DEVICES)}
    assert not wanted - loaded, sorted(wanted - loaded)


def test_bench_times_what_loads_later() -> None:
    """bench/leaks.py names the deferred modules as strings (importing ours would count)."""
    assert [names for _, names in LATER_MODULES] == [ONLY_WITH_DEVICES, UPGRADE_MODULES]


def test_eligibility_loads_with_the_first_device() -> None:
    eligibility = f"{PACKAGE}.proto.eligibility"
    assert eligibility not in loaded_in_ha("entry_without_devices")
    assert eligibility in loaded_in_ha("entry_with_device")


def _local_imports(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, module of ours) of every import inside a function of `path`."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = module.split(".")
            if not is_package:
                base.pop()
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
            yield node.lineno, target
            if node.module is None:  # `from . import sub`
                yield from ((node.lineno, f"{target}.{alias.name}") for alias in node.names)


def test_local_imports_are_loaded_modules() -> None:
    """Every function-local import of ours finds its module loaded (start-up or the stack).

    Such an import runs in the event loop: a module that is not loaded yet would be
    read and executed there. The only other loads, in HA's executor, are the host
    Wi-Fi backends (`host_wifi_run`). `async_load_flash_stack` loads the upgrade stack
    too.
    """
    loaded = loaded_after(
        HA_MODULES,
        OUR_MODULES,
        tuple(f"{PACKAGE}.{name}" for name in (*FLASH_MODULES, *UPGRADE_MODULES)),
    )
    ours = {
        ".".join([PACKAGE, *path.relative_to(SOURCES).with_suffix("").parts]).removesuffix(
            ".__init__"
        ): path
        for path in sorted(SOURCES.rglob("*.py"))
    }
    missing = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for module, path in ours.items()
        if module in loaded  # a module only the executor loads may import its own
        for line, target in _local_imports(path, module)
        if target in ours and target not in loaded
    ]
    assert not missing, "function-local imports of modules nothing loaded:\n" + "\n".join(missing)
