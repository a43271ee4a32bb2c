"""`async with` for the emulator's servers and clients: enter runs `start()`, exit runs `stop()`.

Each emulated piece (broker, MQTT client, setup-mode and DIY devices, Tasmota, the
whole virtual Sonoff) has an explicit `start()`/`stop()` pair that tests also call
directly, e.g. to take a broker away mid-test. This base class gives all of them the
same context-manager form, so none writes its own `__aenter__`/`__aexit__`.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class StartStop:
    """Base class: `async with obj:` awaits `obj.start()`, then `obj.stop()` however it ends.

    `stop()` runs on every exit (also on an exception, which it does not swallow).
    """

    __slots__ = ()  # subclasses may be slotted dataclasses

    async def start(self) -> None:
        """Bring the piece up; subclasses implement it."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Take the piece down; subclasses implement it."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        """Start, then hand back the started object."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop (the exception, if any, propagates)."""
        await self.stop()
