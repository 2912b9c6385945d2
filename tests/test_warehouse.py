# SPDX-License-Identifier: Apache-2.0
"""merge_extract on real extractions (the emulator) into a real PostgreSQL 15: exact rows, reruns, drift."""

from __future__ import annotations

import datetime
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.operators.extract import ClioExtractOperator
from airflow_provider_clio.testing import ClioEmulator
from airflow_provider_clio.warehouse import (
    METADATA_COLUMNS,
    ExtractColumns,
    announce_extract,
    announced_extracts,
    committed_parts,
    merge_extract,
)

UTC = datetime.timezone.utc
FIELDS = ["id", "display_number", "status", "is_locked", "client{id,name}", "updated_at"]


@pytest.fixture
def emu(clio_emulator_factory: Callable[..., ClioEmulator]) -> ClioEmulator:
    return clio_emulator_factory(rate_limit=1000, records={"matters": 230}, page_size=50)


@pytest.fixture
def pg(postgres_dsn: str) -> Iterator[Any]:
    import psycopg2

    conn = psycopg2.connect(postgres_dsn)
    yield conn
    conn.close()


@pytest.fixture
def table(pg: Any) -> Iterator[str]:
    """A table name no other test (or helper sharing the database) uses; dropped afterwards."""
    name = f"clio_matters_{uuid.uuid4().hex[:10]}"
    yield name
    pg.rollback()
    with closing(pg.cursor()) as cur:
        cur.execute(f'DROP TABLE IF EXISTS "{name}"')
    pg.commit()


def _extract(
    emu: ClioEmulator,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
    destination: Path,
    fields: list[str],
    **kwargs: Any,
) -> dict[str, Any]:
    op = ClioExtractOperator(
        task_id=f"extract_{uuid.uuid4().hex[:6]}",
        clio_conn_id=support.clio_connection(monkeypatch, emu),
        endpoint="grow/matters",
        fields=fields,
        destination=f"file://{destination}",
        file_format="parquet",
        records_per_file=100,
        token_store=MemoryTokenStore(),
        **kwargs,
    )
    return op.execute({})


def _rows(pg: Any, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    with closing(pg.cursor()) as cur:
        cur.execute(f'SELECT {", ".join(columns)} FROM "{table}" ORDER BY id')  # noqa: S608 - test names
        rows = cur.fetchall()
    pg.commit()
    return rows


def _expected(records: list[dict[str, Any]], columns: list[str]) -> list[tuple[Any, ...]]:
    """Ground truth as PostgreSQL returns it: JSONB as dicts, timestamps as aware datetimes."""

    def cell(name: str, value: Any) -> Any:
        if name.endswith("_at") and value is not None:
            return datetime.datetime.fromisoformat(value)
        return value

    return [tuple(cell(n, r.get(n)) for n in columns) for r in sorted(records, key=lambda r: r["id"])]


def _column_types(pg: Any, table: str) -> dict[str, tuple[str, str]]:
    with closing(pg.cursor()) as cur:
        cur.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = %s",
            (table,),
        )
        types = {name: (data_type, nullable) for name, data_type, nullable in cur.fetchall()}
    pg.commit()
    return types


def _write_extract(destination: Path, run: str, records: list[dict[str, Any]], fields: str) -> None:
    """Commit a JSONL extraction by hand, e.g. with duplicates a live extraction can produce."""
    part = destination / f"run={run}" / "part-00000.jsonl"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_text("".join(json.dumps(r) + "\n" for r in records))
    manifest = {
        "version": 1,
        "run": run,
        "endpoint": "grow/matters",
        "fields": fields,
        "format": "jsonl",
        "files": [{"path": f"run={run}/part-00000.jsonl", "records": len(records)}],
    }
    (destination / "_manifest.json").write_text(json.dumps(manifest))


