# SPDX-License-Identifier: Apache-2.0
"""ClioToSqlOperator(mode="reconcile") on real SQLite and PostgreSQL: marks exactly the rows Clio lost."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.exceptions import ClioConfigError, ClioRetryableError
from airflow_provider_clio.testing import ClioEmulator
from airflow_provider_clio.transfers.clio_to_sql import ClioToSqlOperator


class Warehouse:
    """A SQL connection id and a table in SQLite or Postgres, with a plain DB-API way to query it."""

    def __init__(self, conn_id: str, table: str, connect: Callable[[], Any], placeholder: str) -> None:
        self.conn_id, self.table, self.connect, self.placeholder = conn_id, table, connect, placeholder

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with closing(self.connect()) as conn:
            cur = conn.cursor()
            cur.execute(sql.replace("?", self.placeholder).replace("{t}", f'"{self.table}"'), params)
            rows = cur.fetchall() if cur.description else []
            conn.commit()
            return rows

    def marked(self) -> list[int]:
        return [
            row[0]
            for row in self.query('SELECT id FROM {t} WHERE "_clio_deleted_at" IS NOT NULL ORDER BY id')
        ]


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> Iterator[Warehouse]:
    table = f"contacts_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        path = tmp_path / "warehouse.db"
        yield Warehouse(
            support.sqlite_connection(monkeypatch, path), table, lambda: sqlite3.connect(path), "?"
        )
        return
    import psycopg2

    dsn = request.getfixturevalue("postgres_dsn")
    conn_id = f"wh_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", dsn)
    wh = Warehouse(conn_id, table, lambda: psycopg2.connect(dsn), "%s")
    yield wh
    wh.query("DROP TABLE IF EXISTS {t}")


@pytest.fixture
def emu(clio_emulator_factory: Callable[..., ClioEmulator]) -> ClioEmulator:
    return clio_emulator_factory(rate_limit=1000, records={"contacts": 1000}, page_size=100)


def _clio(monkeypatch: pytest.MonkeyPatch, emu: ClioEmulator, support: ModuleType, **kw: Any) -> Any:
    """A Clio connection id and the token store its operators share (refresh tokens rotate)."""
    return support.clio_connection(monkeypatch, emu, **kw), MemoryTokenStore()


def _op(clio: Any, wh: Warehouse, **kwargs: Any) -> ClioToSqlOperator:
    conn_id, store = clio
    return ClioToSqlOperator(
        task_id=f"t_{uuid.uuid4().hex[:6]}",
        clio_conn_id=conn_id,
        endpoint="grow/contacts",
        sql_conn_id=wh.conn_id,
        table=wh.table,
        token_store=store,
        **kwargs,
    )


def test_reconcile_marks_exactly_the_rows_gone_from_clio(
    emu: ClioEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    clio = _clio(monkeypatch, emu, support)
    assert _op(clio, warehouse, fields=["id", "name", "updated_at"]).execute({})["records"] == 1000
    gone = [3, 250, 251, 777, 1000]
    emu.delete_records("contacts", gone)
    emu.clear_requests()

    summary = _op(clio, warehouse, mode="reconcile").execute({})
    assert {k: summary[k] for k in ("scanned", "pages", "live", "candidates", "missing", "marked")} == {
        "scanned": 995,
        "pages": 5,
        "live": 1000,
        "candidates": 1000,
        "missing": 5,
        "marked": 5,
    }
    assert warehouse.marked() == gone
    # An id-only scan, 200 ids per request.
    queries = [r.query for r in emu.requests if r.is_api]
    assert len(queries) == 5
    assert all(q["fields"] == ["id"] and q["limit"] == ["200"] for q in queries)
    # The rows are kept, marked; a second reconcile finds nothing new.
    assert len(warehouse.query("SELECT id FROM {t}")) == 1000
    again = _op(clio, warehouse, mode="reconcile").execute({})
    assert (again["live"], again["missing"], again["marked"]) == (995, 0, 0)
    assert warehouse.marked() == gone


def test_a_record_visible_again_is_unmarked_by_the_next_load(
    emu: ClioEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    clio = _clio(monkeypatch, emu, support)
    _op(clio, warehouse, fields=["id", "name"]).execute({})
    _op(clio, warehouse, mode="reconcile").execute({})
    # e.g. hidden from the token for a while, then visible again: a load clears the mark.
    warehouse.query('UPDATE {t} SET "_clio_deleted_at" = ? WHERE id IN (8, 9)', "2026-08-01T00:00:00+00:00")
    assert warehouse.marked() == [8, 9]
    _op(clio, warehouse, fields=["id", "name"]).execute({})
    assert warehouse.marked() == []


def test_more_than_the_allowed_share_is_refused_unless_overridden(
    emu: ClioEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    clio = _clio(monkeypatch, emu, support)
    _op(clio, warehouse, fields=["id", "name"]).execute({})
    # A less privileged user re-authorized the application: 60 of 1000 records are out of its sight.
    emu.delete_records("contacts", range(101, 161))
    with pytest.raises(ClioConfigError, match=r"would mark 60 of 1000 live row\(s\) deleted \(6\.0%\)"):
        _op(clio, warehouse, mode="reconcile").execute({})
    assert warehouse.marked() == []
    assert _op(clio, warehouse, mode="reconcile", max_deleted_share=0.1).execute({})["marked"] == 60
    warehouse.query('UPDATE {t} SET "_clio_deleted_at" = NULL')
    assert _op(clio, warehouse, mode="reconcile", allow_mass_delete=True).execute({})["marked"] == 60


def test_a_partial_scan_marks_nothing(
    emu: ClioEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    _op(_clio(monkeypatch, emu, support), warehouse, fields=["id", "name"]).execute({})
    emu.delete_records("contacts", [5, 6])
    # The outage starts after two of the five id pages: every id after them would look deleted.
    clio = _clio(monkeypatch, emu, support, requests_per_slot=5)  # 200 ms a page: the watcher lands mid-scan
    emu.clear_requests()
    op = _op(clio, warehouse, mode="reconcile", request_retry=support.FAST_FAIL, allow_mass_delete=True)
    with support.OutageAfterPages(emu, pages=2, requests=50) as outage, pytest.raises(ClioRetryableError):
        op.execute({})
    assert outage.fired.is_set()
    assert emu.count(status=200, path_prefix="/grow") < 5  # the scan never reached its last page
    assert warehouse.marked() == []


def test_only_rows_loaded_before_the_scan_started_are_marked(
    emu: ClioEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    clio = _clio(monkeypatch, emu, support)
    _op(clio, warehouse, fields=["id", "name"]).execute({})
    emu.delete_records("contacts", [10, 20])
    # Row 20 was (re)loaded after this reconcile's scan started, e.g. by a load running alongside it.
    warehouse.query('UPDATE {t} SET "_loaded_at" = ? WHERE id = 20', "9999-01-01T00:00:00.000000+00:00")
    summary = _op(clio, warehouse, mode="reconcile").execute({})
    assert (summary["candidates"], summary["missing"], summary["marked"]) == (999, 1, 1)
    assert warehouse.marked() == [10]


def test_an_existing_table_gets_the_columns_or_a_clear_refusal(
    emu: ClioEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    clio = _clio(monkeypatch, emu, support)
    # A table loaded before _loaded_at existed: its rows count as loaded before any scan.
    warehouse.query('CREATE TABLE {t} ("id" BIGINT PRIMARY KEY, "name" TEXT)')
    warehouse.query("INSERT INTO {t} (id, name) VALUES (1, 'a'), (2, 'b'), (5000, 'gone')")
    emu.clear_requests()
    with pytest.raises(ClioConfigError, match="has no column _loaded_at, which reconcile needs"):
        _op(clio, warehouse, mode="reconcile", create_table=False).execute({})
    assert emu.count(path_prefix="/grow") == 0
    summary = _op(clio, warehouse, mode="reconcile", max_deleted_share=0.5).execute({})
    assert (summary["live"], summary["missing"], summary["marked"]) == (3, 1, 1)
    assert warehouse.marked() == [5000]


def test_reconcile_takes_no_fields_or_bounds() -> None:
    with pytest.raises(ClioConfigError, match="reads ids only"):
        ClioToSqlOperator(
            task_id="r", endpoint="grow/contacts", sql_conn_id="x", table="t", mode="reconcile", fields=["id"]
        )
    with pytest.raises(ClioConfigError, match="takes its bounds from the run"):
        ClioToSqlOperator(
            task_id="r",
            endpoint="grow/contacts",
            sql_conn_id="x",
            table="t",
            mode="reconcile",
            updated_since="x",
        )
    with pytest.raises(ClioConfigError, match="max_deleted_share must be between 0 and 1"):
        ClioToSqlOperator(
            task_id="r", endpoint="grow/contacts", sql_conn_id="x", table="t", max_deleted_share=5
        )


def test_a_load_into_a_table_without_loaded_at_adds_it(
    emu: ClioEmulator, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    clio = _clio(monkeypatch, emu, support)
    warehouse.query('CREATE TABLE {t} ("id" BIGINT PRIMARY KEY, "name" TEXT)')
    assert _op(clio, warehouse, fields=["id", "name"]).execute({})["records"] == 1000
    stamps = {row[0] for row in warehouse.query('SELECT "_loaded_at" FROM {t}')}
    assert None not in stamps
    assert all(len(stamp) == len("2026-08-01T00:00:00.000000+00:00") for stamp in stamps)
