"""TasmotaClient against an aiohttp fake of Tasmota's `/cm` on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
import logging
import socket

import aiohttp
import pytest

from custom_components.sonoff_ota.proto.tasmota_client import (
    ExpectedSettings,
    SettingMismatch,
    TasmotaClient,
    TasmotaError,
    TasmotaErrorCode,
)
from custom_components.sonoff_ota.proto.tasmota_settings import (
    TasmotaSettings,
    build_backlog,
    lookup_hardware,
)

from .tasmota_fake_device import FakeTasmota

WIFI_PW = "p@ss w+rd&x=1%#?é"
MQTT_PW = "mq tt+pw&%/"


@pytest.fixture
async def session(socket_enabled: None) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as sess:
        yield sess


def settings() -> TasmotaSettings:
    hardware = lookup_hardware("MINIR2").hardware
    return TasmotaSettings(
        ssid="My Home Wi-Fi",
        wifi_password=WIFI_PW,
        mqtt_host="192.168.1.10",
        mqtt_port=1884,
        mqtt_user="tas user",
        mqtt_password=MQTT_PW,
        device_name="Sonoff Mini R2 e4c17c",
        friendly_name="Sonoff Mini R2 e4c17c",
        hardware=hardware,
    )


async def test_backlog_round_trips_and_no_referer(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    commands = build_backlog(settings())
    dev = FakeTasmota()
    async with dev.running():
        await TasmotaClient(session, dev.base_url).backlog(commands)
    (seen,) = dev.seen
    assert seen.commands == commands  # decoded server-side, byte for byte
    assert seen.cmnd.startswith("Backlog SSID1 My Home Wi-Fi;Password1 ")
    assert "%20" in seen.raw_query
    assert "%3B" in seen.raw_query
    assert "+" not in seen.raw_query  # '+' would decode to a space on Tasmota
    assert "referer" not in seen.headers
    assert dev.state.mqtt_port == 1884
    assert dev.state.other["template"].startswith('{"NAME":"Sonoff Mini"')
    assert dev.state.module == 0
    # secrets never reach the log
    assert WIFI_PW not in caplog.text
    assert MQTT_PW not in caplog.text


async def test_single_command_and_server_header(session: aiohttp.ClientSession) -> None:
    dev = FakeTasmota()
    async with dev.running():
        client = TasmotaClient(session, dev.base_url + "/")
        assert await client.command("Power ON") == {"Power": "ON"}
        assert client.server_header == "Tasmota/14.2.0"
        status = await client.status(5)
    assert status["StatusNET"]["Mac"] == "D8:F1:5B:AA:BB:CC"
    assert dev.seen[0].raw_query == "cmnd=Power%20ON"


async def test_web_password_is_sent(session: aiohttp.ClientSession) -> None:
    dev = FakeTasmota(web_password="s3cret&pw")
    async with dev.running():
        client = TasmotaClient(session, dev.base_url, web_password="s3cret&pw")
        assert await client.command("Power ON") == {"Power": "ON"}
        assert "s3cret" not in repr(client)
    assert dev.seen[0].raw_query.endswith("&user=admin&password=s3cret%26pw")


@pytest.mark.parametrize("style", ["json", "401"])
async def test_auth_errors_are_typed(session: aiohttp.ClientSession, style: str) -> None:
    dev = FakeTasmota(web_password="right", auth_style=style)
    async with dev.running():
        with pytest.raises(TasmotaError) as exc:
            await TasmotaClient(session, dev.base_url).command("Power ON")
        assert exc.value.code is TasmotaErrorCode.AUTH_REQUIRED
        with pytest.raises(TasmotaError) as exc:
            await TasmotaClient(session, dev.base_url, web_password="wrong").command("Power ON")
        assert exc.value.code is TasmotaErrorCode.AUTH_DENIED


async def test_referer_denied_is_typed(socket_enabled: None) -> None:
    """A session that forces a Referer (e.g. copied from a browser) is denied."""
    dev = FakeTasmota()
    async with (
        dev.running(),
        aiohttp.ClientSession(headers={"Referer": "http://evil.example/"}) as sess,
    ):
        with pytest.raises(TasmotaError) as exc:
            await TasmotaClient(sess, dev.base_url).command("Power ON")
    assert exc.value.code is TasmotaErrorCode.REFERER_DENIED


async def test_unreachable_and_unknown_command(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TasmotaError) as exc:
        await TasmotaClient(session, f"http://127.0.0.1:{port}").command("Power")
    assert exc.value.code is TasmotaErrorCode.UNREACHABLE
    dev = FakeTasmota()
    async with dev.running():
        with pytest.raises(TasmotaError) as exc:
            await TasmotaClient(session, dev.base_url).command("Bogus 1")
    assert exc.value.code is TasmotaErrorCode.UNKNOWN_COMMAND


async def test_verify_settings_all_took(session: aiohttp.ClientSession) -> None:
    s = settings()
    dev = FakeTasmota()
    async with dev.running():
        client = TasmotaClient(session, dev.base_url)
        await client.backlog(build_backlog(s))
        diff = await client.verify_settings(
            ExpectedSettings(
                mqtt_host="192.168.1.10",
                mqtt_port=1884,
                mqtt_user="tas user",
                device_name=s.device_name,
                friendly_name=s.friendly_name,
                module=0,
            )
        )
    assert diff == {}


async def test_verify_settings_detects_backlog_that_did_not_take(
    session: aiohttp.ClientSession,
) -> None:
    dev = FakeTasmota(ignore=frozenset({"MqttHost", "MqttUser"}))
    async with dev.running():
        client = TasmotaClient(session, dev.base_url)
        await client.backlog(build_backlog(settings()))
        diff = await client.verify_settings(
            ExpectedSettings(
                mqtt_host="192.168.1.10",
                mqtt_port=1884,
                mqtt_user="tas user",
                topic="tasmota_AABBCC",
            )
        )
    assert diff == {
        "mqtt_host": SettingMismatch(expected="192.168.1.10", actual=""),
        "mqtt_user": SettingMismatch(expected="tas user", actual="DVES_USER"),
    }