def test_parquet_extract_merges_exact_rows_and_a_rerun_changes_nothing(
    emu: ClioEmulator,
    pg: Any,
    table: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    destination = tmp_path / "matters"
    first = _extract(emu, monkeypatch, support, destination, FIELDS)
    summary = merge_extract(pg, f"file://{destination}", table, region="us")
    assert summary == {
        "run": first["run"],
        "staged": 230,
        "merged": 230,
        "inserted": 230,
        "updated": 0,
        "unchanged": 0,
        "added_columns": [],
    }
    columns = ["id", "display_number", "status", "is_locked", "client", "updated_at"]
    truth = support.project(emu.records("matters"), FIELDS)
    assert _rows(pg, table, columns) == _expected(truth, columns)
    types = _column_types(pg, table)
    assert types["id"] == ("bigint", "NO")
    assert types["client"][0] == "jsonb"
    assert types["is_locked"][0] == "boolean"
    assert types["updated_at"][0] == "timestamp with time zone"
    assert types["_loaded_at"][0] == "timestamp with time zone"
    meta = _rows(pg, table, ["id", *METADATA_COLUMNS])
    assert {(region, run) for _, _, region, run in meta} == {("us", first["run"])}
    assert len({loaded for _, loaded, _, _ in meta}) == 1  # one transaction, one load time

    # What a warehouse loading the files itself (Snowflake, BigQuery) must name: the manifest's parts.
    assert committed_parts(f"file://{destination}") == [
        f"run={first['run']}/part-0000{i}.parquet" for i in range(3)
    ]

    # The same interval extracted again (a new run folder) and merged again: nothing changes at all.
    snapshot = _rows(pg, table, ["*"])
    second = _extract(emu, monkeypatch, support, destination, FIELDS)
    assert second["run"] != first["run"]
    again = merge_extract(pg, f"file://{destination}", table, region="us")
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, 230)
    assert _rows(pg, table, ["*"]) == snapshot

    # Changed records update their rows (and only them), stamped with the run that delivered them.
    emu.touch("matters", [3, 150], at=datetime.datetime(2026, 8, 1, tzinfo=UTC))
    third = _extract(emu, monkeypatch, support, destination, FIELDS)
    changed = merge_extract(pg, f"file://{destination}", table, region="us")
    assert (changed["inserted"], changed["updated"], changed["unchanged"]) == (0, 2, 228)
    truth = support.project(emu.records("matters"), FIELDS)
    assert _rows(pg, table, columns) == _expected(truth, columns)
    runs = {row[0]: row[1] for row in _rows(pg, table, ["id", "_clio_run"])}
    assert {i for i, run in runs.items() if run == third["run"]} == {3, 150}


