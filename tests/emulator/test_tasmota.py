"""The virtual Tasmota over real loopback HTTP and a real Mosquitto broker.

Mocked: only the Wi-Fi radio. Joining the open AP `tasmota_XXXXXX-NNNN` and the
LAN is represented by two 127.0.0.1 listeners (AP bind for 192.168.4.1:80,
station bind for the device's LAN IP:80); Wi-Fi credentials are taken as valid.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
import gzip
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from hatasmota.discovery import (  # type: ignore[import-untyped]
    TASMOTA_DISCOVERY_SCHEMA,
    TASMOTA_SENSOR_DISCOVERY_SCHEMA,
    get_device_config,
    get_entities_for_platform,
)
from hatasmota.utils import (  # type: ignore[import-untyped]
    discovery_topic_get_mac,
    get_topic_command,
    get_topic_tele_will,
)
import pytest

from tests.proto.firmware_server import firmware_server
from virtual_sonoff.images import make_image, tasmota_lite
from virtual_sonoff.mosquitto import MosquittoBroker
from virtual_sonoff.mqtt_client import MqttClient, MqttMessage
from virtual_sonoff.profile import Fault, Faults, timing_profile
from virtual_sonoff.tasmota import TasmotaConfig, TasmotaMode, VirtualTasmota

pytestmark = pytest.mark.mosquitto

MAC = "5CCF7F3D5E26"  # spec §3.1 example SSID tasmota_3D5E26-7718
TOPIC = "tasmota_3D5E26"


@pytest.fixture
async def broker(socket_enabled: None, tmp_path: Path) -> AsyncIterator[MosquittoBroker]:
    async with MosquittoBroker(tmp_path) as running:
        yield running


async def cm(
    port: int, command: str, *, headers: dict[str, str] | None = None, **extra: str
) -> tuple[int, dict[str, Any], str]:
    """GET /cm; return status, JSON body, Server header."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{port}/cm",
            params={"cmnd": command, **extra},
            headers=headers or {},
        ) as response,
    ):
        return response.status, json.loads(await response.text()), response.headers["Server"]


def station_config(broker: MosquittoBroker, **overrides: Any) -> TasmotaConfig:
    return TasmotaConfig(
        ssid1="home", password1="wifi-pw", mqtt_host=broker.host, mqtt_port=broker.port, **overrides
    )


async def retained(broker: MosquittoBroker, topic_filter: str, count: int) -> list[MqttMessage]:
    """What a fresh subscriber gets as retained messages."""
    async with MqttClient(broker.host, broker.port, client_id="retained-reader") as reader:
        await reader.subscribe(topic_filter)
        return [await reader.next_message() for _ in range(count)]


def test_names_follow_the_mac() -> None:
    device = VirtualTasmota(b"", mac=MAC)
    assert device.ap_ssid == "tasmota_3D5E26-7718"
    assert device.topic == TOPIC
    assert device.mqtt_client_id == "DVES_3D5E26"
    assert VirtualTasmota(b"", mac="AABBCC62E43F").ap_ssid == "tasmota_62E43F-1087"
    with pytest.raises(ValueError, match="12 uppercase hex"):
        VirtualTasmota(b"", mac="5c:cf:7f:3d:5e:26")


async def test_wi_form_moves_device_to_station(socket_enabled: None) -> None:
    image = tasmota_lite(4096)
    async with VirtualTasmota(image, mac=MAC) as device:
        assert device.mode is TasmotaMode.AP
        assert device.image == image
        ap_port = device.ap_port
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{ap_port}/wi", params={"s1": "home", "p1": "wifi-pw", "save": ""}
            ) as response,
        ):
            assert response.status == 200
            assert response.headers["Server"] == "Tasmota/14.4.1 (ESP8266EX)"
        await device.wait_mode(TasmotaMode.STATION)
        assert device.config.ssid1 == "home"
        assert device.config.password1 == "wifi-pw"
        assert "wifi-pw" not in repr(device)
        assert "wifi-pw" not in " ".join(device.commands)
        assert device.ap_port == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            await cm(ap_port, "Status")
        status, body, _ = await cm(device.station_port, "Status 5")
        assert status == 200
        assert body["StatusNET"]["Hostname"] == "tasmota_3D5E26-7718"
        assert body["StatusNET"]["Mac"] == "5C:CF:7F:3D:5E:26"


