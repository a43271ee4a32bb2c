"""Static checks of manifest.json, hacs.json and the translations."""

from __future__ import annotations

import json
from pathlib import Path
import re
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
INTEGRATION = ROOT / "custom_components" / "sonoff_ota"
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    else:
        out[prefix] = tree
    return out


def test_manifest_has_every_key_hacs_and_hassfest_want() -> None:
    manifest = _load(INTEGRATION / "manifest.json")
    keys = list(manifest)
    assert keys[:2] == ["domain", "name"]
    assert keys[2:] == sorted(keys[2:]), "hassfest wants domain, name, then sorted keys"
    assert manifest["domain"] == INTEGRATION.name
    for key in ("documentation", "issue_tracker", "codeowners", "version", "iot_class"):
        assert manifest[key], key
    assert manifest["documentation"].startswith("https://")
    assert manifest["config_flow"] is True
    # proto/host_wifi_nm_bus.py talks to NetworkManager with dbus-fast; HA pins it
    # (2.43.0 in 2025.4.4, 5.0.x later), so only a floor that every pin satisfies.
    assert manifest["requirements"] == ["dbus-fast>=2.43.0"]
    assert {"http", "network"} <= set(manifest["dependencies"])
    assert {"mqtt", "tasmota", "zeroconf"} <= set(manifest["after_dependencies"])
    assert manifest["integration_type"] in {"device", "hub", "service"}


def test_manifest_version_is_accepted_by_home_assistant() -> None:
    from awesomeversion import AwesomeVersion, AwesomeVersionStrategy

    version = AwesomeVersion(_load(INTEGRATION / "manifest.json")["version"])
    assert version.strategy in {
        AwesomeVersionStrategy.CALVER,
        AwesomeVersionStrategy.SEMVER,
        AwesomeVersionStrategy.SIMPLEVER,
        AwesomeVersionStrategy.BUILDVER,
        AwesomeVersionStrategy.PEP440,
    }


def test_hacs_json() -> None:
    hacs = _load(ROOT / "hacs.json")
    allowed = {
        "name", "homeassistant", "hacs", "content_in_root", "zip_release", "filename",
        "hide_default_branch", "country", "persistent_directory", "render_readme",
    }  # fmt: skip
    assert set(hacs) <= allowed, "HACS rejects unknown keys"
    assert hacs["name"] == "Sonoff OTA"
    assert hacs["homeassistant"] == "2025.4.0"
    assert hacs["render_readme"] is True


def _translation_files() -> list[Path]:
    return sorted((INTEGRATION / "translations").glob("*.json"))


def test_english_translation_matches_strings_json() -> None:
    assert _load(INTEGRATION / "strings.json") == _load(INTEGRATION / "translations" / "en.json")


def test_strings_json_holds_every_section_the_integration_uses() -> None:
    """A bad merge once left every strings file as `{}`, and the comparisons still held."""
    strings = _load(INTEGRATION / "strings.json")
    for section in ("config", "options", "entity", "exceptions", "issues", "selector", "services"):
        assert strings.get(section), f"strings.json has no {section!r} section"
    assert strings["config"]["step"]["user"]["title"]


@pytest.mark.parametrize("path", _translation_files(), ids=lambda p: p.name)
def test_translation_has_every_key_with_the_same_placeholders(path: Path) -> None:
    source = _flatten(_load(INTEGRATION / "strings.json"))
    translated = _flatten(_load(path))
    assert set(translated) == set(source), (
        f"missing: {sorted(set(source) - set(translated))}, "
        f"extra: {sorted(set(translated) - set(source))}"
    )
    for key, text in source.items():
        assert set(PLACEHOLDER.findall(translated[key])) == set(PLACEHOLDER.findall(text)), key


@pytest.mark.parametrize("path", [*_translation_files(), INTEGRATION / "strings.json"], ids=str)
def test_strings_follow_hassfest_rules(path: Path) -> None:
    for key, text in _flatten(_load(path)).items():
        assert re.fullmatch(r"[a-z0-9_.-]+", key), key
        assert text == text.strip(), f"{key}: leading or trailing space"
        assert "<" not in text or "{" in text, f"{key}: HTML is not allowed"
        assert "http://" not in text and "https://" not in text, (
            f"{key}: use a placeholder for URLs"
        )
        assert "'{" not in text, f"{key}: placeholder in single quotes"
