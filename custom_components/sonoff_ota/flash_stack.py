"""The flash machinery, imported the first time something flashes, off the event loop.

HA imports the integration, its config flow, repairs, diagnostics and platforms at
start-up, when nothing is being flashed. The modules that flash (the runs, the
listeners and servers they open, the protocol code under them) weigh most of the
import time, so they are imported only when a flow, a dashboard action, a repair or
a recovery is about to use them, in HA's import executor. After
`async_load_flash_stack`, a function-local `from .diy_run import DiyRun` is a lookup in
`sys.modules`, which is why those local imports are fine in the event loop.
"""

from __future__ import annotations

from homeassistant.core import HomeAssistant
from homeassistant.helpers.importlib import async_import_module

FLASH_MODULES: tuple[str, ...] = (
    "diy_run",
    "setup_mode_run",
    "handoff_run",
    "flash_server",
    "flash_recovery",
    "setup_mode_many",
)
"""Every module a flash, a hand-off or a recovery needs (with theirs)."""
UPGRADE_MODULES: tuple[str, ...] = ("tasmota_upgrade_run", "tasmota_firmware_update")
"""The Tasmota upgrade (lite -> full over Tasmota's own OTA) and its entity, with the
release lookup and the build choice they import: loaded the first time a "Tasmota
firmware" entity is added, a "Firmware" entity looks the newest release up, the options
form opens, diagnostics are downloaded, or a flash runs (its flow ends on the upgrade)."""

DEVICE_MODULES: tuple[str, ...] = ("proto.eligibility",)
"""The eligibility table every known device's entities ask: loaded at the set-up of an
entry that knows a device (`known_devices.async_load_eligibility`); the flash stack
imports it too."""


async def async_load_flash_stack(hass: HomeAssistant) -> None:
    """Import `FLASH_MODULES`, then the upgrade stack, in HA's executor (at once when loaded)."""
    await _async_import(hass, FLASH_MODULES)
    await async_load_upgrade_stack(hass)


async def async_load_upgrade_stack(hass: HomeAssistant) -> None:
    """Import `UPGRADE_MODULES` in HA's executor (at once when they are loaded already)."""
    await _async_import(hass, UPGRADE_MODULES)


async def async_load_device_modules(hass: HomeAssistant) -> None:
    """Import `DEVICE_MODULES` in HA's executor (at once when they are loaded already)."""
    await _async_import(hass, DEVICE_MODULES)


async def _async_import(hass: HomeAssistant, names: tuple[str, ...]) -> None:
    for name in names:
        await async_import_module(hass, f"{__package__}.{name}")
