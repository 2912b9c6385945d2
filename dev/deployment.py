# SPDX-License-Identifier: Apache-2.0
"""
Run real Airflow components on an isolated ``AIRFLOW_HOME`` and stop them without leaving a process behind.

:class:`AirflowDeployment` is what the scheduler tests and ``make demo`` use to see pools do their job:
it starts ``airflow api-server`` (the tasks' execution API), ``airflow scheduler`` and
``airflow dag-processor`` (and, on request, ``airflow triggerer``) as subprocesses with a SQLite metadata
database (or any SQLAlchemy URL, e.g. Postgres) and the LocalExecutor, runs ``airflow`` CLI commands, reads
the metadata database, and on :meth:`~AirflowDeployment.stop` ends every component, worker and task runner,
killing by pid what SIGTERM left behind. :meth:`~AirflowDeployment.kill` ends one component's whole process
tree with SIGKILL, as a failed machine would. It never imports Airflow itself, so the calling process keeps
its own ``AIRFLOW_HOME`` untouched (:mod:`dev.celery_deployment` adds the CeleryExecutor on top).

Over 400 lines: one supervisor of processes, CLI helpers and metadata reads that its callers use together.

.. code-block:: python

    from dev.deployment import AirflowDeployment

    conn = dict([emu.connection_env("clio_default")])
    with AirflowDeployment(home=tmp / "airflow", dags=Path("dags"), env_extra=conn) as af:
        af.run(("db", "migrate"), ("clio", "pools"))
        af.start_components()
        af.wait_ready(timeout=120)
        trigger = af.cli(("dags", "unpause", "my_dag"), ("dags", "trigger", "my_dag"), wait_for_dag="my_dag")
        af.finish(trigger, timeout=120)
        assert af.wait_for_dag_run("my_dag", timeout=300) == "success"
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import sqlalchemy
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool

__all__ = [
    "TRIGGERER",
    "AirflowDeployment",
    "AirflowDeploymentError",
    "Component",
    "DagRunSpan",
    "TaskSpan",
    "concurrency_profile",
]

COMPONENTS: tuple[tuple[str, ...], ...] = (
    ("api-server", "--apps", "execution"),
    ("scheduler", "--skip-serve-logs"),
    ("dag-processor",),
)
"""The ``airflow`` commands :meth:`AirflowDeployment.start_components` runs (the api-server gets its port)."""

TRIGGERER: tuple[str, ...] = ("triggerer", "--skip-serve-logs")
"""The ``airflow`` command of the triggerer, for :meth:`AirflowDeployment.start_components` ``extra``."""

TERMINAL_RUN_STATES = frozenset({"success", "failed"})
WORKER_TITLE = "airflow worker -- LocalExecutor"
"""How a LocalExecutor worker's process title starts; it ends in ``<idle>`` between workloads."""


class AirflowDeploymentError(RuntimeError):
    """A component died, a command failed or something was not ready in time."""


@dataclass
class Component:
    """
    Hold one long-running Airflow process (and, through its process group, what it forked).

    :param name: Label in logs and failure messages.
    :param process: The ``airflow <component>`` process, leader of its own process group.
    :param log: File holding its stdout and stderr.
    :param killed: Set by :meth:`AirflowDeployment.kill`: its death is intended, not a failure.
    """

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    killed: bool = False


@dataclass(frozen=True)
class TaskSpan:
    """
    Describe one task instance as the metadata database recorded it (or from its first to its last request).

    :param task_id: Task id.
    :param state: Final state.
    :param pool: Pool the task ran in.
    :param pool_slots: Slots it held.
    :param try_number: Try it ended on.
    :param start: Start, epoch seconds.
    :param end: End, epoch seconds.
    """

    task_id: str
    state: str
    pool: str
    pool_slots: int
    try_number: int
    start: float
    end: float


@dataclass(frozen=True)
class DagRunSpan:
    """
    Describe one DAG run as the metadata database recorded it.

    :param run_id: Run id.
    :param state: State when read.
    :param start: Start, epoch seconds, ``None`` before it started.
    :param end: End, epoch seconds, ``None`` before it ended.
    """

    run_id: str
    state: str
    start: float | None
    end: float | None

    @property
    def seconds(self) -> float | None:
        """Return the run's duration, ``None`` until it has both ends."""
        return None if self.start is None or self.end is None else self.end - self.start


