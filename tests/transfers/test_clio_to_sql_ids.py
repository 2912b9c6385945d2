# SPDX-License-Identifier: Apache-2.0
"""ClioToSqlOperator ``mode="ids"`` into real SQLite and PostgreSQL: exact rows, missing ids, retries."""

from __future__ import annotations

import datetime
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from airflow.sdk import DAG, task

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.lookups import MAX_IDS_PER_REQUEST
from airflow_provider_clio.testing import ClioEmulator
from airflow_provider_clio.transfers.clio_to_sql import ClioToSqlOperator

UTC = datetime.timezone.utc
FIELDS = ["id", "name", "updated_at"]


@dataclass
class Target:
    """A SQL connection id, a fresh table name, and how to open a DB-API connection to read it back."""

    conn_id: str
    table: str
    connect: Callable[[], Any]

    def rows(self) -> dict[int, tuple[Any, ...]]:
        with closing(self.connect()) as conn, closing(conn.cursor()) as cur:
            cur.execute(f'SELECT id, name, updated_at FROM "{self.table}" ORDER BY id')  # noqa: S608
            return {int(row[0]): (int(row[0]), row[1], row[2]) for row in cur.fetchall()}


@pytest.fixture(params=["sqlite", "postgres"])
def target(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> Iterator[Target]:
    table = f"clio_ids_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        path = tmp_path / "warehouse.db"
        yield Target(support.sqlite_connection(monkeypatch, path), table, lambda: sqlite3.connect(path))
        return
    import psycopg2

    dsn = request.getfixturevalue("postgres_dsn")
    conn_id = f"wh_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", dsn)
    yield Target(conn_id, table, lambda: psycopg2.connect(dsn))
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(f'DROP TABLE IF EXISTS "{table}"')
        conn.commit()


def _ids_dag(support: ModuleType, clio: str, target: Target, ids: list[int], **kwargs: Any) -> DAG:
    """A DAG whose ``pick`` task returns ``ids`` and whose ``load`` task upserts their records."""
    with support.manual_dag("sql_ids") as dag:

        @task
        def pick() -> list[int]:
            return ids

        ClioToSqlOperator(
            task_id="load",
            clio_conn_id=clio,
            endpoint="grow/contacts",
            fields=FIELDS,
            mode="ids",
            ids=pick(),
            sql_conn_id=target.conn_id,
            table=target.table,
            **kwargs,
        )
    return dag


