# SPDX-License-Identifier: Apache-2.0
"""Clio Manage end to end: non-rotating refresh tokens, cursor paging only, and 410/422 failing fast.

ClioToSqlOperator and ClioExtractOperator run in dag.test() (the real task runner, so Airflow's task retries
and the retry policy apply) against the emulator's Manage mode; ClioHook is used as a user script would.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import DAG

from airflow_provider_clio.apis.manage import API_VERSION
from airflow_provider_clio.auth import FileTokenStore, MemoryTokenStore
from airflow_provider_clio.exceptions import ClioConfigError, ClioFatalError
from airflow_provider_clio.hooks.clio import ClioHook
from airflow_provider_clio.operators.extract import ClioExtractOperator
from airflow_provider_clio.testing import ClioEmulator, Faults
from airflow_provider_clio.transfers.clio_to_sql import ClioToSqlOperator
from dev.manage_ledger import AdmissionLedger

pytestmark = [pytest.mark.integration]

UTC = datetime.timezone.utc
SQL_FIELDS = ["id", "etag", "quantity", "note", "matter{id,display_number}", "updated_at"]


def _cell(value: Any) -> Any:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list) else value


def _run_one(support: ModuleType, operator: Callable[[], Any]) -> Any:
    """Run a one-task DAG (task id ``t``) made by ``operator()`` in dag.test()."""
    with DAG(support.unique_dag_id("manage"), schedule=None) as dag:
        operator()
    return support.run_dag(dag, logical_date=datetime.datetime(2026, 7, 1, tzinfo=UTC))


def _token_calls(emu: ClioEmulator) -> list[int]:
    return [r.status for r in emu.manage_requests() if r.path == "/oauth/token"]


def test_an_expired_access_token_is_refreshed_with_the_same_refresh_token(
    airflow_db: Path,
    clio_emulator_factory: Callable[..., ClioEmulator],
    manage_conn: Callable[..., str],
    ledger: Callable[[ClioEmulator], AdmissionLedger],
    manage: SimpleNamespace,
    support: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = clio_emulator_factory(manage={"records": {"activities": 1_500}, **manage.unlimited})
    conn_id = manage_conn(emu)
    original = ClioHook(conn_id).config.refresh_token
    store = FileTokenStore(tmp_path / "tokens.json")
    database = tmp_path / "warehouse.db"
    monkeypatch.setenv("AIRFLOW_CONN_MANAGE_SQL", json.dumps({"conn_type": "sqlite", "host": str(database)}))
    # Every access token issued so far stops working after the 3rd page (Clio's 30 days, elapsed).
    watch = ledger(emu)
    watch.when(lambda d, _: d.admitted and d.index == 3, emu.expire_manage_access_tokens)

    dag_run = _run_one(
        support,
        lambda: ClioToSqlOperator(
            task_id="t",
            clio_conn_id=conn_id,
            endpoint="activities",
            fields=SQL_FIELDS,
            sql_conn_id="manage_sql",
            table="manage_activities",
            batch_size=500,
            token_store=store,
        ),
    )

    assert support.ti_state(dag_run, "t") == "success"
    assert support.try_number(dag_run, "t") == 1
    with closing(sqlite3.connect(database)) as db:
        # The Clio columns (the load adds its own bookkeeping columns such as _loaded_at).
        columns = ", ".join(name.partition("{")[0] for name in SQL_FIELDS)
        rows = db.execute(f"SELECT {columns} FROM manage_activities ORDER BY id").fetchall()  # noqa: S608
    expected = support.project(emu.manage_records("activities"), SQL_FIELDS)
    assert rows == [tuple(_cell(v) for v in record.values()) for record in expected]
    # One refresh to start, one after the 401; the 401 was the only refused request.
    assert _token_calls(emu) == [200, 200]
    assert [r.status for r in emu.manage_requests() if r.path.startswith("/api/v4/") and r.status != 200] == [
        401
    ]
    tokens = {r.token_id for r in emu.manage_requests() if r.path.startswith("/api/v4/") and r.status == 200}
    assert len(tokens) == 2  # a new access token after the refresh (the 401 names no known token)...
    stored = store.load(conn_id)
    assert stored is not None
    assert stored.refresh_token == original  # ...but the refresh token did not rotate: the pair keeps it
    assert stored.access_token is not None
    assert emu.manage_token_id(stored.access_token) in tokens
    manage.assert_cursor_paging_only(emu)

    # The same refresh token keeps working: expire again, and a hook on the stored pair refreshes with it.
    emu.expire_manage_access_tokens()
    hook = ClioHook(conn_id, token_store=store)
    try:
        page = hook.get("activities", {"fields": "id", "limit": 1})
    finally:
        hook.close()
    assert page["data"] == [{"id": 1}]
    assert _token_calls(emu) == [200, 200, 200]
    again = store.load(conn_id)
    assert again is not None
    assert again.refresh_token == original
    assert again.access_token != stored.access_token


def _extract(conn_id: str, tmp_path: Path, **kwargs: Any) -> Callable[[], ClioExtractOperator]:
    """An activities extraction allowed 3 task retries: a fatal error must not use them."""

    def make() -> ClioExtractOperator:
        return ClioExtractOperator(
            task_id="t",
            clio_conn_id=conn_id,
            endpoint="activities",
            fields="id,etag",
            destination=f"file://{tmp_path}/out",
            token_store=MemoryTokenStore(),
            retries=3,
            retry_delay=datetime.timedelta(seconds=0),
            **kwargs,
        )

    return make


def _api_requests(emu: ClioEmulator) -> list[int]:
    return [r.status for r in emu.manage_requests() if r.path.startswith("/api/v4/")]


def test_a_retired_api_version_fails_the_task_at_once_naming_the_version(
    airflow_db: Path,
    clio_emulator_factory: Callable[..., ClioEmulator],
    manage_conn: Callable[..., str],
    manage: SimpleNamespace,
    support: ModuleType,
    tmp_path: Path,
) -> None:
    # Clio moved on to 4.0.14 and retired the version this release pins: every request answers 410 (one
    # sent without the pinned X-API-VERSION would get 4.0.14 and succeed, so this also shows the pin is sent).
    emu = clio_emulator_factory(
        manage={
            "records": {"activities": 50},
            "api_version": "4.0.14",
            "retired_versions": (API_VERSION,),
            **manage.unlimited,
        }
    )
    conn_id = manage_conn(emu)

    with pytest.raises(ClioFatalError) as raised:
        _extract(conn_id, tmp_path)().execute({})
    message = str(raised.value)
    assert "410" in message
    assert API_VERSION in message
    assert "retired" in message
    assert _api_requests(emu) == [410]  # no in-request retry either

    dag_run = _run_one(support, _extract(conn_id, tmp_path))
    assert support.ti_state(dag_run, "t") == "failed"
    assert support.try_number(dag_run, "t") == 1  # 3 retries allowed, none used
    assert _api_requests(emu) == [410, 410]


def test_a_422_fails_the_task_at_once_with_the_reason(
    airflow_db: Path,
    clio_emulator_factory: Callable[..., ClioEmulator],
    manage_conn: Callable[..., str],
    ledger: Callable[[ClioEmulator], AdmissionLedger],
    manage: SimpleNamespace,
    support: ModuleType,
    tmp_path: Path,
) -> None:
    emu = clio_emulator_factory(manage={"records": {"activities": 10_400}, **manage.unlimited})
    conn_id = manage_conn(emu)

    # A real 422: offset paging past Clio's 10,000-record cap, asked for by hand through the hook.
    hook = ClioHook(conn_id, token_store=MemoryTokenStore())
    try:
        with pytest.raises(ClioFatalError) as raised:
            hook.get("activities", {"fields": "id", "offset": 10_000, "limit": 200})
    finally:
        hook.close()
    message = str(raised.value)
    assert "422" in message
    assert "offset" in message
    assert "10,000" in message or "10000" in message
    assert _api_requests(emu) == [422]

    # In a task: a 422 in the middle of an extraction fails it on its first try, with the reason.
    watch = ledger(emu)
    watch.when(
        lambda d, _: d.admitted and d.index == 3,
        lambda: emu.set_faults(Faults(outage_requests=1, outage_status=422)),
    )
    dag_run = _run_one(support, _extract(conn_id, tmp_path))
    assert support.ti_state(dag_run, "t") == "failed"
    assert support.try_number(dag_run, "t") == 1
    assert _api_requests(emu) == [422, 200, 200, 200, 422]
    assert not (tmp_path / "out" / "_manifest.json").exists()


def test_offset_is_never_sent_and_a_user_offset_is_refused_before_any_request(
    airflow_db: Path,
    clio_emulator_factory: Callable[..., ClioEmulator],
    manage_conn: Callable[..., str],
    manage: SimpleNamespace,
    support: ModuleType,
    tmp_path: Path,
) -> None:
    # Past 10,000 records, where offset paging would fail: cursor paging reads every one of them.
    emu = clio_emulator_factory(manage={"records": {"activities": 10_400}, **manage.unlimited})
    conn_id = manage_conn(emu)
    summary = _extract(conn_id, tmp_path)().execute({})
    assert summary["records"] == 10_400
    manage.assert_cursor_paging_only(emu)
    assert all(status == 200 for status in _api_requests(emu))

    before = len(emu.manage_requests())
    with pytest.raises(ClioConfigError, match="offset"):
        _extract(conn_id, tmp_path / "again", query_params={"offset": 0})().execute({})
    dag_run = _run_one(support, _extract(conn_id, tmp_path / "again", query_params={"offset": 0}))
    assert support.ti_state(dag_run, "t") == "failed"
    assert support.try_number(dag_run, "t") == 1
    assert len(emu.manage_requests()) == before


def test_tasks_starting_together_share_one_access_token(
    clio_emulator_factory: Callable[..., ClioEmulator],
    manage_conn: Callable[..., str],
    manage: SimpleNamespace,
    tmp_path: Path,
) -> None:
    # The pool is sized per token (apis/manage.py): hooks of one connection that start together on a store
    # with a refresh lock refresh once and spend one token's budget. (VariableTokenStore has no inter-process
    # lock: tasks starting together in separate processes may each refresh; see tests/scheduler.)
    emu = clio_emulator_factory(manage={"records": {"activities": 10}, **manage.unlimited})
    conn_id = manage_conn(emu)
    store = FileTokenStore(tmp_path / "tokens.json")  # shared by every worker, with an inter-process lock
    hooks = [ClioHook(conn_id, token_store=store) for _ in range(3)]
    barrier = threading.Barrier(len(hooks))

    def first_page(hook: ClioHook) -> None:
        barrier.wait()
        hook.get("activities", {"fields": "id", "limit": 1})

    threads = [threading.Thread(target=first_page, args=(hook,)) for hook in hooks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for hook in hooks:
        hook.close()
    tokens = {r.token_id for r in emu.manage_requests() if r.path.startswith("/api/v4/")}
    assert len(tokens) == 1, f"{len(tokens)} access tokens, {_token_calls(emu)} token calls"
