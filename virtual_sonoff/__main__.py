r"""Run virtual Sonoffs from the command line (127.0.0.1 only), until Ctrl-C.

    python -m virtual_sonoff setup --fw 2.0.4 --ap-port 8091 --finalstage-port 8080 \\
        --tasmota-ap-port 8092
    python -m virtual_sonoff diy --fw 3.6.0 --port 8081 --tasmota-ap-port 8092

Each device prints where it listens; point the integration at those ports with
the `sonoff_ota:` YAML settings (see README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from .diy import DiyConfig
from .lifecycle import TasmotaPlan, VirtualSonoff
from .profile import PROFILES
from .setup_mode import SetupModeConfig

HOST = "127.0.0.1"


def build(args: argparse.Namespace) -> VirtualSonoff:
    """Describe the device the arguments ask for."""
    timing = PROFILES[args.profile]
    plan = TasmotaPlan(ap_port=args.tasmota_ap_port)
    if args.kind == "setup":
        return VirtualSonoff(
            "setup",
            setup=SetupModeConfig(
                deviceid=args.deviceid or "10000b77c1",
                rom_version=args.fw,
                model=args.model,
                running_slot=args.slot,
                ap_port=args.ap_port,
                finalstage_server=(HOST, args.finalstage_port),
                timing=timing,
            ),
            tasmota_plan=plan,
        )
    return VirtualSonoff(
        "diy",
        diy=DiyConfig(
            deviceid=args.deviceid or "1000e4c17c",
            fw_version=args.fw,
            port=args.port,
            timing=timing,
            removed_from_ewelink=True,
        ),
        tasmota_plan=plan,
    )


def describe(device: VirtualSonoff) -> str:
    """One line saying where the device listens."""
    ewelink = device.ewelink
    if device.setup is not None and ewelink is not None and hasattr(ewelink, "ap_url"):
        return (
            f"setup-mode Sonoff {device.setup.deviceid} (eWeLink {device.setup.rom_version}): "
            f"setup AP at {ewelink.ap_url}, expects FinalStage at "
            f"{device.setup.finalstage_server[0]}:{device.setup.finalstage_server[1]}"
        )
    if device.diy is not None and ewelink is not None and hasattr(ewelink, "base_url"):
        return (
            f"DIY Sonoff {device.diy.deviceid} (eWeLink {device.diy.fw_version}): "
            f"REST at {ewelink.base_url}"
        )
    return "virtual Sonoff"


async def run(args: argparse.Namespace) -> None:
    """Start the device and wait for a signal."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with build(args) as device:
        print(describe(device), flush=True)  # noqa: T201 - a command-line tool
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(prog="python -m virtual_sonoff", description=__doc__)
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind in ("setup", "diy"):
        p = sub.add_parser(kind)
        p.add_argument("--deviceid")
        p.add_argument("--profile", choices=sorted(PROFILES), default="fast")
        p.add_argument("--tasmota-ap-port", type=int, default=0)
        if kind == "setup":
            p.add_argument("--fw", default="2.0.4")
            p.add_argument("--model", default="ITA-GZ1-GL")
            p.add_argument("--slot", choices=["user1", "user2"], default="user2")
            p.add_argument("--ap-port", type=int, default=0)
            p.add_argument("--finalstage-port", type=int, default=8080)
        else:
            p.add_argument("--fw", default="3.6.0")
            p.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
