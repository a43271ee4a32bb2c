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
from collections.abc import Iterable
import contextlib
import logging
import re
from typing import Any, Final, Protocol

import aiohttp

from .flash_stages import FlashTracker, Stage
from .mac_address import InvalidMacError, tasmota_mac
from .tasmota_client import ExpectedSettings, TasmotaClient, TasmotaError, TasmotaErrorCode
from .tasmota_discovery import TasmotaDevice, ap_ssid_pattern, default_topic, predicted_ap_ssid
from .tasmota_handoff_types import (
    DETAIL_CANDIDATES,
    DETAIL_CONFIGURED_BY,
    DETAIL_IP,
    DETAIL_MAC,
    DETAIL_MAC_MISMATCH,
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
from .tasmota_mqtt_feed import DiscoveryFeed, DiscoveryWatch
from .tasmota_settings import (
    DEFAULT_AP_BASE_URL,
    TasmotaSettings,
    build_backlog,
    derive_names,
    lookup_hardware,
    phone_backlog_link,
)

_LOGGER = logging.getLogger(__name__)

SSID_PATTERN: Final = "tasmota_XXXXXX-NNNN"


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
        self._watch = DiscoveryWatch(known={m for m in map(self._clean_mac, known_macs) if m})
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
