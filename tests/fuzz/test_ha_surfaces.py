"""Generated input against every surface a device can reach on the running integration.

Through real sockets on 127.0.0.1: HA's own HTTP server (phcc's TestServer on `hass.http.app`,
with HA's middlewares: security filter, ban, auth) carrying our views, and the private
listeners (legacy TLS for the fake cloud, plain HTTP for FinalStage, downloads and the DIY
callback). Each test runs one HA instance and drives Hypothesis from a worker thread
(`driver.drive`, see its docstring for why); examples are derandomized, so CI sees the same
inputs every run. bench/fuzz.py runs the same cases by the ten thousand.

Nothing is mocked. A logged traceback or ERROR during a case counts as a crash, as does a 5xx
or a 401/403 (HA's ban middleware counts a 401 as a failed login).
"""

from __future__ import annotations

import asyncio
import contextlib

from custom_components.sonoff_ota.proto.image_names import FINAL_NAME
from custom_components.sonoff_ota.proto.image_server import ImageEventKind

from .driver import LOOPBACK, drive, http_request, raw_exchange
from .strategies import DEVICEID, dispatch_body, ota_result_body, tls_opening, ws_script
from .surfaces import (
    FUZZ_FILES,
    OTA_RESULT,
    Target,
    dispatch_case,
    download_case,
    download_request,
    ota_result_case,
    tls_case,
    ws_case,
)


async def test_dispatch_bodies(fuzz_target: Target) -> None:
    tally = await drive(
        dispatch_body,
        lambda body: fuzz_target.checked(dispatch_case(fuzz_target, body)),
        max_examples=30,
        within=15,
    )
    assert tally.cases >= 30


async def test_broken_tls_openings(fuzz_target: Target) -> None:
    tally = await drive(
        tls_opening,
        lambda opening: fuzz_target.checked(tls_case(fuzz_target, opening)),
        max_examples=15,
        within=10,
    )
    assert tally.cases >= 15


async def test_websocket_scripts(fuzz_target: Target) -> None:
    tally = await drive(
        ws_script,
        lambda script: fuzz_target.checked(ws_case(fuzz_target, script)),
        max_examples=25,
        within=15,
    )
    assert tally.cases >= 25
    assert not fuzz_target.server.cloud._sockets, "WebSocket sessions left open"


async def test_image_and_finalstage_requests(fuzz_target: Target) -> None:
    tokens = (fuzz_target.served.token, fuzz_target.expired_token, fuzz_target.bystander.token)
    size = len(FUZZ_FILES[FINAL_NAME])
    tally = await drive(
        download_request(tokens, size, slow=True),
        lambda request: fuzz_target.checked(download_case(fuzz_target, request)),
        max_examples=60,
        within=15,
    )
    assert tally.cases >= 60


async def test_ota_result_bodies(fuzz_target: Target) -> None:
    tally = await drive(
        ota_result_body,
        lambda body: fuzz_target.checked(ota_result_case(fuzz_target, body)),
        max_examples=30,
        within=10,
    )
    assert tally.cases >= 30


async def test_ota_result_sent_twice_keeps_answering_200(fuzz_target: Target) -> None:
    served = fuzz_target.served
    start = len(served.history)
    body = b'{"error":0,"deviceid":"%s"}' % DEVICEID.encode()
    for port in fuzz_target.http_ports():
        for _ in range(2):
            reply = await raw_exchange(port, http_request("POST", OTA_RESULT, body=body))
            assert reply.status == 200
    results = [e for e in served.history[start:] if e.kind is ImageEventKind.OTA_RESULT]
    assert len(results) == 2 * len(fuzz_target.http_ports())
    assert served.result is not None
    assert served.result.error == 0
    fuzz_target.check_bystander()


async def test_slow_headers_do_not_block_finalstage(fuzz_target: Target) -> None:
    """Slowloris: 20 connections dribbling headers do not hold up a FinalStage fetch."""
    port = fuzz_target.plain_port
    slow = [await asyncio.open_connection(LOOPBACK, port) for _ in range(20)]
    try:
        for _, writer in slow:
            writer.write(b"GET /ota/image_arduino.bin HTTP/1.1\r\nHost: x\r\nX-a: ")
        for _ in range(3):
            for _, writer in slow:
                writer.write(b"a")
                await writer.drain()
            await asyncio.sleep(0.01)
        reply = await raw_exchange(port, http_request("GET", "/ota/image_arduino.bin"))
        assert reply.status == 200
        assert reply.body == FUZZ_FILES[FINAL_NAME]
    finally:
        for _, writer in slow:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
