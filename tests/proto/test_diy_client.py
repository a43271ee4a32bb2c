"""DiyClient against a raw-socket fake DIY device on 127.0.0.1 (real TCP, real HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
import itertools
import json
import socket

import aiohttp
import pytest

from custom_components.sonoff_ota.proto.diy_client import (
    DEVICE_ERRORS,
    DiyClient,
    DiyError,
    DiyErrorCode,
)
from custom_components.sonoff_ota.proto.diy_ota_result import FlashResult, flash_result

from .diy_fake_device import (
    Action,
    FakeDiyDevice,
    Hang,
    HangUp,
    Received,
    Reply,
    ResetAfterRead,
    ResetBeforeRead,
    Script,
)

DEVICEID = "1000e4c17c"
SHA = "ab" * 32
URL_OK = "http://127.0.0.1:9/ota/tasmota-lite.bin"
INFO_DATA = {
    "switch": "off",
    "startup": "off",
    "pulse": "off",
    "pulseWidth": 500,
    "ssid": "test",
    "otaUnlock": True,
    "fwVersion": "3.6.0",
    "deviceid": DEVICEID,
    "bssid": "b4:fb:e4:77:7f:aa",
    "signalStrength": -47,
}


@pytest.fixture
async def session(socket_enabled: None) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as sess:
        yield sess


def client(
    session: aiohttp.ClientSession, dev: FakeDiyDevice, deviceid: str | None = DEVICEID, **kw: float
) -> DiyClient:
    opts: dict[str, float] = {
        "min_interval": 0.01,
        "timeout": 2.0,
        "reset_retry_delay": 0.01,
        "flash_timeout": 2.0,
    }
    opts.update(kw)
    return DiyClient(
        session,
        "127.0.0.1",
        dev.port,
        deviceid,
        min_interval=opts["min_interval"],
        timeout=opts["timeout"],
        reset_retry_delay=opts["reset_retry_delay"],
        flash_timeout=opts["flash_timeout"],
        reset_retries=int(opts.get("reset_retries", 10)),
    )


def always(action: Action) -> Script:
    return lambda req, _i: action if req is not None else Reply()


async def test_info_object_data_and_envelope(session: aiohttp.ClientSession) -> None:
    dev = FakeDiyDevice(always(Reply({"seq": 3, "error": 0, "data": INFO_DATA})))
    async with dev.running():
        info = await client(session, dev).info()
    assert info.fw_version == "3.6.0"
    assert info.ota_unlock is True
    assert info.deviceid == DEVICEID
    assert info.ssid == "test"
    assert info.bssid == "b4:fb:e4:77:7f:aa"
    assert info.signal_strength == -47
    (req,) = dev.received
    assert req.path == "/zeroconf/info"
    assert req.headers["connection"] == "close"
    assert req.headers["content-type"] == "application/json"
    assert "referer" not in req.headers
    assert req.json == {"deviceid": DEVICEID, "data": {}}


async def test_info_string_data_v14(session: aiohttp.ClientSession) -> None:
    """3.3/3.4 firmware sends `data` as a JSON string and no fwVersion [ITD#10]."""
    data = {"switch": "on", "startup": "stay", "ssid": "home", "otaUnlock": False}
    dev = FakeDiyDevice(always(Reply({"seq": 1, "error": 0, "data": json.dumps(data)})))
    async with dev.running():
        info = await client(session, dev).info()
    assert info.ota_unlock is False
    assert info.fw_version is None
    assert info.switch == "on"
    assert info.ssid == "home"


@pytest.mark.parametrize(("device_error", "key"), [(c, v[0]) for c, v in DEVICE_ERRORS.items()])
async def test_device_error_codes_map_to_keys(
    session: aiohttp.ClientSession, device_error: int, key: DiyErrorCode
) -> None:
    dev = FakeDiyDevice(always(Reply({"seq": 1, "error": device_error})))
    async with dev.running():
        with pytest.raises(DiyError) as exc:
            await client(session, dev, deviceid=None).ota_unlock()
    assert exc.value.code is key
    assert exc.value.device_error == device_error
    assert exc.value.path == "ota_unlock"


def test_error_table_covers_the_spec() -> None:
    expected = {
        400: "bad_json",
        401: "encrypted_lan_mode",
        404: "wrong_deviceid",
        422: "invalid_parameters",
        500: "unlock_rejected",
        503: "unlock_no_internet",
        403: "not_unlocked",
        408: "predownload_timeout",
        413: "image_too_large",
        424: "download_failed",
        471: "sha256_mismatch",
    }
    assert {c: str(v[0]) for c, v in DEVICE_ERRORS.items()} == expected
    assert "eWeLink app" in DEVICE_ERRORS[500][1]
    assert "internet" in DEVICE_ERRORS[503][1]
    assert "Range" in DEVICE_ERRORS[424][1]


async def test_unknown_device_error_and_bad_replies(session: aiohttp.ClientSession) -> None:
    replies = iter(
        [Reply({"seq": 1, "error": 777}), Reply(b"<html>nope</html>"), Reply({"seq": 1})]
    )
    dev = FakeDiyDevice(lambda req, _i: next(replies) if req is not None else Reply())
    async with dev.running():
        c = client(session, dev, deviceid=None)
        with pytest.raises(DiyError) as exc:
            await c.info()
        assert exc.value.code is DiyErrorCode.DEVICE_ERROR
        assert exc.value.device_error == 777
        for _ in range(2):
            with pytest.raises(DiyError) as exc:
                await c.info()
            assert exc.value.code is DiyErrorCode.BAD_REPLY


def test_flash_result_codes() -> None:
    assert flash_result(0) is FlashResult.DONE
    assert flash_result(404) is FlashResult.DOWNLOAD_FAILED
    assert flash_result(406) is FlashResult.UPGRADE_MESSAGE_ERROR
    assert flash_result(409) is FlashResult.CHECK_FAILED
    assert flash_result(410) is FlashResult.DEVICE_INTERNAL_ERROR
    assert flash_result(1) is FlashResult.UNKNOWN


async def test_empty_deviceid_is_never_sent(session: aiohttp.ClientSession) -> None:
    dev = FakeDiyDevice(always(Reply({"seq": 1, "error": 0, "data": {"otaUnlock": False}})))
    async with dev.running():
        c = client(session, dev, deviceid="")
        await c.info()
        await c.ota_unlock()
        await c.ota_flash(URL_OK, SHA)
    assert len(dev.received) == 3
    for req in dev.received:
        assert b'"deviceid"' not in req.body
        assert "deviceid" not in req.json
    assert dev.received[2].json == {"data": {"downloadUrl": URL_OK, "sha256sum": SHA}}


async def test_deviceid_learned_from_info(session: aiohttp.ClientSession) -> None:
    """Manual IP entry: no id known; /info tells it, later calls send the real id."""
    dev = FakeDiyDevice(always(Reply({"seq": 1, "error": 0, "data": INFO_DATA})))
    async with dev.running():
        c = client(session, dev, deviceid=None)
        await c.info()
        await c.ota_unlock()
    assert "deviceid" not in dev.received[0].json
    assert dev.received[1].json["deviceid"] == DEVICEID
    assert all(b'"deviceid":""' not in b for b in dev.bodies())


@pytest.mark.parametrize(
    "failure",
    [Hang(), HangUp(), Reply({"seq": 1, "error": 404})],
    ids=["hang", "empty_reply", "wrong_deviceid"],
)
async def test_fallback_without_deviceid(session: aiohttp.ClientSession, failure: Action) -> None:
    """3.7.x hangs or hangs up on the id it dislikes: retry once without the key."""

    def script(req: Received | None, _i: int) -> Action:
        if req is not None and "deviceid" in req.json:
            return failure
        return Reply({"seq": 1, "error": 0, "data": INFO_DATA})

    dev = FakeDiyDevice(script)
    async with dev.running():
        c = client(session, dev, timeout=0.3)
        info = await c.info()
        assert info.fw_version == "3.6.0"
        assert c.omits_deviceid
        await c.ota_unlock()  # remembers: no key from now on
    keys = ["deviceid" in r.json for r in dev.received]
    assert keys == [True, False, False]
    assert all(b'"deviceid":""' not in b for b in dev.bodies())


async def test_hang_without_fallback_is_timeout(session: aiohttp.ClientSession) -> None:
    dev = FakeDiyDevice(always(Hang()))
    async with dev.running():
        with pytest.raises(DiyError) as exc:
            await client(session, dev, timeout=0.2).info()
    assert exc.value.code is DiyErrorCode.TIMEOUT
    # with the id, then once without it: two requests, no more
    assert [("deviceid" in r.json) for r in dev.received] == [True, False]


async def test_min_interval_between_requests(session: aiohttp.ClientSession) -> None:
    interval = 0.15
    dev = FakeDiyDevice()
    async with dev.running():
        c = client(session, dev, min_interval=interval)
        await c.info()
        await asyncio.gather(c.info(), c.ota_unlock())
    times = [r.at for r in dev.received]
    assert len(times) == 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= interval - 0.005 for gap in gaps), gaps
    assert dev.max_active == 1


