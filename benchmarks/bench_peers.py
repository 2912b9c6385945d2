# SPDX-License-Identifier: Apache-2.0
"""Compare this provider with what users would pick instead, on one emulator, in one run.

Clients (configured as their own docs suggest; see ``peer_clients.PEER_CONFIG``): this provider's
``ClioHook.paginate`` (1 pool slot per stream), the loop Clio's rate-limit guide suggests (no pacing,
backoff 1-2-4-8-16 s after each 429), and Airflow's ``HttpOperator`` with ``pagination_function`` and
tenacity ``retry_args``. Each scenario runs three concurrent streams (OS processes, one resource each) of one
OAuth application against the emulator's limit of 3 requests per sliding second, on loopback and at ~200 ms
round trips (inbound 20 ± 15 ms before the arrival stamp, answer 180 ms later). A last phase measures client
CPU per 100,000 records with pacing off (no limit, loopback, one stream).

Usage::

    python benchmarks/bench_peers.py                       # default: 3,000 records per stream (~5 min)
    python benchmarks/bench_peers.py --records 3000 30000  # long form: + 30,000 per stream (~20 min more)

Prints a Markdown table (ratios to the provider measured in the same run) and writes
``benchmarks/peers_rps.png`` (requests per second over time per client, 429s marked).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peer_clients import CLIENTS, PAGE  # noqa: E402

from airflow_provider_clio.testing import ClioEmulator, Latency  # noqa: E402

RESOURCES = ("contacts", "matters", "activities")
LIMIT = 3
LATENCIES = {
    "loopback": Latency(),
    "200ms": Latency(inbound_delay=0.02, inbound_jitter=0.015, response_delay=0.18, seed=1),
}
READY_TIMEOUT = 120.0


@dataclass
class Run:
    """Figures of one client in one scenario (three streams)."""

    client: str
    latency: str
    records: int
    wall: float
    requests: int
    min_requests: int
    rate_limited: int
    utilisation: float
    max_in_1s: int
    peak_rss_mib: float
    rss_growth_mib: float
    cpu_seconds: float
    errors: list[str]
    arrivals: list[tuple[float, int]]  # (seconds after the start, status)


def run_streams(
    emu: ClioEmulator,
    client: str,
    workdir: Path,
    *,
    label: str,
    streams: int = 3,
    rps: float = 1.0,
    fork_at_go: bool = False,
) -> tuple[list[dict[str, Any]], float, str]:
    """Run ``streams`` streams (one resource each) of ``client``; return results, start time, client id."""
    client_id = f"peer-{client}-{label}"
    emu.register_app(client_id, "peer-secret-value", "us")
    token, expires_at = emu.issue_access_token(client_id)
    conn = emu.connection(
        client_id=client_id, access_token=token, expires_at=expires_at, requests_per_slot=rps
    )
    env = dict(os.environ)
    env["AIRFLOW_CONN_CLIO_PEER"] = json.dumps(conn)
    env["AIRFLOW_CONN_HTTP_PEER"] = json.dumps({"conn_type": "http", "host": emu.url})
    go = workdir / f"go-{client_id}"
    specs = [
        {
            "client": client,
            "resource": resource,
            "url": emu.url,
            "token": token,
            "conn_id": "clio_peer",
            "http_conn_id": "http_peer",
            "ready": str(workdir / f"ready-{client_id}-{resource}"),
            "result": str(workdir / f"result-{client_id}-{resource}.json"),
            "go": str(go),
            "fork_at_go": fork_at_go,
        }
        for resource in RESOURCES[:streams]
    ]
    # The clients' own log lines (the HTTP hook logs every 429 as an error) go to a file, not the report.
    with (workdir / "clients.log").open("a") as log:
        procs = [
            subprocess.Popen(
                [sys.executable, str(HERE / "peer_clients.py"), json.dumps(s)],
                env=env,
                stdout=log,
                stderr=log,
            )
            for s in specs
        ]
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(Path(s["ready"]).exists() for s in specs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{client} streams did not get ready")
            time.sleep(0.05)
        start_at = time.monotonic() + 0.5
        go.with_suffix(".tmp").write_text(repr(start_at))
        go.with_suffix(".tmp").replace(go)
        for p in procs:
            p.wait(timeout=3600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [json.loads(Path(s["result"]).read_text()) for s in specs], start_at, client_id


def measure(
    emu: ClioEmulator, client: str, records: int, latency: str, workdir: Path, *, fork_at_go: bool = False
) -> Run:
    """Run three streams of ``client`` and compute its figures from the emulator's log."""
    results, start, client_id = run_streams(
        emu, client, workdir, label=f"{latency}-{records}", fork_at_go=fork_at_go
    )
    mine = [r for r in emu.requests if r.is_api and r.client_id == client_id]
    wall = max(r["end"] for r in results) - start
    admitted = sum(1 for r in mine if r.status == 200)
    return Run(
        client=client,
        latency=latency,
        records=records,
        wall=wall,
        requests=len(mine),
        min_requests=len(results) * math.ceil(records / PAGE),
        rate_limited=sum(1 for r in mine if r.status == 429),
        utilisation=admitted / wall / LIMIT,
        max_in_1s=emu.max_requests_in_window(client_id=client_id),
        peak_rss_mib=max(r["peak_rss_mib"] for r in results),
        rss_growth_mib=max(r["peak_rss_mib"] - r["base_rss_mib"] for r in results),
        cpu_seconds=sum(r["cpu_seconds"] for r in results),
        errors=[r["error"] for r in results if r["error"]] + _short(results, records),
        arrivals=[(r.t - start, r.status) for r in mine],
    )