def test_known_records_are_refreshed_exactly_and_missing_ids_reported(
    airflow_db: Path,
    clio_emulator_factory: Callable[..., ClioEmulator],
    target: Target,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    emu = clio_emulator_factory(rate_limit=1000, records={"contacts": 400}, page_size=50)
    clio = support.clio_connection(monkeypatch, emu)
    store = MemoryTokenStore()  # refresh tokens rotate: both loads share the store
    full = ClioToSqlOperator(
        task_id="full",
        clio_conn_id=clio,
        endpoint="grow/contacts",
        fields=FIELDS,
        sql_conn_id=target.conn_id,
        table=target.table,
        token_store=store,
    )
    assert full.execute({})["records"] == 400
    loaded = target.rows()

    # Clio changes 60 known records and deletes two; a webhook queue hands their ids to the DAG.
    edited = list(range(300, 360))
    emu.touch("contacts", edited, at=datetime.datetime(2026, 9, 1, tzinfo=UTC))
    emu.delete_records("contacts", [10, 11])
    never = list(range(10_001, 10_151))  # 150 ids Clio never had (or this token cannot see)
    ids = [*edited, 10, 11, *never, *edited[:5]]
    emu.clear_requests()
    dag_run = support.run_dag(_ids_dag(support, clio, target, ids, token_store=store))
    assert support.ti_state(dag_run, "load") == "success"

    summary = support.xcom_value(dag_run, "load")
    assert (summary["records"], summary["mode"], summary["rate_limited"]) == (60, "ids", 0)
    assert (summary["requested_ids"], summary["id_batches"], summary["id_requests"]) == (212, 5, 5)
    assert summary["missing_ids"] == 152
    assert summary["missing_ids_first"] == [10, 11, *never[:98]]  # never more than 100 in the XCom
    assert len(json.dumps(summary)) < 2000

    # The edited rows now match Clio; every other row is as loaded; deleted rows are kept (not marked).
    truth = support.contact_rows(emu)
    rows = target.rows()
    assert {i: rows[i] for i in edited} == {i: truth[i] for i in edited}
    assert {i: row for i, row in rows.items() if i not in edited} == {
        i: row for i, row in loaded.items() if i not in edited
    }
    assert all(rows[i] != loaded[i] for i in edited)

    sent = support.id_lookups(emu.requests)
    assert [len(r.query["ids[]"]) for r in sent] == [50, 50, 50, 50, 12]
    assert all(len(r.query["ids[]"]) <= MAX_IDS_PER_REQUEST for r in sent)
    assert emu.count(path_prefix="/grow") == len(sent)  # no other list call: not a scan of the endpoint
    assert emu.count(status=429) == 0


def test_a_retry_after_a_failure_in_batch_2_of_3_upserts_every_record(
    airflow_db: Path,
    clio_emulator_factory: Callable[..., ClioEmulator],
    target: Target,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    # Pages of 20 split each batch of 50 ids into 20 + 20 + 10; with transactions of 20 rows, batch 1's last
    # page commits when batch 2's first page arrives, where that page's next_url (None: end of batch 1) would
    # read as "every page committed". The outage hits batch 2's second page.
    emu = clio_emulator_factory(rate_limit=1000, records={"contacts": 300}, page_size=20)
    clio = support.clio_connection(monkeypatch, emu, requests_per_slot=20)  # the watcher lands between pages
    ids = list(range(101, 221))  # batches of 50, 50, 20
    store = MemoryTokenStore()
    dag = _ids_dag(
        support,
        clio,
        target,
        ids,
        batch_size=20,
        token_store=store,
        **support.ONE_RETRY,
    )
    dag_run = support.run_through_outage(dag, emu, "load", pages=4)
    assert support.task_state_keys(dag_run, "load") == []

    truth = support.contact_rows(emu)
    expected = {i: truth[i] for i in ids}
    assert target.rows() == expected
    summary = support.xcom_value(dag_run, "load")
    assert (summary["records"], summary["missing_ids"], summary["resumed"]) == (120, 0, False)

    before, after = support.split_at_outage(emu.requests)
    first_try, second_try = support.id_lookups(before), support.id_lookups(after)
    assert [r.page_token is None for r in first_try] == [True, False, False, True]  # into batch 2
    assert [len(r.query["ids[]"]) for r in second_try if r.page_token is None] == [50, 50, 20]
    assert len(second_try) == 7  # every batch read again, from its first page
    assert emu.count(status=429) == 0

    # Rerunning the same ids upserts the same rows: nothing changes.
    rerun = ClioToSqlOperator(
        task_id="again",
        clio_conn_id=clio,
        endpoint="grow/contacts",
        fields=FIELDS,
        mode="ids",
        ids=json.dumps(ids),  # the text a templated xcom_pull renders to
        sql_conn_id=target.conn_id,
        table=target.table,
        token_store=store,
    )
    monkeypatch.setenv(*emu.connection_env(clio, requests_per_slot=500))
    assert rerun.execute({})["records"] == 120
    assert target.rows() == expected


def test_bad_ids_fail_before_any_request_and_create_no_table(
    clio_emulator_factory: Callable[..., ClioEmulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    emu = clio_emulator_factory(rate_limit=1000, records={"contacts": 5})
    path = tmp_path / "warehouse.db"
    sql_conn_id = support.sqlite_connection(monkeypatch, path)
    op = ClioToSqlOperator(
        task_id="load",
        clio_conn_id=support.clio_connection(monkeypatch, emu),
        endpoint="grow/contacts",
        mode="ids",
        ids="{{ ti.xcom_pull(task_ids='pick') }}",
        sql_conn_id=sql_conn_id,
        table="contacts",
        token_store=MemoryTokenStore(),
    )
    op.ids = "[4, 5, 'five']"  # what a bad upstream value renders to
    with pytest.raises(ClioConfigError, match="'five' is not a record id"):
        op.execute({})
    assert emu.count(path_prefix="/grow") == 0
    assert not path.exists()  # the SQL connection was not even opened


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "reconcile", "ids": [1]}, "ids applies to mode='ids' only, not mode='reconcile'"),
        ({"mode": "ids"}, "mode='ids' needs ids"),
        ({"mode": "ids", "ids": ["1", "x"]}, "'x' is not a record id"),
    ],
)
def test_ids_arguments_are_checked_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ClioConfigError, match=message):
        ClioToSqlOperator(task_id="x", endpoint="grow/contacts", sql_conn_id="unused", table="t", **kwargs)
