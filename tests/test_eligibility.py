"""The eligibility table: the spec's facts, no holes, its sentences, and the README built from it.

Pure functions and files; no sockets. The DIY confirm step and the dashboard read the
same table through `DiyFlasher.check()` (tests/test_diy_flow.py, tests/test_update.py),
and setup mode through `firmware_verdict` (tests/test_setup_mode_flow.py).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
import re
import string
import sys
from types import ModuleType
from typing import Any

from hypothesis import given, strategies as st
import pytest

from custom_components.sonoff_ota.known_devices import DeviceRecord
from custom_components.sonoff_ota.proto import eligibility
from custom_components.sonoff_ota.proto.diy_discovery import check_eligibility
from custom_components.sonoff_ota.proto.eligibility import (
    README_END,
    README_START,
    ROWS,
    FlashPath,
    Verdict,
    check_diy,
    check_record,
    check_setup_mode,
    markdown_table,
    readme_table,
    replace_readme_table,
)
from custom_components.sonoff_ota.proto.setup_mode_flasher import firmware_verdict

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
INTEGRATION = ROOT / "custom_components" / "sonoff_ota"
LANGUAGES = ("en", "de", "fr", "nl", "es")

# (device_type, fwVersion, encrypted, model) -> the row that must decide, from the spec:
# diy-ota-and-tasmota.md §1.1 (generations), §1.3 (types), §2 (LAN mode, R4/BL602), §5.13.
DIY_FACTS: list[tuple[str | None, str | None, bool, str | None, str]] = [
    ("diy_plug", "3.3.0", False, None, "diy_verified"),
    ("diy_plug", "3.5.0", False, None, "diy_verified"),
    ("diy_plug", "3.6.0", False, None, "diy_verified"),
    ("diy_plug", "3.7.6", False, None, "diy_verified"),
    ("diy_plug", "3.8.0", False, None, "diy_unverified"),
    ("diy_plug", "3.8.2", False, None, "diy_unverified"),
    ("diy_plug", None, False, None, "diy_firmware_unreported"),  # v1.4 has no fwVersion
    ("diy_plug", "3.2.9", False, None, "diy_needs_update"),
    ("diy_plug", "2.7.1", False, None, "diy_needs_update"),
    ("plug", "1.1.0", False, "BASICR4", "diy_new_hardware"),
    ("diy_plug", "3.6.0", False, "MINIR4", "diy_new_hardware"),
    ("diy_plug", None, True, "CK-BL602-SWITCH", "diy_new_hardware"),
    ("plug", "1.2.0", True, None, "diy_firmware_1x"),  # hardware beats "switch to DIY"
    ("plug", "3.6.0", True, None, "diy_encrypted"),
    ("strip", "3.6.0", False, None, "diy_other_type"),
    ("th_plug", "3.6.0", False, None, "diy_other_type"),
    ("zigbee_thing", "3.6.0", False, None, "diy_unknown_type"),
    (None, "3.6.0", False, None, "diy_unknown_type"),
]
# romVersion -> row, from setup-mode-ota.md §10 and §13.10.
SETUP_FACTS: list[tuple[str | None, str]] = [
    ("1.5.5", "setup_works"),
    ("1.5.2", "setup_works"),
    ("2.0.1", "setup_works"),
    ("2.0.4", "setup_works"),
    ("1.6.0", "setup_pinned"),
    ("1.7.0", "setup_pinned"),
    ("1.8", "setup_pinned"),
    ("2.6.0", "setup_pinned"),
    ("2.8.0", "setup_pinned"),
    ("3.0.1", "setup_pinned"),
    ("3.6.0", "setup_pinned"),
    ("1.3.0", "setup_old"),
    ("1.2.0", "setup_old"),
    ("2.3.0", "setup_unknown"),
    (None, "setup_unknown"),
    ("garbage", "setup_unknown"),
]


@pytest.mark.parametrize(("device_type", "fw", "encrypted", "model", "row"), DIY_FACTS)
def test_diy_facts_pick_their_row(
    device_type: str | None, fw: str | None, encrypted: bool, model: str | None, row: str
) -> None:
    decision = check_diy(
        device_type=device_type, fw_version=fw, encrypted=encrypted, model=model, deviceid="1000e4"
    )
    assert decision.row.key == row
    assert decision.row.path is FlashPath.DIY
    # the DIY preflight (the confirm step, every dashboard flash) reads the same row
    verdict = check_eligibility(
        device_type=device_type, fw_version=fw, encrypted=encrypted, model=model
    )
    assert verdict.row == row
    assert verdict.ok is (decision.row.verdict is not Verdict.NO)


@pytest.mark.parametrize(("rom", "row"), SETUP_FACTS)
def test_setup_mode_facts_pick_their_row(rom: str | None, row: str) -> None:
    decision = check_setup_mode(rom)
    assert decision.row.key == row
    assert firmware_verdict(rom) == decision.row.reason  # the gate the flasher applies
    assert decision.ok is (row != "setup_pinned")


def test_every_row_is_reached_by_a_spec_fact() -> None:
    """No dead rows: each one decides at least one device from the spec."""
    reached = {row for *_, row in DIY_FACTS} | {row for _, row in SETUP_FACTS}
    assert reached == {row.key for row in ROWS}
    assert len({row.key for row in ROWS}) == len(ROWS), "row keys are unique"


@given(
    device_type=st.one_of(st.none(), st.sampled_from(["diy_plug", "plug", "strip"]), st.text()),
    fw=st.one_of(st.none(), st.text(), st.from_regex(r"\A\d{1,3}(\.\d{1,3}){0,3}\Z")),
    encrypted=st.booleans(),
    model=st.one_of(st.none(), st.text()),
)
def test_the_table_has_no_holes(
    device_type: str | None, fw: str | None, encrypted: bool, model: str | None
) -> None:
    """Whatever a device announces, some row decides (and the check never raises)."""
    check_diy(device_type=device_type, fw_version=fw, encrypted=encrypted, model=model)
    check_setup_mode(fw)


def test_records_are_judged_by_the_same_table() -> None:
    r4 = DeviceRecord("1000aa0001", host="127.0.0.1", model="BASICR4", fw_version="1.1.0")
    assert r4.eligibility.row.key == "diy_new_hardware"
    assert not r4.dashboard_flashable
    good = DeviceRecord("1000aa0002", host="127.0.0.1", fw_version="3.6.0", device_type="diy_plug")
    assert good.eligibility.row.key == "diy_verified"
    assert good.dashboard_flashable
    assert not DeviceRecord("1000aa0003", fw_version="3.6.0").dashboard_flashable, "no address"
    setup = DeviceRecord("10000abcde", path="setup_mode", fw_version="2.0.4")
    assert setup.eligibility.row.key == "setup_works"
    assert not setup.dashboard_flashable, "setup mode needs the flow"
    assert check_record("setup_mode", device_type=None, fw_version="2.6.0").row.key == (
        "setup_pinned"
    )


def _strings(language: str) -> dict[str, Any]:
    path = INTEGRATION / (
        "strings.json" if language == "strings" else f"translations/{language}.json"
    )
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_the_sentences_are_the_english_strings() -> None:
    """The table's sentence is what the user reads: strings.json holds exactly it."""
    options = _strings("strings")["selector"]["eligibility"]["options"]
    assert options == {row.key: row.sentence for row in ROWS}


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_language_has_every_sentence(language: str) -> None:
    options = _strings(language)["selector"]["eligibility"]["options"]
    assert set(options) == {row.key for row in ROWS}
    for row in ROWS:
        assert options[row.key].strip(), row.key
        if language != "en":
            assert options[row.key] != row.sentence, f"{language}: {row.key} is not translated"


