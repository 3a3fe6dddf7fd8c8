#!/usr/bin/env bash
# mypy -p pai on an installed (non-editable) build: the package-dir mapping (pai.cli -> cli/)
# is only visible to mypy after installation.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --target "$tmp/site" . >"$tmp/pip.log" 2>&1 || { cat "$tmp/pip.log"; exit 1; }
rm -rf build
cd "$tmp" && MYPYPATH="$tmp/site" "$OLDPWD/.venv/bin/mypy" --config-file "$OLDPWD/pyproject.toml" -p pai