def test_a_new_field_becomes_a_nullable_column_and_a_dropped_one_stays(
    emu: ClioEmulator,
    pg: Any,
    table: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    before = ["id", "display_number", "status", "updated_at"]
    _extract(emu, monkeypatch, support, tmp_path / "v1", before)
    merge_extract(pg, f"file://{tmp_path / 'v1'}", table, region="us")

    # Clio "adds" fields (simulated: the next extraction selects two more): the load goes on, new columns.
    after = [*before, "matter_type", "client{id,name}"]
    _extract(emu, monkeypatch, support, tmp_path / "v2", after)
    summary = merge_extract(pg, f"file://{tmp_path / 'v2'}", table, region="us")
    assert summary["added_columns"] == ["matter_type", "client"]
    # Same updated_at but new values for the new columns: every row is filled in.
    assert (summary["inserted"], summary["updated"]) == (0, 230)
    types = _column_types(pg, table)
    assert types["matter_type"] == ("text", "YES")
    assert types["client"] == ("jsonb", "YES")
    columns = ["id", "display_number", "status", "updated_at", "matter_type", "client"]
    truth = emu.records("matters")
    assert _rows(pg, table, columns) == _expected(support.project(truth, after), columns)

    # A field no longer delivered: its column stays; old rows keep their value, new rows get NULL.
    new_ids = emu.add_records("matters", 5, at=datetime.datetime(2026, 8, 2, tzinfo=UTC))
    without_status = [f for f in after if f != "status"]
    _extract(emu, monkeypatch, support, tmp_path / "v3", without_status)
    dropped = merge_extract(pg, f"file://{tmp_path / 'v3'}", table, region="us")
    assert (dropped["inserted"], dropped["updated"], dropped["added_columns"]) == (5, 0, [])
    statuses = dict(_rows(pg, table, ["id", "status"]))
    truth_by_id = {r["id"]: r for r in emu.records("matters")}
    assert all(statuses[i] is None for i in new_ids)
    assert all(statuses[i] == truth_by_id[i]["status"] for i in statuses if i not in new_ids)
    assert len(statuses) == 235


def test_duplicates_keep_the_latest_row_per_id_even_without_a_key(
    pg: Any, table: str, tmp_path: Path
) -> None:
    # A warehouse that does not enforce keys: the target exists without a primary key.
    with closing(pg.cursor()) as cur:
        cur.execute(f'CREATE TABLE "{table}" (id BIGINT, name TEXT, updated_at TIMESTAMPTZ)')
    pg.commit()
    fields = "id,name,updated_at"
    # Record 1 changed while the extraction paged (listed twice); 2 twice with the same updated_at.
    _write_extract(
        tmp_path / "a",
        "a",
        [
            {"id": 1, "name": "old", "updated_at": "2026-05-01T10:00:00+00:00"},
            {"id": 2, "name": "first", "updated_at": "2026-05-01T10:00:00+00:00"},
            {"id": 1, "name": "new", "updated_at": "2026-05-01T12:00:00+02:00"},
            {"id": 2, "name": "second", "updated_at": "2026-05-01T10:00:00+00:00"},
            {"id": 1, "name": "older", "updated_at": "2026-05-01T09:00:00+00:00"},
        ],
        fields,
    )
    summary = merge_extract(pg, f"file://{tmp_path / 'a'}", table, region="eu")
    assert (summary["staged"], summary["merged"], summary["inserted"]) == (5, 2, 2)
    assert _rows(pg, table, ["id", "name", "_clio_region"]) == [(1, "new", "eu"), (2, "second", "eu")]

    # An older extraction loaded late (a backfill after a newer load) never overwrites newer rows.
    _write_extract(
        tmp_path / "b", "b", [{"id": 1, "name": "stale", "updated_at": "2026-04-01T00:00:00+00:00"}], fields
    )
    late = merge_extract(pg, f"file://{tmp_path / 'b'}", table, region="eu")
    assert (late["inserted"], late["updated"], late["unchanged"]) == (0, 0, 1)
    assert _rows(pg, table, ["id", "name"]) == [(1, "new"), (2, "second")]


def test_concurrent_loads_of_one_target_take_turns(
    pg: Any, postgres_dsn: str, table: str, tmp_path: Path
) -> None:
    import psycopg2

    def records(name: str, day: int) -> list[dict[str, Any]]:
        stamp = f"2026-05-{day:02d}T00:00:00+00:00"
        return [{"id": i, "name": name, "updated_at": stamp} for i in range(1, 2001)]

    _write_extract(tmp_path / "seed", "seed", records("seed", 1)[:1], "id,name,updated_at")
    merge_extract(pg, f"file://{tmp_path / 'seed'}", table, region="us")
    _write_extract(tmp_path / "a", "a", records("a", 2), "id,name,updated_at")
    _write_extract(tmp_path / "b", "b", records("b", 3), "id,name,updated_at")
    results: dict[str, Any] = {}

    def load(folder: str) -> None:
        conn = psycopg2.connect(postgres_dsn)
        try:
            results[folder] = merge_extract(conn, f"file://{tmp_path / folder}", table, region="us")
        except Exception as err:  # reported below
            results[folder] = err
        finally:
            conn.close()

    # Both insert the same 1,999 new ids at once: without the table lock one would hit the primary key.
    threads = [threading.Thread(target=load, args=(folder,)) for folder in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(isinstance(r, dict) for r in results.values()), results
    rows = _rows(pg, table, ["id", "name"])
    assert rows == [(i, "b") for i in range(1, 2001)]  # the later updated_at, whichever load went first


def test_an_autocommit_connection_still_loads_in_one_transaction(pg: Any, table: str, tmp_path: Path) -> None:
    _write_extract(
        tmp_path / "a", "a", [{"id": 5, "name": "x", "updated_at": "2026-05-01T00:00:00+00:00"}], "id,name"
    )
    pg.autocommit = True  # the staging table must outlive the statements that use it
    summary = merge_extract(pg, f"file://{tmp_path / 'a'}", table, region="au")
    assert pg.autocommit is True
    assert summary["inserted"] == 1
    assert _rows(pg, table, ["id", "name", "_clio_region"]) == [(5, "x", "au")]
    pg.autocommit = False


def test_bad_input_fails_before_touching_the_database(tmp_path: Path) -> None:
    _write_extract(tmp_path / "x", "x", [{"id": 1, "name": "a"}], "id,name")
    # No connection is needed to refuse these: a bare object would fail on any use.
    with pytest.raises(ClioConfigError, match="no 'updated_at' column"):
        merge_extract(object(), f"file://{tmp_path / 'x'}", "t", region="us")
    with pytest.raises(ClioConfigError, match="target must be"):
        merge_extract(object(), f"file://{tmp_path / 'x'}", "a.b.c", region="us")
    with pytest.raises(ClioConfigError, match="plain SQL identifier"):
        merge_extract(object(), f"file://{tmp_path / 'x'}", 't"; DROP TABLE x; --', region="us")
    with pytest.raises(ClioConfigError, match="dialect"):
        merge_extract(object(), f"file://{tmp_path / 'x'}", "t", region="us", dialect="oracle")
    with pytest.raises(FileNotFoundError):
        merge_extract(object(), f"file://{tmp_path / 'nothing'}", "t", region="us")
    manifest = tmp_path / "x" / "_manifest.json"
    manifest.write_text(json.dumps({"run": "x", "files": [{"path": "../elsewhere/part-00000.jsonl"}]}))
    with pytest.raises(ClioConfigError, match="not a part file"):
        committed_parts(f"file://{tmp_path / 'x'}")


def test_logical_types_follow_the_values_and_the_field_selection() -> None:
    columns = ExtractColumns(nested=frozenset({"client"}))
    for record in (
        {"id": 1, "client": '{"id":1}', "total": 5, "billed": True, "updated_at": "2026-01-01T00:00:00Z"},
        {"id": 2, "client": None, "total": 2500.75, "billed": False, "note": None, "user": {"id": 3}},
    ):
        columns.observe(record)
    assert {name: columns.logical_type(name) for name in columns.names} == {
        "id": "bigint",
        "client": "json",  # Parquet holds it as JSON text; the selection says it is nested
        "total": "numeric",
        "billed": "boolean",
        "updated_at": "timestamp",
        "note": "text",  # never seen a value: text holds anything later
        "user": "json",
    }
    assert columns.cell("note", None) == ""
    assert columns.cell("note", "") == '""'
    assert columns.cell("note", 'say "hi"') == '"say ""hi"""'


def test_announced_extracts_keep_one_entry_per_folder_oldest_first() -> None:
    events = [
        SimpleNamespace(extra={"destination": "s3://lake/a", "run": "1"}),
        SimpleNamespace(extra={}),  # an event from elsewhere (a manual asset event): ignored
        SimpleNamespace(extra={"destination": "s3://lake/b", "run": "2"}),
        SimpleNamespace(extra={"destination": "s3://lake/a", "run": "3"}),  # a rerun of a
    ]
    assert announced_extracts(events) == [
        {"destination": "s3://lake/b", "run": "2"},
        {"destination": "s3://lake/a", "run": "3"},
    ]
    assert announced_extracts(None) == []

    class Events(dict):
        def __missing__(self, key: Any) -> Any:
            self[key] = SimpleNamespace(extra={})
            return self[key]

    outlet_events = Events()
    task = SimpleNamespace(region="ca", endpoint="grow/matters")
    hook = announce_extract("asset")
    hook({"task": task, "outlet_events": outlet_events}, {"manifest": "s3://l/m/_manifest.json", "run": "r"})
    assert outlet_events["asset"].extra == {
        "destination": "s3://l/m",
        "run": "r",
        "records": None,
        "region": "ca",
        "endpoint": "grow/matters",
    }
