"""From Tasmota lite to a full build with Tasmota's own OTA, over MQTT; no HA imports.

`TasmotaUpgrade(publish, feed, target, ota_url).run()` sends `OtaUrl <url>` and
`Upgrade 1`, follows the device through its restart(s) and ends when a live
discovery of its MAC arrives and `Status 2` names the new build. Its
`UpgradeTracker` (stage, percentage, history, listeners; in `tasmota_upgrade_stages`)
is what a flow step or an update entity shows; failures raise `UpgradeError` whose
`code` is a translation key.

Stages: REQUESTED (commands sent and acknowledged) → DOWNLOADING (Tasmota fetches
the image) → REBOOTING (`Successful. Restarting`, LWT Offline) → [MINIMAL: on 1 MB
devices Tasmota may first flash `<name>-minimal<ext>` when the image does not fit,
then fetches OtaUrl again from there] → CONFIRMING (back on MQTT, `Status 2`) → DONE.

Facts: shared/spec/diy-ota-and-tasmota.md §3.3 (OtaUrl, Upgrade 1, http only, `.gz`
from 8.2, the automatic -minimal step), §3.5 (discovery `sw`), §3.7 (TAS#13869:
uncompressed `tasmota.bin` is "too big"). The OTA loop itself (one attempt a second,
up to 10 attempts, the `-minimal` rewrite after "Not Enough space", the `.gz` retry,
the single `stat/<topic>/UPGRADE` result `Successful. Restarting` / `Failed <text>`,
the minimal build's own OTA at boot and its lack of discovery) was read from
Tasmota's `support_tasmota.ino`, `support_command.ino` and `tasmota_configurations.h`
and the texts from the ESP8266 core's `ESP8266httpUpdate.cpp`; none of it was
checked on a device.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
import contextlib
from dataclasses import dataclass
import json
import logging
import re
from typing import TYPE_CHECKING, Any, Final

from .tasmota_discovery import (
    DEFAULT_FULL_TOPIC,
    TasmotaDevice,
    TasmotaDiscoveryError,
    parse_discovery,
)
from .tasmota_mqtt_feed import DiscoveryFeed, MqttIn, Publish
from .tasmota_upgrade_stages import UpgradeError, UpgradeErrorCode, UpgradeStage, UpgradeTracker

if TYPE_CHECKING:
    from .tasmota_handoff_types import HandoffResult

_LOGGER = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 600.0
"""Whole upgrade, seconds: the minimal hop takes "2-5 min" (spec §3.3)."""
COMMAND_TIMEOUT: Final = 20.0
"""How long the device may take to answer OtaUrl / Upgrade / Status 2."""
MAX_OTA_URL: Final = 150
"""GetOtaUrl() copies into a TOPSZ (151) buffer: a longer URL is cut [infer]."""

_VERSION_RE = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)*)\s*(?:\((?P<build>[^)]*)\))?\s*$")


@dataclass(frozen=True, slots=True)
class TasmotaBuild:
    """`Status 2` Version split: `14.4.1(lite)` → number 14.4.1, build lite."""

    number: str
    build: str

    @classmethod
    def parse(cls, text: str) -> TasmotaBuild | None:
        """None when `text` is not a Tasmota version string."""
        match = _VERSION_RE.match(text)
        if not match:
            return None
        return cls(match["number"], (match["build"] or "tasmota").strip() or "tasmota")

    @property
    def label(self) -> str:
        """`14.4.1 (lite)`."""
        return f"{self.number} ({self.build})"


@dataclass(frozen=True, slots=True)
class UpgradeTarget:
    """The device to upgrade, as its discovery describes it."""

    mac: str
    topic: str
    full_topic: str = DEFAULT_FULL_TOPIC
    hostname: str = ""
    sw: str = ""

    @classmethod
    def from_discovery(cls, device: TasmotaDevice) -> UpgradeTarget:
        """From a parsed discovery message (a hand-off's result is one, too)."""
        return cls(
            mac=device.mac,
            topic=device.topic,
            full_topic=device.full_topic or DEFAULT_FULL_TOPIC,
            hostname=device.hostname,
            sw=device.sw,
        )

    @classmethod
    def from_handoff(cls, result: HandoffResult) -> UpgradeTarget:
        """The device a hand-off just delivered (a flow's last step upgrades it)."""
        return cls.from_discovery(result)

    def topic_for(self, prefix: str, leaf: str) -> str:
        """`<prefix>/<topic>/<leaf>` through the device's FullTopic."""
        base = self.full_topic.replace("%prefix%", prefix).replace("%topic%", self.topic)
        base = base.replace("%hostname%", self.hostname).replace("%id%", self.mac[-6:])
        return (base if base.endswith("/") else base + "/") + leaf

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """What the feed must carry for this device (subscribe before `run()`)."""
        return (
            self.topic_for("stat", "RESULT"),
            self.topic_for("stat", "UPGRADE"),
            self.topic_for("stat", "STATUS2"),
            self.topic_for("tele", "LWT"),
            f"tasmota/discovery/{self.mac}/config",
        )


@dataclass(frozen=True, slots=True)
class UpgradeResult:
    """How the device came back."""

    before: TasmotaBuild | None
    after: TasmotaBuild
    sw: str
    """Discovery `sw` after the upgrade."""
    minimal_hop: bool


type UrlCheck = Callable[[str], Awaitable[bool | None]]
"""`exists(url)` from HA's side: True 200, False 404, None unknown (for 404 triage)."""


def minimal_url(url: str) -> str:
    """The `-minimal` sibling Tasmota fetches after "Not Enough space" (ESP8266)."""
    slash = url.rfind("/")
    head, name = url[: slash + 1], url[slash + 1 :]
    dot = name.find(".")
    stem, ext = (name, "") if dot < 0 else (name[:dot], name[dot:])
    dash = stem.rfind("-")
    if dash >= 0:
        stem = stem[:dash]
    return f"{head}{stem}-minimal{ext}"


def check_ota_url(url: str) -> None:
    """Raise `UpgradeError(bad_url)` for what Tasmota's OtaUrl cannot take."""
    if not url.startswith("http://") or len(url) <= len("http://"):
        raise UpgradeError(UpgradeErrorCode.BAD_URL, "OtaUrl must be plain http://", url=url)
    if any(char in url for char in "; \t\r\n") or len(url) > MAX_OTA_URL:
        raise UpgradeError(UpgradeErrorCode.BAD_URL, "OtaUrl cannot be sent as is", url=url)


def _text(payload: bytes | str) -> str:
    return payload.decode(errors="replace") if isinstance(payload, bytes) else payload


def _json(payload: bytes | str) -> dict[str, Any] | None:
    try:
        value = json.loads(_text(payload))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def classify_failure(text: str) -> UpgradeErrorCode:
    """Map Tasmota's `Failed <error>` text to a code."""
    lowered = text.lower()
    if "not enough space" in lowered or "does not fit flash" in lowered:
        return UpgradeErrorCode.FILE_TOO_BIG
    if lowered.startswith("http error"):
        return UpgradeErrorCode.UNREACHABLE
    if "verify bin header" in lowered or lowered.startswith("update error") or "md5" in lowered:
        return UpgradeErrorCode.IMAGE_REJECTED
    return UpgradeErrorCode.DOWNLOAD_FAILED


class TasmotaUpgrade:
    """One upgrade attempt (a retry is a new instance). See the module docstring."""

    def __init__(
        self,
        publish: Publish,
        feed: DiscoveryFeed,
        target: UpgradeTarget,
        ota_url: str,
        *,
        expected_build: str | None = None,
        before: TasmotaBuild | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        command_timeout: float = COMMAND_TIMEOUT,
        url_exists: UrlCheck | None = None,
        tracker: UpgradeTracker | None = None,
        status_retry: float = 5.0,
    ) -> None:
        """`feed` must carry `target.subscriptions`; raises UpgradeError(bad_url) early.

        `expected_build`: the build the image is (`tasmota`, `sensors`...); None accepts
        any build but `lite` and `minimal`. `status_retry`: Tasmota publishes LWT Online
        before it subscribes to its commands, so a `Status 2` sent at once may be lost;
        it is asked again this often while the answer is missing.
        """
        check_ota_url(ota_url)
        self._publish = publish
        self._feed = feed
        self.target = target
        self.ota_url = ota_url
        self.expected_build = expected_build
        self.before = before
        self._timeout = timeout
        self._command_timeout = command_timeout
        self._url_exists = url_exists
        self.tracker = tracker or UpgradeTracker(device_label=target.mac)
        self._status_retry = status_retry
        self._minimal_hop = False

    async def run(self) -> UpgradeResult:
        """Run to DONE, or raise UpgradeError (the tracker is failed with it)."""
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._run()
        except TimeoutError as err:
            minutes = str(max(round(self._timeout / 60), 1))
            error = UpgradeError(
                UpgradeErrorCode.TIMEOUT,
                f"no result after {self._timeout:.0f} s",
                minutes=minutes,
                stage=str(self.tracker.stage),
            )
            self.tracker.fail(error)
            raise error from err
        except UpgradeError as err:
            self.tracker.fail(err)
            raise
        self.tracker.done()
        return result

    async def _run(self) -> UpgradeResult:
        self._feed.drain()
        self.tracker.advance(UpgradeStage.REQUESTED, url=self.ota_url)
        await self._request()
        self.tracker.advance(UpgradeStage.DOWNLOADING)
        await self._wait_for_result()
        return await self._follow_reboots()

    # ------------------------------------------------------------- REQUESTED

    async def _command(self, command: str, argument: str, key: str) -> str:
        """Publish `cmnd/<topic>/<command> <argument>`; the `key` value of its RESULT."""
        await self._publish(self.target.topic_for("cmnd", command), argument)
        result_topic = self.target.topic_for("stat", "RESULT")
        try:
            async with asyncio.timeout(self._command_timeout):
                while True:
                    message = await self._feed.get()
                    if message.topic != result_topic:
                        continue
                    body = _json(message.payload) or {}
                    lowered = {name.lower(): value for name, value in body.items()}
                    if key.lower() in lowered:
                        return str(lowered[key.lower()])
                    if lowered.get("command") == "Unknown":
                        return "Command Unknown"
        except TimeoutError as err:
            raise UpgradeError(
                UpgradeErrorCode.NO_ANSWER, f"no answer to {command}", command=command
            ) from err

    async def _request(self) -> None:
        echoed = await self._command("OtaUrl", self.ota_url, "OtaUrl")
        if echoed != self.ota_url:
            raise UpgradeError(
                UpgradeErrorCode.OTA_REFUSED, f"OtaUrl not taken: {echoed!r}", reason=echoed
            )
        answer = await self._command("Upgrade", "1", "Upgrade")
        # CmndUpgrade(): "Version <v> from <url>" when it starts, else "1 or ><v> to upgrade".
        if not answer.startswith("Version ") or not answer.endswith(f" from {self.ota_url}"):
            raise UpgradeError(
                UpgradeErrorCode.OTA_REFUSED, f"Upgrade not started: {answer!r}", reason=answer
            )
        self.tracker.update(1.0)

    # ----------------------------------------------------------- DOWNLOADING

    async def _wait_for_result(self) -> None:
        """Until `stat/<topic>/UPGRADE` (or the device drops off MQTT to restart)."""
        upgrade_topic = self.target.topic_for("stat", "UPGRADE")
        lwt_topic = self.target.topic_for("tele", "LWT")
        while True:
            message = await self._feed.get()
            if message.topic == upgrade_topic:
                answer = str((_json(message.payload) or {}).get("Upgrade", _text(message.payload)))
                if answer.startswith("Successful"):
                    self.tracker.advance(UpgradeStage.REBOOTING, note=answer)
                    return
                if answer.startswith("Failed"):
                    raise await self._failure(answer.removeprefix("Failed").strip())
            elif (
                message.topic == lwt_topic
                and not message.retained
                and _text(message.payload).strip() == "Offline"
            ):
                # Gone without a result message: it restarts (or lost power).
                self.tracker.advance(UpgradeStage.REBOOTING, note="offline")
                return

    async def _failure(self, reason: str) -> UpgradeError:
        code = classify_failure(reason)
        if code is UpgradeErrorCode.DOWNLOAD_FAILED and "404" in reason:
            # After "Not Enough space" Tasmota asks for <name>-minimal<ext>: a 404 then is
            # that sibling missing, not our file. Tell them apart from HA's side if we can.
            sibling = minimal_url(self.ota_url)
            if (
                self._url_exists is not None
                and await self._url_exists(self.ota_url)
                and await self._url_exists(sibling) is False
            ):
                return UpgradeError(
                    UpgradeErrorCode.FILE_TOO_BIG,
                    f"too big, and {sibling} is missing",
                    reason=f"{reason} for {sibling.rsplit('/', 1)[-1]}",
                    minimal_url=sibling,
                )
        return UpgradeError(code, f"Tasmota: Failed {reason}", reason=reason)

    # ------------------------------------------------- REBOOTING .. CONFIRMING

    async def _follow_reboots(self) -> UpgradeResult:
        """Back on MQTT: Status 2 says which build runs; the minimal hop loops once more."""
        lwt_topic = self.target.topic_for("tele", "LWT")
        upgrade_topic = self.target.topic_for("stat", "UPGRADE")
        status_topic = self.target.topic_for("stat", "STATUS2")
        discovery: TasmotaDevice | None = None
        build: TasmotaBuild | None = None
        online = False
        while True:
            try:
                async with asyncio.timeout(self._status_retry):
                    message = await self._feed.get()
            except TimeoutError:
                if online and build is None:
                    await self._ask_status()
                continue
            if message.topic == lwt_topic and not message.retained:
                if _text(message.payload).strip() == "Online":
                    online, discovery, build = True, None, None
                    await self._ask_status()
                else:
                    online = False
                    self.tracker.advance(UpgradeStage.REBOOTING, note="offline")
            elif message.topic == status_topic:
                build = self._parse_status(message)
                if build is None:
                    continue
                if build.build == "minimal":
                    self._minimal_hop = True
                    self.tracker.advance(UpgradeStage.MINIMAL, running=build.label)
                    continue
                self._check_build(build)
                self.tracker.advance(UpgradeStage.CONFIRMING, running=build.label)
            elif message.topic == upgrade_topic and self._minimal_hop:
                answer = str((_json(message.payload) or {}).get("Upgrade", _text(message.payload)))
                if answer.startswith("Failed"):
                    raise await self._failure(answer.removeprefix("Failed").strip())
                if answer.startswith("Successful"):
                    self.tracker.update(0.9)
            elif not message.retained:
                found = self._parse_discovery(message)
                if found is not None:
                    discovery, online = found, True
                    if build is None:  # discovery came before Status 2 was answered
                        await self._ask_status()
            if discovery is not None and build is not None and build.build != "minimal":
                self.tracker.update(1.0, sw=discovery.sw)
                return UpgradeResult(
                    before=self.before, after=build, sw=discovery.sw, minimal_hop=self._minimal_hop
                )

    async def _ask_status(self) -> None:
        await self._publish(self.target.topic_for("cmnd", "Status"), "2")

    def _parse_status(self, message: MqttIn) -> TasmotaBuild | None:
        body = _json(message.payload) or {}
        fwr = body.get("StatusFWR")
        if not isinstance(fwr, dict) or not isinstance(fwr.get("Version"), str):
            return None
        return TasmotaBuild.parse(fwr["Version"])

    def _parse_discovery(self, message: MqttIn) -> TasmotaDevice | None:
        if message.topic != f"tasmota/discovery/{self.target.mac}/config":
            return None
        with contextlib.suppress(TasmotaDiscoveryError):
            parsed = parse_discovery(message.topic, message.payload)
            if isinstance(parsed, TasmotaDevice) and parsed.mac == self.target.mac:
                return parsed
        return None

    def _check_build(self, build: TasmotaBuild) -> None:
        before = self.before
        unchanged = before is not None and before == build and not self._minimal_hop
        wrong = (
            build.build == "lite"
            if self.expected_build is None
            else build.build != self.expected_build
        )
        if unchanged or wrong:
            raise UpgradeError(
                UpgradeErrorCode.NOT_UPGRADED,
                f"device runs {build.label}",
                running=build.label,
                expected=self.expected_build or "tasmota",
            )
