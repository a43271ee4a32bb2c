"""Every error text the code can show gets a value for each of its `{placeholders}`.

A flash that stops shows `config.abort.<code>` in the flow (and `exceptions.<code>`
on the dashboard) with the placeholders the error carries. A text whose placeholder
the code never fills shows a raw `{rom_version}` to the user. This reads the code
(no HA, no sockets): every `SetupModeError` / `DiyFlashError` raised with a literal
code, and every config-flow `async_abort` with a literal reason.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
import json
from pathlib import Path
import string

import pytest

from custom_components.sonoff_ota.proto.diy_ota_result import FlashResult
from custom_components.sonoff_ota.proto.host_wifi_types import HopErrorCode

INTEGRATION = Path(__file__).parent.parent / "custom_components" / "sonoff_ota"
STRINGS = json.loads((INTEGRATION / "strings.json").read_text())
FLASH_ERRORS = {"SetupModeError", "DiyFlashError"}
CONFIG_FLOW_MODULES = {
    "config_flow",
    "diy_flow",
    "firmware_flow",
    "flash_flow",
    "handoff_flow",
    "setup_mode_flow",
}


@dataclass(frozen=True)
class Shown:
    """One place that shows an error text: its key(s) and the placeholders it passes."""

    where: str
    codes: tuple[str, ...]
    given: frozenset[str] | None
    """None: passed on from elsewhere (`**placeholders`), not checkable here."""


FORMATTED_CODES: dict[str, tuple[str, ...]] = {
    # diy_flasher: the device's callback result, when it is not DONE.
    "f'flash_{outcome}'": tuple(f"flash_{r}" for r in FlashResult if r is not FlashResult.DONE),
    # setup_mode_wifi.hop_error: any hop error.
    "f'wifi_{err.code.value}'": tuple(f"wifi_{code}" for code in HopErrorCode),
}
"""The codes an f-string code can take (a new f-string fails the scan until listed here)."""


def _codes(node: ast.expr) -> tuple[str, ...]:
    """A literal code, or the codes a known f-string takes."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return (node.value,)
    if isinstance(node, ast.JoinedStr):
        source = ast.unparse(node)
        assert source in FORMATTED_CODES, f"list the codes of {source} in FORMATTED_CODES"
        return FORMATTED_CODES[source]
    return ()


def _keywords(call: ast.Call) -> frozenset[str] | None:
    if any(keyword.arg is None for keyword in call.keywords):
        return None
    return frozenset(keyword.arg for keyword in call.keywords if keyword.arg is not None)


def _dict_keys(node: ast.expr | None) -> frozenset[str] | None:
    if node is None:
        return frozenset()
    if not isinstance(node, ast.Dict):
        return None
    keys = [key.value for key in node.keys if isinstance(key, ast.Constant)]
    if len(keys) != len(node.keys) or not all(isinstance(key, str) for key in keys):
        return None
    return frozenset(str(key) for key in keys)


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def _shown() -> list[Shown]:
    found: list[Shown] = []
    for path in sorted(INTEGRATION.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(INTEGRATION)}:{node.lineno}"
            name = _name(node.func)
            if name in FLASH_ERRORS and node.args:
                codes = _codes(node.args[0])
                if codes:
                    found.append(Shown(where, codes, _keywords(node)))
            elif name == "async_abort" and path.stem in CONFIG_FLOW_MODULES:
                keywords = {keyword.arg: keyword.value for keyword in node.keywords}
                reason = keywords.get("reason")
                codes = _codes(reason) if reason is not None else ()
                if codes:
                    placeholders = _dict_keys(keywords.get("description_placeholders"))
                    found.append(Shown(where, codes, placeholders))
    return found


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


SHOWN = _shown()


def test_the_scan_finds_the_places_that_show_errors() -> None:
    """The scan itself works: it sees the known raises and aborts (or this test is empty)."""
    codes = {code for shown in SHOWN for code in shown.codes}
    assert {"certificate_pinned", "half_flashed", "download_interrupted"} <= codes
    assert {"device_busy", "mqtt_not_configured"} & codes
    assert len(SHOWN) > 15


@pytest.mark.parametrize("shown", [s for s in SHOWN if s.given is not None], ids=str)
def test_every_placeholder_of_the_text_gets_a_value(shown: Shown) -> None:
    assert shown.given is not None
    for code in shown.codes:
        texts = []
        if code in STRINGS["config"]["abort"]:
            texts.append(STRINGS["config"]["abort"][code])
        if code in STRINGS["exceptions"]:
            texts.append(STRINGS["exceptions"][code]["message"])
        assert texts, f"{shown.where}: {code} has no text (config.abort or exceptions)"
        for text in texts:
            missing = _placeholders(text) - shown.given
            assert not missing, f"{shown.where}: {code} leaves {sorted(missing)} unfilled"