def _short(results: list[dict[str, Any]], records: int) -> list[str]:
    return [f"got {r['records']} of {records} records" for r in results if r["records"] != records]


def cpu_per_100k(client: str, records: int, workdir: Path) -> float:
    """Client CPU seconds per 100,000 records with pacing off (no limit, loopback, one stream)."""
    with ClioEmulator(rate_limit=None, records={"contacts": records}) as emu:
        results, _, _ = run_streams(emu, client, workdir, label="cpu", streams=1, rps=1000.0)
    (result,) = results
    if result["error"] or not result["records"]:
        raise RuntimeError(f"{client} CPU run failed: {result['error']}")
    return result["cpu_seconds"] * 100_000 / result["records"]


def table(runs: list[Run], cpu: dict[str, float]) -> str:
    """Render the figures as Markdown, each as a ratio to the provider's run of the same scenario."""
    base = {(r.latency, r.records): r for r in runs if r.client == "provider"}
    lines = [
        "| scenario | client | wall s (x provider) | ÷ ideal | requests / min (x provider) | 429s "
        "| utilisation (x provider) | max in 1 s | peak RSS MiB (x provider) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        b = base[(r.latency, r.records)]
        ideal = r.min_requests / LIMIT
        lines.append(
            f"| {r.latency}, 3 x {r.records:,} | {r.client} | {r.wall:.1f} ({r.wall / b.wall:.2f}x) "
            f"| {r.wall / ideal:.2f} | {r.requests} / {r.min_requests} ({r.requests / b.requests:.2f}x) "
            f"| {r.rate_limited} | {r.utilisation:.3f} ({r.utilisation / b.utilisation:.2f}x) "
            f"| {r.max_in_1s} | {r.peak_rss_mib:.0f} ({r.peak_rss_mib / b.peak_rss_mib:.2f}x) "
            f"| {len(r.errors)} |"
        )
    if cpu:
        lines += ["", "| client | CPU s per 100k records, pacing off (x provider) |", "|---|---|"]
        lines += [f"| {c} | {s:.2f} ({s / cpu['provider']:.2f}x) |" for c, s in cpu.items()]
    return "\n".join(lines)


def plot(runs: list[Run], path: Path) -> None:
    """Requests per second over time, one panel per client and scenario, 429s marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = sorted({(r.latency, r.records) for r in runs}, key=lambda s: (s[1], s[0]))
    clients = list(dict.fromkeys(r.client for r in runs))
    fig, axes = plt.subplots(
        len(clients), len(scenarios), figsize=(5 * len(scenarios), 2.3 * len(clients)), squeeze=False
    )
    for run in runs:
        ax = axes[clients.index(run.client)][scenarios.index((run.latency, run.records))]
        span = math.ceil(max((t for t, _ in run.arrivals), default=1.0)) + 1
        bins = list(range(span + 1))
        ok = [t for t, s in run.arrivals if s != 429]
        limited = [t for t, s in run.arrivals if s == 429]
        ax.hist(
            [ok, limited], bins=bins, stacked=True, color=["tab:blue", "tab:red"], label=["answered", "429"]
        )
        if limited:
            ax.plot(limited, [6.5] * len(limited), "rx", markersize=4)
        ax.axhline(LIMIT, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylim(0, 7)
        ax.set_title(f"{run.client} · {run.latency} · 3 x {run.records:,}", fontsize=9)
        ax.set_xlabel("s since start", fontsize=8)
        ax.set_ylabel("requests / s", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    """Run every scenario, print the table, write the plot; exit 1 if a stream failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[3000], help="records per stream")
    parser.add_argument("--latency", nargs="+", choices=list(LATENCIES), default=list(LATENCIES))
    parser.add_argument("--clients", nargs="+", choices=list(CLIENTS), default=list(CLIENTS))
    parser.add_argument("--cpu-records", type=int, default=30000, help="0 skips the CPU phase")
    parser.add_argument("--plot", type=Path, default=HERE / "peers_rps.png")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument(
        "--fork-at-go",
        action="store_true",
        help="run each stream in a process forked at the common start, as a task with no start-up time",
    )
    args = parser.parse_args(argv)
    if "provider" not in args.clients:
        parser.error("the provider is the baseline: keep it in --clients")

    home = Path(tempfile.mkdtemp(prefix="clio-bench-airflow-"))
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="clio-bench-peers-"))
    runs: list[Run] = []
    for records in args.records:
        for latency in args.latency:
            counts = dict.fromkeys(RESOURCES, records)
            with ClioEmulator(records=counts, latency=LATENCIES[latency]) as emu:
                for client in args.clients:
                    run = measure(emu, client, records, latency, workdir, fork_at_go=args.fork_at_go)
                    print(
                        f"{latency} 3x{records} {client}: {run.wall:.1f} s, {run.requests} requests, "
                        f"{run.rate_limited} x 429, utilisation {run.utilisation:.3f}",
                        flush=True,
                    )
                    runs.append(run)
    cpu = {c: cpu_per_100k(c, args.cpu_records, workdir) for c in args.clients} if args.cpu_records else {}
    print()
    print(table(runs, cpu))
    plot(runs, args.plot)
    print(f"\nplot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs], "cpu_per_100k": cpu}, indent=1))
    failed = [f"{r.client} {r.latency} {r.records}: {r.errors}" for r in runs if r.errors]
    for line in failed:
        print("FAILED", line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
