"""What a freshly flashed Tasmota is told: Wi-Fi, MQTT, names, hardware (pure functions).

Facts: shared/spec/diy-ota-and-tasmota.md §3.1 (Wi-Fi manager `/wi`), §3.2 (`/cm`,
encoding, Backlog limit), §3.3 (commands), §3.6 (broker gotchas), §5 items 10-11.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
import ipaddress
import json
import re
from urllib.parse import quote

from yarl import URL

DEFAULT_AP_BASE_URL = "http://192.168.4.1"
DEFAULT_MQTT_PORT = 1883
BACKLOG_MAX_COMMANDS = 30
# Tasmota keeps DeviceName / FriendlyName in 32-character text slots [infer from
# Commands.md limits]; longer names are cut, not rejected.
NAME_MAX_LEN = 32
SECRET_COMMANDS = frozenset({"password1", "password2", "password", "mqttpassword", "webpassword"})
# Tasmota reads the bare argument "0" / "1" of string settings as clear / reset to
# default (Commands.md: MqttUser, MqttPassword, SSID1, Password1, DeviceName...).
_RESERVED_VALUES = frozenset({"0", "1"})

# Names the HA host resolves but a Tasmota on the LAN cannot (spec §3.6, §3.2 mDNS).
_LOCAL_ONLY_HOSTS = frozenset(
    {"", "localhost", "localhost.localdomain", "core-mosquitto", "homeassistant"}
)
# Add-on hostnames of the form <8-hex repo hash>-<slug>, e.g. a0d7b954-mosquitto.
_ADDON_HOST_RE = re.compile(r"^(core|[0-9a-f]{8})-[a-z0-9_-]+$")


class TasmotaSettingsError(ValueError):
    """A setting Tasmota cannot take as given; `code` is a stable key, `field` the setting."""

    def __init__(self, code: str, field_name: str, message: str) -> None:
        """Store the key and the offending field (never its value: it may be a secret)."""
        super().__init__(message)
        self.code = code
        self.field = field_name


def device_broker_host(broker: str, ha_lan_ip: str) -> str:
    """The MQTT host to give the device: HA-internal names become the HA host's LAN IP.

    `localhost`, `127.x`, `::1`, `0.0.0.0`, `core-mosquitto` (and other add-on
    hostnames), `*.local` and empty all map to `ha_lan_ip`; LAN IPs and real
    hostnames are kept. Tasmota cannot resolve `.local` or add-on names (spec §3.6).
    """
    host = broker.strip().rstrip(".").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host in _LOCAL_ONLY_HOSTS or host.endswith(".local") or _ADDON_HOST_RE.match(host):
        return ha_lan_ip
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return broker.strip()
    if addr.is_loopback or addr.is_unspecified:
        return ha_lan_ip
    return broker.strip()


@dataclass(frozen=True, slots=True)
class TasmotaHardware:
    """How to tell Tasmota its hardware: a built-in `Module`, or a `Template` + `Module 0`."""

    friendly_name: str
    relays: int
    module: int | None = None
    template: str | None = None
    """Template JSON (Tasmota 9.1+ GPIO codes)."""
    uncertain: bool = False
    """True when the number/template is from memory and not checked against [TD]."""

    def commands(self) -> list[str]:
        """`Module <n>`, or `Template {...}` then `Module 0`."""
        if self.template is not None:
            return [f"Template {self.template}", "Module 0"]
        if self.module is not None:
            return [f"Module {self.module}"]
        return []


# Sonoff Mini (R1/R2) per [TD]: GPIO0 Button1, GPIO4 Switch1, GPIO12 Relay1, GPIO13 LED1.
# Array order = GPIO 0,1,2,3,4,5,9,10,12,13,14,15,16,A0; codes Button1=32, Switch1=160,
# Relay1=224, Led_i1=320. The LED is taken as inverted (active low, like other Sonoffs);
# [TD] says only "LED1": uncertain.
_MINI_TEMPLATE = json.dumps(
    {
        "NAME": "Sonoff Mini",
        "GPIO": [32, 0, 0, 0, 160, 0, 0, 0, 224, 320, 0, 0, 0, 0],
        "FLAG": 0,
        "BASE": 1,
    },
    separators=(",", ":"),
)


def _module(name: str, number: int, relays: int = 1, *, uncertain: bool = False) -> TasmotaHardware:
    return TasmotaHardware(friendly_name=name, relays=relays, module=number, uncertain=uncertain)


# eWeLink `productModel` (normalised: upper case, no spaces/dashes/underscores) → hardware.
# Module numbers are Tasmota's module list as recalled (1 Sonoff Basic, 2 Sonoff RF,
# 4 Sonoff TH, 5 Sonoff Dual, 6 Sonoff Pow, 7 Sonoff 4CH, 8 Sonoff S2X, 10 Sonoff Touch,
# 23 Sonoff 4CH Pro, 28-30 Sonoff T1 1/2/3CH, 39 Sonoff Dual R2, 43 Sonoff Pow R2);
# not re-checked against [TD] in this session, see the report.
MODEL_TABLE: dict[str, TasmotaHardware] = {
    "BASIC": _module("Sonoff Basic", 1),
    "BASICR1": _module("Sonoff Basic", 1),
    "BASICR2": _module("Sonoff Basic R2", 1),
    "BASICR3": _module("Sonoff Basic R3", 1, uncertain=True),
    "RF": _module("Sonoff RF", 2),
    "RFR2": _module("Sonoff RF R2", 2, uncertain=True),
    "RFR3": _module("Sonoff RF R3", 2, uncertain=True),
    "MINI": TasmotaHardware("Sonoff Mini", 1, template=_MINI_TEMPLATE, uncertain=True),
    "MINIR1": TasmotaHardware("Sonoff Mini", 1, template=_MINI_TEMPLATE, uncertain=True),
    "MINIR2": TasmotaHardware("Sonoff Mini R2", 1, template=_MINI_TEMPLATE, uncertain=True),
    "POW": _module("Sonoff Pow", 6),
    "POWR1": _module("Sonoff Pow", 6),
    "POWR2": _module("Sonoff Pow R2", 43),
    "TH": _module("Sonoff TH", 4),
    "TH10": _module("Sonoff TH10", 4),
    "TH16": _module("Sonoff TH16", 4),
    "DUAL": _module("Sonoff Dual", 5, 2),
    "DUALR1": _module("Sonoff Dual", 5, 2),
    "DUALR2": _module("Sonoff Dual R2", 39, 2),
    "4CH": _module("Sonoff 4CH", 7, 4),
    "4CHR2": _module("Sonoff 4CH R2", 7, 4, uncertain=True),
    "4CHPRO": _module("Sonoff 4CH Pro", 23, 4),
    "4CHPROR2": _module("Sonoff 4CH Pro R2", 23, 4, uncertain=True),
    "S20": _module("Sonoff S20", 8),
    "TOUCH": _module("Sonoff Touch", 10),
    "T11C": _module("Sonoff T1 1CH", 28),
    "T12C": _module("Sonoff T1 2CH", 29, 2),
    "T13C": _module("Sonoff T1 3CH", 30, 3),
}
# T1 product models carry a region: T1EU1C, T1US2C, T1UK3C... (uncertain spelling).
_T1_RE = re.compile(r"^T1(?:EU|US|UK)?([123])C(?:H)?$")


@dataclass(frozen=True, slots=True)
class HardwareLookup:
    """The result of a model lookup; `hardware` None = keep Tasmota's default module."""

    hardware: TasmotaHardware | None
    model_known: bool

    @property
    def relays(self) -> int | None:
        """Expected relay count (to compare with discovery's `rl`), None if unknown."""
        return self.hardware.relays if self.hardware else None


