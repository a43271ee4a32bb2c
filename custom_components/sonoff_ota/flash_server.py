"""The integration's server side, one per Home Assistant instance.

It owns the image server and the fake cloud, registers their views on HA's
HTTP server once, opens the private listeners only while a flash needs them
(reference-counted), keeps the TLS certificate in HA's storage, and refuses
two flashes of the same device. A config flow does not run `async_setup`, so
flows call `async_get_flash_server` themselves (idempotent).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
import logging
from pathlib import Path
import ssl
from typing import Any, Final

from aiohttp import ClientTimeout
from homeassistant.const import EVENT_HOMEASSISTANT_STOP
from homeassistant.core import Event, HomeAssistant
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.util.hass_dict import HassKey

from .const import DOMAIN
from .listeners import PrivateListener
from .proto.fake_cloud import FakeCloud
from .proto.firmware_sources import FirmwareSources
from .proto.firmware_store import FirmwareStore
from .proto.flash_stages import FlashTracker
from .proto.image_server import ImageServer, Pacing
from .proto.legacy_tls import TlsHandshakeObserver, ensure_cert_files, legacy_server_context
from .settings import Settings, get_settings
from .views import (
    IMAGE_PREFIX,
    CloudWebSocketView,
    DispatchView,
    FinalStageView,
    FirmwareDownloadView,
    OtaResultView,
)

_LOGGER = logging.getLogger(__name__)

SERVER_KEY: Final[HassKey[FlashServer]] = HassKey(f"{DOMAIN}_server")
_LOCK_KEY: Final[HassKey[asyncio.Lock]] = HassKey(f"{DOMAIN}_server_lock")


class DeviceBusyError(Exception):
    """Another flash of the same device is running."""

    def __init__(self, deviceid: str) -> None:
        super().__init__(f"device {deviceid} is already being flashed")
        self.deviceid = deviceid


@dataclass(slots=True)
class _Lease:
    count: int = 0
    listener: PrivateListener | None = None


class FlashServer:
    """Shared server state: see the module docstring."""

    def __init__(self, hass: HomeAssistant, settings: Settings) -> None:
        """Create the (not yet listening) server."""
        self.hass = hass
        self.settings = settings
        default = Pacing()
        self.images = ImageServer(
            prefix=IMAGE_PREFIX,
            pacing=replace(
                default,
                first_pause=default.first_pause * settings.pacing_scale,
                piece_pause=default.piece_pause * settings.pacing_scale,
            ),
        )
        self.tls_observer = TlsHandshakeObserver()
        # The dispatch reply points devices at our TLS listener; the address is set per
        # flash (the callback address the user chose) before the device can dispatch.
        self.cloud = FakeCloud("0.0.0.0", settings.tls_port, tls_observer=self.tls_observer)  # noqa: S104
        self.active: dict[str, FlashTracker] = {}
        self.finalstage_lock = asyncio.Lock()
        """One setup-mode flash at a time owns FinalStage (the host's one radio, /ota/)."""
        self._tls = _Lease()
        self._plain = _Lease()
        self._lock = asyncio.Lock()
        self._firmware: FirmwareStore | None = None

    # -- views -------------------------------------------------------------------------------

    def register_views(self) -> None:
        """Register the device views on HA's own HTTP server."""
        for view in (
            FirmwareDownloadView(self.images),
            OtaResultView(self.images),
            DispatchView(self.cloud),
            CloudWebSocketView(self.cloud),
        ):
            self.hass.http.register_view(view)

    # -- firmware ----------------------------------------------------------------------------

    @property
    def firmware(self) -> FirmwareStore:
        """The firmware store (HA's shared session, cache in the config dir)."""
        if self._firmware is None:
            overrides: dict[str, Any] = dict(self.settings.firmware)
            sources = FirmwareSources()._replace(**overrides)
            timeouts = self.settings.timeouts
            self._firmware = FirmwareStore(
                Path(self.hass.config.path(DOMAIN, "firmware")),
                async_get_clientsession(self.hass),
                self.hass.async_add_executor_job,
                sources=sources,
                timeout=ClientTimeout(
                    total=timeouts.download, connect=20, sock_read=timeouts.download_stall
                ),
            )
        return self._firmware

    # -- devices -----------------------------------------------------------------------------

    def claim(self, deviceid: str, tracker: FlashTracker) -> None:
        """Reserve `deviceid` for this flash; raise `DeviceBusyError` if taken."""
        key = deviceid.lower()
        current = self.active.get(key)
        if current is not None and current is not tracker and not current.finished:
            raise DeviceBusyError(deviceid)
        self.active[key] = tracker

    def release(self, deviceid: str, tracker: FlashTracker) -> None:
        """Give `deviceid` back."""
        key = deviceid.lower()
        if self.active.get(key) is tracker:
            del self.active[key]

    # -- listeners ---------------------------------------------------------------------------

    @asynccontextmanager
    async def listeners(self, *, tls: bool = False, plain: bool = False) -> AsyncIterator[None]:
        """Keep the TLS and/or plain listener open for the duration of the block.

        Raises `listeners.PortInUseError` when a port is held by another program.
        """
        acquired: list[_Lease] = []
        try:
            if tls:
                await self._acquire(self._tls, self._make_tls)
                acquired.append(self._tls)
                self.cloud.advertise_port = self.tls_port
            if plain:
                await self._acquire(self._plain, self._make_plain)
                acquired.append(self._plain)
            yield
        finally:
            for lease in acquired:
                await self._release(lease)

    @property
    def tls_port(self) -> int:
        """The TLS listener's port (the bound one while open)."""
        return self._tls.listener.port if self._tls.listener else self.settings.tls_port

    @property
    def plain_port(self) -> int:
        """The plain listener's port (the bound one while open)."""
        return self._plain.listener.port if self._plain.listener else self.settings.finalstage_port

    async def _make_tls(self) -> PrivateListener:
        directory = Path(self.hass.config.path(".storage", f"{DOMAIN}_tls"))

        def build() -> ssl.SSLContext:
            cert, key = ensure_cert_files(directory)
            return legacy_server_context(cert, key, self.tls_observer)

        context = await self.hass.async_add_executor_job(build)
        return PrivateListener(
            self.hass,
            "fake cloud (TLS)",
            [DispatchView(self.cloud), CloudWebSocketView(self.cloud)],
            self.settings.tls_bind,
            self.settings.tls_port,
            ssl_context=context,
        )

    async def _make_plain(self) -> PrivateListener:
        return PrivateListener(
            self.hass,
            "firmware (plain HTTP)",
            [
                FirmwareDownloadView(self.images),
                FinalStageView(self.images),
                OtaResultView(self.images),
            ],
            self.settings.finalstage_bind,
            self.settings.finalstage_port,
        )

    async def _acquire(self, lease: _Lease, make: Callable[[], Awaitable[PrivateListener]]) -> None:
        async with self._lock:
            if lease.count == 0:
                listener = await make()
                await listener.start()
                lease.listener = listener
            lease.count += 1

    async def _release(self, lease: _Lease) -> None:
        async with self._lock:
            lease.count -= 1
            if lease.count == 0 and lease.listener is not None:
                if lease is self._tls:
                    await self.cloud.close()
                await lease.listener.stop()
                lease.listener = None

    async def async_shutdown(self, _event: Event | None = None) -> None:
        """Close everything (HA is stopping)."""
        for tracker in list(self.active.values()):
            tracker.abort()
        await self.cloud.close()
        for lease in (self._tls, self._plain):
            if lease.listener is not None:
                await lease.listener.stop()
                lease.listener = None
                lease.count = 0


async def async_get_flash_server(hass: HomeAssistant) -> FlashServer:
    """Return the flash server, creating it and registering its views on first use."""
    if (server := hass.data.get(SERVER_KEY)) is not None:
        return server
    lock = hass.data.setdefault(_LOCK_KEY, asyncio.Lock())
    async with lock:
        if (server := hass.data.get(SERVER_KEY)) is not None:
            return server
        server = FlashServer(hass, get_settings(hass))
        server.register_views()
        hass.bus.async_listen_once(EVENT_HOMEASSISTANT_STOP, server.async_shutdown)
        hass.data[SERVER_KEY] = server
        _LOGGER.debug("Flash server ready (views on HA's server)")
        return server