async def test_backlog_in_ap_mode_brings_device_to_mqtt_with_valid_discovery(
    broker: MosquittoBroker,
) -> None:
    async with VirtualTasmota(tasmota_lite(4096), mac=MAC) as device:
        status, body, server = await cm(
            device.ap_port,
            f"Backlog SSID1 home; Password1 wifi-pw; MqttHost {broker.host}; "
            f"MqttPort {broker.port}; DeviceName Kitchen; FriendlyName1 Kitchen light",
        )
        assert status == 200
        assert server.startswith("Tasmota/")
        assert body == {
            "SSId1": "home",
            "Password1": "****",
            "MqttHost": broker.host,
            "MqttPort": broker.port,
            "DeviceName": "Kitchen",
            "FriendlyName1": "Kitchen light",
        }
        await device.wait_mqtt_online()
        await device.wait_discovery()
        assert device.mode is TasmotaMode.STATION

    lwt, config_msg, sensors_msg = (
        await retained(broker, f"tele/{TOPIC}/LWT", 1)
        + await retained(broker, "tasmota/discovery/+/config", 1)
        + await retained(broker, "tasmota/discovery/+/sensors", 1)
    )
    # The device was powered off without DISCONNECT: the broker published its will.
    assert (lwt.text, lwt.retain) == ("Offline", True)
    assert config_msg.retain and sensors_msg.retain
    assert config_msg.topic == f"tasmota/discovery/{MAC}/config"
    payload = json.loads(config_msg.payload)
    validated = TASMOTA_DISCOVERY_SCHEMA(payload)
    assert discovery_topic_get_mac(config_msg.topic, "tasmota/discovery") == validated["mac"] == MAC
    assert get_device_config(validated) == {
        "ip": "127.0.0.1",
        "mac": MAC,
        "manufacturer": "Tasmota",
        "md": "Sonoff Basic",
        "name": "Kitchen",
        "sw": "14.4.1",
    }
    switches = [cfg for cfg, _ in get_entities_for_platform(validated, "switch") if cfg]
    assert len(switches) == 1
    assert get_topic_tele_will(validated) == f"tele/{TOPIC}/LWT"
    assert TASMOTA_SENSOR_DISCOVERY_SCHEMA(json.loads(sensors_msg.payload))["ver"] == 1


async def test_lwt_online_retained_while_connected(broker: MosquittoBroker) -> None:
    async with VirtualTasmota(b"", mac=MAC, config=station_config(broker)) as device:
        await device.wait_mqtt_online()
        (lwt,) = await retained(broker, "tele/+/LWT", 1)
        assert (lwt.topic, lwt.text, lwt.retain) == (f"tele/{TOPIC}/LWT", "Online", True)


async def test_mqtt_power_command_flips_relay(broker: MosquittoBroker) -> None:
    async with (
        VirtualTasmota(b"", mac=MAC, config=station_config(broker)) as device,
        MqttClient(broker.host, broker.port, client_id="ha") as ha,
    ):
        await device.wait_discovery()
        (config_msg,) = await retained(broker, "tasmota/discovery/+/config", 1)
        command_topic = get_topic_command(TASMOTA_DISCOVERY_SCHEMA(json.loads(config_msg.payload)))
        assert command_topic == f"cmnd/{TOPIC}/"
        await ha.subscribe(f"stat/{TOPIC}/#")
        await ha.publish(command_topic + "POWER", "ON")
        result = await ha.wait_for_message(f"stat/{TOPIC}/RESULT")
        power = await ha.wait_for_message(f"stat/{TOPIC}/POWER")
        assert json.loads(result.payload) == {"POWER": "ON"}
        assert power.text == "ON"
        assert device.relays == [True]
        await ha.publish(command_topic + "Power", "TOGGLE")
        power = await ha.wait_for_message(f"stat/{TOPIC}/POWER")
        assert power.text == "OFF"
        assert device.relays == [False]
        assert device.commands[-2:] == ["POWER ON", "Power TOGGLE"]


