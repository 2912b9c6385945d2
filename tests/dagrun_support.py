# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by the operator, transfer, sensor and trigger tests.

Loaded by path through the ``support`` fixture of tests/conftest.py: the suite runs with
``--import-mode=importlib``, so test folders are not packages that could import each other.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_clio.fields import parse_fields
from airflow_provider_clio.retrying import RetrySettings
from airflow_provider_clio.testing import Faults

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun
    from airflow.sdk import DAG

    from airflow_provider_clio.testing import ClioEmulator, RequestRecord


FAST_FAIL = RetrySettings(max_attempts=2, initial=0.01, maximum=0.01, jitter=False, max_total_wait=1.0)
"""In-request retries that give up at once, so an injected outage reaches Airflow's task retry."""

ONE_RETRY: dict[str, Any] = {
    "request_retry": FAST_FAIL,
    "retries": 1,
    "retry_delay": datetime.timedelta(0),
    "retry_exponential_backoff": 0,
}
"""Task arguments of the resume tests: an outage fails try 1 at once and try 2 starts without a delay."""


def clio_connection(
    monkeypatch: pytest.MonkeyPatch,
    emu: ClioEmulator,
    conn_id: str | None = None,
    *,
    region: str = "us",
    requests_per_slot: float = 500.0,
    **extra: Any,
) -> str:
    """Point a fresh connection id (so no token store holds a stale token) at ``emu``; return the id."""
    conn_id = conn_id or f"clio_{uuid.uuid4().hex[:10]}"
    conn = emu.connection(region=region, requests_per_slot=requests_per_slot, **extra)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return conn_id


def sqlite_connection(monkeypatch: pytest.MonkeyPatch, path: Path) -> str:
    """Point a fresh SQL connection id at the SQLite file ``path``; return the id."""
    conn_id = f"wh_{uuid.uuid4().hex[:8]}"
    connection = json.dumps({"conn_type": "sqlite", "host": str(path)})
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", connection)
    return conn_id


def unique_dag_id(prefix: str) -> str:
    """Return a DAG id no earlier test used (runs and task state are keyed by it)."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def manual_dag(prefix: str) -> DAG:
    """Return an unscheduled DAG with a fresh id (:func:`unique_dag_id`), to run with :func:`run_dag`."""
    from airflow.sdk import DAG

    return DAG(
        unique_dag_id(prefix),
        schedule=None,
        start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    )


def sync_dag(dag: DAG) -> None:
    """Write an in-memory DAG to the metadata DB, which ``dag.test()`` needs on Airflow 3.3."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
        session.commit()
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
        )


def run_dag(dag: DAG, **kwargs: Any) -> DagRun:
    """Run ``dag`` in-process with ``dag.test()`` (real task runner, retries and inline triggers)."""
    sync_dag(dag)
    return dag.test(**kwargs)


def run_through_outage(dag: DAG, emu: ClioEmulator, task_id: str, *, pages: int, requests: int = 2) -> DagRun:
    """
    Run ``dag`` with an outage of ``requests`` answers after ``pages`` list pages (:class:`OutageAfterPages`).

    Asserts that the outage fired and that ``task_id`` then succeeded on its retry, try 2; returns the run.
    """
    with OutageAfterPages(emu, pages=pages, requests=requests) as outage:
        dag_run = run_dag(dag)
    assert outage.fired.is_set()
    assert ti_state(dag_run, task_id) == "success"
    assert try_number(dag_run, task_id) == 2
    return dag_run


def ti_state(dag_run: DagRun, task_id: str) -> str | None:
    """Return the final state of one task of a run."""
    ti = dag_run.get_task_instance(task_id)
    assert ti is not None
    return None if ti.state is None else str(ti.state)


def try_number(dag_run: DagRun, task_id: str) -> int:
    """Return the try number a task of the run ended on."""
    ti = dag_run.get_task_instance(task_id)
    assert ti is not None
    return int(ti.try_number)


def xcom_value(dag_run: DagRun, task_id: str, key: str = "return_value") -> Any:
    """Return a task's XCom as stored in the metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=dag_run.run_id, key=key, task_ids=task_id, dag_ids=dag_run.dag_id)
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def rendered_fields(dag_run: DagRun, task_id: str) -> dict[str, Any]:
    """Return the rendered template fields Airflow stored for a task (what the UI shows)."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session

    ti = dag_run.get_task_instance(task_id)
    assert ti is not None
    with create_session() as session:
        return RenderedTaskInstanceFields.get_templated_fields(ti, session=session) or {}


