"""Run a real Mosquitto broker (Debian package `mosquitto`) on a free 127.0.0.1 port.

Used by tests and the demo. The broker is a child process started with
`asyncio.create_subprocess_exec`; on exit it is terminated and reaped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
from pathlib import Path
import secrets
import socket

from .start_stop import StartStop

_LOGGER = logging.getLogger(__name__)

DEFAULT_EXECUTABLE = Path("/usr/sbin/mosquitto")
HOST = "127.0.0.1"

# Mosquitto 2.x password-file hash: "$7$<iterations>$<b64 salt>$<b64 PBKDF2-SHA512>"
# (the format `mosquitto_passwd` writes; 101 iterations and a 12-byte salt are its defaults).
_PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12


class MosquittoError(RuntimeError):
    """The broker could not be started."""


def _free_port() -> int:
    """A port that was free a moment ago (bind to 0, read it back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def password_file_line(username: str, password: str) -> str:
    """One line of a Mosquitto 2.x password file, hashed like `mosquitto_passwd`."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS)
    return (
        f"{username}:$7${_PBKDF2_ITERATIONS}$"
        f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"
    )


class MosquittoBroker(StartStop):
    """A Mosquitto broker on 127.0.0.1 and a free port: `async with MosquittoBroker(tmp_path)`.

    `username`/`password` given: anonymous access is off and only that login
    works. `stop()` may be called mid-test to make the broker unreachable;
    `start()` brings it back on the same port when possible.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        executable: Path = DEFAULT_EXECUTABLE,
        username: str | None = None,
        password: str | None = None,
        start_timeout: float = 5.0,
        attempts: int = 3,
    ) -> None:
        """Keep the settings; files are written and the process started by `start()`."""
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.workdir = workdir
        self.executable = executable
        self.username = username
        self._password = password
        self.start_timeout = start_timeout
        self.attempts = attempts
        self.host = HOST
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None

    def __repr__(self) -> str:
        """Never show the password."""
        return (
            f"MosquittoBroker({self.host}:{self.port}, user={self.username!r}, "
            f"running={self.running})"
        )

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._process is not None and self._process.returncode is None

    @property
    def log_path(self) -> Path:
        """Mosquitto's own log file (useful when a test fails)."""
        return self.workdir / "mosquitto.log"

    def _write_config(self, port: int) -> Path:
        # Small files, written before any loop work (allowed for the harness).
        lines = [
            f"listener {port} {HOST}",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type all",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else Mosquitto drops to user `mosquitto`
        if self.username is not None and self._password is not None:
            password_file = self.workdir / "mosquitto.passwd"
            password_file.write_text(password_file_line(self.username, self._password))
            password_file.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    async def start(self) -> None:
        """Start Mosquitto and wait until it accepts TCP; retry on another port on failure."""
        if self.running:
            return
        if not self.executable.exists():
            raise MosquittoError(
                f"{self.executable} not found: install the Debian package `mosquitto` "
                "(apt-get install mosquitto) to run the MQTT tests"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for attempt in range(self.attempts):
            port = self.port if (self.port and attempt == 0) else _free_port()
            config = self._write_config(port)
            process = await asyncio.create_subprocess_exec(
                str(self.executable),
                "-c",
                str(config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            self._process = process
            if await self._wait_accepting(process, port):
                self.port = port
                _LOGGER.debug("mosquitto pid %s listening on %s:%s", process.pid, HOST, port)
                return
            last_error = await self._reap(process)
            self._process = None
        raise MosquittoError(
            f"mosquitto did not start after {self.attempts} attempts: {last_error}"
        )

    async def _wait_accepting(self, process: asyncio.subprocess.Process, port: int) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while loop.time() < deadline:
            if process.returncode is not None:
                return False
            try:
                _, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        return False

    @staticmethod
    async def _reap(process: asyncio.subprocess.Process) -> str:
        """Terminate (then kill) and wait; return what the process wrote on stderr."""
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        try:
            async with asyncio.timeout(5):
                _, stderr = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            _, stderr = await process.communicate()
        return (stderr or b"").decode(errors="replace").strip()

    async def stop(self) -> None:
        """Terminate the broker and wait for it (no zombie). Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            await self._reap(process)
