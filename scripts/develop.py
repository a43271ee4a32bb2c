"""The main job: a real Home Assistant with sonoff_ota and virtual Sonoffs, all on 127.0.0.1.

Run through `scripts/develop`, which picks the Python and the venv. This script:
- starts a Mosquitto broker (Debian package) on a free port;
- serves synthetic firmware images (never real firmware: they are labelled as
  test images in the UI) from a local HTTP server: the eWeLink-side images, and
  synthetic full and minimal Tasmota builds for the lite → full upgrade, with a
  stand-in for GitHub's "latest Tasmota release" answer;
- starts two virtual Sonoffs: one waiting in setup mode (eWeLink 2.0.4) and one
  in DIY mode (eWeLink 3.6.0); each boots a virtual Tasmota once flashed;
- writes a config dir under .develop/ (gitignored) whose `sonoff_ota:` settings
  point the integration at those loopback ports;
- starts Home Assistant as a subprocess, creates the owner account through HA's
  onboarding API, sets up HA's MQTT (against the broker) and Tasmota entries;
- prints the URL, the login and one line per device, and waits for Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field
import gzip
import hashlib
import json
import os
from pathlib import Path
import signal
import socket
import sys
from typing import Any

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from virtual_sonoff.diy import DiyConfig  # noqa: E402
from virtual_sonoff.images import (  # noqa: E402
    intermediate_user1,
    intermediate_user2,
    make_image,
    tasmota_lite,
)
from virtual_sonoff.lifecycle import TasmotaPlan, VirtualSonoff  # noqa: E402
from virtual_sonoff.mosquitto import MosquittoBroker  # noqa: E402
from virtual_sonoff.profile import timing_profile  # noqa: E402
from virtual_sonoff.setup_mode import SetupModeConfig  # noqa: E402

# Slow enough to watch each stage and its progress bar, far quicker than a real device.
DEMO_TIMING = timing_profile(
    "fast", chunk_delay=0.05, intermediate_boot_delay=1.0, reboot_delay=0.5
)

DEV_USER = "dev"
DEV_PASSWORD = "sonoff-ota-dev"  # loopback-only demo account, printed on start
HOST = "127.0.0.1"
SETUP_DEVICEID = "10000b77c1"
DIY_DEVICEID = "1000e4c17c"
TASMOTA_RELEASE = "14.4.1"
"""What the demo's stand-in for GitHub's latest release names (the virtual Tasmota's number)."""
OTA_CHUNK = 16 * 1024
OTA_CHUNK_DELAY = 0.1  # seconds per chunk: the full image takes about 4 s

CONFIGURATION_YAML = """\
# Written by scripts/develop. Everything listens on 127.0.0.1 only.
homeassistant:
  name: Sonoff OTA demo
  time_zone: UTC
  unit_system: metric
  internal_url: "http://127.0.0.1:{port}"
frontend:
config:
http:
  server_host: 127.0.0.1
  server_port: {port}
logger:
  default: warning
  logs:
    custom_components.sonoff_ota: debug
    homeassistant.components.tasmota: info
sonoff_ota:
{sonoff_ota}
"""


def free_port() -> int:
    """A port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(slots=True)
class Ports:
    """Every loopback port the demo uses, chosen before HA starts."""

    setup_ap: int = field(default_factory=free_port)
    finalstage: int = field(default_factory=free_port)
    tls: int = field(default_factory=free_port)
    tasmota_ap: int = field(default_factory=free_port)
    diy: int = field(default_factory=free_port)
    firmware: int = field(default_factory=free_port)


@dataclass(slots=True)
class DevConfig:
    """Where the demo lives."""

    repo: Path
    port: int
    fresh: bool
    ports: Ports = field(default_factory=Ports)
    token: str | None = None

    state_dir: Path | None = None

    @property
    def workdir(self) -> Path:
        """Where the demo keeps its state (default .develop/ in the repo)."""
        return self.state_dir or self.repo / ".develop"

    @property
    def config_dir(self) -> Path:
        """HA's config dir for the demo."""
        return self.workdir / "config"

    @property
    def base_url(self) -> str:
        """HA's URL."""
        return f"http://{HOST}:{self.port}"


class FirmwareImages:
    """Synthetic images served over plain HTTP, as the Tasmota OTA server would.

    `/fw/tasmota.bin.gz` and `/fw/tasmota-minimal.bin.gz` stand for Tasmota's OTA
    folder (the upgrade's OtaUrl): gzipped synthetic images, never real firmware.
    The full one does not fit beside the running lite image on a 1 MB Sonoff, so the
    virtual Tasmota takes the `-minimal` step first, as a real one does.
    `/releases/latest` answers like GitHub's latest-release API, with `TASMOTA_RELEASE`.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.files = {
            "image_user1-0x01000.bin": intermediate_user1(),
            "image_user2-0x81000.bin": intermediate_user2(),
            "tasmota-lite.bin": tasmota_lite(),
            # Incompressible filler: 600 kB is too big beside a 480 kB lite image.
            "tasmota.bin.gz": gzip.compress(
                make_image(600_000, label="tasmota-full-synthetic"), mtime=0
            ),
            "tasmota-minimal.bin.gz": gzip.compress(
                make_image(300_000, label="tasmota-minimal-synthetic"), mtime=0
            ),
        }
        self._runner: web.AppRunner | None = None

    def url(self, name: str) -> str:
        """Where one image is served."""
        return f"http://{HOST}:{self.port}/fw/{name}"

    @property
    def releases_url(self) -> str:
        """The stand-in for GitHub's "latest release" of arendst/Tasmota."""
        return f"http://{HOST}:{self.port}/releases/latest"

    @property
    def ota_base_url(self) -> str:
        """The stand-in for Tasmota's OTA folder (`<base>/tasmota.bin.gz`)."""
        return f"http://{HOST}:{self.port}/fw"

    def settings(self) -> dict[str, str]:
        """The integration's `firmware:` overrides (with the synthetic pins)."""
        return {
            "tasmota_latest_url": self.url("tasmota-lite.bin"),
            "tasmota_release_url_template": self.url("tasmota-{version}-lite.bin"),
            "user1_url": self.url("image_user1-0x01000.bin"),
            "user1_sha256": hashlib.sha256(self.files["image_user1-0x01000.bin"]).hexdigest(),
            "user2_url": self.url("image_user2-0x81000.bin"),
            "user2_sha256": hashlib.sha256(self.files["image_user2-0x81000.bin"]).hexdigest(),
        }

    async def start(self) -> None:
        """Serve the images and the release answer."""

        async def handle(request: web.Request) -> web.StreamResponse:
            name = request.match_info["name"]
            data = self.files.get(name)
            if data is None:
                raise web.HTTPNotFound
            if request.method != "GET" or not name.endswith(".gz"):
                return web.Response(body=data, content_type="application/octet-stream")
            # Tasmota's OTA downloads, paced so the upgrade can be watched (a few seconds).
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = len(data)
            await response.prepare(request)
            for start in range(0, len(data), OTA_CHUNK):
                await response.write(data[start : start + OTA_CHUNK])
                await asyncio.sleep(OTA_CHUNK_DELAY)
            await response.write_eof()
            return response

        async def latest_release(request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "tag_name": f"v{TASMOTA_RELEASE}",
                    "name": f"Tasmota v{TASMOTA_RELEASE} (demo stand-in, synthetic images)",
                    "html_url": (
                        f"https://github.com/arendst/Tasmota/releases/tag/v{TASMOTA_RELEASE}"
                    ),
                }
            )

        app = web.Application()
        app.router.add_get("/fw/{name}", handle)
        app.router.add_get("/releases/latest", latest_release)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port).start()

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()


