"""The virtual Sonoff in DIY mode (shared/spec/diy-ota-and-tasmota.md §1, §2).

Everything runs over real TCP on 127.0.0.1: the device's REST server, a raw
HTTP client and an aiohttp firmware server. Only mDNS is not real (no multicast
here): the tests read the record the device would publish.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import pytest

from tests.emulator.diy_peers import FirmwareServer, http_exchange, zeroconf, zeroconf_request
from virtual_sonoff.diy import (
    ITEAD_HOST,
    MAX_IMAGE_SIZE,
    SERVICE_TYPE,
    DiyConfig,
    DiyDevice,
    DiyStage,
    MdnsAnnouncement,
    txt_data_chunks,
)
from virtual_sonoff.images import FLASH_MODE_DIO, make_image, tasmota_lite
from virtual_sonoff.profile import Fault, Faults, timing_profile

DEVICEID = "1000e4c17c"
SMALL = 10_000  # three 4 KiB ranges: fast, but exercises the chunking


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unlocked(**kwargs: Any) -> DiyConfig:
    return DiyConfig(ota_unlocked=True, **kwargs)


async def flash(device: DiyDevice, url: str, digest: str, *, wait: float = 3.0) -> dict[str, Any]:
    return await zeroconf(
        device.port,
        "ota_flash",
        {"deviceid": DEVICEID, "data": {"downloadUrl": url, "sha256sum": digest}},
        wait=wait,
    )


# ---------------------------------------------------------------- mDNS record


async def test_announcement_record_and_seq(socket_enabled: None) -> None:
    seen: list[tuple[MdnsAnnouncement, bool]] = []
    async with DiyDevice(DiyConfig(fw_version="3.3.0")) as device:
        device.add_announcement_listener(lambda record, up: seen.append((record, up)))
        record = device.announcement()
        assert device.advertising
        assert record.service_type == SERVICE_TYPE == "_ewelink._tcp.local."
        assert record.name == f"eWeLink_{DEVICEID}._ewelink._tcp.local."
        assert record.port == device.port != 0
        props = record.properties
        assert {k: props[k] for k in ("txtvers", "id", "type", "apivers", "seq")} == {
            "txtvers": "1",
            "id": DEVICEID,
            "type": "diy_plug",
            "apivers": "1",
            "seq": "1",
        }
        assert "encrypt" not in props
        info = json.loads("".join(props.get(f"data{i}", "") for i in range(1, 5)))
        assert info["switch"] == "off"

        reply = await zeroconf(
            device.port, "switch", {"deviceid": DEVICEID, "data": {"switch": "on"}}
        )
        assert reply == {"seq": 2, "error": 0}
        assert device.switch == "on"
        assert device.announcement().properties["seq"] == "2"
        assert json.loads(device.announcement().properties["data1"])["switch"] == "on"
        assert seen and seen[-1][0].properties["seq"] == "2" and seen[-1][1]
    assert not device.advertising
    assert seen[-1][1] is False
    assert device.stage is DiyStage.OFFLINE


def test_txt_data_split_into_249_byte_chunks() -> None:
    text = json.dumps({"pad": "x" * 600})
    chunks = txt_data_chunks(text)
    assert list(chunks) == ["data1", "data2", "data3"]
    assert all(len(v.encode()) <= 249 for v in chunks.values())
    assert len(chunks["data1"]) == 249
    assert "".join(chunks.values()) == text
    with pytest.raises(ValueError):
        txt_data_chunks("y" * (249 * 4 + 1))


async def test_encrypted_device_detected_and_refuses_plain_calls(socket_enabled: None) -> None:
    async with DiyDevice(
        DiyConfig(encrypted=True, device_type="plug", ota_unlocked=True)
    ) as device:
        props = device.announcement().properties
        assert props["encrypt"] == "true"
        assert len(base64.b64decode(props["iv"])) == 16
        with pytest.raises(ValueError):
            json.loads(props["data1"])  # ciphertext, not JSON
        for path, data in (
            ("info", {}),
            ("ota_unlock", {}),
            ("ota_flash", {"downloadUrl": "http://127.0.0.1:1/x.bin", "sha256sum": "0" * 64}),
        ):
            reply = await zeroconf(device.port, path, {"deviceid": DEVICEID, "data": data})
            assert reply["error"] == 401, path
        assert device.downloads == []


# ---------------------------------------------------------------- info and envelope


async def test_info_33_returns_data_as_json_string(socket_enabled: None) -> None:
    async with DiyDevice(DiyConfig(fw_version="3.3.0")) as device:
        reply = await zeroconf(device.port, "info", {"deviceid": DEVICEID, "data": {}})
    assert reply["error"] == 0 and reply["seq"] == 1
    assert isinstance(reply["data"], str)
    assert json.loads(reply["data"]) == {
        "switch": "off",
        "startup": "off",
        "pulse": "off",
        "pulseWidth": 500,
        "ssid": "HomeNet",
        "otaUnlock": False,
    }


async def test_info_36_returns_object_with_v2_fields(socket_enabled: None) -> None:
    async with DiyDevice(DiyConfig(fw_version="3.6.0", ota_unlocked=True)) as device:
        reply = await zeroconf(device.port, "info", {"deviceid": DEVICEID, "data": {}})
        request = device.requests[-1]
    assert reply["data"] == {
        "switch": "off",
        "startup": "off",
        "pulse": "off",
        "pulseWidth": 500,
        "ssid": "HomeNet",
        "otaUnlock": True,
        "fwVersion": "3.6.0",
        "deviceid": DEVICEID,
        "bssid": "b4:fb:e4:77:7f:aa",
        "signalStrength": -47,
    }
    assert request.path == "/zeroconf/info" and request.method == "POST"
    assert request.deviceid == DEVICEID and request.deviceid_present
    assert request.headers["content-type"] == "application/json"


async def test_envelope_errors(socket_enabled: None) -> None:
    async with DiyDevice() as device:
        port = device.port
        assert (await zeroconf(port, "info", b"{not json"))["error"] == 400
        assert (await zeroconf(port, "info", {"deviceid": "1000aaaaaa", "data": {}}))[
            "error"
        ] == 404
        assert (await zeroconf(port, "switch", {"deviceid": DEVICEID, "data": {"switch": 1}}))[
            "error"
        ] == 422
        assert (await zeroconf(port, "info", {"deviceid": DEVICEID, "data": "x"}))["error"] == 422
        pulse = {"deviceid": DEVICEID, "data": {"pulse": "on", "pulseWidth": 750}}
        assert (await zeroconf(port, "pulse", pulse))["error"] == 422
        pulse["data"] = {"pulse": "on", "pulseWidth": 1500}
        assert (await zeroconf(port, "pulse", pulse))["error"] == 0
        signal = await zeroconf(port, "signal_strength", {"deviceid": DEVICEID, "data": {}})
        assert signal["data"] == {"signalStrength": -47}
        wifi = {"deviceid": DEVICEID, "data": {"ssid": "Other", "password": "secret-pw"}}
        assert (await zeroconf(port, "wifi", wifi))["error"] == 0
        assert device.ssid == "Other"
        assert "secret-pw" not in repr(device.requests) + repr(device)
        raw = await http_exchange(port, zeroconf_request(port, "nope", b"{}"))
        assert raw.startswith(b"HTTP/1.1 404")
    assert device.pulse == "on" and device.pulse_width == 1500


async def test_37_hangs_on_empty_deviceid_but_not_on_real_or_omitted(
    socket_enabled: None,
) -> None:
    async with DiyDevice(DiyConfig(fw_version="3.7.6")) as device:
        with pytest.raises(TimeoutError):
            await zeroconf(device.port, "info", {"deviceid": "", "data": {}}, wait=0.3)
        assert device.requests[-1].deviceid == "" and device.requests[-1].deviceid_present
        real = await zeroconf(device.port, "info", {"deviceid": DEVICEID, "data": {}})
        assert real["error"] == 0 and real["data"]["fwVersion"] == "3.7.6"
        omitted = await zeroconf(device.port, "info", {"data": {}})
        assert omitted["error"] == 0
        assert not device.requests[-1].deviceid_present


async def test_36_accepts_empty_deviceid(socket_enabled: None) -> None:
    async with DiyDevice(DiyConfig(fw_version="3.6.0")) as device:
        reply = await zeroconf(device.port, "info", {"deviceid": "", "data": {}}, wait=1.0)
    assert reply["error"] == 0


async def test_second_concurrent_connection_is_reset(socket_enabled: None) -> None:
    async with DiyDevice() as device:
        _first_reader, first = await asyncio.open_connection("127.0.0.1", device.port)
        try:
            await asyncio.sleep(0.05)  # let the device take the first connection
            body = json.dumps({"deviceid": DEVICEID, "data": {}}).encode()
            with pytest.raises(ConnectionResetError):
                await http_exchange(device.port, zeroconf_request(device.port, "info", body))
            assert device.rejected_connections == 1
        finally:
            first.close()
        reply = await zeroconf(device.port, "info", {"deviceid": DEVICEID, "data": {}})
        assert reply["error"] == 0


async def test_1x_firmware_answers_info_but_refuses_ota(socket_enabled: None) -> None:
    async with DiyDevice(DiyConfig(fw_version="1.2.0", device_type="plug")) as device:
        info = await zeroconf(device.port, "info", {"deviceid": DEVICEID, "data": {}})
        assert info["error"] == 0 and info["data"]["fwVersion"] == "1.2.0"
        unlock = await zeroconf(device.port, "ota_unlock", {"deviceid": DEVICEID, "data": {}})
        assert unlock["error"] == 422
        reply = await flash(device, "http://127.0.0.1:1/fw.bin", "0" * 64)
        assert reply["error"] == 422
        assert device.downloads == [] and not device.ota_unlocked


# ---------------------------------------------------------------- ota_unlock


async def test_unlock_without_internet_503(socket_enabled: None) -> None:
    async with DiyDevice(DiyConfig(internet=False)) as device:
        reply = await zeroconf(device.port, "ota_unlock", {"deviceid": DEVICEID, "data": {}})
        assert reply["error"] == 503
        assert not device.ota_unlocked and device.stage is DiyStage.DIY_IDLE


async def test_unlock_succeeds_and_persists(socket_enabled: None) -> None:
    async with DiyDevice() as device:
        reply = await zeroconf(device.port, "ota_unlock", {"deviceid": DEVICEID, "data": {}})
        assert reply == {"seq": 2, "error": 0}
        info = await zeroconf(device.port, "info", {"deviceid": DEVICEID, "data": {}})
        assert info["data"]["otaUnlock"] is True
        again = await zeroconf(device.port, "ota_unlock", {"deviceid": DEVICEID, "data": {}})
        assert again["error"] == 0 and device.ota_unlocked


async def test_already_unlocked_stays_unlocked(socket_enabled: None) -> None:
    # Even a device that could not reach the cloud now: nothing to do.
    async with DiyDevice(DiyConfig(ota_unlocked=True, internet=False)) as device:
        reply = await zeroconf(device.port, "ota_unlock", {"deviceid": DEVICEID, "data": {}})
        info = await zeroconf(device.port, "info", {"deviceid": DEVICEID, "data": {}})
    assert reply["error"] == 0
    assert info["data"]["otaUnlock"] is True


async def test_unlock_rejected_by_vendor_500(socket_enabled: None) -> None:
    async with DiyDevice(DiyConfig(unlock_rejected=True)) as device:
        reply = await zeroconf(device.port, "ota_unlock", {"deviceid": DEVICEID, "data": {}})
    assert reply["error"] == 500
    assert not device.ota_unlocked


async def test_37_unlock_hangs_until_removed_from_ewelink(socket_enabled: None) -> None:
    cfg = DiyConfig(fw_version="3.7.6")
    async with DiyDevice(cfg) as device:
        client = asyncio.create_task(
            zeroconf(device.port, "ota_unlock", {"deviceid": DEVICEID, "data": {}}, wait=0.3)
        )
        await device.wait_for_stage(DiyStage.UNLOCKING, 1.0)
        with pytest.raises(TimeoutError):
            await client
        await device.wait_for_stage(DiyStage.DIY_IDLE, 1.0)
        assert not device.ota_unlocked
        cfg.removed_from_ewelink = True
        reply = await zeroconf(device.port, "ota_unlock", {"deviceid": DEVICEID, "data": {}})
        assert reply["error"] == 0 and device.ota_unlocked


# ---------------------------------------------------------------- ota_flash refusals


async def test_flash_before_unlock_403(socket_enabled: None) -> None:
    image = tasmota_lite(SMALL)
    async with FirmwareServer(image) as server, DiyDevice() as device:
        reply = await flash(device, server.url, sha(image))
    assert reply["error"] == 403
    assert server.requests == [] and device.flash.writes == []


@pytest.mark.parametrize(
    "data",
    [
        {"downloadUrl": "https://127.0.0.1:1/fw.bin", "sha256sum": "a" * 64},
        {"downloadUrl": "http://127.0.0.1:1/fw.bin", "sha256sum": "a" * 63},
        {"downloadUrl": "http://127.0.0.1:1/fw.bin"},
        {"sha256sum": "a" * 64},
    ],
)
async def test_flash_bad_params_422(socket_enabled: None, data: dict[str, Any]) -> None:
    async with DiyDevice(unlocked()) as device:
        reply = await zeroconf(device.port, "ota_flash", {"deviceid": DEVICEID, "data": data})
    assert reply["error"] == 422
    assert device.downloads == []


async def test_flash_oversize_413(socket_enabled: None) -> None:
    image = make_image(MAX_IMAGE_SIZE + 1)
    async with FirmwareServer(image) as server, DiyDevice(unlocked()) as device:
        reply = await flash(device, server.url, sha(image))
        assert device.stage is DiyStage.FAILED
    assert reply["error"] == 413
    assert [r.range for r in server.requests] == ["bytes=0-4095"]
    assert device.flash.writes == []


async def test_flash_max_size_is_accepted(socket_enabled: None) -> None:
    image = tasmota_lite(MAX_IMAGE_SIZE)
    async with FirmwareServer(image) as server, DiyDevice(unlocked()) as device:
        reply = await flash(device, server.url, sha(image), wait=10.0)
        await device.wait_for_stage(DiyStage.TASMOTA, 5.0)
    assert reply["error"] == 0
    assert device.flash.image_at(0) == image


@pytest.mark.parametrize(
    ("server_kwargs", "status"), [({"range_support": False}, 200), ({"missing": True}, 404)]
)
async def test_flash_cannot_download_424(
    socket_enabled: None, server_kwargs: dict[str, Any], status: int
) -> None:
    image = tasmota_lite(SMALL)
    async with FirmwareServer(image, **server_kwargs) as server, DiyDevice(unlocked()) as device:
        reply = await flash(device, server.url, sha(image))
    assert reply["error"] == 424
    assert [r.status for r in server.requests] == [status]
    assert device.downloads[0].status == status
    assert server.callbacks == [] and device.flash.writes == []


async def test_flash_unreachable_server_424(socket_enabled: None) -> None:
    image = tasmota_lite(SMALL)
    async with FirmwareServer(image) as server:
        url = server.url  # the port is free again once the server stopped
    async with DiyDevice(unlocked()) as device:
        reply = await flash(device, url, sha(image))
    assert reply["error"] == 424
    assert device.downloads[0].status is None


async def test_flash_peer_not_speaking_http_424(socket_enabled: None) -> None:
    async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with DiyDevice(unlocked()) as device:
            reply = await flash(device, f"http://127.0.0.1:{port}/fw.bin", "a" * 64)
    finally:
        server.close()
        await server.wait_closed()
    assert reply["error"] == 424
    assert [d.host for d in device.downloads] == ["dl.itead.cn"]


async def test_flash_predownload_timeout_408(socket_enabled: None) -> None:
    image = tasmota_lite(SMALL)
    cfg = unlocked(timing=timing_profile("fast", http_timeout=0.3))
    async with FirmwareServer(image, stall_from=4096) as server, DiyDevice(cfg) as device:
        reply = await flash(device, server.url, sha(image))
    assert reply["error"] == 408
    assert [r.range for r in device.downloads] == ["bytes=0-4095", "bytes=4096-8191"]


@pytest.mark.parametrize("digest", [sha(b"another image"), sha(tasmota_lite(SMALL)).upper()])
async def test_flash_sha_mismatch_471(socket_enabled: None, digest: str) -> None:
    image = tasmota_lite(SMALL)
    async with FirmwareServer(image) as server, DiyDevice(unlocked()) as device:
        reply = await flash(device, server.url, digest)
        assert device.stage is DiyStage.FAILED
    assert reply["error"] == 471
    assert len(server.requests) == 3  # downloaded in full, then checked
    assert device.flash.writes == [] and server.callbacks == []


# ---------------------------------------------------------------- a good flash


@pytest.mark.parametrize(
    ("fw_version", "itead_host"),
    [("3.3.0", False), ("3.5.0", True), ("3.6.0", True), ("3.7.6", False)],
)
async def test_good_flash(socket_enabled: None, fw_version: str, itead_host: bool) -> None:
    image = tasmota_lite(SMALL)
    booted: list[bytes] = []

    async def on_final_image(data: bytes) -> None:
        booted.append(data)

    cfg = unlocked(fw_version=fw_version)
    async with (
        FirmwareServer(image) as server,
        DiyDevice(cfg, on_final_image=on_final_image) as device,
    ):
        reply = await flash(device, server.url, sha(image))
        assert reply == {"seq": 1, "error": 0}
        await asyncio.wait_for(server.callback_received.wait(), 2.0)
        await device.wait_for_advertising(False, 2.0)
        await device.wait_for_stage(DiyStage.TASMOTA, 2.0)
        # The eWeLink REST server is gone once the device rebooted.
        with pytest.raises(OSError):
            await zeroconf(device.port, "info", {"deviceid": DEVICEID, "data": {}}, retries=1)

    assert device.flash.image_at(0x000000) == image
    assert device.flash.regions() == {0: sha(image)}
    assert server.callbacks == [{"error": 0}]
    assert device.callbacks[0].error == 0 and device.callbacks[0].status == 200
    assert booted == [image]
    assert [r.range for r in server.requests] == [
        "bytes=0-4095",
        "bytes=4096-8191",
        "bytes=8192-9999",
    ]
    expected_host = ITEAD_HOST if itead_host else f"127.0.0.1:{server.port}"
    assert {r.host for r in server.requests} == {expected_host}
    assert {d.host for d in device.downloads} == {expected_host}


async def test_reply_before_download_reports_through_callback(socket_enabled: None) -> None:
    image = tasmota_lite(SMALL)
    cfg = unlocked(reply_before_download=True)
    async with FirmwareServer(image) as server, DiyDevice(cfg) as device:
        reply = await flash(device, server.url, sha(image))
        assert reply["error"] == 0
        await device.wait_for_stage(DiyStage.TASMOTA, 2.0)
    assert server.callbacks == [{"error": 0}]
    assert device.flash.image_at(0) == image


async def test_reply_before_download_bad_sha_callback_409(socket_enabled: None) -> None:
    image = tasmota_lite(SMALL)
    cfg = unlocked(reply_before_download=True)
    async with FirmwareServer(image) as server, DiyDevice(cfg) as device:
        reply = await flash(device, server.url, sha(b"other"))
        assert reply["error"] == 0
        await asyncio.wait_for(server.callback_received.wait(), 2.0)
        assert device.advertising  # still an eWeLink device
    assert server.callbacks == [{"error": 409}]
    assert device.stage is DiyStage.OFFLINE and device.flash.writes == []


async def test_non_dout_image_callback_409(socket_enabled: None) -> None:
    image = make_image(SMALL, flash_mode=FLASH_MODE_DIO)
    async with FirmwareServer(image) as server, DiyDevice(unlocked()) as device:
        reply = await flash(device, server.url, sha(image))
        assert reply["error"] == 0  # accepted is not done (§5.8)
        await asyncio.wait_for(server.callback_received.wait(), 2.0)
        await device.wait_for_stage(DiyStage.FAILED, 1.0)
        assert device.advertising
    assert server.callbacks == [{"error": 409}]
    assert device.flash.writes == []


async def test_internal_error_callback_410(socket_enabled: None) -> None:
    image = tasmota_lite(SMALL)
    async with FirmwareServer(image) as server, DiyDevice(unlocked(internal_error=True)) as device:
        assert (await flash(device, server.url, sha(image)))["error"] == 0
        await asyncio.wait_for(server.callback_received.wait(), 2.0)
    assert server.callbacks == [{"error": 410}]
    assert device.flash.writes == []


# ---------------------------------------------------------------- faults


async def test_fault_drop_mid_download_424(socket_enabled: None) -> None:
    image = tasmota_lite(SMALL)
    cfg = unlocked(faults=Faults({Fault.DROP_MID_DOWNLOAD}))
    async with FirmwareServer(image) as server, DiyDevice(cfg) as device:
        reply = await flash(device, server.url, sha(image))
    assert reply["error"] == 424
    assert [d.range for d in device.downloads] == ["bytes=0-4095", "bytes=4096-8191"]
    assert device.flash.writes == [] and server.callbacks == []


async def test_fault_drop_mid_download_callback_404(socket_enabled: None) -> None:
    image = tasmota_lite(SMALL)
    cfg = unlocked(faults=Faults({Fault.DROP_MID_DOWNLOAD}), reply_before_download=True)
    async with FirmwareServer(image) as server, DiyDevice(cfg) as device:
        assert (await flash(device, server.url, sha(image)))["error"] == 0
        await asyncio.wait_for(server.callback_received.wait(), 2.0)
    assert server.callbacks == [{"error": 404}]
    assert device.flash.writes == []


async def test_fault_corrupt_byte_471(socket_enabled: None) -> None:
    image = tasmota_lite(SMALL)
    cfg = unlocked(faults=Faults({Fault.CORRUPT_BYTE}))
    async with FirmwareServer(image) as server, DiyDevice(cfg) as device:
        reply = await flash(device, server.url, sha(image))
    assert reply["error"] == 471
    assert device.flash.writes == []


async def test_fault_stall_no_reply_no_callback(socket_enabled: None) -> None:
    image = tasmota_lite(SMALL)
    cfg = unlocked(faults=Faults({Fault.STALL}))
    async with FirmwareServer(image) as server, DiyDevice(cfg) as device:
        with pytest.raises(TimeoutError):
            await flash(device, server.url, sha(image), wait=0.3)
        assert device.stage is DiyStage.DOWNLOADING
        assert [d.range for d in device.downloads] == ["bytes=0-4095"]
        assert device.advertising
    assert server.callbacks == [] and device.callbacks == []
    assert device.flash.writes == []


async def test_stop_mid_flash_device_vanishes(socket_enabled: None) -> None:
    image = tasmota_lite(40_000)
    cfg = unlocked(timing=timing_profile("fast", chunk_delay=0.02))
    async with FirmwareServer(image) as server:
        device = DiyDevice(cfg)
        await device.start()
        try:
            client = asyncio.create_task(flash(device, server.url, sha(image)))
            await device.wait_for_stage(DiyStage.DOWNLOADING, 1.0)
            await asyncio.sleep(0.05)
        finally:
            await device.stop()
        with pytest.raises((ConnectionError, json.JSONDecodeError, AssertionError)):
            await client
        served = len(server.requests)
        await asyncio.sleep(0.05)
        assert len(server.requests) == served  # no more downloads
    assert 0 < served < 10
    assert device.stage is DiyStage.OFFLINE and not device.advertising
    assert server.callbacks == [] and device.flash.writes == []
