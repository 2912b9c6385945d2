# SPDX-License-Identifier: Apache-2.0
"""The example DAGs in dags/: they parse, and each runs end to end with dag.test() against the emulator."""

from __future__ import annotations

import datetime
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any

import pendulum
import pytest

from airflow_provider_clio.testing import ClioEmulator

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
EXAMPLE_DAG_IDS = {
    "clio_incremental_warehouse",
    "clio_sensor_gated",
    "clio_two_regions",
    "clio_weekly_reconcile",
    "clio_bulk_extract",
    "clio_bulk_merge",
    "clio_manage_warehouse",
}
CLIO_FREE_DAG_IDS = {"clio_bulk_merge"}
MANAGE_DAG_IDS = {"clio_manage_warehouse"}
"""DAGs on a Clio Manage connection: their token's own pool, not the Platform's region pool."""
"""DAGs that never call Clio (warehouse loads), so they take no Clio pool slot."""
WAREHOUSE_TABLES = {
    "clio_contacts": "contacts",
    "clio_matters": "matters",
    "clio_activities": "activities",
}
UTC = datetime.timezone.utc


def _dagbag(monkeypatch: pytest.MonkeyPatch, export_root: Path | None = None) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    if export_root is not None:
        monkeypatch.setenv("CLIO_EXPORT_ROOT", f"file://{export_root}")
    return DagBag(dag_folder=str(DAGS_FOLDER))


def _interval(dag: Any, run_after: datetime.datetime) -> tuple[datetime.datetime, datetime.datetime]:
    """The data interval dag.test() gives a manual run at ``run_after`` (what the templates render)."""
    from airflow.serialization.encoders import coerce_to_core_timetable

    timetable = coerce_to_core_timetable(dag.timetable)
    interval = timetable.infer_manual_data_interval(run_after=pendulum.instance(run_after))
    return interval.start, interval.end


def _rows(warehouse: Path, table: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(warehouse)) as db:
        cursor = db.execute(f'SELECT * FROM "{table}" ORDER BY id')  # noqa: S608 - fixed names
        # Without _loaded_at, the commit time every upsert sets (reconcile's "loaded before the scan").
        keep = [i for i, column in enumerate(cursor.description) if column[0] != "_loaded_at"]
        return [tuple(row[i] for i in keep) for row in cursor.fetchall()]


def _expected_rows(records: list[dict[str, Any]], fields: list[str], support: ModuleType) -> list[tuple]:
    def cell(value: Any) -> Any:
        return json.dumps(value, separators=(",", ":")) if isinstance(value, dict) else value

    return [tuple(cell(v) for v in row.values()) for row in support.project(records, fields)]


def _manifest_records(destination: Path) -> list[dict[str, Any]]:
    manifest = json.loads((destination / "_manifest.json").read_text())
    rows: list[dict[str, Any]] = []
    for entry in manifest["files"]:
        rows.extend(json.loads(line) for line in (destination / entry["path"]).read_text().splitlines())
    return rows


@pytest.fixture
def emu(clio_emulator_factory: Any) -> ClioEmulator:
    return clio_emulator_factory(
        rate_limit=1000, records={"contacts": 230, "matters": 140, "activities": 260}, page_size=50
    )


@pytest.fixture
def connections(emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, airflow_db: Path) -> Path:
    """The example DAGs' connections: clio_default (us), clio_eu (eu) and a SQLite clio_warehouse."""
    from airflow.models import Variable

    warehouse = tmp_path / "warehouse.db"
    for conn_id, region in (("clio_default", "us"), ("clio_eu", "eu")):
        # A token pair stored by an earlier test belongs to another emulator: start each chain afresh.
        Variable.delete(f"clio_oauth_tokens__{conn_id}")
        conn = emu.connection(region=region, requests_per_slot=500)
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLIO_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(warehouse)})
    )
    return warehouse


def test_example_dags_parse_into_their_region_pools(
    monkeypatch: pytest.MonkeyPatch, connections: Path, tmp_path: Path
) -> None:
    dagbag = _dagbag(monkeypatch, tmp_path / "exports")
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == EXAMPLE_DAG_IDS
    pools = {
        (dag_id, task.task_id): task.pool
        for dag_id in EXAMPLE_DAG_IDS - CLIO_FREE_DAG_IDS - MANAGE_DAG_IDS
        for task in dagbag.dags[dag_id].tasks
    }
    assert {task.pool for task in dagbag.dags["clio_manage_warehouse"].tasks} == {"clio_manage_us"}
    assert pools[("clio_two_regions", "export_contacts_eu")] == "clio_eu"
    assert {pool for key, pool in pools.items() if key != ("clio_two_regions", "export_contacts_eu")} == {
        "clio_us"
    }


