"""Device-facing HTTP views: thin wrappers around the protocol handlers.

They are registered on HA's own server (the design card) and also mounted on
the private listeners when a device forces another port or TLS. Devices
cannot log in: every view has `requires_auth = False` and answers strangers
with 404, never 401 (a 401 raises login notifications and IP bans).
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


class FirmwareDownloadView(HomeAssistantView):
    """Per-flash images behind an unguessable token; Range-capable."""

    url = IMAGE_PREFIX + "/{tail:.+}"
    name = "api:sonoff_ota:firmware"
    requires_auth = False

    def __init__(self, images: ImageServer) -> None:
        """Serve from `images`."""
        self._images = images

    async def get(self, request: web.Request, tail: str) -> web.StreamResponse:
        """Serve an image (or 404)."""
        return await self._images.handle_download(request)

    async def head(self, request: web.Request, tail: str) -> web.StreamResponse:
        """Headers of an image (or 404)."""
        return await self._images.handle_download(request)


class FinalStageView(HomeAssistantView):
    """`/ota/<name>`: the paths the intermediate image hard-codes (private listener only)."""

    url = FIXED_PREFIX + "/{name}"
    name = "api:sonoff_ota:finalstage"
    requires_auth = False

    def __init__(self, images: ImageServer) -> None:
        """Serve from `images`."""
        self._images = images

    async def get(self, request: web.Request, name: str) -> web.StreamResponse:
        """Serve the image mounted for FinalStage (or 404)."""
        return await self._images.handle_download(request)


class OtaResultView(HomeAssistantView):
    """`POST /api/device/otaFlash`: a DIY device reports how its flash went."""

    url = OTA_RESULT_PATH
    name = "api:sonoff_ota:ota_result"
    requires_auth = False

    def __init__(self, images: ImageServer) -> None:
        """Deliver results to `images`' served sets."""
        self._images = images

    async def post(self, request: web.Request) -> web.Response:
        """Record the result; always 200."""
        return await self._images.handle_ota_result(request)


class DispatchView(HomeAssistantView):
    """`POST /dispatch/device`: the first call of an eWeLink device to "the cloud"."""

    url = "/dispatch/device"
    name = "api:sonoff_ota:dispatch"
    requires_auth = False

    def __init__(self, cloud: FakeCloud) -> None:
        """Answer for `cloud`."""
        self._cloud = cloud

    async def post(self, request: web.Request) -> web.Response:
        """Point the device at our WebSocket."""
        return await self._cloud.handle_dispatch(request)


class CloudWebSocketView(HomeAssistantView):
    """`/api/ws`: the eWeLink device WebSocket (register, date, update, query, upgrade)."""

    url = "/api/ws"
    name = "api:sonoff_ota:ws"
    requires_auth = False

    def __init__(self, cloud: FakeCloud) -> None:
        """Answer for `cloud`."""
        self._cloud = cloud

    async def get(self, request: web.Request) -> web.StreamResponse:
        """Run the device's WebSocket session."""
        return await self._cloud.handle_websocket(request)
