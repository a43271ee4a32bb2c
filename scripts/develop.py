"""The main job: a real Home Assistant with sonoff_ota, all on 127.0.0.1.

Run through `scripts/develop`, which picks the Python and the venv. This
script writes a config dir under .develop/ (gitignored), starts Home
Assistant as a subprocess, creates the owner account through HA's own
onboarding API (so a newcomer can log in at once) and waits for Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
import json
import os
from pathlib import Path
import signal
import sys
from typing import Any

import aiohttp

DEV_USER = "dev"
DEV_PASSWORD = "sonoff-ota-dev"  # loopback-only demo account, printed on start
HOST = "127.0.0.1"

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
"""


@dataclass(slots=True)
class DevConfig:
    """Where the demo lives."""

    repo: Path
    port: int
    fresh: bool
    token: str | None = None
    """An owner access token, once onboarding made one (for later set-up steps)."""

    @property
    def config_dir(self) -> Path:
        """HA's config dir for the demo."""
        return self.repo / ".develop" / "config"

    @property
    def base_url(self) -> str:
        """HA's URL."""
        return f"http://{HOST}:{self.port}"


def prepare_config_dir(cfg: DevConfig) -> None:
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
        CONFIGURATION_YAML.format(port=cfg.port), encoding="utf-8"
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
    """Create the owner account and finish onboarding, unless done already."""
    async with session.get(f"{cfg.base_url}/api/onboarding") as resp:
        steps = {s["step"]: s["done"] for s in await resp.json()} if resp.status == 200 else {}
    if steps.get("user", True):
        return
    client_id = f"{cfg.base_url}/"
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
        auth_code = (await resp.json())["auth_code"]
    async with session.post(
        f"{cfg.base_url}/auth/token",
        data={"grant_type": "authorization_code", "code": auth_code, "client_id": client_id},
    ) as resp:
        resp.raise_for_status()
        token = (await resp.json())["access_token"]
    cfg.token = token


def log_path(cfg: DevConfig) -> Path:
    """Where HA's console output goes."""
    return cfg.repo / ".develop" / "home-assistant.out"


def banner(cfg: DevConfig) -> str:
    """What a newcomer reads once everything is up."""
    return "\n".join(
        [
            "",
            "  Sonoff OTA demo is running (everything on 127.0.0.1).",
            f"  Home Assistant: {cfg.base_url}",
            f"  Login:          {DEV_USER} / {DEV_PASSWORD}",
            "  Add the integration: Settings > Devices & services > Add integration > Sonoff OTA",
            f"  HA log:         {log_path(cfg)}",
            "  Stop:           Ctrl-C",
            "",
        ]
    )


async def run(cfg: DevConfig) -> int:
    """Start HA, onboard, wait for Ctrl-C, stop HA."""
    prepare_config_dir(cfg)
    out = log_path(cfg).open("ab")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "homeassistant",
        "--config",
        str(cfg.config_dir),
        stdout=out,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_until_up(session, cfg, proc)
            await onboard(session, cfg)
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
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        out.close()
        print("Stopped.", flush=True)


def main() -> int:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--fresh", action="store_true", help="start from an empty config dir")
    args = parser.parse_args()
    cfg = DevConfig(repo=args.repo.resolve(), port=args.port, fresh=args.fresh)
    return asyncio.run(run(cfg))


if __name__ == "__main__":
    sys.exit(main())
