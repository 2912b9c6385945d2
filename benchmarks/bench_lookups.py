# SPDX-License-Identifier: Apache-2.0
"""Measure what refreshing known records costs: one GET per id (``get_record``) or ``ids[]`` batches.

Two parts, each against an in-process emulator:

1. **Requests** for ``--records`` ids (default 1,000): every single GET and every batched list call is
   counted by the emulator (its limit off, the hook paced by a fake clock, so this takes seconds).
2. **Wall time at Clio's limit** (3 requests per sliding second, the hook holding 3 pool slots): all
   ``--records`` ids batched, measured; single GETs for a ``--sample`` of them (default 100), measured, and
   extrapolated linearly to ``--records`` (printed as an extrapolation). 429s are counted in both.

Usage::

    python benchmarks/bench_lookups.py [--records 1000] [--sample 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

CONN_ID = "clio_bench_lookups"
ENDPOINT = "grow/contacts"


def _hook(emu: Any, *, fake_time: bool) -> Any:
    from airflow_provider_clio.auth import MemoryTokenStore
    from airflow_provider_clio.hooks.clio import ClioHook
    from airflow_provider_clio.rate_limit import reset_shared_limiters

    reset_shared_limiters()
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(emu.connection())
    if not fake_time:
        return ClioHook(CONN_ID, token_store=MemoryTokenStore(), pool_slots=3)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    return ClioHook(CONN_ID, token_store=MemoryTokenStore(), clock=lambda: now[0], sleep=sleep)


def _single(hook: Any, ids: list[int]) -> list[dict[str, Any]]:
    return [hook.get_record(ENDPOINT, record_id).data for record_id in ids]


def _batched(hook: Any, ids: list[int]) -> list[dict[str, Any]]:
    lookup = hook.get_records(ENDPOINT, ids)
    records = list(lookup.records())
    if lookup.missing:
        raise RuntimeError(f"unexpected missing ids: {lookup.missing[:5]}")
    return records


def _run(
    emu: Any, fetch: Callable[[Any, list[int]], list[dict[str, Any]]], ids: list[int], fake: bool
) -> dict[str, Any]:
    """Run one way of fetching on a fresh hook; return its records' ids, requests, 429s and wall time."""
    hook = _hook(emu, fake_time=fake)
    emu.clear_requests()
    started = time.monotonic()
    records = fetch(hook, ids)
    seconds = time.monotonic() - started
    api = [r for r in emu.requests if r.is_api]
    hook.close()
    return {
        "ids": len(ids),
        "records": sorted(r["id"] for r in records),
        "requests": len(api),
        "rate_limited": sum(1 for r in api if r.status == 429),
        "busiest_1s": emu.max_requests_in_window(window=1.0),
        "span": api[-1].t - api[0].t if api else 0.0,
        "seconds": round(seconds, 2),
    }


def _measure(n: int, sample_size: int) -> dict[str, Any]:
    """Run both parts for ``n`` known ids and return the figures."""
    from airflow_provider_clio.testing import ClioEmulator

    # Every other id of a larger set: the known ids are not one contiguous range.
    ids = list(range(1, 2 * n + 1, 2))
    sample = ids[:sample_size]
    with ClioEmulator(records={"contacts": 2 * n}, rate_limit=None) as emu:
        count_single = _run(emu, _single, ids, fake=True)
        count_batched = _run(emu, _batched, ids, fake=True)
    with ClioEmulator(records={"contacts": 2 * n}) as emu:  # Clio's limit: 3 req/s
        timed_batched = _run(emu, _batched, ids, fake=False)
        timed_single = _run(emu, _single, sample, fake=False)
    same = [count_single.pop("records"), count_batched.pop("records"), timed_batched.pop("records")] == [
        ids
    ] * 3
    same &= timed_single.pop("records") == sample
    # Steady pace from the server's arrival times, plus the fixed start (token, first slot wait) measured.
    for run in (count_single, count_batched, timed_batched):
        run.pop("span")
    interval = timed_single.pop("span") / max(timed_single["requests"] - 1, 1)
    start = timed_single["seconds"] - interval * (timed_single["requests"] - 1)
    extrapolated = round(start + interval * (count_single["requests"] - 1), 1)
    return {
        "records": n,
        "requests": {"single": count_single, "batched": count_batched},
        "at_limit": {"batched": timed_batched, "single_sample": timed_single},
        "request_ratio": round(count_single["requests"] / count_batched["requests"], 1),
        "single_seconds_per_request": round(interval, 3),
        "single_seconds_extrapolated": extrapolated,
        "time_ratio_extrapolated": round(extrapolated / timed_batched["seconds"], 1),
        "same_records": same,
    }


def _print(f: dict[str, Any]) -> None:
    n, single, batched = f["records"], f["requests"]["single"], f["requests"]["batched"]
    timed, sample = f["at_limit"]["batched"], f["at_limit"]["single_sample"]
    print(f"Refreshing {n:,} known contacts (ids 1, 3, 5, ...):")
    print(f"  requests    single GETs: {single['requests']}, ids[] batches: {batched['requests']}")
    print(f"              ratio {f['request_ratio']}x")
    for title, run in ((f"{n:,} batched", timed), (f"{sample['ids']} single GETs", sample)):
        print(
            f"  at 3 req/s  {title}: {run['seconds']} s ({run['requests']} requests, "
            f"{run['rate_limited']} x 429, busiest second {run['busiest_1s']})"
        )
    print(
        f"  at 3 req/s  {n:,} single GETs: ~{f['single_seconds_extrapolated']} s EXTRAPOLATED from the "
        f"sample ({f['single_seconds_per_request']} s/request), "
        f"~{f['time_ratio_extrapolated']}x the batched time"
    )
    print(f"  same records both ways: {f['same_records']}")


def main(argv: list[str] | None = None) -> int:
    """Run both parts and print their figures; exit 1 if a 429 was seen or the records differ."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000, help="known ids to refresh")
    parser.add_argument("--sample", type=int, default=100, help="single GETs timed at the real limit")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    if not 2 <= args.sample <= args.records:
        parser.error("--sample must be between 2 and --records")

    # Never touch the developer's ~/airflow: Airflow reads its home when first imported.
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="clio-bench-airflow-")
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    figures = _measure(args.records, args.sample)
    _print(figures)
    if args.json:
        print(json.dumps(figures, indent=2))
    at_limit = figures["at_limit"]
    rate_limited = at_limit["batched"]["rate_limited"] + at_limit["single_sample"]["rate_limited"]
    return 0 if figures["same_records"] and rate_limited == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
