# SPDX-License-Identifier: Apache-2.0
"""modes.py: the ``mode`` argument, its checks, and gap-free ``since_last_success`` runs under dag.test()."""

from __future__ import annotations

import datetime
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from airflow.sdk import DAG, CronDataIntervalTimetable

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.extraction import Interval
from airflow_provider_clio.modes import resolve_interval
from airflow_provider_clio.operators.extract import ClioExtractOperator, read_extract
from airflow_provider_clio.testing import ClioEmulator
from airflow_provider_clio.transfers.clio_to_sql import ClioToSqlOperator

UTC = datetime.timezone.utc
FIELDS = ["id", "name", "updated_at"]
DAY = datetime.datetime(2026, 8, 1, tzinfo=UTC)


def at(hours: float) -> datetime.datetime:
    """An instant on the test day, ``hours`` after midnight UTC."""
    return DAY + datetime.timedelta(hours=hours)


# -- arguments -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "full", "updated_since": "2026-08-01"}, "mode='full' takes its bounds from the run"),
        ({"mode": "since_last_success", "updated_until": "2026-08-01"}, "do not pass updated_until"),
        ({"mode": "interval", "overlap": 60}, "overlap applies to mode='since_last_success' only"),
        ({"overlap": 60}, "not mode='full'"),
        ({"mode": "since_last_success", "overlap": -1}, "overlap must not be negative"),
        ({"mode": "since_last_success", "overlap": "5m"}, "overlap must be a timedelta"),
        (
            {"mode": "bogus"},
            "mode must be one of 'full', 'interval', 'since_last_success', 'ids', got 'bogus'",
        ),
        ({"mode": "ids"}, "mode='ids' needs ids"),
        ({"mode": "ids", "ids": [1], "updated_since": "2026-08-01"}, "mode='ids' reads its ids whatever"),
        ({"mode": "ids", "ids": [1], "overlap": 60}, "not mode='ids'"),
        ({"mode": "interval", "ids": [1]}, "ids applies to mode='ids' only, not mode='interval'"),
        ({"mode": "reconcile"}, "got 'reconcile'"),  # ClioToSqlOperator only
    ],
)
def test_invalid_combinations_are_refused_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ClioConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        ClioExtractOperator(task_id="x", endpoint="grow/contacts", destination="file:///tmp/x", **kwargs)


def test_a_templated_mode_is_checked_before_any_request(
    clio_emulator_factory: Callable[..., ClioEmulator], monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    emu = clio_emulator_factory(rate_limit=1000, records={"contacts": 5})
    op = ClioToSqlOperator(
        task_id="load",
        clio_conn_id=support.clio_connection(monkeypatch, emu),
        endpoint="grow/contacts",
        mode="{{ params.mode }}",
        sql_conn_id="unused",
        table="t",
        token_store=MemoryTokenStore(),
    )
    op.mode = "since_lastsuccess"  # what a typo renders to
    with pytest.raises(ClioConfigError, match="mode must be one of"):
        op.execute({})
    op.mode, op.updated_since = "full", "2026-08-01"
    with pytest.raises(ClioConfigError, match="takes its bounds from the run"):
        op.execute({})
    assert emu.count(path_prefix="/grow") == 0


def _context(start: datetime.datetime, end: datetime.datetime, previous: Any = None) -> dict[str, Any]:
    return {
        "data_interval_start": start,
        "data_interval_end": end,
        "prev_data_interval_end_success": previous,
    }


def test_since_last_success_reaches_back_to_the_last_success_minus_the_overlap() -> None:
    context = _context(at(3), at(4), previous=at(1))
    assert resolve_interval("since_last_success", None, None, None, context) == Interval(
        at(1) - datetime.timedelta(minutes=5), at(4)
    )
    assert resolve_interval("since_last_success", None, None, 0, context) == Interval(at(1), at(4))
    assert resolve_interval(
        "since_last_success", None, None, datetime.timedelta(hours=1), context
    ) == Interval(at(0), at(4))
    # No success yet: the run's own interval (with the overlap).
    first = resolve_interval("since_last_success", None, None, 0, _context(at(3), at(4)))
    assert first == Interval(at(3), at(4))


def test_interval_mode_takes_the_data_interval_or_the_explicit_bounds() -> None:
    context = _context(at(3), at(4), previous=at(1))
    assert resolve_interval("interval", None, None, None, context) == Interval(at(3), at(4))
    assert resolve_interval("interval", at(2), None, None, context) == Interval(at(2), at(4))
    assert resolve_interval("interval", at(2), at(2.5), None, context) == Interval(at(2), at(2.5))
    # Backward compatible: updated_since without a mode is today's explicit interval; nothing is "full".
    assert resolve_interval(None, at(2), None, None, context) == Interval(at(2), at(4))
    assert resolve_interval(None, None, None, None, context) == Interval()
    assert resolve_interval("full", None, None, None, context) == Interval()
    assert resolve_interval("ids", None, None, None, context) == Interval()  # every given id, unbounded


@pytest.mark.parametrize("mode", ["interval", "since_last_success"])
def test_a_mode_that_needs_a_data_interval_refuses_a_run_without_one(mode: str) -> None:
    with pytest.raises(ClioConfigError, match="needs a run with a non-empty data interval"):
        resolve_interval(mode, None, None, None, _context(at(4), at(4)))
    with pytest.raises(ClioConfigError, match="needs a run with a non-empty data interval"):
        resolve_interval(mode, None, None, None, {})


# -- since_last_success under dag.test() ----------------------------------------------------------------


@pytest.fixture
def warehouse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: Path, support: ModuleType
) -> tuple[str, Path]:
    path = tmp_path / "warehouse.db"
    return support.sqlite_connection(monkeypatch, path), path