async def test_multi_relay_power_over_http_is_mirrored_to_mqtt(broker: MosquittoBroker) -> None:
    async with (
        VirtualTasmota(b"", mac=MAC, relays=2, config=station_config(broker)) as device,
        MqttClient(broker.host, broker.port, client_id="ha") as ha,
    ):
        await device.wait_discovery()
        (config_msg,) = await retained(broker, "tasmota/discovery/+/config", 1)
        assert json.loads(config_msg.payload)["rl"][:3] == [1, 1, 0]
        await ha.subscribe(f"stat/{TOPIC}/POWER2")
        status, body, _ = await cm(device.station_port, "Power2 On")
        assert (status, body) == (200, {"POWER2": "ON"})
        assert (await ha.next_message()).text == "ON"
        assert device.relays == [False, True]
        _, body, _ = await cm(device.station_port, "Power3 On")
        assert body == {"Command": "Unknown"}


async def test_referer_check_in_station_mode(socket_enabled: None) -> None:
    """Tasmota >= 15.5.0 defaults to SetOption128 0: /cm needs the device's own Referer."""
    config = TasmotaConfig(ssid1="home")
    async with VirtualTasmota(b"", mac=MAC, version="15.5.0(lite)", config=config) as device:
        port = device.station_port
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await cm(port, "Power ON", headers={"Referer": "http://evil.example/"})
        assert device.relays == [False]
        assert (
            "HTP: Referer 'http://evil.example/' denied. Use 'SO128 1' for HTTP API commands. "
            "'Webpassword' is recommended."
        ) in device.log
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await cm(port, "Power ON")  # no Referer at all: denied as well (source reading)
        own = {"Referer": "http://127.0.0.1/"}
        status, body, _ = await cm(port, "SetOption128 1", headers=own)
        assert (status, body) == (200, {"SetOption128": "ON"})
        status, body, _ = await cm(port, "Power ON", headers={"Referer": "http://evil.example/"})
        assert (status, body) == (200, {"POWER": "ON"})


async def test_referer_check_off_by_default_before_15_5(socket_enabled: None) -> None:
    async with VirtualTasmota(b"", mac=MAC, config=TasmotaConfig(ssid1="home")) as device:
        _, body, _ = await cm(
            device.station_port, "Power ON", headers={"Referer": "http://evil.example/"}
        )
        assert body == {"POWER": "ON"}


async def test_referer_not_checked_in_ap_mode(socket_enabled: None) -> None:
    async with VirtualTasmota(b"", mac=MAC, version="15.5.0(lite)") as device:
        _, body, _ = await cm(device.ap_port, "Status 2", headers={"Referer": "http://phone/"})
        assert body["StatusFWR"]["Version"] == "15.5.0(lite)"


async def test_web_password_required(socket_enabled: None) -> None:
    async with VirtualTasmota(
        b"", mac=MAC, web_password="web-pw", config=TasmotaConfig(ssid1="home")
    ) as device:
        status, body, _ = await cm(device.station_port, "Power ON")
        assert (status, body) == (401, {"WARNING": "Need user=<username>&password=<password>"})
        status, _, _ = await cm(device.station_port, "Power ON", user="admin", password="wrong")
        assert status == 401
        assert device.relays == [False]
        status, body, _ = await cm(device.station_port, "Power ON", user="admin", password="web-pw")
        assert (status, body) == (200, {"POWER": "ON"})
        assert "web-pw" not in repr(device)


