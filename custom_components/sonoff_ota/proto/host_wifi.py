"""Move the host's own Wi-Fi onto the Sonoff's access points and back (the "network hop").

Setup mode needs the HA host on `ITEAD-<deviceid>` (WPA2, PSK `12345678`, device 10.10.7.1, we
take 10.10.7.2) and later on the open `FinalStage` AP as exactly 192.168.4.2, staying joined
while the intermediate image reboots (the AP vanishes and comes back), then back to the original
state. Facts: shared/spec/host-wifi-hopping.md.

This module holds what every backend shares: the targets, the plan, the typed errors, the safety
checks and the backend selection. Backends:
- `host_wifi_nm.NmWifiHop`: NetworkManager over D-Bus (checkpoint with rollback timer, volatile
  profile; safest, spec §2);
- `host_wifi_supervisor.SupervisorWifiHop`: the Supervisor network API (spec §1);
- `ManualHop` (here): changes nothing, tells the UI what to join and waits until the address is
  there.

A hop is an async context manager: leaving it restores the original network in every outcome
(success, error, cancellation). `restore()` is idempotent and never raises.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
import contextlib
from dataclasses import dataclass, field
import enum
import errno
import ipaddress
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
import logging
import os
import re
import socket
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

if TYPE_CHECKING:
    import aiohttp

_LOGGER = logging.getLogger(__name__)

ITEAD_SSID_PREFIX: Final = "ITEAD-"
ITEAD_SSID_RE: Final = re.compile(r"^ITEAD-1000[0-9A-Fa-f]{2,8}$")
"""`ITEAD-10000xxxxx`: a (suffix of the) deviceid, which starts with 1000 (setup-mode-ota.md §5).
The deviceid is unknown before the host is on this AP, so the hop finds the SSID by a scan."""
ITEAD_PSK: Final = "12345678"
"""The setup AP's fixed WPA2 PSK (setup-mode-ota.md, host-wifi-hopping.md scope)."""
ITEAD_ADDRESS: Final = IPv4Interface("10.10.7.2/24")
FINALSTAGE_SSID: Final = "FinalStage"
FINALSTAGE_ADDRESS: Final = IPv4Interface("192.168.4.2/24")
"""FinalStage fetches from 192.168.4.2:8080, compiled into the image (setup-mode-ota.md §7)."""
TASMOTA_AP_ADDRESS: Final = IPv4Interface("192.168.4.2/24")
"""Tasmota's Wi-Fi manager AP is 192.168.4.1 and takes one client (diy §3.1, §6 item 10):
a static .2 cannot clash with another client. [design, unverified on a device]"""
HOP_NETWORKS: Final = (ITEAD_ADDRESS.network, FINALSTAGE_ADDRESS.network)
"""If the home LAN uses one of these, traffic to the ESP would leave via eth0 (spec §1.4)."""
DEFAULT_JOIN_TIMEOUT: Final = 45.0
DEFAULT_MANUAL_TIMEOUT: Final = 300.0
DEFAULT_MANUAL_POLL: Final = 1.0
DEFAULT_SCAN_INTERVAL: Final = 5.0
"""Between two scans while looking for an SSID (NM rate-limits RequestScan; the Supervisor's
`/accesspoints` itself sleeps 5 s, host-wifi-hopping.md §1.1)."""


class HopErrorCode(enum.StrEnum):
    """Machine-friendly cause of a failed hop (usable as a config-flow error key)."""

    WRONG_PSK = "wrong_psk"
    AP_MISSING = "ap_missing"
    NO_ADDRESS = "no_address"
    ACTIVATION_TIMEOUT = "activation_timeout"
    ACTIVATION_FAILED = "activation_failed"
    """Deactivated for a reason none of the codes above covers."""
    BUS_LOST = "bus_lost"
    LAN_CLASH = "lan_clash"
    NEEDS_CONFIRMATION = "needs_confirmation"
    NEEDS_HOME_CREDENTIALS = "needs_home_credentials"
    """Supervisor backend only: the Wi-Fi carries the LAN and its PSK cannot be read back."""
    NO_WIFI_INTERFACE = "no_wifi_interface"
    SEVERAL_SETUP_APS = "several_setup_aps"
    """More than one `ITEAD-…` AP is in range: which device to flash is ambiguous."""
    SCAN_UNSUPPORTED = "scan_unsupported"
    """The backend cannot list access points (the manual hop)."""
    BACKEND_UNAVAILABLE = "backend_unavailable"


