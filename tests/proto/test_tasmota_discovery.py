"""Tasmota discovery messages, MAC spellings and the Wi-Fi manager SSID."""

from __future__ import annotations

import json
from typing import Any

import pytest

from custom_components.sonoff_ota.proto.mac_address import InvalidMacError, ha_mac, tasmota_mac
from custom_components.sonoff_ota.proto.tasmota_discovery import (
    TasmotaDevice,
    TasmotaDiscoveryError,
    TasmotaRemoved,
    default_topic,
    discovery_topic,
    is_tasmota_ap_ssid,
    parse_discovery,
    predicted_ap_ssid,
    predicted_ssid_prefix,
    ssid_matches_mac,
)

MAC = "D8F15BAABBCC"
TOPIC = f"tasmota/discovery/{MAC}/config"


def config(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "ip": "192.168.1.50",
        "dn": "Sonoff Mini R2 e4c17c",
        "fn": ["Sonoff Mini R2 e4c17c", None, None, None],
        "hn": "tasmota-AABBCC-3020",
        "mac": MAC,
        "md": "Sonoff Mini",
        "ty": 0,
        "if": 0,
        "ofln": "Offline",
        "onln": "Online",
        "state": ["OFF", "ON", "TOGGLE", "HOLD"],
        "sw": "14.2.0(lite)",
        "t": "tasmota_AABBCC",
        "ft": "%prefix%/%topic%/",
        "tp": ["cmnd", "stat", "tele"],
        "rl": [1, 0, 0, 0, 0, 0, 0, 0],
        "swc": [-1] * 8,
        "swn": [None] * 8,
        "btn": [0] * 4,
        "so": {"4": 0, "11": 0, "13": 0, "17": 0, "20": 0, "30": 0, "68": 0, "73": 0},
        "lk": 0,
        "lt_st": 0,
        "sho": [],
        "sht": [],
        "ver": 1,
    }
    doc.update(overrides)
    return doc


def test_parse_config_bytes() -> None:
    device = parse_discovery(TOPIC, json.dumps(config()).encode())
    assert isinstance(device, TasmotaDevice)
    assert device.mac == MAC
    assert device.ip == "192.168.1.50"
    assert device.topic == "tasmota_AABBCC"
    assert device.sw == "14.2.0(lite)"
    assert device.is_lite
    assert device.device_name == "Sonoff Mini R2 e4c17c"
    assert device.model == "Sonoff Mini"
    assert device.relays == 1
    assert device.hostname == "tasmota-AABBCC-3020"
    assert device.friendly_names == ("Sonoff Mini R2 e4c17c",)
    assert device.full_topic == "%prefix%/%topic%/"


def test_parse_counts_relays_and_lights() -> None:
    device = parse_discovery(TOPIC, json.dumps(config(rl=[1, 1, 2, 0])))
    assert isinstance(device, TasmotaDevice)
    assert device.relays == 3
    assert device.relay_types == (1, 1, 2, 0)


@pytest.mark.parametrize("payload", [b"", "", b"  "])
def test_empty_payload_is_removal(payload: bytes | str) -> None:
    assert parse_discovery(TOPIC, payload) == TasmotaRemoved(mac=MAC)


@pytest.mark.parametrize(
    ("topic", "payload", "code"),
    [
        (TOPIC, json.dumps(config(mac="D8F15BAABBCD")), "mac_mismatch"),
        (TOPIC, "{broken", "bad_json"),
        (TOPIC, "[1]", "bad_json"),
        (TOPIC, json.dumps({k: v for k, v in config().items() if k != "ip"}), "missing_field"),
        (TOPIC, json.dumps(config(rl="1")), "missing_field"),
        (TOPIC, json.dumps(config(ver=2)), "unsupported_version"),
        (f"tasmota/discovery/{MAC}/sensors", "{}", "unexpected_topic"),
        (f"other/discovery/{MAC}/config", "{}", "unexpected_topic"),
        ("tasmota/discovery/d8f15baabbcc/config", "{}", "unexpected_topic"),
    ],
)
def test_bad_messages_raise_typed_errors(topic: str, payload: str, code: str) -> None:
    with pytest.raises(TasmotaDiscoveryError) as exc:
        parse_discovery(topic, payload)
    assert exc.value.code == code


def test_custom_prefix() -> None:
    device = parse_discovery(f"my/disc/{MAC}/config", json.dumps(config()), prefix="my/disc")
    assert isinstance(device, TasmotaDevice)


def test_mac_spellings() -> None:
    sta_mac = "d8:f1:5b:aa:bb:cc"  # eWeLink cloud `staMac`
    assert tasmota_mac(sta_mac) == MAC
    assert tasmota_mac("D8-F1-5B-AA-BB-CC") == MAC
    assert ha_mac(MAC) == sta_mac
    assert ha_mac("D8-F1-5B-AA-BB-CC") == sta_mac
    assert discovery_topic(sta_mac) == TOPIC
    for bad in ("", "d8:f1:5b:aa:bb", "zz:f1:5b:aa:bb:cc", "d8f15baabbccdd"):
        with pytest.raises(InvalidMacError):
            tasmota_mac(bad)


def test_ap_ssid_pattern_and_prediction() -> None:
    assert is_tasmota_ap_ssid("tasmota_3D5E26-7718")
    assert is_tasmota_ap_ssid("tasmota-62E43F-1087")
    for bad in ("tasmota_3d5e26-7718", "tasmota_3D5E26", "ITEAD-1000e4c17c", "tasmota_3D5E26-77"):
        assert not is_tasmota_ap_ssid(bad)
    assert predicted_ssid_prefix("d8:f1:5b:3d:5e:26") == "tasmota_3D5E26"
    assert default_topic(MAC) == "tasmota_AABBCC"
    # the two SSIDs quoted in the spec match chip id & 0x1FFF
    assert predicted_ap_ssid("00:00:00:3d:5e:26") == "tasmota_3D5E26-7718"
    assert predicted_ap_ssid("00:00:00:62:e4:3f") == "tasmota_62E43F-1087"
    assert ssid_matches_mac("tasmota-3D5E26-7718", "aa:bb:cc:3d:5e:26")
    assert not ssid_matches_mac("tasmota_3D5E27-7718", "aa:bb:cc:3d:5e:26")
