"""A small aiohttp stand-in for Tasmota's `/cm` HTTP API on 127.0.0.1.

It decodes `cmnd` the way Tasmota's web server does (percent-decoding, `+` as a
space), splits a Backlog on `;`, applies the settings it knows, and answers Status
queries from that state. Auth and Referer checks follow spec §3.2.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
import contextlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(slots=True)
class Seen:
    """One `/cm` request as received."""

    raw_query: str
    headers: dict[str, str]
    cmnd: str
    commands: list[str]


@dataclass(slots=True)
class TasmotaState:
    """The settings the fake keeps."""

    mqtt_host: str = ""
    mqtt_port: int = 1883
    mqtt_user: str = "DVES_USER"
    topic: str = "tasmota_AABBCC"
    device_name: str = "Tasmota"
    friendly_name: str = "Tasmota"
    module: int = 1
    other: dict[str, str] = field(default_factory=dict)


class FakeTasmota:
    """Serve `/cm` on a free 127.0.0.1 port."""

    def __init__(
        self,
        *,
        web_password: str | None = None,
        auth_style: str = "json",
        referer_check: bool = True,
        ignore: frozenset[str] = frozenset(),
    ) -> None:
        self.web_password = web_password
        self.auth_style = auth_style  # "json" (200 + WARNING) or "401"
        self.referer_check = referer_check
        self.ignore = {c.lower() for c in ignore}  # commands that silently do not take
        self.state = TasmotaState()
        self.seen: list[Seen] = []
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _apply(self, command: str) -> dict[str, Any]:
        name, _, arg = command.strip().partition(" ")
        key = name.lower()
        if key in self.ignore:
            return {name: "ignored"}
        s = self.state
        if key == "mqtthost":
            s.mqtt_host = arg
        elif key == "mqttport":
            s.mqtt_port = int(arg)
        elif key == "mqttuser":
            s.mqtt_user = arg
        elif key == "topic":
            s.topic = arg
        elif key == "devicename":
            s.device_name = arg
        elif key == "friendlyname1":
            s.friendly_name = arg
        elif key == "module":
            s.module = int(arg)
        elif key in ("ssid1", "password1", "mqttpassword", "template", "setoption19", "power"):
            s.other[key] = arg
        elif key == "status":
            return self._status(arg)
        else:
            return {"Command": "Unknown"}
        return {name: arg}

    def _status(self, arg: str) -> dict[str, Any]:
        s = self.state
        if arg == "6":
            return {
                "StatusMQT": {
                    "MqttHost": s.mqtt_host,
                    "MqttPort": s.mqtt_port,
                    "MqttClient": "DVES_AABBCC",
                    "MqttUser": s.mqtt_user,
                }
            }
        if arg == "5":
            return {"StatusNET": {"Hostname": "tasmota-AABBCC-3004", "Mac": "D8:F1:5B:AA:BB:CC"}}
        return {
            "Status": {
                "Module": s.module,
                "DeviceName": s.device_name,
                "FriendlyName": [s.friendly_name],
                "Topic": s.topic,
            }
        }

    async def _cm(self, request: web.Request) -> web.Response:
        cmnd = request.query.get("cmnd", "")
        if cmnd.lower().startswith("backlog "):
            commands = [c for c in cmnd[8:].split(";") if c.strip()]
        else:
            commands = [cmnd]
        self.seen.append(
            Seen(
                raw_query=request.raw_path.partition("?")[2],
                headers={k.lower(): v for k, v in request.headers.items()},
                cmnd=cmnd,
                commands=commands,
            )
        )
        referer = request.headers.get("Referer")
        if self.referer_check and referer and request.host not in referer:
            return web.Response(status=403, text=f"Referer '{referer}' denied. Use 'SO128 1'")
        if self.web_password and (
            request.query.get("user") != "admin"
            or request.query.get("password") != self.web_password
        ):
            if self.auth_style == "401":
                return web.Response(status=401, text="401: Unauthorized")
            return web.json_response({"WARNING": "Need user=<username>&password=<password>"})
        if len(commands) > 1:
            for command in commands:
                self._apply(command)
            return web.Response(text="")
        return web.json_response(self._apply(commands[0]), headers={"Server": "Tasmota/14.2.0"})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeTasmota]:
        app = web.Application()
        app.router.add_get("/cm", self._cm)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        try:
            yield self
        finally:
            await runner.cleanup()
