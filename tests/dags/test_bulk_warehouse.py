# SPDX-License-Identifier: Apache-2.0
"""dags/clio_bulk_warehouse.py end to end: extract DAG (emulator) → Asset events → merge DAG (Postgres 15)."""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any

import pendulum
import pytest
from airflow.sdk import Asset

from airflow_provider_clio.testing import ClioEmulator

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
UTC = datetime.timezone.utc


@pytest.fixture
def emu(clio_emulator_factory: Any) -> ClioEmulator:
    return clio_emulator_factory(rate_limit=1000, records={"contacts": 180, "matters": 120}, page_size=50)


@pytest.fixture
def lakehouse(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """A Postgres connection and a schema of its own (the database is shared), dropped afterwards."""
    import psycopg2

    schema = f"b1_bulk_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(postgres_dsn)
    with closing(conn.cursor()) as cur:
        cur.execute(f'CREATE SCHEMA "{schema}"')
    conn.commit()
    monkeypatch.setenv("CLIO_LAKEHOUSE_SCHEMA", schema)
    monkeypatch.setenv("AIRFLOW_CONN_CLIO_LAKEHOUSE", postgres_dsn)
    yield conn, schema
    conn.rollback()
    with closing(conn.cursor()) as cur:
        cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
    conn.commit()
    conn.close()


@pytest.fixture
def dags(
    emu: ClioEmulator, lakehouse: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, airflow_db: Path
) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models import Variable

    Variable.delete("clio_oauth_tokens__clio_default")  # a pair stored by another test's emulator
    conn = emu.connection(region="us", requests_per_slot=500)
    monkeypatch.setenv("AIRFLOW_CONN_CLIO_DEFAULT", json.dumps(conn))
    monkeypatch.setenv("CLIO_LAKE_ROOT", f"file://{tmp_path}/lake")
    dagbag = DagBag(dag_folder=str(DAGS_FOLDER / "clio_bulk_warehouse.py"))
    assert dagbag.import_errors == {}
    return dagbag.dags


def _rows(conn: Any, schema: str, table: str) -> list[tuple[Any, ...]]:
    with closing(conn.cursor()) as cur:
        cur.execute(f'SELECT * FROM "{schema}"."{table}" ORDER BY id')  # noqa: S608 - test names
        rows = cur.fetchall()
    conn.commit()
    return rows


def _data(conn: Any, schema: str, table: str, names: list[str]) -> list[tuple[Any, ...]]:
    with closing(conn.cursor()) as cur:
        cur.execute(f'SELECT {", ".join(names)} FROM "{schema}"."{table}" ORDER BY id')  # noqa: S608
        rows = cur.fetchall()
    conn.commit()
    return rows


def _truth(emu: ClioEmulator, resource: str, fields: list[str], support: ModuleType) -> list[tuple[Any, ...]]:
    rows = []
    for record in support.project(emu.records(resource), fields):
        record["updated_at"] = datetime.datetime.fromisoformat(record["updated_at"])
        rows.append(tuple(record.values()))
    return sorted(rows)


def _interval_start(dag: Any, run_after: datetime.datetime) -> datetime.datetime:
    """The data interval start dag.test() gives a manual run at ``run_after`` (what the templates render)."""
    from airflow.serialization.encoders import coerce_to_core_timetable

    timetable = coerce_to_core_timetable(dag.timetable)
    return timetable.infer_manual_data_interval(run_after=pendulum.instance(run_after)).start


def _asset_events(uri: str) -> list[Any]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == uri)
            .order_by(AssetEvent.id)
        ).all()
        session.expunge_all()
        return list(events)


def test_bulk_dags_parse_with_the_merge_scheduled_on_the_extract_assets(dags: dict[str, Any]) -> None:
    extract, merge = dags["clio_bulk_extract"], dags["clio_bulk_merge"]
    assert {t.pool for t in extract.tasks} == {"clio_us"}
    assert {t.pool for t in merge.tasks} == {"default_pool"}
    outlets = {t.task_id: [a.uri for a in t.outlets] for t in extract.tasks}
    lake = outlets["extract_contacts"][0].removesuffix("/contacts")
    assert outlets == {"extract_contacts": [f"{lake}/contacts"], "extract_matters": [f"{lake}/matters"]}
    assert {a.uri for a in merge.timetable.asset_condition.objects} == {
        f"{lake}/contacts",
        f"{lake}/matters",
    }
    assert {t.priority_weight for t in extract.tasks} == {100}


