"""From Tasmota's first boot to its MQTT discovery: the hand-off both flash paths end in.

Stages (on a given `FlashTracker`): TASMOTA_AP → CONFIGURING → WAIT_DISCOVERY.
The caller marks DONE once HA has the device (the HA side waits for the registry).

Facts: shared/spec/diy-ota-and-tasmota.md §3.1 (Wi-Fi manager AP at 192.168.4.1, open,
one client, ~3 min), §3.2 (`/cm`, Referer check skipped in manager mode), §3.3 (commands),
§3.5 (retained `tasmota/discovery/<MAC>/config`, `sw`), §3.7 (lite → full), §5 items
10-12. Since Tasmota 15.5.0 the station-mode `/cm` refuses requests without a Referer
(SetOption128 defaults to 0), so everything goes in ONE Backlog sent to the AP and the
device is afterwards only talked to over MQTT.

How "broker unreachable" is told apart from "device never shows up" (no device-side
signal exists for the broker being unreachable):
- we configured the device ourselves through the AP and the Backlog was confirmed, yet
  no live discovery and no LWT `Online` arrived before the timeout → `broker_unreachable`
  (the device got Wi-Fi and MQTT settings; what is left is the broker link);
- a retained discovery of the target MAC was seen but the device never came alive (no
  live discovery, no LWT `Online`) → `broker_unreachable`;
- LWT `Online` for the target's topic but no discovery → `discovery_blocked` (broker ACL
  refuses writes to `tasmota/discovery/#`, or discovery disabled; spec §3.6);
- otherwise (phone path, or the Backlog could not be confirmed) → `tasmota_not_found`.

No Home Assistant imports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
import contextlib
from dataclasses import dataclass, field
import enum
import logging
import re
from typing import Any, Final, Protocol

import aiohttp

from .flash_stages import FlashTracker, Stage
from .tasmota_client import ExpectedSettings, TasmotaClient, TasmotaError, TasmotaErrorCode
from .tasmota_discovery import (
    DEFAULT_DISCOVERY_PREFIX,
    InvalidMacError,
    TasmotaDevice,
    TasmotaDiscoveryError,
    TasmotaRemoved,
    ap_ssid_pattern,
    default_topic,
    parse_discovery,
    predicted_ap_ssid,
    tasmota_mac,
)
from .tasmota_settings import (
    DEFAULT_AP_BASE_URL,
    TasmotaSettings,
    build_backlog,
    derive_names,
    lookup_hardware,
    phone_backlog_link,
)

_LOGGER = logging.getLogger(__name__)

DISCOVERY_SUBSCRIPTION: Final = f"{DEFAULT_DISCOVERY_PREFIX}/+/config"
"""What the discovery source must be subscribed to."""
LWT_SUBSCRIPTION: Final = "tele/+/LWT"
"""Optional second subscription: default FullTopic `%prefix%/%topic%/` (left untouched)."""
SUBSCRIPTIONS: Final = (DISCOVERY_SUBSCRIPTION, LWT_SUBSCRIPTION)
_LWT_RE = re.compile(r"^tele/(?P<topic>[^/]+)/LWT$")
SSID_PATTERN: Final = "tasmota_XXXXXX-NNNN"

# Tracker detail keys (values are strings; FlashTracker.details is dict[str, str]).
DETAIL_SSID: Final = "tasmota_ssid"
DETAIL_PHONE_LINK: Final = "tasmota_phone_link_secret"
"""The one-tap `/cm?cmnd=Backlog ...` link: it CONTAINS THE WI-FI AND MQTT PASSWORDS.
Show it only behind a warning; never log it; redact it in diagnostics."""
DETAIL_MAC: Final = "tasmota_mac"
DETAIL_IP: Final = "tasmota_ip"
DETAIL_CONFIGURED_BY: Final = "tasmota_configured_by"
DETAIL_CANDIDATES: Final = "tasmota_candidates"
DETAIL_MAC_MISMATCH: Final = "tasmota_mac_mismatch"
SECRET_DETAILS: Final = frozenset({DETAIL_PHONE_LINK})


class HandoffErrorCode(enum.StrEnum):
    """Stable keys of a failed hand-off (also the `FlashTracker.fail` codes)."""

    INVALID_SETTINGS = "invalid_tasmota_settings"
    TASMOTA_DENIED = "tasmota_denied"
    BACKLOG_FAILED = "backlog_failed"
    AMBIGUOUS_DEVICE = "ambiguous_device"
    TASMOTA_NOT_FOUND = "tasmota_not_found"
    BROKER_UNREACHABLE = "broker_unreachable"
    DISCOVERY_BLOCKED = "discovery_blocked"
    UPGRADE_FAILED = "upgrade_failed"


class ConfiguredBy(enum.StrEnum):
    """Who gave the device its settings."""

    HA = "ha"
    """We sent the Backlog to the AP and it was confirmed."""
    UNCONFIRMED = "unconfirmed"
    """We sent it but could not confirm it took (the AP dropped mid-request)."""
    PHONE = "phone"
    """The AP never answered us: the user's phone had to do it."""


