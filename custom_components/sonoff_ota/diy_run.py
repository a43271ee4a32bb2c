"""One DIY-mode flash inside Home Assistant: firmware, where to serve it, the flasher.

Used by the config flow (discovered or manually entered devices) and by the
update entity's install action. The image is served from HA's own server when
that is plain HTTP on the LAN, otherwise from the integration's plain listener
(the device needs `http://<ip literal>:<port>`, never https).

Each flash keeps a record in the flash journal from `ota_flash` to `close()`. A
device whose download a restart interrupted is not flashed again until it is
back on eWeLink (see `flash_recovery`).
"""

from __future__ import annotations

from dataclasses import dataclass
import logging

from homeassistant.core import HomeAssistant
from homeassistant.helpers.aiohttp_client import async_get_clientsession

from .flash_journal import async_get_journal
from .flash_server import FlashServer, async_get_flash_server
from .issues import RestartState, async_delete_restart_issue, restart_state
from .proto.diy_client import DiyClient, DiyInfo
from .proto.diy_flasher import IMAGE_NAME, DiyFlasher, DiyFlashError, DiyJob, DiyTimeouts
from .proto.firmware_cache import StoredImage
from .proto.firmware_choice import FirmwareChoice
from .proto.firmware_download import ProgressCallback
from .proto.firmware_image import ImageData, ImageRole
from .proto.flash_stages import FlashPath, FlashTracker
from .served_run import ServedRun

_LOGGER = logging.getLogger(__name__)

DIY_PORT = 8081


@dataclass(frozen=True, slots=True)
class DiyTarget:
    """A DIY device as discovery (or the user) described it."""

    deviceid: str
    host: str
    port: int = DIY_PORT
    device_type: str = "diy_plug"
    encrypted: bool = False
    model: str | None = None


class DiyRun(ServedRun[DiyFlasher]):
    """A DIY flash from eligibility to the device's result callback."""

    def __init__(
        self,
        hass: HomeAssistant,
        target: DiyTarget,
        callback_host: str,
        tracker: FlashTracker | None = None,
    ) -> None:
        """Prepare a run; nothing is sent until `check()`/`run()`."""
        super().__init__(hass, tracker or FlashTracker(FlashPath.DIY, device_label=target.deviceid))
        self.target = target
        self.callback_host = callback_host
        self.tracker.update(None, deviceid=target.deviceid)
        self.synthetic_image = False
        self.firmware = FirmwareChoice()
        """The Tasmota image the user chose (default: the newest lite that fits)."""
        self.image: StoredImage | None = None
        """The checked image, once fetched."""

    def _client(self, server: FlashServer) -> DiyClient:
        timeouts = server.settings.timeouts
        return DiyClient(
            async_get_clientsession(self.hass),
            self.target.host,
            self.target.port,
            deviceid=self.target.deviceid,
            timeout=timeouts.diy_request,
            flash_timeout=timeouts.diy_flash,
        )

    async def check(self) -> DiyInfo:
        """Read the device and decide eligibility (changes nothing on the device)."""
        server = self._server = await async_get_flash_server(self.hass)
        self._claim(server, self.target.deviceid)
        journal = await async_get_journal(self.hass)
        if (orphan := journal.orphan_of(self.target.deviceid)) is not None:
            if restart_state(orphan) is RestartState.DIY_DOWNLOAD:
                # A restart cut its download: not again until it is back on eWeLink.
                raise DiyFlashError("download_interrupted", deviceid=self.target.deviceid)
            journal.forget(orphan.flash_id)
            async_delete_restart_issue(self.hass, orphan.flash_id)
        flasher = self._flasher(server, b"")
        return await flasher.check()

    def _flasher(self, server: FlashServer, image: ImageData) -> DiyFlasher:
        timeouts = server.settings.timeouts
        job = DiyJob(
            deviceid=self.target.deviceid,
            device_type=self.target.device_type,
            image=image,
            download_base=self._download_base,
            encrypted=self.target.encrypted,
            model=self.target.model,
            timeouts=DiyTimeouts(flash=timeouts.diy_flash, reboot=timeouts.diy_reboot),
        )
        info = self.flasher.info if self.flasher is not None else None
        self.flasher = DiyFlasher(
            self.tracker, job, client=self._client(server), images=server.images
        )
        self.flasher.info = info
        return self.flasher

    def _download_base(self) -> str:
        assert self._server is not None
        api = self.hass.config.api
        if self._server.settings.serve_from_ha and api is not None and not api.use_ssl:
            return f"http://{self.callback_host}:{api.port}"
        return f"http://{self.callback_host}:{self._server.plain_port}"

    def _needs_listener(self) -> bool:
        assert self._server is not None
        api = self.hass.config.api
        return not (self._server.settings.serve_from_ha and api is not None and not api.use_ssl)

    async def fetch_image(self, progress: ProgressCallback | None = None) -> StoredImage:
        """Fetch and check the chosen image (the device is not touched).

        Raises `FirmwareError` before the device sees anything.
        """
        server = self._server or await async_get_flash_server(self.hass)
        self._server = server
        image = self.image = await server.firmware.get_chosen(
            self.firmware, ImageRole.DIY, progress=progress
        )
        if image.offline or image.fell_back:
            _LOGGER.warning(
                "%s: flashing %s (%s, sha256 %s) instead of %s: %s",
                self.target.deviceid,
                image.filename,
                "cached copy, source unreachable" if image.offline else "older known-good lite",
                image.sha256,
                self.firmware.describe(),
                image.fetch_error or image.fallback_reason,
            )
        return image

    async def run(self, progress: ProgressCallback | None = None) -> None:
        """Fetch the image unless done, then unlock if needed, flash and wait for the result."""
        if self._server is None or self.flasher is None or self.flasher.info is None:
            await self.check()
        server = self._server
        assert server is not None
        stored = self.image or await self.fetch_image(progress)
        self.synthetic_image = stored.synthetic
        image = await server.firmware.read_bytes(stored)
        self.tracker.update(None, image_sha256=stored.sha256)
        if self._needs_listener():
            await self._stack.enter_async_context(server.listeners(plain=True))
        flasher = self._flasher(server, image)
        if self._journal is None:
            info = flasher.info
            await self._async_journal(
                {IMAGE_NAME: stored},
                deviceid=self.target.deviceid,
                model=self.target.model,
                fw_version=info.fw_version if info is not None else None,
                host=self.target.host,
                port=self.target.port,
            )
        await flasher.run()

    async def close(self) -> None:
        """Stop serving, free the device, close the listener."""
        self._end_journal()
        await self._release()
