"""`make bench`: every benchmark, one after the other, figures on stdout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ["bench.intake", "bench.smpp", "bench.e2e"]


def main() -> int:
    failed = 0
    for module in BENCHES:
        print(f"== {module}", flush=True)
        failed += subprocess.run([sys.executable, "-m", module], cwd=ROOT).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
