"""Fake eWeLink cloud over real HTTPS/WSS on 127.0.0.1 with the legacy TLS context.

The "device" is an aiohttp client limited to TLS 1.2 + AES128-SHA (or TLS 1.1) that sends the
frames of the cloud capture in spec setup-mode-ota.md §6.2-§6.3. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
import contextlib
import datetime
import hashlib
import json
from pathlib import Path
import re
import ssl
from typing import Any
import uuid

import aiohttp
from aiohttp import web
import pytest

from custom_components.sonoff_ota.proto.ewelink_messages import UpgradeOffer
from custom_components.sonoff_ota.proto.fake_cloud import (
    CloudEvent,
    CloudEventKind,
    FakeCloud,
    PacingPolicy,
)
from custom_components.sonoff_ota.proto.image_server import ImageServer
from custom_components.sonoff_ota.proto.legacy_tls import (
    TlsHandshakeObserver,
    ensure_cert_files,
    legacy_server_context,
)
from virtual_sonoff.images import intermediate_user1, intermediate_user2

from .legacy_clients import LOOPBACK, legacy_client_context, raw_http, running_site

DEVICEID = "100008db11"
DEVICE_KEY = "11111111-2222-3333-4444-555555555555"
MODEL = "PSC-B01-GL"
ROM = "2.0.2"
BASE = "http://192.0.2.10:8080"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DATE_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return ensure_cert_files(tmp_path_factory.mktemp("cloud-tls"))


@pytest.fixture
def offers() -> tuple[UpgradeOffer, UpgradeOffer]:
    """A normal and a paced offer built from an image server's served set."""
    served = ImageServer().add_set(
        {
            "image_user1-0x01000.bin": intermediate_user1(5000),
            "image_user2-0x81000.bin": intermediate_user2(5000),
        }
    )
    normal = UpgradeOffer.from_served_set(served, BASE)
    paced = UpgradeOffer.from_served_set(served, BASE + "/", paced=True)
    assert normal.user1_url == BASE + served.url_path("image_user1-0x01000.bin")
    assert "/paced/" in paced.user2_url
    assert normal.user2_digest == served.digest("image_user2-0x81000.bin")
    return normal, paced


@contextlib.asynccontextmanager
async def cloud_site(
    cloud: FakeCloud, cert_files: tuple[Path, Path], observer: TlsHandshakeObserver | None = None
) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_post("/dispatch/device", cloud.handle_dispatch)
    app.router.add_get("/api/ws", cloud.handle_websocket)
    context = legacy_server_context(*cert_files, observer=observer)
    async with running_site(app, context) as port:
        try:
            yield port
        finally:
            await cloud.close()


