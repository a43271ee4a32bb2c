"""One virtual Sonoff from eWeLink to Tasmota: the eWeLink side, then the Tasmota it boots.

The eWeLink side (setup mode or DIY mode) calls `on_final_image` once Tasmota
is written; this starts a `VirtualTasmota` from exactly those bytes, with its
first-boot access point on the injected address (it stands for 192.168.4.1).
On a real network each device has its own AP; on loopback two devices share
the AP port, so a second Tasmota waits until the first one's AP has closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
import errno
import logging
import socket
from typing import Literal

from .diy import DiyConfig, DiyDevice
from .setup_mode import SetupModeConfig, SetupModeDevice
from .start_stop import StartStop
from .tasmota import VirtualTasmota

_LOGGER = logging.getLogger(__name__)

Kind = Literal["setup", "diy"]

# eWeLink model -> (Tasmota module name shown in discovery, relay count), for the common
# single-relay devices the demo uses.
_MODULES: dict[str, tuple[str, int]] = {
    "ITA-GZ1-GL": ("Sonoff Basic", 1),
    "PSC-B01-GL": ("Sonoff Pow", 1),
    "PSF-B04-GL": ("Sonoff 4CH", 4),
    "diy_plug": ("Sonoff Basic", 1),
}


@dataclass(slots=True)
class TasmotaPlan:
    """Where the Tasmota a device boots into listens."""

    ap_host: str = "127.0.0.1"
    ap_port: int = 0
    station_host: str = "127.0.0.1"
    version: str = "14.4.1(lite)"
    retry_interval: float = 0.2


@dataclass(slots=True)
class VirtualSonoff(StartStop):
    """A device that starts in eWeLink (setup or DIY mode) and ends as a virtual Tasmota."""

    kind: Kind
    setup: SetupModeConfig | None = None
    diy: DiyConfig | None = None
    tasmota_plan: TasmotaPlan = field(default_factory=TasmotaPlan)
    ewelink: SetupModeDevice | DiyDevice | None = None
    tasmota: VirtualTasmota | None = None
    tasmota_started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def mac(self) -> str:
        """The station MAC as 12 uppercase hex digits (Tasmota's spelling)."""
        raw = self.setup.sta_mac if self.setup else (self.diy.sta_mac if self.diy else "")
        return raw.replace(":", "").replace("-", "").upper()

    @property
    def model(self) -> str:
        """The eWeLink model (setup mode) or device type (DIY)."""
        if self.setup is not None:
            return self.setup.model
        return self.diy.device_type if self.diy is not None else "diy_plug"

    async def start(self) -> None:
        """Start the eWeLink side; Tasmota follows once it is flashed."""
        if self.kind == "setup":
            self.ewelink = SetupModeDevice(self.setup, on_final_image=self._boot_tasmota)
        else:
            self.ewelink = DiyDevice(self.diy, on_final_image=self._boot_tasmota)
        await self.ewelink.start()

    async def stop(self) -> None:
        """Stop the Tasmota (if any) and the eWeLink side."""
        if self.tasmota is not None:
            await self.tasmota.stop()
        if self.ewelink is not None:
            await self.ewelink.stop()

    async def _boot_tasmota(self, image: bytes) -> None:
        module, relays = _MODULES.get(self.model, ("Sonoff Basic", 1))
        plan = self.tasmota_plan
        while True:
            while plan.ap_port and not _port_free(plan.ap_host, plan.ap_port):  # noqa: ASYNC110
                # another virtual Tasmota still has "192.168.4.1" (see the module docstring)
                await asyncio.sleep(plan.retry_interval)
            tasmota = VirtualTasmota(
                image,
                mac=self.mac,
                module=module,
                relays=relays,
                version=plan.version,
                ap_bind=(plan.ap_host, plan.ap_port),
                station_bind=(plan.station_host, 0),
            )
            try:
                await tasmota.start()
            except OSError as err:
                # Two Tasmotas saw the port free at once and the other bound it first.
                if not plan.ap_port or err.errno != errno.EADDRINUSE:
                    raise
                await tasmota.stop()
                continue
            break
        self.tasmota = tasmota
        self.tasmota_started.set()
        _LOGGER.info("%s boots Tasmota: AP %s", self.mac, self.tasmota.ap_ssid)


def _port_free(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket()) as sock:
        # Like asyncio's servers: a port whose old connections sit in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