class HandoffError(Exception):
    """A hand-off failure; `code` is a translation key, `placeholders` its values."""

    def __init__(self, code: HandoffErrorCode, message: str, **placeholders: str) -> None:
        """Keep the key and the (non-secret) placeholders."""
        super().__init__(message)
        self.code = code
        self.placeholders = placeholders


class AmbiguousDeviceError(HandoffError):
    """Two or more new Tasmota devices appeared and no MAC tells which one is ours.

    The tracker is NOT ended: the UI asks the user to pick one of `candidates`,
    then calls `HandoffResult.from_device(choice, ...)` and `tracker.done()`.
    """

    def __init__(self, candidates: tuple[TasmotaDevice, ...]) -> None:
        """Keep the candidates (MAC, IP, name each)."""
        macs = ", ".join(device.mac for device in candidates)
        super().__init__(
            HandoffErrorCode.AMBIGUOUS_DEVICE, f"new Tasmota devices: {macs}", candidates=macs
        )
        self.candidates = candidates


@dataclass(frozen=True, slots=True)
class WifiSettings:
    """The home Wi-Fi the device joins (2.4 GHz)."""

    ssid: str
    password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class DeviceMqttSettings:
    """The broker as the DEVICE must reach it (host already translated to a LAN address)."""

    host: str
    port: int = 1883
    user: str = ""
    password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class EwelinkIdentity:
    """What we know of the device from its eWeLink life; every field optional."""

    deviceid: str | None = None
    model: str | None = None
    sta_mac: str | None = None
    """eWeLink cloud `staMac` (any spelling); Tasmota's MAC is expected to equal it."""
    name: str | None = None
    """The user's eWeLink name (becomes DeviceName / FriendlyName1)."""


@dataclass(frozen=True, slots=True)
class HandoffTimeouts:
    """Seconds; `ap_window` / `discovery` come from `Settings.timeouts` (tasmota_ap, discovery)."""

    ap_window: float = 180.0
    """How long the AP is probed (Tasmota's Wi-Fi manager lives ~3 min, spec §3.1)."""
    discovery: float = 300.0
    """After the configuration (or after the AP window on the phone path)."""
    probe: float = 3.0
    """One AP probe request."""
    probe_interval: float = 1.0
    phone_link_delay: float = 5.0
    """The phone link is shown once the AP has not answered for this long."""
    confirm: float = 20.0
    """A Backlog reply that confirms nothing: how long we watch the AP go away."""
    ambiguity_window: float = 3.0
    """MAC unknown: after the first new device, how long a second one makes it ambiguous."""


@dataclass(frozen=True, slots=True)
class HandoffResult:
    """The Tasmota device HA will get."""

    mac: str
    """12 uppercase hex digits (as in the discovery topic)."""
    ip: str
    topic: str
    sw: str
    """Discovery `sw`: the version number only; `(lite)` is in Status 2 only."""
    device_name: str
    model: str
    """Discovery `md` (module/template name)."""
    model_known: bool
    """False: the eWeLink model was not in the table and Tasmota kept its default module."""
    relays: int
    hostname: str
    full_topic: str
    configured_by: ConfiguredBy

    @classmethod
    def from_device(
        cls, device: TasmotaDevice, *, model_known: bool, configured_by: ConfiguredBy
    ) -> HandoffResult:
        """Build the result from a parsed discovery message."""
        return cls(
            mac=device.mac,
            ip=device.ip,
            topic=device.topic,
            sw=device.sw,
            device_name=device.device_name,
            model=device.model,
            model_known=model_known,
            relays=device.relays,
            hostname=device.hostname,
            full_topic=device.full_topic or "%prefix%/%topic%/",
            configured_by=configured_by,
        )

    def command_topic(self, command: str) -> str:
        """`cmnd/<topic>/<command>` from the device's FullTopic."""
        base = self.full_topic.replace("%prefix%", "cmnd").replace("%topic%", self.topic)
        base = base.replace("%hostname%", self.hostname).replace("%id%", self.mac[-6:])
        return (base if base.endswith("/") else base + "/") + command


