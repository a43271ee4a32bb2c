"""A small asyncio MQTT 3.1.1 client (no threads, no paho) for the virtual Tasmota and tests.

Scope: CONNECT (client id, keepalive, will, username/password), CONNACK check,
PUBLISH QoS 0 out, QoS 0/1 in (QoS 1 is PUBACKed), SUBSCRIBE/SUBACK,
PINGREQ keepalive, DISCONNECT. Inbound messages go to an asyncio queue and to
callbacks registered per topic filter (MQTT wildcards `+` and `#`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
import contextlib
from dataclasses import dataclass, field
import logging

from .start_stop import StartStop

_LOGGER = logging.getLogger(__name__)

# Packet types (MQTT 3.1.1 §2.2.1).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class MqttError(Exception):
    """Base error of the MQTT client."""


class MqttConnectError(MqttError):
    """The broker refused the connection (CONNACK return code != 0) or was unreachable."""

    def __init__(self, message: str, return_code: int | None = None) -> None:
        """Keep the CONNACK return code (None: no CONNACK at all)."""
        super().__init__(message)
        self.return_code = return_code


class MqttDisconnectedError(MqttError):
    """The connection is gone."""


@dataclass(frozen=True, slots=True)
class MqttMessage:
    """One inbound PUBLISH."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.payload.decode()


@dataclass(frozen=True, slots=True)
class Will:
    """The last-will message the broker publishes on an abrupt disconnect."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 0


type MessageCallback = Callable[[MqttMessage], Awaitable[None]]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Tell whether `topic` matches an MQTT filter with `+` / `#` wildcards (§4.7)."""
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    if topic.startswith("$") and filter_levels[0] in {"+", "#"}:
        return False
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level not in {"+", topic_levels[index]}:
            return False
    return len(filter_levels) == len(topic_levels)


