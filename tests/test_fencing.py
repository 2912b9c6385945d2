# SPDX-License-Identifier: Apache-2.0
"""Stale attempts are fenced: a late commit of try 1 after try 2 started is refused, try 2's output stands.

Two executions of one operator share one ``task_state_store`` as two tries of one task instance would: try 1
is paused mid-extraction (after it committed two units), the emulator's data changes, try 2 runs, and then
try 1 wakes up and reaches its next commit. Without the fence try 1 commits its stale page over try 2's.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import BaseHook

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.checkpoint import CHECKPOINT_KEY
from airflow_provider_clio.exceptions import ClioAttemptSupersededError
from airflow_provider_clio.fencing import attempt_of, claim_record, is_claim, owner_of, refuse_if_superseded
from airflow_provider_clio.operators import writers
from airflow_provider_clio.operators.extract import ClioExtractOperator
from airflow_provider_clio.testing import ClioEmulator
from airflow_provider_clio.transfers.clio_to_sql import ClioToSqlOperator, SqlSink

FIELDS = ["id", "name", "updated_at"]
PAUSE_AT_PAGE = 5
"""Try 1 stops before buffering this page: units of pages 1-2 and 3-4 are committed and checkpointed."""
STALE_IDS = range(201, 251)
"""The records of page 5 (50 per page), changed in Clio while try 1 holds their old versions."""


def _context(store: Any, try_number: int) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="fence", run_id="r1", task_id="t", map_index=-1, try_number=try_number)
    return {"task_state_store": store, "ti": ti}


class _Gate:
    """Pause the thread named ``name`` when its sink is about to buffer page ``page``, until released."""

    def __init__(self, name: str, page: int) -> None:
        self.name, self.page = name, page
        self.calls = 0
        self.paused = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> None:
        if threading.current_thread().name != self.name:
            return
        self.calls += 1
        if self.calls == self.page:
            self.paused.set()
            assert self.release.wait(60), "the test never released the paused try"


@contextmanager
def _gated_add(monkeypatch: pytest.MonkeyPatch, sink: type[Any], *gates: _Gate) -> Iterator[None]:
    real_add = sink.add

    def add(self: Any, records: list[dict[str, Any]]) -> None:
        for gate in gates:
            gate()
        real_add(self, records)

    monkeypatch.setattr(sink, "add", add)
    yield


class _Try(threading.Thread):
    """Run one try of the task in its own thread; keep its result or its exception."""

    def __init__(self, name: str, run: Callable[[], Any]) -> None:
        super().__init__(name=name, daemon=True)
        self.run_try = run
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.run_try()
        except BaseException as err:
            self.error = err


@pytest.fixture
def emu(clio_emulator_factory: Callable[..., ClioEmulator]) -> ClioEmulator:
    return clio_emulator_factory(rate_limit=1000, records={"contacts": 500}, page_size=50)


def test_a_late_part_and_manifest_from_try_1_are_refused_after_try_2_finished(
    emu: ClioEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu)
    tokens = MemoryTokenStore()
    store = support.TaskState()
    destination = tmp_path / "contacts"
    uploads: list[tuple[str, str]] = []
    real_upload = writers.upload_atomic

    def upload(local: str, target: Any) -> None:
        uploads.append((threading.current_thread().name, str(target)))
        real_upload(local, target)

    monkeypatch.setattr(writers, "upload_atomic", upload)

    def execute(try_number: int) -> dict[str, Any]:
        return ClioExtractOperator(
            task_id="t",
            clio_conn_id=conn_id,
            endpoint="grow/contacts",
            fields=FIELDS,
            destination=f"file://{destination}",
            records_per_file=100,  # two pages per part
            token_store=tokens,
            request_retry=support.FAST_FAIL,
        ).execute(_context(store, try_number))  # type: ignore[arg-type]

    gate = _Gate("try-1", PAUSE_AT_PAGE)
    with _gated_add(monkeypatch, writers.PartWriter, gate):
        try_1 = _Try("try-1", lambda: execute(1))
        try_1.start()
        assert gate.paused.wait(60)
        assert store.get(CHECKPOINT_KEY)["units"] == 2
        emu.touch("contacts", STALE_IDS)
        # Airflow gave up on try 1 (timeout, lost heartbeat) and ran try 2 to the end.
        summary = execute(2)
        uploads_before_wake = len(uploads)
        gate.release.set()
        try_1.join(60)

    assert isinstance(try_1.error, ClioAttemptSupersededError), try_1.error or try_1.result
    assert "Try 1 of this task instance was superseded" in str(try_1.error)
    assert len(uploads) == uploads_before_wake, "try 1 uploaded a part after try 2 took over"
    assert summary["resumed"] is True
    assert summary["resumed_parts"] == 2
    manifest = support.manifest(destination)
    assert manifest["task"]["try_number"] == 2
    assert manifest["run"] == summary["run"]
    # Exactly the emulator's current records: try 2's fresh page 5, not try 1's stale copy.
    assert list(support.read_jsonl(destination / e["path"] for e in manifest["files"])) == support.project(
        emu.records("contacts"), FIELDS
    )
    assert store.values == {}


def test_a_late_sql_batch_from_try_1_is_refused_while_try_2_owns_the_load(
    emu: ClioEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu)
    path = tmp_path / "warehouse.db"
    sql_conn = support.sqlite_connection(monkeypatch, path)
    tokens = MemoryTokenStore()
    store = support.TaskState()
    batches: list[tuple[str, int]] = []
    real_commit = SqlSink.commit

    def commit(self: SqlSink, index: int, token: str) -> int:
        count = real_commit(self, index, token)
        batches.append((threading.current_thread().name, index))
        return count

    monkeypatch.setattr(SqlSink, "commit", commit)

    def execute(try_number: int) -> dict[str, Any]:
        return ClioToSqlOperator(
            task_id="t",
            clio_conn_id=conn_id,
            endpoint="grow/contacts",
            fields=FIELDS,
            sql_conn_id=sql_conn,
            table="contacts",
            batch_size=100,
            token_store=tokens,
            request_retry=support.FAST_FAIL,
        ).execute(_context(store, try_number))  # type: ignore[arg-type]

    gate_1 = _Gate("try-1", PAUSE_AT_PAGE)
    gate_2 = _Gate("try-2", 1)  # try 2 resumes at page 5: paused right after it claimed the load
    with _gated_add(monkeypatch, SqlSink, gate_1, gate_2):
        try_1 = _Try("try-1", lambda: execute(1))
        try_1.start()
        assert gate_1.paused.wait(60)
        emu.touch("contacts", STALE_IDS)
        try_2 = _Try("try-2", lambda: execute(2))
        try_2.start()
        assert gate_2.paused.wait(60)
        assert owner_of(store.get(CHECKPOINT_KEY)) == 2
        # Try 1 wakes up while try 2 owns the load, and reaches its next batch.
        gate_1.release.set()
        try_1.join(60)
        gate_2.release.set()
        try_2.join(60)

    assert isinstance(try_1.error, ClioAttemptSupersededError), try_1.error or try_1.result
    assert "try 2 owns the checkpoint" in str(try_1.error)
    assert try_2.error is None
    assert [b for b in batches if b[0] == "try-1"] == [("try-1", 0), ("try-1", 1)]
    assert [b for b in batches if b[0] == "try-2"] == [("try-2", i) for i in range(2, 5)]
    assert try_2.result["resumed_batches"] == 2
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT id, name, updated_at FROM contacts ORDER BY id").fetchall()
    assert rows == [(r["id"], r["name"], r["updated_at"]) for r in emu.records("contacts")]
    assert store.values == {}


def test_the_sql_fence_is_checked_inside_the_batch_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    path = tmp_path / "fence.db"
    hook = BaseHook.get_connection(support.sqlite_connection(monkeypatch, path)).get_hook()

    def superseded() -> None:
        refuse_if_superseded({"owner": 2}, 1, True, "the store")

    with closing(hook.get_conn()) as conn:
        sink = SqlSink(hook, conn, "t", ["id", "name"])
        sink.add([{"id": 1, "name": "a"}])
        sink.commit(0, "x")
        sink.before_commit = superseded
        sink.add([{"id": 2, "name": "b"}, {"id": 1, "name": "stale"}])
        with pytest.raises(ClioAttemptSupersededError):
            sink.commit(1, "x")
    with closing(sqlite3.connect(path)) as db:
        # The batch's upserts ran, then the check refused the commit: the transaction was rolled back.
        assert db.execute("SELECT id, name FROM t ORDER BY id").fetchall() == [(1, "a")]


def test_fence_helpers() -> None:
    assert attempt_of({"ti": SimpleNamespace(try_number=3)}) == 3
    assert attempt_of({}) is None
    assert attempt_of({"ti": SimpleNamespace(try_number=0)}) is None
    assert claim_record(2, 2) == {"version": 2, "owner": 2}
    assert is_claim({"version": 2, "owner": 2})
    assert not is_claim({"version": 2, "owner": 2, "token": "x"})
    assert owner_of({"owner": True}) is None
    refuse_if_superseded({"owner": 1}, 2, True, "s")  # an older owner: this try may commit
    refuse_if_superseded({"owner": 2}, 2, True, "s")
    refuse_if_superseded(None, 2, False, "s")  # nothing claimed yet: nothing to be superseded by
    with pytest.raises(ClioAttemptSupersededError, match="try 3 owns the checkpoint in s"):
        refuse_if_superseded({"owner": 3}, 2, False, "s")
    with pytest.raises(ClioAttemptSupersededError, match="is gone"):
        refuse_if_superseded(None, 2, True, "s")