@dataclass(frozen=True, slots=True)
class MqttIn:
    """One MQTT message for the hand-off; `retained` = delivered from the broker's store."""

    topic: str
    payload: bytes | str = field(repr=False)
    retained: bool = False


class DiscoveryFeed:
    """The injected discovery source: a queue of `(topic, payload, retained)` messages.

    The HA side pushes from its `mqtt.async_subscribe` callbacks (on
    `SUBSCRIPTIONS`); tests push directly. `push` never blocks.
    """

    def __init__(self, max_queued: int = 1000) -> None:
        """An empty feed."""
        self._queue: asyncio.Queue[MqttIn] = asyncio.Queue(max_queued)

    def push(self, topic: str, payload: bytes | str, *, retained: bool = False) -> None:
        """Add a message (dropped when the queue is full: discovery is re-sent on reconnect)."""
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(MqttIn(topic, payload, retained))

    async def get(self) -> MqttIn:
        """The next message."""
        return await self._queue.get()

    def drain(self) -> None:
        """Forget what is queued (before waiting for something that follows an action)."""
        while not self._queue.empty():
            self._queue.get_nowait()


@dataclass(slots=True)
class _Watch:
    """What the feed told us so far."""

    known: set[str] = field(default_factory=set)
    """MACs that existed before (retained at subscribe time, or given by the caller)."""
    devices: dict[str, TasmotaDevice] = field(default_factory=dict)
    retained_seen: set[str] = field(default_factory=set)
    live: set[str] = field(default_factory=set)
    """MACs that published discovery while we listened (not from the retained store)."""
    online_topics: set[str] = field(default_factory=set)
    new_order: list[str] = field(default_factory=list)

    def take(self, message: MqttIn) -> None:
        lwt = _LWT_RE.match(message.topic)
        if lwt:
            payload = message.payload
            text = payload.decode(errors="replace") if isinstance(payload, bytes) else payload
            if text.strip() == "Online":
                self.online_topics.add(lwt["topic"])
            else:
                self.online_topics.discard(lwt["topic"])
            return
        try:
            parsed = parse_discovery(message.topic, message.payload)
        except TasmotaDiscoveryError as err:
            _LOGGER.debug("Ignoring discovery message on %s: %s", message.topic, err.code)
            return
        if isinstance(parsed, TasmotaRemoved):
            self.devices.pop(parsed.mac, None)
            return
        self.devices[parsed.mac] = parsed
        if message.retained:
            self.retained_seen.add(parsed.mac)
            return
        self.live.add(parsed.mac)
        if parsed.mac not in self.known and parsed.mac not in self.new_order:
            self.new_order.append(parsed.mac)

    def alive(self, mac: str) -> TasmotaDevice | None:
        """The device, once it has shown it is connected now (live discovery or LWT Online)."""
        device = self.devices.get(mac)
        if device is None:
            return None
        if mac in self.live or device.topic in self.online_topics:
            return device
        return None

    def new_devices(self) -> list[TasmotaDevice]:
        """Devices that appeared while we listened and were not known before."""
        return [
            self.devices[mac]
            for mac in self.new_order
            if mac in self.devices and mac not in self.known and mac not in self.retained_seen
        ]


_COMMAND_SPLIT_RE = re.compile(r"^([A-Za-z_]+\d*)\s+(.*)$")
# Commands whose reply we do not compare (secrets are masked, Template is echoed as JSON).
_NOT_COMPARED = frozenset({"password1", "mqttpassword", "template", "webpassword"})


def _reply_mismatches(commands: Iterable[str], reply: dict[str, Any]) -> list[str]:
    """Commands whose echoed value in the Backlog reply differs from what we sent."""
    lowered = {key.lower(): value for key, value in reply.items()}
    bad: list[str] = []
    for command in commands:
        match = _COMMAND_SPLIT_RE.match(command)
        if not match:
            continue
        name, argument = match.group(1), match.group(2)
        key = name.lower()
        if key in _NOT_COMPARED or key not in lowered:
            continue
        value = lowered[key]
        if isinstance(value, dict):  # Module answers {"Module": {"1": "Sonoff Basic"}}
            same = argument in value
        elif key.startswith("setoption"):
            same = str(value).upper() == {"0": "OFF", "1": "ON"}.get(argument, argument.upper())
        else:
            same = str(value) == argument
        if not same:
            bad.append(name)
    return bad