def _normalise_model(model: str) -> str:
    key = re.sub(r"[\s\-_]", "", model).upper()
    return key.removeprefix("SONOFF")


def lookup_hardware(model: str | None) -> HardwareLookup:
    """Map an eWeLink model (`BASICR2`, `Sonoff Mini R2`, `T1EU2C`...) to Tasmota hardware.

    Unknown or missing models return `model_known=False`: no `Module`/`Template`
    is sent and Tasmota keeps its default (Sonoff Basic), which the UI should say.
    A bare DIY `type` such as `diy_plug` does not identify the model (Basic R3,
    RF R3 and Mini all report it), so it is unknown here.
    """
    if not model:
        return HardwareLookup(hardware=None, model_known=False)
    key = _normalise_model(model)
    t1 = _T1_RE.match(key)
    if t1:
        key = f"T1{t1.group(1)}C"
    hardware = MODEL_TABLE.get(key)
    return HardwareLookup(hardware=hardware, model_known=hardware is not None)


def derive_names(
    *, model: str | None = None, deviceid: str | None = None, ewelink_name: str | None = None
) -> tuple[str, str]:
    """Return (`DeviceName`, `FriendlyName1`) from what we know of the eWeLink device.

    The user's own eWeLink name wins; otherwise the model's friendly name plus the
    last 6 characters of the deviceid (e.g. `Sonoff Mini R2 e4c17c`).
    """
    if ewelink_name and ewelink_name.strip():
        name = ewelink_name.strip()
    else:
        lookup = lookup_hardware(model)
        base = lookup.hardware.friendly_name if lookup.hardware else "Sonoff"
        name = f"{base} {deviceid[-6:]}" if deviceid else base
    name = _clean_name(name)
    return name, name


