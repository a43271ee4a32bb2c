"""The host's Wi-Fi hop for a setup-mode flash, from this entry's settings inside HA.

`Settings.wifi_hop` names the backend (`auto` | `networkmanager` | `supervisor` | `manual`);
`proto.host_wifi_choice` builds it, with HA's shared aiohttp session for the Supervisor.
The backends (dbus-fast for NetworkManager) load only when a hop may use them, in the
executor: not at HA's start, where they would cost every user import time.
Facts: shared/spec/host-wifi-hopping.md §0 (bottom line), §1.7 (Supervisor from HA), §2.1
(D-Bus).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from homeassistant.core import HomeAssistant
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.importlib import async_import_module

from .proto.host_wifi_hop import WifiHop
from .proto.host_wifi_types import HopPlan
from .proto.wifi import WifiSettings
from .settings import Settings

if TYPE_CHECKING:
    from .proto.host_wifi_choice import HopOptions


async def async_prepare_hop(
    hass: HomeAssistant,
    settings: Settings,
    *,
    home_wifi: WifiSettings | None = None,
    confirm_wifi_only: bool = False,
) -> tuple[WifiHop, HopPlan]:
    """Create and `prepare()` the hop `settings.wifi_hop` asks for (raises `HopError`).

    In `auto` mode a backend that cannot hop on this host falls back to manual. The caller
    owns the returned hop: `restore_shielded()` it when done (it may hold a D-Bus connection).
    """
    choice = await async_import_module(hass, f"{__package__}.proto.host_wifi_choice")
    hop_options: type[HopOptions] = choice.HopOptions
    options = hop_options(
        nm_bus_address=settings.nm_bus_address,
        supervisor_url=settings.supervisor_url,
        interface=settings.wifi_interface,
        confirm_wifi_only=confirm_wifi_only,
        home_wifi=(home_wifi.ssid, home_wifi.password) if home_wifi is not None else None,
    )
    prepared: tuple[WifiHop, HopPlan] = await choice.prepare_hop(
        settings.wifi_hop, options, session=functools.partial(async_get_clientsession, hass)
    )
    return prepared
