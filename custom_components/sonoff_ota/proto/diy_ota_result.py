"""The DIY device's `POST /api/device/otaFlash` result report: its path, body and codes.

Facts: DIY §1.7 (inferred host:port, unverified). The body is parsed
defensively: a missing or unparseable `error` is None, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
import enum
import json
import logging
from typing import Final

from .json_fields import opt_int

_LOGGER = logging.getLogger(__name__)

OTA_RESULT_PATH: Final = "/api/device/otaFlash"


@dataclass(frozen=True, slots=True)
class OtaResult:
    """The DIY device's `POST /api/device/otaFlash` report.

    `error` is None when the body had no integer `error` (unparseable or missing). Codes per
    DIY §1.7: 0 done, 404 download failed, 406 upgrade message error, 409 check failure,
    410 device internal error.
    """

    error: int | None
    deviceid: str | None
    peer: str | None


class FlashResult(enum.StrEnum):
    """Keys for the `error` in the device's `POST /api/device/otaFlash` callback."""

    DONE = "done"
    DOWNLOAD_FAILED = "download_failed"
    UPGRADE_MESSAGE_ERROR = "upgrade_message_error"
    CHECK_FAILED = "check_failed"
    DEVICE_INTERNAL_ERROR = "device_internal_error"
    UNKNOWN = "unknown"


# Undocumented callback codes as the official tool reads them (spec §1.7, [ITD tcp_server.py]).
FLASH_RESULTS: dict[int, FlashResult] = {
    0: FlashResult.DONE,
    404: FlashResult.DOWNLOAD_FAILED,
    406: FlashResult.UPGRADE_MESSAGE_ERROR,
    409: FlashResult.CHECK_FAILED,
    410: FlashResult.DEVICE_INTERNAL_ERROR,
}


def flash_result(error: int) -> FlashResult:
    """Map the callback's `error` code to a key (`unknown` for anything else)."""
    return FLASH_RESULTS.get(error, FlashResult.UNKNOWN)


def parse_ota_result(raw: bytes, peer: str | None) -> OtaResult:
    """The result in an otaFlash body, parsed defensively (never raises)."""
    payload: object = None
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:
        # ValueError also covers UnicodeDecodeError and numbers longer than Python's
        # int conversion limit; RecursionError is JSON nested deeper than the stack.
        _LOGGER.warning("otaFlash callback with a body that is not JSON (%s)", type(err).__name__)
    error: int | None = None
    deviceid: str | None = None
    if isinstance(payload, dict):
        error = opt_int(payload.get("error"))
        raw_id = payload.get("deviceid")
        if isinstance(raw_id, str) and raw_id:
            deviceid = raw_id.lower()
    return OtaResult(error=error, deviceid=deviceid, peer=peer)
