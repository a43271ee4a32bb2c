"""The lite → full upgrade driver against the virtual Tasmota through a real Mosquitto.

Nothing is mocked but the radio: the device downloads over real HTTP from a
127.0.0.1 file server and talks to the driver only through the broker.
Synthetic images are incompressible, so a `.bin.gz` here is as big as its image:
that is what makes the 1 MB space check (and the -minimal hop) bite.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
import gzip
from pathlib import Path

import aiohttp
import pytest

from custom_components.sonoff_ota.proto.tasmota_handoff_types import ConfiguredBy, HandoffResult
from custom_components.sonoff_ota.proto.tasmota_mqtt_feed import DiscoveryFeed, Publish
from custom_components.sonoff_ota.proto.tasmota_upgrade import (
    TasmotaBuild,
    TasmotaUpgrade,
    UpgradeResult,
    UpgradeTarget,
    UrlCheck,
    check_ota_url,
    minimal_url,
)
from custom_components.sonoff_ota.proto.tasmota_upgrade_stages import (
    UpgradeError,
    UpgradeErrorCode,
    UpgradeStage,
    UpgradeTracker,
)
from tests.proto.firmware_server import firmware_server
from virtual_sonoff.images import make_image, tasmota_lite
from virtual_sonoff.mosquitto import MosquittoBroker
from virtual_sonoff.mqtt_client import MqttClient, MqttMessage
from virtual_sonoff.tasmota import TasmotaConfig, VirtualTasmota, _Outcome

pytestmark = pytest.mark.mosquitto

MAC = "5CCF7F3D5E26"
FULL = make_image(600_000, label="tasmota-full")
MINIMAL = make_image(300_000, label="tasmota-minimal")


@pytest.fixture
async def broker(socket_enabled: None, tmp_path: Path) -> AsyncIterator[MosquittoBroker]:
    async with MosquittoBroker(tmp_path) as running:
        yield running


def station(broker: MosquittoBroker) -> TasmotaConfig:
    return TasmotaConfig(
        ssid1="home", password1="wifi-pw", mqtt_host=broker.host, mqtt_port=broker.port
    )


@asynccontextmanager
async def feed_for(
    broker: MosquittoBroker, target: UpgradeTarget
) -> AsyncIterator[tuple[DiscoveryFeed, Publish]]:
    """A feed subscribed to the target's topics, and a publisher (HA's side stand-in)."""
    feed = DiscoveryFeed()

    async def forward(message: MqttMessage) -> None:
        feed.push(message.topic, message.payload, retained=message.retain)

    async with (
        MqttClient(broker.host, broker.port, client_id="upgrade-feed") as client,
        MqttClient(broker.host, broker.port, client_id="upgrade-pub") as publisher,
    ):
        for topic in target.subscriptions:
            await client.subscribe(topic, forward)

        async def publish(topic: str, payload: str) -> None:
            await publisher.publish(topic, payload)

        yield feed, publish


async def upgrade(
    broker: MosquittoBroker,
    device: VirtualTasmota,
    url: str,
    *,
    budget: float = 10.0,
    url_exists: UrlCheck | None = None,
    expected_build: str | None = "tasmota",
) -> tuple[TasmotaUpgrade, UpgradeResult | UpgradeError]:
    await device.wait_discovery()
    target = UpgradeTarget(mac=device.mac, topic=device.topic, sw=device.sw)
    async with feed_for(broker, target) as (feed, publish):
        run = TasmotaUpgrade(
            publish,
            feed,
            target,
            url,
            expected_build=expected_build,
            before=TasmotaBuild.parse(device.version),
            timeout=budget,
            command_timeout=5.0,
            status_retry=0.2,
            url_exists=url_exists,
        )
        stages: list[UpgradeStage] = []
        run.tracker.add_listener(lambda t: stages.append(t.stage))
        try:
            result: UpgradeResult | UpgradeError = await run.run()
        except UpgradeError as err:
            result = err
    run.tracker.details["seen"] = ",".join(dict.fromkeys(stages))
    return run, result


def seen(run: TasmotaUpgrade) -> list[str]:
    return run.tracker.details["seen"].split(",")


async def test_image_that_fits_upgrades_in_one_step(broker: MosquittoBroker) -> None:
    full_gz = make_image(400_000, label="tasmota-full")  # fits beside a 480 kB lite
    async with (
        firmware_server({"tasmota.bin.gz": gzip.compress(full_gz)}) as files,
        VirtualTasmota(
            tasmota_lite(), mac=MAC, config=station(broker), full_version="14.5.0"
        ) as device,
    ):
        url = files.url("tasmota.bin.gz")
        run, result = await upgrade(broker, device, url)
        assert not isinstance(result, UpgradeError), result
        assert result.after.label == "14.5.0 (tasmota)"
        assert result.sw == "14.5.0"
        assert result.minimal_hop is False
        assert device.ota_images == [full_gz]
        assert device.ota_attempts == [url]
        assert device.version == "14.5.0(tasmota)"
        start = device.commands.index(f"OtaUrl {url}")
        assert device.commands[start + 1] == "Upgrade 1"
        assert set(device.commands[start + 2 :]) == {"Status 2"}
        assert seen(run) == ["requested", "downloading", "rebooting", "confirming", "done"]
        assert run.tracker.percentage == 100


async def test_too_big_image_goes_through_tasmota_minimal(broker: MosquittoBroker) -> None:
    files_ = {"tasmota.bin.gz": FULL, "tasmota-minimal.bin.gz": MINIMAL}
    async with (
        firmware_server(files_) as files,
        VirtualTasmota(tasmota_lite(), mac=MAC, config=station(broker)) as device,
    ):
        url = files.url("tasmota.bin.gz")
        run, result = await upgrade(broker, device, url)
        assert not isinstance(result, UpgradeError), result
        assert result.minimal_hop is True
        assert result.after.label == "14.4.1 (tasmota)"
        # lite: full did not fit -> minimal; minimal (at boot, by itself): the full build
        assert device.ota_attempts == [url, files.url("tasmota-minimal.bin.gz"), url]
        assert device.ota_images == [MINIMAL, FULL]
        assert "minimal" in seen(run)
        assert run.tracker.details["running"] == "14.4.1 (tasmota)"


async def test_too_big_without_minimal_says_file_too_big(broker: MosquittoBroker) -> None:
    async with (
        firmware_server({"tasmota.bin": FULL}) as files,
        VirtualTasmota(tasmota_lite(), mac=MAC, config=station(broker)) as device,
        aiohttp.ClientSession() as session,
    ):

        async def exists(url: str) -> bool | None:
            async with session.head(url) as response:
                return response.status == 200

        run, result = await upgrade(broker, device, files.url("tasmota.bin"), url_exists=exists)
        assert isinstance(result, UpgradeError)
        assert result.code is UpgradeErrorCode.FILE_TOO_BIG
        assert result.placeholders["minimal_url"] == files.url("tasmota-minimal.bin")
        assert result.placeholders["reason"] == "File Not Found (404) for tasmota-minimal.bin"
        # Tasmota's own retries: minimal, then minimal.gz, and it gives up with the last error
        assert device.ota_attempts[0] == files.url("tasmota.bin")
        assert files.url("tasmota-minimal.bin.gz") in device.ota_attempts
        assert device.upgrade_error == "File Not Found (404)"
        assert device.version == "14.4.1(lite)" and device.ota_images == []
        assert run.tracker.stage is UpgradeStage.FAILED
        assert run.tracker.error is result


async def test_unreachable_server_then_retry_succeeds(broker: MosquittoBroker) -> None:
    full_gz = make_image(400_000, label="tasmota-full")
    async with (
        firmware_server({"tasmota.bin.gz": full_gz}) as files,
        VirtualTasmota(tasmota_lite(), mac=MAC, config=station(broker)) as device,
    ):
        url = files.url("tasmota.bin.gz")
        await files.down()
        run, result = await upgrade(broker, device, url)
        assert isinstance(result, UpgradeError)
        assert run.tracker.error is result
        assert result.code is UpgradeErrorCode.UNREACHABLE
        assert result.placeholders["reason"] == "HTTP error: connection failed"
        assert device.version == "14.4.1(lite)"
        # the retry: the server is back
        await files.start()
        _, result = await upgrade(broker, device, url)
        assert not isinstance(result, UpgradeError), result
        assert device.version == "14.4.1(tasmota)"


async def test_not_an_image_is_rejected(broker: MosquittoBroker) -> None:
    async with (
        firmware_server({"tasmota.bin.gz": gzip.compress(b"<html>captive portal</html>")}) as f,
        VirtualTasmota(tasmota_lite(), mac=MAC, config=station(broker)) as device,
    ):
        _, result = await upgrade(broker, device, f.url("tasmota.bin.gz"))
        assert isinstance(result, UpgradeError)
        assert result.code is UpgradeErrorCode.IMAGE_REJECTED
        assert result.placeholders["reason"] == "Verify Bin Header Failed"


async def test_missing_file_is_a_download_failure(broker: MosquittoBroker) -> None:
    async with (
        firmware_server({}) as files,
        VirtualTasmota(tasmota_lite(), mac=MAC, config=station(broker)) as device,
    ):
        _, result = await upgrade(broker, device, files.url("tasmota.bin.gz"))
        assert isinstance(result, UpgradeError)
        assert result.code is UpgradeErrorCode.DOWNLOAD_FAILED
        assert result.placeholders["reason"] == "File Not Found (404)"


class _NoOta(VirtualTasmota):
    """A build compiled without the Upgrade command: the device refuses."""

    def _handlers(self) -> dict[str, Callable[[str, str, str], _Outcome]]:
        handlers = super()._handlers()
        del handlers["UPGRADE"]
        return handlers


async def test_ota_refused(broker: MosquittoBroker) -> None:
    async with (
        firmware_server({"tasmota.bin.gz": FULL}) as files,
        _NoOta(tasmota_lite(), mac=MAC, config=station(broker)) as device,
    ):
        _, result = await upgrade(broker, device, files.url("tasmota.bin.gz"))
        assert isinstance(result, UpgradeError)
        assert result.code is UpgradeErrorCode.OTA_REFUSED
        assert result.placeholders["reason"] == "Command Unknown"
        assert files.requests["tasmota.bin.gz"] == 0


async def test_device_gone_mid_download_times_out(broker: MosquittoBroker) -> None:
    async with (
        firmware_server({"tasmota.bin.gz": make_image(400_000)}) as files,
        VirtualTasmota(tasmota_lite(), mac=MAC, config=station(broker)) as device,
    ):
        files.gate = asyncio.Event()  # the download hangs...

        async def cut_power_once_downloading() -> None:
            await device.wait_until(lambda: bool(device.ota_attempts), within=5)
            await device.stop()  # ...and the power goes

        task = asyncio.ensure_future(cut_power_once_downloading())
        run, result = await upgrade(broker, device, files.url("tasmota.bin.gz"), budget=1.5)
        await task
        files.gate.set()
        assert isinstance(result, UpgradeError)
        assert result.code is UpgradeErrorCode.TIMEOUT
        assert result.placeholders["minutes"] == "1"
        tracker_stages = [h.stage for h in run.tracker.history]
        assert tracker_stages[-1] is UpgradeStage.FAILED
        assert UpgradeStage.DOWNLOADING in tracker_stages


def test_urls_tasmota_cannot_take_are_refused_before_sending() -> None:
    for url in ("https://ota.tasmota.com/x.bin.gz", "http://a/b c.bin", "http://a/b;Reset 1"):
        with pytest.raises(UpgradeError) as caught:
            check_ota_url(url)
        assert caught.value.code is UpgradeErrorCode.BAD_URL
    check_ota_url("http://ota.tasmota.com/tasmota/release/tasmota.bin.gz")
    assert minimal_url("http://h/x/tasmota-DE.bin.gz") == "http://h/x/tasmota-minimal.bin.gz"
    assert minimal_url("http://h:80/tasmota.bin") == "http://h:80/tasmota-minimal.bin"
    assert TasmotaBuild.parse("14.4.1(lite)") == TasmotaBuild("14.4.1", "lite")
    assert TasmotaBuild.parse("nonsense") is None
    handed_over = HandoffResult(
        mac=MAC,
        ip="127.0.0.1",
        topic="tasmota_3D5E26",
        sw="14.4.1",
        device_name="Kitchen",
        model="Sonoff Basic",
        model_known=True,
        relays=1,
        hostname="tasmota_3D5E26-7718",
        full_topic="%prefix%/%topic%/",
        configured_by=ConfiguredBy.HA,
    )
    target = UpgradeTarget.from_handoff(handed_over)
    assert target.subscriptions[:2] == ("stat/tasmota_3D5E26/RESULT", "stat/tasmota_3D5E26/UPGRADE")
    tracker = UpgradeTracker()
    tracker.advance(UpgradeStage.REBOOTING)
    tracker.advance(UpgradeStage.DOWNLOADING)  # never back
    assert tracker.stage is UpgradeStage.REBOOTING
