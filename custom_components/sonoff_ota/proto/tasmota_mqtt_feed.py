"""The hand-off's MQTT side: what to subscribe to, the feed of messages, what they told us.

The HA side pushes the messages of `SUBSCRIPTIONS` into a `DiscoveryFeed`;
`DiscoveryWatch` keeps what they said (which devices exist, which came alive,
which LWT is `Online`). `Publish` is how a caller sends a command back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
import contextlib
from dataclasses import dataclass, field
import logging
import re
from typing import Final

from .tasmota_discovery import (
    DEFAULT_DISCOVERY_PREFIX,
    TasmotaDevice,
    TasmotaDiscoveryError,
    TasmotaRemoved,
    parse_discovery,
)

_LOGGER = logging.getLogger(__name__)

DISCOVERY_SUBSCRIPTION: Final = f"{DEFAULT_DISCOVERY_PREFIX}/+/config"
"""What the discovery source must be subscribed to."""
LWT_SUBSCRIPTION: Final = "tele/+/LWT"
"""Optional second subscription: default FullTopic `%prefix%/%topic%/` (left untouched)."""
SUBSCRIPTIONS: Final = (DISCOVERY_SUBSCRIPTION, LWT_SUBSCRIPTION)
_LWT_RE = re.compile(r"^tele/(?P<topic>[^/]+)/LWT$")


type Publish = Callable[[str, str], Awaitable[None]]
"""`publish(topic, payload)`, e.g. a wrapper around HA's `mqtt.async_publish`."""


@dataclass(frozen=True, slots=True)
class MqttIn:
    """One MQTT message for the hand-off; `retained` = delivered from the broker's store."""

    topic: str
    payload: bytes | str = field(repr=False)
    retained: bool = False


class DiscoveryFeed:
    """The injected discovery source: a queue of `(topic, payload, retained)` messages.

    The HA side pushes from its `mqtt.async_subscribe` callbacks (on
    `SUBSCRIPTIONS`); tests push directly. `push` never blocks.
    """

    def __init__(self, max_queued: int = 1000) -> None:
        """An empty feed."""
        self._queue: asyncio.Queue[MqttIn] = asyncio.Queue(max_queued)

    def push(self, topic: str, payload: bytes | str, *, retained: bool = False) -> None:
        """Add a message (dropped when the queue is full: discovery is re-sent on reconnect)."""
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(MqttIn(topic, payload, retained))

    async def get(self) -> MqttIn:
        """The next message."""
        return await self._queue.get()

    def drain(self) -> None:
        """Forget what is queued (before waiting for something that follows an action)."""
        while not self._queue.empty():
            self._queue.get_nowait()


@dataclass(slots=True)
class DiscoveryWatch:
    """What the feed told us so far."""

    known: set[str] = field(default_factory=set)
    """MACs that existed before (retained at subscribe time, or given by the caller)."""
    devices: dict[str, TasmotaDevice] = field(default_factory=dict)
    retained_seen: set[str] = field(default_factory=set)
    live: set[str] = field(default_factory=set)
    """MACs that published discovery while we listened (not from the retained store)."""
    online_topics: set[str] = field(default_factory=set)
    new_order: list[str] = field(default_factory=list)

    def take(self, message: MqttIn) -> None:
        """Learn from one message (an LWT, a discovery config or its removal)."""
        lwt = _LWT_RE.match(message.topic)
        if lwt:
            payload = message.payload
            text = payload.decode(errors="replace") if isinstance(payload, bytes) else payload
            if text.strip() == "Online":
                self.online_topics.add(lwt["topic"])
            else:
                self.online_topics.discard(lwt["topic"])
            return
        try:
            parsed = parse_discovery(message.topic, message.payload)
        except TasmotaDiscoveryError as err:
            _LOGGER.debug("Ignoring discovery message on %s: %s", message.topic, err.code)
            return
        if isinstance(parsed, TasmotaRemoved):
            self.devices.pop(parsed.mac, None)
            return
        self.devices[parsed.mac] = parsed
        if message.retained:
            self.retained_seen.add(parsed.mac)
            return
        self.live.add(parsed.mac)
        if parsed.mac not in self.known and parsed.mac not in self.new_order:
            self.new_order.append(parsed.mac)

    def alive(self, mac: str) -> TasmotaDevice | None:
        """The device, once it has shown it is connected now (live discovery or LWT Online)."""
        device = self.devices.get(mac)
        if device is None:
            return None
        if mac in self.live or device.topic in self.online_topics:
            return device
        return None

    def new_devices(self) -> list[TasmotaDevice]:
        """Devices that appeared while we listened and were not known before."""
        return [
            self.devices[mac]
            for mac in self.new_order
            if mac in self.devices and mac not in self.known and mac not in self.retained_seen
        ]