class Device:
    """The device side of one WebSocket connection."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._seq = 1000

    async def call(self, action: str, **fields: Any) -> dict[str, Any]:
        """Send an action and return the server's reply to it."""
        self._seq += 1
        frame = {"action": action, "deviceid": DEVICEID, "sequence": str(self._seq), **fields}
        await self.ws.send_json(frame)
        return await self.receive()

    async def receive(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        data: dict[str, Any] = msg.json()
        return data

    async def register(self, server_key: str | None = None) -> dict[str, Any]:
        return await self.call(
            "register",
            userAgent="device",
            apikey=DEVICE_KEY,
            version=2,
            romVersion=ROM,
            model=MODEL,
            ts=844,
        )


@contextlib.asynccontextmanager
async def device_ws(
    session: aiohttp.ClientSession, port: int, **kwargs: Any
) -> AsyncIterator[Device]:
    async with session.ws_connect(
        f"wss://{LOOPBACK}:{port}/api/ws",
        ssl=legacy_client_context(ssl.TLSVersion.TLSv1_2, "AES128-SHA"),
        headers={"Host": "iotgo.iteadstudio.com", "Origin": "http://nowhere.invalid"},
        **kwargs,
    ) as ws:
        yield Device(ws)


def _kinds(events: list[CloudEvent]) -> list[CloudEventKind]:
    return [event.kind for event in events]


async def test_dispatch_reply_and_event(
    socket_enabled: None, cert_files: tuple[Path, Path]
) -> None:
    observer = TlsHandshakeObserver()
    cloud = FakeCloud("192.0.2.10", 8443, tls_observer=observer)
    session_state = cloud.expect_device(DEVICEID)
    body = (
        '{"accept":"ws;2","version":2,"ts":933,"deviceid":"100008db11",'
        f'"apikey":"{DEVICE_KEY}","model":"ITA-GZ1-GL","romVersion":"1.5.5"}}'
    )
    client = legacy_client_context(ssl.TLSVersion.TLSv1_1, "AES128-SHA")
    async with cloud_site(cloud, cert_files, observer) as port:
        replies = []
        for payload, extra in [(body, "Content-Type: application/json\r\n"), ("", ""), ("{[", "")]:
            request = (
                "POST /dispatch/device HTTP/1.1\r\nHost: eu-disp.coolkit.cc\r\n"
                f"{extra}Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n{payload}"
            ).encode()
            replies.append(await raw_http(port, request, ssl_context=client))
    for reply in replies:
        assert reply.status == 200
        assert json.loads(reply.body) == {
            "error": 0,
            "reason": "ok",
            "IP": "192.0.2.10",
            "port": 8443,
        }
    dispatched = await session_state.wait_for(CloudEventKind.DISPATCHED)
    assert (dispatched.model, dispatched.rom_version) == ("ITA-GZ1-GL", "1.5.5")
    assert session_state.dispatches == 1
    assert _kinds(cloud.history) == [CloudEventKind.DISPATCHED] * 3
    assert [e.known_device for e in cloud.history] == [True, False, False]
    assert observer.requests == 3
    assert not observer.pinning_suspected


async def test_unspecified_advertise_ip_uses_the_local_address(
    socket_enabled: None, cert_files: tuple[Path, Path]
) -> None:
    cloud = FakeCloud("0.0.0.0", 8443)  # noqa: S104 - the "unspecified" sentinel, not a bind
    client = legacy_client_context(ssl.TLSVersion.TLSv1_2, "AES128-SHA")
    request = b"POST /dispatch/device HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" + (
        b"Connection: close\r\n\r\n"
    )
    async with cloud_site(cloud, cert_files) as port:
        reply = await raw_http(port, request, ssl_context=client)
    assert json.loads(reply.body)["IP"] == LOOPBACK


def test_advertised_address_must_be_dotted_ipv4() -> None:
    with pytest.raises(ValueError):
        FakeCloud("ha.local", 8443)


async def test_full_exchange_and_upgrade(
    socket_enabled: None,
    cert_files: tuple[Path, Path],
    offers: tuple[UpgradeOffer, UpgradeOffer],
) -> None:
    cloud = FakeCloud("192.0.2.10", 8443)
    state = cloud.expect_device(DEVICEID, offers[0], paced_offer=offers[1])
    async with (
        cloud_site(cloud, cert_files) as port,
        aiohttp.ClientSession() as session,
        device_ws(session, port) as device,
    ):
        registered = await device.register()
        server_key = registered["apikey"]
        date = await device.call("date", apikey=server_key)
        update = await device.call(
            "update",
            apikey=server_key,
            userAgent="device",
            params={
                "switch": "off",
                "fwVersion": ROM,
                "rssi": -50,
                "staMac": "x",
                "startup": "off",
            },
        )
        upgrade = await device.receive()
        query = await device.call("query", apikey=server_key, params=["timers"])
        await device.ws.send_json(
            {
                "error": 0,
                "userAgent": "device",
                "apikey": server_key,
                "deviceid": DEVICEID,
                "sequence": upgrade["sequence"],
            }
        )
        ack = await state.wait_for(CloudEventKind.ACK)
    # Every reply: error 0, the deviceid, the server apikey (a UUID that is not the device's).
    for reply in (registered, date, update, query):
        assert reply["error"] == 0
        assert reply["deviceid"] == DEVICEID
        assert reply["apikey"] == server_key
    assert str(uuid.UUID(server_key)) == server_key
    assert server_key != DEVICE_KEY
    assert registered["config"] == {"hb": 1, "hbInterval": 145}
    assert DATE_RE.match(date["date"]), date["date"]
    sent = datetime.datetime.strptime(date["date"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.UTC
    )
    assert abs((datetime.datetime.now(datetime.UTC) - sent).total_seconds()) < 60
    assert query["params"] == 0
    # The upgrade action (spec §6.3 / §13.4).
    assert upgrade["action"] == "upgrade"
    assert upgrade["userAgent"] == "app"
    assert upgrade["ts"] == 0
    assert upgrade["deviceid"] == DEVICEID
    assert upgrade["apikey"] == server_key
    assert isinstance(upgrade["sequence"], str)
    params = upgrade["params"]
    assert params["model"] == MODEL
    assert isinstance(params["version"], str)
    assert params["binList"] == [
        {"downloadUrl": offers[0].user1_url, "digest": offers[0].user1_digest, "name": "user1.bin"},
        {"downloadUrl": offers[0].user2_url, "digest": offers[0].user2_digest, "name": "user2.bin"},
    ]
    assert all(re.fullmatch(r"[0-9a-f]{64}", e["digest"]) for e in params["binList"])
    assert ack.error == 0
    assert state.acks == [0]
    assert (state.model, state.rom_version) == (MODEL, ROM)
    closed = await state.wait_for(CloudEventKind.CLOSED)
    assert _kinds(state.history[: closed.index + 1]) == [
        CloudEventKind.REGISTERED,
        CloudEventKind.UPGRADE_SENT,
        CloudEventKind.ACK,
        CloudEventKind.CLOSED,
    ]
    assert state.history[0].model == MODEL
    assert state.history[0].rom_version == ROM


@pytest.mark.parametrize(
    ("policy", "second_is_paced"),
    [(PacingPolicy.AFTER_404, True), (PacingPolicy.NEVER, False)],
)
async def test_404_then_reconnect_reissues_the_offer(
    socket_enabled: None,
    cert_files: tuple[Path, Path],
    offers: tuple[UpgradeOffer, UpgradeOffer],
    policy: PacingPolicy,
    second_is_paced: bool,
) -> None:
    cloud = FakeCloud("192.0.2.10", 8443)
    state = cloud.expect_device(DEVICEID, offers[0], paced_offer=offers[1], policy=policy)
    upgrades: list[dict[str, Any]] = []
    async with cloud_site(cloud, cert_files) as port, aiohttp.ClientSession() as session:
        for attempt in range(2):
            async with device_ws(session, port) as device:
                key = (await device.register())["apikey"]
                await device.call("update", apikey=key, params={"switch": "off"})
                upgrade = await device.receive()
                upgrades.append(upgrade)
                # A second update on the same connection does not repeat the offer.
                await device.call("update", apikey=key, params={"switch": "on"})
                assert (await device.call("query", apikey=key, params=["timers"]))["params"] == 0
                await device.ws.send_json(
                    {"error": 404, "deviceid": DEVICEID, "sequence": upgrade["sequence"]}
                )
                ack = await state.wait_for(CloudEventKind.ACK, start=len(state.history))
                assert ack.error == 404
            await state.wait_for(CloudEventKind.CLOSED, start=ack.index)
            del attempt
    first, second = (u["params"]["binList"] for u in upgrades)
    assert first == offers[0].bin_list()
    expected_second = offers[1] if second_is_paced else offers[0]
    assert second == expected_second.bin_list()
    assert upgrades[0]["sequence"] != upgrades[1]["sequence"]
    assert state.acks == [404, 404]
    assert state.upgrades_sent == 2
    sent = [e for e in state.history if e.kind is CloudEventKind.UPGRADE_SENT]
    assert [e.paced for e in sent] == [False, second_is_paced]
    assert len({e.sequence for e in sent}) == 2


async def test_unknown_device_gets_polite_replies_but_no_upgrade(
    socket_enabled: None, cert_files: tuple[Path, Path], offers: tuple[UpgradeOffer, UpgradeOffer]
) -> None:
    cloud = FakeCloud("192.0.2.10", 8443)
    cloud.expect_device("1000ffffff", offers[0])
    async with (
        cloud_site(cloud, cert_files) as port,
        aiohttp.ClientSession() as session,
        device_ws(session, port) as device,
    ):
        key = (await device.register())["apikey"]
        update = await device.call("update", apikey=key, params={"switch": "off"})
        # Frames arrive in order: the next one is the query reply, so no upgrade came between.
        query = await device.call("query", apikey=key, params=["timers"])
        odd = await device.call("someNewAction", apikey=key)
    assert update["error"] == 0
    assert query["params"] == 0
    assert odd == {"error": 0, "deviceid": DEVICEID, "apikey": key, "sequence": odd["sequence"]}
    assert CloudEventKind.UPGRADE_SENT not in _kinds(cloud.history)
    assert cloud.history[0].kind is CloudEventKind.REGISTERED
    assert not cloud.history[0].known_device


async def test_pings_are_answered(socket_enabled: None, cert_files: tuple[Path, Path]) -> None:
    cloud = FakeCloud("192.0.2.10", 8443)
    async with (
        cloud_site(cloud, cert_files) as port,
        aiohttp.ClientSession() as session,
        device_ws(session, port, autoping=False) as device,
    ):
        await device.register()
        await device.ws.ping(b"hb")
        pong = await device.ws.receive(timeout=5)
    assert pong.type is aiohttp.WSMsgType.PONG
    assert pong.data == b"hb"


async def test_firmware_handshake_headers_are_accepted(
    socket_enabled: None, cert_files: tuple[Path, Path]
) -> None:
    """The constant key, a foreign Host and Origin, over TLS 1.1 (spec §6.3 capture)."""
    cloud = FakeCloud("192.0.2.10", 8443)
    request = (
        b"GET /api/ws HTTP/1.1\r\nHost: iotgo.iteadstudio.com\r\nConnection: upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Key: ITEADTmobiM0x1DabcEsnw==\r\n"
        b"Sec-WebSocket-Version: 13\r\nOrigin: http://iotgo.iteadstudio.com\r\n\r\n"
    )
    client = legacy_client_context(ssl.TLSVersion.TLSv1_1, "AES128-SHA")
    async with cloud_site(cloud, cert_files) as port:
        reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=client)
        try:
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
        await cloud.wait_for(CloudEventKind.CLOSED)
    assert head.startswith(b"HTTP/1.1 101 ")
    # The accept value proves the server used the firmware's constant key as is (RFC 6455).
    accept = base64.b64encode(
        hashlib.sha1(b"ITEADTmobiM0x1DabcEsnw==" + WS_GUID).digest()  # noqa: S324
    )
    assert b"Sec-WebSocket-Accept: " + accept in head


async def test_close_ends_open_websockets(
    socket_enabled: None, cert_files: tuple[Path, Path]
) -> None:
    cloud = FakeCloud("192.0.2.10", 8443)
    async with (
        cloud_site(cloud, cert_files) as port,
        aiohttp.ClientSession() as session,
        device_ws(session, port) as device,
    ):
        await device.register()
        await cloud.close()
        msg = await device.ws.receive(timeout=5)
        assert msg.type in {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED}
        await cloud.wait_for(CloudEventKind.CLOSED)


def test_offer_rejects_uppercase_digest() -> None:
    with pytest.raises(ValueError):
        UpgradeOffer("http://a/1", "A" * 64, "http://a/2", "b" * 64)
