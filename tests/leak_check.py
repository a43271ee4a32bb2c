"""What of the integration is still alive: listening sockets, tasks, timers, threads, fds.

Used by the leak tests (tests/test_faults_leaks.py) and by bench/leaks.py. Sockets
are read from /proc (Linux): this process's socket inodes from /proc/self/fd,
matched against the LISTEN rows of /proc/self/net/tcp{,6}. That reads files, so
inside the event loop call `listening_sockets` through the executor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
import ipaddress
import os
from pathlib import Path
import threading
from typing import Any, Final

from homeassistant.core import HomeAssistant

from custom_components.sonoff_ota.flash_server import SERVER_KEY

OUR_PACKAGE: Final = "custom_components.sonoff_ota"
OUR_PATH: Final = f"{os.sep}custom_components{os.sep}sonoff_ota{os.sep}"
_TCP_LISTEN: Final = "0A"


def _decode_address(text: str) -> str:
    """/proc/net/tcp's hex address (host byte order per 32-bit word) as text."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def own_socket_inodes() -> set[str]:
    """Inodes of the sockets this process holds (blocking: reads /proc)."""
    inodes: set[str] = set()
    fd_dir = Path("/proc/self/fd")
    for entry in fd_dir.iterdir():
        try:
            target = str(entry.readlink())
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def listening_sockets() -> set[tuple[str, int]]:
    """(address, port) of every TCP socket this process listens on (blocking: reads /proc)."""
    inodes = own_socket_inodes()
    found: set[tuple[str, int]] = set()
    for table in ("tcp", "tcp6"):
        path = Path("/proc/self/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _TCP_LISTEN and inode in inodes:
                host, port = local.split(":")
                found.add((_decode_address(host), int(port, 16)))
    return found


def open_fds() -> int:
    """How many file descriptors this process has open (blocking: reads /proc)."""
    return len(list(Path("/proc/self/fd").iterdir()))


def _is_ours(code_file: str | None, module: str | None) -> bool:
    return bool(
        (code_file and OUR_PATH in code_file) or (module and module.startswith(OUR_PACKAGE))
    )


def _task_is_ours(task: asyncio.Task[Any]) -> bool:
    coro = task.get_coro()
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    return _is_ours(getattr(code, "co_filename", None), None) or task.get_name().startswith(
        "sonoff_ota"
    )


def our_tasks() -> list[asyncio.Task[Any]]:
    """Unfinished tasks running our coroutines (the caller's own task excluded)."""
    current = asyncio.current_task()
    return [
        task
        for task in asyncio.all_tasks()
        if task is not current and not task.done() and _task_is_ours(task)
    ]


def _callback_is_ours(callback: Any) -> bool:
    target = getattr(callback, "func", callback)  # functools.partial
    target = getattr(target, "__func__", target)  # bound method
    code = getattr(target, "__code__", None)
    return _is_ours(getattr(code, "co_filename", None), getattr(target, "__module__", None))


def our_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    """Scheduled, not cancelled timer handles whose callback is our code."""
    scheduled: list[asyncio.TimerHandle] = list(getattr(loop, "_scheduled", []))
    return [
        handle
        for handle in scheduled
        if not handle.cancelled() and _callback_is_ours(getattr(handle, "_callback", None))
    ]


def our_listeners(hass: HomeAssistant) -> list[str]:
    """The flash server's private listeners that are open (none when no flash runs)."""
    server = hass.data.get(SERVER_KEY)
    if server is None:
        return []
    open_ = []
    for name, lease in (("tls", server._tls), ("plain", server._plain)):
        if lease.listener is not None or lease.count:
            open_.append(f"{name} (count {lease.count})")
    return open_


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything counted at one moment."""

    listening: frozenset[tuple[str, int]]
    tasks: tuple[str, ...]
    timers: tuple[str, ...]
    threads: int
    fds: int
    listeners: tuple[str, ...]

    def ours_vs(
        self, before: Snapshot, *, others: Iterable[tuple[str, int]] = ()
    ) -> dict[str, object]:
        """What this snapshot has of ours that `before` did not (empty: nothing leaked).

        `others`: sockets the test opened itself meanwhile (another program's stand-in).
        """
        leaks: dict[str, object] = {}
        if new := self.listening - before.listening - set(others):
            leaks["listening"] = sorted(new)
        if self.tasks:
            leaks["tasks"] = self.tasks
        if self.timers:
            leaks["timers"] = self.timers
        if self.listeners:
            leaks["listeners"] = self.listeners
        return leaks


async def snapshot(hass: HomeAssistant) -> Snapshot:
    """Count now (sockets and fds read in the executor)."""
    listening = await hass.async_add_executor_job(listening_sockets)
    fds = await hass.async_add_executor_job(open_fds)
    loop = asyncio.get_running_loop()
    return Snapshot(
        listening=frozenset(listening),
        tasks=tuple(sorted(repr(task.get_coro()) for task in our_tasks())),
        timers=tuple(sorted(repr(handle) for handle in our_timers(loop))),
        threads=threading.active_count(),
        fds=fds,
        listeners=tuple(our_listeners(hass)),
    )
