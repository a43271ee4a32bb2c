"""The setup-mode flash (the SonOTA method), stage by stage, without Home Assistant.

It drives the protocol pieces (setup AP client, fake cloud, image server) and
reports through a `FlashTracker`. Every wait is event-driven (cloud and image
server events) except the wait for the setup AP, which can only be probed.
Each waiting stage has its own timeout and raises `StageTimeoutError`, after
which the caller may `run(from_stage=...)` again to retry that stage.

Facts: shared/spec/setup-mode-ota.md §1 (architecture), §5 (AP), §6 (cloud,
upgrade, downloads), §7 (the intermediate image and FinalStage), §10 and §14
(which firmware pins the vendor certificate, and what that looks like).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
import contextlib
from dataclasses import dataclass, field
import logging
from typing import TYPE_CHECKING

from .eligibility import check_setup_mode
from .ewelink_messages import UpgradeOffer
from .fake_cloud import CloudEventKind, DeviceSession, FakeCloud, PacingPolicy
from .flash_stages import FlashTracker, Stage
from .image_names import FINAL_NAME, USER1_NAME, USER2_NAME
from .image_server import ImageEvent, ImageEventKind, ImageServer, ServedSet
from .legacy_tls import TlsHandshakeObserver
from .setup_ap import ApResult, DeviceInfo, SetupApClient, SetupApTimeoutError
from .setup_mode_errors import SetupModeError, StageTimeoutError
from .wifi import WifiSettings

if TYPE_CHECKING:
    from .firmware_image import ImageData
    from .setup_mode_wifi import SetupModeWifi

_LOGGER = logging.getLogger(__name__)


def firmware_verdict(rom_version: str | None) -> str:
    """Classify an eWeLink `romVersion` for setup mode (spec §10, §13.10).

    "works" for 1.5.x and 2.0.x, "pinned" for 1.6-1.8.x, 2.6+ and 3.x (the device
    pins the vendor certificate), "old" for < 1.5 (may need an eWeLink update or
    the paced download), "unknown" otherwise: the eligibility table decides.
    """
    return str(check_setup_mode(rom_version).reason)


@dataclass(frozen=True, slots=True)
class SetupModeImages:
    """The three images a setup-mode flash serves (already validated)."""

    user1: ImageData = field(repr=False)
    user2: ImageData = field(repr=False)
    final: ImageData = field(repr=False)


@dataclass(frozen=True, slots=True)
class SetupModeTimeouts:
    """Seconds each waiting stage waits."""

    setup_ap: float = 300.0
    dispatch: float = 300.0
    upgrade: float = 300.0
    finalstage: float = 900.0
    ap_retry_delay: float = 2.0
    pinning_grace: float = 10.0
    """Seconds after a TLS hello without any request before we call it certificate pinning."""


@dataclass(slots=True)
class SetupModeJob:
    """Everything one setup-mode flash needs (secrets only in memory, never logged)."""

    wifi: WifiSettings
    callback_host: str
    """Our address as the device will see it on the home LAN (serverName in /ap)."""
    tls_port: Callable[[], int]
    """The fake cloud's TLS port (known once the listener is bound)."""
    download_base: Callable[[], str]
    """`http://<host>:<port>` where the upgrade images are fetched from."""
    images: SetupModeImages
    timeouts: SetupModeTimeouts = field(default_factory=SetupModeTimeouts)


