# SPDX-License-Identifier: Apache-2.0
"""
``make demo``: run the example warehouse DAG under a real Airflow scheduler against a local Clio emulator.

Starts the emulator (3 requests per second per application and region, like Clio), then a real Airflow on an
isolated home in the demo folder (SQLite metadata DB, LocalExecutor; ``api-server``, ``scheduler`` and
``dag-processor`` as subprocesses), creates the region pools with ``airflow clio pools --slots 3``, triggers
``clio_incremental_warehouse`` from the ``dags/`` folder with ``{"full_refresh": true}`` and waits for it.
The DAG's three load tasks run side by side in the ``clio_us`` pool, one slot each, each pacing itself at one
request per second. The report compares the rows loaded into the SQLite warehouse with the emulator's records
and shows how the rate limit was used: requests, 429s, the busiest 1 s window, the rate achieved and how many
tasks the pool ran at once. It exits non-zero unless the rows are exact, no request was answered 429 and no
1 s window held more than 3 requests. Every process is stopped on the way out, also on Ctrl-C or a failure.
"""

from __future__ import annotations

import argparse
import json
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from dev.deployment import (
    AirflowDeployment,
    AirflowDeploymentError,
    TaskSpan,
    concurrency_profile,
    tail,
)

DAG_ID = "clio_incremental_warehouse"
RUN_ID = "demo_full_refresh"
RESOURCES = ("contacts", "matters", "activities")
"""The resources the DAG loads, each into table ``clio_<resource>``."""
MARKER = ".clio-demo"
"""File that marks a folder as the demo's own, so recreating it never deletes anything else."""
DEMO_ENTRIES = frozenset({MARKER, "airflow", "logs", "warehouse.db", "demo.log"})
"""What the demo (this one or an earlier version) writes in its folder."""
DEFAULT_RECORDS = "contacts=10000,matters=10000,activities=10000"
APP = "clio-emulator-us"
POOL = "clio_us"
SLOTS = 3
RATE_LIMIT = 3
EMULATOR_TIMEOUT = 60.0
MIGRATE_TIMEOUT = 180.0
READY_TIMEOUT = 120.0
PROGRESS_EVERY = 10.0


class DemoFailed(Exception):
    """The demo could not finish; the message says why."""


@dataclass(frozen=True)
class RateFigures:
    """
    Hold how the region's budget was used.

    :param requests: API requests the emulator received from the demo's application.
    :param rate_limited: Of those, answered 429 (the rates count only the admitted ones).
    :param busiest: Most requests in any sliding 1 s window, as the emulator's limiter counts them.
    :param peak: Most tasks running at once in the pool (task instances in the metadata DB).
    :param side_by_side: ``(seconds, requests)`` while ``SLOTS`` tasks ran at once (metadata DB).
    :param overall: ``(seconds, requests)`` over the whole DAG run.
    """

    requests: int
    rate_limited: int
    busiest: int
    peak: int
    side_by_side: tuple[float, int]
    overall: tuple[float, int]


def _share(seconds: float, requests: int) -> str:
    """Render ``requests`` over ``seconds`` as a rate and a share of the limit."""
    if seconds <= 0:
        return "-"
    rate = requests / seconds
    return f"{rate:4.2f} req/s = {rate / RATE_LIMIT:4.0%} of {RATE_LIMIT}"


def _usage(label: str, figures: tuple[float, int]) -> str:
    """Render one line of the rate report."""
    seconds, requests = figures
    return f"  {label:<22} {seconds:6.1f} s  {requests:>5} requests  {_share(seconds, requests)}"


def _busy(spans: Sequence[TaskSpan], walls: Sequence[float]) -> tuple[float, int]:
    """Return the seconds ``SLOTS`` spans were open at once and the requests that arrived meanwhile."""
    _, segments = concurrency_profile(spans)
    busy = [(a, b) for a, b, running in segments if running >= SLOTS]
    return sum(b - a for a, b in busy), sum(1 for w in walls if any(a <= w < b for a, b in busy))