async def test_reset_before_delivery_is_retried(session: aiohttp.ClientSession) -> None:
    dev = FakeDiyDevice(
        lambda req, i: ResetBeforeRead() if i < 3 else Reply({"error": 0, "data": INFO_DATA})
    )
    async with dev.running():
        info = await client(session, dev).info()
    assert info.deviceid == DEVICEID
    assert dev.connections == 4
    assert len(dev.received) == 1


async def test_reset_retries_are_bounded(session: aiohttp.ClientSession) -> None:
    dev = FakeDiyDevice(lambda _req, _i: ResetBeforeRead())
    async with dev.running():
        with pytest.raises(DiyError) as exc:
            await client(session, dev, deviceid=None, reset_retries=2).info()
    assert exc.value.code is DiyErrorCode.UNREACHABLE
    assert dev.connections == 3


@pytest.mark.parametrize(
    "failure",
    [ResetAfterRead(), HangUp(), Hang(), Reply(b"garbage")],
    ids=lambda a: type(a).__name__,
)
async def test_ota_flash_never_resent_after_ambiguous_failure(
    session: aiohttp.ClientSession, failure: Action
) -> None:
    dev = FakeDiyDevice(always(failure))
    async with dev.running():
        c = client(session, dev, flash_timeout=0.3)
        with pytest.raises(DiyError) as exc:
            await c.ota_flash(URL_OK, SHA)
        assert exc.value.code is DiyErrorCode.FLASH_MAY_BE_RUNNING
    assert dev.connections == 1
    assert len(dev.received) == 1
    assert dev.received[0].path == "/zeroconf/ota_flash"