def sonoff_ota_yaml(cfg: DevConfig, firmware: FirmwareImages) -> str:
    """The integration's settings pointing at the loopback devices."""
    ports = cfg.ports
    values: dict[str, Any] = {
        "setup_ap_url": f"http://{HOST}:{ports.setup_ap}",
        "tasmota_ap_url": f"http://{HOST}:{ports.tasmota_ap}",
        "finalstage_bind": HOST,
        "finalstage_port": ports.finalstage,
        "tls_bind": HOST,
        "tls_port": ports.tls,
        "callback_host": HOST,
        "device_broker_host": HOST,
        "serve_from_ha": False,
        "tasmota_releases_url": firmware.releases_url,
        "tasmota_ota_base_url": firmware.ota_base_url,
        "firmware": firmware.settings(),
    }
    lines: list[str] = []
    for key, value in values.items():
        if isinstance(value, dict):
            lines.append(f"  {key}:")
            lines.extend(f'    {k}: "{v}"' for k, v in value.items())
        else:
            lines.append(f'  {key}: "{value}"' if isinstance(value, str) else f"  {key}: {value}")
    return "\n".join(lines)


def prepare_config_dir(cfg: DevConfig, firmware: FirmwareImages) -> None:
    """Write configuration.yaml and link the integration into custom_components/."""
    if cfg.fresh and cfg.config_dir.exists():
        for path in sorted(cfg.config_dir.rglob("*"), reverse=True):
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                path.rmdir()
    custom = cfg.config_dir / "custom_components"
    custom.mkdir(parents=True, exist_ok=True)
    link = custom / "sonoff_ota"
    target = cfg.repo / "custom_components" / "sonoff_ota"
    if link.is_symlink():
        link.unlink()  # the repo may sit at another path (native run vs chroot)
    link.symlink_to(target)
    (cfg.config_dir / "configuration.yaml").write_text(
        CONFIGURATION_YAML.format(port=cfg.port, sonoff_ota=sonoff_ota_yaml(cfg, firmware)),
        encoding="utf-8",
    )
    storage = cfg.config_dir / ".storage"
    onboarding = storage / "onboarding"
    if not onboarding.exists():
        # Only the owner account is left to onboarding (done through the API
        # below). Skipping the other steps keeps HA from setting up weather,
        # radio and TTS integrations that would reach for the internet.
        storage.mkdir(exist_ok=True)
        onboarding.write_text(
            json.dumps(
                {
                    "version": 4,
                    "minor_version": 1,
                    "key": "onboarding",
                    "data": {"done": ["core_config", "analytics", "integration"]},
                }
            ),
            encoding="utf-8",
        )


