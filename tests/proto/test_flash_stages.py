"""The flash state machine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from custom_components.sonoff_ota.proto.flash_stages import (
    FlashPath,
    FlashTracker,
    IllegalTransitionError,
    Stage,
)


def test_progress_rises_monotonically_through_the_setup_path() -> None:
    tracker = FlashTracker(FlashPath.SETUP_MODE)
    seen: list[int] = []
    tracker.add_listener(lambda t: seen.append(t.percentage))
    for stage in tracker.order[1:-1]:
        tracker.advance(stage)
        tracker.update(0.5)
        tracker.update(1.0)
    tracker.done()
    assert seen == sorted(seen)
    assert seen[-1] == 100
    assert tracker.finished
    assert [h.stage for h in tracker.history][-1] is Stage.DONE


def test_diy_stages_are_not_setup_stages() -> None:
    tracker = FlashTracker(FlashPath.DIY)
    with pytest.raises(IllegalTransitionError):
        tracker.advance(Stage.WAIT_DISPATCH)


def test_failure_keeps_the_bar_and_the_error() -> None:
    tracker = FlashTracker(FlashPath.DIY, device_label="1000e4c17c")
    tracker.advance(Stage.CHECKING)
    tracker.advance(Stage.UNLOCKING)
    before = tracker.percentage
    tracker.fail("unlock_no_internet", deviceid="1000e4c17c")
    assert tracker.stage is Stage.FAILED
    assert tracker.percentage == before
    assert tracker.error is not None
    assert tracker.error.code == "unlock_no_internet"
    with pytest.raises(IllegalTransitionError):
        tracker.advance(Stage.FLASHING)
    tracker.abort()  # ending twice keeps the first end
    assert tracker.stage is Stage.FAILED


def test_retrying_a_stage_goes_back() -> None:
    tracker = FlashTracker(FlashPath.SETUP_MODE)
    tracker.advance(Stage.WAIT_SETUP_AP)
    tracker.advance(Stage.PROVISIONING)
    tracker.advance(Stage.WAIT_SETUP_AP, note="retry")
    assert tracker.stage is Stage.WAIT_SETUP_AP
    assert tracker.history[-1].note == "retry"


def test_end_stages_need_their_own_calls() -> None:
    tracker = FlashTracker(FlashPath.DIY)
    with pytest.raises(IllegalTransitionError):
        tracker.advance(Stage.DONE)


PROTO = Path(__file__).parents[2] / "custom_components" / "sonoff_ota" / "proto"


@pytest.mark.parametrize("module", sorted(PROTO.glob("*.py")), ids=lambda p: p.name)
def test_protocol_code_does_not_import_home_assistant(module: Path) -> None:
    tree = ast.parse(module.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            assert not name.startswith("homeassistant"), f"{module.name} imports {name}"