def test_warehouse_dag_full_refresh_then_incremental_runs(
    emu: ClioEmulator, connections: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    warehouse = connections
    dag = _dagbag(monkeypatch).dags["clio_incremental_warehouse"]
    fields = {t.table: t.fields for t in dag.tasks}

    full = support.run_dag(
        dag, logical_date=datetime.datetime(2026, 7, 1, tzinfo=UTC), run_conf={"full_refresh": True}
    )
    assert str(full.state) == "success"
    for table, resource in WAREHOUSE_TABLES.items():
        assert _rows(warehouse, table) == _expected_rows(emu.records(resource), fields[table], support)

    # The DAG was paused for a day (catchup=False runs only the latest hour): since_last_success loads the
    # changes of the skipped hours too. Two contacts and one matter change inside the run's hour, one
    # contact and one activity in the skipped hours; one contact changes after the run's interval.
    run_after = datetime.datetime(2026, 7, 2, 10, tzinfo=UTC)
    start, end = _interval(dag, run_after)
    emu.touch("contacts", [4, 200], at=start + datetime.timedelta(minutes=7))
    emu.touch("matters", [9], at=start)
    emu.touch("contacts", [6], at=datetime.datetime(2026, 7, 1, 12, tzinfo=UTC))  # a skipped hour
    emu.touch("activities", [17], at=datetime.datetime(2026, 7, 1, 0, 1, tzinfo=UTC))  # within the overlap
    emu.touch("contacts", [5], at=end)  # exclusive upper bound: the next run's
    counts = {table: len(_rows(warehouse, table)) for table in WAREHOUSE_TABLES}

    for attempt in ("first", "rerun"):
        incremental = support.run_dag(dag, logical_date=run_after, run_conf={"full_refresh": False})
        assert str(incremental.state) == "success", attempt
        summaries = {t.task_id: support.xcom_value(incremental, t.task_id) for t in dag.tasks}
        loaded = {task_id: summary["records"] for task_id, summary in summaries.items()}
        assert loaded == {"load_clio_contacts": 3, "load_clio_matters": 1, "load_clio_activities": 1}
        # From the full refresh's interval end (2026-07-01 00:00) minus the 5-minute overlap.
        assert summaries["load_clio_contacts"]["interval"] == {
            "since": "2026-06-30T23:55:00+00:00",
            "until": end.isoformat(),
        }
        assert {table: len(_rows(warehouse, table)) for table in WAREHOUSE_TABLES} == counts

    contacts = dict((row[0], row) for row in _rows(warehouse, "clio_contacts"))
    truth = {r["id"]: r for r in emu.records("contacts")}
    assert contacts[4][-1] == truth[4]["updated_at"]
    assert contacts[200][-1] == truth[200]["updated_at"]
    assert contacts[6][-1] == truth[6]["updated_at"]
    assert contacts[5][-1] != truth[5]["updated_at"]  # changed at the interval end: not this run's


def test_weekly_reconcile_dag_marks_the_rows_deleted_in_clio(
    emu: ClioEmulator, connections: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    warehouse = connections
    dags = _dagbag(monkeypatch).dags
    loaded = support.run_dag(
        dags["clio_incremental_warehouse"],
        logical_date=datetime.datetime(2026, 7, 1, tzinfo=UTC),
        run_conf={"full_refresh": True},
    )
    assert str(loaded.state) == "success"
    emu.delete_records("contacts", [7, 100])
    emu.delete_records("activities", [260])

    dag_run = support.run_dag(
        dags["clio_weekly_reconcile"], logical_date=datetime.datetime(2026, 7, 6, tzinfo=UTC)
    )
    assert str(dag_run.state) == "success"
    summaries = {
        t.task_id: support.xcom_value(dag_run, t.task_id) for t in dags["clio_weekly_reconcile"].tasks
    }
    assert {task_id: (s["scanned"], s["live"], s["marked"]) for task_id, s in summaries.items()} == {
        "reconcile_clio_contacts": (228, 230, 2),
        "reconcile_clio_matters": (140, 140, 0),
        "reconcile_clio_activities": (259, 260, 1),
    }
    with closing(sqlite3.connect(warehouse)) as db:
        marked = db.execute(
            "SELECT 'contacts', id FROM clio_contacts WHERE _clio_deleted_at IS NOT NULL UNION ALL "
            "SELECT 'activities', id FROM clio_activities WHERE _clio_deleted_at IS NOT NULL ORDER BY 1, 2"
        ).fetchall()
    assert marked == [("activities", 260), ("contacts", 7), ("contacts", 100)]


def test_sensor_gated_dag_waits_for_changes_then_loads_them(
    emu: ClioEmulator, connections: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    warehouse = connections
    dag = _dagbag(monkeypatch).dags["clio_sensor_gated"]
    run_after = datetime.datetime(2026, 7, 10, tzinfo=UTC)
    start, _ = _interval(dag, run_after)
    emu.touch("matters", [3, 77, 120], at=start + datetime.timedelta(hours=5))

    dag_run = support.run_dag(dag, logical_date=run_after)
    assert str(dag_run.state) == "success"
    assert support.ti_state(dag_run, "wait_for_changed_matters") == "success"
    load = next(t for t in dag.tasks if t.task_id == "load_matters")
    changed = [r for r in emu.records("matters") if r["id"] in (3, 77, 120)]
    assert _rows(warehouse, "clio_matters") == _expected_rows(changed, load.fields, support)


def test_two_region_dag_exports_each_region_through_its_own_application(
    emu: ClioEmulator,
    connections: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
    tmp_path: Path,
) -> None:
    exports = tmp_path / "exports"
    dag = _dagbag(monkeypatch, exports).dags["clio_two_regions"]
    run_after = datetime.datetime(2026, 7, 20, tzinfo=UTC)
    start, _ = _interval(dag, run_after)
    emu.touch("contacts", [1, 2, 150], at=start + datetime.timedelta(hours=1))
    fields = next(t for t in dag.tasks).fields

    for _ in range(2):  # a rerun of the interval replaces the output, never duplicates it
        dag_run = support.run_dag(dag, logical_date=run_after)
        assert str(dag_run.state) == "success"
        for region in ("us", "eu"):
            folder = exports / region / "contacts" / start.strftime("%Y%m%dT%H%M%S")
            changed = [r for r in emu.records("contacts") if r["id"] in (1, 2, 150)]
            assert _manifest_records(folder) == support.project(changed, fields)
            assert len([p for p in folder.iterdir() if p.name.startswith("run=")]) == 1

    by_app = {r.client_id for r in emu.requests if r.is_api}
    assert by_app == {"clio-emulator-us", "clio-emulator-eu"}
