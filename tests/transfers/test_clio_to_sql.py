# SPDX-License-Identifier: Apache-2.0
"""ClioToSqlOperator into real SQLite and PostgreSQL: exact rows, idempotent reruns, upserts, resume."""

from __future__ import annotations

import datetime
import decimal
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from airflow.sdk import BaseHook

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.columns import sql_type
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.testing import ClioEmulator
from airflow_provider_clio.transfers.clio_to_sql import ClioToSqlOperator, SqlSink

UTC = datetime.timezone.utc
MATTER_FIELDS = ["id", "display_number", "status", "is_locked", "client{id,name}", "updated_at"]


@pytest.fixture
def emu(clio_emulator_factory: Callable[..., ClioEmulator]) -> ClioEmulator:
    return clio_emulator_factory(
        rate_limit=1000, records={"matters": 260, "contacts": 500, "activities": 120}, page_size=50
    )


@pytest.fixture
def clio(emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch, support: ModuleType) -> str:
    """A fresh Clio connection id to ``emu``, at the default pace."""
    conn_id: str = support.clio_connection(monkeypatch, emu)
    return conn_id


@pytest.fixture
def sqlite_conn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType) -> tuple[str, Path]:
    path = tmp_path / "warehouse.db"
    return support.sqlite_connection(monkeypatch, path), path


