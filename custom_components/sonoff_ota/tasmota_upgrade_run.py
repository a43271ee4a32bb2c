"""The Home Assistant side of the lite → full upgrade: MQTT feed, URL checks, releases.

`proto.tasmota_upgrade.TasmotaUpgrade` does the protocol; this module gives it
HA's MQTT (`mqtt.async_subscribe` / `mqtt.async_publish`), an HTTP check of the
OtaUrl from HA's side (to tell "file too big, no -minimal sibling" from "missing
file"), the newest Tasmota release (cached), and the build the entry's options
choose. The "Tasmota firmware" update entity and a config-flow step both call
`async_run_upgrade`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
import contextlib
from contextlib import asynccontextmanager
import logging
import time
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.util.hass_dict import HassKey

from .const import DOMAIN
from .options_flow import OPT_BUILD, OPT_CUSTOM_URL, OPT_LANGUAGE, options_with_defaults
from .proto import tasmota_releases
from .proto.tasmota_mqtt_feed import DiscoveryFeed
from .proto.tasmota_releases import TargetBuild, TasmotaRelease, target_build
from .proto.tasmota_upgrade import (
    TasmotaBuild,
    TasmotaUpgrade,
    UpgradeResult,
    UpgradeTarget,
    UrlCheck,
)
from .proto.tasmota_upgrade_stages import UpgradeTracker
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


def chosen_build(hass: HomeAssistant, entry: ConfigEntry) -> TargetBuild:
    """The image the entry's options choose (default: the full `tasmota` build)."""
    options = options_with_defaults(entry.options)
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

    MQTT itself failing raises HA's `HomeAssistantError` (from `mqtt.async_publish`).
    """
    timeouts = get_settings(hass).timeouts
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
