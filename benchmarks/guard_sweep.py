# SPDX-License-Identifier: Apache-2.0
"""Sweep the limiter's window guard in virtual time: how often a 4th arrival lands in one second, and the use.

The server model is the one of ``tests/test_rate_limit_arrivals.py`` (arrival stamped 5-35 ms after the send),
with the answer 180 ms after the stamp or, harsher, 120-300 ms after it (Clio's own time varies by page), and
no pause or a pause of 50 ms to 2.5 s at a random moment (every request arriving during it is stamped when it
ends). Each run is 30 s of virtual time for 3 tasks x 1 slot and 1 task x 3 slots. Usage::

    python benchmarks/guard_sweep.py [--seeds 200]
    git show REV:airflow_provider_clio/rate_limit.py > /tmp/old.py
    python benchmarks/guard_sweep.py --limiter /tmp/old.py   # the same sweep for another version

Prints, per server model, the runs with more than 3 arrivals in a sliding second (without and with a pause),
and the utilisation of the runs without a pause (2 s to 29 s).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import random
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--limiter", type=Path, default=ROOT / "airflow_provider_clio" / "rate_limit.py")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)  # the limiter logs each task's hand-over wait
    model = _load("clio_arrivals_model", ROOT / "tests" / "test_rate_limit_arrivals.py")
    RateLimiter = _load("clio_swept_limiter", args.limiter).RateLimiter

    rng = random.Random(7)
    for answer in ((0.18, 0.18), (0.12, 0.30)):
        runs = 0
        over = {False: 0, True: 0}
        used: list[float] = []
        for seed in range(args.seeds):
            for tasks, slots in ((3, 1), (1, 3)):
                for paused in (False, True):
                    begin = rng.uniform(0.2, 25.0)
                    pause = (begin, begin + rng.uniform(0.05, 2.5)) if paused else None
                    vt = model.VirtualTime()
                    server = model.Server(seed, pause, answer)
                    limiters = [RateLimiter(slots, clock=vt.clock) for _ in range(tasks)]
                    streams = [model.stream(vt, lim, server, until=30.0) for lim in limiters]
                    vt.run([work for work in streams for _ in range(slots)])
                    runs += 1
                    over[paused] += model.max_in_window(server.arrivals) > model.LIMIT
                    if not paused:
                        used.append(model.utilisation(server.arrivals, 2.0, 29.0))
        print(
            f"answer {answer[0] * 1000:.0f}-{answer[1] * 1000:.0f} ms after the stamp: {runs} runs; "
            f"a 4th arrival in one second in {over[False]} of {runs // 2} without a pause and "
            f"{over[True]} of {runs // 2} with one; utilisation without a pause "
            f"min {min(used):.3f}, mean {sum(used) / len(used):.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
