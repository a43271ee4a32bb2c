"""Which backend moves the host's Wi-Fi: the one place that picks a `WifiHop`.

`create_hop(mode, options)` builds the backend a setting names (`networkmanager`, `supervisor`,
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
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class HopOptions:
    """Where and how a backend may hop: the settings `create_hop`/`prepare_hop` build it from.

    `nm_bus_address` None means the system bus (dbus-fast honours `DBUS_SYSTEM_BUS_ADDRESS`).
    `supervisor_url` overrides `http://$SUPERVISOR`; `environ` (default `os.environ`) supplies
    `SUPERVISOR`/`SUPERVISOR_TOKEN`. `home_wifi` = (ssid, psk) lets the Supervisor backend
    restore a Wi-Fi-only host (kept out of the repr, like `environ` and its token).
    """

    nm_bus_address: str | None = None
    supervisor_url: str | None = None
    interface: str | None = None
    confirm_wifi_only: bool = False
    home_wifi: tuple[str, str] | None = field(default=None, repr=False)
    environ: Mapping[str, str] | None = field(default=None, repr=False)


_DEFAULTS: Final = HopOptions()


def _nm_hop(options: HopOptions, on_link: LinkCallback | None = None) -> NmWifiHop:
    return NmWifiHop(
        bus_address=options.nm_bus_address,
        interface=options.interface,
        confirm_wifi_only=options.confirm_wifi_only,
        on_link=on_link,
    )


def _supervisor_hop(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    options: HopOptions,
    on_link: LinkCallback | None = None,
) -> SupervisorWifiHop:
    return SupervisorWifiHop(
        session,
        base_url=url,
        token=token,
        interface=options.interface,
        confirm_wifi_only=options.confirm_wifi_only,
        home_wifi=options.home_wifi,
        on_link=on_link,
    )


async def select_backend(
    options: HopOptions = _DEFAULTS,
    *,
    session: aiohttp.ClientSession | None = None,
    use_networkmanager: bool = True,
    supervisor_token: str | None = None,
    manual_factory: Callable[[], ManualHop] | None = None,
    on_link: LinkCallback | None = None,
) -> WifiHop:
    """Pick a backend: NetworkManager over D-Bus if reachable, else the Supervisor, else manual.

    The Supervisor is used when `options.supervisor_url`/`supervisor_token` are given, or
    `SUPERVISOR` and `SUPERVISOR_TOKEN` are in `options.environ` (default `os.environ`), and a
    `session` exists.
    """
    if use_networkmanager and await networkmanager_available(options.nm_bus_address):
        return _nm_hop(options, on_link)
    env = os.environ if options.environ is None else options.environ
    supervisor_url = options.supervisor_url
    if supervisor_url is None and env.get("SUPERVISOR"):
        supervisor_url = f"http://{env['SUPERVISOR']}"
    if supervisor_token is None:
        supervisor_token = env.get("SUPERVISOR_TOKEN")
    if supervisor_url and supervisor_token and session is not None:
        return _supervisor_hop(session, supervisor_url, supervisor_token, options, on_link)
    if manual_factory is not None:
        return manual_factory()
    return ManualHop(on_link=on_link)


async def create_hop(
    mode: str,
    options: HopOptions = _DEFAULTS,
    *,
    session: Callable[[], aiohttp.ClientSession],
) -> WifiHop:
    """The hop `mode` asks for (not prepared yet; nothing is changed).

    `mode` is a `HopBackend` value or `auto`. `session` returns the aiohttp session for the
    Supervisor; it is called only when the Supervisor may be used.
    """
    if mode == HopBackend.MANUAL:
        return ManualHop()
    if mode == HopBackend.NETWORKMANAGER:
        return _nm_hop(options)
    client = session()
    if mode == HopBackend.SUPERVISOR:
        env = os.environ if options.environ is None else options.environ
        url = options.supervisor_url or (
            f"http://{env['SUPERVISOR']}" if env.get("SUPERVISOR") else None
        )
        token = env.get("SUPERVISOR_TOKEN")
        if not url or not token:
            raise HopError(
                HopErrorCode.BACKEND_UNAVAILABLE, "no Supervisor (SUPERVISOR_TOKEN is not set)"
            )
        return _supervisor_hop(client, url, token, options)
    return await select_backend(options, session=client)


async def prepare_hop(
    mode: str,
    options: HopOptions = _DEFAULTS,
    *,
    session: Callable[[], aiohttp.ClientSession],
) -> tuple[WifiHop, HopPlan]:
    """`create_hop` and `prepare()` it (safety checks; raises `HopError` to refuse).

    In `auto` mode a backend that cannot hop on this host falls back to manual. The caller
    owns the returned hop: `restore_shielded()` it when done (it may hold a D-Bus connection).
    """
    hop = await create_hop(mode, options, session=session)
    try:
        plan = await hop.prepare()
    except HopError as err:
        await hop.restore_shielded()
        if mode != AUTO or err.code not in FALLBACK_TO_MANUAL:
            raise
        hop = ManualHop()
        plan = await hop.prepare()
    return hop, plan