def project(records: Iterable[dict[str, Any]], fields: Sequence[str] | str | None) -> list[dict[str, Any]]:
    """Project emulator ground-truth records onto a ``fields`` selection, like the API does."""
    parsed = parse_fields(fields)
    if not parsed:
        return [dict(r) for r in records]
    out = []
    for record in records:
        row: dict[str, Any] = {}
        for field in parsed:
            value = record.get(field.name)
            if field.nested is not None and isinstance(value, dict):
                value = {name: value.get(name) for name in field.nested}
            row[field.name] = value
        out.append(row)
    return out


def contact_rows(emu: ClioEmulator) -> dict[int, tuple[Any, ...]]:
    """Return the emulator's contacts as ``(id, name, updated_at)`` table rows, by id."""
    return {r["id"]: (r["id"], r["name"], r["updated_at"]) for r in emu.records("contacts")}


def manifest(destination: Path) -> dict[str, Any]:
    """Return the ``_manifest.json`` committed at a local destination folder."""
    value: dict[str, Any] = json.loads((destination / "_manifest.json").read_text())
    return value


def manifest_records(destination: Path) -> list[dict[str, Any]]:
    """Read the committed output the way a consumer must: through the manifest (each part's count checked)."""
    rows: list[dict[str, Any]] = []
    for entry in manifest(destination)["files"]:
        with open(destination / entry["path"], encoding="utf-8") as handle:
            part = [json.loads(line) for line in handle if line.strip()]
        assert len(part) == entry["records"]
        rows.extend(part)
    return rows


def run_folders(destination: Path) -> list[str]:
    """Return the names of the ``run=`` folders at a local destination, sorted."""
    return sorted(p.name for p in destination.iterdir() if p.name.startswith("run="))


def read_jsonl(paths: Iterable[Any]) -> list[dict[str, Any]]:
    """Read the records of JSONL files in order."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle if line.strip())
    return rows


def page_tokens(requests: Iterable[RequestRecord], status: int = 200) -> list[str | None]:
    """Return the ``page_token`` of each list request with ``status``, in arrival order."""
    return [r.page_token for r in requests if r.status == status and (r.path or "").startswith("/grow")]


def id_lookups(requests: Iterable[RequestRecord]) -> list[RequestRecord]:
    """Return the list requests of a contacts lookup by id (every one carries ``ids[]``), in arrival order."""
    return [r for r in requests if r.path == "/grow/contacts" and "ids[]" in r.query]


def split_at_outage(requests: Sequence[RequestRecord], status: int = 503) -> tuple[list[Any], list[Any]]:
    """Split the request log into the requests before the first outage answer and after the last one."""
    failed = [i for i, r in enumerate(requests) if r.status == status]
    assert failed, "no outage answer was recorded"
    return list(requests[: failed[0]]), list(requests[failed[-1] + 1 :])


class OutageAfterPages:
    """
    Start an outage of ``requests`` answers once ``pages`` list pages were served, from a test-side thread.

    The extraction paces itself (set ``requests_per_slot`` low enough, e.g. 20/s), so the watcher, polling
    every millisecond, lands between two pages; assertions use the recorded requests, not the exact page.
    """

    def __init__(self, emu: ClioEmulator, pages: int, requests: int, status: int = 503) -> None:
        self.emu = emu
        self.pages = pages
        self.faults = Faults(outage_requests=requests, outage_status=status)
        self._stop = threading.Event()
        self.fired = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="outage-watcher", daemon=True)

    def _watch(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.emu.count(status=200, path_prefix="/grow") >= self.pages:
                self.emu.set_faults(self.faults)
                self.fired.set()
                return
            time.sleep(0.001)

    def __enter__(self) -> OutageAfterPages:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def task_state_keys(dag_run: DagRun, task_id: str) -> list[str]:
    """Return the task_state_store keys a task of the run still holds."""
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return list(
            session.scalars(
                select(TaskStateStoreModel.key).where(
                    TaskStateStoreModel.dag_id == dag_run.dag_id,
                    TaskStateStoreModel.run_id == dag_run.run_id,
                    TaskStateStoreModel.task_id == task_id,
                )
            )
        )


class TaskState:
    """
    An in-memory ``task_state_store`` accessor (get/set/delete) shared by the tries of a task instance.

    Values go through JSON both ways, as Airflow's store does; ``saved`` keeps every value set, in order.
    """

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.saved: list[Any] = []
        self.lock = threading.Lock()  # tries may run on threads at once (the fencing tests)

    def get(self, key: str) -> Any:
        with self.lock:
            value = self.values.get(key)
            return None if value is None else json.loads(json.dumps(value))

    def set(self, key: str, value: Any) -> None:
        with self.lock:
            self.values[key] = json.loads(json.dumps(value))
            self.saved.append(self.values[key])

    def delete(self, key: str) -> None:
        with self.lock:
            self.values.pop(key, None)