def concurrency_profile(spans: Sequence[TaskSpan]) -> tuple[int, list[tuple[float, float, int]]]:
    """Return the most spans open at once and the segments ``(start, end, open)`` between events."""
    if not spans:
        return 0, []
    # At equal instants an end sorts before a start: a slot handed over is not two tasks at once.
    events = sorted([(s.start, 1) for s in spans] + [(s.end, -1) for s in spans], key=lambda e: (e[0], e[1]))
    segments: list[tuple[float, float, int]] = []
    running = peak = 0
    for (at, delta), (following, _) in zip(events, [*events[1:], (events[-1][0], 0)], strict=True):
        running += delta
        peak = max(peak, running)
        if following > at:
            segments.append((at, following, running))
    return peak, segments


def parse_db_time(value: str | datetime | None) -> float | None:
    """Return epoch seconds of a timestamp as SQLite (text) or Postgres (datetime) gives it; naive is UTC."""
    if not value:
        return None
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def tail(path: Path, lines: int = 60) -> str:
    """Return the last ``lines`` lines of a text file, or why it cannot be read."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as err:
        return f"<cannot read {path}: {err}>"
    return "\n".join(text[-lines:])


def read_only_url(database_url: str) -> str:
    """Return the URL this harness reads a metadata database with: SQLite read-only, others as given."""
    if database_url.startswith("sqlite:///"):
        return f"sqlite:///file:{database_url.removeprefix('sqlite:///')}?mode=ro&uri=true"
    return database_url


def bind_params(sql: str, params: Sequence[Any]) -> tuple[Any, dict[str, Any]]:
    """Turn a query with ``?`` placeholders into a SQLAlchemy statement and its named parameters."""
    names = iter(range(len(params)))
    statement = re.sub(r"\?", lambda _: f":p{next(names)}", sql)
    return sqlalchemy.text(statement), {f"p{i}": value for i, value in enumerate(params)}


def _transient(err: sa_exc.DBAPIError) -> bool:
    """Tell whether a read failed only because a writer holds SQLite or the schema is not migrated yet."""
    text = str(err.orig)
    return any(sign in text for sign in ("locked", "no such table", "does not exist"))


def free_port() -> int:
    """Return a TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class AirflowDeployment:
    """
    Run real Airflow components on an isolated ``AIRFLOW_HOME``, each in its own process group.

    Every process gets an environment built from scratch for this home (no ``AIRFLOW*`` variable of the
    caller leaks in): SQLite metadata database ``<home>/airflow.db``, LocalExecutor, the execution API on a
    free loopback port, example DAGs off. ``env_extra`` goes on top, last, so it can add connections
    (``AIRFLOW_CONN_*``) or override any setting; it is read whenever a process starts, so entries added
    before :meth:`start_components` reach the components and their tasks.

    :param home: The ``AIRFLOW_HOME`` (created; holds ``airflow.db``, ``airflow.cfg``, task logs).
    :param dags: The dags folder.
    :param env_extra: Extra environment for every Airflow process.
    :param database_url: SQLAlchemy URL of the metadata database, default SQLite ``<home>/airflow.db``.
    :param logs: Folder for the components' stdout and stderr, default ``<home>/component-logs``.
    :param port: Port of the api-server, default a free loopback port.
    :param parallelism: ``[core] parallelism``: task slots of the executor, beyond any pool's.
    :param stop_timeout: Seconds :meth:`stop` grants SIGTERM before it kills.
    :param ready_timeout: Seconds a :meth:`cli` call with ``wait_for_dag`` waits for the DAG to be parsed.
    """

    def __init__(
        self,
        home: Path,
        dags: Path,
        env_extra: Mapping[str, str] | None = None,
        *,
        logs: Path | None = None,
        port: int | None = None,
        parallelism: int = 8,
        stop_timeout: float = 20.0,
        ready_timeout: float = 120.0,
        database_url: str | None = None,
    ) -> None:
        self.home = Path(home)
        self.dags = Path(dags)
        self.env_extra: dict[str, str] = dict(env_extra or {})
        self.port = port if port is not None else free_port()
        self.parallelism = parallelism
        self.stop_timeout = stop_timeout
        self.ready_timeout = ready_timeout
        self.bin = Path(sys.executable).parent
        self.airflow = self.bin / "airflow"
        self._interpreter = os.path.realpath(sys.executable)
        self.db = self.home / "airflow.db"
        self.database_url = database_url or f"sqlite:///{self.db}"
        self._engine: sqlalchemy.engine.Engine | None = None
        self.logs = Path(logs) if logs is not None else self.home / "component-logs"
        self.components: list[Component] = []
        self.helpers: list[subprocess.Popen[str]] = []
        # Signs the tokens the scheduler hands to task runners; any value works if every component shares it.
        self._jwt_secret = secrets.token_urlsafe(64)
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> AirflowDeployment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """Return the api-server's URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Return the environment of every Airflow process: nothing inherited from the caller's Airflow."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
        env.update(
            {
                # standalone-style pitfall: every component and task runner must find this venv's airflow.
                "PATH": f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url,
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                # Workers default to localhost:8080; a free port needs both settings.
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
                **self.env_extra,
            }
        )
        return env

    # -- commands --------------------------------------------------------------------------------

    def cli(self, *commands: Sequence[str], wait_for_dag: str | None = None) -> subprocess.Popen[str]:
        """
        Start one interpreter that runs ``airflow <command>`` for each command, in order; return it.

        Each command goes through ``airflow.__main__.main`` exactly as the ``airflow`` script does, but the
        commands share one import of Airflow, which costs seconds of CPU on a small machine. With
        ``wait_for_dag`` the commands start once the dag-processor has stored that DAG, so the import
        overlaps the components' start-up. Collect the result with :meth:`finish`.

        :param commands: Argument lists of ``airflow``, e.g. ``("dags", "unpause", "my_dag")``.
        :param wait_for_dag: DAG id to wait for in ``serialized_dag`` before the first command.
        """
        spec = {
            "commands": [list(c) for c in commands],
            "wait_for_dag": wait_for_dag,
            "timeout": self.ready_timeout,
            "db_url": read_only_url(self.database_url),
        }
        process = subprocess.Popen(
            # By path, not ``-m``: the repository root (holding ``dev``) is not on the helper's sys.path.
            [sys.executable, str(Path(__file__).resolve()), json.dumps(spec)],
            env=self.env,
            cwd=self.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.helpers.append(process)
        return process

    def finish(self, process: subprocess.Popen[str], timeout: float) -> str:
        """
        Wait for a :meth:`cli` process, failing fast if a component dies; return its output.

        :param process: What :meth:`cli` returned.
        :param timeout: Seconds to wait before killing it.
        :raises AirflowDeploymentError: It failed, timed out, or a component died meanwhile.
        """
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                break
            if self.components:
                self.check_alive()
            time.sleep(0.2)
        output = process.communicate()[0]
        if process.returncode != 0:
            raise AirflowDeploymentError(f"airflow CLI exited {process.returncode}:\n{output[-6000:]}")
        return output

    def run(self, *commands: Sequence[str], timeout: float = 120.0) -> str:
        """Run ``airflow`` commands in one interpreter (see :meth:`cli`) and return their output."""
        return self.finish(self.cli(*commands), timeout)

    # -- components ------------------------------------------------------------------------------

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Component:
        """
        Start ``airflow <args>`` in a new session (its own process group), logging to ``<logs>/<name>.log``.

        :param name: Label of the component and its log file.
        :param args: Arguments of ``airflow``, e.g. ``("scheduler", "--skip-serve-logs")``.
        :param env: Environment of this component only, on top of :attr:`env`.
        """
        log = self.logs / f"{name}.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                [str(self.airflow), *args],
                env={**self.env, **(env or {})},
                cwd=self.home,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        component = Component(name, process, log)
        self.components.append(component)
        return component

    def start_components(self, extra: Sequence[Sequence[str]] = ()) -> list[Component]:
        """
        Start the api-server (execution API only), the scheduler and the dag-processor; return them.

        :param extra: More ``airflow`` commands to run as components, e.g. ``[TRIGGERER]``.
        """
        started = []
        for command, *args in (*COMPONENTS, *extra):
            if command == "api-server":
                args = ["--port", str(self.port), *args]
            started.append(self.start(command, command, *args))
        return started

    def check_alive(self) -> None:
        """Fail at once (not at a timeout) when a component died (unless :meth:`kill` ended it)."""
        for component in self.components:
            code = component.process.poll()
            if code is not None and not component.killed:
                raise AirflowDeploymentError(
                    f"airflow {component.name} exited with {code} (log: {component.log})"
                )

    def wait_for(self, what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
        """
        Poll ``probe`` until it returns a truthy value; return it.

        :param what: What is awaited, for the timeout message.
        :param probe: Called every ``interval`` seconds.
        :param timeout: Seconds before giving up.
        :param interval: Seconds between probes.
        :raises AirflowDeploymentError: On timeout, or when a component dies meanwhile.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AirflowDeploymentError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)

    def api_ready(self) -> bool:
        """Tell whether the execution API answers its health check."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/execution/health", timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the execution API answers (the scheduler's tasks need it)."""
        self.wait_for("the execution API", self.api_ready, timeout)

    # -- metadata database -----------------------------------------------------------------------

    @property
    def engine(self) -> sqlalchemy.engine.Engine:
        """Return the engine reading the metadata database (SQLite read-only; no pooled connection kept)."""
        if self._engine is None:
            self._engine = sqlalchemy.create_engine(read_only_url(self.database_url), poolclass=NullPool)
        return self._engine

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlalchemy.engine.Connection]:
        """Open a connection to the metadata database for reading (the components keep writing to it)."""
        with self.engine.connect() as connection:
            yield connection

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """
        Run a read query with ``?`` placeholders, retrying while SQLite is locked or the schema is missing.

        :param sql: The query, e.g. ``"SELECT slots FROM slot_pool WHERE pool = ?"``.
        :param params: One value per ``?``.
        """
        statement, bound = bind_params(sql, params)
        for _ in range(20):
            try:
                with self.connect() as connection:
                    return [tuple(row) for row in connection.execute(statement, bound)]
            except sa_exc.DBAPIError as err:
                if not _transient(err):
                    raise
                time.sleep(0.2)
        raise AirflowDeploymentError(f"metadata database stayed locked for: {sql}")

    def dag_parsed(self, dag_id: str) -> bool:
        """Tell whether the dag-processor has stored ``dag_id``."""
        return bool(self.query("SELECT 1 FROM serialized_dag WHERE dag_id = ?", dag_id))

    def dag_runs(self, dag_id: str) -> list[DagRunSpan]:
        """Return the runs of ``dag_id``."""
        return [
            DagRunSpan(run_id, state, parse_db_time(start), parse_db_time(end))
            for run_id, state, start, end in self.query(
                "SELECT run_id, state, start_date, end_date FROM dag_run WHERE dag_id = ?", dag_id
            )
        ]

    def wait_for_dag_run(
        self, dag_id: str, timeout: float, run_id: str | None = None, interval: float = 1.0
    ) -> str:
        """
        Wait until a run of ``dag_id`` (the given one, else any) reaches a terminal state; return the state.

        :param dag_id: DAG id.
        :param timeout: Seconds before giving up.
        :param run_id: Run to wait for, default the first run to end.
        :param interval: Seconds between polls.
        """
        return str(
            self.wait_for(
                f"a run of {dag_id} to finish" if run_id is None else f"run {run_id} of {dag_id} to finish",
                lambda: next(
                    (
                        run.state
                        for run in self.dag_runs(dag_id)
                        if run.state in TERMINAL_RUN_STATES and run_id in (None, run.run_id)
                    ),
                    None,
                ),
                timeout,
                interval,
            )
        )

    def task_spans(self, dag_id: str, run_id: str | None = None) -> list[TaskSpan]:
        """Return the task instances of ``dag_id`` (of one run, if given) that have a start and an end."""
        sql = (
            "SELECT task_id, state, pool, pool_slots, try_number, start_date, end_date "
            "FROM task_instance WHERE dag_id = ?"
        )
        params: tuple[str, ...] = (dag_id,)
        if run_id is not None:
            sql += " AND run_id = ?"
            params = (dag_id, run_id)
        return [
            TaskSpan(task_id, state, pool, slots, tries, start, end)
            for task_id, state, pool, slots, tries, start_s, end_s in self.query(sql, *params)
            if (start := parse_db_time(start_s)) is not None and (end := parse_db_time(end_s)) is not None
        ]

    # -- stopping --------------------------------------------------------------------------------

    def kill(self, component: Component) -> list[int]:
        """
        SIGKILL a component and every process it started, as a failed machine would; return their pids.

        The component's process group gets SIGKILL, and so does the group of each descendant: task runners put
        themselves in their own group, so killing the component's group alone would leave them running.
        :meth:`check_alive` no longer counts the component.

        :param component: A component of this deployment.
        """
        component.killed = True
        try:
            root = psutil.Process(component.process.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        groups = {component.process.pid}
        for proc in tree:
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(proc.pid))
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(tree, timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            component.process.wait(timeout=5)
        return [proc.pid for proc in tree]

    def _ours(self, proc: psutil.Process) -> bool:
        """Tell whether a process outside the components' trees belongs to this deployment."""
        home = str(self.home)
        if proc.environ().get("AIRFLOW_HOME") == home:
            return True
        # LocalExecutor workers and task runners set their process title, which wipes what /proc shows of
        # their environment; they keep the working directory every component got, and this interpreter.
        return proc.cwd() == home and os.path.realpath(proc.exe()) == self._interpreter

    def processes(self) -> list[psutil.Process]:
        """Return every live process of this deployment: components, their descendants, any with our home."""
        found: dict[int, psutil.Process] = {}
        for component in self.components:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(component.process.pid)
                found[parent.pid] = parent
                for child in parent.children(recursive=True):
                    found[child.pid] = child
        # Task runners put themselves in their own process group, and a re-parented orphan is no longer
        # anyone's child: find those by the home they inherited.
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.pid not in found and proc.pid != os.getpid() and self._ours(proc):
                    found[proc.pid] = proc
        return [p for p in found.values() if _alive(p)]

    def busy_workers(self) -> list[str]:
        """Return the titles of the LocalExecutor workers that are running a workload."""
        busy = []
        for component in self.components:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(component.process.pid).children():
                    with contextlib.suppress(psutil.Error):
                        title = " ".join(child.cmdline()).strip()
                        if title.startswith(WORKER_TITLE) and not title.endswith("<idle>"):
                            busy.append(title)
        return busy

    def wait_idle(self, timeout: float = 15.0) -> bool:
        """
        Wait until no LocalExecutor worker runs a workload; tell whether they all went idle in time.

        A task's state is final before its supervisor has reaped it, so a run can end while workers are
        still busy; SIGTERM reaching a busy worker can leave the scheduler waiting for it until it is killed.

        :param timeout: Seconds to wait.
        """
        deadline = time.monotonic() + timeout
        while self.busy_workers():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def stop(self) -> list[str]:
        """
        Stop every component and return what had to be killed by pid after SIGTERM.

        SIGTERM goes to each component's process group at once; what is alive at ``stop_timeout`` is
        killed, groups first, then any process of the deployment by pid. Call :meth:`wait_idle` first
        after a run: a scheduler whose workers are still busy waits for them.
        """
        for helper in self.helpers:
            if helper.poll() is None:
                helper.kill()
                helper.communicate()
        tracked = self.processes()
        for component in self.components:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(component.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for component in self.components:
            with contextlib.suppress(subprocess.TimeoutExpired):
                component.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        _, alive = psutil.wait_procs(tracked, timeout=max(0.1, deadline - time.monotonic()))
        for component in self.components:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(component.process.pid, signal.SIGKILL)
        # SIGTERM can leave LocalExecutor workers orphaned: kill what is left by pid.
        killed = []
        for proc in [*alive, *self.processes()]:
            with contextlib.suppress(psutil.Error):
                if _alive(proc):
                    killed.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
                    proc.kill()
        psutil.wait_procs([p for p in tracked if _alive(p)], timeout=5)
        for component in self.components:
            with contextlib.suppress(subprocess.TimeoutExpired):
                component.process.wait(timeout=5)
        if self._engine is not None:
            self._engine.dispose()
        return killed

    def dump_logs(self, lines: int = 60, task_lines: int = 40) -> str:
        """
        Return the tails of the component logs and task logs, for a failure report.

        :param lines: Lines per component log.
        :param task_lines: Lines per task log.
        """
        parts = []
        for component in self.components:
            header = f"===== airflow {component.name} ({component.log}) ====="
            parts.append(f"{header}\n{tail(component.log, lines)}")
        for log in sorted((self.home / "logs").glob("**/*.log")):
            if "dag_id=" in str(log):
                parts.append(f"===== task log {log.relative_to(self.home)} =====\n{tail(log, task_lines)}")
        return "\n".join(parts)


def _run_cli(spec: Mapping[str, Any]) -> None:
    """Run the ``airflow`` commands of a :meth:`AirflowDeployment.cli` spec in this interpreter."""
    # Imported before the wait so the import overlaps it (the deployment itself never imports Airflow).
    from airflow.__main__ import main

    if spec["wait_for_dag"]:
        engine = sqlalchemy.create_engine(spec["db_url"], poolclass=NullPool)
        sql = "SELECT 1 FROM serialized_dag WHERE dag_id = ?"
        statement, bound = bind_params(sql, [spec["wait_for_dag"]])
        deadline = time.monotonic() + spec["timeout"]
        while time.monotonic() < deadline:
            try:
                with engine.connect() as connection:
                    if connection.execute(statement, bound).first() is not None:
                        break
            except sa_exc.DBAPIError as err:
                if not _transient(err):
                    raise
            time.sleep(0.2)
        else:
            raise SystemExit(f"DAG {spec['wait_for_dag']} was not parsed within {spec['timeout']} s")
        engine.dispose()
    for command in spec["commands"]:
        print("$ airflow", *command, flush=True)
        sys.argv = ["airflow", *command]
        main()


if __name__ == "__main__":
    _run_cli(json.loads(sys.argv[1]))