async def test_ota_flash_device_error_is_definite(session: aiohttp.ClientSession) -> None:
    dev = FakeDiyDevice(always(Reply({"seq": 2, "error": 424})))
    async with dev.running():
        with pytest.raises(DiyError) as exc:
            await client(session, dev).ota_flash(URL_OK, SHA)
    assert exc.value.code is DiyErrorCode.DOWNLOAD_FAILED
    assert len(dev.received) == 1


async def test_ota_flash_accepted(session: aiohttp.ClientSession) -> None:
    dev = FakeDiyDevice(always(Reply({"seq": 2, "error": 0})))
    async with dev.running():
        await client(session, dev).ota_flash(URL_OK, SHA)
    (req,) = dev.received
    assert req.json == {"deviceid": DEVICEID, "data": {"downloadUrl": URL_OK, "sha256sum": SHA}}


async def test_ota_flash_connect_refused_is_unreachable(session: aiohttp.ClientSession) -> None:
    """A refused connect never delivered anything: retried, then `unreachable`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    c = DiyClient(
        session,
        "127.0.0.1",
        port,
        DEVICEID,
        min_interval=0,
        reset_retries=2,
        reset_retry_delay=0.01,
    )
    with pytest.raises(DiyError) as exc:
        await c.ota_flash(URL_OK, SHA)
    assert exc.value.code is DiyErrorCode.UNREACHABLE


@pytest.mark.parametrize(
    ("url", "sha", "key"),
    [
        (URL_OK, SHA.upper(), DiyErrorCode.INVALID_SHA256),
        (URL_OK, "ab" * 31, DiyErrorCode.INVALID_SHA256),
        ("https://127.0.0.1/ota/x.bin", SHA, DiyErrorCode.INVALID_DOWNLOAD_URL),
        ("http://ota.example.com/x.bin", SHA, DiyErrorCode.INVALID_DOWNLOAD_URL),
        ("http://[::1]/x.bin", SHA, DiyErrorCode.INVALID_DOWNLOAD_URL),
        ("http://127.0.0.1:8000/", SHA, DiyErrorCode.INVALID_DOWNLOAD_URL),
    ],
)
async def test_ota_flash_validates_before_sending(
    session: aiohttp.ClientSession, url: str, sha: str, key: DiyErrorCode
) -> None:
    dev = FakeDiyDevice()
    async with dev.running():
        with pytest.raises(DiyError) as exc:
            await client(session, dev).ota_flash(url, sha)
    assert exc.value.code is key
    assert dev.connections == 0
