"""Device-facing HTTP views: thin wrappers around the protocol handlers.

They are registered on HA's own server (the design card) and also mounted on
the private listeners when a device forces another port or TLS. Devices
cannot log in: every view is a `DeviceView` (`requires_auth = False`) and answers
strangers with 404, never 401 (a 401 raises login notifications and IP bans).
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from homeassistant.helpers.http import HomeAssistantView

from .proto.diy_ota_result import OTA_RESULT_PATH
from .proto.fake_cloud import FakeCloud
from .proto.image_server import FIXED_PREFIX, ImageServer

IMAGE_PREFIX: Final = "/api/sonoff_ota/fw"
"""Where per-flash images live: `<prefix>/<token>/<name>` (the token is the access control)."""


class DeviceView[H](HomeAssistantView):
    """A view devices call: no login, and one protocol handler behind it."""

    requires_auth = False

    def __init__(self, handler: H) -> None:
        """Answer through `handler` (the image server or the fake cloud)."""
        self._handler = handler


class FirmwareDownloadView(DeviceView[ImageServer]):
    """Per-flash images behind an unguessable token; Range-capable."""

    url = IMAGE_PREFIX + "/{tail:.+}"
    name = "api:sonoff_ota:firmware"

    async def get(self, request: web.Request, tail: str) -> web.StreamResponse:
        """Serve an image (or 404)."""
        return await self._handler.handle_download(request)

    async def head(self, request: web.Request, tail: str) -> web.StreamResponse:
        """Headers of an image (or 404)."""
        return await self._handler.handle_download(request)


class FinalStageView(DeviceView[ImageServer]):
    """`/ota/<name>`: the paths the intermediate image hard-codes (private listener only)."""

    url = FIXED_PREFIX + "/{name}"
    name = "api:sonoff_ota:finalstage"

    async def get(self, request: web.Request, name: str) -> web.StreamResponse:
        """Serve the image mounted for FinalStage (or 404)."""
        return await self._handler.handle_download(request)


class OtaResultView(DeviceView[ImageServer]):
    """`POST /api/device/otaFlash`: a DIY device reports how its flash went."""

    url = OTA_RESULT_PATH
    name = "api:sonoff_ota:ota_result"

    async def post(self, request: web.Request) -> web.Response:
        """Record the result; always 200."""
        return await self._handler.handle_ota_result(request)


class DispatchView(DeviceView[FakeCloud]):
    """`POST /dispatch/device`: the first call of an eWeLink device to "the cloud"."""

    url = "/dispatch/device"
    name = "api:sonoff_ota:dispatch"

    async def post(self, request: web.Request) -> web.Response:
        """Point the device at our WebSocket."""
        return await self._handler.handle_dispatch(request)


class CloudWebSocketView(DeviceView[FakeCloud]):
    """`/api/ws`: the eWeLink device WebSocket (register, date, update, query, upgrade)."""

    url = "/api/ws"
    name = "api:sonoff_ota:ws"

    async def get(self, request: web.Request) -> web.StreamResponse:
        """Run the device's WebSocket session."""
        return await self._handler.handle_websocket(request)
