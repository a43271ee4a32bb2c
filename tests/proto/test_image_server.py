"""Image server: exact bytes and headers on the wire, routing, pacing, progress, otaFlash callback.

Real HTTP on 127.0.0.1 with a byte-level client (tests.proto.legacy_clients.raw_http), so what is
asserted is what a device would receive. The images are synthetic (virtual_sonoff.images).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
import contextlib
import hashlib
import json

import aiohttp
from aiohttp import web
import pytest

from custom_components.sonoff_ota.proto import image_server
from custom_components.sonoff_ota.proto.http_range import ByteRange, parse_range
from custom_components.sonoff_ota.proto.image_server import (
    ImageEvent,
    ImageEventKind,
    ImageServer,
    Pacing,
    ServedSet,
)
from virtual_sonoff.images import intermediate_user1, intermediate_user2, tasmota_lite

from .legacy_clients import LOOPBACK, get_request, raw_http, running_site

USER1 = "image_user1-0x01000.bin"
USER2 = "image_user2-0x81000.bin"
ARDUINO = "image_arduino.bin"
SIZE = 10_000
FAST_PACING = Pacing(first_bytes=10, first_pause=0.05, piece_size=1400, piece_pause=0.005)


@pytest.fixture
def images() -> dict[str, bytes]:
    return {
        USER1: intermediate_user1(SIZE),
        USER2: intermediate_user2(SIZE),
        ARDUINO: tasmota_lite(20_000),
    }


@contextlib.asynccontextmanager
async def serving(
    server: ImageServer,
) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    async with running_site(app) as port:
        yield port


def _signed(path: str) -> str:
    """The query string the firmware appends (must be ignored, spec §6.5)."""
    return f"{path}?deviceid=10000bad60&ts=1270216262&sign={'ab' * 32}"


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-4095", 0, 4095),  # first chunk
        ("bytes=4096-8191", 4096, 8191),  # middle chunk
        ("bytes=8192-12287", 8192, SIZE - 1),  # last chunk, end clamped
        ("bytes=9990-", 9990, SIZE - 1),
        ("bytes=-16", SIZE - 16, SIZE - 1),
    ],
)
async def test_range_gets_206_with_exact_content_range(
    socket_enabled: None, images: dict[str, bytes], range_header: str, start: int, end: int
) -> None:
    server = ImageServer()
    served = server.add_set(images)
    async with serving(server) as port:
        response = await raw_http(
            port, get_request(_signed(served.url_path(USER1)), headers={"Range": range_header})
        )
    assert response.status_line == "HTTP/1.1 206 Partial Content"
    assert response.headers["content-range"] == f"bytes {start}-{end}/{SIZE}"
    assert response.headers["content-length"] == str(end - start + 1)
    assert response.headers["content-type"] == "application/octet-stream"
    assert "transfer-encoding" not in response.headers
    assert "content-encoding" not in response.headers
    assert response.body == images[USER1][start : end + 1]
    record = server.fetch_log[-1]
    assert record.byte_range == ByteRange(start, end)
    assert record.status == 206
    assert not record.paced


@pytest.mark.parametrize("range_header", ["bytes=10000-10100", "bytes=5-2", "bytes=0-1,5-9"])
async def test_unsatisfiable_range_is_416(
    socket_enabled: None, images: dict[str, bytes], range_header: str
) -> None:
    server = ImageServer()
    served = server.add_set(images)
    async with serving(server) as port:
        response = await raw_http(
            port, get_request(served.url_path(USER1), headers={"Range": range_header})
        )
    assert response.status == 416
    assert response.headers["content-range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize("http10", [False, True])
async def test_whole_get_is_200_with_length_never_chunked_or_compressed(
    socket_enabled: None, images: dict[str, bytes], http10: bool
) -> None:
    server = ImageServer()
    served = server.add_set(images)
    request = get_request(
        _signed(served.url_path(ARDUINO)),
        headers={"Accept-Encoding": "gzip, deflate", "Host": "dl.itead.cn"},
        http10=http10,
    )
    async with serving(server) as port:
        response = await raw_http(port, request)
    assert response.status == 200
    assert response.headers["content-length"] == str(len(images[ARDUINO]))
    assert "transfer-encoding" not in response.headers
    assert "content-encoding" not in response.headers
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.body == images[ARDUINO]
    assert hashlib.sha256(response.body).hexdigest() == served.digest(ARDUINO)
    assert served.progress[ARDUINO].complete_fetches == 1


async def test_digest_is_lowercase_sha256_of_served_bytes(images: dict[str, bytes]) -> None:
    served = ImageServer().add_set(images)
    assert served.digest(USER1) == hashlib.sha256(images[USER1]).hexdigest()
    assert served.digest(USER1) == served.digest(USER1).lower()
    assert served.token not in repr(served)


async def test_host_and_query_are_ignored(socket_enabled: None, images: dict[str, bytes]) -> None:
    server = ImageServer()
    served = server.add_set(images)
    async with serving(server) as port:
        responses = [
            await raw_http(port, get_request(path, headers={"Host": host, "Range": "bytes=0-9"}))
            for path, host in [
                (served.url_path(USER2), "dl.itead.cn"),
                (_signed(served.url_path(USER2)), "192.168.4.2:8080"),
                (served.url_path(USER2) + "?x=../../etc/passwd", "example.invalid"),
            ]
        ]
    assert [r.status for r in responses] == [206, 206, 206]
    assert {r.body for r in responses} == {images[USER2][:10]}


async def test_unknown_and_traversal_paths_are_404(
    socket_enabled: None, images: dict[str, bytes]
) -> None:
    server = ImageServer(prefix="/sonoff_ota/fw")
    served = server.add_set(images)
    token = served.token
    other_token = ImageServer().add_set(images).token  # registered elsewhere: unknown here
    paths = [
        f"/sonoff_ota/fw/{other_token}/{USER1}",
        f"/sonoff_ota/fw/{token}/nope.bin",
        f"/sonoff_ota/fw/{token}/../{token}/{USER1}",
        f"/sonoff_ota/fw/{token}/%2e%2e/{USER1}",
        f"/sonoff_ota/fw/{token}/..%2f..%2fpyproject.toml",
        f"/sonoff_ota/fw/{token}/paced/../{USER1}",
        f"/sonoff_ota/fw/{token}",
        f"/sonoff_ota/fw/{token}/",
        "/sonoff_ota/fw/",
        "/ota/../pyproject.toml",
        f"/ota/{ARDUINO}",  # nothing mounted at /ota/ yet
        "/etc/passwd",
        "/",
    ]
    async with serving(server) as port:
        statuses = {path: (await raw_http(port, get_request(path))).status for path in paths}
        # Sanity: the real URL works on the same server.
        ok = await raw_http(port, get_request(served.url_path(USER1)))
        server.remove_set(served)
        removed = await raw_http(port, get_request(served.url_path(USER1)))
    assert statuses == dict.fromkeys(paths, 404)
    assert ok.status == 200
    assert removed.status == 404
    assert not any(record.status == 401 for record in server.fetch_log)


async def test_fixed_ota_paths_for_the_intermediate_image(
    socket_enabled: None, images: dict[str, bytes]
) -> None:
    """E2A: HTTP/1.0, no Range, exactly 200 at /ota/<name> (spec §7)."""
    server = ImageServer()
    served = server.add_set(images)
    server.mount_fixed(served)
    async with serving(server) as port:
        user2 = await raw_http(port, get_request(f"/ota/{USER2}", http10=True))
        arduino = await raw_http(port, get_request(f"/ota/{ARDUINO}", http10=True))
        server.unmount_fixed()
        gone = await raw_http(port, get_request(f"/ota/{ARDUINO}", http10=True))
    assert user2.status_line.split()[1] == "200"
    assert user2.body == images[USER2]
    assert arduino.headers["content-length"] == str(len(images[ARDUINO]))
    assert arduino.body == images[ARDUINO]
    assert gone.status == 404
    fixed = [(r.name, r.fixed_path, r.status) for r in server.fetch_log]
    assert fixed == [
        (USER2, True, 200),
        (ARDUINO, True, 200),
    ]
    assert served.progress[ARDUINO].complete_fetches == 1


async def _read_chunks(port: int, request: bytes) -> list[bytes]:
    """Read a response as the separate bursts the socket delivered."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    chunks: list[bytes] = []
    try:
        writer.write(request)
        await writer.drain()
        while chunk := await asyncio.wait_for(reader.read(65536), timeout=5):
            chunks.append(chunk)
    finally:
        writer.close()
        await writer.wait_closed()
    return chunks