def _clean_name(name: str) -> str:
    # `;` would split the Backlog; control characters break the URL/JSON.
    cleaned = re.sub(r"[;\x00-\x1f]", " ", name)
    cleaned = re.sub(r"\s+", " ", cleaned).strip()[:NAME_MAX_LEN].strip()
    if cleaned in _RESERVED_VALUES or not cleaned:
        cleaned = f"Sonoff {cleaned}".strip()
    return cleaned


@dataclass(frozen=True, slots=True)
class TasmotaSettings:
    """Everything `build_backlog` may send. Secrets are hidden from repr."""

    mqtt_host: str | None = None
    mqtt_port: int = DEFAULT_MQTT_PORT
    mqtt_user: str = ""
    mqtt_password: str = field(default="", repr=False)
    ssid: str | None = None
    wifi_password: str | None = field(default=None, repr=False)
    device_name: str | None = None
    friendly_name: str | None = None
    hardware: TasmotaHardware | None = None
    topic: str | None = None
    """Optional; Tasmota's default `tasmota_%06X` is fine for HA."""


def _check_value(name: str, value: str, *, secret: bool) -> str:
    what = name if secret else f"{name} {value!r}"
    if ";" in value:
        raise TasmotaSettingsError("contains_semicolon", name, f"{what} contains ';'")
    if any(ord(c) < 0x20 for c in value):
        raise TasmotaSettingsError("control_character", name, f"{what} has a control character")
    if value != value.strip():
        # Tasmota trims arguments, so the setting would silently differ.
        raise TasmotaSettingsError("surrounding_space", name, f"{what} starts/ends with a space")
    if value in _RESERVED_VALUES:
        raise TasmotaSettingsError("reserved_value", name, f"{name} cannot be '0' or '1'")
    return value


def _command(name: str, value: str, *, secret: bool) -> str:
    """`<name> <value>` once `value` passed `_check_value` (raises TasmotaSettingsError)."""
    return f"{name} {_check_value(name, value, secret=secret)}"