class TasmotaApHop(Protocol):
    """Moves the host onto Tasmota's first-boot AP and back (setup_mode_wifi.SetupModeWifi)."""

    async def join_tasmota_ap(self, pattern: re.Pattern[str], timeout: float) -> str:  # noqa: ASYNC109
        """Find and join the AP matching `pattern`; return its SSID (raises on failure)."""
        ...

    async def restore(self) -> object:
        """Back to the home network (idempotent, never raises)."""
        ...


class TasmotaHandoff:
    """Drive TASMOTA_AP → CONFIGURING → WAIT_DISCOVERY; `await handoff.run()`.

    The constructor builds the Backlog and raises `TasmotaSettingsError` (from
    proto.tasmota_settings) for values Tasmota cannot take, so a flow can check
    its input before anything is sent.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        tracker: FlashTracker,
        *,
        wifi: WifiSettings,
        mqtt: DeviceMqttSettings,
        feed: DiscoveryFeed,
        device: EwelinkIdentity | None = None,
        ap_url: str = DEFAULT_AP_BASE_URL,
        timeouts: HandoffTimeouts | None = None,
        known_macs: Iterable[str] = (),
        web_password: str | None = None,
        ap_hop: TasmotaApHop | None = None,
    ) -> None:
        """`feed` must already be subscribed (retained messages mark devices that exist).

        `known_macs`: Tasmota devices HA already has (never taken as "the new one").
        `web_password`: only for a device that already has one (not after a fresh flash).
        `ap_hop`: moves this host onto the device's AP (and back) where HA can move its
        Wi-Fi; without it, or when it fails, the AP is probed as is / the phone link shown.
        """
        self._ap_hop = ap_hop
        self._session = session
        self._tracker = tracker
        self._feed = feed
        self._device = device or EwelinkIdentity()
        self._ap_url = ap_url
        self._timeouts = timeouts or HandoffTimeouts()
        self._web_password = web_password
        self._mac = self._clean_mac(self._device.sta_mac)
        lookup = lookup_hardware(self._device.model)
        self._model_known = lookup.model_known
        device_name, friendly_name = derive_names(
            model=self._device.model, deviceid=self._device.deviceid, ewelink_name=self._device.name
        )
        self._settings = TasmotaSettings(
            mqtt_host=mqtt.host,
            mqtt_port=mqtt.port,
            mqtt_user=mqtt.user,
            mqtt_password=mqtt.password,
            ssid=wifi.ssid,
            wifi_password=wifi.password,
            device_name=device_name,
            friendly_name=friendly_name,
            hardware=lookup.hardware,
        )
        self.commands: list[str] = build_backlog(self._settings)
        """The Backlog (contains secrets: never log it; use redact_commands)."""
        self._watch = _Watch(known={m for m in map(self._clean_mac, known_macs) if m})
        self._changed = asyncio.Event()
        self._configured_by = ConfiguredBy.PHONE

    def __repr__(self) -> str:
        """No secrets."""
        return f"TasmotaHandoff(ap_url={self._ap_url!r}, mac={self._mac!r})"

    @staticmethod
    def _clean_mac(mac: str | None) -> str | None:
        if not mac:
            return None
        try:
            return tasmota_mac(mac)
        except InvalidMacError:
            _LOGGER.warning("Ignoring a MAC that is not one: %r", mac)
            return None

    @property
    def model_known(self) -> bool:
        """False when Tasmota keeps its default module (the UI should say so)."""
        return self._model_known

    # ------------------------------------------------------------------- run

    async def run(self) -> HandoffResult:
        """Run the three stages; return the device or raise HandoffError (tracker failed).

        `AmbiguousDeviceError` leaves the tracker running (see its docstring).
        """
        watcher = asyncio.create_task(self._consume_feed(), name="tasmota-handoff-feed")
        try:
            return await self._run()
        except AmbiguousDeviceError as err:
            self._tracker.update(None, **{DETAIL_CANDIDATES: err.placeholders["candidates"]})
            raise
        except HandoffError as err:
            self._tracker.fail(err.code, **err.placeholders)
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            # The link holds passwords: drop it once it is of no use.
            if self._tracker.details.pop(DETAIL_PHONE_LINK, None) is not None:
                self._tracker.update()

    async def _consume_feed(self) -> None:
        while True:
            message = await self._feed.get()
            self._watch.take(message)
            self._changed.set()

    async def _run(self) -> HandoffResult:
        loop = asyncio.get_running_loop()
        ssid = predicted_ap_ssid(self._mac) if self._mac else SSID_PATTERN
        self._tracker.advance(Stage.TASMOTA_AP, **{DETAIL_SSID: ssid})
        ap_deadline = loop.time() + self._timeouts.ap_window
        try:
            await self._join_ap(ap_deadline - loop.time())
            return await self._run_on_ap(ap_deadline)
        finally:
            await self._leave_ap()

    async def _join_ap(self, within: float) -> None:
        """Move the host onto the AP when it can; any failure leaves the phone path."""
        if self._ap_hop is None:
            return
        try:
            joined = await self._ap_hop.join_tasmota_ap(ap_ssid_pattern(self._mac), within)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            _LOGGER.warning("Could not join Tasmota's access point (%s); phone link instead", err)
            await self._leave_ap()
            return
        self._tracker.update(None, **{DETAIL_SSID: joined})

    async def _leave_ap(self) -> None:
        """Back home before waiting for MQTT (the device and the broker are there)."""
        if self._ap_hop is not None:
            await self._ap_hop.restore()

    async def _run_on_ap(self, ap_deadline: float) -> HandoffResult:
        loop = asyncio.get_running_loop()
        probe = asyncio.create_task(self._probe_ap(ap_deadline), name="tasmota-handoff-probe")
        probe.add_done_callback(lambda _: self._changed.set())
        link_at = loop.time() + self._timeouts.phone_link_delay
        try:
            while True:
                if probe.done():
                    break
                found = self._resolve_now()
                if found is not None:  # the phone configured it meanwhile
                    self._tracker.advance(
                        Stage.WAIT_DISCOVERY, **{DETAIL_CONFIGURED_BY: str(ConfiguredBy.PHONE)}
                    )
                    await self._leave_ap()
                    return await self._finish(found)
                now = loop.time()
                if now >= link_at and DETAIL_PHONE_LINK not in self._tracker.details:
                    self._show_phone_link()
                wait_for = (link_at if now < link_at else ap_deadline + 1.0) - now
                await self._wait_changed(wait_for)
        finally:
            if not probe.done():
                probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        reachable, ap_mac = probe.result()
        if reachable:
            self._adopt_ap_mac(ap_mac)
            await self._configure()
            self._tracker.details.pop(DETAIL_PHONE_LINK, None)
        else:
            self._show_phone_link()  # also when the delay was longer than the window
        await self._leave_ap()
        self._tracker.advance(
            Stage.WAIT_DISCOVERY, **{DETAIL_CONFIGURED_BY: str(self._configured_by)}
        )
        extra = 0.0 if reachable else self._timeouts.ap_window
        return await self._wait_discovery(loop.time() + self._timeouts.discovery + extra)

    # --------------------------------------------------------------- AP stage

    def _show_phone_link(self) -> None:
        if DETAIL_PHONE_LINK in self._tracker.details:
            return
        link = phone_backlog_link(self.commands, self._ap_url)
        self._tracker.update(None, **{DETAIL_PHONE_LINK: link})

    async def _probe_ap(self, deadline: float) -> tuple[bool, str | None]:
        """Poll the AP until it answers like a Tasmota; (reachable, MAC from Status 5)."""
        loop = asyncio.get_running_loop()
        client = TasmotaClient(
            self._session, self._ap_url, self._web_password, timeout=self._timeouts.probe
        )
        while loop.time() < deadline:
            try:
                reply = await client.status(5)
            except TasmotaError as err:
                if err.code in {
                    TasmotaErrorCode.AUTH_REQUIRED,
                    TasmotaErrorCode.AUTH_DENIED,
                    TasmotaErrorCode.REFERER_DENIED,
                    TasmotaErrorCode.UNKNOWN_COMMAND,
                }:
                    return True, None  # a Tasmota answers; CONFIGURING reports the denial
                # unreachable / timeout / not a Tasmota (e.g. a router at 192.168.4.1)
            else:
                net = reply.get("StatusNET")
                if isinstance(net, dict):
                    mac = net.get("Mac")
                    return True, mac if isinstance(mac, str) else None
            await asyncio.sleep(min(self._timeouts.probe_interval, max(deadline - loop.time(), 0)))
        return False, None

    def _adopt_ap_mac(self, ap_mac: str | None) -> None:
        """The AP's own MAC wins over eWeLink's `staMac` (it is the device we configure)."""
        mac = self._clean_mac(ap_mac)
        if mac is None:
            return
        if self._mac and self._mac != mac:
            # staMac == Tasmota MAC is an inference (spec §2 item 3), not verified.
            _LOGGER.warning("Tasmota AP reports MAC %s, eWeLink said %s", mac, self._mac)
            self._tracker.update(None, **{DETAIL_MAC_MISMATCH: f"{self._mac}->{mac}"})
        self._mac = mac
        self._tracker.update(None, **{DETAIL_MAC: mac, DETAIL_SSID: predicted_ap_ssid(mac)})

    # -------------------------------------------------------- CONFIGURING stage

    async def _configure(self) -> None:
        """One Backlog to the AP (Referer check skipped in manager mode, spec §3.1)."""
        self._tracker.advance(Stage.CONFIGURING)
        client = TasmotaClient(self._session, self._ap_url, self._web_password)
        try:
            reply = await client.backlog(self.commands)
        except TasmotaError as err:
            if err.code in {
                TasmotaErrorCode.REFERER_DENIED,
                TasmotaErrorCode.AUTH_REQUIRED,
                TasmotaErrorCode.AUTH_DENIED,
            }:
                raise HandoffError(
                    HandoffErrorCode.TASMOTA_DENIED, str(err), reason=str(err.code)
                ) from err
            if err.code in {TasmotaErrorCode.UNKNOWN_COMMAND, TasmotaErrorCode.BAD_REPLY}:
                raise HandoffError(
                    HandoffErrorCode.BACKLOG_FAILED, str(err), reason=str(err.code)
                ) from err
            # Unreachable / timeout: the AP may have gone because the device already
            # restarted with the settings. Wait for discovery; it decides.
            _LOGGER.warning("No reply to the Backlog (%s); waiting for discovery", err.code)
            self._configured_by = ConfiguredBy.UNCONFIRMED
            return
        bad = _reply_mismatches(self.commands, reply)
        if bad:
            raise HandoffError(
                HandoffErrorCode.BACKLOG_FAILED,
                f"settings not taken: {', '.join(bad)}",
                reason=", ".join(bad),
            )
        self._tracker.update(0.5)
        lowered = {key.lower() for key in reply}
        if not {"ssid1", "mqtthost"} <= lowered:
            # A real Backlog runs its entries 200 ms apart (SetOption34) and the reply
            # may hold only part of them [infer, spec §3.2]: confirm another way.
            await self._confirm(client)
        self._configured_by = ConfiguredBy.HA
        self._tracker.update(1.0)

    async def _confirm(self, client: TasmotaClient) -> None:
        """SSID1 restarts the device into station mode: the AP going away confirms it.

        If the AP is still there after `confirm` seconds, read the settings back.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeouts.confirm
        while loop.time() < deadline:
            try:
                await client.status(5)
            except TasmotaError as err:
                if err.code in {TasmotaErrorCode.UNREACHABLE, TasmotaErrorCode.TIMEOUT}:
                    return
            await asyncio.sleep(self._timeouts.probe_interval)
        expected = ExpectedSettings(
            mqtt_host=self._settings.mqtt_host,
            mqtt_port=self._settings.mqtt_port,
            device_name=self._settings.device_name,
        )
        try:
            mismatches = await client.verify_settings(expected)
        except TasmotaError as err:
            if err.code in {TasmotaErrorCode.UNREACHABLE, TasmotaErrorCode.TIMEOUT}:
                return  # gone after all
            raise HandoffError(
                HandoffErrorCode.BACKLOG_FAILED, str(err), reason=str(err.code)
            ) from err
        if mismatches:
            names = ", ".join(sorted(mismatches))
            raise HandoffError(
                HandoffErrorCode.BACKLOG_FAILED, f"settings not taken: {names}", reason=names
            )

    # ----------------------------------------------------- WAIT_DISCOVERY stage

    def _resolve_now(self) -> TasmotaDevice | None:
        """The target device if it is there and alive (MAC known) — no ambiguity logic."""
        if self._mac is not None:
            return self._watch.alive(self._mac)
        new = self._watch.new_devices()
        return new[0] if new else None

    async def _wait_discovery(self, deadline: float) -> HandoffResult:
        loop = asyncio.get_running_loop()
        while True:
            found = self._resolve_now()
            if found is not None:
                return await self._finish(found)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._not_found()
            self._tracker.update(1.0 - remaining / max(self._timeouts.discovery, 0.001))
            await self._wait_changed(remaining)

    async def _finish(self, first: TasmotaDevice) -> HandoffResult:
        device = first
        if self._mac is None:
            # No MAC: a second new device within the window makes it ambiguous.
            loop = asyncio.get_running_loop()
            until = loop.time() + self._timeouts.ambiguity_window
            while (remaining := until - loop.time()) > 0:
                await self._wait_changed(remaining)
            new = self._watch.new_devices()
            if len(new) > 1:
                raise AmbiguousDeviceError(tuple(new))
            device = new[0] if new else first
        self._tracker.update(1.0, **{DETAIL_MAC: device.mac, DETAIL_IP: device.ip})
        return HandoffResult.from_device(
            device, model_known=self._model_known, configured_by=self._configured_by
        )

    def _not_found(self) -> HandoffError:
        mac = self._mac
        if mac is not None:
            if default_topic(mac) in self._watch.online_topics and mac not in self._watch.devices:
                return HandoffError(
                    HandoffErrorCode.DISCOVERY_BLOCKED, f"{mac}: online, no discovery", mac=mac
                )
            if mac in self._watch.retained_seen:
                return HandoffError(
                    HandoffErrorCode.BROKER_UNREACHABLE, f"{mac}: known but not online", mac=mac
                )
        if self._configured_by is ConfiguredBy.HA:
            return HandoffError(
                HandoffErrorCode.BROKER_UNREACHABLE,
                "configured, but the device never reached the broker",
                mac=mac or "",
            )
        return HandoffError(
            HandoffErrorCode.TASMOTA_NOT_FOUND, "no Tasmota device appeared", mac=mac or ""
        )

    async def _wait_changed(self, seconds: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._changed.wait()


# ------------------------------------------------------------ lite → full


@dataclass(frozen=True, slots=True)
class UpgradeResult:
    """What Tasmota's own OTA changed, judged from discovery."""

    sw_before: str
    sw_after: str

    @property
    def version_changed(self) -> bool:
        """True when discovery `sw` moved (same-number lite → full leaves it unchanged)."""
        return self.sw_before != self.sw_after


type Publish = Callable[[str, str], Awaitable[None]]
"""`publish(topic, payload)`, e.g. a wrapper around HA's `mqtt.async_publish`."""


async def upgrade_to_full(
    publish: Publish,
    feed: DiscoveryFeed,
    device: HandoffResult,
    ota_url: str,
    *,
    within: float = 300.0,
) -> UpgradeResult:
    """`Backlog OtaUrl <url>; Upgrade 1` over MQTT, then wait for the reboot's discovery.

    ESP8266 OTA is plain http and wants `.bin.gz` (spec §3.3, §3.7). Discovery `sw`
    carries no build suffix, so the reliable lite/full marker is `Status 2`
    (`Version` ends in `(lite)` / `(tasmota)`); here we only wait for the device to
    come back (a live discovery) and report the `sw` it then announces.
    Raises HandoffError(`upgrade_failed`) when it does not come back in time.
    """
    if not ota_url.startswith("http://") or ";" in ota_url:
        raise HandoffError(HandoffErrorCode.UPGRADE_FAILED, "OtaUrl must be plain http://")
    feed.drain()
    await publish(device.command_topic("Backlog"), f"OtaUrl {ota_url};Upgrade 1")
    try:
        async with asyncio.timeout(within):
            while True:
                message = await feed.get()
                if message.retained:
                    continue
                try:
                    parsed = parse_discovery(message.topic, message.payload)
                except TasmotaDiscoveryError:
                    continue
                if isinstance(parsed, TasmotaDevice) and parsed.mac == device.mac:
                    return UpgradeResult(sw_before=device.sw, sw_after=parsed.sw)
    except TimeoutError as err:
        raise HandoffError(
            HandoffErrorCode.UPGRADE_FAILED, "the device did not come back", mac=device.mac
        ) from err