def _encode_str(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return len(raw).to_bytes(2, "big") + raw


def _encode_remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte = length % 128
        length //= 128
        if length:
            byte |= 0x80
        out.append(byte)
        if not length:
            return bytes(out)


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _encode_remaining_length(len(body)) + body


@dataclass(slots=True)
class _Subscription:
    topic_filter: str
    callback: MessageCallback | None


@dataclass(slots=True)
class _Pending:
    futures: dict[int, asyncio.Future[bytes]] = field(default_factory=dict)
    pings: list[asyncio.Future[None]] = field(default_factory=list)


class MqttClient(StartStop):
    """An asyncio MQTT 3.1.1 client; use it as `async with MqttClient(...) as client`.

    Callbacks run inside the reader task: they may publish, but must not await
    `subscribe()` (its SUBACK is read by that same task).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        keepalive: int = 60,
        username: str | None = None,
        password: str | None = None,
        will: Will | None = None,
        clean_session: bool = True,
        connect_timeout: float = 5.0,
    ) -> None:
        """Store the connection parameters; nothing is opened before `connect()`."""
        self.host = host
        self.port = port
        self.client_id = client_id
        self.keepalive = keepalive
        self.username = username
        self._password = password
        self.will = will
        self.clean_session = clean_session
        self.connect_timeout = connect_timeout
        self.messages: asyncio.Queue[MqttMessage] = asyncio.Queue()
        self._subscriptions: list[_Subscription] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ping_task: asyncio.Task[None] | None = None
        self._pending = _Pending()
        self._next_id = 0
        self._connected = False
        self._closed = asyncio.Event()
        self._closed.set()

    def __repr__(self) -> str:
        """Never show the password."""
        return (
            f"MqttClient({self.host}:{self.port}, client_id={self.client_id!r}, "
            f"user={self.username!r}, connected={self._connected})"
        )

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the end of the connection."""
        return self._connected

    async def start(self) -> None:
        """Connect (what entering `async with` does)."""
        await self.connect()

    async def stop(self) -> None:
        """Disconnect (what leaving `async with` does)."""
        await self.disconnect()

    async def connect(self) -> None:
        """Open the TCP connection, send CONNECT and check the CONNACK."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as err:
            raise MqttConnectError(f"cannot reach {self.host}:{self.port}: {err}") from err
        self._reader, self._writer = reader, writer
        self._closed.clear()
        try:
            writer.write(self._connect_packet())
            await writer.drain()
            async with asyncio.timeout(self.connect_timeout):
                first, body = await self._read_packet(reader)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as err:
            await self._close_transport()
            raise MqttConnectError(f"no CONNACK from {self.host}:{self.port}: {err}") from err
        if first >> 4 != CONNACK or len(body) < 2:
            await self._close_transport()
            raise MqttConnectError(f"expected CONNACK, got packet type {first >> 4}")
        return_code = body[1]
        if return_code:
            await self._close_transport()
            reason = CONNACK_REASONS.get(return_code, "unknown")
            raise MqttConnectError(
                f"connection refused: {reason} ({return_code})", return_code=return_code
            )
        self._connected = True
        self._reader_task = asyncio.create_task(self._read_loop(reader))
        if self.keepalive:
            self._ping_task = asyncio.create_task(self._ping_loop())

    def _connect_packet(self) -> bytes:
        flags = 0x02 if self.clean_session else 0
        payload = _encode_str(self.client_id)
        if self.will is not None:
            flags |= 0x04 | (self.will.qos << 3) | (0x20 if self.will.retain else 0)
            payload += _encode_str(self.will.topic) + _encode_str(self.will.payload)
        if self.username is not None:
            flags |= 0x80
            payload += _encode_str(self.username)
        if self._password is not None:
            flags |= 0x40
            payload += _encode_str(self._password)
        variable = _encode_str("MQTT") + bytes([4, flags]) + self.keepalive.to_bytes(2, "big")
        return _packet(CONNECT << 4, variable + payload)

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 0xFFFF + 1
        return self._next_id

    async def _send(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or not self._connected:
            raise MqttDisconnectedError("not connected")
        try:
            writer.write(data)
            await writer.drain()
        except (OSError, RuntimeError) as err:
            raise MqttDisconnectedError(str(err)) from err

    @staticmethod
    async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        first = (await reader.readexactly(1))[0]
        multiplier, length = 1, 0
        for _ in range(4):
            byte = (await reader.readexactly(1))[0]
            length += (byte & 0x7F) * multiplier
            if not byte & 0x80:
                break
            multiplier *= 128
        else:
            raise MqttError("malformed remaining length")
        body = await reader.readexactly(length) if length else b""
        return first, body

    async def publish(self, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
        """Publish with QoS 0."""
        raw = payload.encode() if isinstance(payload, str) else payload
        first = (PUBLISH << 4) | (0x01 if retain else 0)
        await self._send(_packet(first, _encode_str(topic) + raw))

    async def subscribe(
        self,
        topic_filter: str,
        callback: MessageCallback | None = None,
        *,
        qos: int = 0,
    ) -> int:
        """Subscribe and wait for the SUBACK; return the granted QoS (0x80 = failure).

        Matching inbound messages are passed to `callback` (if any) and always
        put on `messages`.
        """
        packet_id = self._packet_id()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending.futures[packet_id] = future
        self._subscriptions.append(_Subscription(topic_filter, callback))
        body = packet_id.to_bytes(2, "big") + _encode_str(topic_filter) + bytes([qos])
        try:
            await self._send(_packet((SUBSCRIBE << 4) | 0x02, body))
            async with asyncio.timeout(self.connect_timeout):
                granted = await future
        finally:
            self._pending.futures.pop(packet_id, None)
        return granted[0] if granted else 0x80

    async def ping(self) -> None:
        """Send PINGREQ and wait for PINGRESP (up to `connect_timeout`)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.pings.append(future)
        await self._send(_packet(PINGREQ << 4, b""))
        async with asyncio.timeout(self.connect_timeout):
            await future

    async def next_message(self, within: float = 5.0) -> MqttMessage:
        """The next inbound message of any subscription (TimeoutError after `within` s)."""
        async with asyncio.timeout(within):
            return await self.messages.get()

    async def wait_for_message(
        self,
        topic_filter: str,
        within: float = 5.0,
        predicate: Callable[[MqttMessage], bool] | None = None,
    ) -> MqttMessage:
        """Drop messages from the queue until one matches the filter (and predicate)."""
        async with asyncio.timeout(within):
            while True:
                message = await self.messages.get()
                if topic_matches(topic_filter, message.topic) and (
                    predicate is None or predicate(message)
                ):
                    return message

    async def wait_closed(self) -> None:
        """Wait until the connection is gone (broker closed it or we did)."""
        await self._closed.wait()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                first, body = await self._read_packet(reader)
                await self._handle(first, body)
        except (asyncio.IncompleteReadError, OSError, MqttError) as err:
            _LOGGER.debug("MQTT %s: connection ended: %r", self.client_id, err)
        finally:
            self._connected = False
            self._fail_pending()
            await self._close_transport()

    async def _handle(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == PUBLISH:
            await self._handle_publish(first, body)
        elif kind == SUBACK:
            future = self._pending.futures.get(int.from_bytes(body[:2], "big"))
            if future is not None and not future.done():
                future.set_result(body[2:])
        elif kind == PINGRESP:
            while self._pending.pings:
                ping = self._pending.pings.pop(0)
                if not ping.done():
                    ping.set_result(None)
                    break

    async def _handle_publish(self, first: int, body: bytes) -> None:
        qos = (first >> 1) & 0x03
        topic_length = int.from_bytes(body[:2], "big")
        topic = body[2 : 2 + topic_length].decode()
        offset = 2 + topic_length
        if qos:
            packet_id = body[offset : offset + 2]
            offset += 2
            if qos == 1:
                await self._send(_packet(PUBACK << 4, packet_id))
        message = MqttMessage(topic, body[offset:], qos, bool(first & 0x01))
        self.messages.put_nowait(message)
        for subscription in list(self._subscriptions):
            if subscription.callback is not None and topic_matches(
                subscription.topic_filter, topic
            ):
                try:
                    await subscription.callback(message)
                except Exception:
                    _LOGGER.exception("MQTT callback for %s failed", topic)

    async def _ping_loop(self) -> None:
        # Ping at half the keepalive: the broker drops us after 1.5 x keepalive.
        with contextlib.suppress(MqttError, TimeoutError):
            while self._connected:
                await asyncio.sleep(self.keepalive / 2)
                await self.ping()

    def _fail_pending(self) -> None:
        for future in self._pending.futures.values():
            if not future.done():
                future.set_exception(MqttDisconnectedError("connection lost"))
        for ping in self._pending.pings:
            if not ping.done():
                ping.set_exception(MqttDisconnectedError("connection lost"))
        self._pending = _Pending()

    async def _close_transport(self) -> None:
        """Close the socket and stop the ping task (not the reader: it ends on EOF)."""
        writer, self._writer = self._writer, None
        self._connected = False
        ping_task, self._ping_task = self._ping_task, None
        if ping_task is not None and ping_task is not asyncio.current_task():
            ping_task.cancel()
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
        self._closed.set()

    async def disconnect(self) -> None:
        """Send DISCONNECT (the broker then discards the will) and close."""
        if self._connected:
            with contextlib.suppress(MqttError):
                await self._send(_packet(DISCONNECT << 4, b""))
        await self._shutdown()

    async def abort(self) -> None:
        """Close the TCP connection without DISCONNECT: the broker publishes the will."""
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._connected = False
        await self._close_transport()
        tasks = [task for task in (self._reader_task, self._ping_task) if task is not None]
        self._reader_task = self._ping_task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