@pytest.mark.parametrize("language", LANGUAGES)
def test_summary_templates_use_known_placeholders(language: str) -> None:
    """The notification's templates fill only what device_flashes gives them."""
    given_fields = {
        "title": {"done", "total"},
        "done": {"deviceid", "tasmota_device"},
        "failed": {"deviceid", "message"},
        "busy": {"deviceid"},
    }
    options = _strings(language)["selector"]["flash_summary"]["options"]
    assert set(options) == set(given_fields)
    for key, template in options.items():
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        assert fields == given_fields[key], (language, key)


def test_readme_table_is_the_code_table() -> None:
    """Fails when README.md and proto/eligibility.py disagree: run scripts/readme_devices.py."""
    text = README.read_text(encoding="utf-8")
    assert text.count(README_START) == 1 and text.count(README_END) == 1
    assert readme_table(text) == markdown_table()
    for row in ROWS:
        assert row.sentence in text


def _readme_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "readme_devices", ROOT / "scripts" / "readme_devices.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_script_finds_and_repairs_a_stale_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _readme_script()
    assert script.main(["--check"]) == 0
    stale = replace_readme_table(README.read_text(encoding="utf-8")).replace(
        ROWS[0].sentence, "Every device can be flashed."
    )
    copy = tmp_path / "README.md"
    copy.write_text(stale, encoding="utf-8")
    monkeypatch.setattr(script, "README", copy)
    assert script.main(["--check"]) == 1
    assert copy.read_text(encoding="utf-8") == stale, "--check writes nothing"
    assert script.main([]) == 0
    assert readme_table(copy.read_text(encoding="utf-8")) == markdown_table()
    assert script.main(["--check"]) == 0
    assert "differs" in capsys.readouterr().out


def test_the_table_module_needs_no_home_assistant() -> None:
    source = Path(eligibility.__file__).read_text(encoding="utf-8")
    assert not re.search(r"^\s*(from|import)\s+homeassistant", source, re.MULTILINE)
    assert not re.search(r"^from \.", source, re.MULTILINE), "loaded alone by the script"
