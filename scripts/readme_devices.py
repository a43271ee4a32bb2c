"""Regenerate README.md's "Which devices can be flashed" table from the eligibility table.

    python scripts/readme_devices.py          # rewrite the table between the markers
    python scripts/readme_devices.py --check  # exit 1 when README.md is out of date

The table lives in custom_components/sonoff_ota/proto/eligibility.py (`ROWS`); the same
rows drive the DIY preflight, the setup-mode firmware gate and the dashboard entities.
tests/test_eligibility.py fails when README.md and the table disagree.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
import sys
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TABLE = ROOT / "custom_components" / "sonoff_ota" / "proto" / "eligibility.py"


def load_table() -> ModuleType:
    """The eligibility module alone (no Home Assistant needed: it imports nothing of ours)."""
    spec = importlib.util.spec_from_file_location("sonoff_ota_eligibility", TABLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with --check, compare) the README table; 0 when it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--check", action="store_true", help="only compare, do not write")
    args = parser.parse_args(argv)
    table = load_table()
    text = README.read_text(encoding="utf-8")
    if table.readme_table(text) == table.markdown_table():
        print("README.md: the devices table is up to date")
        return 0
    if args.check:
        print("README.md: the devices table differs from proto/eligibility.py; run")
        print("  python scripts/readme_devices.py")
        return 1
    README.write_text(table.replace_readme_table(text), encoding="utf-8")
    print("README.md: devices table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