async def test_pacing_only_for_non_range_clients(
    socket_enabled: None, images: dict[str, bytes]
) -> None:
    server = ImageServer(pacing=FAST_PACING)
    served = server.add_set(images)
    paced_path = served.url_path(USER1, paced=True)
    async with serving(server) as port:
        chunks = await _read_chunks(port, get_request(paced_path))
        ranged = await raw_http(port, get_request(paced_path, headers={"Range": "bytes=0-4095"}))
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    assert body == images[USER1]
    assert b"transfer-encoding" not in head.lower()
    # Where the bursts ended, counted in body bytes: 10 first, then 1400-byte pieces.
    head_len = len(head) + 4
    boundaries, total = [], 0
    for chunk in chunks:
        total += len(chunk)
        if total > head_len:
            boundaries.append(total - head_len)
    assert boundaries[0] == 10
    assert boundaries[1:4] == [1410, 2810, 4210]
    assert boundaries[-1] == SIZE
    # A Range client on the paced URL is served at once, as a 206 (SonOTA #62).
    assert ranged.status == 206
    assert ranged.body == images[USER1][:4096]
    assert [r.paced for r in server.fetch_log] == [True, False]


async def test_progress_events_and_fetch_log(
    socket_enabled: None, images: dict[str, bytes]
) -> None:
    seen: list[tuple[ServedSet, ImageEvent]] = []
    server = ImageServer(listener=lambda served, event: seen.append((served, event)))
    served = server.add_set(images, deviceid="10000bad60")
    async with serving(server) as port:
        waiter = asyncio.create_task(
            served.wait_for(ImageEventKind.FETCH_DONE, name=USER1, start=0)
        )
        for start in range(0, SIZE, 4096):
            headers = {"Range": f"bytes={start}-{start + 4095}"}
            await raw_http(port, get_request(served.url_path(USER1), headers=headers))
        first_done = await waiter
    progress = [e.high_water for _, e in seen if e.kind is ImageEventKind.PROGRESS]
    assert progress == [4096, 8192, SIZE]
    assert first_done.high_water == 4096
    assert first_done.record is not None
    assert first_done.record.byte_range == ByteRange(0, 4095)
    assert served.progress[USER1].high_water == SIZE
    assert served.progress[USER1].requests == 3
    assert served.progress[USER1].complete_fetches == 1
    assert served.fraction == 1.0
    assert served.progress[USER2].fraction == 0.0
    assert [(r.name, r.byte_range) for r in server.fetch_log] == [
        (USER1, ByteRange(0, 4095)),
        (USER1, ByteRange(4096, 8191)),
        (USER1, ByteRange(8192, SIZE - 1)),
    ]
    assert all(s is served for s, _ in seen)


