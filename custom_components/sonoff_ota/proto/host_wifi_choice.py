"""Which backend moves the host's Wi-Fi: the one place that picks a `WifiHop`.

`create_hop(mode)` builds the backend a setting names (`networkmanager`, `supervisor`,
`manual`) or, for `auto`, the first that works here (`select_backend`): NetworkManager over
D-Bus when reachable (safest, spec §2), else the Supervisor network API when
`SUPERVISOR`/`SUPERVISOR_TOKEN` are set (spec §1, §1.7), else the manual hop.
`prepare_hop` also runs the safety checks and, in `auto` mode, falls back to manual when the
chosen backend cannot hop on this host. This module sits above the backends, which share only
`host_wifi_hop`/`host_wifi_types` and never import each other or this module. Facts:
shared/spec/host-wifi-hopping.md §0 (bottom line). No Home Assistant imports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import os
from typing import TYPE_CHECKING, Final

from .host_wifi_hop import WifiHop
from .host_wifi_manual import ManualHop
from .host_wifi_nm import NmWifiHop
from .host_wifi_nm_bus import networkmanager_available
from .host_wifi_supervisor import SupervisorWifiHop
from .host_wifi_types import HopBackend, HopError, HopErrorCode, HopPlan, LinkCallback

if TYPE_CHECKING:
    import aiohttp

AUTO: Final = "auto"
"""The `wifi_hop` setting that lets `select_backend` pick."""
FALLBACK_TO_MANUAL: Final = frozenset(
    {HopErrorCode.BACKEND_UNAVAILABLE, HopErrorCode.NO_WIFI_INTERFACE}
)
"""In `auto` mode these mean "this backend cannot hop here": the user does it."""


async def select_backend(
    *,
    session: aiohttp.ClientSession | None = None,
    nm_bus_address: str | None = None,
    use_networkmanager: bool = True,
    environ: Mapping[str, str] | None = None,
    supervisor_url: str | None = None,
    supervisor_token: str | None = None,
    interface: str | None = None,
    confirm_wifi_only: bool = False,
    home_wifi: tuple[str, str] | None = None,
    manual_factory: Callable[[], ManualHop] | None = None,
    on_link: LinkCallback | None = None,
) -> WifiHop:
    """Pick a backend: NetworkManager over D-Bus if reachable, else the Supervisor, else manual.

    `nm_bus_address` None means the system bus (dbus-fast honours `DBUS_SYSTEM_BUS_ADDRESS`).
    The Supervisor is used when `supervisor_url`/`supervisor_token` are given, or `SUPERVISOR`
    and `SUPERVISOR_TOKEN` are in `environ` (default `os.environ`), and a `session` exists.
    `home_wifi` = (ssid, psk) lets the Supervisor backend restore a Wi-Fi-only host.
    """
    if use_networkmanager and await networkmanager_available(nm_bus_address):
        return NmWifiHop(
            bus_address=nm_bus_address,
            interface=interface,
            confirm_wifi_only=confirm_wifi_only,
            on_link=on_link,
        )
    env = os.environ if environ is None else environ
    if supervisor_url is None and env.get("SUPERVISOR"):
        supervisor_url = f"http://{env['SUPERVISOR']}"
    if supervisor_token is None:
        supervisor_token = env.get("SUPERVISOR_TOKEN")
    if supervisor_url and supervisor_token and session is not None:
        return SupervisorWifiHop(
            session,
            base_url=supervisor_url,
            token=supervisor_token,
            interface=interface,
            confirm_wifi_only=confirm_wifi_only,
            home_wifi=home_wifi,
            on_link=on_link,
        )
    if manual_factory is not None:
        return manual_factory()
    return ManualHop(on_link=on_link)


async def create_hop(
    mode: str,
    *,
    session: Callable[[], aiohttp.ClientSession],
    nm_bus_address: str | None = None,
    supervisor_url: str | None = None,
    interface: str | None = None,
    confirm_wifi_only: bool = False,
    home_wifi: tuple[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> WifiHop:
    """The hop `mode` asks for (not prepared yet; nothing is changed).

    `mode` is a `HopBackend` value or `auto`. `session` returns the aiohttp session for the
    Supervisor; it is called only when the Supervisor may be used. `environ` (default
    `os.environ`) supplies `SUPERVISOR`/`SUPERVISOR_TOKEN`.
    """
    if mode == HopBackend.MANUAL:
        return ManualHop()
    if mode == HopBackend.NETWORKMANAGER:
        return NmWifiHop(
            bus_address=nm_bus_address,
            interface=interface,
            confirm_wifi_only=confirm_wifi_only,
        )
    client = session()
    if mode == HopBackend.SUPERVISOR:
        env = os.environ if environ is None else environ
        url = supervisor_url or (f"http://{env['SUPERVISOR']}" if env.get("SUPERVISOR") else None)
        token = env.get("SUPERVISOR_TOKEN")
        if not url or not token:
            raise HopError(
                HopErrorCode.BACKEND_UNAVAILABLE, "no Supervisor (SUPERVISOR_TOKEN is not set)"
            )
        return SupervisorWifiHop(
            client,
            base_url=url,
            token=token,
            interface=interface,
            confirm_wifi_only=confirm_wifi_only,
            home_wifi=home_wifi,
        )
    return await select_backend(
        session=client,
        nm_bus_address=nm_bus_address,
        environ=environ,
        supervisor_url=supervisor_url,
        interface=interface,
        confirm_wifi_only=confirm_wifi_only,
        home_wifi=home_wifi,
    )


async def prepare_hop(
    mode: str,
    *,
    session: Callable[[], aiohttp.ClientSession],
    nm_bus_address: str | None = None,
    supervisor_url: str | None = None,
    interface: str | None = None,
    confirm_wifi_only: bool = False,
    home_wifi: tuple[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[WifiHop, HopPlan]:
    """`create_hop` and `prepare()` it (safety checks; raises `HopError` to refuse).

    In `auto` mode a backend that cannot hop on this host falls back to manual. The caller
    owns the returned hop: `restore_shielded()` it when done (it may hold a D-Bus connection).
    """
    hop = await create_hop(
        mode,
        session=session,
        nm_bus_address=nm_bus_address,
        supervisor_url=supervisor_url,
        interface=interface,
        confirm_wifi_only=confirm_wifi_only,
        home_wifi=home_wifi,
        environ=environ,
    )
    try:
        plan = await hop.prepare()
    except HopError as err:
        await hop.restore_shielded()
        if mode != AUTO or err.code not in FALLBACK_TO_MANUAL:
            raise
        hop = ManualHop()
        plan = await hop.prepare()
    return hop, plan
