#!/usr/bin/env bash
# `make run`: the carrier simulators in the background, the daemon in the
# foreground; Ctrl-C (or SIGTERM) stops both.
set -euo pipefail
bin=${VENV:-.venv}/bin
config=${CONFIG:-conf/carrierd.toml}
"$bin/carrierd" sim all --config conf/sim.toml --bot demo-bot &
sim_pid=$!
trap 'kill "$sim_pid" 2>/dev/null || true; wait "$sim_pid" 2>/dev/null || true' EXIT
"$bin/carrierd" run --config "$config"
