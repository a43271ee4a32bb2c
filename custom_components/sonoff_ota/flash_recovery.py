"""After a restart: pick up the flashes the flash journal says were interrupted.

At entry setup every orphaned journal record (one whose flash no longer runs in
this process) becomes a repair issue saying where its device was left
(`issues.RestartState`):

- the intermediate image is on the device (the upgrade was acked or its image
  served whole, or the flash already waited on FinalStage): that image polls
  192.168.4.2:8080 until it is served (spec setup-mode-ota.md §7), so the
  FinalStage listener is opened again at once, serving the same user2 and
  Tasmota images from the cache (checked against the journal's sha256). The
  issue's repair flow shows the progress and then runs the usual hand-off.
  No upgrade is ever offered to such a device again (`SetupModeRun._on_device`);
- Tasmota was already served whole: the repair flow runs the hand-off only;
- earlier setup-mode stages: the device still runs eWeLink (an interrupted
  eWeLink OTA writes the inactive slot, §6.4, so the old one still boots);
  the issue says how to start over, and a new flow of the device replaces it;
- a DIY download: the device keeps eWeLink (ota_flash writes the other slot)
  or reports an error. No flash is offered until the device is back on
  `_ewelink._tcp` and answers `/zeroconf/info` with its old version
  (`async_device_announced`, from the zeroconf step), never while a download
  may still run. [unverified: whether a real device advertises during its
  download; the served token died with the restart, so a running download
  fails at its next Range request either way.]
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.util.hass_dict import HassKey

from .const import CONF_SSID, CONF_WIFI_PASSWORD, DOMAIN
from .flash_journal import FlashJournal, JournalRecord, async_get_journal
from .handoff_run import HandoffOutcome, HandoffRun
from .issues import (
    RESUMABLE,
    RestartState,
    async_create_restart_issue,
    async_delete_restart_issue,
    restart_state,
)
from .known_devices import DeviceRecord, async_mark_flashed, get_entry
from .listeners import PortInUseError
from .proto.diy_client import DiyClient, DiyError
from .proto.firmware_errors import FirmwareError
from .proto.flash_stages import FlashPath, FlashTracker, Stage
from .proto.tasmota_handoff_types import EwelinkIdentity
from .proto.wifi import WifiSettings
from .settings import get_settings
from .setup_mode_run import SetupModeRun

_LOGGER = logging.getLogger(__name__)

RESUMED_KEY: Final[HassKey[dict[str, ResumedFlash]]] = HassKey(f"{DOMAIN}_resumed_flashes")


class ResumedFlash:
    """One interrupted flash taken up again (FinalStage serving, then the hand-off)."""

    def __init__(
        self,
        hass: HomeAssistant,
        journal: FlashJournal,
        record: JournalRecord,
        wifi: WifiSettings,
        run: SetupModeRun | None,
    ) -> None:
        """`run` serves FinalStage (None when only the hand-off is left)."""
        self.hass = hass
        self.journal = journal
        self.flash_id = record.flash_id
        self.deviceid = record.deviceid
        self.model = record.model
        self.device_ip = record.host if record.path is FlashPath.DIY else None
        self._wifi = wifi
        self.run = run
        self.tracker = run.tracker if run is not None else FlashTracker(record.path)
        if run is None:
            self.tracker.update(None, deviceid=record.deviceid or "")
            journal.live.add(record.flash_id)
        self.serving: asyncio.Task[None] | None = None

    @property
    def wifi_ssid(self) -> str:
        """The home Wi-Fi Tasmota is given (not a secret)."""
        return self._wifi.ssid

    @property
    def served(self) -> bool:
        """The Tasmota image has been served whole (or there was nothing left to serve)."""
        record = self.journal.records.get(self.flash_id)
        return self.run is None or (record is not None and record.final_served)

    def start_serving(self) -> asyncio.Task[None]:
        """Serve FinalStage until the intermediate image fetched Tasmota (or times out)."""
        if self.serving is None or self.serving.done():
            assert self.run is not None
            self.serving = self.hass.async_create_background_task(
                self.run.run(Stage.WAIT_FINALSTAGE), f"{DOMAIN} resumed FinalStage"
            )
            self.serving.add_done_callback(self._serving_done)
        return self.serving

    def _serving_done(self, task: asyncio.Task[None]) -> None:
        """Log the end of the serving (the repair flow shows it; nobody else awaits it)."""
        if task.cancelled():
            return
        if (err := task.exception()) is not None:
            _LOGGER.warning(
                "FinalStage for %s stopped (%s); open its repair to try again", self.deviceid, err
            )
        else:
            _LOGGER.info("%s fetched Tasmota from FinalStage", self.deviceid)

    async def async_handoff(self) -> HandoffOutcome:
        """Close the FinalStage listener and hand Tasmota to HA (as every flash ends)."""
        if self.run is not None:
            await self.run.release_flash()
        return await HandoffRun(
            self.hass,
            self.tracker,
            self._wifi,
            EwelinkIdentity(deviceid=self.deviceid, model=self.model),
            device_ip=self.device_ip,
        ).run()

    async def async_finish(self, outcome: HandoffOutcome) -> None:
        """The device is Tasmota in HA: remember it, end the record, free everything."""
        if not self.tracker.finished:
            self.tracker.done()
        if self.deviceid:
            async_mark_flashed(
                self.hass,
                get_entry(self.hass),
                self.deviceid,
                mac=outcome.mac,
                record=DeviceRecord(deviceid=self.deviceid, model=self.model),
            )
        await self.async_close()

    async def async_close(self) -> None:
        """Stop serving and drop the journal record."""
        self.hass.data.get(RESUMED_KEY, {}).pop(self.flash_id, None)
        if self.serving is not None and not self.serving.done():
            self.serving.cancel()
        if self.run is not None:
            await self.run.close()  # ends the record through its RunJournal
        else:
            self.journal.end(self.flash_id)
        async_delete_restart_issue(self.hass, self.flash_id)


def get_resumed(hass: HomeAssistant, flash_id: str) -> ResumedFlash | None:
    """The resumed flash of `flash_id`, if it was taken up in this process."""
    return hass.data.get(RESUMED_KEY, {}).get(flash_id)


async def async_recover(hass: HomeAssistant, entry: ConfigEntry) -> None:
    """Raise an issue for every interrupted flash; resume those waiting on FinalStage."""
    journal = await async_get_journal(hass)
    resumed = hass.data.setdefault(RESUMED_KEY, {})
    wifi = WifiSettings(entry.data[CONF_SSID], entry.data[CONF_WIFI_PASSWORD])
    for record in journal.orphans():
        state = restart_state(record)
        if state is None:
            journal.forget(record.flash_id)
            continue
        _LOGGER.warning(
            "A restart interrupted the flash of %s at %s: %s",
            record.deviceid or "a device",
            record.stage,
            state,
        )
        if state in RESUMABLE and record.flash_id not in resumed:
            run: SetupModeRun | None = None
            if state is RestartState.FINALSTAGE:
                try:
                    run = await SetupModeRun.async_resume(hass, record, wifi)
                except (FirmwareError, PortInUseError) as err:
                    _LOGGER.warning("Cannot serve FinalStage to %s again: %s", record.deviceid, err)
            if run is not None or state is RestartState.HANDOFF:
                flash = resumed[record.flash_id] = ResumedFlash(hass, journal, record, wifi, run)
                if run is not None:
                    flash.start_serving()
        async_create_restart_issue(hass, record, state)


async def async_device_announced(hass: HomeAssistant, deviceid: str, host: str, port: int) -> None:
    """Note an eWeLink device on `_ewelink._tcp`: maybe an interrupted DIY flash is back.

    It is when `/zeroconf/info` answers with the version the journal noted before the
    flash (or either is unknown): the issue then offers the flash again.
    """
    journal = await async_get_journal(hass)
    record = journal.orphan_of(deviceid)
    if record is None or record.path is not FlashPath.DIY or record.seen_back:
        return
    if restart_state(record) is not RestartState.DIY_DOWNLOAD:
        return
    client = DiyClient(
        async_get_clientsession(hass),
        host,
        port,
        deviceid=deviceid,
        timeout=get_settings(hass).timeouts.diy_request,
    )
    try:
        info = await client.info()
    except DiyError as err:
        _LOGGER.debug("%s announced, but /zeroconf/info failed: %s", deviceid, err)
        return
    if info.fw_version and record.fw_version and info.fw_version != record.fw_version:
        _LOGGER.warning(
            "%s is back with eWeLink %s (was %s): not offering a flash",
            deviceid,
            info.fw_version,
            record.fw_version,
        )
        return
    journal.update(record.flash_id, seen_back=True, host=host, port=port)
    updated = journal.records[record.flash_id]
    _LOGGER.info("%s is back on eWeLink %s: it can be flashed again", deviceid, info.fw_version)
    async_create_restart_issue(hass, updated, RestartState.DIY_BACK)
