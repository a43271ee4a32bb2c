"""Client for the eWeLink DIY-mode REST API (`POST :8081/zeroconf/<path>`).

Facts: shared/spec/diy-ota-and-tasmota.md §1.4 (envelope and transport), §1.5-§1.7
(endpoints, /info fields, error codes; the result callback is `diy_ota_result`),
§1.8 (URL and sha256 rules) and §5 items 2-4, 8, 9.

Transport rules this module enforces:
- one connection at a time (a lock) with `Connection: close`, and a minimum pause
  between two requests (the spec asks for >= 200 ms);
- the body carries the real `deviceid`, or omits the key; never `"deviceid": ""`
  (it makes 3.7.x hang up);
- a connection reset is retried (the device RSTs a second connection, AlexxIT
  retries up to 10 times at 0.1 s), but `ota_flash` is never sent twice once the
  request may have reached the device: a half-flashed device is the worst outcome.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
import enum
import ipaddress
import json
import logging
import re
from typing import Any

import aiohttp
from yarl import URL

from .json_fields import opt_int, opt_str

_LOGGER = logging.getLogger(__name__)

DEFAULT_PORT = 8081
DEFAULT_MIN_INTERVAL = 0.2
DEFAULT_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0
# The device pre-downloads (parts of) the image before it answers ota_flash.
DEFAULT_FLASH_TIMEOUT = 300.0
DEFAULT_RESET_RETRIES = 10
DEFAULT_RESET_RETRY_DELAY = 0.1
_MAX_REPLY_BYTES = 64 * 1024
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class DiyErrorCode(enum.StrEnum):
    """Stable keys for everything that can go wrong talking to a DIY device."""

    BAD_JSON = "bad_json"
    ENCRYPTED_LAN_MODE = "encrypted_lan_mode"
    WRONG_DEVICEID = "wrong_deviceid"
    INVALID_PARAMETERS = "invalid_parameters"
    UNLOCK_REJECTED = "unlock_rejected"
    UNLOCK_NO_INTERNET = "unlock_no_internet"
    NOT_UNLOCKED = "not_unlocked"
    PREDOWNLOAD_TIMEOUT = "predownload_timeout"
    IMAGE_TOO_LARGE = "image_too_large"
    DOWNLOAD_FAILED = "download_failed"
    SHA256_MISMATCH = "sha256_mismatch"
    DEVICE_ERROR = "device_error"
    """An `error` code the spec does not list."""
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    BAD_REPLY = "bad_reply"
    FLASH_MAY_BE_RUNNING = "flash_may_be_running"
    INVALID_SHA256 = "invalid_sha256"
    INVALID_DOWNLOAD_URL = "invalid_download_url"


# spec §1.7
DEVICE_ERRORS: dict[int, tuple[DiyErrorCode, str]] = {
    400: (DiyErrorCode.BAD_JSON, "the device could not parse the request body"),
    401: (
        DiyErrorCode.ENCRYPTED_LAN_MODE,
        "the device uses encrypted LAN mode, not DIY mode; switch it to DIY mode",
    ),
    404: (DiyErrorCode.WRONG_DEVICEID, "the device does not accept this deviceid"),
    422: (DiyErrorCode.INVALID_PARAMETERS, "invalid parameters"),
    500: (
        DiyErrorCode.UNLOCK_REJECTED,
        "the vendor unlock service rejected the device; remove it from the eWeLink app first",
    ),
    503: (
        DiyErrorCode.UNLOCK_NO_INTERNET,
        "the device needs internet access to unlock OTA (or the vendor service is down)",
    ),
    403: (DiyErrorCode.NOT_UNLOCKED, "OTA is not unlocked; call ota_unlock first"),
    408: (DiyErrorCode.PREDOWNLOAD_TIMEOUT, "the device timed out pre-downloading the image"),
    413: (DiyErrorCode.IMAGE_TOO_LARGE, "the image is larger than the device allows"),
    424: (
        DiyErrorCode.DOWNLOAD_FAILED,
        "the device cannot download the image (unreachable, not HTTP, 404, "
        "or our server lacks Range support)",
    ),
    471: (DiyErrorCode.SHA256_MISMATCH, "the image does not match its sha256"),
}


class DiyError(Exception):
    """Any DIY failure; `code` is the stable key, `device_error` the device's code."""

    def __init__(
        self,
        code: DiyErrorCode,
        message: str,
        *,
        path: str | None = None,
        device_error: int | None = None,
    ) -> None:
        """Keep the key, the endpoint and the device's own error number."""
        super().__init__(message)
        self.code = code
        self.path = path
        self.device_error = device_error


