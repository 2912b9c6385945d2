# SPDX-License-Identifier: Apache-2.0
"""Measure how much of Clio's rate limit ClioHook uses, and that it never exceeds it, with real processes.

Scenarios against one emulator (default limit: 3 requests per sliding second per application and region):

1. three OS processes on one region (1 pool slot, 1 req/s each) plus one process on another region;
2. one process holding 3 pool slots.

Prints, per region, the admitted request rate over the common active window, the utilisation of the limit,
the most requests the emulator saw in any sliding second, and the 429s. Each scenario runs on loopback and
at ~200 ms round trips (the emulator's latency knobs: arrival stamped 20 +/- 15 ms after the send, the answer
180 ms after that). Usage::

    python benchmarks/bench_rate_limit.py [--duration 15] [--latency loopback 200ms] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
LATENCIES = ("loopback", "200ms")


def _load_scenario() -> ModuleType:
    path = ROOT / "tests" / "hooks" / "rate_scenario.py"
    spec = importlib.util.spec_from_file_location("clio_rate_scenario", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    """Run both scenarios and print their figures; exit 1 if a limit was exceeded."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds each scenario runs")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--latency", nargs="+", choices=LATENCIES, default=list(LATENCIES))
    args = parser.parse_args(argv)

    # Never touch the developer's ~/airflow: Airflow reads its home when first imported.
    home = Path(tempfile.mkdtemp(prefix="clio-bench-airflow-"))
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

    scenario = _load_scenario()
    from airflow_provider_clio.testing import ClioEmulator, Latency

    latencies = {
        "loopback": Latency(),
        "200ms": Latency(inbound_delay=0.02, inbound_jitter=0.015, response_delay=0.18, seed=1),
    }

    runs = {
        "3 processes on us (1 slot each) + 1 on eu": [
            scenario.Worker("us-1", "us", "bench-us"),
            scenario.Worker("us-2", "us", "bench-us"),
            scenario.Worker("us-3", "us", "bench-us"),
            scenario.Worker("eu-1", "eu", "bench-eu"),
        ],
        "1 process on us with pool_slots=3": [scenario.Worker("solo", "us", "bench-solo", pool_slots=3)],
    }
    summary = {}
    exceeded = False
    for (name, workers), latency in itertools.product(runs.items(), args.latency):
        title = f"{name}, {latency}"
        with ClioEmulator(records={"contacts": 20000}, latency=latencies[latency]) as emu:
            for client_id, region in {(w.client_id, w.region) for w in workers}:
                emu.register_app(client_id=client_id, client_secret="bench-secret-value", region=region)
            workdir = Path(tempfile.mkdtemp(prefix="clio-bench-"))
            result = scenario.run_scenario(emu, workers, duration=args.duration, workdir=workdir)
        print(scenario.format_result(result, title))
        print()
        summary[title] = scenario.to_json(result)
        exceeded |= any(
            f.rate_limited or f.max_in_any_1s_window > result.limit for f in result.regions.values()
        )
    if args.json:
        print(json.dumps(summary, indent=2))
    return 1 if exceeded else 0


if __name__ == "__main__":
    sys.exit(main())
