"""Client for Tasmota's HTTP command API (`GET /cm?cmnd=...`).

Facts: shared/spec/diy-ota-and-tasmota.md §3.2 (API, auth, Referer check),
§3.4 (Status sections) and §5 item 11. Requests never carry a Referer: Tasmota
denies a foreign one ("Referer '...' denied. Use 'SO128 1' ...").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import enum
import json
import logging
from typing import Any

import aiohttp
from yarl import URL

from .tasmota_settings import cm_query, redact_commands

_LOGGER = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
_MAX_REPLY_BYTES = 256 * 1024
# Tasmota's D_NEED_USER_AND_PASSWORD, answered with HTTP 200 as {"WARNING": ...}.
_NEED_AUTH_TEXT = "need user="


class TasmotaErrorCode(enum.StrEnum):
    """Stable keys for Tasmota HTTP failures."""

    AUTH_REQUIRED = "auth_required"
    AUTH_DENIED = "auth_denied"
    REFERER_DENIED = "referer_denied"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    BAD_REPLY = "bad_reply"
    UNKNOWN_COMMAND = "unknown_command"


class TasmotaError(Exception):
    """A typed Tasmota HTTP failure."""

    def __init__(self, code: TasmotaErrorCode, message: str) -> None:
        """Keep the stable key."""
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class ExpectedSettings:
    """What a Backlog should have left behind; None fields are not checked."""

    mqtt_host: str | None = None
    mqtt_port: int | None = None
    mqtt_user: str | None = None
    topic: str | None = None
    device_name: str | None = None
    friendly_name: str | None = None
    module: int | None = None


@dataclass(frozen=True, slots=True)
class SettingMismatch:
    """One setting that did not take: what we wanted and what the device reports."""

    expected: str | int
    actual: str | int | None


def _dig(doc: dict[str, Any], section: str, key: str) -> Any:
    inner = doc.get(section)
    return inner.get(key) if isinstance(inner, dict) else None


class TasmotaClient:
    """Send commands to one Tasmota device over HTTP."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        web_password: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """`base_url` is e.g. `http://192.168.1.50` (or the AP's `http://192.168.4.1`)."""
        self._session = session
        self._base = URL(base_url).with_path("").with_query(None).with_fragment(None)
        self._web_password = web_password or None
        self._timeout = timeout
        self.server_header: str | None = None
        """The last `Server:` header (`Tasmota/<version> (<hardware>)` on current builds)."""

    def __repr__(self) -> str:
        """Never show the WebPassword."""
        auth = "***" if self._web_password else None
        return f"TasmotaClient(base_url={str(self._base)!r}, web_password={auth})"

    async def command(self, cmd: str) -> dict[str, Any]:
        """Run one command; return its JSON result (e.g. `{"POWER":"ON"}`)."""
        return await self._get([cmd])

    async def backlog(self, commands: Sequence[str]) -> dict[str, Any]:
        """Run the commands as one `Backlog` (at most 30)."""
        return await self._get(list(commands))

    async def status(self, section: int | None = None) -> dict[str, Any]:
        """`Status` (abbreviated) or `Status <n>` (0 = all, 5 = NET, 6 = MQT...)."""
        return await self.command("Status" if section is None else f"Status {section}")

    async def verify_settings(self, expected: ExpectedSettings) -> dict[str, SettingMismatch]:
        """Read the settings back; return field name → mismatch (empty when all took).

        `Status 6` gives MqttHost/MqttPort/MqttUser; the abbreviated `Status` gives
        Topic, DeviceName, FriendlyName and Module (spec §3.4).
        """
        wanted: dict[str, str | int] = {
            name: value
            for name, value in (
                ("mqtt_host", expected.mqtt_host),
                ("mqtt_port", expected.mqtt_port),
                ("mqtt_user", expected.mqtt_user),
                ("topic", expected.topic),
                ("device_name", expected.device_name),
                ("friendly_name", expected.friendly_name),
                ("module", expected.module),
            )
            if value is not None
        }
        actual: dict[str, Any] = {}
        if {"mqtt_host", "mqtt_port", "mqtt_user"} & wanted.keys():
            mqt = await self.status(6)
            actual["mqtt_host"] = _dig(mqt, "StatusMQT", "MqttHost")
            actual["mqtt_port"] = _dig(mqt, "StatusMQT", "MqttPort")
            actual["mqtt_user"] = _dig(mqt, "StatusMQT", "MqttUser")
        if {"topic", "device_name", "friendly_name", "module"} & wanted.keys():
            status = await self.status()
            actual["topic"] = _dig(status, "Status", "Topic")
            actual["device_name"] = _dig(status, "Status", "DeviceName")
            names = _dig(status, "Status", "FriendlyName")
            actual["friendly_name"] = names[0] if isinstance(names, list) and names else names
            actual["module"] = _dig(status, "Status", "Module")
        mismatches: dict[str, SettingMismatch] = {}
        for name, value in wanted.items():
            got = actual.get(name)
            same = str(got) == str(value) if got is not None else False
            if not same:
                mismatches[name] = SettingMismatch(
                    expected=value, actual=got if isinstance(got, str | int) else None
                )
        return mismatches

    async def _get(self, commands: list[str]) -> dict[str, Any]:
        path_query = cm_query(commands, web_password=self._web_password)
        # encoded=True: keep %20/%3B exactly as built (yarl must not re-quote them).
        url = URL(str(self._base) + path_query, encoded=True)
        _LOGGER.debug("Tasmota %s: %s", self._base, redact_commands(commands))
        try:
            async with self._session.get(
                url,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                self.server_header = resp.headers.get("Server")
                raw = await resp.content.read(_MAX_REPLY_BYTES)
        except TimeoutError as err:
            raise TasmotaError(TasmotaErrorCode.TIMEOUT, f"{self._base}: no answer") from err
        except aiohttp.ClientError as err:
            raise TasmotaError(TasmotaErrorCode.UNREACHABLE, f"{self._base}: {err}") from err
        return self._decode(status, raw)

    def _decode(self, status: int, raw: bytes) -> dict[str, Any]:
        text = raw.decode("utf-8", errors="replace")
        lowered = text.lower()
        if ("referer" in lowered and "denied" in lowered) or "bad referrer" in lowered:
            raise TasmotaError(
                TasmotaErrorCode.REFERER_DENIED,
                "Tasmota denied the request's Referer (SetOption128 1 disables the check)",
            )
        if status == 401 or _NEED_AUTH_TEXT in lowered:
            if self._web_password:
                raise TasmotaError(TasmotaErrorCode.AUTH_DENIED, "the WebPassword was rejected")
            raise TasmotaError(TasmotaErrorCode.AUTH_REQUIRED, "the device has a WebPassword")
        if status != 200:
            raise TasmotaError(TasmotaErrorCode.BAD_REPLY, f"HTTP {status}")
        if not text.strip():
            return {}  # a Backlog may answer with nothing [infer]
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as err:  # deep nesting
            raise TasmotaError(TasmotaErrorCode.BAD_REPLY, "reply is not JSON") from err
        if not isinstance(doc, dict):
            raise TasmotaError(TasmotaErrorCode.BAD_REPLY, "reply is not a JSON object")
        if doc.get("Command") == "Unknown":
            raise TasmotaError(TasmotaErrorCode.UNKNOWN_COMMAND, "Tasmota: unknown command")
        return doc