def build_backlog(settings: TasmotaSettings) -> list[str]:
    """The commands for one `Backlog`, in order. `FullTopic` is never sent (spec §5 item 11).

    Raises TasmotaSettingsError for values Tasmota cannot take in a Backlog.
    """
    cmds: list[str] = []
    if settings.ssid is not None:
        cmds.append(_command("SSID1", settings.ssid, secret=False))
        if settings.wifi_password:
            cmds.append(_command("Password1", settings.wifi_password, secret=True))
    if settings.mqtt_host:
        cmds.append(_command("MqttHost", settings.mqtt_host, secret=False))
        if not 0 < settings.mqtt_port < 65536:
            raise TasmotaSettingsError("invalid_port", "MqttPort", "MQTT port out of range")
        cmds.append(f"MqttPort {settings.mqtt_port}")
        if settings.mqtt_user:
            cmds.append(_command("MqttUser", settings.mqtt_user, secret=False))
        if settings.mqtt_password:
            cmds.append(_command("MqttPassword", settings.mqtt_password, secret=True))
    if settings.topic:
        cmds.append(_command("Topic", settings.topic, secret=False))
    if settings.device_name:
        cmds.append(f"DeviceName {_clean_name(settings.device_name)}")
    if settings.friendly_name:
        cmds.append(f"FriendlyName1 {_clean_name(settings.friendly_name)}")
    if settings.hardware is not None:
        cmds.extend(settings.hardware.commands())
    # The default, and forced at every boot anyway (spec §3.5); sent for older builds.
    cmds.append("SetOption19 0")
    if len(cmds) > BACKLOG_MAX_COMMANDS:
        raise TasmotaSettingsError("backlog_too_long", "Backlog", "more than 30 commands")
    return cmds


def redact_commands(commands: Sequence[str]) -> list[str]:
    """The commands with secret arguments replaced by `***`, for logs."""
    out: list[str] = []
    for cmd in commands:
        name, _, arg = cmd.partition(" ")
        out.append(f"{name} ***" if name.lower() in SECRET_COMMANDS and arg else cmd)
    return out


def _enc(value: str) -> str:
    # Everything but unreserved characters: space → %20, ';' → %3B, '+' → %2B
    # (Tasmota's web server decodes '+' as a space).
    return quote(value, safe="")


def backlog_command(commands: Sequence[str]) -> str:
    """`Backlog c1;c2;...` (a single command is sent as is)."""
    if not commands:
        raise TasmotaSettingsError("empty_backlog", "Backlog", "no commands")
    if len(commands) > BACKLOG_MAX_COMMANDS:
        raise TasmotaSettingsError("backlog_too_long", "Backlog", "more than 30 commands")
    if len(commands) == 1:
        return commands[0]
    # No spaces around ';': Tasmota would keep a trailing space in the previous argument.
    return "Backlog " + ";".join(commands)


def cm_query(commands: Sequence[str], *, web_password: str | None = None) -> str:
    """`/cm?cmnd=<encoded>` (+ `&user=admin&password=...` when a WebPassword is set)."""
    query = f"/cm?cmnd={_enc(backlog_command(commands))}"
    if web_password:
        query += f"&user=admin&password={_enc(web_password)}"
    return query


def wifi_manager_query(ssid: str, password: str) -> str:
    """`/wi?s1=<ssid>&p1=<password>&save=`: the Wi-Fi manager form, sent as GET (§3.1)."""
    return f"/wi?s1={_enc(ssid)}&p1={_enc(password)}&save="


def _ap_base(base_url: str) -> str:
    url = URL(base_url)
    if url.scheme != "http" or not url.host:
        raise TasmotaSettingsError("invalid_base_url", "base_url", "AP base URL must be http://")
    return str(url.with_path("").with_query(None).with_fragment(None)).rstrip("/")


def phone_wifi_link(ssid: str, password: str, base_url: str = DEFAULT_AP_BASE_URL) -> str:
    """The one-tap link for a phone on the Tasmota AP: saves Wi-Fi via `/wi`.

    It contains the Wi-Fi password in clear (that is its purpose): show it only to
    the user, never log it.
    """
    return _ap_base(base_url) + wifi_manager_query(ssid, password)


def phone_backlog_link(commands: Sequence[str], base_url: str = DEFAULT_AP_BASE_URL) -> str:
    """The one-tap link that sends the whole Backlog via `/cm` from the phone.

    `/cm` in Wi-Fi manager mode is expected to work from code reading only (spec
    §3.1, not device-tested); prefer `phone_wifi_link` as the documented path.
    """
    return _ap_base(base_url) + cm_query(commands)