@dataclass(frozen=True, slots=True)
class DiyReply:
    """A decoded `{"seq", "error", "data"}` reply with `error == 0`."""

    seq: int | None
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DiyInfo:
    """`/zeroconf/info` data (spec §1.6). v1.4 firmware lacks the v2.0 fields."""

    deviceid: str | None
    fw_version: str | None
    ota_unlock: bool | None
    ssid: str | None
    bssid: str | None
    """The access point's BSSID, not the device MAC (spec §5 item 3)."""
    signal_strength: int | None
    switch: str | None
    startup: str | None
    raw: dict[str, Any] = field(default_factory=dict)


def _opt_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def parse_info(data: dict[str, Any]) -> DiyInfo:
    """Build a DiyInfo from the reply's `data` object."""
    return DiyInfo(
        deviceid=opt_str(data.get("deviceid")),
        fw_version=opt_str(data.get("fwVersion")),
        ota_unlock=_opt_bool(data.get("otaUnlock")),
        ssid=opt_str(data.get("ssid")),
        bssid=opt_str(data.get("bssid")),
        signal_strength=opt_int(data.get("signalStrength")),
        switch=opt_str(data.get("switch")),
        startup=opt_str(data.get("startup")),
        raw=dict(data),
    )


def validate_flash_request(download_url: str, sha256: str) -> None:
    """Raise DiyError unless the URL is plain http to an IPv4 literal and the hash is right.

    An uppercase hash made a flash fail [ITD#102]; external or https URLs were
    ignored by the device (spec §1.8). IPv6 is refused: no source shows the
    firmware handling it.
    """
    if not _SHA256_RE.match(sha256):
        raise DiyError(DiyErrorCode.INVALID_SHA256, "sha256 must be 64 lowercase hex digits")
    try:
        url = URL(download_url)
    except ValueError as err:
        raise DiyError(DiyErrorCode.INVALID_DOWNLOAD_URL, "unparseable download URL") from err
    if url.scheme != "http" or url.user is not None or url.password is not None:
        raise DiyError(DiyErrorCode.INVALID_DOWNLOAD_URL, "the download URL must be plain http://")
    try:
        ipaddress.IPv4Address(url.host or "")
    except ValueError as err:
        raise DiyError(
            DiyErrorCode.INVALID_DOWNLOAD_URL, "the download URL host must be an IPv4 literal"
        ) from err
    if not url.path or url.path == "/":
        raise DiyError(DiyErrorCode.INVALID_DOWNLOAD_URL, "the download URL has no file path")


class _Failure(enum.Enum):
    """How one attempt failed below the level of a device reply."""

    NOT_DELIVERED = "not_delivered"  # connect failed: no byte of the request left
    RESET = "reset"  # RST after connect
    EMPTY = "empty"  # clean close without a reply ("Empty reply from server")
    TIMEOUT = "timeout"  # connected, sent, then no answer


