"""Parsing `_ewelink._tcp` announcements and the DIY eligibility verdicts."""

from __future__ import annotations

import json

import pytest

from custom_components.sonoff_ota.proto.diy_discovery import (
    DiyAdvertError,
    EligibilityReason,
    EligibilityWarning,
    check_advert_eligibility,
    check_eligibility,
    deviceid_from_instance_name,
    parse_advert,
)

# The 3.3.0 example TXT from [TD] (spec §1.3).
TXT_330 = {
    "data1": '{"switch":"off","startup":"off","pulse":"off","pulseWidth":500,"rssi":-47}',
    "seq": "1",
    "apivers": "1",
    "type": "diy_plug",
    "id": "1000988699",
    "txtvers": "1",
}


def test_parse_str_properties() -> None:
    advert = parse_advert(TXT_330, "eWeLink_1000988699._ewelink._tcp.local.")
    assert advert.deviceid == "1000988699"
    assert advert.device_type == "diy_plug"
    assert not advert.encrypted
    assert advert.seq == 1
    assert advert.apivers == "1"
    assert advert.data is not None
    assert advert.data["rssi"] == -47


def test_parse_bytes_properties_and_split_data() -> None:
    """zeroconf hands bytes; the JSON is split over data1..data4 (249-byte chunks)."""
    blob = json.dumps({"switch": "on", "fwVersion": "3.7.6", "pad": "x" * 600})
    chunks = [blob[i : i + 249] for i in range(0, len(blob), 249)]
    assert len(chunks) == 3
    props: dict[bytes, bytes | None] = {
        b"type": b"diy_plug",
        b"seq": b"7",
        b"txtvers": None,
        **{f"data{n + 1}".encode(): c.encode() for n, c in enumerate(chunks)},
    }
    advert = parse_advert(props, "eWeLink_1000aabbcc._ewelink._tcp.local.")
    assert advert.deviceid == "1000aabbcc"  # from the instance name
    assert advert.data is not None
    assert advert.data["pad"] == "x" * 600
    assert advert.fw_version == "3.7.6"
    assert advert.seq == 7


def test_instance_name_spellings() -> None:
    assert deviceid_from_instance_name("eWelink_100012ab._ewelink._tcp.local.") == "100012ab"
    assert deviceid_from_instance_name("eWeLink_100012ab") == "100012ab"
    assert deviceid_from_instance_name("ihost-1234._ewelink._tcp.local.") is None


def test_encrypted_lan_mode_advert() -> None:
    props = {
        "id": "1000aabbcc",
        "type": "plug",
        "encrypt": "true",
        "iv": "MTIzNDU2Nzg5MDEyMzQ1Ng==",
        "data1": "q83vEjRWeJA=",  # ciphertext, must not be parsed
    }
    advert = parse_advert(props, "")
    assert advert.encrypted
    assert advert.data is None


@pytest.mark.parametrize(
    ("props", "name", "code"),
    [
        ({"type": "diy_plug"}, "something_else", "no_deviceid"),
        ({"id": "", "type": "diy_plug"}, "", "no_deviceid"),
        ({"id": "bad id!"}, "", "no_deviceid"),
        ({"id": "1000aabbcc", "data1": "{not json"}, "", "bad_data"),
        ({"id": "1000aabbcc", "data1": "[1, 2]"}, "", "bad_data"),
    ],
)
def test_bad_adverts_raise_typed_errors(props: dict[str, str], name: str, code: str) -> None:
    with pytest.raises(DiyAdvertError) as exc:
        parse_advert(props, name)
    assert exc.value.code == code


def test_bad_seq_and_invalid_utf8_do_not_crash() -> None:
    advert = parse_advert({b"id": b"1000aabbcc", b"seq": b"\xff\xfe", b"type": b"\xff"}, "")
    assert advert.seq is None
    assert advert.device_type is not None