async def test_backlog_reports_unknown_commands_and_stops_at_30(socket_enabled: None) -> None:
    async with VirtualTasmota(b"", mac=MAC) as device:
        _, body, _ = await cm(device.ap_port, "Backlog Frobnicate 1; DeviceName Hall")
        assert body == {"Command": "Unknown", "DeviceName": "Hall"}
        names = "; ".join(f"FriendlyName1 n{i}" for i in range(35))
        _, body, _ = await cm(device.ap_port, f"Backlog {names}")
        assert body == {"FriendlyName1": "n29"}
        _, body, _ = await cm(device.ap_port, "Status 0")
        assert {"Status", "StatusFWR", "StatusNET", "StatusMQT"} <= body.keys()
        assert device.mode is TasmotaMode.AP  # nothing asked for a restart


async def test_broker_unreachable_fault_never_goes_online(broker: MosquittoBroker) -> None:
    async with (
        MqttClient(broker.host, broker.port, client_id="watcher") as watcher,
        VirtualTasmota(
            b"",
            mac=MAC,
            config=station_config(broker),
            faults=Faults({Fault.BROKER_UNREACHABLE}),
            mqtt_retry_delay=0.05,
        ) as device,
    ):
        await watcher.subscribe("tele/+/LWT")
        await device.wait_until(lambda: device.mqtt_connect_failures >= 3)
        assert not device.mqtt_connected
        with pytest.raises(TimeoutError):
            await watcher.next_message(within=0.2)


async def test_device_reconnects_after_broker_restart(broker: MosquittoBroker) -> None:
    async with VirtualTasmota(
        b"", mac=MAC, config=station_config(broker), mqtt_retry_delay=0.05
    ) as device:
        await device.wait_discovery()
        await broker.stop()
        await device.wait_until(lambda: not device.mqtt_connected)
        await broker.start()
        await device.wait_mqtt_online()
        await device.wait_discovery(count=2)


async def test_ap_window_timeout_closes_the_ap(socket_enabled: None) -> None:
    timing = timing_profile("fast", tasmota_ap_window=0.2)
    async with VirtualTasmota(b"", mac=MAC, timing=timing) as device:
        ap_port = device.ap_port
        await device.wait_mode(TasmotaMode.OFF)
        with pytest.raises(aiohttp.ClientConnectionError):
            await cm(ap_port, "Status")


