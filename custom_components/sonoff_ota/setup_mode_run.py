"""One setup-mode flash inside Home Assistant: firmware, listeners, the flasher.

The config flow is only the UI on top of this. It holds the Wi-Fi password in
memory for as long as the flash runs and drops it on `close()`.

Every run keeps a record in the flash journal (`flash_journal`) from `prepare()`
to `close()`, so that a restart of Home Assistant does not lose a device
half-way; `async_resume` picks such a device up again at FinalStage.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from homeassistant.const import EVENT_HOMEASSISTANT_STOP
from homeassistant.core import CALLBACK_TYPE, Event, HomeAssistant
from homeassistant.helpers.aiohttp_client import async_get_clientsession

from .flash_journal import JournalRecord, async_get_journal
from .flash_server import FlashServer, async_get_flash_server
from .host_wifi_run import tracked_host_wifi
from .issues import async_delete_restart_issue
from .listeners import PortInUseError, async_check_port_free
from .proto.firmware_cache import StoredImage, read_if_intact
from .proto.firmware_choice import FirmwareChoice
from .proto.firmware_download import ProgressCallback
from .proto.firmware_errors import FirmwareErrorCode, FirmwareUnavailableError
from .proto.firmware_image import ImageData
from .proto.flash_stages import FlashPath, FlashTracker, Stage
from .proto.host_wifi_hop import WifiHop
from .proto.image_names import FINAL_NAME, USER1_NAME, USER2_NAME
from .proto.setup_ap import DeviceInfo, SetupApClient
from .proto.setup_mode_errors import SetupModeError
from .proto.setup_mode_flasher import (
    SetupModeFlasher,
    SetupModeImages,
    SetupModeJob,
    SetupModeTimeouts,
)
from .proto.setup_mode_wifi import SetupModeWifi
from .proto.wifi import WifiSettings
from .served_run import ServedRun
from .settings import get_settings

_LOGGER = logging.getLogger(__name__)


class SetupModeRun(ServedRun[SetupModeFlasher]):
    """A setup-mode flash from first step to FinalStage (see the module docstring)."""

    def __init__(
        self,
        hass: HomeAssistant,
        wifi: WifiSettings,
        callback_host: str,
        hop: WifiHop | None = None,
        *,
        setup_ssid: str | None = None,
    ) -> None:
        """Prepare a run; nothing is opened until `prepare()`.

        `hop` (prepared, see `host_wifi_run.async_prepare_hop`) moves the host's Wi-Fi; a
        manual hop or None leaves it to the user. The run owns it and restores it on close.
        `setup_ssid` pins the hop to one of several `ITEAD-…` APs in range.
        """
        super().__init__(hass, FlashTracker(FlashPath.SETUP_MODE))
        self.callback_host = callback_host
        self._wifi: WifiSettings | None = wifi
        self.synthetic_images = False
        self.firmware = FirmwareChoice()
        """The Tasmota image the user chose (default: the newest lite that fits)."""
        self.images: tuple[StoredImage, StoredImage, StoredImage] | None = None
        """user1, user2 and the final image, once fetched and checked."""
        self.hop = hop
        self.host_wifi: SetupModeWifi | None = tracked_host_wifi(
            hass, hop, self.tracker, setup_ssid=setup_ssid
        )
        self._running: asyncio.Task[None] | None = None
        self._unsub_stop: CALLBACK_TYPE | None = None
        if hop is not None:
            # HA stopping mid-hop: stop the flash and put the network back before it exits.
            self._unsub_stop = hass.bus.async_listen_once(
                EVENT_HOMEASSISTANT_STOP, self._async_hass_stop
            )

    async def check_ports(self) -> list[str]:
        """Ports this flash needs that another program holds (`host:port` strings)."""
        settings = get_settings(self.hass)
        busy: list[str] = []
        for host, port in (
            (settings.tls_bind, settings.tls_port),
            (settings.finalstage_bind, settings.finalstage_port),
        ):
            if port and not await async_check_port_free(host, port):
                busy.append(f"{host}:{port}")
        return busy

    async def fetch_images(self, progress: ProgressCallback | None = None) -> StoredImage:
        """Fetch and check the three images (nothing is opened yet); return the final one.

        Raises `FirmwareError` before any device or listener is involved.
        """
        server = self._server = await async_get_flash_server(self.hass)
        self.images = await server.firmware.get_setup_images(final=self.firmware, progress=progress)
        return self.images[2]

    async def prepare(self, progress: ProgressCallback | None = None) -> None:
        """Fetch the images unless done, open the listeners, build the flasher."""
        if self.images is None:
            await self.fetch_images(progress)
        server = self._server = await async_get_flash_server(self.hass)
        assert self.images is not None
        user1, user2, final = self.images
        self.synthetic_images = any(image.synthetic for image in (user1, user2, final))
        images = SetupModeImages(
            user1=await server.firmware.read_bytes(user1),
            user2=await server.firmware.read_bytes(user2),
            final=await server.firmware.read_bytes(final),
        )
        self.tracker.update(
            1.0,
            final_sha256=final.sha256,
            user1_sha256=user1.sha256,
            user2_sha256=user2.sha256,
        )
        try:
            await self._stack.enter_async_context(server.listeners(tls=True, plain=True))
        except PortInUseError:
            await self._stack.aclose()
            raise
        self._build_flasher(server, images)
        await self._async_journal(
            dict(zip((USER1_NAME, USER2_NAME, FINAL_NAME), self.images, strict=True))
        )

    def _build_flasher(self, server: FlashServer, images: SetupModeImages) -> None:
        settings = server.settings
        wifi = self._wifi
        assert wifi is not None
        timeouts = settings.timeouts
        job = SetupModeJob(
            wifi=wifi,
            callback_host=self.callback_host,
            tls_port=lambda: server.tls_port,
            download_base=lambda: f"http://{self.callback_host}:{server.plain_port}",
            images=images,
            timeouts=SetupModeTimeouts(
                setup_ap=timeouts.setup_ap,
                dispatch=timeouts.dispatch,
                upgrade=timeouts.upgrade,
                finalstage=timeouts.finalstage,
                ap_retry_delay=min(2.0, max(timeouts.setup_ap / 50, 0.05)),
                pinning_grace=timeouts.pinning_grace,
            ),
        )
        self.flasher = SetupModeFlasher(
            self.tracker,
            job,
            ap_client=SetupApClient(async_get_clientsession(self.hass), settings.setup_ap_url),
            cloud=server.cloud,
            images=server.images,
            tls_observer=server.tls_observer,
            on_device=self._on_device,
            finalstage_lock=server.finalstage_lock,
            host_wifi=self.host_wifi,
        )

    @classmethod
    async def async_resume(
        cls, hass: HomeAssistant, record: JournalRecord, wifi: WifiSettings
    ) -> SetupModeRun:
        """Pick up a flash a restart interrupted once its intermediate image was on the device.

        The intermediate image polls 192.168.4.2:8080 until it gets `/ota/` files (spec §7):
        serve the same user2 and Tasmota images from the journal's cache paths (checked
        against their sha256) on the FinalStage listener. Nothing is sent to the eWeLink
        side: no cloud listener, no upgrade. Run it with `run(Stage.WAIT_FINALSTAGE)`.
        Raises `FirmwareUnavailableError` when a cached image is gone or changed.
        """
        journal = await async_get_journal(hass)
        server = await async_get_flash_server(hass)
        run = cls(hass, wifi, server.settings.callback_host or "")
        run._server = server
        deviceid = record.deviceid or ""
        run.tracker.device_label = deviceid
        run.tracker.update(
            None,
            deviceid=deviceid,
            **({"model": record.model} if record.model else {}),
            **({"rom_version": record.fw_version} if record.fw_version else {}),
        )
        data: dict[str, ImageData] = {}
        for name in (USER1_NAME, USER2_NAME, FINAL_NAME):
            image = record.images.get(name)
            found = (
                await hass.async_add_executor_job(
                    read_if_intact, Path(image.cache_path), image.sha256
                )
                if image is not None and image.cache_path
                else None
            )
            if found is None:
                raise FirmwareUnavailableError(
                    FirmwareErrorCode.CACHE_CORRUPT, {"sha256": image.sha256 if image else "?"}
                )
            data[name] = found
        run._claim(server, deviceid)
        try:
            await run._stack.enter_async_context(server.listeners(plain=True))
        except PortInUseError:
            server.release(deviceid, run.tracker)
            raise
        run._build_flasher(
            server,
            SetupModeImages(user1=data[USER1_NAME], user2=data[USER2_NAME], final=data[FINAL_NAME]),
        )
        assert run.flasher is not None
        # Only what the intermediate image fetches; never a cloud offer (nothing flashed twice).
        run.flasher.served = server.images.add_set(
            {USER2_NAME: data[USER2_NAME], FINAL_NAME: data[FINAL_NAME]}, deviceid=deviceid
        )
        run.tracker.update(1.0, final_sha256=record.images[FINAL_NAME].sha256)
        journal.live.add(record.flash_id)
        run._follow(journal, record)
        return run

    def _on_device(self, device: DeviceInfo) -> None:
        assert self._server is not None
        if self._journal is not None and (
            orphan := self._journal.journal.orphan_of(device.deviceid)
        ):
            if orphan.intermediate_served:
                # Its intermediate image is written: never offer an upgrade again.
                raise SetupModeError("half_flashed", deviceid=device.deviceid)
            # Interrupted before anything was written: this flash starts it over.
            self._journal.journal.forget(orphan.flash_id)
            async_delete_restart_issue(self.hass, orphan.flash_id)
        self._claim(self._server, device.deviceid)

    async def run(self, from_stage: Stage = Stage.WAIT_SETUP_AP) -> None:
        """Run (or resume at `from_stage`) until the intermediate image fetched Tasmota."""
        assert self.flasher is not None
        self._running = asyncio.current_task()
        try:
            await self.flasher.run(from_stage)
        finally:
            self._running = None

    async def restore_network(self) -> None:
        """Put the host's Wi-Fi back (idempotent, completes even when cancelled)."""
        if self.host_wifi is not None:
            await self.host_wifi.restore()
        elif self.hop is not None:
            await self.hop.restore_shielded()

    async def _async_hass_stop(self, _event: Event) -> None:
        self._unsub_stop = None
        if self._running is not None and not self._running.done():
            self._running.cancel()  # the flasher restores in its `finally`
        await self.restore_network()

    async def close(self) -> None:
        """Restore the network, close listeners, stop serving, free the device and password."""
        self._wifi = None
        self._end_journal()
        if self._unsub_stop is not None:
            self._unsub_stop()
            self._unsub_stop = None
        await self.restore_network()
        if self.flasher is not None:
            self.flasher.job.wifi = WifiSettings(ssid=self.flasher.job.wifi.ssid, password="")
        await self._release()