def test_eligibility_ok_on_3x() -> None:
    for fw in ("3.3.0", "3.5.0", "3.6.0", "3.7.6"):
        verdict = check_eligibility(device_type="diy_plug", fw_version=fw, encrypted=False)
        assert verdict.ok, fw
        assert verdict.reason is EligibilityReason.OK
        assert verdict.warnings == ()


def test_eligibility_38_warns_unverified() -> None:
    verdict = check_eligibility(device_type="diy_plug", fw_version="3.8.2", encrypted=False)
    assert verdict.ok
    assert verdict.warnings == (EligibilityWarning.UNVERIFIED_FIRMWARE,)


def test_eligibility_unknown_fw_warns() -> None:
    verdict = check_eligibility(device_type="diy_plug", fw_version=None, encrypted=False)
    assert verdict.ok
    assert verdict.warnings == (EligibilityWarning.FIRMWARE_UNKNOWN,)


def test_eligibility_encrypted_points_to_diy_mode() -> None:
    verdict = check_eligibility(
        device_type="plug", fw_version="3.6.0", encrypted=True, deviceid="1000e4c17c"
    )
    assert not verdict.ok
    assert verdict.reason is EligibilityReason.ENCRYPTED_LAN_MODE
    assert verdict.placeholders["ap_ssid"] == "ITEAD-1000e4c17c"
    assert verdict.placeholders["ap_password"] == "12345678"
    assert verdict.placeholders["setup_url"] == "http://10.10.7.1/"


@pytest.mark.parametrize(
    ("device_type", "fw", "model"),
    [
        ("plug", "1.1.0", "BASICR4"),
        ("plug", "1.2.0", None),
        ("diy_plug", "3.6.0", "MINIR4"),
        ("diy_plug", None, "CK-BL602-SWITCH"),
        ("plug", "3.7.0", "ESP32-something"),
    ],
)
def test_eligibility_cannot_run_tasmota(
    device_type: str, fw: str | None, model: str | None
) -> None:
    # also when encrypted: hardware verdict beats the "switch to DIY" advice
    for encrypted in (False, True):
        verdict = check_eligibility(
            device_type=device_type, fw_version=fw, encrypted=encrypted, model=model
        )
        assert not verdict.ok
        assert verdict.reason is EligibilityReason.CANNOT_RUN_TASMOTA


def test_eligibility_unknown_and_unsupported_types() -> None:
    unknown = check_eligibility(device_type="zigbee_thing", fw_version="3.6.0", encrypted=False)
    assert not unknown.ok
    assert unknown.reason is EligibilityReason.UNKNOWN_TYPE
    assert unknown.placeholders["device_type"] == "zigbee_thing"
    missing = check_eligibility(device_type=None, fw_version="3.6.0", encrypted=False)
    assert missing.reason is EligibilityReason.UNKNOWN_TYPE
    strip = check_eligibility(device_type="strip", fw_version="3.6.0", encrypted=False)
    assert not strip.ok
    assert strip.reason is EligibilityReason.UNSUPPORTED_TYPE


@pytest.mark.parametrize("fw", ["2.7.1", "3.0.0", "3.1.0", "3.2.9"])
def test_eligibility_old_firmware_needs_update(fw: str) -> None:
    verdict = check_eligibility(device_type="diy_plug", fw_version=fw, encrypted=False)
    assert not verdict.ok
    assert verdict.reason is EligibilityReason.NEEDS_EWELINK_UPDATE
    assert verdict.placeholders["min_version"] == "3.3.0"


def test_advert_eligibility_uses_txt_fw() -> None:
    advert = parse_advert({**TXT_330, "data1": '{"fwVersion":"3.8.0"}'}, "")
    verdict = check_advert_eligibility(advert)
    assert verdict.warnings == (EligibilityWarning.UNVERIFIED_FIRMWARE,)
    verdict = check_advert_eligibility(advert, fw_version="3.6.0")
    assert verdict.warnings == ()