async def test_fetch_log_keeps_only_the_latest_requests(
    socket_enabled: None, images: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """HA runs for months and every flash adds ~120 requests: the log must not grow forever."""
    monkeypatch.setattr(image_server, "FETCH_LOG_SIZE", 2)
    server = ImageServer()
    served = server.add_set(images, deviceid="10000bad60")
    async with serving(server) as port:
        for start in range(0, SIZE, 4096):
            headers = {"Range": f"bytes={start}-{start + 4095}"}
            await raw_http(port, get_request(served.url_path(USER1), headers=headers))
    assert [r.byte_range for r in server.fetch_log] == [
        ByteRange(4096, 8191),
        ByteRange(8192, SIZE - 1),
    ]


async def test_ota_flash_callback_is_delivered(
    socket_enabled: None, images: dict[str, bytes]
) -> None:
    server = ImageServer()
    other = server.add_set(images, deviceid="1000000000")
    served = server.add_set(images, deviceid="1000e4c17c")
    async with serving(server) as port, aiohttp.ClientSession() as session:
        url = f"http://{LOOPBACK}:{port}/api/device/otaFlash"
        async with session.post(
            url, data=json.dumps({"error": 0, "deviceid": "1000E4C17C"})
        ) as resp:
            status = resp.status
        event = await served.wait_for(ImageEventKind.OTA_RESULT)
    assert status == 200
    assert event.result is not None
    assert event.result.error == 0
    assert served.result == event.result
    assert other.result is None


@pytest.mark.parametrize(
    ("body", "expected_error"),
    [(b"not json at all", None), (b'{"error": "409"}', 409), (b'{"error": true}', None)],
)
async def test_ota_flash_callback_defensive_and_matched_by_peer(
    socket_enabled: None, images: dict[str, bytes], body: bytes, expected_error: int | None
) -> None:
    """No deviceid in the body: the set this peer last downloaded from gets the result."""
    server = ImageServer()
    server.add_set(images)
    served = server.add_set(images)
    async with serving(server) as port:
        await raw_http(port, get_request(served.url_path(ARDUINO), headers={"Range": "bytes=0-1"}))
        request = (
            b"POST /api/device/otaFlash HTTP/1.1\r\nHost: dl.itead.cn\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        response = await raw_http(port, request)
    assert response.status == 200
    assert served.result is not None
    assert served.result.error == expected_error
    assert served.result.peer == LOOPBACK


def test_parse_range_edges() -> None:
    assert parse_range("bytes=0-0", 1) == ByteRange(0, 0)
    assert parse_range("bytes=0-99999", 10) == ByteRange(0, 9)
    assert parse_range("bytes=-100", 10) == ByteRange(0, 9)
    for bad in ["bytes=10-", "bytes=-0", "bytes=-", "items=0-1", "bytes=a-b"]:
        with pytest.raises(ValueError):
            parse_range(bad, 10)