def rate_figures(
    requests: Sequence[dict[str, Any]], busiest: int, spans: Sequence[TaskSpan], run_seconds: float
) -> RateFigures:
    """
    Measure the rate used from the emulator's request log and the task instances of the run.

    :param requests: ``/_emulator/requests`` records (``wall`` epoch seconds, ``status``, ``resource``).
    :param busiest: The emulator's busiest 1 s window for the application.
    :param spans: The run's task instances in the pool.
    :param run_seconds: The DAG run's duration.
    """
    api = sorted(
        (r for r in requests if r.get("client_id") == APP and str(r.get("path", "")).startswith("/grow")),
        key=lambda r: float(r["wall"]),
    )
    walls = [float(r["wall"]) for r in api if r.get("status") != 429]
    peak, _ = concurrency_profile(spans)
    return RateFigures(
        requests=len(api),
        rate_limited=sum(1 for r in api if r.get("status") == 429),
        busiest=busiest,
        peak=peak,
        side_by_side=_busy(spans, walls),
        overall=(run_seconds, len(walls)),
    )


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (the emulator on loopback)
        return json.load(response)


def _table_counts(warehouse: Path) -> dict[str, int | None]:
    """Return the rows of each table, ``None`` for a table the run never created."""
    counts: dict[str, int | None] = {}
    with sqlite3.connect(warehouse) as db:
        for resource in RESOURCES:
            table = f"clio_{resource}"
            try:
                counts[table] = int(db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])  # noqa: S608
            except sqlite3.OperationalError:
                counts[table] = None
    return counts


def _start_emulator(records: str, log: IO[bytes]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_clio.testing.emulator", "--port", "0", "--records", records],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        # Its own session: Ctrl-C reaches the demo only, which stops everything in order.
        start_new_session=True,
    )


