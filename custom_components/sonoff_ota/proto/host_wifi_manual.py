"""The manual network hop: the user moves the Wi-Fi, the hop waits for the address.

No backend can move this host's Wi-Fi (no NetworkManager on D-Bus, no Supervisor): the UI
says which AP to join with which static address (`ManualInstruction`), and `join` waits until
that address is assigned locally. Facts: shared/spec/host-wifi-hopping.md §0. No Home
Assistant imports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
import errno
from ipaddress import IPv4Address, IPv4Interface
import socket
from typing import Final, Unpack

from .host_wifi_hop import WifiHop, WifiHopOptions
from .host_wifi_types import (
    HopBackend,
    HopError,
    HopErrorCode,
    HopPlan,
    HopTarget,
    JoinedNetwork,
    LinkEvent,
    RestoreResult,
)

DEFAULT_MANUAL_TIMEOUT: Final = 300.0
DEFAULT_MANUAL_POLL: Final = 1.0


@dataclass(frozen=True, slots=True)
class ManualInstruction:
    """What the user must do by hand for a manual hop (shown by the UI)."""

    ssid: str
    psk: str | None = field(repr=False)
    address: IPv4Interface
    """Configure this static address, with no gateway and no DNS."""


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
        **options: Unpack[WifiHopOptions],
    ) -> None:
        options.setdefault("confirm_wifi_only", True)  # unlike the other backends
        super().__init__(**options)
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
