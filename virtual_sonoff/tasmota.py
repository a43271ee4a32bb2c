"""A virtual Tasmota: what the Sonoff runs after the flash.

Facts from shared/spec/diy-ota-and-tasmota.md §3 (first boot AP, `/cm` API,
commands, status, discovery, lite → full) and §5 items 10-12; the Referer and
password checks follow Tasmota's `xdrv_01_9_webserver.ino` (read from source).

What is emulated: the Wi-Fi manager AP's web server (stands for 192.168.4.1:80),
the station web server (stands for <LAN IP>:80), the MQTT client (LWT,
discovery, `cmnd/<topic>/#`), and Tasmota's own OTA (`OtaUrl` + `Upgrade 1`).
What is not: the radio. Joining the AP, the AP's single-client limit
(`WiFi.softAP(..., max_connection=1)`) and whether SSID1/Password1 are right are
radio properties; the device assumes the Wi-Fi it is given works.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable
import contextlib
from dataclasses import dataclass, field, fields
import enum
import gzip
import json
import logging
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit
import zlib

import aiohttp

from .mqtt_client import MqttClient, MqttConnectError, MqttError, MqttMessage, Will
from .profile import FAST, Fault, Faults, Timing
from .start_stop import StartStop

_LOGGER = logging.getLogger(__name__)

MASK = "****"
WEB_USERNAME = "admin"
MAX_BACKLOG = 30  # Backlog takes up to 30 commands (spec §3.2)
# Discovery array lengths: Tasmota build constants (MAX_RELAYS_SET, MAX_SWITCHES_SET,
# MAX_KEYS_SET, MAX_FRIENDLYNAMES, MAX_SHUTTERS) of a 14.x ESP8266 build [infer:
# not read from the 14.x headers; hatasmota accepts any length].
MAX_RELAYS_SET = 32
MAX_SWITCHES_SET = 28
MAX_KEYS_SET = 32
MAX_FRIENDLYNAMES = 8
MAX_SHUTTERS = 4
# Tasmota 15.5.0 inverted DISABLE_REFERER_CHK: from then on SetOption128 defaults to 0
# (Referer check on, so API calls without a Referer are denied); before, it defaulted to 1.
# Source: Tasmota CHANGELOG "inverting state of define DISABLE_REFERER_CHK ... now default
# off"; the exact release is from a third-party test comment [unverified].
REFERER_CHECK_DEFAULT_FROM = (15, 5)
_DISCOVERY_SETOPTIONS = ("4", "11", "13", "17", "20", "30", "68", "73", "82", "114", "117")
MODULE_NAMES = {1: "Sonoff Basic", 18: "Generic"}
SECRET_COMMANDS = {"PASSWORD", "MQTTPASSWORD", "WEBPASSWORD"}
DEFAULT_OTA_URL = "http://ota.tasmota.com/tasmota/release/tasmota.bin.gz"
FLASH_1M = 1024 * 1024
SKETCH_RESERVED = 0x5000  # [infer] settings + SDK sectors at the end of a 1 MB layout
OTA_ATTEMPTS = 10  # tasmota.h (ESP8266, current source)
# ESP8266httpUpdate::getLastErrorString() texts (esp8266/Arduino core).
OTA_TOO_LESS_SPACE = "Not Enough space"
OTA_NOT_FOUND = "File Not Found (404)"
OTA_FORBIDDEN = "Forbidden (403)"
OTA_UNAUTHORIZED = "Unauthorized (401)"
OTA_WRONG_CODE = "Wrong HTTP Code"
OTA_NO_SIZE = "Server Did Not Report Size"
OTA_BAD_HEADER = "Verify Bin Header Failed"
OTA_CONNECTION_FAILED = "HTTP error: connection failed"  # HTTPC_ERROR_CONNECTION_FAILED
OTA_READ_TIMEOUT = "HTTP error: read Timeout"  # HTTPC_ERROR_READ_TIMEOUT
_MAC_RE = re.compile(r"^[0-9A-F]{12}$")
_COMMAND_RE = re.compile(r"^([A-Za-z_]+?)(\d*)$")


class TasmotaMode(enum.StrEnum):
    """What the device is doing."""

    AP = "ap"
    """Wi-Fi manager: open AP, web server on the AP bind."""
    STATION = "station"
    """Joined the LAN: web server on the station bind, MQTT client running."""
    OFF = "off"
    """Not reachable (stopped, rebooting, or the AP window ran out)."""


@dataclass(slots=True)
class TasmotaConfig:
    """Tasmota's settings (the subset the integration touches). Secrets stay out of repr."""

    ssid1: str = ""
    password1: str = field(default="", repr=False)
    mqtt_host: str = ""
    mqtt_port: int = 1883
    mqtt_user: str = "DVES_USER"
    mqtt_password: str = field(default="DVES_PASS", repr=False)
    topic: str = ""
    """Empty: the default `tasmota_XXXXXX` (low 3 MAC bytes)."""
    full_topic: str = "%prefix%/%topic%/"
    device_name: str = "Tasmota"
    friendly_names: list[str] = field(default_factory=lambda: ["Tasmota"])
    module: int = 1
    template: dict[str, Any] | None = None
    setoption19: int = 0
    setoption128: int | None = None
    """None: the firmware default (see REFERER_CHECK_DEFAULT_FROM)."""
    web_password: str = field(default="", repr=False)
    ota_url: str = DEFAULT_OTA_URL

    def masked(self) -> dict[str, Any]:
        """All settings as a dict, with the secrets replaced by `****` when set."""
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in {"password1", "mqtt_password", "web_password"}:
                value = MASK if value else ""
            out[item.name] = value
        return out


@dataclass(slots=True)
class _Outcome:
    """What one command did."""

    response: dict[str, Any]
    status_topic: str | None = None
    power_changes: list[tuple[str, str]] = field(default_factory=list)
    restart: bool = False
    upgrade: bool = False
    rediscover: bool = False


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    peer: str


def _version_tuple(version: str) -> tuple[int, ...]:
    number = version.split("(", 1)[0]
    parts = []
    for part in number.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def _on_off(value: int | bool) -> str:
    return "ON" if value else "OFF"


