"""The Tasmota hand-off (AP → Backlog → discovery) against the virtual Tasmota on loopback.

Mocked: only the Wi-Fi radio. The Tasmota AP (192.168.4.1:80) is the virtual
device's AP listener on a 127.0.0.1 port; "AP not reachable" is a closed
127.0.0.1 port. The discovery source is either fed directly (pure cases) or from
a real Mosquitto through an MQTT subscription (the `mosquitto` cases).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
import json
from pathlib import Path
import re
from typing import Any

import aiohttp
import pytest

from custom_components.sonoff_ota.proto.flash_stages import FlashPath, FlashTracker, Stage
from custom_components.sonoff_ota.proto.tasmota_handoff import TasmotaHandoff
from custom_components.sonoff_ota.proto.tasmota_handoff_types import (
    DETAIL_CONFIGURED_BY,
    DETAIL_PHONE_LINK,
    DETAIL_SSID,
    AmbiguousDeviceError,
    ConfiguredBy,
    DeviceMqttSettings,
    EwelinkIdentity,
    HandoffError,
    HandoffErrorCode,
    HandoffResult,
    HandoffTimeouts,
    WifiSettings,
)
from custom_components.sonoff_ota.proto.tasmota_mqtt_feed import (
    DISCOVERY_SUBSCRIPTION,
    LWT_SUBSCRIPTION,
    DiscoveryFeed,
)
from custom_components.sonoff_ota.proto.tasmota_settings import TasmotaSettingsError
from tests.harness import LOOPBACK, free_port
from virtual_sonoff.images import tasmota_lite
from virtual_sonoff.mosquitto import MosquittoBroker
from virtual_sonoff.mqtt_client import MqttClient, MqttMessage
from virtual_sonoff.profile import Fault, Faults
from virtual_sonoff.tasmota import TasmotaMode, VirtualTasmota, _Outcome

MAC = "5CCF7F3D5E26"  # spec §3.1 example SSID tasmota_3D5E26-7718
OTHER_MAC = "AABBCC62E43F"
WIFI = WifiSettings("HomeNet", "wifi-secret-pw")
MQTT_PW = "mqtt-secret-pw"
FAST = HandoffTimeouts(
    ap_window=1.5,
    discovery=1.5,
    probe=0.5,
    probe_interval=0.05,
    phone_link_delay=0.1,
    confirm=1.0,
    ambiguity_window=0.2,
)

# AP unreachable: the wait is the AP window plus the discovery timeout.
PHONE_PATH = replace(FAST, ap_window=0.4, discovery=0.4)


def discovery_payload(mac: str, **overrides: Any) -> str:
    doc = VirtualTasmota(b"", mac=mac).discovery_config()
    doc.update(overrides)
    return json.dumps(doc)


def closed_ap_url() -> str:
    return f"http://{LOOPBACK}:{free_port()}"


def make_handoff(
    session: aiohttp.ClientSession,
    tracker: FlashTracker,
    feed: DiscoveryFeed,
    *,
    ap_url: str,
    mqtt: DeviceMqttSettings | None = None,
    device: EwelinkIdentity | None = None,
    timeouts: HandoffTimeouts = FAST,
    **kwargs: Any,
) -> TasmotaHandoff:
    return TasmotaHandoff(
        session,
        tracker,
        wifi=WIFI,
        mqtt=mqtt or DeviceMqttSettings(LOOPBACK, 1883, "ha-user", MQTT_PW),
        feed=feed,
        device=device,
        ap_url=ap_url,
        timeouts=timeouts,
        **kwargs,
    )


@asynccontextmanager
async def broker_feed(broker: MosquittoBroker) -> AsyncIterator[DiscoveryFeed]:
    """A feed backed by a real subscription, as the HA side does with mqtt.async_subscribe."""
    feed = DiscoveryFeed()

    async def forward(message: MqttMessage) -> None:
        feed.push(message.topic, message.payload, retained=message.retain)

    async with MqttClient(broker.host, broker.port, client_id="handoff-feed") as client:
        for topic in (DISCOVERY_SUBSCRIPTION, LWT_SUBSCRIPTION):
            await client.subscribe(topic, forward)
        yield feed


@pytest.fixture
async def broker(socket_enabled: None, tmp_path: Path) -> AsyncIterator[MosquittoBroker]:
    async with MosquittoBroker(tmp_path) as running:
        yield running


@pytest.fixture
async def session(socket_enabled: None) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def tracker() -> FlashTracker:
    return FlashTracker(FlashPath.DIY, stage=Stage.WAIT_REBOOT)


# ------------------------------------------------------------------ real broker


@pytest.mark.mosquitto
async def test_ap_backlog_brings_device_to_broker_and_discovery(
    broker: MosquittoBroker, session: aiohttp.ClientSession
) -> None:
    flash = tracker()
    details_seen: list[dict[str, str]] = []
    flash.add_listener(lambda t: details_seen.append(dict(t.details)))
    async with (
        VirtualTasmota(tasmota_lite(4096), mac=MAC) as device,
        broker_feed(broker) as feed,
    ):
        handoff = make_handoff(
            session,
            flash,
            feed,
            ap_url=f"http://{LOOPBACK}:{device.ap_port}",
            mqtt=DeviceMqttSettings(broker.host, broker.port, "ha-user", MQTT_PW),
            device=EwelinkIdentity(
                deviceid="1000e4c17c", model="BASICR2", sta_mac="5c:cf:7f:3d:5e:26"
            ),
        )
        result = await handoff.run()
        await device.wait_mqtt_online()

        assert device.mode is TasmotaMode.STATION
        assert device.config.ssid1 == "HomeNet"
        assert device.config.password1 == "wifi-secret-pw"
        assert (device.config.mqtt_host, device.config.mqtt_port) == (broker.host, broker.port)
        assert device.config.mqtt_password == MQTT_PW
        assert device.config.device_name == "Sonoff Basic R2 e4c17c"
        assert device.config.full_topic == "%prefix%/%topic%/"  # untouched
        # One Backlog: the first HTTP request after the Status 5 probe carried everything.
        assert device.commands[0] == "Status 5"
        assert device.commands[1:] == [
            "SSID1 HomeNet",
            "Password1 ****",
            "MqttHost 127.0.0.1",
            f"MqttPort {broker.port}",
            "MqttUser ha-user",
            "MqttPassword ****",
            "DeviceName Sonoff Basic R2 e4c17c",
            "FriendlyName1 Sonoff Basic R2 e4c17c",
            "Module 1",
            "SetOption19 0",
        ]

    assert result.mac == MAC
    assert result.topic == "tasmota_3D5E26"
    assert result.device_name == "Sonoff Basic R2 e4c17c"
    assert result.model_known is True
    assert result.configured_by is ConfiguredBy.HA
    assert result.relays == 1
    assert [h.stage for h in flash.history][-3:] == [
        Stage.TASMOTA_AP,
        Stage.CONFIGURING,
        Stage.WAIT_DISCOVERY,
    ]
    assert not flash.finished  # DONE is for the caller, once HA has the device
    assert flash.details[DETAIL_SSID] == "tasmota_3D5E26-7718"
    assert flash.details[DETAIL_CONFIGURED_BY] == "ha"
    # The AP answered at once: the password-bearing link was never needed.
    assert all(DETAIL_PHONE_LINK not in seen for seen in details_seen)
    assert "secret" not in repr(handoff)


# ------------------------------------------------------------ errors on the AP


class _NoMqttHost(VirtualTasmota):
    """A build that does not know `MqttHost` (answers Unknown): the Backlog does not take."""

    def _handlers(self) -> dict[str, Callable[[str, str, str], _Outcome]]:
        handlers = super()._handlers()
        del handlers["MQTTHOST"]
        return handlers


class _QuietBacklog(VirtualTasmota):
    """Answers a Backlog with `{}` (a real reply may hold only what ran before it, §3.2)."""

    async def _run_commands(self, line: str) -> dict[str, Any]:
        result = await super()._run_commands(line)
        return {} if line.lower().startswith("backlog") else result


async def test_silent_backlog_is_confirmed_by_the_ap_going_away(
    session: aiohttp.ClientSession,
) -> None:
    flash = tracker()
    feed = DiscoveryFeed()

    def announce_when_waiting(t: FlashTracker) -> None:
        if t.stage is Stage.WAIT_DISCOVERY and not feed_used:
            feed_used.append(True)
            feed.push(f"tasmota/discovery/{MAC}/config", discovery_payload(MAC))

    feed_used: list[bool] = []
    flash.add_listener(announce_when_waiting)
    async with _QuietBacklog(b"", mac=MAC, faults=Faults({Fault.BROKER_UNREACHABLE})) as device:
        handoff = make_handoff(session, flash, feed, ap_url=f"http://{LOOPBACK}:{device.ap_port}")
        result = await handoff.run()
        assert device.mode is TasmotaMode.STATION
    assert result.configured_by is ConfiguredBy.HA
    assert flash.details[DETAIL_CONFIGURED_BY] == "ha"


async def test_web_password_denies_the_backlog(session: aiohttp.ClientSession) -> None:
    flash = tracker()
    async with VirtualTasmota(b"", mac=MAC, web_password="not-ours") as device:
        handoff = make_handoff(
            session, flash, DiscoveryFeed(), ap_url=f"http://{LOOPBACK}:{device.ap_port}"
        )
        with pytest.raises(HandoffError) as caught:
            await handoff.run()
        assert device.config.ssid1 == ""  # nothing was applied
        assert device.mode is TasmotaMode.AP
    assert caught.value.code is HandoffErrorCode.TASMOTA_DENIED
    assert flash.error is not None
    assert flash.error.code == "tasmota_denied"
    assert flash.error.placeholders == {"reason": "auth_required"}
    assert [h.stage for h in flash.history][-2:] == [Stage.CONFIGURING, Stage.FAILED]


async def test_backlog_that_did_not_take(session: aiohttp.ClientSession) -> None:
    flash = tracker()
    async with _NoMqttHost(b"", mac=MAC) as device:
        handoff = make_handoff(
            session, flash, DiscoveryFeed(), ap_url=f"http://{LOOPBACK}:{device.ap_port}"
        )
        with pytest.raises(HandoffError) as caught:
            await handoff.run()
    assert caught.value.code is HandoffErrorCode.BACKLOG_FAILED
    assert flash.error is not None
    assert flash.error.code == "backlog_failed"


async def test_broker_unreachable_after_a_confirmed_backlog(
    session: aiohttp.ClientSession,
) -> None:
    flash = tracker()
    faults = Faults({Fault.BROKER_UNREACHABLE})
    async with VirtualTasmota(b"", mac=MAC, faults=faults) as device:
        handoff = make_handoff(
            session, flash, DiscoveryFeed(), ap_url=f"http://{LOOPBACK}:{device.ap_port}"
        )
        with pytest.raises(HandoffError) as caught:
            await handoff.run()
        assert device.mode is TasmotaMode.STATION
        assert device.mqtt_connect_failures > 0
    assert caught.value.code is HandoffErrorCode.BROKER_UNREACHABLE
    assert flash.error is not None
    assert flash.error.code == "broker_unreachable"
    assert flash.details[DETAIL_CONFIGURED_BY] == "ha"


async def test_invalid_settings_are_refused_before_anything_is_sent(
    session: aiohttp.ClientSession,
) -> None:
    with pytest.raises(TasmotaSettingsError) as caught:
        TasmotaHandoff(
            session,
            tracker(),
            wifi=WifiSettings("Home;Net", "pw"),
            mqtt=DeviceMqttSettings(LOOPBACK),
            feed=DiscoveryFeed(),
            ap_url=closed_ap_url(),
        )
    assert caught.value.code == "contains_semicolon"


# ------------------------------------------------- AP unreachable: phone path


async def run_with_feed(
    session: aiohttp.ClientSession,
    flash: FlashTracker,
    feed_actions: Callable[[DiscoveryFeed], None] | None = None,
    **kwargs: Any,
) -> HandoffResult:
    """Run a hand-off whose AP is unreachable; `feed_actions` runs once the phone link shows."""
    feed = DiscoveryFeed()
    handoff = make_handoff(
        session, flash, feed, ap_url=closed_ap_url(), timeouts=PHONE_PATH, **kwargs
    )
    done = False

    def on_change(t: FlashTracker) -> None:
        nonlocal done
        if DETAIL_PHONE_LINK in t.details and not done and feed_actions is not None:
            done = True
            feed_actions(feed)

    flash.add_listener(on_change)
    return await handoff.run()


async def test_never_shows_up_reports_not_found_and_shows_the_phone_link(
    session: aiohttp.ClientSession,
) -> None:
    flash = tracker()
    links: list[str] = []

    def keep_link(t: FlashTracker) -> None:
        if DETAIL_PHONE_LINK in t.details:
            links.append(t.details[DETAIL_PHONE_LINK])

    flash.add_listener(keep_link)
    with pytest.raises(HandoffError) as caught:
        await run_with_feed(session, flash, device=EwelinkIdentity(sta_mac=MAC))
    assert caught.value.code is HandoffErrorCode.TASMOTA_NOT_FOUND
    assert flash.error is not None
    assert flash.error.code == "tasmota_not_found"
    # The phone link is the whole Backlog for 192.168.4.1's stand-in, passwords included...
    assert links
    assert "/cm?cmnd=Backlog%20SSID1%20HomeNet%3BPassword1%20wifi-secret-pw%3B" in links[0]
    # ...and is gone from the tracker once the hand-off ended.
    assert DETAIL_PHONE_LINK not in flash.details
    assert flash.details[DETAIL_SSID] == "tasmota_3D5E26-7718"


async def test_phone_path_matches_on_the_mac(session: aiohttp.ClientSession) -> None:
    def phone_configured(feed: DiscoveryFeed) -> None:
        # An existing device re-announcing itself, then ours.
        feed.push(f"tasmota/discovery/{OTHER_MAC}/config", discovery_payload(OTHER_MAC))
        feed.push(f"tasmota/discovery/{MAC}/config", discovery_payload(MAC, ip="192.0.2.7"))

    flash = tracker()
    result = await run_with_feed(
        session, flash, phone_configured, device=EwelinkIdentity(sta_mac="5C-CF-7F-3D-5E-26")
    )
    assert (result.mac, result.ip) == (MAC, "192.0.2.7")
    assert result.configured_by is ConfiguredBy.PHONE
    assert result.model_known is False
    assert flash.stage is Stage.WAIT_DISCOVERY


async def test_no_mac_takes_the_first_new_device_not_the_known_ones(
    session: aiohttp.ClientSession,
) -> None:
    def phone_configured(feed: DiscoveryFeed) -> None:
        feed.push(f"tasmota/discovery/{OTHER_MAC}/config", discovery_payload(OTHER_MAC))
        feed.push(f"tasmota/discovery/{MAC}/config", discovery_payload(MAC))

    result = await run_with_feed(session, tracker(), phone_configured, known_macs=[OTHER_MAC])
    assert result.mac == MAC


async def test_two_new_devices_without_a_mac_are_ambiguous(
    session: aiohttp.ClientSession,
) -> None:
    def two_at_once(feed: DiscoveryFeed) -> None:
        feed.push(f"tasmota/discovery/{MAC}/config", discovery_payload(MAC))
        feed.push(f"tasmota/discovery/{OTHER_MAC}/config", discovery_payload(OTHER_MAC))

    flash = tracker()
    with pytest.raises(AmbiguousDeviceError) as caught:
        await run_with_feed(session, flash, two_at_once)
    assert caught.value.code is HandoffErrorCode.AMBIGUOUS_DEVICE
    assert {d.mac for d in caught.value.candidates} == {MAC, OTHER_MAC}
    assert caught.value.placeholders == {"candidates": f"{MAC}, {OTHER_MAC}"}
    assert not flash.finished  # the UI asks the user, then finishes it


async def test_retained_discovery_without_life_is_broker_unreachable(
    session: aiohttp.ClientSession,
) -> None:
    def stale(feed: DiscoveryFeed) -> None:
        feed.push(f"tasmota/discovery/{MAC}/config", discovery_payload(MAC), retained=True)
        feed.push("tele/tasmota_3D5E26/LWT", "Offline", retained=True)

    flash = tracker()
    with pytest.raises(HandoffError) as caught:
        await run_with_feed(session, flash, stale, device=EwelinkIdentity(sta_mac=MAC))
    assert caught.value.code is HandoffErrorCode.BROKER_UNREACHABLE


async def test_retained_discovery_with_lwt_online_is_accepted(
    session: aiohttp.ClientSession,
) -> None:
    def online(feed: DiscoveryFeed) -> None:
        feed.push(f"tasmota/discovery/{MAC}/config", discovery_payload(MAC), retained=True)
        feed.push("tele/tasmota_3D5E26/LWT", "Online", retained=True)

    result = await run_with_feed(session, tracker(), online, device=EwelinkIdentity(sta_mac=MAC))
    assert result.mac == MAC


async def test_online_without_discovery_is_discovery_blocked(
    session: aiohttp.ClientSession,
) -> None:
    def acl_blocks(feed: DiscoveryFeed) -> None:
        feed.push("tele/tasmota_3D5E26/LWT", "Online")

    with pytest.raises(HandoffError) as caught:
        await run_with_feed(session, tracker(), acl_blocks, device=EwelinkIdentity(sta_mac=MAC))
    assert caught.value.code is HandoffErrorCode.DISCOVERY_BLOCKED


class RecordingHop:
    """A stand-in for the host Wi-Fi hop (no radio here): records calls, can fail."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.patterns: list[re.Pattern[str]] = []
        self.restores = 0

    async def join_tasmota_ap(self, pattern: re.Pattern[str], timeout: float) -> str:  # noqa: ASYNC109
        self.patterns.append(pattern)
        if self.error is not None:
            raise self.error
        return "tasmota_3D5E26-7718"

    async def restore(self) -> None:
        self.restores += 1


async def test_failed_ap_hop_falls_back_to_the_phone_link(
    session: aiohttp.ClientSession,
) -> None:
    """The host could not join Tasmota's AP: the phone path runs as without a hop.

    The hop is a stand-in (no Wi-Fi radio here); the real one is exercised against the
    fake NetworkManager in tests/test_wifi_hop_flow.py.
    """
    hop = RecordingHop(TimeoutError("no tasmota_ AP in range"))
    flash = tracker()
    links: list[str] = []
    flash.add_listener(
        lambda t: (
            links.append(t.details[DETAIL_PHONE_LINK]) if DETAIL_PHONE_LINK in t.details else None
        )
    )
    with pytest.raises(HandoffError) as caught:
        await run_with_feed(session, flash, device=EwelinkIdentity(sta_mac=MAC), ap_hop=hop)
    assert caught.value.code is HandoffErrorCode.TASMOTA_NOT_FOUND
    assert links, "the phone link is shown when the hop fails"
    (pattern,) = hop.patterns
    assert pattern.match("tasmota_3D5E26-7718")
    assert pattern.match("tasmota-3d5e26-7718")
    assert not pattern.match("tasmota_62E43F-1087"), "only this device's AP"
    assert hop.restores >= 1, "the home network is always put back"
