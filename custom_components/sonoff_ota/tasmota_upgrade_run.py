"""The Home Assistant side of the lite → full upgrade: MQTT feed, URL checks, releases.

`proto.tasmota_upgrade.TasmotaUpgrade` does the protocol; this module gives it
HA's MQTT (`mqtt.async_subscribe` / `mqtt.async_publish`), an HTTP check of the
OtaUrl from HA's side (to tell "file too big, no -minimal sibling" from "missing
file"), the newest Tasmota release (cached), and the build the entry's options
choose. The "Tasmota firmware" update entity and the config flow's last step both
call `async_run_upgrade` (one code path).

`async_run_upgrade` also keeps, per device (MAC), the last upgrade's tracker
(diagnostics) and two rules for every caller: one upgrade of a device at a time
(`UpgradeBusyError`), and none while a download may still be running after a
timeout (`UpgradeSettlingError`): Tasmota's OTA cannot be stopped over MQTT, so
after a timeout a new one waits until the device is back on MQTT (a live discovery,
or its `Failed` result) or the cooldown (`Timeouts.tasmota_upgrade_cooldown`) passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
import contextlib
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
import logging
import time
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.event import async_call_later
from homeassistant.util.hass_dict import HassKey

from .const import DOMAIN
from .options_flow import OPT_BUILD, OPT_CUSTOM_URL, OPT_LANGUAGE, options_with_defaults
from .proto import tasmota_releases
from .proto.tasmota_discovery import TasmotaDevice, TasmotaDiscoveryError, parse_discovery
from .proto.tasmota_mqtt_feed import DiscoveryFeed
from .proto.tasmota_releases import TargetBuild, TasmotaRelease, target_build
from .proto.tasmota_upgrade import (
    TasmotaBuild,
    TasmotaUpgrade,
    UpgradeResult,
    UpgradeTarget,
    UrlCheck,
)
from .proto.tasmota_upgrade_stages import (
    UpgradeError,
    UpgradeErrorCode,
    UpgradeStage,
    UpgradeTracker,
)
from .settings import get_settings
from .tasmota_link import SUBSCRIBE_WAIT, _on_subscribe_done, mqtt_publisher

if TYPE_CHECKING:
    from homeassistant.components.mqtt import ReceiveMessage

_LOGGER = logging.getLogger(__name__)

RELEASE_CACHE_SECONDS: Final = 3600.0
_RELEASE_KEY: Final[HassKey[tuple[float, TasmotaRelease | None]]] = HassKey(
    f"{DOMAIN}_tasmota_release"
)
_URL_CHECK_TIMEOUT = aiohttp.ClientTimeout(total=15)
_UNACKNOWLEDGED_SUBSCRIBE = 1.0
"""2025.4 has no subscribe acknowledgement: its first SUBSCRIBE goes out within 0.5 s."""


_UPGRADES_KEY: Final[HassKey[dict[str, DeviceUpgrades]]] = HassKey(f"{DOMAIN}_tasmota_upgrades")
_SIZE_TIMEOUT = aiohttp.ClientTimeout(total=5)


class UpgradeBusyError(Exception):
    """Another upgrade of this device is running (from the dashboard or a flow)."""


class UpgradeSettlingError(Exception):
    """The last upgrade timed out and the device may still be downloading."""

    def __init__(self, minutes: int) -> None:
        """`minutes`: at most this long until a new upgrade is allowed."""
        super().__init__(f"the device may still be downloading; wait up to {minutes} min")
        self.minutes = minutes


@dataclass(slots=True)
class DeviceUpgrades:
    """One device's upgrades: the last tracker, and whether a new one may start."""

    tracker: UpgradeTracker | None = None
    running: bool = False
    settle_until: float | None = None
    """Monotonic time until which a download may still run (after a timeout)."""
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    _stop_watching: list[CALLBACK_TYPE] = field(default_factory=list)

    @property
    def settling(self) -> bool:
        """True while a timed-out download may still be running."""
        return self.settle_until is not None and not self.settled.is_set()

    @property
    def minutes_left(self) -> int:
        """Whole minutes (at least 1) until the cooldown ends."""
        left = (self.settle_until or 0.0) - time.monotonic()
        return max(1, -(-int(left) // 60))

    def settle(self, why: str) -> None:
        """The device is back (or the cooldown passed): a new upgrade may start."""
        if self.settled.is_set():
            return
        _LOGGER.info("Tasmota upgrade may start again: %s", why)
        self.settled.set()
        self.settle_until = None
        for stop in self._stop_watching:
            stop()
        self._stop_watching.clear()


def device_upgrades(hass: HomeAssistant, mac: str) -> DeviceUpgrades:
    """The upgrade state of the device with `mac` (12 hex digits, any case)."""
    upgrades = hass.data.setdefault(_UPGRADES_KEY, {})
    return upgrades.setdefault(mac.replace(":", "").upper(), DeviceUpgrades())


def upgrade_trackers(hass: HomeAssistant) -> dict[str, UpgradeTracker]:
    """The last upgrade tracker of every device upgraded since HA started (diagnostics)."""
    upgrades = hass.data.get(_UPGRADES_KEY, {})
    return {mac: state.tracker for mac, state in upgrades.items() if state.tracker is not None}


async def async_wait_until_settled(hass: HomeAssistant, mac: str) -> None:
    """Return once a new upgrade of `mac` may start (at once when nothing is pending)."""
    state = device_upgrades(hass, mac)
    if state.settling:
        await state.settled.wait()


def chosen_build(hass: HomeAssistant, entry: ConfigEntry | None) -> TargetBuild:
    """The image the entry's options choose (default: the full `tasmota` build).

    `entry` None: the first flow, before its entry exists (the default options).
    """
    options = options_with_defaults(entry.options if entry is not None else {})
    base = get_settings(hass).tasmota_ota_base_url or tasmota_releases.DEFAULT_OTA_BASE_URL
    try:
        return target_build(
            options[OPT_BUILD],
            language=options[OPT_LANGUAGE],
            custom_url=options[OPT_CUSTOM_URL] or None,
            base_url=base,
        )
    except ValueError:
        _LOGGER.warning("Unusable Tasmota build options %s; using the full build", options)
        return target_build("tasmota", base_url=base)


async def async_latest_release(hass: HomeAssistant) -> TasmotaRelease | None:
    """The newest Tasmota release (cached for an hour; None when unknown)."""
    cached = hass.data.get(_RELEASE_KEY)
    now = time.monotonic()
    if cached is not None and now - cached[0] < RELEASE_CACHE_SECONDS:
        return cached[1]
    configured = get_settings(hass).tasmota_releases_url
    url = tasmota_releases.DEFAULT_RELEASES_URL if configured is None else configured
    if not url:  # "" turns the lookup off (offline installs, tests)
        return None
    release = await tasmota_releases.fetch_latest_release(async_get_clientsession(hass), url)
    hass.data[_RELEASE_KEY] = (now, release)
    return release


def url_checker(hass: HomeAssistant) -> UrlCheck:
    """`exists(url)` with HA's session: True 200, False 404, None anything else."""
    session = async_get_clientsession(hass)

    async def exists(url: str) -> bool | None:
        try:
            async with session.head(url, timeout=_URL_CHECK_TIMEOUT, allow_redirects=True) as r:
                if r.status == 200:
                    return True
                return False if r.status == 404 else None
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    return exists


async def async_image_size(hass: HomeAssistant, url: str) -> int | None:
    """The image's size from a HEAD request (None when the server does not say)."""
    session = async_get_clientsession(hass)
    try:
        async with session.head(url, timeout=_SIZE_TIMEOUT, allow_redirects=True) as response:
            if response.status != 200:
                return None
            return response.content_length or None
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None


@asynccontextmanager
async def async_mqtt_feed(
    hass: HomeAssistant, topics: Iterable[str]
) -> AsyncIterator[DiscoveryFeed]:
    """A feed of `topics` from HA's MQTT (unsubscribed on exit)."""
    from homeassistant.components import mqtt  # noqa: PLC0415

    feed = DiscoveryFeed()

    @callback
    def forward(message: ReceiveMessage) -> None:
        payload: Any = message.payload
        feed.push(
            message.topic,
            bytes(payload) if isinstance(payload, bytearray) else payload,
            retained=message.retain,
        )

    topics = tuple(topics)
    unsubscribes = [await mqtt.async_subscribe(hass, topic, forward) for topic in topics]
    try:
        # HA sends SUBSCRIBE after a cooldown (0.1-0.5 s): a fast answer (a quick "Failed")
        # would otherwise be lost. 2026.x tells us when each is done; 2025.4 does not.
        pending = set(topics)
        done = asyncio.Event()

        def done_for(topic: str) -> CALLBACK_TYPE:
            @callback
            def on_done() -> None:
                pending.discard(topic)
                if not pending:
                    done.set()

            return on_done

        acknowledged = True
        for topic in topics:
            cancel = _on_subscribe_done(hass, topic, done_for(topic))
            if cancel is None:
                acknowledged = False
                break
            unsubscribes.append(cancel)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SUBSCRIBE_WAIT):
                if acknowledged:
                    await done.wait()
                else:
                    await asyncio.sleep(_UNACKNOWLEDGED_SUBSCRIBE)
        yield feed
    finally:
        for unsubscribe in unsubscribes:
            unsubscribe()


async def async_run_upgrade(
    hass: HomeAssistant,
    target: UpgradeTarget,
    build: TargetBuild,
    *,
    before: TasmotaBuild | None = None,
    tracker: UpgradeTracker | None = None,
) -> UpgradeResult:
    """Upgrade `target` to `build` over HA's MQTT; raises `UpgradeError`.

    Refused with `UpgradeBusyError` while another upgrade of the device runs and with
    `UpgradeSettlingError` while a timed-out one may still be downloading (see the
    module docstring). MQTT itself failing raises HA's `HomeAssistantError` (from
    `mqtt.async_publish`).
    """
    state = device_upgrades(hass, target.mac)
    if state.running:
        raise UpgradeBusyError(target.mac)
    if state.settling:
        raise UpgradeSettlingError(state.minutes_left)
    timeouts = get_settings(hass).timeouts
    tracker = tracker or UpgradeTracker(device_label=target.mac)
    state.tracker, state.running = tracker, True
    try:
        async with async_mqtt_feed(hass, target.subscriptions) as feed:
            upgrade = TasmotaUpgrade(
                mqtt_publisher(hass),
                feed,
                target,
                build.ota_url,
                expected_build=build.build,
                before=before,
                timeout=timeouts.tasmota_upgrade,
                url_exists=url_checker(hass),
                tracker=tracker,
            )
            return await upgrade.run()
    except UpgradeError as err:
        if _may_still_download(err):
            await _async_watch_until_settled(hass, target, state, timeouts.tasmota_upgrade_cooldown)
        raise
    finally:
        state.running = False


def _may_still_download(err: UpgradeError) -> bool:
    """A timeout before the device was back on MQTT, or `Upgrade 1` sent but unanswered."""
    if err.code is UpgradeErrorCode.TIMEOUT:
        return err.placeholders.get("stage") != str(UpgradeStage.CONFIRMING)
    return err.code is UpgradeErrorCode.NO_ANSWER and err.placeholders.get("command") == "Upgrade"


async def _async_watch_until_settled(
    hass: HomeAssistant, target: UpgradeTarget, state: DeviceUpgrades, cooldown: float
) -> None:
    """After a timeout: settle on a live discovery, a `Failed` result, or the cooldown."""
    from homeassistant.components import mqtt  # noqa: PLC0415

    for stop in state._stop_watching:  # an older watch (if any) ends; this one replaces it
        stop()
    state._stop_watching.clear()
    state.settled = asyncio.Event()
    state.settle_until = time.monotonic() + cooldown
    upgrade_topic = target.topic_for("stat", "UPGRADE")

    @callback
    def on_message(message: ReceiveMessage) -> None:
        if message.retain:
            return  # the broker's copy from before, not the device now
        payload: Any = message.payload
        text = payload.decode(errors="replace") if isinstance(payload, bytes) else str(payload)
        if message.topic == upgrade_topic:
            if "Failed" in text:
                state.settle("the device reported its download failed")
            return
        with contextlib.suppress(TasmotaDiscoveryError):
            device = parse_discovery(message.topic, text)
            if isinstance(device, TasmotaDevice) and device.mac == target.mac:
                state.settle(f"{target.mac} is back on MQTT ({device.sw})")

    @callback
    def on_cooldown(_now: Any) -> None:
        state.settle(f"cooldown of {cooldown:.0f} s passed")

    state._stop_watching.append(async_call_later(hass, cooldown, on_cooldown))
    for topic in (f"tasmota/discovery/{target.mac}/config", upgrade_topic):
        state._stop_watching.append(await mqtt.async_subscribe(hass, topic, on_message))
