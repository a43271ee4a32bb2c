"""Which backend moves this host's Wi-Fi during a setup-mode flash, chosen inside HA.

`Settings.wifi_hop` picks it: `auto` = NetworkManager over the system D-Bus when reachable,
else the Supervisor when `SUPERVISOR`/`SUPERVISOR_TOKEN` are set (through HA's shared aiohttp
session), else manual (the user hops; the progress texts tell them). Facts:
shared/spec/host-wifi-hopping.md §0 (bottom line), §1.7 (Supervisor from HA), §2.1 (D-Bus).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from homeassistant.core import HomeAssistant
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.importlib import async_import_module

from .proto.host_wifi import (
    HopBackend,
    HopError,
    HopErrorCode,
    HopPlan,
    ManualHop,
    WifiHop,
    select_backend,
)
from .proto.wifi import WifiSettings
from .settings import Settings

if TYPE_CHECKING:
    from .proto.host_wifi_nm import NmWifiHop
    from .proto.host_wifi_supervisor import SupervisorWifiHop

_FALLBACK_TO_MANUAL = frozenset({HopErrorCode.BACKEND_UNAVAILABLE, HopErrorCode.NO_WIFI_INTERFACE})
"""In `auto` mode these mean "this backend cannot hop here": the user does it."""


async def async_create_hop(
    hass: HomeAssistant,
    settings: Settings,
    *,
    home_wifi: WifiSettings | None = None,
    confirm_wifi_only: bool = False,
) -> WifiHop:
    """The hop `settings.wifi_hop` asks for (not prepared yet; nothing is changed)."""
    home = (home_wifi.ssid, home_wifi.password) if home_wifi is not None else None
    mode = settings.wifi_hop
    if mode == HopBackend.MANUAL:
        return ManualHop()
    # The backends (dbus-fast for NetworkManager) load only when a hop may use them,
    # in the executor: not at HA's start, where they would cost every user import time.
    nm_module = await async_import_module(hass, f"{__package__}.proto.host_wifi_nm")
    supervisor_module = await async_import_module(hass, f"{__package__}.proto.host_wifi_supervisor")
    nm_hop: type[NmWifiHop] = nm_module.NmWifiHop
    supervisor_hop: type[SupervisorWifiHop] = supervisor_module.SupervisorWifiHop
    if mode == HopBackend.NETWORKMANAGER:
        return nm_hop(
            bus_address=settings.nm_bus_address,
            interface=settings.wifi_interface,
            confirm_wifi_only=confirm_wifi_only,
        )
    session = async_get_clientsession(hass)
    if mode == HopBackend.SUPERVISOR:
        url = settings.supervisor_url or (
            f"http://{os.environ['SUPERVISOR']}" if os.environ.get("SUPERVISOR") else None
        )
        token = os.environ.get("SUPERVISOR_TOKEN")
        if not url or not token:
            raise HopError(
                HopErrorCode.BACKEND_UNAVAILABLE, "no Supervisor (SUPERVISOR_TOKEN is not set)"
            )
        return supervisor_hop(
            session,
            base_url=url,
            token=token,
            interface=settings.wifi_interface,
            confirm_wifi_only=confirm_wifi_only,
            home_wifi=home,
        )
    return await select_backend(
        session=session,
        nm_bus_address=settings.nm_bus_address,
        supervisor_url=settings.supervisor_url,
        interface=settings.wifi_interface,
        confirm_wifi_only=confirm_wifi_only,
        home_wifi=home,
    )


async def async_prepare_hop(
    hass: HomeAssistant,
    settings: Settings,
    *,
    home_wifi: WifiSettings | None = None,
    confirm_wifi_only: bool = False,
) -> tuple[WifiHop, HopPlan]:
    """Create and `prepare()` the hop (safety checks; raises `HopError` to refuse).

    In `auto` mode a backend that cannot hop on this host falls back to manual. The caller
    owns the returned hop: `restore_shielded()` it when done (it may hold a D-Bus connection).
    """
    hop = await async_create_hop(
        hass, settings, home_wifi=home_wifi, confirm_wifi_only=confirm_wifi_only
    )
    try:
        plan = await hop.prepare()
    except HopError as err:
        await hop.restore_shielded()
        if settings.wifi_hop != "auto" or err.code not in _FALLBACK_TO_MANUAL:
            raise
        hop = ManualHop()
        plan = await hop.prepare()
    return hop, plan
