"""The network hop every backend is: its lifecycle and the safety checks it runs first.

A hop moves the host's own Wi-Fi onto a device's access point and back (facts:
shared/spec/host-wifi-hopping.md). `WifiHop` is the contract and the shared lifecycle:
`prepare()` inspects the host and refuses unsafe hops (`check_lan_clash`, `check_wifi_only`),
`join()` moves the Wi-Fi (restoring first if it fails), `find_ssids()` scans, `restore()` puts
the network back. Backends subclass it:
- `host_wifi_nm.NmWifiHop`: NetworkManager over D-Bus (checkpoint with rollback timer, volatile
  profile; safest, spec §2);
- `host_wifi_supervisor.SupervisorWifiHop`: the Supervisor network API (spec §1);
- `host_wifi_manual.ManualHop`: changes nothing, tells the UI what to join and waits until the
  address is there.
`host_wifi_choice` picks one.

A hop is an async context manager: leaving it restores the original network in every outcome
(success, error, cancellation). `restore()` is idempotent and never raises. No Home Assistant
imports.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Iterable
import contextlib
from ipaddress import IPv4Network
import logging
import re
from types import TracebackType
from typing import Final, Self, TypedDict

from .host_wifi_targets import HOP_NETWORKS
from .host_wifi_types import (
    HopBackend,
    HopError,
    HopErrorCode,
    HopPlan,
    HopTarget,
    JoinedNetwork,
    LinkCallback,
    LinkEvent,
    RestoreResult,
)

_LOGGER = logging.getLogger(__name__)

DEFAULT_SCAN_INTERVAL: Final = 5.0
"""Between two scans while looking for an SSID (NM rate-limits RequestScan; the Supervisor's
`/accesspoints` itself sleeps 5 s, host-wifi-hopping.md §1.1)."""


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


class WifiHopOptions(TypedDict, total=False):
    """The keywords every backend takes and hands on to `WifiHop` (`**options: Unpack[...]`).

    `confirm_wifi_only`: the user agreed to lose HA's own LAN during the hop (`check_wifi_only`);
    `hop_networks`: the device networks the home LAN must not overlap (`check_lan_clash`);
    `on_link`: hears the link going down/up while FinalStage reboots.
    """

    confirm_wifi_only: bool
    hop_networks: Iterable[IPv4Network]
    on_link: LinkCallback | None


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
