"""The host's Wi-Fi hop for a flash, from this entry's settings inside HA.

Setup mode hops for the whole flash (the flow prepares it on its form); the DIY hand-off
hops only onto Tasmota's first-boot AP, inside its turn (`async_tasmota_ap_hop`). Both drive
the same `SetupModeWifi` (`tracked_host_wifi`), so the hop to `tasmota_XXXXXX-NNNN`, its
status on the tracker and the restore are one code path.

`Settings.wifi_hop` names the backend (`auto` | `networkmanager` | `supervisor` | `manual`);
`proto.host_wifi_choice` builds it, with HA's shared aiohttp session for the Supervisor.
The backends (dbus-fast for NetworkManager) load only when a hop may use them, in the
executor: not at HA's start, where they would cost every user import time.
Facts: shared/spec/host-wifi-hopping.md §0 (bottom line), §1.7 (Supervisor from HA), §2.1
(D-Bus).
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from homeassistant.core import HomeAssistant
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.importlib import async_import_module

from .proto.flash_stages import FlashTracker
from .proto.host_wifi_hop import WifiHop
from .proto.host_wifi_types import HopBackend, HopError, HopPlan
from .proto.setup_mode_wifi import SetupModeWifi
from .proto.wifi import WifiSettings
from .settings import Settings, get_settings

if TYPE_CHECKING:
    from .proto.host_wifi_choice import HopOptions

_LOGGER = logging.getLogger(__name__)


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


def tracked_host_wifi(
    hass: HomeAssistant,
    hop: WifiHop | None,
    tracker: FlashTracker,
    *,
    setup_ssid: str | None = None,
) -> SetupModeWifi | None:
    """The hop as the flash drives it (status on `tracker`), None where the user hops.

    A manual hop (or none) moves nothing: the user (or a phone) does it. `setup_ssid`
    pins the setup AP to join (one of several ITEAD networks, `setup_mode_many`).
    """
    if hop is None or hop.backend is HopBackend.MANUAL:
        return None
    timeouts = get_settings(hass).timeouts
    return SetupModeWifi(
        hop,
        tracker,
        join_timeout=timeouts.wifi_join,
        scan_interval=timeouts.wifi_scan,
        setup_ssid=setup_ssid,
    )


async def async_tasmota_ap_hop(
    hass: HomeAssistant, tracker: FlashTracker, home_wifi: WifiSettings
) -> SetupModeWifi | None:
    """A prepared hop onto Tasmota's first-boot AP for a DIY hand-off, or None.

    None (phone link / an AP this host reaches as is, unchanged) where no backend can hop:
    the `manual` setting, `auto` finding none, or a hop its safety checks refuse. A host
    whose Wi-Fi carries HA's own LAN is refused here (nobody confirmed losing the UI for
    the hop, unlike setup mode's form). The caller owns the result: `restore()` it in
    every outcome.
    """
    settings = get_settings(hass)
    if settings.wifi_hop == HopBackend.MANUAL:
        return None  # not even the backends' import
    try:
        hop, _plan = await async_prepare_hop(hass, settings, home_wifi=home_wifi)
    except HopError as err:
        _LOGGER.warning(
            "%s: no Wi-Fi hop to Tasmota's access point (%s: %s); phone link instead",
            tracker.device_label or "device",
            err.code,
            err,
        )
        return None
    host_wifi = tracked_host_wifi(hass, hop, tracker)
    if host_wifi is None:
        await hop.restore_shielded()  # drop what it holds (nothing to restore)
    return host_wifi