class SetupModeFlasher:
    """Runs the stages of one setup-mode flash; see the module docstring."""

    def __init__(
        self,
        tracker: FlashTracker,
        job: SetupModeJob,
        *,
        ap_client: SetupApClient,
        cloud: FakeCloud,
        images: ImageServer,
        tls_observer: TlsHandshakeObserver | None = None,
        on_device: Callable[[DeviceInfo], None] | None = None,
        join_finalstage: Callable[[], Awaitable[None]] | None = None,
        finalstage_lock: asyncio.Lock | None = None,
        host_wifi: SetupModeWifi | None = None,
    ) -> None:
        """Prepare a flash; nothing happens until `run()`.

        `host_wifi` moves the host's own Wi-Fi (ITEAD before WAIT_SETUP_AP, home after
        PROVISIONING, FinalStage before WAIT_FINALSTAGE, home at the end and in every other
        outcome); None means the user does it by hand (the progress texts say so).
        """
        self.tracker = tracker
        self.job = job
        self._ap = ap_client
        self._cloud = cloud
        self._images = images
        self._tls = tls_observer
        self._on_device = on_device
        self._join_finalstage = join_finalstage
        self._finalstage_lock = finalstage_lock
        self.host_wifi = host_wifi
        self._holds_finalstage = False
        self.device: DeviceInfo | None = None
        self.session: DeviceSession | None = None
        self.served: ServedSet | None = None
        self.finalstage_sessions = 0
        self.paced_retry_used = False
        self._saw_user2 = False
        self._finalstage_index = 0
        self._finalstage_watch_from: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, from_stage: Stage = Stage.WAIT_SETUP_AP) -> None:
        """Run from `from_stage` to the end of the flash (FinalStage served Tasmota)."""
        steps: list[tuple[Stage, Callable[[], Awaitable[None]]]] = [
            (Stage.WAIT_SETUP_AP, self._wait_setup_ap),
            (Stage.PROVISIONING, self._provision),
            (Stage.WAIT_DISPATCH, self._wait_dispatch),
            (Stage.CLOUD_SESSION, self._cloud_session),
            (Stage.UPGRADING, self._upgrade),
            (Stage.WAIT_FINALSTAGE, self._wait_finalstage),
            (Stage.FINALSTAGE, self._finalstage),
        ]
        names = [stage for stage, _ in steps]
        try:
            for stage, step in steps[names.index(from_stage) :]:
                self.tracker.advance(stage)
                await step()
        finally:
            # Success, error, timeout (a retry re-joins) or cancellation: back home.
            await self.restore_network()

    async def restore_network(self) -> None:
        """Put the host's Wi-Fi back (no-op without `host_wifi`; idempotent, never raises)."""
        if self.host_wifi is not None:
            await self.host_wifi.restore()

    def close(self) -> None:
        """Stop serving and forget the device (idempotent)."""
        if self._holds_finalstage and self._finalstage_lock is not None:
            self._finalstage_lock.release()
            self._holds_finalstage = False
        if self.served is not None:
            if self._images.fixed is self.served:
                self._images.unmount_fixed()
            self._images.remove_set(self.served)
            self.served = None
        if self.device is not None:
            self._cloud.forget_device(self.device.deviceid)

    # -- stages ------------------------------------------------------------------------------

    async def _wait_setup_ap(self) -> None:
        if self.host_wifi is not None:
            await self.host_wifi.join_setup_ap(self.job.timeouts.setup_ap)
        try:
            info = await self._ap.wait_for_device(
                self.job.timeouts.setup_ap, retry_delay=self.job.timeouts.ap_retry_delay
            )
        except SetupApTimeoutError as err:
            raise StageTimeoutError(Stage.WAIT_SETUP_AP) from err
        if self._on_device is not None:
            self._on_device(info)
        self.device = info
        self.tracker.device_label = info.deviceid
        self.tracker.update(1.0, deviceid=info.deviceid)
        self._prepare_offer(info.deviceid)

    def _prepare_offer(self, deviceid: str) -> None:
        if self.served is None:
            self.served = self._images.add_set(
                {
                    USER1_NAME: self.job.images.user1,
                    USER2_NAME: self.job.images.user2,
                    FINAL_NAME: self.job.images.final,
                },
                deviceid=deviceid,
            )
        served = self.served
        base = self.job.download_base()

        def offer(paced: bool) -> UpgradeOffer:
            return UpgradeOffer(
                user1_url=base + served.url_path(USER1_NAME, paced=paced),
                user1_digest=served.digest(USER1_NAME),
                user2_url=base + served.url_path(USER2_NAME, paced=paced),
                user2_digest=served.digest(USER2_NAME),
            )

        # Expect the device before it can dispatch; after a 404 ack the next offer uses
        # paced URLs, which pace only clients that do not send Range (spec §6.5, #62).
        self.session = self._cloud.expect_device(
            deviceid, offer(False), paced_offer=offer(True), policy=PacingPolicy.AFTER_404
        )

    async def _provision(self) -> None:
        device = self._require_device()
        result = await self._ap.send_ap(
            self.job.wifi.ssid,
            self.job.wifi.password,
            self.job.callback_host,
            self.job.tls_port(),
        )
        note = "accepted" if result is ApResult.ACCEPTED else "maybe accepted (no reply)"
        self.tracker.update(1.0, provisioning=note)
        _LOGGER.info("Device %s provisioned: %s", device.deviceid, note)
        if self.host_wifi is not None:
            # The device leaves its AP for the home Wi-Fi and calls us there.
            await self.host_wifi.go_home()

    async def _wait_dispatch(self) -> None:
        session = self._require_session()
        if session.dispatches:
            return
        waiter = asyncio.ensure_future(session.wait_for(CloudEventKind.DISPATCHED))
        pinning = asyncio.ensure_future(self._watch_pinning())
        try:
            done, _ = await asyncio.wait(
                {waiter, pinning},
                timeout=self.job.timeouts.dispatch,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for task in (waiter, pinning):
                task.cancel()
            for task in (waiter, pinning):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if pinning in done:
            # No dispatch, so no romVersion (`/device` does not carry it): "?" as elsewhere.
            raise SetupModeError("certificate_pinned", rom_version="?")
        if waiter not in done:
            raise StageTimeoutError(Stage.WAIT_DISPATCH)
        event = waiter.result()
        self._note_firmware(event.model, event.rom_version)

    async def _watch_pinning(self) -> None:
        """Return once TLS hellos came in but no request followed (spec §10: pinning)."""
        observer = self._tls
        if observer is None:
            await asyncio.Event().wait()
            return
        while True:
            hellos = observer.client_hellos
            requests = observer.requests
            await observer.hello_seen.wait()
            observer.hello_seen.clear()
            if observer.client_hellos == hellos:
                continue
            await asyncio.sleep(self.job.timeouts.pinning_grace)
            if observer.requests == requests:
                return

    def _note_firmware(self, model: str | None, rom_version: str | None) -> None:
        details: dict[str, str] = {}
        if model:
            details["model"] = model
        if rom_version:
            details["rom_version"] = rom_version
        verdict = firmware_verdict(rom_version)
        if rom_version or verdict != "unknown":
            details["firmware_verdict"] = verdict
        self.tracker.update(None, **details)
        if verdict == "pinned":
            raise SetupModeError("certificate_pinned", rom_version=rom_version or "?")
        if verdict in {"unknown", "old"}:
            _LOGGER.warning(
                "Device %s runs eWeLink %s, which is not known to work in setup mode; trying",
                self._require_device().deviceid,
                rom_version,
            )

    async def _cloud_session(self) -> None:
        session = self._require_session()
        if session.upgrades_sent:
            return
        try:
            async with asyncio.timeout(self.job.timeouts.dispatch):
                registered = await session.wait_for(CloudEventKind.REGISTERED)
                self._note_firmware(registered.model, registered.rom_version)
                await session.wait_for(CloudEventKind.UPGRADE_SENT)
        except TimeoutError as err:
            raise StageTimeoutError(Stage.CLOUD_SESSION) from err

    async def _upgrade(self) -> None:
        session = self._require_session()
        served = self._require_served()
        progress = asyncio.ensure_future(self._report_progress(served, (USER1_NAME, USER2_NAME)))
        try:
            start = 0
            while True:
                try:
                    async with asyncio.timeout(self.job.timeouts.upgrade):
                        ack = await session.wait_for(CloudEventKind.ACK, start=start)
                except TimeoutError as err:
                    raise StageTimeoutError(Stage.UPGRADING) from err
                start = ack.index + 1
                if ack.error == 0:
                    self.tracker.update(1.0, upgrade="accepted")
                    return
                if self.paced_retry_used:
                    raise SetupModeError("upgrade_rejected", error=str(ack.error))
                # One automatic retry: the device reconnects and gets the paced offer
                # (whole, paced 200 bodies for non-Range clients only; spec §6.3, §6.5).
                self.paced_retry_used = True
                self.tracker.update(0.0, upgrade="retrying with paced download")
                _LOGGER.warning("Device rejected the image (ack %s); offering it paced", ack.error)
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress

    async def _report_progress(self, served: ServedSet, names: tuple[str, ...]) -> None:
        index = len(served.history)
        while True:
            event = await served.next_event(index)
            index += 1
            if event.name in names and event.size:
                self.tracker.update(event.high_water / event.size)

    async def _wait_finalstage(self) -> None:
        served = self._require_served()
        if self._finalstage_lock is not None and not self._holds_finalstage:
            # The host can be on one FinalStage AP at a time, and /ota/ has one owner.
            if self._finalstage_lock.locked():
                self.tracker.update(finalstage_file="waiting for another flash's FinalStage")
            try:
                async with asyncio.timeout(self.job.timeouts.finalstage):
                    await self._finalstage_lock.acquire()
            except TimeoutError as err:
                raise StageTimeoutError(Stage.WAIT_FINALSTAGE) from err
            self._holds_finalstage = True
        # The intermediate image fetches its files from 192.168.4.2:8080/ota/ (spec §7).
        self._images.mount_fixed(served)
        # Watch from where the first try started: on a retry after a timeout the device
        # may have fetched (even finished) while the user read the timeout menu.
        if self._finalstage_watch_from is None:
            self._finalstage_watch_from = len(served.history)
        index = self._finalstage_watch_from
        if self.host_wifi is not None:
            await self.host_wifi.join_finalstage(self.job.timeouts.finalstage)
        if self._join_finalstage is not None:
            await self._join_finalstage()

        def first_fetch(event: ImageEvent) -> bool:
            if not self._is_finalstage_fetch(event):
                return False
            self._note_finalstage_fetch(event.name)
            return True

        self._finalstage_index = await self._watch_finalstage(
            served, index, Stage.WAIT_FINALSTAGE, first_fetch
        )

    async def _watch_finalstage(
        self, served: ServedSet, index: int, stage: Stage, until: Callable[[ImageEvent], bool]
    ) -> int:
        """Hand `served`'s events from `index` on to `until` until it returns True.

        Returns the index after that event; raises `StageTimeoutError(stage)` when the
        FinalStage timeout passes first.
        """
        try:
            async with asyncio.timeout(self.job.timeouts.finalstage):
                while True:
                    event = await served.next_event(index)
                    index += 1
                    if until(event):
                        return index
        except TimeoutError as err:
            raise StageTimeoutError(stage) from err

    @staticmethod
    def _is_finalstage_fetch(event: ImageEvent) -> bool:
        return (
            event.kind is ImageEventKind.FETCH_STARTED
            and event.record is not None
            and event.record.fixed_path
        )

    def _note_finalstage_fetch(self, name: str | None) -> None:
        """Count FinalStage sessions (spec §7 "Consequences").

        A device that ran user2 fetches image_user2 in a first session, reboots, and
        fetches image_arduino in a second one; a device that ran user1 fetches only
        image_arduino, in one session.
        """
        if name == USER2_NAME:
            self._saw_user2 = True
            session, total = 1, 2
        else:
            session, total = (2, 2) if self._saw_user2 else (1, 1)
        if session != self.finalstage_sessions:
            self.finalstage_sessions = session
            _LOGGER.info("FinalStage session %d of %d: serving %s", session, total, name)
        self.tracker.update(
            finalstage_session=str(session),
            finalstage_sessions=str(total),
            finalstage_file=name or "",
        )

    async def _finalstage(self) -> None:
        served = self._require_served()
        if self.host_wifi is not None:  # resumed here after a timeout (restored meanwhile)
            await self.host_wifi.join_finalstage(self.job.timeouts.finalstage)

        def final_done(event: ImageEvent) -> bool:
            if self._is_finalstage_fetch(event):
                self._note_finalstage_fetch(event.name)
            elif event.name in {USER2_NAME, FINAL_NAME} and event.size:
                # user2 counts for the first half of a two-session flash.
                fraction = event.high_water / event.size
                if self._saw_user2:
                    fraction = (fraction + (event.name == FINAL_NAME)) / 2
                self.tracker.update(fraction)
                if (
                    event.name == FINAL_NAME
                    and event.kind is ImageEventKind.FETCH_DONE
                    and event.high_water == event.size
                ):
                    self.tracker.update(1.0, finalstage_file="done")
                    return True
            return False

        await self._watch_finalstage(served, self._finalstage_index, Stage.FINALSTAGE, final_done)

    # -- helpers -----------------------------------------------------------------------------

    def _require_device(self) -> DeviceInfo:
        if self.device is None:
            raise SetupModeError("no_device")
        return self.device

    def _require_session(self) -> DeviceSession:
        if self.session is None:
            raise SetupModeError("no_device")
        return self.session

    def _require_served(self) -> ServedSet:
        if self.served is None:
            raise SetupModeError("no_device")
        return self.served
