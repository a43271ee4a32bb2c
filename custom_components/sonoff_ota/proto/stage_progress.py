"""What every stage machine here shares: listeners, and progress from stage weights.

`flash_stages.FlashTracker` (a flash) and `tasmota_upgrade_stages.UpgradeTracker` (lite →
full) each walk their own stages; both report an overall fraction from the same weighted
sum and call their listeners the same way. Pure code, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping


class Listeners[T]:
    """Callbacks told of every change of one tracker."""

    __slots__ = ("_callbacks",)

    def __init__(self) -> None:
        self._callbacks: list[Callable[[T], None]] = []

    def add(self, listener: Callable[[T], None]) -> Callable[[], None]:
        """Call `listener` on every change; returns a function that removes it."""
        self._callbacks.append(listener)

        def remove() -> None:
            if listener in self._callbacks:
                self._callbacks.remove(listener)

        return remove

    def notify(self, tracker: T) -> None:
        """Tell every listener (a listener may remove itself meanwhile)."""
        for listener in list(self._callbacks):
            listener(tracker)


def weighted_fraction[S](
    order: Iterable[S], weights: Mapping[S, float], current: S, stage_fraction: float
) -> float:
    """0..1: the weights of the stages before `current`, plus its own share done."""
    stages = tuple(order)
    total = sum(weights[stage] for stage in stages)
    done = 0.0
    for stage in stages:
        if stage == current:
            done += weights[stage] * stage_fraction
            break
        done += weights[stage]
    return min(done / total, 1.0)
