"""`make bench`: every benchmark, one after the other, figures on stdout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = [
    ["bench.intake"],
    # Each insert also reads a full 10,000-number opt-out list (DOMAIN §12).
    ["bench.intake", "--optout-list", "10000"],
    ["bench.smpp"],
    ["bench.e2e"],
    # The reassigned-number check on every message (§13), lookups answered
    # after 20 ms: its cost, as the median of alternating pairs of runs
    # (these machines' speed drifts by more than the cost between runs), on
    # a database holding a delivery log as one in use does: on an empty one
    # the plans PostgreSQL keeps, and when autovacuum first analyzes the
    # growing tables, move either run of a pair by more than the cost.
    [
        "bench.e2e",
        "--reassign-latency-ms",
        "20",
        "--pairs",
        "5",
        "--messages",
        "40000",
        "--history",
        "300000",
    ],
    # The daemon is one process on one core: the same eight binds (two per
    # carrier) split over two daemons, as on a host with a core for each.
    ["bench.e2e", "--daemons", "2", "--binds", "1"],
    # Every message skipping opted-out numbers (DOMAIN §12) against a full
    # 10,000-number list: its cost, the same way.
    [
        "bench.e2e",
        "--optout-list",
        "10000",
        "--pairs",
        "3",
        "--messages",
        "40000",
        "--history",
        "300000",
    ],
    # An SMSC that accepts 5 submits a second per bind: found and kept to?
    ["bench.throttle"],
    # New numbers, 15% ported: first guesses, refused submits, the rate.
    ["bench.guess"],
    # Short links: redirects/s with durable clicks, intake with 5 links
    # against none, and the opt-out browser test's screenshots.
    ["bench.links"],
    # Replies: single and 3-part SMS stored by engine/inbound.py, per flush.
    ["bench.inbound"],
    # A 100,000-recipient send with variables against the same as a batch.
    ["bench.sends"],
]


def main() -> int:
    failed = 0
    for module, *args in BENCHES:
        print(f"== {' '.join([module, *args])}", flush=True)
        command = [sys.executable, "-m", module, *args]
        failed += subprocess.run(command, cwd=ROOT).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
