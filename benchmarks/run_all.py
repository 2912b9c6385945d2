# SPDX-License-Identifier: Apache-2.0
"""Run every benchmark (``make bench``); each prints its own figures. Exits non-zero if one fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    "bench_rate_limit.py",
    "guard_sweep.py",
    "bench_extract_memory.py",
    "bench_peers.py",
    "bench_lookups.py",
)


def main() -> int:
    """Run the benchmarks one after another so they do not compete for the two cores."""
    failed = []
    for name in BENCHMARKS:
        print(f"\n=== {name} ===", flush=True)
        if subprocess.run([sys.executable, str(HERE / name)], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