async def test_upgrade_lite_to_full_changes_discovery_sw(broker: MosquittoBroker) -> None:
    full = make_image(64 * 1024, label="tasmota-full")
    served: list[str] = []

    async def firmware(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.Response(body=gzip.compress(full), content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/tasmota.bin.gz", firmware)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        http_port = runner.addresses[0][1]
        async with (
            VirtualTasmota(
                tasmota_lite(4096),
                mac=MAC,
                full_version="14.5.0(tasmota)",
                config=station_config(broker),
            ) as device,
            MqttClient(broker.host, broker.port, client_id="ha") as ha,
        ):
            await device.wait_discovery()
            await ha.subscribe(f"tasmota/discovery/{MAC}/config")
            first = json.loads((await ha.next_message()).payload)
            assert first["sw"] == "14.4.1"
            url = f"http://127.0.0.1:{http_port}/tasmota.bin.gz"
            _, body, _ = await cm(device.station_port, f"Backlog OtaUrl {url}; Upgrade 1")
            assert body == {"OtaUrl": url, "Upgrade": f"Version 14.4.1 from {url}"}
            second = json.loads((await ha.wait_for_message("tasmota/discovery/+/config")).payload)
            assert second["sw"] == "14.5.0"
            assert served == ["/tasmota.bin.gz"]
            assert device.ota_images == [full]
            assert device.image == full
            _, body, server = await cm(device.station_port, "Status 2")
            assert body["StatusFWR"]["Version"] == "14.5.0(tasmota)"
            assert server == "Tasmota/14.5.0 (ESP8266EX)"
    finally:
        await runner.cleanup()


async def test_upgrade_rejects_a_non_image(socket_enabled: None) -> None:
    async def junk(request: web.Request) -> web.Response:
        return web.Response(body=b"<html>not firmware</html>")

    app = web.Application()
    app.router.add_get("/tasmota.bin.gz", junk)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/tasmota.bin.gz"
        async with VirtualTasmota(b"", mac=MAC, config=TasmotaConfig(ssid1="home")) as device:
            await cm(device.station_port, f"Backlog OtaUrl {url}; Upgrade 1")
            await device.wait_until(lambda: device.upgrade_error is not None)
            # ESP8266httpUpdate: neither 0xE9 nor a gzip header
            assert device.upgrade_error == "Verify Bin Header Failed"
            assert device.version == "14.4.1(lite)"
    finally:
        await runner.cleanup()


async def test_upgrade_retries_like_tasmota_then_reports_the_last_error(
    socket_enabled: None,
) -> None:
    """10 attempts budget: `.gz` appended from the 6th; a `.gz` URL stops after its 6th."""
    async with (
        firmware_server({}) as files,
        VirtualTasmota(b"", mac=MAC, config=TasmotaConfig(ssid1="home")) as device,
    ):
        assert await device.execute("Upgrade") == {"Upgrade": "1 or >14.4.1 to upgrade"}
        plain = files.url("tasmota.bin")
        assert await device.execute(f"OtaUrl {plain}") == {"OtaUrl": plain}
        assert await device.execute("Upgrade 1") == {"Upgrade": f"Version 14.4.1 from {plain}"}
        await device.wait_until(lambda: device.upgrade_error is not None)
        assert device.ota_attempts == [plain] * 5 + [plain + ".gz"] * 4
        assert device.upgrade_error == "File Not Found (404)"

        device.ota_attempts.clear()
        device.upgrade_error = None
        gz = files.url("tasmota.bin.gz")
        await device.execute(f"Backlog OtaUrl {gz}; Upgrade 1")
        await device.wait_until(lambda: device.upgrade_error is not None)
        assert device.ota_attempts == [gz] * 6


async def test_too_big_image_hops_through_minimal_which_has_no_discovery(
    socket_enabled: None,
) -> None:
    full = make_image(600_000, label="full")
    minimal = make_image(300_000, label="minimal")
    files_ = {"tasmota-sensors.bin.gz": full, "tasmota-minimal.bin.gz": minimal}
    async with firmware_server(files_) as files:
        lite = tasmota_lite(480_000)
        async with VirtualTasmota(lite, mac=MAC, config=TasmotaConfig(ssid1="home")) as device:
            assert device.free_sketch_space < len(full) < device.flash_size
            url = files.url("tasmota-sensors.bin.gz")
            await device.execute(f"Backlog OtaUrl {url}; Upgrade 1")
            await device.wait_until(
                lambda: device.version == "14.4.1(sensors)" and device.boot_count == 3, within=10
            )
            # the -XX suffix is dropped for the minimal name (support_tasmota.ino)
            assert device.ota_attempts == [url, files.url("tasmota-minimal.bin.gz"), url]
            assert device.ota_images == [minimal, full]
            assert device.boot_count == 3  # lite -> minimal -> sensors
            assert device.image == full


async def test_restart_keeps_the_port_and_reset_1_returns_to_ap(socket_enabled: None) -> None:
    async with VirtualTasmota(b"", mac=MAC, config=TasmotaConfig(ssid1="home")) as device:
        port = device.station_port
        assert await device.execute("Restart 1") == {"Restart": "Restarting"}
        await device.wait_until(lambda: device.boot_count == 2 and device.station_port != 0)
        assert device.station_port == port
        _, body, _ = await cm(port, "Reset 1")
        assert body == {"Reset": "Reset and Restarting"}
        await device.wait_mode(TasmotaMode.AP)
        assert device.config.ssid1 == ""
        assert device.ap_ssid == "tasmota_3D5E26-7718"
