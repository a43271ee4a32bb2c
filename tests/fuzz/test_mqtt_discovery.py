"""Generated Tasmota discovery messages through a real Mosquitto and HA's real MQTT.

Each message is published on `tasmota/discovery/<MAC>/config` (MACs of every spelling) via
HA's MQTT integration, comes back through the integration's own subscription
(`tasmota_link.async_discovery_feed`, the hand-off's discovery source) and is parsed as the
hand-off parses it. Topics MQTT cannot publish on (`+`, `#`, empty levels) and topics outside
the subscription go to the parser directly. A raw exception or an ERROR in HA's log fails.
"""

from __future__ import annotations

import asyncio
import re

from homeassistant.components import mqtt
from homeassistant.core import HomeAssistant
from hypothesis import strategies as st
import pytest

from custom_components.sonoff_ota.proto.tasmota_mqtt_feed import DiscoveryFeed
from custom_components.sonoff_ota.tasmota_link import async_discovery_feed

from .driver import CrashError, drive, watching_logs
from .strategies import MACS, discovery_message
from .surfaces import discovery_case

# MQTT's periodic timer outlives a test by design (as in the other real-MQTT tests).
pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.parametrize("expected_lingering_timers", [True]),
    pytest.mark.parametrize("expected_lingering_tasks", [True]),
]
PROBE = "tasmota/discovery/000000000000/config"
_SUBSCRIBED = re.compile(r"^tasmota/discovery/[^/+#]+/config$")


def _utf8(payload: bytes) -> bool:
    try:
        payload.decode()
    except UnicodeDecodeError:
        return False
    return True


async def _until_subscribed(hass: HomeAssistant, feed: DiscoveryFeed) -> None:
    """HA 2025.4 has no subscribe acknowledgement: publish a probe until it comes back."""
    async with asyncio.timeout(20):
        while True:
            await mqtt.async_publish(hass, PROBE, "")
            try:
                got = await asyncio.wait_for(feed.get(), 0.5)
            except TimeoutError:
                continue
            if got.topic == PROBE:
                feed.drain()
                return


async def test_discovery_messages_through_a_real_broker(
    hass: HomeAssistant, socket_enabled: None, real_mqtt: None
) -> None:
    delivered = 0
    with watching_logs() as watch:
        async with async_discovery_feed(hass) as feed:
            await _until_subscribed(hass, feed)

            async def case(message: tuple[str, bytes]) -> None:
                nonlocal delivered
                topic, payload = message
                if _SUBSCRIBED.match(topic) and not _utf8(payload):
                    # HA's MQTT drops (with a warning) what its UTF-8 subscription cannot
                    # decode: it is published, but only the parser below can see it.
                    await mqtt.async_publish(hass, topic, payload)
                elif _SUBSCRIBED.match(topic):
                    await mqtt.async_publish(hass, topic, payload)
                    async with asyncio.timeout(10):
                        while (got := await feed.get()).topic == PROBE:
                            pass  # a late echo of the warm-up
                    assert got.topic == topic
                    delivered += 1
                    message = (
                        got.topic,
                        bytes(got.payload)
                        if isinstance(got.payload, bytes)
                        else got.payload.encode(),
                    )
                discovery_case(message)
                if problems := watch.take():
                    raise CrashError("; ".join(problems))

            # every message of the first run is on the subscription, so it crosses the broker;
            # the second run mixes in every other topic shape (those go to the parser only)
            on_subscription = st.tuples(
                st.sampled_from([mac for mac in MACS if mac]), discovery_message()
            ).map(
                lambda drawn: (
                    f"tasmota/discovery/{drawn[0]}/config",
                    drawn[1][1].decode("utf-8", "replace").encode(),
                )
            )
            crossed = await drive(on_subscription, case, max_examples=15, within=15)
            assert crossed.cases >= 10 and delivered == crossed.cases, (crossed.cases, delivered)
            await drive(discovery_message(), case, max_examples=30, within=15)
    assert delivered > crossed.cases, "the mixed run put no message through the broker"