class _AttemptError(Exception):
    def __init__(self, kind: _Failure, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class DiyClient:
    """Talk to one DIY-mode device. Safe to share between tasks (calls are serialized)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        host: str,
        port: int = DEFAULT_PORT,
        deviceid: str | None = None,
        *,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        flash_timeout: float = DEFAULT_FLASH_TIMEOUT,
        reset_retries: int = DEFAULT_RESET_RETRIES,
        reset_retry_delay: float = DEFAULT_RESET_RETRY_DELAY,
    ) -> None:
        """Set up the client; no I/O happens here.

        `deviceid` "" is treated as unknown: the key is then omitted, never sent empty.
        """
        self._session = session
        self._base = URL.build(scheme="http", host=host, port=port)
        self._deviceid = deviceid or None
        self._omit_deviceid = False
        self._min_interval = min_interval
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._flash_timeout = flash_timeout
        self._reset_retries = reset_retries
        self._reset_retry_delay = reset_retry_delay
        self._lock = asyncio.Lock()
        self._last_done: float | None = None

    @property
    def deviceid(self) -> str | None:
        """The deviceid sent in requests (learned from /info when not given)."""
        return self._deviceid

    @property
    def omits_deviceid(self) -> bool:
        """True once the device answered only without the `deviceid` key."""
        return self._omit_deviceid or self._deviceid is None

    async def info(self) -> DiyInfo:
        """`POST /zeroconf/info`; `data` may arrive as an object or a JSON string."""
        reply = await self._call("info", {}, idempotent=True)
        info = parse_info(reply.data)
        if self._deviceid is None and info.deviceid:
            self._deviceid = info.deviceid
        return info

    async def ota_unlock(self) -> None:
        """`POST /zeroconf/ota_unlock` (the device calls the vendor cloud)."""
        await self._call("ota_unlock", {}, idempotent=True)

    async def ota_flash(self, download_url: str, sha256: str) -> None:
        """`POST /zeroconf/ota_flash`: returns once the device *accepted* (not finished).

        Sent at most once. Any failure after the request may have reached the
        device raises DiyError(FLASH_MAY_BE_RUNNING); only a failed connect is
        retried. Completion is signalled by the result callback (spec §5 item 8).
        """
        validate_flash_request(download_url, sha256)
        await self._call(
            "ota_flash",
            {"downloadUrl": download_url, "sha256sum": sha256},
            idempotent=False,
        )

    async def _call(self, path: str, data: dict[str, Any], *, idempotent: bool) -> DiyReply:
        async with self._lock:
            with_id = self._deviceid is not None and not self._omit_deviceid
            if not idempotent:
                return await self._flash_exchange(path, data, with_id)
            try:
                return await self._idempotent_exchange(path, data, with_id)
            except _AttemptError as err:
                # A refused connect says nothing about the deviceid: no fallback for it.
                if not with_id or err.kind is _Failure.NOT_DELIVERED:
                    raise self._attempt_error(path, err) from err
                first: Exception = err
            except DiyError as err:
                if not with_id or err.code is not DiyErrorCode.WRONG_DEVICEID:
                    raise
                first = err
            # 3.7.x hangs or hangs up on a deviceid it dislikes: retry once without the key
            # (spec §1.4, NJH#18, PR#19/#20).
            _LOGGER.debug("%s with deviceid failed (%s); retrying without the key", path, first)
            try:
                reply = await self._idempotent_exchange(path, data, with_id=False)
            except _AttemptError as err:
                raise self._attempt_error(path, err) from err
            self._omit_deviceid = True
            return reply

    async def _idempotent_exchange(
        self, path: str, data: dict[str, Any], with_id: bool
    ) -> DiyReply:
        attempt = 0
        while True:
            try:
                return await self._attempt(path, data, with_id, self._timeout)
            except _AttemptError as err:
                if err.kind not in (_Failure.NOT_DELIVERED, _Failure.RESET):
                    raise
                if attempt >= self._reset_retries:
                    raise
                attempt += 1
                _LOGGER.debug("%s: %s, retry %d", path, err, attempt)
                await asyncio.sleep(self._reset_retry_delay)

    async def _flash_exchange(self, path: str, data: dict[str, Any], with_id: bool) -> DiyReply:
        attempt = 0
        while True:
            try:
                return await self._attempt(path, data, with_id, self._flash_timeout)
            except _AttemptError as err:
                if err.kind is not _Failure.NOT_DELIVERED:
                    raise DiyError(
                        DiyErrorCode.FLASH_MAY_BE_RUNNING,
                        f"no clear answer to ota_flash ({err}); the device may be flashing: "
                        "do not power it off and do not send ota_flash again",
                        path=path,
                    ) from err
                if attempt >= self._reset_retries:
                    raise self._attempt_error(path, err) from err
                attempt += 1
                await asyncio.sleep(self._reset_retry_delay)
            except DiyError as err:
                if err.code is DiyErrorCode.BAD_REPLY:
                    raise DiyError(
                        DiyErrorCode.FLASH_MAY_BE_RUNNING,
                        f"unreadable answer to ota_flash ({err}); the device may be flashing",
                        path=path,
                    ) from err
                raise

    @staticmethod
    def _attempt_error(path: str, err: _AttemptError) -> DiyError:
        if err.kind is _Failure.TIMEOUT:
            return DiyError(DiyErrorCode.TIMEOUT, f"{path}: no answer ({err})", path=path)
        if err.kind is _Failure.EMPTY:
            return DiyError(DiyErrorCode.BAD_REPLY, f"{path}: empty reply ({err})", path=path)
        return DiyError(DiyErrorCode.UNREACHABLE, f"{path}: {err}", path=path)

    async def _wait_interval(self) -> None:
        if self._last_done is None:
            return
        loop = asyncio.get_running_loop()
        delay = self._last_done + self._min_interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _attempt(
        self, path: str, data: dict[str, Any], with_id: bool, read_timeout: float
    ) -> DiyReply:
        await self._wait_interval()
        body: dict[str, Any] = {"deviceid": self._deviceid} if with_id else {}
        body["data"] = data
        try:
            return await self._post(path, body, read_timeout)
        finally:
            self._last_done = asyncio.get_running_loop().time()

    async def _post(self, path: str, body: dict[str, Any], read_timeout: float) -> DiyReply:
        url = self._base.with_path(f"/zeroconf/{path}")
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._connect_timeout, sock_read=read_timeout
        )
        try:
            async with self._session.post(
                url,
                data=json.dumps(body, separators=(",", ":")).encode(),
                headers={"Content-Type": "application/json", "Connection": "close"},
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                raw = await resp.content.read(_MAX_REPLY_BYTES)
        except aiohttp.ConnectionTimeoutError as err:
            raise _AttemptError(_Failure.NOT_DELIVERED, "connect timed out") from err
        except aiohttp.ClientConnectorError as err:
            raise _AttemptError(_Failure.NOT_DELIVERED, f"cannot connect: {err.os_error}") from err
        except aiohttp.ServerDisconnectedError as err:
            raise _AttemptError(_Failure.EMPTY, "connection closed without a reply") from err
        except aiohttp.ClientOSError as err:
            raise _AttemptError(_Failure.RESET, f"connection reset ({err.strerror})") from err
        except TimeoutError as err:
            raise _AttemptError(_Failure.TIMEOUT, "timed out waiting for the reply") from err
        except aiohttp.ClientError as err:
            raise DiyError(DiyErrorCode.BAD_REPLY, f"{path}: {err!r}", path=path) from err
        if not raw.strip():
            raise _AttemptError(_Failure.EMPTY, f"empty body (HTTP {status})")
        return self._decode(path, status, raw)

    @staticmethod
    def _decode(path: str, status: int, raw: bytes) -> DiyReply:
        if status != 200:
            raise DiyError(DiyErrorCode.BAD_REPLY, f"{path}: HTTP {status}", path=path)
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as err:  # deep nesting
            raise DiyError(DiyErrorCode.BAD_REPLY, f"{path}: reply is not JSON", path=path) from err
        if not isinstance(doc, dict) or "error" not in doc:
            raise DiyError(DiyErrorCode.BAD_REPLY, f"{path}: reply has no `error`", path=path)
        error = opt_int(doc["error"])
        if error is None:
            raise DiyError(DiyErrorCode.BAD_REPLY, f"{path}: `error` is not a number", path=path)
        if error != 0:
            code, text = DEVICE_ERRORS.get(
                error, (DiyErrorCode.DEVICE_ERROR, "the device reported an unknown error")
            )
            raise DiyError(code, f"{path}: error {error}: {text}", path=path, device_error=error)
        data = doc.get("data", {})
        if isinstance(data, str):
            # v1.4 firmware (3.3/3.4) sends `data` as a JSON string [ITD#10].
            try:
                data = json.loads(data) if data.strip() else {}
            except (ValueError, RecursionError) as err:  # deep nesting
                raise DiyError(
                    DiyErrorCode.BAD_REPLY, f"{path}: `data` string is not JSON", path=path
                ) from err
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise DiyError(DiyErrorCode.BAD_REPLY, f"{path}: `data` is not an object", path=path)
        return DiyReply(seq=opt_int(doc.get("seq")), data=data)