class HopError(Exception):
    """A hop failed or was refused; `code` says why."""

    def __init__(self, code: HopErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __repr__(self) -> str:
        return f"HopError({self.code.value!r}, {self.args[0]!r})"


class HopBackend(enum.StrEnum):
    """Which mechanism moves the Wi-Fi."""

    NETWORKMANAGER = "networkmanager"
    SUPERVISOR = "supervisor"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class HopTarget:
    """An access point to join, with a static address (no gateway, no DNS; spec §0.5).

    `psk=None` means an open network. `reactivate_on_reappear` keeps the host joined across
    the AP disappearing and coming back (FinalStage reboots between images).
    """

    ssid: str
    address: IPv4Interface
    psk: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_JOIN_TIMEOUT
    reactivate_on_reappear: bool = False

    @property
    def is_open(self) -> bool:
        """True for an open (unencrypted) AP."""
        return self.psk is None


def itead_target(
    deviceid: str,
    *,
    address: IPv4Interface = ITEAD_ADDRESS,
    timeout: float = DEFAULT_JOIN_TIMEOUT,
) -> HopTarget:
    """The setup AP `ITEAD-<deviceid>` (WPA2, PSK 12345678), host at 10.10.7.2/24."""
    return HopTarget(
        ssid=f"{ITEAD_SSID_PREFIX}{deviceid}", address=address, psk=ITEAD_PSK, timeout=timeout
    )


def setup_ap_target(
    ssid: str,
    *,
    address: IPv4Interface = ITEAD_ADDRESS,
    timeout: float = DEFAULT_JOIN_TIMEOUT,
) -> HopTarget:
    """The setup AP by the SSID a scan found (`ITEAD-…`, WPA2, PSK 12345678), host 10.10.7.2/24."""
    return HopTarget(ssid=ssid, address=address, psk=ITEAD_PSK, timeout=timeout)


def finalstage_target(
    *,
    address: IPv4Interface = FINALSTAGE_ADDRESS,
    timeout: float = DEFAULT_JOIN_TIMEOUT,
) -> HopTarget:
    """The open `FinalStage` AP, host at exactly 192.168.4.2/24, re-joined when it reappears."""
    return HopTarget(
        ssid=FINALSTAGE_SSID, address=address, timeout=timeout, reactivate_on_reappear=True
    )


def tasmota_ap_target(
    ssid: str,
    *,
    address: IPv4Interface = TASMOTA_AP_ADDRESS,
    timeout: float = DEFAULT_JOIN_TIMEOUT,
) -> HopTarget:
    """Tasmota's first-boot AP (`tasmota_XXXXXX-NNNN`, open), host at 192.168.4.2/24."""
    return HopTarget(ssid=ssid, address=address, timeout=timeout)


@dataclass(frozen=True, slots=True)
class HopPlan:
    """What a hop will do, known after `prepare()` and before anything changes."""

    backend: HopBackend
    interface: str | None
    """The Wi-Fi interface to move (None for a manual hop where it is unknown)."""
    carries_lan: bool
    """The interface carries HA's own LAN / default route: the UI is gone during the hop."""
    lan_networks: tuple[IPv4Network, ...]
    """IPv4 networks the host is on before the hop."""
    confirmed: bool = False
    """The user explicitly accepted losing the LAN for the duration of the hop."""


@dataclass(frozen=True, slots=True)
class JoinedNetwork:
    """The host is on `ssid` via `interface` with `address`."""

    interface: str
    address: IPv4Interface
    ssid: str


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """The hop's link went up or down (e.g. FinalStage rebooting); address set when up."""

    ssid: str
    up: bool
    address: IPv4Interface | None = None


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """Outcome of `restore()`; `restore()` reports instead of raising (it runs in `finally`)."""

    restored: bool
    method: str
    """How: "nothing" (no change was made), "checkpoint_rollback", "manual", "supervisor"."""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ManualInstruction:
    """What the user must do by hand for a manual hop (shown by the UI)."""

    ssid: str
    psk: str | None = field(repr=False)
    address: IPv4Interface
    """Configure this static address, with no gateway and no DNS."""


LinkCallback = Callable[[LinkEvent], None]


def check_lan_clash(
    lan_networks: Iterable[IPv4Network], hop_networks: Iterable[IPv4Network] = HOP_NETWORKS
) -> None:
    """Raise `lan_clash` when the home LAN overlaps a network the hop needs (spec §1.4)."""
    hops = tuple(hop_networks)
    for lan in lan_networks:
        for hop in hops:
            if lan.overlaps(hop):
                raise HopError(
                    HopErrorCode.LAN_CLASH,
                    f"the host is already on {lan}, which overlaps the device network {hop}",
                )


def check_wifi_only(carries_lan: bool, confirmed: bool, interface: str | None) -> None:
    """Raise `needs_confirmation` when the hop would take HA's own LAN link away unconfirmed."""
    if carries_lan and not confirmed:
        raise HopError(
            HopErrorCode.NEEDS_CONFIRMATION,
            f"{interface} carries Home Assistant's own network; the UI is unreachable during "
            "the hop: confirm explicitly",
        )


class WifiHop(abc.ABC):
    """Common interface of the backends; use as `async with hop:` so restoring always happens."""

    backend: HopBackend

    def __init__(
        self,
        *,
        confirm_wifi_only: bool = False,
        hop_networks: Iterable[IPv4Network] = HOP_NETWORKS,
        on_link: LinkCallback | None = None,
    ) -> None:
        self._confirm_wifi_only = confirm_wifi_only
        self._hop_networks = tuple(hop_networks)
        self._on_link = on_link
        self._plan: HopPlan | None = None
        self._joined: JoinedNetwork | None = None
        self._last_restore: RestoreResult | None = None

    @property
    def plan(self) -> HopPlan | None:
        """The plan from `prepare()`, if it ran."""
        return self._plan

    @property
    def last_restore(self) -> RestoreResult | None:
        """Outcome of the last `restore()` (also run by a failed `join` and on exit)."""
        return self._last_restore

    @property
    def joined(self) -> JoinedNetwork | None:
        """The network the host is on now through the hop (None while down or not joined)."""
        return self._joined

    async def prepare(self) -> HopPlan:
        """Inspect the host, run the safety checks, change nothing; raise `HopError` to refuse."""
        plan = await self._inspect()
        check_lan_clash(plan.lan_networks, self._hop_networks)
        check_wifi_only(plan.carries_lan, self._confirm_wifi_only, plan.interface)
        self._plan = plan
        return plan

    async def join(self, target: HopTarget) -> JoinedNetwork:
        """Move the Wi-Fi onto `target`; on failure restore first, then raise `HopError`."""
        if self._plan is None:
            await self.prepare()
        assert self._plan is not None
        check_lan_clash(self._plan.lan_networks, (target.address.network,))
        try:
            joined = await self._join(target)
        except BaseException:
            await self._restore_shielded()
            raise
        self._joined = joined
        return joined

    async def restore(self) -> RestoreResult:
        """Put the network back as it was; idempotent, never raises."""
        try:
            result = await self._restore()
        except Exception as err:  # a restore must never mask the caller's outcome
            _LOGGER.exception("Restoring the host network failed")
            result = RestoreResult(False, "error", repr(err))
        self._joined = None
        if result.method != "nothing" or self._last_restore is None:
            self._last_restore = result  # keep the meaningful one over a later no-op
        if not result.restored:
            _LOGGER.warning("Host network not restored (%s): %s", result.method, result.detail)
        return result

    def set_link_callback(self, on_link: LinkCallback | None) -> None:
        """Replace the callback that hears the hop's link going down/up."""
        self._on_link = on_link

    async def restore_shielded(self) -> RestoreResult:
        """`restore()` that completes even when the caller is cancelled meanwhile."""
        return await self._restore_shielded()

    async def _restore_shielded(self) -> RestoreResult:
        """Run `restore()` to completion even if the calling task is cancelled meanwhile."""
        task = asyncio.ensure_future(self.restore())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # Cancelled again while restoring: finish the (bounded) restore, then re-raise.
            with contextlib.suppress(Exception):
                await asyncio.wait({task})
            raise

    async def find_ssids(
        self,
        pattern: re.Pattern[str],
        timeout: float,  # noqa: ASYNC109  (one deadline over several scans)
        *,
        scan_interval: float = DEFAULT_SCAN_INTERVAL,
    ) -> list[str]:
        """Scan until SSIDs matching `pattern` are in range; return them sorted.

        Raises `TimeoutError` when none appeared within `timeout`, `HopError` when the backend
        fails (`scan_unsupported` for the manual hop).
        """
        if self._plan is None:
            await self.prepare()
        async with asyncio.timeout(timeout):
            while True:
                found = sorted({s for s in await self._scan() if pattern.match(s)})
                if found:
                    return found
                await self._scan_wait(scan_interval)

    async def _scan(self) -> list[str]:
        """SSIDs in range now (may trigger and await a scan)."""
        raise HopError(HopErrorCode.SCAN_UNSUPPORTED, f"{self.backend} cannot scan")

    async def _scan_wait(self, interval: float) -> None:
        """Wait until a new scan may show more (backends may return early on an AP signal)."""
        await asyncio.sleep(interval)

    def _emit_link(self, event: LinkEvent) -> None:
        if self._on_link is not None:
            try:
                self._on_link(event)
            except Exception:
                _LOGGER.exception("Link callback failed")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._restore_shielded()

    @abc.abstractmethod
    async def _inspect(self) -> HopPlan:
        """Read the host's network state into a plan (no changes)."""

    @abc.abstractmethod
    async def _join(self, target: HopTarget) -> JoinedNetwork:
        """Backend-specific join; raise `HopError`."""

    @abc.abstractmethod
    async def _restore(self) -> RestoreResult:
        """Backend-specific restore; may raise (wrapped by `restore()`)."""


AddressProbe = Callable[[IPv4Address], Awaitable[bool]]


async def address_is_local(address: IPv4Address) -> bool:
    """True when `address` is assigned to a local interface (binding to it works; no packet)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((str(address), 0))
    except OSError as err:
        if err.errno == errno.EADDRNOTAVAIL:
            return False
        raise
    finally:
        sock.close()
    return True


class ManualHop(WifiHop):
    """No backend can move the Wi-Fi: tell the UI what to join and wait for the address.

    `on_instruction` receives a `ManualInstruction` per join (and `None` when the user should
    return to the home network); `join` polls `address_probe` until the target address is local.
    """

    backend = HopBackend.MANUAL

    def __init__(
        self,
        *,
        on_instruction: Callable[[ManualInstruction | None], None] | None = None,
        address_probe: AddressProbe = address_is_local,
        poll_interval: float = DEFAULT_MANUAL_POLL,
        confirm_wifi_only: bool = True,
        hop_networks: Iterable[IPv4Network] = HOP_NETWORKS,
        on_link: LinkCallback | None = None,
    ) -> None:
        super().__init__(
            confirm_wifi_only=confirm_wifi_only, hop_networks=hop_networks, on_link=on_link
        )
        self._on_instruction = on_instruction
        self._probe = address_probe
        self._poll_interval = poll_interval
        self._instructed = False

    async def _inspect(self) -> HopPlan:
        # Nothing is known about the host's interfaces; the user is the backend.
        return HopPlan(HopBackend.MANUAL, None, False, (), self._confirm_wifi_only)

    async def _join(self, target: HopTarget) -> JoinedNetwork:
        if self._on_instruction is not None:
            self._on_instruction(ManualInstruction(target.ssid, target.psk, target.address))
        self._instructed = True
        try:
            async with asyncio.timeout(target.timeout):
                # Polling by design: nothing signals a change the user makes by hand.
                while not await self._probe(target.address.ip):  # noqa: ASYNC110
                    await asyncio.sleep(self._poll_interval)
        except TimeoutError:
            raise HopError(
                HopErrorCode.ACTIVATION_TIMEOUT,
                f"{target.address.ip} did not appear within {target.timeout:.0f} s",
            ) from None
        joined = JoinedNetwork("", target.address, target.ssid)
        self._emit_link(LinkEvent(target.ssid, True, target.address))
        return joined

    async def _restore(self) -> RestoreResult:
        if not self._instructed:
            return RestoreResult(True, "nothing")
        self._instructed = False
        if self._on_instruction is not None:
            self._on_instruction(None)
        return RestoreResult(True, "manual", "the user was asked to return to the home network")


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
    # Backends import this module, so they are imported here (not at the top) to avoid a cycle.
    from .host_wifi_nm import NmWifiHop, networkmanager_available  # noqa: PLC0415
    from .host_wifi_supervisor import SupervisorWifiHop  # noqa: PLC0415

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


def parse_cidr(value: str) -> IPv4Interface | None:
    """`"10.10.7.2/24"` -> IPv4Interface, None for anything else (IPv6, garbage)."""
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        return None
    return iface if isinstance(iface, IPv4Interface) else None
