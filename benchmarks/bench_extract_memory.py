# SPDX-License-Identifier: Apache-2.0
"""Show that ClioExtractOperator's memory does not grow with the number of records.

Extracts 10,000 and then 200,000 contacts from the emulator (page size 200, no rate limit, the connection
paced far above the emulator's speed) into a local JSONL destination. Each extraction runs in its own
subprocess against its own emulator process, so neither the other run nor the server is measured:

- peak RSS of the extracting process (``ru_maxrss``) and its growth over the RSS measured just before
  ``execute`` (imports, connection and operator already loaded);
- in a second subprocess, the peak of Python allocations during ``execute`` (``tracemalloc``).

Usage: ``python benchmarks/bench_extract_memory.py [--small 10000] [--large 200000] [--no-tracemalloc]``.
Prints one line per measurement and the large/small ratios; exits 1 if the RSS growth ratio exceeds
``--max-ratio`` (default 2.0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def start_emulator(records: int) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start an emulator process with ``records`` contacts; return it and its ready line."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_clio.testing.emulator",
            "--port",
            "0",
            "--records",
            f"contacts={records}",
            "--no-rate-limit",
            "--page-size",
            "200",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    ready = json.loads(process.stdout.readline())
    return process, ready


def child(mode: str, out: str) -> None:
    """Run one extraction in this process and write the measurements to ``out`` (JSON)."""
    import resource
    import time

    import psutil

    from airflow_provider_clio.auth import MemoryTokenStore
    from airflow_provider_clio.operators.extract import ClioExtractOperator

    operator = ClioExtractOperator(
        task_id="bench",
        clio_conn_id="clio_bench",
        endpoint="grow/contacts",
        fields=["id", "name", "email", "phone", "status", "source{id,name}", "created_at", "updated_at"],
        destination=f"file://{os.environ['BENCH_DESTINATION']}",
        token_store=MemoryTokenStore(),
    )
    baseline = psutil.Process().memory_info().rss
    tracemalloc_peak = None
    started = time.perf_counter()
    if mode == "tracemalloc":
        import tracemalloc

        tracemalloc.start()
        summary = operator.execute({})
        tracemalloc_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    else:
        summary = operator.execute({})
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    Path(out).write_text(
        json.dumps(
            {
                "records": summary["records"],
                "files": summary["files"],
                "seconds": seconds,
                "baseline_rss": baseline,
                "peak_rss": peak,
                "tracemalloc_peak": tracemalloc_peak,
            }
        )
    )


def measure(records: int, mode: str) -> dict[str, Any]:
    """Extract ``records`` contacts in a fresh subprocess against a fresh emulator; return its figures."""
    emulator, ready = start_emulator(records)
    try:
        client_id = "clio-emulator-us"
        app = ready["apps"][client_id]
        connection = {
            "conn_type": "clio",
            "host": ready["url"],
            "login": client_id,
            "password": app["client_secret"],
            "extra": {"region": "us", "refresh_token": app["refresh_token"], "requests_per_slot": 100000},
        }
        with tempfile.TemporaryDirectory(prefix="clio-bench-") as tmp:
            out = os.path.join(tmp, "result.json")
            env = {
                **os.environ,
                "AIRFLOW_HOME": os.path.join(tmp, "airflow"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW_CONN_CLIO_BENCH": json.dumps(connection),
                "BENCH_DESTINATION": os.path.join(tmp, "out"),
            }
            subprocess.run(
                [sys.executable, __file__, "--child", mode, out],
                cwd=ROOT,
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            result: dict[str, Any] = json.loads(Path(out).read_text())
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    if result["records"] != records:
        raise SystemExit(f"extracted {result['records']} records, expected {records}")
    return result


def mib(value: float) -> str:
    return f"{value / 2**20:7.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the tracemalloc runs")
    parser.add_argument("--max-ratio", type=float, default=2.0, help="fail above this RSS growth ratio")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0

    results: dict[int, dict[str, Any]] = {}
    for records in (args.small, args.large):
        result = measure(records, "rss")
        if not args.no_tracemalloc:
            result["tracemalloc_peak"] = measure(records, "tracemalloc")["tracemalloc_peak"]
        results[records] = result
        growth = result["peak_rss"] - result["baseline_rss"]
        line = (
            f"{records:>8,} records in {result['files']:>3} files, {result['seconds']:6.1f} s: "
            f"peak RSS {mib(result['peak_rss'])} (baseline {mib(result['baseline_rss'])}, "
            f"growth {mib(growth)})"
        )
        if result["tracemalloc_peak"] is not None:
            line += f", tracemalloc peak {mib(result['tracemalloc_peak'])}"
        print(line, flush=True)

    small, large = results[args.small], results[args.large]
    peak_ratio = large["peak_rss"] / small["peak_rss"]
    growth_ratio = (large["peak_rss"] - large["baseline_rss"]) / max(
        small["peak_rss"] - small["baseline_rss"], 1
    )
    print(
        f"ratio {args.large:,}/{args.small:,} records ({args.large / args.small:.0f}x): "
        f"peak RSS {peak_ratio:.2f}x, RSS growth {growth_ratio:.2f}x",
        end="",
    )
    if small["tracemalloc_peak"] and large["tracemalloc_peak"]:
        print(f", tracemalloc peak {large['tracemalloc_peak'] / small['tracemalloc_peak']:.2f}x", end="")
    print()
    return 0 if growth_ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