@pytest.fixture
def pg_table(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A Postgres connection id and a unique table name; the table is dropped afterwards."""
    import psycopg2

    conn_id = f"pg_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", postgres_dsn)
    table = f"clio_test_{uuid.uuid4().hex[:10]}"
    yield conn_id, table
    with closing(psycopg2.connect(postgres_dsn)) as conn, conn.cursor() as cur:
        cur.execute(f'DROP TABLE IF EXISTS "{table}"')
        conn.commit()


def _operator(clio: str, sql_conn_id: str, table: str, **arguments: Any) -> ClioToSqlOperator:
    """Return a load of ``grow/matters`` into ``table``, own token store; ``arguments`` add or override."""
    defaults = {"task_id": "load", "endpoint": "grow/matters", "token_store": MemoryTokenStore()}
    return ClioToSqlOperator(
        clio_conn_id=clio, sql_conn_id=sql_conn_id, table=table, **{**defaults, **arguments}
    )


def _cell(value: Any) -> Any:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else value


def _expected_rows(
    records: list[dict[str, Any]], fields: list[str], support: ModuleType
) -> list[tuple[Any, ...]]:
    """Emulator truth as table rows: nested values as compact JSON text, columns in field order."""
    return [tuple(_cell(v) for v in record.values()) for record in support.project(records, fields)]


def _without_loaded_at(cursor: Any) -> list[tuple[Any, ...]]:
    """The fetched rows without the ``_loaded_at`` column every upsert sets (a commit time, not data)."""
    keep = [i for i, column in enumerate(cursor.description) if column[0] != "_loaded_at"]
    return [tuple(row[i] for i in keep) for row in cursor.fetchall()]


def _sqlite_rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return _without_loaded_at(conn.execute(f'SELECT * FROM "{table}" ORDER BY id'))  # noqa: S608


def test_sqlite_load_is_exact_and_a_rerun_changes_nothing(
    emu: ClioEmulator, clio: str, sqlite_conn: tuple[str, Path], support: ModuleType
) -> None:
    conn_id, path = sqlite_conn
    op = _operator(clio, conn_id, "clio_matters", fields=MATTER_FIELDS, batch_size=100)
    summary = op.execute({})
    assert summary["records"] == 260
    assert summary["batches"] == 3
    assert summary["pages"] == 6
    expected = _expected_rows(emu.records("matters"), MATTER_FIELDS, support)
    assert _sqlite_rows(path, "clio_matters") == expected
    with closing(sqlite3.connect(path)) as conn:
        ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'clio_matters'").fetchone()[0]
    assert ddl == (
        'CREATE TABLE "clio_matters" ("id" BIGINT PRIMARY KEY, "display_number" TEXT, "status" TEXT, '
        '"is_locked" BOOLEAN, "client" TEXT, "updated_at" TEXT, "_loaded_at" TEXT)'
    )

    again = op.execute({})
    assert again["records"] == 260
    assert _sqlite_rows(path, "clio_matters") == expected


def test_sqlite_incremental_intervals_upsert_changed_rows(
    emu: ClioEmulator, clio: str, sqlite_conn: tuple[str, Path], support: ModuleType
) -> None:
    conn_id, path = sqlite_conn
    store = MemoryTokenStore()
    fields = ["id", "display_number", "updated_at"]

    def load(since: datetime.datetime, until: datetime.datetime) -> dict[str, Any]:
        return _operator(
            clio,
            conn_id,
            "matters",
            fields=fields,
            updated_since=since.isoformat(),
            updated_until=until.isoformat(),
            token_store=store,
        ).execute({})

    start = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    cut = datetime.datetime(2026, 7, 1, tzinfo=UTC)
    first = load(start, cut)
    assert first["records"] == 260
    # Three matters change after the first load; the next interval upserts exactly them.
    later = datetime.datetime(2026, 7, 2, 12, tzinfo=UTC)
    emu.touch("matters", [3, 100, 250], at=later)
    second = load(cut, datetime.datetime(2026, 8, 1, tzinfo=UTC))
    assert second["records"] == 3
    rows = _sqlite_rows(path, "matters")
    assert rows == _expected_rows(emu.records("matters"), fields, support)
    assert [r[0] for r in rows if r[2] == later.isoformat()] == [3, 100, 250]


def test_columns_come_from_the_first_page_without_fields(
    emu: ClioEmulator, clio: str, sqlite_conn: tuple[str, Path]
) -> None:
    conn_id, path = sqlite_conn
    _operator(clio, conn_id, "all_fields").execute({})
    truth = emu.records("matters")
    with closing(sqlite3.connect(path)) as conn:
        columns = [row[1] for row in conn.execute('PRAGMA table_info("all_fields")')]
    assert columns == [*truth[0], "_loaded_at"]
    assert len(_sqlite_rows(path, "all_fields")) == len(truth)


def test_postgres_retry_resumes_from_the_last_committed_batch(
    airflow_db: Path,
    emu: ClioEmulator,
    pg_table: tuple[str, str],
    postgres_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    import psycopg2

    conn_id, table = pg_table
    clio = support.clio_connection(monkeypatch, emu, requests_per_slot=20)
    fields = ["id", "name", "email", "source{id,name}", "updated_at"]
    with support.manual_dag("sql_resume") as dag:
        _operator(
            clio,
            conn_id,
            table,
            endpoint="grow/contacts",
            fields=fields,
            batch_size=100,  # two pages of 50 per transaction
            **support.ONE_RETRY,
        )
    dag_run = support.run_through_outage(dag, emu, "load", pages=5)
    summary = support.xcom_value(dag_run, "load")
    assert summary["resumed"] is True
    committed_batches = summary["resumed_batches"]
    assert committed_batches >= 1
    assert support.task_state_keys(dag_run, "load") == []

    def table_rows() -> list[tuple[Any, ...]]:
        with closing(psycopg2.connect(postgres_dsn)) as conn, conn.cursor() as cur:
            cur.execute(f'SELECT * FROM "{table}" ORDER BY id')  # noqa: S608 - generated test table
            return _without_loaded_at(cur)

    expected = _expected_rows(emu.records("contacts"), fields, support)
    assert table_rows() == expected

    before, after = support.split_at_outage(emu.requests)
    first_try = support.page_tokens(before)
    second_try = support.page_tokens(after)
    committed_pages = committed_batches * 2
    assert second_try[0] == first_try[committed_pages]
    assert not set(first_try[:committed_pages]) & set(second_try)

    # Rerunning the interval upserts the same rows: the row count does not change.
    rerun = _operator(clio, conn_id, table, task_id="again", endpoint="grow/contacts", fields=fields)
    monkeypatch.setenv(*emu.connection_env(clio, requests_per_slot=500))
    assert rerun.execute({})["records"] == 500
    assert table_rows() == expected


@pytest.mark.parametrize(
    ("table", "message"),
    [("matters; DROP TABLE x", "not a plain identifier"), ("a.b.c", "schema.table"), ("1abc", "identifier")],
)
def test_table_names_are_validated(table: str, message: str) -> None:
    with pytest.raises(ClioConfigError, match=message):
        ClioToSqlOperator(
            task_id="bad", clio_conn_id="none", endpoint="grow/matters", sql_conn_id="x", table=table
        )


def test_sql_connection_must_be_a_dbapi_hook(clio: str) -> None:
    op = ClioToSqlOperator(
        task_id="bad", clio_conn_id=clio, endpoint="grow/matters", sql_conn_id=clio, table="t"
    )
    with pytest.raises(ClioConfigError, match=r"not a common\.sql DbApiHook"):
        op.execute({})


class _DialectHook:
    """Only what SqlSink reads to build statements: the dialect name and the placeholder."""

    def __init__(self, dialect: str) -> None:
        self.dialect_name = dialect
        self.placeholder = "%s"
        self.log = None


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        (
            "postgresql",
            'INSERT INTO "s"."t" ("id", "name") VALUES (%s, %s) ON CONFLICT ("id") DO UPDATE SET '
            '"name" = excluded."name"',
        ),
        (
            "mysql",
            "INSERT INTO `s`.`t` (`id`, `name`) VALUES (%s, %s) "
            "ON DUPLICATE KEY UPDATE `name` = VALUES(`name`)",
        ),
        ("mssql", None),
    ],
)
def test_upsert_statement_per_dialect(dialect: str, expected: str | None) -> None:
    hook: Any = _DialectHook(dialect)
    sink = SqlSink(hook, conn=None, table="s.t", columns=["name", "id"], loaded_at=False)
    assert sink.upsert_sql() == expected


def test_every_upsert_sets_loaded_at_and_clears_the_deleted_mark() -> None:
    hook: Any = _DialectHook("postgresql")
    sink = SqlSink(hook, conn=None, table="t", columns=["id"], clear_column="_clio_deleted_at")
    assert sink.upsert_sql() == (
        'INSERT INTO "t" ("id", "_loaded_at", "_clio_deleted_at") VALUES (%s, %s, %s) ON CONFLICT ("id") '
        'DO UPDATE SET "_loaded_at" = excluded."_loaded_at", "_clio_deleted_at" = excluded."_clio_deleted_at"'
    )


def test_type_inference_is_conservative() -> None:
    assert sql_type([1, 2, None]) == "NUMERIC"
    assert sql_type([True, False]) == "BOOLEAN"
    assert sql_type([1, 2.5]) == "NUMERIC"
    assert sql_type([1, "2"]) == "TEXT"
    assert sql_type([{"id": 1}]) == "TEXT"
    assert sql_type([None, None]) == "TEXT"
    assert sql_type(["2026-01-01T00:00:00+00:00"]) == "TEXT"


def test_openlineage_facets_name_the_table(clio: str, sqlite_conn: tuple[str, Path]) -> None:
    conn_id, path = sqlite_conn
    op = _operator(clio, conn_id, "ol_matters", task_id="ol", fields=["id"])
    start = op.get_openlineage_facets_on_start()
    assert [(d.namespace, d.name) for d in start.inputs] == [("clio://us", "grow/matters")]
    assert [(d.namespace, d.name) for d in start.outputs] == [(f"sqlite://{path}", "ol_matters")]
    op.execute({})
    complete = op.get_openlineage_facets_on_complete(None)
    assert complete.outputs[0].outputFacets["outputStatistics"].rowCount == 260


def test_an_empty_interval_still_creates_the_table(clio: str, sqlite_conn: tuple[str, Path]) -> None:
    conn_id, path = sqlite_conn
    summary = _operator(
        clio,
        conn_id,
        "empty_matters",
        task_id="empty",
        fields=["id", "display_number"],
        updated_since="2027-01-01T00:00:00+00:00",
    ).execute({})
    assert (summary["records"], summary["batches"], summary["pages"]) == (0, 0, 1)
    with closing(sqlite3.connect(path)) as conn:
        ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'empty_matters'").fetchone()[0]
    assert ddl == (
        'CREATE TABLE "empty_matters" ("id" BIGINT PRIMARY KEY, "display_number" TEXT, "_loaded_at" TEXT)'
    )
    assert _sqlite_rows(path, "empty_matters") == []


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_whole_numbers_first_do_not_round_later_amounts(
    database: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Column types come from the first batch: all-whole amounts there must not make an integer column.
    if database == "sqlite":
        conn_id, _ = request.getfixturevalue("sqlite_conn")
        table = "amounts"
    else:
        conn_id, table = request.getfixturevalue("pg_table")
    hook = BaseHook.get_connection(conn_id).get_hook()
    with closing(hook.get_conn()) as conn:
        sink = SqlSink(hook, conn, table, ["id", "value"], create_table=True)
        sink.add([{"id": 1, "value": 5000}, {"id": 2, "value": 12}])
        sink.commit(0, "t")
        sink.add([{"id": 3, "value": 2500.75}, {"id": 4, "value": 0.4}])
        sink.commit(1, "t")
        with closing(conn.cursor()) as cur:
            cur.execute(f'SELECT id, value FROM "{table}" ORDER BY id')  # noqa: S608 - test table
            rows = [(row[0], decimal.Decimal(str(row[1]))) for row in cur.fetchall()]
    assert rows == [(1, 5000), (2, 12), (3, decimal.Decimal("2500.75")), (4, decimal.Decimal("0.4"))]


def test_postgres_amounts_load_exactly_as_numeric(
    emu: ClioEmulator, clio: str, pg_table: tuple[str, str], postgres_dsn: str
) -> None:
    import psycopg2

    conn_id, table = pg_table
    fields = ["id", "quantity", "total", "billed"]
    _operator(clio, conn_id, table, endpoint="grow/activities", fields=fields, batch_size=40).execute({})
    with closing(psycopg2.connect(postgres_dsn)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
            "ORDER BY ordinal_position",
            (table,),
        )
        types = cur.fetchall()
        cur.execute(f'SELECT id, quantity, total, billed FROM "{table}" ORDER BY id')  # noqa: S608
        rows = cur.fetchall()
    assert types == [
        ("id", "bigint"),
        ("quantity", "numeric"),
        ("total", "numeric"),
        ("billed", "boolean"),
        ("_loaded_at", "text"),
    ]
    truth = emu.records("activities")
    assert rows == [
        (r["id"], decimal.Decimal(str(r["quantity"])), decimal.Decimal(str(r["total"])), r["billed"])
        for r in truth
    ]


def test_a_later_field_without_fields_fails_instead_of_being_dropped(sqlite_conn: tuple[str, Path]) -> None:
    conn_id, path = sqlite_conn
    hook = BaseHook.get_connection(conn_id).get_hook()
    with closing(hook.get_conn()) as conn:
        sink = SqlSink(hook, conn, "inferred", None, create_table=True)
        sink.add([{"id": 1, "name": "A"}])
        sink.commit(0, "t")
        # A resumed try loads the columns the first try inferred, not the keys of its own first batch.
        resumed = SqlSink(hook, conn, "inferred", None, create_table=True)
        resumed.restore(sink.state())
        assert resumed.columns == ["id", "name"]
        sink.add([{"id": 2, "name": "B", "email": "b@example.com"}])
        with pytest.raises(ClioConfigError, match=r"id=2 has field\(s\) email .* Pass `fields`"):
            sink.commit(1, "t")
    assert _sqlite_rows(path, "inferred") == [(1, "A")]


def _execute_ddl(conn_id: str, *statements: str) -> None:
    hook = BaseHook.get_connection(conn_id).get_hook()
    with closing(hook.get_conn()) as conn:
        with closing(conn.cursor()) as cur:
            for statement in statements:
                cur.execute(statement)
        conn.commit()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_an_existing_table_without_a_key_on_id_is_refused_before_any_request(
    database: str, emu: ClioEmulator, clio: str, request: pytest.FixtureRequest
) -> None:
    # CREATE TABLE IF NOT EXISTS keeps this table: ON CONFLICT (id) would fail after the first pages were
    # read, on every retry alike (MySQL would insert duplicates on every rerun).
    if database == "sqlite":
        conn_id, _ = request.getfixturevalue("sqlite_conn")
        table = "keyless"
    else:
        conn_id, table = request.getfixturevalue("pg_table")
    _execute_ddl(
        conn_id,
        f'CREATE TABLE "{table}" ("id" BIGINT, "display_number" TEXT)',
        f'CREATE INDEX "{table}_by_id" ON "{table}" ("id")',  # an index, but not a unique one
    )

    def operator() -> ClioToSqlOperator:
        return _operator(clio, conn_id, table, task_id="keyless", fields=["id", "display_number"])

    with pytest.raises(
        ClioConfigError, match=rf"Table {table} has no primary key or unique constraint on \(id\)"
    ):
        operator().execute({})
    assert emu.count(path_prefix="/grow") == 0

    # A unique index on id is a key the upsert can use: the same table then loads.
    _execute_ddl(conn_id, f'CREATE UNIQUE INDEX "{table}_id" ON "{table}" ("id")')
    assert operator().execute({})["records"] == 260


def test_a_missing_table_without_create_table_is_refused_before_any_request(
    emu: ClioEmulator, clio: str, sqlite_conn: tuple[str, Path]
) -> None:
    conn_id, _ = sqlite_conn
    op = _operator(clio, conn_id, "not_there", task_id="missing", create_table=False)
    with pytest.raises(ClioConfigError, match="not_there does not exist and create_table=False"):
        op.execute({})
    assert emu.count(path_prefix="/grow") == 0


@pytest.mark.parametrize("name", ["matters\n", "matters\r\n", " matters"])
def test_an_identifier_with_a_trailing_newline_or_space_is_refused(name: str) -> None:
    with pytest.raises(ClioConfigError, match="not a plain identifier"):
        ClioToSqlOperator(
            task_id="bad", clio_conn_id="none", endpoint="grow/matters", sql_conn_id="x", table=name
        )
