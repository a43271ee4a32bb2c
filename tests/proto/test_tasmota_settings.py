"""Pure Tasmota settings helpers: broker host, model table, Backlog and links."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from custom_components.sonoff_ota.proto.tasmota_settings import (
    DEFAULT_AP_BASE_URL,
    TasmotaSettings,
    TasmotaSettingsError,
    backlog_command,
    build_backlog,
    cm_query,
    derive_names,
    device_broker_host,
    lookup_hardware,
    phone_backlog_link,
    phone_wifi_link,
    redact_commands,
    wifi_manager_query,
)

HA_IP = "192.168.1.20"


@pytest.mark.parametrize(
    ("broker", "expected"),
    [
        ("localhost", HA_IP),
        ("LOCALHOST", HA_IP),
        ("127.0.0.1", HA_IP),
        ("127.0.1.1", HA_IP),
        ("::1", HA_IP),
        ("[::1]", HA_IP),
        ("0.0.0.0", HA_IP),  # noqa: S104  (a broker address, not a bind)
        ("core-mosquitto", HA_IP),
        ("a0d7b954-mosquitto", HA_IP),
        ("homeassistant.local", HA_IP),
        ("broker.local.", HA_IP),
        ("", HA_IP),
        ("  ", HA_IP),
        ("192.168.1.10", "192.168.1.10"),
        ("10.0.0.5", "10.0.0.5"),
        ("mqtt.example.com", "mqtt.example.com"),
        ("nas", "nas"),
    ],
)
def test_device_broker_host(broker: str, expected: str) -> None:
    assert device_broker_host(broker, HA_IP) == expected


@pytest.mark.parametrize(
    ("model", "module", "relays"),
    [
        ("BASICR2", 1, 1),
        ("Basic R3", 1, 1),
        ("sonoff-basic", 1, 1),
        ("RFR2", 2, 1),
        ("RF R3", 2, 1),
        ("POW", 6, 1),
        ("POWR2", 43, 1),
        ("TH10", 4, 1),
        ("TH16", 4, 1),
        ("DUAL", 5, 2),
        ("DUALR2", 39, 2),
        ("4CH Pro", 23, 4),
        ("4CH", 7, 4),
        ("S20", 8, 1),
        ("Touch", 10, 1),
        ("T1EU1C", 28, 1),
        ("T1US2C", 29, 2),
        ("T1-3C", 30, 3),
    ],
)
def test_model_table_modules(model: str, module: int, relays: int) -> None:
    found = lookup_hardware(model)
    assert found.model_known
    assert found.hardware is not None
    assert found.hardware.module == module
    assert found.relays == relays
    assert found.hardware.commands() == [f"Module {module}"]


def test_mini_uses_a_template() -> None:
    found = lookup_hardware("MINIR2")
    assert found.hardware is not None
    cmds = found.hardware.commands()
    assert cmds[1] == "Module 0"
    name, _, template = cmds[0].partition(" ")
    assert name == "Template"
    gpio = json.loads(template)["GPIO"]
    # order: GPIO 0,1,2,3,4,5,9,10,12,13,14,15,16,A0
    assert (gpio[0], gpio[4], gpio[8], gpio[9]) == (32, 160, 224, 320)


@pytest.mark.parametrize("model", [None, "", "diy_plug", "ZBMINI", "BASICR4"])
def test_unknown_models_keep_the_default(model: str | None) -> None:
    found = lookup_hardware(model)
    assert not found.model_known
    assert found.hardware is None
    assert found.relays is None


def test_derive_names() -> None:
    assert derive_names(model="MINIR2", deviceid="1000e4c17c") == (
        "Sonoff Mini R2 e4c17c",
        "Sonoff Mini R2 e4c17c",
    )
    assert derive_names(deviceid="1000e4c17c")[0] == "Sonoff e4c17c"
    assert derive_names(ewelink_name="Kitchen; lamp", deviceid="x")[0] == "Kitchen lamp"
    assert len(derive_names(ewelink_name="x" * 50)[0]) == 32


def test_build_backlog_order_and_omissions() -> None:
    hw = lookup_hardware("BASICR2").hardware
    cmds = build_backlog(
        TasmotaSettings(
            ssid="Home",
            wifi_password="wifipassword",
            mqtt_host="192.168.1.10",
            device_name="Sonoff Basic R2 aabbcc",
            friendly_name="Sonoff Basic R2 aabbcc",
            hardware=hw,
        )
    )
    assert cmds == [
        "SSID1 Home",
        "Password1 wifipassword",
        "MqttHost 192.168.1.10",
        "MqttPort 1883",
        "DeviceName Sonoff Basic R2 aabbcc",
        "FriendlyName1 Sonoff Basic R2 aabbcc",
        "Module 1",
        "SetOption19 0",
    ]
    assert not any(c.lower().startswith("fulltopic") for c in cmds)
    assert not any(c.startswith(("MqttUser", "MqttPassword")) for c in cmds)


def test_build_backlog_full_with_template_and_credentials() -> None:
    cmds = build_backlog(
        TasmotaSettings(
            mqtt_host="192.168.1.10",
            mqtt_user="user",
            mqtt_password="secretpw",
            hardware=lookup_hardware("MINI").hardware,
            topic="sonoff_mini",
        )
    )
    assert cmds[:5] == [
        "MqttHost 192.168.1.10",
        "MqttPort 1883",
        "MqttUser user",
        "MqttPassword secretpw",
        "Topic sonoff_mini",
    ]
    assert cmds[-3].startswith("Template {")
    assert cmds[-2:] == ["Module 0", "SetOption19 0"]


@pytest.mark.parametrize(
    ("kwargs", "code", "field"),
    [
        ({"ssid": "Home", "wifi_password": "ab;cdefgh"}, "contains_semicolon", "Password1"),
        ({"mqtt_host": "h", "mqtt_password": "1"}, "reserved_value", "MqttPassword"),
        ({"ssid": "Home "}, "surrounding_space", "SSID1"),
        ({"mqtt_host": "h", "mqtt_port": 0}, "invalid_port", "MqttPort"),
    ],
)
def test_build_backlog_rejects_untransportable_values(
    kwargs: dict[str, object], code: str, field: str
) -> None:
    with pytest.raises(TasmotaSettingsError) as exc:
        build_backlog(TasmotaSettings(**kwargs))  # type: ignore[arg-type]
    assert exc.value.code == code
    assert exc.value.field == field
    assert "ab;cdefgh" not in str(exc.value)


def test_secrets_hidden() -> None:
    s = TasmotaSettings(ssid="Home", wifi_password="wifisecret", mqtt_password="mqttsecret")
    assert "wifisecret" not in repr(s)
    assert "mqttsecret" not in repr(s)
    assert redact_commands(["SSID1 Home", "Password1 wifisecret", "MqttPassword x"]) == [
        "SSID1 Home",
        "Password1 ***",
        "MqttPassword ***",
    ]


def test_backlog_limit() -> None:
    assert backlog_command(["Power ON"]) == "Power ON"
    assert backlog_command(["A 1", "B 2"]) == "Backlog A 1;B 2"
    backlog_command([f"C{i} 1" for i in range(30)])
    with pytest.raises(TasmotaSettingsError) as exc:
        backlog_command([f"C{i} 1" for i in range(31)])
    assert exc.value.code == "backlog_too_long"


def test_cm_query_encoding() -> None:
    q = cm_query(["SSID1 a b", "Password1 x+y;z&w"])
    assert q == "/cm?cmnd=Backlog%20SSID1%20a%20b%3BPassword1%20x%2By%3Bz%26w"
    assert cm_query(["Power"], web_password="p w") == "/cm?cmnd=Power&user=admin&password=p%20w"


def test_wifi_manager_query_and_links() -> None:
    q = wifi_manager_query("My Net", "pa&ss=w+rd")
    assert q == "/wi?s1=My%20Net&p1=pa%26ss%3Dw%2Brd&save="
    link = phone_wifi_link("My Net", "pa&ss=w+rd")
    assert link == DEFAULT_AP_BASE_URL + q
    parts = urlsplit(link)
    assert parts.netloc == "192.168.4.1"
    params = parse_qs(parts.query, keep_blank_values=True)
    assert params == {"s1": ["My Net"], "p1": ["pa&ss=w+rd"], "save": [""]}
    custom = phone_wifi_link("n", "p", base_url="http://127.0.0.1:8080/")
    assert custom.startswith("http://127.0.0.1:8080/wi?")
    cm = phone_backlog_link(["SSID1 n", "Password1 p"], base_url="http://127.0.0.1:8080")
    assert unquote(urlsplit(cm).query) == "cmnd=Backlog SSID1 n;Password1 p"
    with pytest.raises(TasmotaSettingsError):
        phone_wifi_link("n", "p", base_url="https://192.168.4.1")