def _emulator_ready(emulator: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """Return the emulator's ready line (URL and apps), failing if it exits or stays silent."""
    assert emulator.stdout is not None
    readable, _, _ = select.select([emulator.stdout], [], [], timeout)
    line = emulator.stdout.readline() if readable else ""
    if not line:
        raise DemoFailed(f"the emulator was not ready within {timeout:.0f} s (exit code {emulator.poll()})")
    return dict(json.loads(line))


def _stop_emulator(emulator: subprocess.Popen[str] | None) -> None:
    if emulator is None or emulator.poll() is not None:
        return
    emulator.terminate()
    try:
        emulator.wait(timeout=10)
    except subprocess.TimeoutExpired:
        emulator.kill()
        emulator.wait(timeout=10)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class Demo:
    """
    Run the demo once in a folder.

    :param work: The demo folder (recreated).
    :param records: Emulator data set, e.g. ``contacts=10000,matters=10000,activities=10000``.
    :param dags: The dags folder holding ``clio_incremental_warehouse``.
    :param run_timeout: Seconds the DAG run may take.
    """

    def __init__(self, work: Path, records: str, dags: Path, run_timeout: float) -> None:
        self.work = work
        self.records = records
        self.dags = dags
        self.run_timeout = run_timeout
        self.logs = work / "logs"
        self.warehouse = work / "warehouse.db"
        self.started = time.monotonic()
        self.emulator: subprocess.Popen[str] | None = None
        self.deployment: AirflowDeployment | None = None
        self.url = ""
        self.times: dict[str, float] = {}
        self.stopped = False
        self.leftovers: list[str] = []

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _cli_log(self, output: str) -> None:
        with (self.logs / "cli.log").open("a") as log:
            log.write(output)

    def _recreate(self) -> None:
        """Empty the demo folder, refusing a non-empty folder the demo did not create."""
        if self.work.exists():
            entries = {entry.name for entry in self.work.iterdir()}
            if not (self.work / MARKER).exists() and not entries <= DEMO_ENTRIES:
                raise DemoFailed(f"{self.work} is not empty and not a demo folder: choose another --dir")
            shutil.rmtree(self.work)
        self.logs.mkdir(parents=True)
        (self.work / MARKER).write_text("Created by `make demo`; recreated on every run.\n")

    def run(self) -> int:
        """Run everything and print the report; return the exit code."""
        try:
            self._recreate()
        except (DemoFailed, OSError) as exc:
            print(f"Demo FAILED: {exc}", flush=True)
            return 1
        print(f"Demo folder: {self.work}", flush=True)
        print(
            f"  logs: {self.logs} (emulator, airflow CLI and components), task logs under "
            f"{self.work / 'airflow' / 'logs'}",
            flush=True,
        )
        previous_int = signal.getsignal(signal.SIGINT)
        previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        code = 1
        try:
            state = self._run_dag()
            code = self._report(state)
        except KeyboardInterrupt:
            print("\nInterrupted.", flush=True)
            code = 130
        except (DemoFailed, AirflowDeploymentError) as exc:
            print(f"\nDemo FAILED: {exc}", flush=True)
            code = 1
        except Exception:
            traceback.print_exc()
            print("\nDemo FAILED: unexpected error (above)", flush=True)
            code = 1
        finally:
            # A second Ctrl-C must not cut the clean-up short; every wait in it is bounded.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                reported = self.stopped
                self._stop()
                if self.leftovers and not reported:
                    print(f"Demo FAILED: processes survived the stop: {self.leftovers}", flush=True)
                    code = 1 if code == 0 else code
                if code == 1:
                    self._print_log_tails()
            finally:
                signal.signal(signal.SIGINT, previous_int)
                signal.signal(signal.SIGTERM, previous_term)
        return code

    def _run_dag(self) -> str:
        """Start everything, trigger the full refresh and wait for it; return the run's state."""
        print(f"Starting the Clio emulator ({self.records}) ...", flush=True)
        with (self.logs / "emulator.log").open("wb") as emulator_log:
            self.emulator = _start_emulator(self.records, emulator_log)
        deployment = self.deployment = AirflowDeployment(
            home=self.work / "airflow",
            dags=self.dags,
            logs=self.logs,
            ready_timeout=READY_TIMEOUT,
            env_extra={
                # Only the triggered run: no scheduled interval runs beside it.
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                # A supervisor notices its task exited at its next heartbeat check (5 s by default).
                "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            },
        )
        # The metadata DB is created while the emulator generates its records.
        print(
            "Creating the Airflow metadata DB and the Clio pools "
            f"(airflow db migrate; airflow clio pools --slots {SLOTS}) ...",
            flush=True,
        )
        migrate = deployment.cli(("db", "migrate"), ("clio", "pools", "--slots", str(SLOTS)))
        ready = _emulator_ready(self.emulator, EMULATOR_TIMEOUT)
        self.url = ready["url"]
        app = ready["apps"][APP]
        deployment.env_extra["AIRFLOW_CONN_CLIO_DEFAULT"] = json.dumps(
            {
                "conn_type": "clio",
                "host": self.url,
                "login": APP,
                "password": app["client_secret"],
                "extra": {"region": app["region"], "refresh_token": app["refresh_token"]},
            }
        )
        deployment.env_extra["AIRFLOW_CONN_CLIO_WAREHOUSE"] = json.dumps(
            {"conn_type": "sqlite", "host": str(self.warehouse)}
        )
        print(f"  emulator at {self.url}, {RATE_LIMIT} requests/s per application and region", flush=True)
        output = deployment.finish(migrate, MIGRATE_TIMEOUT)
        self._cli_log(output)
        for line in output.splitlines():
            if line.startswith(f"Pool {POOL} "):
                print(f"  {line}", flush=True)
        if deployment.query("SELECT slots FROM slot_pool WHERE pool = ?", POOL) != [(SLOTS,)]:
            raise DemoFailed(f"pool {POOL} does not have {SLOTS} slots; see {self.logs / 'cli.log'}")

        print("Starting Airflow: api-server (execution API), scheduler, dag-processor (LocalExecutor) ...")
        deployment.start_components()
        # A run triggered while paused stays queued until the unpause lands; both wait for the parsed DAG.
        conf = json.dumps({"full_refresh": True})
        trigger = deployment.cli(
            ("dags", "unpause", DAG_ID),
            ("dags", "trigger", DAG_ID, "--run-id", RUN_ID, "--conf", conf),
            wait_for_dag=DAG_ID,
        )
        deployment.wait_ready(READY_TIMEOUT)
        self._cli_log(deployment.finish(trigger, READY_TIMEOUT))
        self.times["startup"] = self._elapsed()
        print(f"Triggered {DAG_ID} with {conf} after {self.times['startup']:.1f} s; waiting ...", flush=True)
        return self._wait_for_run(deployment)

    def _wait_for_run(self, deployment: AirflowDeployment) -> str:
        """Wait for the run to end, printing progress; return its state."""
        deadline = time.monotonic() + self.run_timeout
        next_progress = time.monotonic() + PROGRESS_EVERY
        while True:
            deployment.check_alive()
            if self.emulator is not None and self.emulator.poll() is not None:
                raise DemoFailed(f"the emulator exited with {self.emulator.returncode}")
            states = [run.state for run in deployment.dag_runs(DAG_ID) if run.run_id == RUN_ID]
            if states and states[0] in ("success", "failed"):
                return states[0]
            if time.monotonic() > deadline:
                raise DemoFailed(f"the DAG run did not finish within {self.run_timeout:.0f} s")
            if time.monotonic() >= next_progress:
                next_progress += PROGRESS_EVERY
                self._progress(deployment)
            time.sleep(0.5)

    def _progress(self, deployment: AirflowDeployment) -> None:
        running = [
            task_id
            for (task_id,) in deployment.query(
                "SELECT task_id FROM task_instance WHERE dag_id = ? AND run_id = ? AND state = 'running'",
                DAG_ID,
                RUN_ID,
            )
        ]
        try:
            requests = _get_json(f"{self.url}/_emulator/requests")["requests"]
            sent = sum(1 for r in requests if str(r.get("path", "")).startswith("/grow"))
        except OSError:
            sent = -1
        elapsed = self._elapsed()
        print(
            f"  {elapsed:5.0f} s: {len(running)} task(s) running in {POOL}, {sent} API requests so far",
            flush=True,
        )

    def _stop(self) -> None:
        """Stop Airflow and the emulator once; keep in ``leftovers`` any process that survived."""
        if self.stopped:
            return
        self.stopped = True
        started = time.monotonic()
        print("Stopping Airflow and the emulator ...", end="", flush=True)
        deployment = self.deployment
        if deployment is not None:
            if deployment.busy_workers():
                # Airflow 3.3 only calls on_kill() on a task's SIGTERM, and these tasks would go on loading
                # until killed: an abandoned run is not worth the full grace period.
                deployment.stop_timeout = min(deployment.stop_timeout, 3.0)
            deployment.stop()
            self.leftovers = [f"{p.pid} {' '.join(p.cmdline())[:100]}" for p in deployment.processes()]
        _stop_emulator(self.emulator)
        self.times["stop"] = time.monotonic() - started
        left = f"{len(self.leftovers)} process(es) left" if self.leftovers else "no process left"
        print(f" done in {self.times['stop']:.1f} s, {left}", flush=True)

    def _print_log_tails(self) -> None:
        print("\n----- log tails -----")
        if self.deployment is not None:
            print(self.deployment.dump_logs(lines=40, task_lines=30))
        for name in ("cli.log", "emulator.log"):
            print(f"===== {self.logs / name} =====\n{tail(self.logs / name, 30)}")
        print(f"----- full logs in {self.logs} and {self.work / 'airflow' / 'logs'} -----", flush=True)

    def _report(self, state: str) -> int:
        """Stop Airflow, gather the figures, print the report; return the exit code."""
        assert self.deployment is not None
        deployment = self.deployment
        requests = _get_json(f"{self.url}/_emulator/requests")["requests"]
        stats = _get_json(f"{self.url}/_emulator/stats")
        # Let the supervisors reap their finished tasks, so the stop needs no kill.
        deployment.wait_idle()
        self._stop()
        (run,) = [r for r in deployment.dag_runs(DAG_ID) if r.run_id == RUN_ID]
        spans = [s for s in deployment.task_spans(DAG_ID, RUN_ID) if s.pool == POOL]
        busiest = max(
            (w["max_requests_in_window"] for w in stats["windows"] if w["client_id"] == APP), default=0
        )
        rate = rate_figures(requests, busiest, spans, run.seconds or 0.0)
        counts = _table_counts(self.warehouse) if self.warehouse.exists() else {}
        expected = {f"clio_{r}": int(stats["records"][r]) for r in RESOURCES}
        rows_ok = all(counts.get(table) == n for table, n in expected.items())

        print(f"\nDAG run {RUN_ID}: {state}")
        print(f"\nRows per table (warehouse: {self.warehouse})")
        for table, n in expected.items():
            got = counts.get(table)
            mark = "ok" if got == n else "MISMATCH"
            print(f"  {table:<17} {'-' if got is None else got:>7}   emulator has {n:>7}   {mark}")

        print(f"\nClio API usage (application {APP}, region us: limit {RATE_LIMIT} requests/s; pool {POOL})")
        print(f"  API requests            {rate.requests:>6}")
        print(f"  429 responses           {rate.rate_limited:>6}")
        print(f"  busiest 1 s window      {rate.busiest:>6}   requests (limit {RATE_LIMIT})")
        print(f"  max tasks at once       {rate.peak:>6}   running in {POOL} ({SLOTS} slots; metadata DB)")
        print(_usage(f"{SLOTS} tasks side by side", rate.side_by_side))
        print(_usage("whole DAG run", rate.overall))
        print(
            "  (each task holds 1 of the pool's slots and paces itself at 1 request/s, so the scheduler's\n"
            f"   {SLOTS} slots are the region's {RATE_LIMIT} requests/s)"
        )

        total = self._elapsed()
        print(
            f"\nTime: DAG run {run.seconds or 0.0:.1f} s; start-up {self.times.get('startup', 0.0):.1f} s, "
            f"stop {self.times.get('stop', 0.0):.1f} s, total {total:.1f} s"
        )
        failures = []
        if state != "success":
            failures.append(f"the DAG run ended {state}")
        if not rows_ok:
            failures.append("the rows differ from the emulator's records")
        if rate.rate_limited:
            failures.append(f"{rate.rate_limited} requests were answered 429")
        if rate.busiest > RATE_LIMIT:
            failures.append(f"{rate.busiest} requests in one 1 s window")
        if self.leftovers:
            failures.append(f"processes survived the stop: {self.leftovers}")
        if failures:
            print("\nDemo FAILED: " + "; ".join(failures), flush=True)
            return 1
        print("\nDemo OK", flush=True)
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m dev.demo",
        description=__doc__.strip().splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--dir", default=".demo", help="working folder, recreated (default: .demo)")
    parser.add_argument(
        "--records",
        default=DEFAULT_RECORDS,
        help=f"emulator data set (default: {DEFAULT_RECORDS}); 200 records per page, one request each",
    )
    parser.add_argument(
        "--dags-folder",
        default=str(Path(__file__).resolve().parents[1] / "dags"),
        help="the folder holding clio_incremental_warehouse (default: the repository's dags/)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the DAG run may take")
    args = parser.parse_args(argv)
    demo = Demo(Path(args.dir).resolve(), args.records, Path(args.dags_folder).resolve(), args.timeout)
    return demo.run()


if __name__ == "__main__":
    raise SystemExit(main())
