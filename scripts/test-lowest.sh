#!/usr/bin/env bash
# Run the test suite against the lowest versions pyproject.toml allows.
#
#   scripts/test-lowest.sh [pytest arguments]
#
# Every runtime dependency's lower bound (">=X") is installed, exactly
# (==X, without its own dependencies), into var/lowest, which goes first on
# PYTHONPATH; everything else (their dependencies, pytest) comes from .venv.
# Run it when raising or questioning a lower bound.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TARGET=var/lowest

mapfile -t pins < <("$VENV/bin/python" - <<'PY'
import re
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
for requirement in project["dependencies"]:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", requirement.replace(" ", ""))
    if match is None:
        raise SystemExit(f"pyproject.toml: {requirement!r} has no plain >= lower bound")
    print(f"{match.group(1)}=={match.group(2)}")
PY
)

rm -rf "$TARGET"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --target "$TARGET" "${pins[@]}"
echo "lowest: ${pins[*]}"
PYTHONPATH="$PWD/$TARGET:$PWD/src:$PWD" "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
