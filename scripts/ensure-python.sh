#!/usr/bin/env bash
# Create the project virtualenv, installing python3-venv first when a fresh
# Debian machine lacks it and we are root.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    exit 0
fi
command -v "$python" >/dev/null || { echo "ensure-python: $python not found; install Python >= 3.11" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "ensure-python: $python is older than 3.11" >&2; exit 1; }
if ! "$python" -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq python3-venv
        "$python" -m venv "$venv"
    else
        echo "ensure-python: '$python -m venv' failed; install the python3-venv package" >&2
        exit 1
    fi
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -U pip