def _hourly_dag(support: ModuleType, prefix: str) -> DAG:
    """An hourly catchup=False DAG whose tasks read the mode from ``params.mode`` (default gap-free)."""
    return DAG(
        support.unique_dag_id(prefix),
        schedule=CronDataIntervalTimetable("@hourly", timezone="UTC"),
        start_date=datetime.datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        params={"mode": "since_last_success"},
    )


def _hourly_load(support: ModuleType, clio: str, sql_conn_id: str, **kwargs: Any) -> DAG:
    """An hourly catchup=False DAG loading contacts with the mode in ``params.mode`` (default gap-free)."""
    with _hourly_dag(support, "modes") as dag:
        ClioToSqlOperator(
            task_id="load",
            clio_conn_id=clio,
            endpoint="grow/contacts",
            fields=FIELDS,
            mode="{{ params.mode }}",
            sql_conn_id=sql_conn_id,
            table="contacts",
            token_store=MemoryTokenStore(),
            **kwargs,
        )
    return dag


def _table(path: Path) -> dict[int, tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute('SELECT id, name, updated_at FROM "contacts" ORDER BY id').fetchall()
    return {row[0]: row for row in rows}


def _run(
    support: ModuleType, dag: DAG, run_after: datetime.datetime, mode: str = "since_last_success"
) -> dict[str, Any]:
    """Run the DAG for the hour ending at ``run_after``; return the load's summary."""
    dag_run = support.run_dag(dag, logical_date=run_after, run_conf={"mode": mode})
    assert str(dag_run.state) == "success"
    summary: dict[str, Any] = support.xcom_value(dag_run, "load")
    return summary


def test_paused_intervals_are_all_loaded_by_the_next_run_and_reruns_change_nothing(
    clio_emulator_factory: Callable[..., ClioEmulator],
    warehouse: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    emu = clio_emulator_factory(rate_limit=1000, records={"contacts": 120}, page_size=50)
    sql_conn_id, path = warehouse
    dag = _hourly_load(support, support.clio_connection(monkeypatch, emu), sql_conn_id)
    # A full first load (its interval ends at midnight), then the 00:00-01:00 hour.
    assert _run(support, dag, at(0), mode="full")["records"] == 120
    emu.touch("contacts", [10], at=at(0.5))
    first = _run(support, dag, at(1))
    assert (first["records"], first["interval"]["since"]) == (1, "2026-07-31T23:55:00+00:00")

    # The DAG is paused for hours 2 and 3 (catchup=False: Airflow runs only hour 4 when it resumes).
    emu.touch("contacts", [20], at=at(1 + 10 / 60))
    emu.touch("contacts", [30], at=at(2 + 20 / 60))
    emu.touch("contacts", [41], at=at(3))  # on the lower bound of hour 4
    emu.touch("contacts", [40], at=at(4) - datetime.timedelta(microseconds=1))
    emu.touch("contacts", [50], at=at(4))  # on the upper bound: the next run's
    resumed = _run(support, dag, at(4))
    assert resumed["interval"] == {"since": "2026-08-01T00:55:00+00:00", "until": "2026-08-01T04:00:00+00:00"}
    assert (resumed["records"], resumed["mode"]) == (4, "since_last_success")
    truth = support.contact_rows(emu)
    table = _table(path)
    assert {i: row for i, row in table.items() if i != 50} == {i: row for i, row in truth.items() if i != 50}
    assert table[50] != truth[50]

    # A rerun of hour 4 and a backfill of hour 2 read the same window again: the same rows, no new ones.
    assert _run(support, dag, at(4))["records"] == 4
    backfill = _run(support, dag, at(2))
    assert backfill["interval"] == {
        "since": "2026-08-01T00:55:00+00:00",
        "until": "2026-08-01T02:00:00+00:00",
    }
    assert backfill["records"] == 1  # contact 20
    assert _table(path) == table


class TouchWhenPaged:
    """Touch records once ``pages`` list pages were served: an edit made in Clio while a run is scanning."""

    def __init__(self, emu: ClioEmulator, pages: int, ids: list[int], stamp: datetime.datetime) -> None:
        self.emu, self.pages, self.ids, self.stamp = emu, pages, ids, stamp
        self.fired = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.emu.count(status=200, path_prefix="/grow") >= self.pages:
                self.emu.touch("contacts", self.ids, at=self.stamp)
                self.fired.set()
                return
            time.sleep(0.001)

    def __enter__(self) -> TouchWhenPaged:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=5)


def test_a_low_id_edited_behind_the_cursor_is_loaded_by_the_following_run(
    clio_emulator_factory: Callable[..., ClioEmulator],
    warehouse: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    emu = clio_emulator_factory(rate_limit=1000, records={"contacts": 300}, page_size=20)
    sql_conn_id, path = warehouse
    # Paced at 20 requests per second, so the watcher lands while the scan is under way.
    clio = support.clio_connection(monkeypatch, emu, requests_per_slot=20)
    dag = _hourly_load(support, clio, sql_conn_id)
    assert _run(support, dag, at(0), mode="full")["records"] == 300
    # Every contact changed during hour 1, so its run scans 15 pages of 20.
    emu.touch("contacts", range(1, 301), at=at(0.5))
    # Hour 1 runs at 01:00 and later: Clio stamps edits made during its scan after the run's upper bound.
    emu.touch("contacts", [290], at=at(1) + datetime.timedelta(seconds=50))  # read late in the scan
    emu.clear_requests()
    with TouchWhenPaged(emu, pages=8, ids=[3], stamp=at(1) + datetime.timedelta(seconds=30)) as touch:
        first = _run(support, dag, at(1))
    assert touch.fired.is_set()
    assert first["records"] == 299
    # Page 1 (ids 1-20) was read before the edit: a max(updated_at) watermark would now stand at 290's
    # stamp, after contact 3's, and skip it forever. The run's bound was fixed before the scan instead.
    truth = support.contact_rows(emu)
    assert _table(path)[3] != truth[3]

    second = _run(support, dag, at(2))
    assert second["records"] == 2
    assert _table(path) == truth


def _hourly_export(support: ModuleType, clio: str, root: Path) -> DAG:
    """An hourly catchup=False DAG exporting contacts since the last success, one folder per interval."""
    with _hourly_dag(support, "modes_files") as dag:
        ClioExtractOperator(
            task_id="load",
            clio_conn_id=clio,
            endpoint="grow/contacts",
            fields=FIELDS,
            mode="{{ params.mode }}",
            destination=f"file://{root}/" + "{{ data_interval_start | ts_nodash }}",
            token_store=MemoryTokenStore(),
        )
    return dag


@pytest.fixture
def export(
    airflow_db: Path,
    clio_emulator_factory: Callable[..., ClioEmulator],
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
    tmp_path: Path,
) -> tuple[ClioEmulator, DAG]:
    """An emulator with 80 contacts and an :func:`_hourly_export` of them into ``tmp_path``."""
    emu = clio_emulator_factory(rate_limit=1000, records={"contacts": 80}, page_size=50)
    return emu, _hourly_export(support, support.clio_connection(monkeypatch, emu), tmp_path)


def test_a_file_rerun_replaces_its_folder_after_a_backfill_moved_its_lower_bound(
    export: tuple[ClioEmulator, DAG], support: ModuleType, tmp_path: Path
) -> None:
    emu, dag = export
    emu.touch("contacts", [5], at=at(0.5))
    emu.touch("contacts", [6], at=at(1.5))
    _run(support, dag, at(0))
    assert _run(support, dag, at(2))["interval"]["since"] == "2026-07-31T23:55:00+00:00"  # hour 1 did not run
    _run(support, dag, at(1))  # hour 1, cleared and run again
    rerun = _run(support, dag, at(2))  # same folder, same upper bound, a later lower bound
    assert rerun["interval"] == {"since": "2026-08-01T00:55:00+00:00", "until": "2026-08-01T02:00:00+00:00"}
    folder = tmp_path / "20260801T010000"
    assert [r["id"] for r in read_extract(f"file://{folder}")] == [6]
    assert len(support.run_folders(folder)) == 1


def test_file_extracts_are_exact_per_run_and_overlap_across_runs_by_the_window(
    export: tuple[ClioEmulator, DAG], support: ModuleType, tmp_path: Path
) -> None:
    emu, dag = export
    emu.touch("contacts", [5], at=at(0.5))
    emu.touch("contacts", [6], at=at(1) - datetime.timedelta(minutes=2))  # in the next run's overlap window
    emu.touch("contacts", [7], at=at(1.5))
    _run(support, dag, at(1))
    _run(support, dag, at(2))
    hour1 = list(read_extract(f"file://{tmp_path}/20260801T000000"))
    hour2 = list(read_extract(f"file://{tmp_path}/20260801T010000"))
    truth = {r["id"]: {k: r[k] for k in FIELDS} for r in emu.records("contacts")}
    assert hour1 == [truth[5], truth[6]]  # exactly [23:55, 01:00)
    assert hour2 == [truth[6], truth[7]]  # exactly [00:55, 02:00): contact 6 again
    # Readers dedupe on (id, updated_at): every version once.
    deduped = {(r["id"], r["updated_at"]): r for r in hour1 + hour2}
    assert sorted(deduped.values(), key=lambda r: r["id"]) == [truth[5], truth[6], truth[7]]