async def wait_until_up(session: aiohttp.ClientSession, cfg: DevConfig, proc: Any) -> None:
    """Wait until HA answers HTTP (or fail if it exits)."""
    for _ in range(600):
        if proc.returncode is not None:
            raise SystemExit(f"Home Assistant exited with {proc.returncode}; see {log_path(cfg)}")
        try:
            async with session.get(f"{cfg.base_url}/api/onboarding") as resp:
                if resp.status in (200, 401, 404):
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit("Home Assistant did not start within 5 minutes")


async def onboard(session: aiohttp.ClientSession, cfg: DevConfig) -> None:
    """Create the owner account (unless done already) and get an access token."""
    client_id = f"{cfg.base_url}/"
    async with session.get(f"{cfg.base_url}/api/onboarding") as resp:
        steps = {s["step"]: s["done"] for s in await resp.json()} if resp.status == 200 else {}
    if not steps.get("user", True):
        async with session.post(
            f"{cfg.base_url}/api/onboarding/users",
            json={
                "client_id": client_id,
                "name": "Developer",
                "username": DEV_USER,
                "password": DEV_PASSWORD,
                "language": "en",
            },
        ) as resp:
            resp.raise_for_status()
            code = (await resp.json())["auth_code"]
    else:
        async with session.post(
            f"{cfg.base_url}/auth/login_flow",
            json={
                "client_id": client_id,
                "handler": ["homeassistant", None],
                "redirect_uri": client_id,
            },
        ) as resp:
            flow_id = (await resp.json())["flow_id"]
        async with session.post(
            f"{cfg.base_url}/auth/login_flow/{flow_id}",
            json={"client_id": client_id, "username": DEV_USER, "password": DEV_PASSWORD},
        ) as resp:
            code = (await resp.json())["result"]
    async with session.post(
        f"{cfg.base_url}/auth/token",
        data={"grant_type": "authorization_code", "code": code, "client_id": client_id},
    ) as resp:
        resp.raise_for_status()
        cfg.token = (await resp.json())["access_token"]


async def promote_http_config(session: aiohttp.ClientSession, cfg: DevConfig) -> None:
    """Keep HA on 127.0.0.1:<port> (HA 2026.x treats YAML http settings as a trial).

    Without this, HA reverts to its previous HTTP settings after five minutes and
    restarts. Older HA has no such command; an error answer is fine there.
    """
    async with session.ws_connect(f"{cfg.base_url}/api/websocket") as ws:
        await ws.receive_json()  # auth_required
        await ws.send_json({"type": "auth", "access_token": cfg.token})
        if (await ws.receive_json()).get("type") != "auth_ok":
            raise SystemExit("could not authenticate on HA's websocket API")
        await ws.send_json({"id": 1, "type": "http/config/promote"})
        await ws.receive_json()


async def ensure_entry(
    session: aiohttp.ClientSession, cfg: DevConfig, domain: str, answers: list[dict[str, Any]]
) -> None:
    """Set up `domain` through its own config flow, unless it has an entry already."""
    headers = {"Authorization": f"Bearer {cfg.token}"}
    async with session.get(
        f"{cfg.base_url}/api/config/config_entries/entry", headers=headers
    ) as resp:
        if any(entry["domain"] == domain for entry in await resp.json()):
            return
    async with session.post(
        f"{cfg.base_url}/api/config/config_entries/flow",
        json={"handler": domain, "show_advanced_options": False},
        headers=headers,
    ) as resp:
        result = await resp.json()
    for answer in answers:
        if result.get("type") != "form":
            break
        async with session.post(
            f"{cfg.base_url}/api/config/config_entries/flow/{result['flow_id']}",
            json=answer,
            headers=headers,
        ) as resp:
            result = await resp.json()
    if result.get("type") != "create_entry":
        raise SystemExit(f"could not set up {domain}: {result}")