def test_extract_events_name_the_folder_and_the_merge_loads_it_exactly_once(
    dags: dict[str, Any], emu: ClioEmulator, lakehouse: Any, support: ModuleType, tmp_path: Path
) -> None:
    conn, schema = lakehouse
    extract, merge = dags["clio_bulk_extract"], dags["clio_bulk_merge"]
    fields = {t.task_id.removeprefix("extract_"): t.fields for t in extract.tasks}
    run_after = datetime.datetime(2026, 7, 1, tzinfo=UTC)
    full = support.run_dag(extract, logical_date=run_after, run_conf={"full_refresh": True})
    assert str(full.state) == "success"

    # The extract task's own Asset event names the committed folder (what the scheduler hands the merge).
    lake = f"file://{tmp_path}/lake"
    events = _asset_events(f"{lake}/contacts")
    assert len(events) == 1
    assert events[0].source_dag_id == "clio_bulk_extract"
    assert events[0].extra["destination"] == f"{lake}/contacts/full"
    assert events[0].extra["region"] == "us"
    assert events[0].extra["records"] == 180

    # The merge task as an Asset-triggered run calls it: with the events the extract run recorded.
    merge_contacts = merge.get_task("merge_contacts")
    triggering = {Asset(f"{lake}/contacts"): events}
    loaded = merge_contacts.python_callable(
        endpoint="contacts", table="clio_contacts", triggering_asset_events=triggering, params={}
    )
    assert [(r["inserted"], r["updated"]) for r in loaded] == [(180, 0)]
    names = ["id", "name", "email", "status", "source", "updated_at"]
    assert _data(conn, schema, "clio_contacts", names) == _truth(emu, "contacts", fields["contacts"], support)

    # An hourly run picks up the interval's changes; the merge DAG (a manual run naming the folders) loads
    # them, and running it again changes nothing.
    hour = datetime.datetime(2026, 7, 2, 10, tzinfo=UTC)
    start = _interval_start(extract, hour)
    emu.touch("contacts", [7, 99], at=start + datetime.timedelta(minutes=5))
    emu.touch("matters", [12], at=start + datetime.timedelta(minutes=9))
    hourly = support.run_dag(extract, logical_date=hour, run_conf={"full_refresh": False})
    assert str(hourly.state) == "success"
    folders = {
        name: [f"{lake}/{name}/full", f"{lake}/{name}/{start.strftime('%Y%m%dT%H%M%S')}"]
        for name in ("contacts", "matters")
    }
    assert [e.extra["destination"] for e in _asset_events(f"{lake}/contacts")] == folders["contacts"]
    for attempt in ("first", "again"):
        run = support.run_dag(merge, logical_date=hour, run_conf={"destinations": folders, "region": "us"})
        assert str(run.state) == "success", attempt
        summaries = {t: support.xcom_value(run, t) for t in ("merge_contacts", "merge_matters")}
        if attempt == "first":
            assert [(s["inserted"], s["updated"]) for s in summaries["merge_contacts"]] == [(0, 0), (0, 2)]
            assert [(s["inserted"], s["updated"]) for s in summaries["merge_matters"]] == [(120, 0), (0, 1)]
            snapshot = {t: _rows(conn, schema, t) for t in ("clio_contacts", "clio_matters")}
        else:
            assert all(s["inserted"] == s["updated"] == 0 for v in summaries.values() for s in v)
            assert {t: _rows(conn, schema, t) for t in snapshot} == snapshot
    for name, table in (("contacts", "clio_contacts"), ("matters", "clio_matters")):
        names = [f.split("{")[0] for f in fields[name]]
        assert _data(conn, schema, table, names) == _truth(emu, name, fields[name], support)
