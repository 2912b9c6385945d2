# SPDX-License-Identifier: Apache-2.0
"""The multi-process rate-limit scenario, shared by the slow tests and ``benchmarks/bench_rate_limit.py``.

Several OS processes, each with its own ClioHook (and so its own in-process limiter), page through one
emulator at the same time, like Airflow tasks of one pool on different workers. One helper process imports
Airflow once and forks the workers (as Airflow's LocalExecutor and Celery's prefork pool do), which keeps the
start-up short on busy machines. The parent waits until every worker has built its hook, then gives them a
common start time so start-up does not skew the measured window. Each worker reports when its first and
last page completed.

Run as a script, the module is that helper: ``python rate_scenario.py '<json list of worker specs>'``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_clio.testing import ClioEmulator

ENDPOINT = "grow/contacts"
FIELDS = "id,name,updated_at"
READY_TIMEOUT = 60.0


@dataclass
class Worker:
    """
    One process of the scenario.

    :param name: Label in the results.
    :param region: Region of the application the process uses.
    :param client_id: The emulator application (processes of one application share its rate limit).
    :param pool_slots: ``pool_slots`` passed to the hook; ``None`` = default (1 outside a task).
    """

    name: str
    region: str
    client_id: str
    pool_slots: int | None = None


@dataclass
class WorkerResult:
    """What a worker reports (monotonic times are comparable across processes on one host)."""

    name: str
    region: str
    first: float | None = None
    last: float | None = None
    pages: int = 0
    requests: int = 0
    rate_limited: int = 0
    retries: int = 0
    error: str | None = None


@dataclass
class RegionFigures:
    """Measured figures of one region."""

    region: str
    processes: int
    configured_rate: float
    window_start: float
    window_seconds: float
    admitted_in_window: int
    utilisation: float
    max_in_any_1s_window: int
    rate_limited: int


@dataclass
class ScenarioResult:
    """Everything a run measured."""

    limit: int
    duration: float
    wall_seconds: float
    regions: dict[str, RegionFigures]
    workers: list[WorkerResult]
    output: str = field(repr=False, default="")
    secrets: list[str] = field(repr=False, default_factory=list)


def run_scenario(
    emu: ClioEmulator, workers: list[Worker], *, duration: float, workdir: Path, limit: int = 3
) -> ScenarioResult:
    """Run ``workers`` as OS processes against ``emu`` for ``duration`` seconds and measure the rate."""
    started = time.monotonic()
    go_file = workdir / "go"
    go_file.unlink(missing_ok=True)
    env = dict(os.environ)
    conn_ids: dict[str, str] = {}
    secrets: list[str] = []
    for worker in workers:
        if worker.client_id in conn_ids:
            continue
        # Processes of one application share one connection and one token store, like tasks on workers.
        conn_id = f"clio_bench_{worker.client_id.replace('-', '_')}"
        token, expires_at = emu.issue_access_token(worker.client_id)
        conn = emu.connection(client_id=worker.client_id, access_token=token, expires_at=expires_at)
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
        secrets += [conn["password"], conn["extra"]["refresh_token"], token]
        conn_ids[worker.client_id] = conn_id
    specs = []
    for worker in workers:
        spec = {
            "name": worker.name,
            "region": worker.region,
            "conn_id": conn_ids[worker.client_id],
            "pool_slots": worker.pool_slots,
            "duration": duration,
            "store": str(workdir / "tokens.json"),
            "ready": str(workdir / f"ready-{worker.name}"),
            "go": str(go_file),
            "result": str(workdir / f"result-{worker.name}.json"),
        }
        Path(spec["ready"]).unlink(missing_ok=True)
        Path(spec["result"]).unlink(missing_ok=True)
        specs.append(spec)
    process = subprocess.Popen(
        [sys.executable, __file__, json.dumps(specs)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(Path(spec["ready"]).exists() for spec in specs):
            if time.monotonic() > deadline or process.poll() is not None:
                output = process.communicate(timeout=5)[0] if process.poll() is not None else ""
                raise RuntimeError(f"the workers did not get ready:\n{output[-3000:]}")
            time.sleep(0.02)
        emu.clear_requests()
        start_at = time.monotonic() + 0.5
        tmp = go_file.with_suffix(".tmp")
        tmp.write_text(repr(start_at))
        tmp.replace(go_file)
        output = process.communicate(timeout=duration + 60)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    results = []
    for worker in workers:
        path = workdir / f"result-{worker.name}.json"
        if process.returncode != 0 or not path.exists():
            raise RuntimeError(f"worker {worker.name} failed ({process.returncode}):\n{output[-3000:]}")
        results.append(WorkerResult(**json.loads(path.read_text())))
    regions = {}
    for region in sorted({w.region for w in workers}):
        members = [r for r in results if r.region == region]
        regions[region] = _figures(emu, region, members, workers, limit)
    return ScenarioResult(
        limit=limit,
        duration=duration,
        wall_seconds=time.monotonic() - started,
        regions=regions,
        workers=results,
        output=output,
        secrets=secrets,
    )


def _figures(
    emu: ClioEmulator, region: str, members: list[WorkerResult], workers: list[Worker], limit: int
) -> RegionFigures:
    for member in members:
        if member.error or member.first is None or member.last is None:
            raise RuntimeError(f"worker {member.name} reported no pages: {member.error}")
    # The common active window: every process of the region was sending all along it. Its bounds are page
    # completions, which trail their requests' arrivals by a few milliseconds of latency; when processes
    # run in step, the last arrivals of one process can land just after another's last completion and
    # drop out of the count. Shifting the window by half an emission interval puts both bounds between
    # arrivals, so it counts one arrival per interval per process with no fencepost error.
    shift = 0.5 / max(w.pool_slots or 1 for w in workers if w.region == region)
    start = max(m.first for m in members if m.first is not None) + shift
    end = min(m.last for m in members if m.last is not None) + shift
    admitted = [
        r.t
        for r in emu.requests
        if r.is_api and r.region == region and r.status == 200 and start < r.t <= end
    ]
    seconds = max(end - start, 1e-9)
    slots = sum(w.pool_slots or 1 for w in workers if w.region == region)
    return RegionFigures(
        region=region,
        processes=len(members),
        configured_rate=float(slots),
        window_start=start,
        window_seconds=end - start,
        admitted_in_window=len(admitted),
        utilisation=len(admitted) / (seconds * limit),
        max_in_any_1s_window=emu.max_requests_in_window(region=region),
        rate_limited=emu.count(status=429, region=region),
    )


def format_result(result: ScenarioResult, title: str) -> str:
    """Render the figures as a small table."""
    lines = [
        f"{title} (limit {result.limit} req/s per application and region, {result.duration:.0f} s run, "
        f"{result.wall_seconds:.1f} s wall)",
        f"{'region':<7}{'procs':>6}{'paced':>8}{'window s':>10}{'admitted':>10}{'req/s':>8}"
        f"{'utilisation':>13}{'max/1s':>8}{'429s':>6}",
    ]
    for fig in result.regions.values():
        rate = fig.admitted_in_window / fig.window_seconds if fig.window_seconds else 0.0
        lines.append(
            f"{fig.region:<7}{fig.processes:>6}{fig.configured_rate:>8.2f}{fig.window_seconds:>10.2f}"
            f"{fig.admitted_in_window:>10}{rate:>8.3f}{fig.utilisation:>13.3f}{fig.max_in_any_1s_window:>8}"
            f"{fig.rate_limited:>6}"
        )
    for worker in result.workers:
        span = (worker.last or 0.0) - (worker.first or 0.0)
        rate = (worker.pages - 1) / span if span > 0 else 0.0
        lines.append(
            f"  {worker.name:<6} {worker.region}: {worker.requests} requests, {rate:.3f} req/s between its "
            f"first and last page, {worker.rate_limited} x 429, {worker.retries} retries"
        )
    return "\n".join(lines)


def to_json(result: ScenarioResult) -> dict[str, Any]:
    """Return the figures as JSON-ready data (without the workers' raw output)."""
    data = asdict(result)
    data.pop("output", None)
    data.pop("secrets", None)
    return data


def _worker(spec: dict[str, Any]) -> None:
    from airflow_provider_clio.auth import FileTokenStore
    from airflow_provider_clio.hooks.clio import ClioHook

    result = WorkerResult(name=spec["name"], region=spec["region"])
    hook = ClioHook(spec["conn_id"], pool_slots=spec["pool_slots"], token_store=FileTokenStore(spec["store"]))
    hook.token_manager.access_token()  # valid token from the connection: no request
    Path(spec["ready"]).touch()
    go = Path(spec["go"])
    while not go.exists():
        time.sleep(0.005)
    start_at = float(go.read_text())
    time.sleep(max(0.0, start_at - time.monotonic()))
    end = start_at + spec["duration"]
    try:
        while time.monotonic() < end:
            for _page in hook.iter_pages(ENDPOINT, fields=FIELDS):
                now = time.monotonic()
                result.first = now if result.first is None else result.first
                result.last = now
                result.pages += 1
                if now >= end:
                    break
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.requests = hook.stats.requests
    result.rate_limited = hook.stats.rate_limited
    result.retries = hook.stats.retries
    Path(spec["result"]).write_text(json.dumps(asdict(result)))


def _fork_workers(specs: list[dict[str, Any]]) -> int:
    # Import the heavy stack once, before forking: the children start with it loaded.
    import airflow_provider_clio.auth
    import airflow_provider_clio.hooks.clio  # noqa: F401

    children = []
    for spec in specs:
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                _worker(spec)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)
    failed = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(_fork_workers(json.loads(sys.argv[1])))
