"""Run one flash per device concurrently, each isolated from the others (no Home Assistant).

The dashboard's "Flash all eligible devices" and `sonoff_ota.flash` use it through
`device_flashes`; bench/diy_flash.py uses it for its N-at-once figures, so the
benchmark times the same scheduling. A device named twice runs once; one that
raises never cancels or stops the others (its exception becomes its result via
`on_error`); cancelling the batch cancels every flash.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable


async def run_isolated[T](
    keys: Iterable[str],
    flash: Callable[[str], Awaitable[T]],
    on_error: Callable[[str, BaseException], T],
) -> dict[str, T]:
    """`flash(key)` for every distinct key at once; results in the keys' first-seen order."""
    unique = list(dict.fromkeys(keys))

    async def guarded(key: str) -> T:
        try:
            return await flash(key)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the batch itself is being cancelled
            return on_error(key, asyncio.CancelledError())
        except Exception as err:  # one device's bug must not stop the rest
            return on_error(key, err)

    results = await asyncio.gather(*(guarded(key) for key in unique))
    return dict(zip(unique, results, strict=True))
