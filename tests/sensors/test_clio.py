# SPDX-License-Identifier: Apache-2.0
"""ClioRecordsSensor on the real emulator: pokes, reschedule mode and deferrable mode under dag.test()."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.sensors.clio import ClioRecordsSensor
from airflow_provider_clio.testing import ClioEmulator
from airflow_provider_clio.triggers.clio import ClioRecordsTrigger

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun

UTC = datetime.timezone.utc
# Generated records are updated within 2026-01-01..2026-06-30: nothing matches until a test touches one.
FUTURE = datetime.datetime(2026, 7, 1, tzinfo=UTC)


@pytest.fixture
def emu(clio_emulator_factory: Callable[..., ClioEmulator]) -> ClioEmulator:
    return clio_emulator_factory(rate_limit=1000, records={"matters": 120}, page_size=50)


@contextmanager
def touch_after_requests(emu: ClioEmulator, requests: int) -> Iterator[threading.Event]:
    """Change a matter after ``requests`` API requests were answered (so the first pokes find nothing)."""
    done = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if emu.count(status=200, path_prefix="/grow") >= requests:
                emu.touch("matters", [7], at=FUTURE + datetime.timedelta(hours=1))
                done.set()
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    yield done
    thread.join(timeout=5)


def _run_until_touched(support: ModuleType, dag: DAG, emu: ClioEmulator, requests: int) -> DagRun:
    """Run ``dag`` while :func:`touch_after_requests` touches a matter; assert ``wait`` succeeded."""
    with touch_after_requests(emu, requests) as touched:
        dag_run = support.run_dag(dag)
    assert touched.is_set()
    assert support.ti_state(dag_run, "wait") == "success"
    return dag_run


def _sensor_requests(emu: ClioEmulator) -> list[dict[str, list[str]]]:
    return [r.query for r in emu.requests if r.path.startswith("/grow")]


def test_poke_is_one_cheap_request(
    emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu)
    sensor = ClioRecordsSensor(
        task_id="wait",
        clio_conn_id=conn_id,
        endpoint="grow/matters",
        updated_since=FUTURE.isoformat(),
        token_store=MemoryTokenStore(),
    )
    assert sensor.poke({}) is False
    emu.touch("matters", [7], at=FUTURE)  # updated_since is inclusive
    assert sensor.poke({}) is True
    queries = _sensor_requests(emu)
    assert len(queries) == 2
    assert all(q["fields"] == ["id"] for q in queries)
    assert all(q["updated_since"] == [(FUTURE - datetime.timedelta(seconds=1)).isoformat()] for q in queries)
    assert all("page_token" not in q for q in queries)

    # Without a filter every matter counts.
    everything = ClioRecordsSensor(
        task_id="any", clio_conn_id=conn_id, endpoint="grow/matters", token_store=sensor.token_store
    )
    assert everything.poke({}) is True


def test_defaults_and_argument_checks(
    emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu, region="ca")
    sensor = ClioRecordsSensor(task_id="s", clio_conn_id=conn_id, endpoint="grow/matters")
    assert sensor.pool == "clio_ca"
    assert sensor.deferrable is False  # [operators] default_deferrable
    # Reschedule by default: poke mode would hold a pool slot worth 1 request/s between pokes.
    assert sensor.mode == "reschedule"
    assert ClioRecordsSensor(task_id="k", clio_conn_id=conn_id, endpoint="x", mode="poke").mode == "poke"
    assert ClioRecordsSensor(task_id="e", clio_conn_id=conn_id, endpoint="x", deferrable=True).mode == "poke"
    with DAG("sensor_defaults", schedule=None, default_args={"mode": "poke"}):
        assert ClioRecordsSensor(task_id="f", clio_conn_id=conn_id, endpoint="x").mode == "poke"
    assert set(sensor.template_fields) == {"endpoint", "query_params", "updated_since"}
    assert ClioRecordsSensor(task_id="p", clio_conn_id=conn_id, endpoint="x", pool="mine").pool == "mine"
    with pytest.raises(ClioConfigError, match="token_store cannot be combined with deferrable"):
        ClioRecordsSensor(
            task_id="d", clio_conn_id=conn_id, endpoint="x", deferrable=True, token_store=MemoryTokenStore()
        )
    bad = ClioRecordsSensor(
        task_id="b", clio_conn_id=conn_id, endpoint="grow/matters", query_params={"fields": "x"}
    )
    with pytest.raises(ClioConfigError, match="query_params must not set fields"):
        bad.poke({})
    assert emu.count(path_prefix="/grow") == 0


def test_a_pool_or_region_the_hook_does_not_pace_for_fails(
    emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu, region="ca")
    other_pool = ClioRecordsSensor(
        task_id="p",
        clio_conn_id=conn_id,
        endpoint="grow/matters",
        pool="mine",
        token_store=MemoryTokenStore(),
    )
    with pytest.raises(
        ClioConfigError, match=r"runs in pool 'mine' but connection .* paces for pool 'clio_ca'"
    ):
        other_pool.poke({})
    other_region = ClioRecordsSensor(
        task_id="r",
        clio_conn_id=conn_id,
        endpoint="grow/matters",
        region="us",
        token_store=MemoryTokenStore(),
    )
    with pytest.raises(ClioConfigError, match=r"names region 'us' but connection .* is in region 'ca'"):
        other_region.poke({})
    deferring = ClioRecordsSensor(
        task_id="d", clio_conn_id=conn_id, endpoint="grow/matters", pool="mine", deferrable=True
    )
    with pytest.raises(ClioConfigError, match="paces for pool 'clio_ca'"):
        deferring.execute({})
    assert emu.count(path_prefix="/grow") == 0

    # Prefixed extras, as the hook reads them, pick the region and the pool at parse time.
    prefixed = "clio_sensor_prefixed"
    conn = emu.connection(region="eu")
    conn["extra"] = {"extra__clio__region": "eu", "extra__clio__pool": "clio_eu_team"}
    monkeypatch.setenv(f"AIRFLOW_CONN_{prefixed.upper()}", json.dumps(conn))
    sensor = ClioRecordsSensor(
        task_id="x", clio_conn_id=prefixed, endpoint="grow/matters", token_store=MemoryTokenStore()
    )
    assert (sensor.region, sensor.pool) == ("eu", "clio_eu_team")


def test_execute_complete_handles_both_events() -> None:
    sensor = ClioRecordsSensor(task_id="s", clio_conn_id="none", endpoint="grow/matters")
    assert sensor.execute_complete({}, {"status": "success", "endpoint": "grow/matters", "polls": 3}) is None
    with pytest.raises(AirflowFailException, match="forbidden"):
        sensor.execute_complete({}, {"status": "error", "fatal": True, "message": "forbidden"})
    with pytest.raises(AirflowException, match="server down"):
        sensor.execute_complete({}, {"status": "error", "fatal": False, "message": "server down"})


def test_deferrable_execute_checks_once_then_defers(
    airflow_db: Path, emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu)
    sensor = ClioRecordsSensor(
        task_id="s",
        clio_conn_id=conn_id,
        endpoint="grow/matters",
        updated_since=FUTURE.isoformat(),
        deferrable=True,
        poke_interval=30,
        timeout=600,
        pool_slots=2,
    )
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, ClioRecordsTrigger)
    assert trigger.serialize()[1] == {
        "endpoint": "grow/matters",
        # One second early, so a record stamped on the bound counts on an exclusive updated_since too.
        "params": {"fields": "id", "updated_since": (FUTURE - datetime.timedelta(seconds=1)).isoformat()},
        "clio_conn_id": conn_id,
        "poke_interval": 30.0,
        "pool_slots": 2,
        # The task's own check was this slot's request: the trigger waits a full interval first.
        "first_poll_delay": 30.0,
    }
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == datetime.timedelta(seconds=600)
    # Already true: no trip to the triggerer.
    emu.touch("matters", [1], at=FUTURE)
    assert sensor.execute({}) is None


def test_reschedule_mode_frees_the_worker_between_pokes(
    airflow_db: Path, emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    conn_id = support.clio_connection(monkeypatch, emu)
    with support.manual_dag("sensor_reschedule") as dag:
        ClioRecordsSensor(
            task_id="wait",
            clio_conn_id=conn_id,
            endpoint="grow/matters",
            updated_since=FUTURE.isoformat(),
            mode="reschedule",
            poke_interval=0.2,
            timeout=60,
            token_store=MemoryTokenStore(),
        )
    dag_run = _run_until_touched(support, dag, emu, 1)
    assert support.try_number(dag_run, "wait") == 1  # rescheduled, not retried
    ti = dag_run.get_task_instance("wait")
    with create_session() as session:
        reschedules = session.scalar(select(func.count()).where(TaskReschedule.ti_id == ti.id))
    assert reschedules >= 1
    assert len(_sensor_requests(emu)) == reschedules + 1


def test_deferrable_sensor_runs_its_trigger_under_dag_test(
    airflow_db: Path, emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu)
    with support.manual_dag("sensor_deferred") as dag:
        # No token_store: the task and the trigger share the default Variable store, as in production.
        ClioRecordsSensor(
            task_id="wait",
            clio_conn_id=conn_id,
            endpoint="grow/matters",
            updated_since="{{ macros.datetime(2026, 7, 1, tzinfo=macros.dateutil.tz.UTC).isoformat() }}",
            deferrable=True,
            poke_interval=0.05,
            timeout=60,
        )
    _run_until_touched(support, dag, emu, 2)
    queries = _sensor_requests(emu)
    # One check in the task, then at least two polls from the trigger (nothing, then the touched record).
    assert len(queries) >= 3
    assert all(q["updated_since"] == [(FUTURE - datetime.timedelta(seconds=1)).isoformat()] for q in queries)


def test_the_sensor_does_not_depend_on_the_operators(tmp_path: Path) -> None:
    # The task defaults it shares with the operators live in task_policy, not in operators.base.
    code = (
        "import sys\n"
        "import airflow_provider_clio.sensors.clio\n"
        "print(sorted(m for m in sys.modules if m.startswith('airflow_provider_clio.operators')))\n"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