def log_path(cfg: DevConfig) -> Path:
    """Where HA's console output goes."""
    return cfg.workdir / "home-assistant.out"


def banner(cfg: DevConfig) -> str:
    """What a newcomer reads once everything is up."""
    ports = cfg.ports
    return "\n".join(
        [
            "",
            "  Sonoff OTA demo is running (everything on 127.0.0.1).",
            f"  Home Assistant: {cfg.base_url}",
            f"  Login:          {DEV_USER} / {DEV_PASSWORD}",
            "",
            f"  Setup-mode Sonoff {SETUP_DEVICEID} (eWeLink 2.0.4) waits in setup mode:",
            "    Settings > Devices & services > Add integration > Sonoff OTA > Setup mode,",
            f"    address {HOST}. (Its ITEAD access point stands at {HOST}:{ports.setup_ap}.)",
            f"  DIY Sonoff {DIY_DEVICEID} (eWeLink 3.6.0) is on the network:",
            "    Add integration > Sonoff OTA > DIY mode,",
            f"    IP address {HOST}, port {ports.diy}.",
            "  Firmware: synthetic test images served locally (never real firmware),",
            '    also the full Tasmota build each flashed device\'s "Tasmota firmware"',
            f"    entity upgrades to (release {TASMOTA_RELEASE} as the latest).",
            "",
            f"  HA log:         {log_path(cfg)}",
            "  Stop:           Ctrl-C",
            "",
        ]
    )


def demo_devices(cfg: DevConfig) -> list[VirtualSonoff]:
    """The two virtual Sonoffs the demo offers."""
    ports = cfg.ports
    plan = TasmotaPlan(ap_port=ports.tasmota_ap)
    return [
        VirtualSonoff(
            "setup",
            setup=SetupModeConfig(
                deviceid=SETUP_DEVICEID,
                rom_version="2.0.4",
                sta_mac="5C:CF:7F:0B:77:C1",
                ap_port=ports.setup_ap,
                finalstage_server=(HOST, ports.finalstage),
                timing=DEMO_TIMING,
            ),
            tasmota_plan=plan,
        ),
        VirtualSonoff(
            "diy",
            diy=DiyConfig(
                deviceid=DIY_DEVICEID,
                fw_version="3.6.0",
                port=ports.diy,
                removed_from_ewelink=True,
                sta_mac="D8:F1:5B:C1:7C:0A",
                timing=DEMO_TIMING,
            ),
            tasmota_plan=plan,
        ),
    ]


async def run(cfg: DevConfig) -> int:
    """Start everything, wait for Ctrl-C, stop everything."""
    workdir = cfg.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    firmware = FirmwareImages(cfg.ports.firmware)
    prepare_config_dir(cfg, firmware)
    broker = MosquittoBroker(workdir / "mosquitto")
    devices = demo_devices(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    out = log_path(cfg).open("ab")
    proc: Any = None
    try:
        (workdir / "mosquitto").mkdir(exist_ok=True)
        await broker.start()
        await firmware.start()
        for device in devices:
            await device.start()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "homeassistant",
            "--config",
            str(cfg.config_dir),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        async with aiohttp.ClientSession() as session:
            await wait_until_up(session, cfg, proc)
            await onboard(session, cfg)
            await promote_http_config(session, cfg)
            await ensure_entry(
                session,
                cfg,
                "mqtt",
                [
                    {
                        "broker": HOST,
                        "port": broker.port,
                        "protocol": "3.1.1",
                        "other_settings": {
                            "set_client_cert": False,
                            "set_ca_cert": "off",
                            "transport": "tcp",
                        },
                    }
                ],
            )
            await ensure_entry(
                session, cfg, "tasmota", [{}, {"discovery_prefix": "tasmota/discovery"}]
            )
        print(banner(cfg), flush=True)
        ha_exit = asyncio.ensure_future(proc.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({ha_exit, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if ha_exit.done():
            print(f"Home Assistant exited with {proc.returncode}; see {log_path(cfg)}")
            return 1
        return 0
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for device in devices:
            await device.stop()
        await firmware.stop()
        await broker.stop()
        out.close()
        print("Stopped.", flush=True)


def main() -> int:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--fresh", action="store_true", help="start from an empty config dir")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="keep the demo's state here (relative to the repo) instead of .develop/",
    )
    args = parser.parse_args()
    cfg = DevConfig(
        repo=args.repo.resolve(),
        port=args.port,
        fresh=args.fresh,
        state_dir=(args.repo / args.state_dir).resolve() if args.state_dir else None,
    )
    return asyncio.run(run(cfg))


if __name__ == "__main__":
    sys.exit(main())
