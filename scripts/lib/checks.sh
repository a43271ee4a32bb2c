#!/usr/bin/env bash
# Runs ruff, mypy and pytest with the given venv. Used by scripts/test, natively
# or inside the Debian sid chroot. Usage: checks.sh VENV LABEL [pytest args...]
set -uo pipefail
venv=$1; label=$2; shift 2
cd "$(dirname "$0")/../.."
export PYTHONDONTWRITEBYTECODE=1
ha_version=$("$venv/bin/python" -c 'from homeassistant.const import __version__; print(__version__)')
py_version=$("$venv/bin/python" -c 'import platform; print(platform.python_version())')
echo "=== [$label] Home Assistant $ha_version on Python $py_version ==="
status=0
echo "--- [$label] ruff"
"$venv/bin/ruff" check . || status=1
"$venv/bin/ruff" format --check . || status=1
echo "--- [$label] mypy --strict"
# A cache per environment: the two HA versions' runs may go at once, and a shared
# .mypy_cache written by both at the same time crashes mypy ("Duplicates in dependencies").
"$venv/bin/mypy" --cache-dir "$venv/mypy-cache" || status=1
echo "--- [$label] pytest"
"$venv/bin/python" -m pytest -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -ne 0 ]; then status=1; fi
echo "=== [$label] Home Assistant $ha_version: $([ $status -eq 0 ] && echo PASSED || echo FAILED) ==="
exit $status
