"""Client for the ITEAD setup access point (stage 1 of the setup-mode path).

Facts (shared/spec/setup-mode-ota.md §5 and §13.1):
- `GET http://10.10.7.1/device` answers `{"deviceid","apikey","accept":"post"}`;
- `POST http://10.10.7.1/ap` takes `{"version":4,"ssid","password","serverName","port"}` and answers
  `{"error":0}`, but the device may drop its AP before answering: SonOTA crashed on that read
  timeout (#161, #113, #97), so a missing reply here means "maybe accepted", not failure;
- SonOTA retried `/device` in a tight loop without delay; `wait_for_device` always sleeps.

The base URL is injectable so tests (and nothing else) can point the client at 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
import enum
import json
import logging
import re
from typing import Any, Final

import aiohttp

_LOGGER = logging.getLogger(__name__)

DEFAULT_BASE_URL: Final = "http://10.10.7.1"
AP_PROTOCOL_VERSION: Final = 4
DEFAULT_REQUEST_TIMEOUT: Final = 5.0
"""`/device` timeout per attempt (SonOTA used 2 s, §5; a little more costs nothing)."""
DEFAULT_AP_TIMEOUT: Final = 15.0
"""`/ap` timeout: generous, the device may be busy switching radios (§5, #161)."""
DEFAULT_RETRY_DELAY: Final = 2.0
"""Pause between `/device` attempts (SonOTA's stage-1 loop polls every 2 s, §4)."""
MAX_REPLY_BYTES: Final = 4096

_DEVICEID_RE: Final = re.compile(r"^[0-9a-fA-F]{10}$")


class ApResult(enum.StrEnum):
    """What `POST /ap` achieved, as far as the client can tell."""

    ACCEPTED = "accepted"
    """The device answered `{"error":0}`."""
    MAYBE_ACCEPTED = "maybe_accepted"
    """No usable reply (timeout, reset, dropped connection, empty body): the device often drops
    its AP before answering, having taken the settings (spec §5)."""


class SetupApError(Exception):
    """Base class of setup-AP failures; `reason` is a short machine-friendly cause."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidDeviceReplyError(SetupApError):
    """The device answered, but not with what the setup AP protocol promises."""


class SetupApUnreachableError(SetupApError):
    """The setup AP could not be reached (connection refused, timeout, reset)."""


class SetupApTimeoutError(SetupApError):
    """`wait_for_device` gave up; `reason` is the last failure seen."""


class ApRefusedError(SetupApError):
    """The device answered `POST /ap` with a non-zero error or an HTTP error status."""

    def __init__(self, reason: str, message: str, error: int | None, status: int) -> None:
        super().__init__(reason, message)
        self.error = error
        self.status = status


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What `GET /device` tells about the device (the apikey never appears in reprs)."""

    deviceid: str
    apikey: str = field(repr=False)
    accept: str

    @classmethod
    def from_json(cls, payload: object) -> DeviceInfo:
        """Validate a decoded `/device` reply; raise `InvalidDeviceReplyError` with a reason."""
        if not isinstance(payload, dict):
            raise InvalidDeviceReplyError("not_an_object", "the /device reply is not a JSON object")
        deviceid = payload.get("deviceid")
        if not isinstance(deviceid, str) or not _DEVICEID_RE.match(deviceid):
            raise InvalidDeviceReplyError(
                "bad_deviceid", "the /device reply has no 10-hex-digit deviceid"
            )
        apikey = payload.get("apikey")
        if not isinstance(apikey, str) or not apikey:
            raise InvalidDeviceReplyError("bad_apikey", "the /device reply has no apikey")
        accept = payload.get("accept", "post")
        if not isinstance(accept, str):
            raise InvalidDeviceReplyError("bad_accept", "the /device reply has a non-string accept")
        return cls(deviceid=deviceid.lower(), apikey=apikey, accept=accept)


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """Read the body up to MAX_REPLY_BYTES (`content.read(n)` alone may return a first piece)."""
    body = bytearray()
    while len(body) < MAX_REPLY_BYTES:
        chunk = await resp.content.read(MAX_REPLY_BYTES - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _decode_json(raw: bytes) -> Any:
    """Decode a device reply; raise `InvalidDeviceReplyError` on anything that is not JSON."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise InvalidDeviceReplyError("not_utf8", "the device reply is not UTF-8") from err
    except json.JSONDecodeError as err:
        raise InvalidDeviceReplyError("not_json", "the device reply is not JSON") from err


class SetupApClient:
    """Speaks to the device's setup AP; one instance per flash attempt.

    `session` is any aiohttp ClientSession (HA passes its shared one); the client never closes it.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str = DEFAULT_BASE_URL,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        ap_timeout: float = DEFAULT_AP_TIMEOUT,
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._request_timeout = request_timeout
        self._ap_timeout = ap_timeout

    async def get_device(self) -> DeviceInfo:
        """`GET /device` once; raise `SetupApUnreachableError` or `InvalidDeviceReplyError`."""
        try:
            async with self._session.get(
                f"{self._base_url}/device",
                timeout=aiohttp.ClientTimeout(total=self._request_timeout),
            ) as resp:
                raw = await _read_capped(resp)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise SetupApUnreachableError(
                type(err).__name__, f"setup AP not reachable: {type(err).__name__}"
            ) from err
        if status != 200:
            raise InvalidDeviceReplyError(f"http_{status}", f"/device answered HTTP {status}")
        return DeviceInfo.from_json(_decode_json(raw))

    async def wait_for_device(
        self, max_wait: float, retry_delay: float = DEFAULT_RETRY_DELAY
    ) -> DeviceInfo:
        """Retry `GET /device` every `retry_delay` seconds until it answers or `max_wait` passes.

        Only "unreachable" is retried (the host may still be joining the AP); a reply that is
        not a setup-AP reply is raised at once: waiting does not fix a wrong device.
        """
        last_reason = "no_attempt"
        attempts = 0
        try:
            async with asyncio.timeout(max_wait):
                while True:
                    attempts += 1
                    try:
                        return await self.get_device()
                    except SetupApUnreachableError as err:
                        last_reason = err.reason
                        _LOGGER.debug(
                            "Setup AP attempt %d failed (%s), retrying in %.1f s",
                            attempts,
                            err.reason,
                            retry_delay,
                        )
                    await asyncio.sleep(retry_delay)
        except TimeoutError as err:
            raise SetupApTimeoutError(
                last_reason,
                f"setup AP did not answer within {max_wait:.0f} s ({attempts} attempts)",
            ) from err

    async def send_ap(self, ssid: str, password: str, server_name: str, port: int) -> ApResult:
        """`POST /ap` with the Wi-Fi and fake-cloud settings.

        Returns ACCEPTED or MAYBE_ACCEPTED; raises `ApRefusedError` when the device said no.
        The password is never logged.
        """
        body = json.dumps(
            {
                "version": AP_PROTOCOL_VERSION,
                "ssid": ssid,
                "password": password,
                "serverName": server_name,
                "port": port,
            }
        ).encode()
        try:
            async with self._session.post(
                f"{self._base_url}/ap",
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self._ap_timeout),
            ) as resp:
                status = resp.status
                raw = await _read_capped(resp)
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            # The device drops its AP as soon as it has the settings (spec §5, #161).
            _LOGGER.info(
                "No reply to POST /ap (%s): treating as maybe accepted", type(err).__name__
            )
            return ApResult.MAYBE_ACCEPTED
        return _interpret_ap_reply(status, raw)


def _interpret_ap_reply(status: int, raw: bytes) -> ApResult:
    """Map the `/ap` reply to a result (see `SetupApClient.send_ap`)."""
    if status != 200:
        raise ApRefusedError(f"http_{status}", f"/ap answered HTTP {status}", None, status)
    if not raw.strip():
        _LOGGER.info("Empty reply to POST /ap: treating as maybe accepted")
        return ApResult.MAYBE_ACCEPTED
    try:
        payload = _decode_json(raw)
    except InvalidDeviceReplyError:
        _LOGGER.info("Unparseable reply to POST /ap: treating as maybe accepted")
        return ApResult.MAYBE_ACCEPTED
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, bool) or not isinstance(error, int):
        # SonOTA never checked `error` (§5); a 200 without a usable code is not a refusal.
        _LOGGER.info("POST /ap reply has no integer error field: treating as maybe accepted")
        return ApResult.MAYBE_ACCEPTED
    if error == 0:
        return ApResult.ACCEPTED
    raise ApRefusedError(f"error_{error}", f"/ap refused with error {error}", error, status)