class VirtualTasmota(StartStop):
    """A Tasmota device on loopback: `async with VirtualTasmota(image, mac=...) as dev`.

    Starts in AP mode when no SSID1 is configured, else in station mode.
    Binds are (host, port) pairs; port 0 picks a free port, read back with
    `ap_port` / `station_port`.
    """

    def __init__(
        self,
        image: bytes,
        *,
        mac: str,
        module: str = "Sonoff Basic",
        relays: int = 1,
        version: str = "14.4.1(lite)",
        full_version: str | None = None,
        ap_bind: tuple[str, int] = ("127.0.0.1", 0),
        station_bind: tuple[str, int] = ("127.0.0.1", 0),
        station_ip: str | None = None,
        web_password: str = "",
        config: TasmotaConfig | None = None,
        timing: Timing = FAST,
        faults: Faults | None = None,
        mqtt_keepalive: int = 30,
        mqtt_retry_delay: float = 0.2,
        hardware: str = "ESP8266EX",
        flash_size: int = FLASH_1M,
        ota_step: float = 0.02,
    ) -> None:
        """Describe the device; nothing is opened before `start()`.

        `version` is what Status 2 reports (e.g. `14.4.1(lite)`); after a
        Tasmota OTA it becomes `full_version` (default: same number, `(tasmota)`).
        `station_ip` is the IP the device reports (discovery `ip`, Status 5,
        Referer check); it defaults to the station bind host.
        `mqtt_retry_delay` stands for Tasmota's MqttRetry (real: 10 s).
        `flash_size` (real flash chip) sets the OTA space check; `ota_step` stands for
        one tick of Tasmota's once-a-second OTA state machine (see `_upgrade`).
        """
        if not _MAC_RE.match(mac):
            raise ValueError("mac must be 12 uppercase hex digits")
        if relays < 1:
            raise ValueError("a Sonoff has at least one relay")
        self.image = image
        self.mac = mac
        self.module_name = module
        self.relay_count = relays
        self.version = version
        number = version.split("(", 1)[0]
        self.full_version = full_version or f"{number}(tasmota)"
        self.ap_bind = ap_bind
        self.station_bind = station_bind
        self.station_ip = station_ip or station_bind[0]
        self.timing = timing
        self.faults = faults if faults is not None else Faults()
        self.mqtt_keepalive = mqtt_keepalive
        self.mqtt_retry_delay = mqtt_retry_delay
        self.hardware = hardware
        self.flash_size = flash_size
        self.ota_step = ota_step
        self.ota_loader = 0
        """RtcSettings.ota_loader: 1 = the requested image did not fit, fetch -minimal."""
        self.ota_attempts: list[str] = []
        """Every URL Tasmota's OTA tried, in order (incl. the -minimal and .gz rewrites)."""
        self.config = config if config is not None else TasmotaConfig()
        if web_password:
            self.config.web_password = web_password
        if config is None:
            numbers = {name: number for number, name in MODULE_NAMES.items()}
            self.config.module = numbers.get(module, 0)  # 0: template, named `module`
        self.relays: list[bool] = [False] * relays
        self.mode = TasmotaMode.OFF
        self.commands: list[str] = []
        """Every command received (HTTP or MQTT), secrets masked."""
        self.log: list[str] = []
        """Tasmota-like log lines (e.g. the Referer denial)."""
        self.discovery_count = 0
        self.boot_count = 0
        self.ota_images: list[bytes] = []
        """Decompressed images written by Tasmota's own OTA."""
        self.upgrade_error: str | None = None
        self.mqtt_connect_failures = 0
        self._ap_server: asyncio.Server | None = None
        self._station_server: asyncio.Server | None = None
        self._ap_port = 0
        self._station_port = 0
        self._mqtt: MqttClient | None = None
        self._mqtt_task: asyncio.Task[None] | None = None
        self._ap_timer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._stopping = False
        self._pending_restart = False
        self._pending_upgrade = False
        self._ota_running = False

    def __repr__(self) -> str:
        """Short form; never shows secrets."""
        return (
            f"VirtualTasmota(mac={self.mac}, mode={self.mode}, version={self.version!r}, "
            f"config={self.config!r})"
        )

    # ----------------------------------------------------------------- identity

    @property
    def chip_id(self) -> int:
        """ESP8266 chip id: the low 3 bytes of the MAC [infer: true for Espressif MACs]."""
        return int(self.mac[6:], 16)

    @property
    def topic(self) -> str:
        """MQTT Topic; default `tasmota_%06X` of the chip id (spec §3.3)."""
        return self.config.topic or f"tasmota_{self.chip_id:06X}"

    @property
    def hostname(self) -> str:
        """`WIFI_HOSTNAME "%s-%04d"` with the topic and `chip_id & 0x1FFF`.

        The rule is Tasmota's (`ESP_getChipId() & 0x1FFF`, read from memory of the
        source, not re-read here); it reproduces both SSIDs quoted in spec §3.1
        (`tasmota_3D5E26-7718`, `tasmota_62E43F-1087`).
        """
        return f"{self.topic}-{self.chip_id & 0x1FFF:04d}"

    @property
    def ap_ssid(self) -> str:
        """The Wi-Fi manager AP's SSID (= hostname, open AP)."""
        return self.hostname

    @property
    def mqtt_client_id(self) -> str:
        """`DVES_%06X` of the chip id."""
        return f"DVES_{self.chip_id:06X}"

    @property
    def sw(self) -> str:
        """The version without the build suffix, as in discovery `sw` and the Server header.

        Tasmota publishes `TasmotaGlobal.version` (e.g. `14.4.1`) there; the
        `(lite)`/`(tasmota)` suffix is only in Status 2 `Version`.
        """
        return self.version.split("(", 1)[0]

    @property
    def build(self) -> str:
        """The build in Status 2 `Version` (`lite`, `tasmota`, `minimal`, `sensors`...)."""
        _, _, rest = self.version.partition("(")
        return rest.rstrip(")") or "tasmota"

    @property
    def free_sketch_space(self) -> int:
        """ESP.getFreeSketchSpace(): the OTA slot after the running image [infer].

        The sketch area of a 1 MB Tasmota layout ends `SKETCH_RESERVED` bytes before the
        end of flash (settings, SDK data); the running image occupies its size rounded
        up to a 4 KiB sector. The exact layout constants were not re-read.
        """
        used = -(-len(self.image) // 4096) * 4096
        return max(self.flash_size - SKETCH_RESERVED - used, 0)

    @property
    def referer_check(self) -> bool:
        """True when SetOption128 is 0 (station-mode `/cm` needs a same-host Referer)."""
        so128 = self.config.setoption128
        if so128 is None:
            so128 = 0 if _version_tuple(self.version) >= REFERER_CHECK_DEFAULT_FROM else 1
        return not so128

    @property
    def ap_port(self) -> int:
        """The AP web server's real port (0 when not in AP mode)."""
        return self._ap_port if self._ap_server else 0

    @property
    def station_port(self) -> int:
        """The station web server's real port (0 when not in station mode)."""
        return self._station_port if self._station_server else 0

    @property
    def mqtt_connected(self) -> bool:
        """True while the MQTT session is up (LWT Online published)."""
        return self._mqtt is not None and self._mqtt.connected

    @property
    def module_display_name(self) -> str:
        """Module or template name (discovery `md`)."""
        if self.config.module == 0:
            if self.config.template and isinstance(self.config.template.get("NAME"), str):
                return str(self.config.template["NAME"])
            return self.module_name
        return MODULE_NAMES.get(self.config.module, f"Module {self.config.module}")

    def full_topic(self, prefix: str) -> str:
        """FullTopic with %prefix%, %topic%, %hostname%, %id% replaced, ending in `/`."""
        value = (
            self.config.full_topic.replace("%prefix%", prefix)
            .replace("%topic%", self.topic)
            .replace("%hostname%", self.hostname)
            .replace("%id%", self.mac[-6:])  # as hatasmota utils._get_topic
        )
        return value if value.endswith("/") else value + "/"

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Power on: AP mode without SSID1, else station mode."""
        self._stopping = False
        await self._boot()

    async def stop(self) -> None:
        """Power off: close servers, drop MQTT, cancel every task."""
        self._stopping = True
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._power_down()

    async def _boot(self) -> None:
        self.boot_count += 1
        if self.config.ssid1:
            await self._start_station()
        else:
            await self._start_ap()
        self._notify()

    async def _power_down(self) -> None:
        timer, self._ap_timer = self._ap_timer, None
        mqtt_task, self._mqtt_task = self._mqtt_task, None
        for task in (timer, mqtt_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._close_server("_ap_server")
        await self._close_server("_station_server")
        self.mode = TasmotaMode.OFF
        self._notify()

    async def _close_server(self, attribute: str) -> None:
        server: asyncio.Server | None = getattr(self, attribute)
        setattr(self, attribute, None)
        if server is None:
            return
        server.close()
        server.close_clients()
        await server.wait_closed()

    async def _start_ap(self) -> None:
        # The port stays the same across reboots (the device keeps 192.168.4.1:80).
        host, port = self.ap_bind
        self._ap_server = await asyncio.start_server(self._serve_http, host, self._ap_port or port)
        self._ap_port = self._ap_server.sockets[0].getsockname()[1]
        self.mode = TasmotaMode.AP
        self._log(f"WIF: WifiManager active for 3 minutes, AP {self.ap_ssid}")
        self._ap_timer = asyncio.create_task(self._ap_window())

    async def _ap_window(self) -> None:
        # "Wi-Fi manager server is active for only 3 minutes" (spec §3.1). [unverified:
        # webserver code keeps the counter up while SSID1 is blank; we follow the docs.]
        await asyncio.sleep(self.timing.tasmota_ap_window)
        if self.mode is TasmotaMode.AP:
            self._ap_timer = None
            await self._close_server("_ap_server")
            self.mode = TasmotaMode.OFF
            self._log("WIF: WifiManager window closed")
            self._notify()

    async def _start_station(self) -> None:
        host, port = self.station_bind
        self._station_server = await asyncio.start_server(
            self._serve_http, host, self._station_port or port
        )
        self._station_port = self._station_server.sockets[0].getsockname()[1]
        self.mode = TasmotaMode.STATION
        if self.config.mqtt_host:
            self._mqtt_task = asyncio.create_task(self._mqtt_loop())
        if self.build == "minimal" and self.ota_loader == 1:
            # FIRMWARE_MINIMAL, network up with RtcSettings.ota_loader 1: OTA of OtaUrl.
            self.ota_loader = 0
            self._spawn(self._upgrade())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _schedule_restart(self) -> None:
        self._spawn(self._restart())

    async def _restart(self) -> None:
        if self._stopping:
            return
        self._log("APP: Restarting")
        await self._power_down()
        await asyncio.sleep(self.timing.reboot_delay)
        if not self._stopping:
            await self._boot()

    def _log(self, line: str) -> None:
        self.log.append(line)
        _LOGGER.debug("tasmota %s: %s", self.mac, line)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -------------------------------------------------------------------- waits

    async def wait_until(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Wait until `predicate()` holds (re-checked on every state change)."""
        async with asyncio.timeout(within):
            while not predicate():
                await self._changed.wait()

    async def wait_mode(self, mode: TasmotaMode, within: float = 5.0) -> None:
        """Wait for a mode (AP / STATION / OFF)."""
        await self.wait_until(lambda: self.mode is mode, within)

    async def wait_mqtt_online(self, within: float = 5.0) -> None:
        """Wait until the device has published LWT Online."""
        await self.wait_until(lambda: self.mqtt_connected, within)

    async def wait_discovery(self, count: int = 1, within: float = 5.0) -> None:
        """Wait until discovery has been published `count` times in total."""
        await self.wait_until(lambda: self.discovery_count >= count, within)

    # --------------------------------------------------------------------- HTTP

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request per connection, then close (like ESP8266WebServer)."""
        try:
            request = await self._read_request(reader, writer)
            if request is None:
                return
            reply = await self._route(request)
            if reply is None:  # Tasmota sends nothing (e.g. Referer denied)
                return
            status, content_type, body = reply
            writer.write(self._response_bytes(status, content_type, body))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._after_request()

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Request | None:
        async with asyncio.timeout(self.timing.http_timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            body = await reader.readexactly(length) if length else b""
        parts = urlsplit(target)
        query = parts.query
        if method == "POST" and body:
            query = f"{query}&{body.decode()}" if query else body.decode()
        params = {key: values[0] for key, values in parse_qs(query, keep_blank_values=True).items()}
        peer = writer.get_extra_info("peername")
        return _Request(method, parts.path, params, headers, str(peer[0]) if peer else "")

    def _response_bytes(self, status: int, content_type: str, body: bytes) -> bytes:
        reason = {200: "OK", 401: "Unauthorized", 404: "Not Found"}.get(status, "OK")
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            # WSHeaderSend(): "Tasmota/%s (%s)" with TasmotaGlobal.version and the hardware.
            f"Server: Tasmota/{self.sw} ({self.hardware})\r\n"
            "Cache-Control: no-cache, no-store, must-revalidate\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode() + body

    async def _route(self, request: _Request) -> tuple[int, str, bytes] | None:
        if request.path == "/cm":
            return await self._handle_cm(request)
        if request.path == "/wi" and self.mode is TasmotaMode.AP:
            return self._handle_wi(request)
        if request.path == "/":
            html = f"<html><body><h2>{self.config.device_name}</h2>{self.ap_ssid}</body></html>"
            return 200, "text/html", html.encode()
        return 404, "text/plain", f"File Not Found\n\nURI: {request.path}\n".encode()

    def _json(self, status: int, payload: dict[str, Any]) -> tuple[int, str, bytes]:
        return status, "application/json", json.dumps(payload, separators=(",", ":")).encode()

    def _authorized(self, request: _Request) -> bool:
        password = self.config.web_password
        if not password:
            return True
        if (
            request.params.get("user") == WEB_USERNAME
            and request.params.get("password") == password
        ):
            return True
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            with contextlib.suppress(ValueError, binascii.Error):
                user, _, given = base64.b64decode(auth[6:]).decode().partition(":")
                return user == WEB_USERNAME and given == password
        return False

    def _referer_allowed(self, request: _Request) -> bool:
        """HttpCheckPriviledgedAccess(): skipped in manager (AP) mode or with SO128 1.

        With the check on, a Referer must contain the hostname or IP at index 7
        (`http://<host>`); a request without Referer is denied too (source reading).
        """
        if self.mode is TasmotaMode.AP or not self.referer_check:
            return True
        referer = request.headers.get("referer", "")
        upper = referer.upper()
        if referer and (upper.find(self.hostname.upper()) == 7 or upper.find(self.station_ip) == 7):
            return True
        self._log(
            f"HTP: Referer '{referer}' denied. Use 'SO128 1' for HTTP API commands. "
            "'Webpassword' is recommended."
        )
        return False

    async def _handle_cm(self, request: _Request) -> tuple[int, str, bytes] | None:
        if not self._referer_allowed(request):
            return None  # the handler returns without sending: the client sees an empty reply
        if not self._authorized(request):
            self._log("HTP: Bad userid and/or password")
            return self._json(401, {"WARNING": "Need user=<username>&password=<password>"})
        command = request.params.get("cmnd", "")
        if not command:
            return self._json(200, {"WARNING": "Enter command cmnd="})
        return self._json(200, await self._run_commands(command))

    def _handle_wi(self, request: _Request) -> tuple[int, str, bytes]:
        if "save" not in request.params:
            form = "<form action='wi' method='get'><input id='s1'><input id='p1'></form>"
            return 200, "text/html", form.encode()
        ssid = request.params.get("s1", "")
        password = request.params.get("p1", "")
        self.commands.append(f"WebWifi s1={ssid} p1={MASK if password else ''}")
        if ssid:
            self.config.ssid1 = ssid
            if password != MASK:  # the form shows stored passwords as ****
                self.config.password1 = password
            self._pending_restart = True
        return 200, "text/html", b"<html><body>Saving configuration... Restarting</body></html>"

    def _after_request(self) -> None:
        """Restarts and OTA start after the reply is out, as on the device."""
        if self._pending_upgrade:
            self._pending_upgrade = False
            self._spawn(self._upgrade())
        if self._pending_restart:
            self._pending_restart = False
            self._schedule_restart()

    # ----------------------------------------------------------------- commands

    async def execute(self, line: str) -> dict[str, Any]:
        """Run a command line as if it came over MQTT; restarts / OTA it asks for follow.

        Returns the merged JSON response (Backlog expanded).
        """
        response = await self._run_commands(line)
        self._after_request()
        return response

    async def _run_commands(self, line: str) -> dict[str, Any]:
        """Run a command line; restarts and OTA are only marked pending.

        Results also go to MQTT (`stat/<topic>/RESULT`, `.../POWERn`, `.../STATUSn`)
        while connected. The HTTP path sends its reply before the restart.
        """
        merged: dict[str, Any] = {}
        for command in self._expand_backlog(line):
            outcome = self._execute_one(command)
            merged.update(outcome.response)
            await self._publish_outcome(outcome)
            self._pending_restart |= outcome.restart
            self._pending_upgrade |= outcome.upgrade
            if outcome.rediscover:
                self._spawn(self._publish_discovery())
        return merged

    @staticmethod
    def _expand_backlog(line: str) -> list[str]:
        line = line.strip()
        head, _, rest = line.partition(" ")
        if head.lower() in {"backlog", "backlog0"}:
            # Real devices run Backlog entries 200 ms apart (SetOption34); an HTTP
            # reply holds only what ran before it was sent [infer]. We run all at once.
            items = [item.strip() for item in rest.split(";") if item.strip()]
            return items[:MAX_BACKLOG]
        return [line] if line else []

    def _record(self, name: str, index: str, argument: str) -> None:
        shown = MASK if argument and name.upper() in SECRET_COMMANDS else argument
        self.commands.append(f"{name}{index} {shown}".strip())

    def _execute_one(self, command: str) -> _Outcome:
        word, _, argument = command.partition(" ")
        argument = argument.strip()
        match = _COMMAND_RE.match(word)
        if match is None:
            self.commands.append(word)
            return _Outcome({"Command": "Unknown"})
        name, index = match.group(1), match.group(2)
        self._record(name, index, argument)
        handler = self._handlers().get(name.upper())
        if handler is None:
            return _Outcome({"Command": "Unknown"})
        return handler(name, index, argument)

    def _handlers(self) -> dict[str, Callable[[str, str, str], _Outcome]]:
        return {
            "SSID": self._cmd_ssid,
            "PASSWORD": self._cmd_password,
            "MQTTHOST": self._cmd_text_setting,
            "MQTTUSER": self._cmd_text_setting,
            "MQTTPASSWORD": self._cmd_text_setting,
            "TOPIC": self._cmd_text_setting,
            "FULLTOPIC": self._cmd_text_setting,
            "MQTTPORT": self._cmd_mqtt_port,
            "DEVICENAME": self._cmd_device_name,
            "FRIENDLYNAME": self._cmd_friendly_name,
            "MODULE": self._cmd_module,
            "TEMPLATE": self._cmd_template,
            "SETOPTION": self._cmd_setoption,
            "WEBPASSWORD": self._cmd_web_password,
            "POWER": self._cmd_power,
            "STATUS": self._cmd_status,
            "OTAURL": self._cmd_ota_url,
            "UPGRADE": self._cmd_upgrade,
            "RESET": self._cmd_reset,
            "RESTART": self._cmd_restart,
        }

    def _cmd_ssid(self, name: str, index: str, argument: str) -> _Outcome:
        if index not in {"", "1", "2"}:
            return _Outcome({"Command": "Unknown"})
        key = f"SSId{index or '1'}"
        if index in {"", "1"} and argument:
            self.config.ssid1 = argument
            return _Outcome({key: argument}, restart=True)
        return _Outcome({key: self.config.ssid1 if index in {"", "1"} else ""})

    def _cmd_password(self, name: str, index: str, argument: str) -> _Outcome:
        if index not in {"", "1", "2"}:
            return _Outcome({"Command": "Unknown"})
        key = f"Password{index or '1'}"
        if index in {"", "1"} and argument:
            self.config.password1 = argument
            return _Outcome({key: MASK}, restart=True)
        return _Outcome({key: MASK})

    def _cmd_text_setting(self, name: str, index: str, argument: str) -> _Outcome:
        attribute = {
            "MQTTHOST": ("mqtt_host", "MqttHost"),
            "MQTTUSER": ("mqtt_user", "MqttUser"),
            "MQTTPASSWORD": ("mqtt_password", "MqttPassword"),
            "TOPIC": ("topic", "Topic"),
            "FULLTOPIC": ("full_topic", "FullTopic"),
        }[name.upper()]
        if index:
            return _Outcome({"Command": "Unknown"})
        secret = attribute[0] == "mqtt_password"
        if argument:
            setattr(self.config, attribute[0], argument)
            shown = MASK if secret else argument
            return _Outcome({attribute[1]: shown}, restart=True)
        value = getattr(self.config, attribute[0])
        if attribute[0] == "topic":
            value = self.topic
        return _Outcome({attribute[1]: MASK if secret else value})

    def _cmd_mqtt_port(self, name: str, index: str, argument: str) -> _Outcome:
        if argument:
            if not argument.isdigit():
                return _Outcome({"MqttPort": self.config.mqtt_port})
            self.config.mqtt_port = int(argument)
            return _Outcome({"MqttPort": self.config.mqtt_port}, restart=True)
        return _Outcome({"MqttPort": self.config.mqtt_port})

    def _cmd_device_name(self, name: str, index: str, argument: str) -> _Outcome:
        if argument:
            self.config.device_name = argument
        return _Outcome({"DeviceName": self.config.device_name}, rediscover=bool(argument))

    def _cmd_friendly_name(self, name: str, index: str, argument: str) -> _Outcome:
        slot = int(index or "1")
        if not 1 <= slot <= MAX_FRIENDLYNAMES:
            return _Outcome({"Command": "Unknown"})
        names = self.config.friendly_names
        while len(names) < slot:
            names.append(f"Tasmota{len(names) + 1}")
        if argument:
            names[slot - 1] = argument
        return _Outcome({f"FriendlyName{slot}": names[slot - 1]}, rediscover=bool(argument))

    def _cmd_module(self, name: str, index: str, argument: str) -> _Outcome:
        if argument:
            if not argument.isdigit():
                return _Outcome({"Command": "Unknown"})
            self.config.module = int(argument)
            outcome = _Outcome({}, restart=True)
        else:
            outcome = _Outcome({})
        outcome.response = {"Module": {str(self.config.module): self.module_display_name}}
        return outcome

    def _cmd_template(self, name: str, index: str, argument: str) -> _Outcome:
        if argument:
            try:
                template = json.loads(argument)
            except ValueError:
                return _Outcome({"Template": "Invalid JSON"})  # [infer] exact text unverified
            if not isinstance(template, dict):
                return _Outcome({"Template": "Invalid JSON"})
            self.config.template = template
        template = self.config.template or {"NAME": self.module_name, "GPIO": [], "FLAG": 0}
        return _Outcome(dict(template))

    def _cmd_setoption(self, name: str, index: str, argument: str) -> _Outcome:
        if index not in {"19", "128"}:
            # Other SetOptions are accepted and echoed OFF (not modelled).
            return _Outcome({f"SetOption{index}": "OFF"} if index else {"Command": "Unknown"})
        if argument:
            value = {"on": 1, "1": 1, "off": 0, "0": 0}.get(argument.lower())
            if value is None:
                return _Outcome({"Command": "Unknown"})
            if index == "19":
                self.config.setoption19 = value
                return _Outcome({"SetOption19": _on_off(value)}, rediscover=True)
            self.config.setoption128 = value
        current = self.config.setoption19 if index == "19" else int(not self.referer_check)
        return _Outcome({f"SetOption{index}": _on_off(current)})

    def _cmd_web_password(self, name: str, index: str, argument: str) -> _Outcome:
        if argument:
            self.config.web_password = "" if argument == "0" else argument
        # Tasmota echoes the new password unless `WebPassword2`; we never echo it.
        return _Outcome({"WebPassword": MASK})

    def _power_key(self, slot: int, index: str) -> str:
        return "POWER" if self.relay_count == 1 and index in {"", "1"} else f"POWER{slot}"

    def _cmd_power(self, name: str, index: str, argument: str) -> _Outcome:
        slot = int(index or "1")
        if index == "0" or slot > self.relay_count:
            return _Outcome({"Command": "Unknown"})
        key = self._power_key(slot, index)
        action = argument.upper()
        current = self.relays[slot - 1]
        if action in {"ON", "1"}:
            new = True
        elif action in {"OFF", "0"}:
            new = False
        elif action in {"TOGGLE", "2"}:
            new = not current
        elif action == "":
            return _Outcome({key: _on_off(current)})
        else:
            return _Outcome({"Command": "Unknown"})
        self.relays[slot - 1] = new
        self._notify()
        return _Outcome({key: _on_off(new)}, power_changes=[(key, _on_off(new))])

    def _cmd_ota_url(self, name: str, index: str, argument: str) -> _Outcome:
        if argument:
            self.config.ota_url = DEFAULT_OTA_URL if argument == "1" else argument
        return _Outcome({"OtaUrl": self.config.ota_url})

    def _cmd_upgrade(self, name: str, index: str, argument: str) -> _Outcome:
        """CmndUpgrade(): only `1` (or a newer version number) starts the OTA."""
        if argument == "1" or (len(argument) >= 3 and self._newer(argument)):
            if self._ota_running:  # ota_state_flag already set: the request is the same
                return _Outcome({"Upgrade": f"Version {self.sw} from {self.config.ota_url}"})
            return _Outcome(
                {"Upgrade": f"Version {self.sw} from {self.config.ota_url}"}, upgrade=True
            )
        return _Outcome({"Upgrade": f"1 or >{self.sw} to upgrade"})  # D_JSON_ONE_OR_GT

    def _newer(self, version: str) -> bool:
        return _version_tuple(version) > _version_tuple(self.version)

    def _cmd_reset(self, name: str, index: str, argument: str) -> _Outcome:
        level = int(argument) if argument.isdigit() else 0
        if level not in {1, 2, 3, 4, 5, 6}:
            return _Outcome({"Reset": "1 to reset"})
        old = self.config
        fresh = TasmotaConfig()
        if level >= 4:  # [infer] 4/5 keep Wi-Fi, 6 also keeps MQTT (spec §3.3 Cleanup)
            fresh.ssid1, fresh.password1 = old.ssid1, old.password1
        if level == 6:
            fresh.mqtt_host, fresh.mqtt_port = old.mqtt_host, old.mqtt_port
            fresh.mqtt_user, fresh.mqtt_password = old.mqtt_user, old.mqtt_password
        self.config = fresh
        return _Outcome({"Reset": "Reset and Restarting"}, restart=True)

    def _cmd_restart(self, name: str, index: str, argument: str) -> _Outcome:
        if argument == "1":
            return _Outcome({"Restart": "Restarting"}, restart=True)
        return _Outcome({"Restart": "1 to restart"})

    # ------------------------------------------------------------------- status

    def _status_section(self, number: int) -> dict[str, Any]:
        if number == 2:
            return {
                "StatusFWR": {
                    "Version": self.version,
                    "BuildDateTime": "2025-01-01T00:00:00",
                    "Boot": 31,
                    "Core": "2_7_8",
                    "SDK": "2.2.2-dev(38a443e)",
                    "CpuFrequency": 80,
                    "Hardware": self.hardware,
                    "CR": "372/699",
                }
            }
        if number == 5:
            mac = ":".join(self.mac[i : i + 2] for i in range(0, 12, 2))
            return {
                "StatusNET": {
                    "Hostname": self.hostname,
                    "IPAddress": (
                        self.station_ip if self.mode is TasmotaMode.STATION else "0.0.0.0"  # noqa: S104
                    ),
                    "Mac": mac,
                    "Webserver": 2,
                    "HTTP_API": int(not self.referer_check),
                    "WifiConfig": 4,
                }
            }
        if number == 6:
            return {
                "StatusMQT": {
                    "MqttHost": self.config.mqtt_host,
                    "MqttPort": self.config.mqtt_port,
                    "MqttClientMask": "DVES_%06X",
                    "MqttClient": self.mqtt_client_id,
                    "MqttUser": self.config.mqtt_user,
                    "MqttCount": self.boot_count,
                    "MAX_PACKET_SIZE": 1200,
                    "KEEPALIVE": self.mqtt_keepalive,
                }
            }
        return {
            "Status": {
                "Module": self.config.module,
                "DeviceName": self.config.device_name,
                "FriendlyName": self.config.friendly_names[: self.relay_count],
                "Topic": self.topic,
                "Power": sum(1 << i for i, on in enumerate(self.relays) if on),
            }
        }

    def _cmd_status(self, name: str, index: str, argument: str) -> _Outcome:
        if not argument:
            return _Outcome(self._status_section(-1), status_topic="STATUS")
        if not argument.isdigit() or int(argument) not in {0, 2, 5, 6}:
            return _Outcome({"Command": "Unknown"})  # other sections not modelled
        number = int(argument)
        if number == 0:
            merged: dict[str, Any] = {}
            for section in (-1, 2, 5, 6):
                merged.update(self._status_section(section))
            return _Outcome(merged, status_topic="STATUS0")
        return _Outcome(self._status_section(number), status_topic=f"STATUS{number}")

    # --------------------------------------------------------------------- MQTT

    async def _publish(self, topic: str, payload: str, *, retain: bool = False) -> None:
        client = self._mqtt
        if client is None or not client.connected:
            return
        with contextlib.suppress(MqttError):
            await client.publish(topic, payload, retain=retain)

    async def _publish_outcome(self, outcome: _Outcome) -> None:
        stat = self.full_topic("stat")
        payload = json.dumps(outcome.response, separators=(",", ":"))
        await self._publish(stat + (outcome.status_topic or "RESULT"), payload)
        for key, value in outcome.power_changes:
            await self._publish(stat + key, value)

    async def _mqtt_loop(self) -> None:
        """Connect, serve, reconnect after `mqtt_retry_delay` until powered down."""
        while True:
            if Fault.BROKER_UNREACHABLE in self.faults:
                self.mqtt_connect_failures += 1
                self._log("MQT: Connect failed (broker unreachable)")
                self._notify()
                await asyncio.sleep(self.mqtt_retry_delay)
                continue
            lwt = self.full_topic("tele") + "LWT"
            client = MqttClient(
                self.config.mqtt_host,
                self.config.mqtt_port,
                client_id=self.mqtt_client_id,
                keepalive=self.mqtt_keepalive,
                username=self.config.mqtt_user or None,
                password=self.config.mqtt_password or None,
                will=Will(lwt, b"Offline", retain=True),
            )
            try:
                await client.connect()
            except MqttConnectError as err:
                self.mqtt_connect_failures += 1
                self._log(f"MQT: Connect failed to {self.config.mqtt_host}: {err}")
                self._notify()
                await asyncio.sleep(self.mqtt_retry_delay)
                continue
            try:
                await self._mqtt_session(client, lwt)
            except MqttError as err:
                self._log(f"MQT: session ended: {err}")
            finally:
                # A reboot drops the TCP connection without DISCONNECT: the broker
                # then publishes the will (LWT Offline).
                self._mqtt = None
                await client.abort()
                self._notify()
            await asyncio.sleep(self.mqtt_retry_delay)

    async def _mqtt_session(self, client: MqttClient, lwt: str) -> None:
        await client.publish(lwt, "Online", retain=True)
        await client.subscribe(self.full_topic("cmnd") + "#", self._on_command)
        self._mqtt = client
        self._log(f"MQT: Connected to {self.config.mqtt_host}:{self.config.mqtt_port}")
        self._notify()
        # Discovery ~10 s after MQTT init and on every reconnect (spec §3.5).
        await asyncio.sleep(self.timing.discovery_delay)
        await self._publish_discovery()
        await client.wait_closed()

    async def _on_command(self, message: MqttMessage) -> None:
        command = message.topic.rsplit("/", 1)[-1]
        payload = message.payload.decode(errors="replace").strip()
        await self.execute(f"{command} {payload}".strip())

    def discovery_config(self) -> dict[str, Any]:
        """The retained `tasmota/discovery/<MAC>/config` payload (spec §3.5, TasDiscoverMessage)."""
        names: list[str | None] = [
            self.config.friendly_names[i] if i < len(self.config.friendly_names) else None
            for i in range(MAX_FRIENDLYNAMES)
        ]
        names = [name if i < self.relay_count else None for i, name in enumerate(names)]
        return {
            "ip": self.station_ip,
            "dn": self.config.device_name,
            "fn": names,
            "hn": self.hostname,
            "mac": self.mac,
            "md": self.module_display_name,
            "ty": 0,
            "if": 0,
            "cam": 0,
            "ofln": "Offline",
            "onln": "Online",
            "state": ["OFF", "ON", "TOGGLE", "HOLD"],
            "sw": self.sw,
            "t": self.topic,
            "ft": self.config.full_topic,
            "tp": ["cmnd", "stat", "tele"],
            "rl": [1 if i < self.relay_count else 0 for i in range(MAX_RELAYS_SET)],
            "swc": [-1] * MAX_SWITCHES_SET,
            "swn": [None] * MAX_SWITCHES_SET,
            "btn": [0] * MAX_KEYS_SET,
            "so": dict.fromkeys(
                ("4", "11", "13", "17", "20", "30", "68", "73", "82", "114", "117"), 0
            ),
            "lk": 0,
            "lt_st": 0,
            "bat": 0,
            "dslp": 0,
            "sho": [0] * MAX_SHUTTERS,
            "sht": [[0, 0, 0]] * MAX_SHUTTERS,
            "ver": 1,
        }

    def discovery_sensors(self) -> dict[str, Any]:
        """The retained `.../sensors` payload: `{"sn": <SENSOR JSON>, "ver": 1}`."""
        return {"sn": {"Time": "1970-01-01T00:00:00"}, "ver": 1}

    async def _publish_discovery(self) -> None:
        """TasDiscovery(): SetOption19 1 clears the retained topics instead."""
        client = self._mqtt
        if client is None or not client.connected:
            return
        if self.build == "minimal":
            return  # tasmota-minimal is built without USE_TASMOTA_DISCOVERY
        base = f"tasmota/discovery/{self.mac}/"
        if self.config.setoption19:
            config_payload = sensors_payload = ""
        else:
            config_payload = json.dumps(self.discovery_config(), separators=(",", ":"))
            sensors_payload = json.dumps(self.discovery_sensors(), separators=(",", ":"))
        try:
            await client.publish(base + "config", config_payload, retain=True)
            await client.publish(base + "sensors", sensors_payload, retain=True)
        except MqttError:
            return
        self.discovery_count += 1
        self._notify()

    # ---------------------------------------------------------------------- OTA

    async def _upgrade(self) -> None:
        """Tasmota's own OTA: the ota_state_flag loop of support_tasmota.ino (current source).

        One attempt per tick (`ota_step` stands for Tasmota's 1 s), up to OTA_ATTEMPTS - 1:
        - a failed attempt is retried, silently (only the log says why);
        - "Not Enough space" / "New Binary Does Not Fit Flash Size" set RtcSettings.ota_loader
          and the next attempts fetch `<name>-minimal<ext>` (ESP8266, not in minimal itself);
        - from the 6th attempt `.gz` is appended, or, for a `.gz` URL, that attempt is the last;
        - the result goes to `stat/<topic>/UPGRADE`: `Successful. Restarting` (then the
          restart) or `Failed <ESP8266httpUpdate error text>` of the last attempt.
        The minimal build boots with ota_loader set and fetches OtaUrl itself (no discovery).
        """
        if self._ota_running:
            return
        self._ota_running = True
        try:
            restart = await self._ota_cycle()
        finally:
            self._ota_running = False
        if restart:
            await self._restart()

    async def _ota_cycle(self) -> bool:
        await asyncio.sleep(self.ota_step * 2)  # ota_state_flag 3 -> 2 -> 1
        self.ota_loader = 0  # "Try requested image first"
        counter = OTA_ATTEMPTS
        error = ""
        success: tuple[bytes, str] | None = None
        while True:
            await asyncio.sleep(self.ota_step)
            counter -= 1
            if not counter:
                break
            url = self.config.ota_url
            if self.ota_loader and self.build != "minimal":
                url = _minimal_url(url)
            if counter < OTA_ATTEMPTS // 2:
                if ".gz" in url.lower():
                    counter = 1
                else:
                    url += ".gz"
            self.ota_attempts.append(url)
            self._notify()
            self._log(f"UPG: {url} {self.sw}({self.build})")
            try:
                image = await self._download_image(url)
            except _OtaFailedError as err:
                error = str(err)
                self._log(f"UPG: Error {error}")
                if err.too_big and self.build != "minimal":
                    self.ota_loader = 1  # Try minimal image next
                self._notify()
                continue
            success = (image, url)
            break
        await asyncio.sleep(self.ota_step * 2)  # ota_state_flag 92 -> 90
        stat = self.full_topic("stat") + "UPGRADE"
        if success is None:
            self.upgrade_error = error
            await self._publish(stat, json.dumps({"Upgrade": f"Failed {error}"}))
            self._notify()
            return False
        image, url = success
        self.ota_images.append(image)
        self.image = image
        self.upgrade_error = None
        self.version = f"{self.full_version.split('(', 1)[0]}({_build_of(url, self.full_version)})"
        await self._publish(stat, json.dumps({"Upgrade": "Successful. Restarting"}))
        self._log(f"UPG: Successful, {len(image)} bytes. Restarting")
        return True

    async def _download_image(self, url: str) -> bytes:
        """ESP8266httpUpdate::handleUpdate() as far as its checks go."""
        if not url.lower().startswith("http://"):
            # The ESP8266 HTTPClient has no TLS here: it cannot even connect.
            raise _OtaFailedError(OTA_CONNECTION_FAILED)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=5)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
                session.get(url, headers={"x-ESP8266-version": self.version}) as response,
            ):
                if response.status != 200:
                    raise _OtaFailedError(
                        {404: OTA_NOT_FOUND, 403: OTA_FORBIDDEN, 401: OTA_UNAUTHORIZED}.get(
                            response.status, OTA_WRONG_CODE
                        )
                    )
                length = response.content_length
                if not length:
                    raise _OtaFailedError(OTA_NO_SIZE)
                if length > self.free_sketch_space:
                    raise _OtaFailedError(OTA_TOO_LESS_SPACE, too_big=True)
                data = await response.read()
        except aiohttp.ClientConnectionError as err:
            if isinstance(err, aiohttp.ServerTimeoutError):
                raise _OtaFailedError(OTA_READ_TIMEOUT) from err
            raise _OtaFailedError(OTA_CONNECTION_FAILED) from err
        except TimeoutError as err:
            raise _OtaFailedError(OTA_READ_TIMEOUT) from err
        if not data or data[0] not in (0xE9, 0x1F):
            raise _OtaFailedError(OTA_BAD_HEADER)
        # Written as is; eboot inflates a .gz at the next boot. We inflate it here to keep
        # the image the device then runs (a broken gzip would brick it: reported as a
        # header failure instead [infer]).
        try:
            image = self._inflate(data)
        except ValueError as err:
            raise _OtaFailedError(OTA_BAD_HEADER) from err
        if not image or image[0] != 0xE9:
            raise _OtaFailedError(OTA_BAD_HEADER)
        return image

    @staticmethod
    def _inflate(data: bytes) -> bytes:
        if data[:2] == b"\x1f\x8b":
            try:
                return gzip.decompress(data)
            except (OSError, EOFError, zlib.error) as err:
                raise ValueError(f"bad gzip: {err}") from err
        return data


class _OtaFailedError(Exception):
    """One failed OTA attempt; the message is ESP8266httpUpdate's error text."""

    def __init__(self, text: str, *, too_big: bool = False) -> None:
        super().__init__(text)
        self.too_big = too_big


def _minimal_url(url: str) -> str:
    """support_tasmota.ino: `<path>/<name>[-XX]<ext>` -> `<path>/<name>-minimal<ext>`.

    The extension starts at the first `.` of the file name; a `-` suffix (tasmota-DE,
    tasmota-sensors) is dropped.
    """
    slash = url.rfind("/")
    head, name = url[: slash + 1], url[slash + 1 :]
    dot = name.find(".")
    stem, ext = (name, "") if dot < 0 else (name[:dot], name[dot:])
    dash = stem.rfind("-")
    if dash >= 0:
        stem = stem[:dash]
    return f"{head}{stem}-minimal{ext}"


def _build_of(url: str, fallback: str) -> str:
    """The build an OTA URL's file name stands for (emulator convention, not Tasmota's).

    `tasmota-minimal.bin.gz` -> minimal, `tasmota-sensors...` -> sensors, `tasmota.bin.gz`
    and localised `tasmota-DE...` -> tasmota; other names: the suffix of `fallback`.
    """
    name = url.rsplit("/", 1)[-1].split(".", 1)[0]
    if name == "tasmota" or re.fullmatch(r"tasmota-[A-Z]{2}", name):
        return "tasmota"
    if name.startswith("tasmota-"):
        return name.removeprefix("tasmota-")
    _, _, rest = fallback.partition("(")
    return rest.rstrip(")") or "tasmota"
