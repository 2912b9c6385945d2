# SPDX-License-Identifier: Apache-2.0
"""ClioExtractOperator on the real emulator: exact files, reruns, intervals, resume, defaults, lineage."""

from __future__ import annotations

import datetime
import functools
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow.parquet as pq
import pytest
from airflow.sdk import DAG, Asset

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.exceptions import ClioConfigError, ClioTransientError
from airflow_provider_clio.operators.extract import ClioExtractOperator, read_extract
from airflow_provider_clio.operators.retry_policy import ClioRetryPolicy
from airflow_provider_clio.retrying import RetrySettings
from airflow_provider_clio.testing import ClioEmulator

UTC = datetime.timezone.utc
MATTER_FIELDS = ["id", "display_number", "status", "client{id,name}", "updated_at"]
"""In-request retries that an outage of two answers outlasts, so the task-level retry takes over."""


@pytest.fixture
def emu(clio_emulator_factory: Callable[..., ClioEmulator]) -> ClioEmulator:
    return clio_emulator_factory(rate_limit=1000, records={"matters": 260, "contacts": 500}, page_size=50)


def _operator(conn_id: str, destination: Path, **arguments: Any) -> ClioExtractOperator:
    """
    Return an extraction of ``grow/matters`` into the local folder ``destination``; ``arguments`` add to or
    override that.

    Each operator has its own token store unless ``token_store`` is passed (see :func:`_tries`).
    """
    defaults = {"task_id": "extract", "endpoint": "grow/matters", "token_store": MemoryTokenStore()}
    return ClioExtractOperator(
        clio_conn_id=conn_id, destination=f"file://{destination}", **{**defaults, **arguments}
    )


def _tries(conn_id: str, destination: Path, **arguments: Any) -> Callable[..., ClioExtractOperator]:
    """
    Return ``operator(**more)``: a new :func:`_operator` for each try of one extraction, ``more`` overriding.

    The tries share one token store, as refresh tokens rotate.
    """
    return functools.partial(_operator, conn_id, destination, token_store=MemoryTokenStore(), **arguments)


def _in(record: dict[str, Any], since: datetime.datetime, until: datetime.datetime) -> bool:
    updated = datetime.datetime.fromisoformat(record["updated_at"])
    return since <= updated < until


def test_dag_run_writes_exact_records_and_a_rerun_replaces_them(
    airflow_db: Path,
    emu: ClioEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu)
    conn = json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])
    with DAG(
        support.unique_dag_id("extract_matters"),
        schedule="@daily",
        start_date=datetime.datetime(2026, 1, 1, tzinfo=UTC),
    ) as dag:
        ClioExtractOperator(
            task_id="extract",
            clio_conn_id=conn_id,
            endpoint="grow/matters",
            fields=MATTER_FIELDS,
            destination=f"file://{tmp_path}/matters/{{{{ ds_nodash }}}}",
            records_per_file=100,
            token_store=MemoryTokenStore(),
        )
    logical_date = datetime.datetime(2026, 3, 1, tzinfo=UTC)
    destination = tmp_path / "matters" / "20260301"
    expected = support.project(emu.records("matters"), MATTER_FIELDS)

    first = support.run_dag(dag, logical_date=logical_date)
    assert support.ti_state(first, "extract") == "success"
    summary = support.xcom_value(first, "extract")
    assert summary["records"] == 260
    assert summary["pages"] == 6
    assert summary["files"] == 3
    assert summary["rate_limited"] == 0
    assert summary["manifest"] == f"file://{destination}/_manifest.json"
    assert support.manifest_records(destination) == expected
    assert list(read_extract(f"file://{destination}")) == expected
    manifest = support.manifest(destination)
    assert [f["records"] for f in manifest["files"]] == [100, 100, 60]
    assert [f["path"] for f in manifest["files"]] == [
        f"run={summary['run']}/part-0000{i}.jsonl" for i in range(3)
    ]
    assert manifest["endpoint"] == "grow/matters"
    assert manifest["fields"] == "id,display_number,status,client{id,name},updated_at"
    assert manifest["interval"] == {"since": None, "until": None}
    # The checkpoint is gone once the manifest is committed.
    assert support.task_state_keys(first, "extract") == []

    second = support.run_dag(dag, logical_date=logical_date)
    assert support.ti_state(second, "extract") == "success"
    rerun = support.xcom_value(second, "extract")
    assert rerun["run"] != summary["run"]
    assert support.run_folders(destination) == [f"run={rerun['run']}"]
    assert support.manifest_records(destination) == expected

    # The summary is small and no rendered field or XCom carries a credential.
    rendered = json.dumps(support.rendered_fields(second, "extract"), default=str)
    assert f"file://{destination}" in rendered
    stored = json.dumps(rerun)
    assert len(stored) < 1000
    secrets = [conn["password"], conn["extra"]["refresh_token"]]
    for text in (rendered, stored):
        for secret in secrets:
            assert secret not in text


def test_parquet_parts_hold_nested_values_as_json(
    emu: ClioEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu)
    fields = ["id", "display_number", "is_locked", "client{id,name}", "updated_at"]
    op = _operator(
        conn_id,
        tmp_path / "pq",
        task_id="parquet",
        fields=fields,
        file_format="parquet",
        records_per_file=120,
    )
    summary = op.execute({})
    manifest = support.manifest(tmp_path / "pq")
    assert [f["records"] for f in manifest["files"]] == [100, 100, 60]
    assert all(f["path"].endswith(".parquet") for f in manifest["files"])
    rows: list[dict[str, Any]] = []
    for entry in manifest["files"]:
        table = pq.read_table(tmp_path / "pq" / entry["path"])
        assert table.column_names == ["id", "display_number", "is_locked", "client", "updated_at"]
        assert str(table.schema.field("id").type) == "int64"
        assert str(table.schema.field("is_locked").type) == "bool"
        assert str(table.schema.field("client").type) == "string"
        rows.extend(table.to_pylist())
    expected = support.project(emu.records("matters"), fields)
    for row in expected:
        row["client"] = json.dumps(row["client"], separators=(",", ":"))
    assert rows == expected
    assert list(read_extract(summary["manifest"].removesuffix("/_manifest.json"))) == expected
    assert summary["records"] == 260


def test_consecutive_intervals_partition_the_changes(
    emu: ClioEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu)
    bounds = [datetime.datetime(2026, m, 1, tzinfo=UTC) for m in (3, 4, 5, 6)]
    # Records placed on and around the boundaries: [since, until) puts each in exactly one interval.
    emu.touch("matters", [1], at=bounds[1])
    emu.touch("matters", [2], at=bounds[1] - datetime.timedelta(seconds=1))
    emu.touch("matters", [3], at=bounds[2])
    emu.touch("matters", [4], at=bounds[3])
    emu.touch("matters", [5], at=bounds[0])
    store = MemoryTokenStore()
    extracted: list[list[dict[str, Any]]] = []
    for i, (since, until) in enumerate(itertools.pairwise(bounds)):
        op = _operator(
            conn_id,
            tmp_path / f"i{i}",
            task_id=f"interval_{i}",
            fields=["id", "display_number"],
            updated_since=since.isoformat(),
            updated_until=until.isoformat(),
            records_per_file=40,
            token_store=store,
        )
        summary = op.execute({})
        assert summary["interval"] == {"since": since.isoformat(), "until": until.isoformat()}
        rows = support.manifest_records(tmp_path / f"i{i}")
        # updated_at was requested only to filter: it is not in the output.
        assert all(set(r) == {"id", "display_number"} for r in rows)
        extracted.append(rows)

    truth = emu.records("matters")
    for (since, until), rows in zip(itertools.pairwise(bounds), extracted, strict=True):
        assert rows == [
            {"id": r["id"], "display_number": r["display_number"]} for r in truth if _in(r, since, until)
        ]
    ids = [[r["id"] for r in rows] for rows in extracted]
    assert 5 in ids[0]
    assert 2 in ids[0]
    assert 1 in ids[1]
    assert 3 in ids[2]
    assert all(4 not in group for group in ids)
    union = [i for group in ids for i in group]
    assert len(union) == len(set(union))
    assert sorted(union) == [r["id"] for r in truth if _in(r, bounds[0], bounds[3])]


def test_upper_bound_defaults_to_the_data_interval_end(
    emu: ClioEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu)
    since = datetime.datetime(2026, 3, 1, tzinfo=UTC)
    end = datetime.datetime(2026, 4, 1, tzinfo=UTC)
    truth = emu.records("matters")
    store = MemoryTokenStore()

    def run(name: str, context: dict[str, Any]) -> list[int]:
        op = _operator(
            conn_id,
            tmp_path / name,
            task_id=name,
            fields=["id"],
            updated_since="{{ data_interval_start }}",
            token_store=store,
        )
        op.updated_since = since.isoformat()  # what the template renders to
        op.execute(context)
        return [r["id"] for r in support.manifest_records(tmp_path / name)]

    # Scheduled run: [data_interval_start, data_interval_end).
    assert run("scheduled", {"data_interval_end": end}) == [r["id"] for r in truth if _in(r, since, end)]
    # Manual run (empty interval): no upper bound.
    assert run("manual", {"data_interval_end": since}) == [
        r["id"] for r in truth if datetime.datetime.fromisoformat(r["updated_at"]) >= since
    ]


def test_retry_resumes_from_the_last_committed_part(
    airflow_db: Path,
    emu: ClioEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    # Paced at 20 requests/s, so the outage watcher lands between two pages.
    conn_id = support.clio_connection(monkeypatch, emu, requests_per_slot=20)
    fields = ["id", "name", "email", "updated_at"]
    with support.manual_dag("extract_resume") as dag:
        _operator(
            conn_id,
            tmp_path / "contacts",
            task_id="extract",
            endpoint="grow/contacts",
            fields=fields,
            records_per_file=100,  # two pages of 50 per part
            **support.ONE_RETRY,
        )
    dag_run = support.run_through_outage(dag, emu, "extract", pages=5)
    summary = support.xcom_value(dag_run, "extract")
    assert summary["resumed"] is True
    committed_parts = summary["resumed_parts"]
    assert committed_parts >= 1

    # Exactly once: every record of the emulator, in order, no duplicates.
    destination = tmp_path / "contacts"
    assert support.manifest_records(destination) == support.project(emu.records("contacts"), fields)
    assert summary["records"] == 500
    assert support.run_folders(destination) == [f"run={summary['run']}"]

    # The retry did not re-read committed pages: it started at the first uncommitted one.
    before, after = support.split_at_outage(emu.requests)
    first_try = support.page_tokens(before)
    second_try = support.page_tokens(after)
    committed_pages = committed_parts * 2
    assert first_try[0] is None  # the first page has no token
    assert second_try[0] == first_try[committed_pages]
    assert not set(first_try[:committed_pages]) & set(second_try)
    assert len(first_try) + len(second_try) - 10 <= 2  # at most the uncommitted pages were read twice


def test_file_checkpoint_fallback_resumes_outside_task_state_store(
    emu: ClioEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu, requests_per_slot=20)
    fields = ["id", "name"]
    operator = _tries(
        conn_id,
        tmp_path / "out",
        task_id="fallback",
        endpoint="grow/contacts",
        fields=fields,
        records_per_file=100,
        request_retry=support.FAST_FAIL,
    )

    with support.OutageAfterPages(emu, pages=5, requests=2), pytest.raises(ClioTransientError):
        operator().execute({})
    destination = tmp_path / "out"
    checkpoint = json.loads((destination / "_checkpoint.json").read_text())
    assert checkpoint["units"] > 0
    assert not (destination / "_manifest.json").exists()

    # A different selection must not resume the saved parts.
    with caplog.at_level(logging.WARNING):
        other = operator(fields=["id"]).execute({})
    assert "belongs to a different extraction" in caplog.text
    assert other["resumed"] is False
    assert support.manifest_records(destination) == [{"id": r["id"]} for r in emu.records("contacts")]
    assert not (destination / "_checkpoint.json").exists()
    assert support.run_folders(destination) == [f"run={other['run']}"]

    # Fail again, then resume with the same selection from the file beside the output (replacing the
    # other selection's committed output is deliberate here: overwrite=True).
    emu.clear_requests()
    with support.OutageAfterPages(emu, pages=5, requests=2), pytest.raises(ClioTransientError):
        operator(overwrite=True).execute({})
    saved = json.loads((destination / "_checkpoint.json").read_text())
    summary = operator(overwrite=True).execute({})
    assert summary["resumed"] is True
    assert summary["run"] == saved["token"]
    assert summary["resumed_parts"] == saved["units"]
    assert support.manifest_records(destination) == support.project(emu.records("contacts"), fields)
    assert not (destination / "_checkpoint.json").exists()
    assert support.run_folders(destination) == [f"run={summary['run']}"]
    _, after = support.split_at_outage(emu.requests)
    assert None not in support.page_tokens(after)


def test_defaults_pool_retries_and_policy(
    emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    eu_conn = support.clio_connection(monkeypatch, emu, region="eu")
    op = ClioExtractOperator(
        task_id="t", clio_conn_id=eu_conn, endpoint="grow/contacts", destination="file:///tmp/x/"
    )
    assert op.region == "eu"
    assert op.pool == "clio_eu"
    assert op.retries == 5
    assert op.retry_delay == datetime.timedelta(seconds=30)
    assert op.retry_exponential_backoff == 2.0
    assert op.max_retry_delay == datetime.timedelta(minutes=10)
    assert isinstance(op.retry_policy, ClioRetryPolicy)
    assert op.inlets == [Asset("clio://eu/grow/contacts")]
    assert op.outlets == [Asset("file:///tmp/x")]
    assert set(op.template_fields) == {
        "endpoint",
        "fields",
        "query_params",
        "mode",
        "updated_since",
        "updated_until",
        "ids",
        "destination",
    }

    # User arguments and DAG default_args win over the operator's defaults (a pool or region other than the
    # connection's then fails at run time: see test_a_pool_or_region_the_hook_does_not_pace_for_fails).
    custom = ClioExtractOperator(
        task_id="u",
        clio_conn_id=eu_conn,
        region="eu",
        endpoint="grow/contacts",
        destination="file:///tmp/{{ ds }}",
        pool="clio_eu",
        retries=1,
        retry_policy=None,
    )
    assert (custom.region, custom.pool, custom.retries, custom.retry_policy) == ("eu", "clio_eu", 1, None)
    assert custom.inlets == [Asset("clio://eu/grow/contacts")]
    assert custom.outlets == []
    with DAG(
        "defaults", schedule=None, default_args={"retries": 2, "retry_delay": datetime.timedelta(seconds=1)}
    ):
        from_default_args = ClioExtractOperator(
            task_id="v", clio_conn_id=eu_conn, endpoint="grow/contacts", destination="file:///tmp/v"
        )
    assert from_default_args.retries == 2
    assert from_default_args.retry_delay == datetime.timedelta(seconds=1)
    assert from_default_args.pool == "clio_eu"

    assert ClioExtractOperator(
        task_id="plain", clio_conn_id=eu_conn, endpoint="grow/contacts", destination="/data/clio/"
    ).outlets == [Asset("file:///data/clio")]
    with pytest.raises(ClioConfigError, match="region must be one of"):
        ClioExtractOperator(
            task_id="r", clio_conn_id=eu_conn, region="uk", endpoint="grow/contacts", destination="/x"
        )

    # A connection that cannot be read at parse time falls back to the us pool; the pool extra wins.
    missing = ClioExtractOperator(
        task_id="w", clio_conn_id="no_such_conn", endpoint="grow/contacts", destination="file:///tmp/w"
    )
    assert (missing.region, missing.pool) == ("us", "clio_us")
    pooled = support.clio_connection(monkeypatch, emu, pool="clio_shared")
    assert (
        ClioExtractOperator(
            task_id="p", clio_conn_id=pooled, endpoint="grow/contacts", destination="file:///tmp/p"
        ).pool
        == "clio_shared"
    )
    # The extra__clio__ prefixed extras the hook honours pick the region and pool at parse time too.
    conn_id = "clio_prefixed_extras"
    conn = emu.connection(region="us")
    conn["extra"] = {"extra__clio__region": "eu", "extra__clio__pool": "clio_eu_team"}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    prefixed = ClioExtractOperator(
        task_id="x", clio_conn_id=conn_id, endpoint="grow/contacts", destination="file:///tmp/x"
    )
    assert (prefixed.region, prefixed.pool) == ("eu", "clio_eu_team")
    assert prefixed.inlets == [Asset("clio://eu/grow/contacts")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pool": "default_pool"}, r"runs in pool 'default_pool' but connection .* paces for pool 'clio_us'"),
        ({"region": "eu"}, r"names region 'eu' but connection .* is in region 'us'"),
        ({"region": "eu", "pool": "clio_us"}, r"names region 'eu'"),
    ],
    ids=["pool", "region", "region-with-the-right-pool"],
)
def test_a_pool_or_region_the_hook_does_not_pace_for_fails(
    emu: ClioEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
    kwargs: dict[str, Any],
    message: str,
) -> None:
    # The hook always paces for the connection's region and pool: a task counted elsewhere breaks the limit.
    conn_id = support.clio_connection(monkeypatch, emu)
    op = _operator(conn_id, tmp_path / "w", task_id="t", fields=["id"], **kwargs)
    with pytest.raises(ClioConfigError, match=message) as caught:
        op.execute({})
    assert emu.count(path_prefix="/grow") == 0
    if "pool" in kwargs and "region" not in kwargs:
        assert "set the connection's 'pool' extra to use a custom pool" in caught.value.message

    # A custom pool is fine once the connection names it: task and hook agree.
    custom = support.clio_connection(monkeypatch, emu, pool="mine")
    summary = _operator(custom, tmp_path / "c", task_id="c", fields=["id"], pool="mine").execute({})
    assert summary["records"] == 260


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"file_format": "csv"}, "file_format"),
        ({"records_per_file": 0}, "records_per_file"),
    ],
)
def test_invalid_arguments_fail_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ClioConfigError, match=message):
        ClioExtractOperator(
            task_id="bad", clio_conn_id="none", endpoint="grow/contacts", destination="file:///x", **kwargs
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query_params": {"fields": "id"}}, "query_params must not set fields"),
        ({"updated_since": "2026-03-02", "updated_until": "2026-03-01"}, "must be later"),
        ({"updated_since": "yesterday"}, "cannot read"),
        ({"fields": "id,client{id{x}}"}, "one level"),
        ({"destination": "  "}, "destination"),
    ],
    ids=["reserved-param", "empty-interval", "bad-timestamp", "bad-fields", "no-destination"],
)
def test_invalid_rendered_arguments_fail_without_a_request(
    emu: ClioEmulator,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
    kwargs: dict[str, Any],
    message: str,
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu)
    arguments: dict[str, Any] = {"destination": "file:///tmp/never", **kwargs}
    op = ClioExtractOperator(
        task_id="bad",
        clio_conn_id=conn_id,
        endpoint="grow/contacts",
        token_store=MemoryTokenStore(),
        **arguments,
    )
    with pytest.raises(ClioConfigError, match=message):
        op.execute({})
    assert emu.count(path_prefix="/grow") == 0


def test_openlineage_facets(
    emu: ClioEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu)
    op = _operator(conn_id, tmp_path / "ol", task_id="ol", fields=["id"])
    start = op.get_openlineage_facets_on_start()
    assert [(d.namespace, d.name) for d in start.inputs] == [("clio://us", "grow/matters")]
    assert [(d.namespace, d.name) for d in start.outputs] == [("file", f"{tmp_path}/ol")]
    op.execute({})
    complete = op.get_openlineage_facets_on_complete(None)
    assert complete.outputs[0].outputFacets["outputStatistics"].rowCount == 260


def test_openlineage_is_imported_only_when_lineage_is_asked_for(tmp_path: Path) -> None:
    # Users without the OpenLineage provider must be able to import and run every Clio task.
    code = (
        "import sys\n"
        "import airflow_provider_clio.operators.extract, airflow_provider_clio.transfers.clio_to_sql\n"
        "import airflow_provider_clio.sensors.clio, airflow_provider_clio.triggers.clio\n"
        "prefixes = ('openlineage', 'airflow.providers.openlineage.')\n"
        "loaded = [m for m in sys.modules if m.startswith(prefixes)]\n"
        "print([m for m in loaded if not m.endswith('get_provider_info')])\n"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_an_unusable_saved_cursor_restarts_the_extraction(
    emu: ClioEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu, requests_per_slot=20)
    operator = _tries(
        conn_id,
        tmp_path / "out",
        task_id="stale",
        endpoint="grow/contacts",
        fields=["id"],
        records_per_file=100,
        request_retry=support.FAST_FAIL,
    )

    with support.OutageAfterPages(emu, pages=5, requests=2), pytest.raises(ClioTransientError):
        operator().execute({})
    path = tmp_path / "out" / "_checkpoint.json"
    saved = json.loads(path.read_text())
    # An expired page token answers 400: resuming it would fail every later try the same way.
    saved["next_url"] = saved["next_url"].split("page_token=")[0] + "page_token=expired"
    path.write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING):
        summary = operator().execute({})
    assert "Cannot resume from the saved cursor" in caplog.text
    assert summary["resumed"] is False
    assert summary["run"] != saved["token"]
    assert support.manifest_records(tmp_path / "out") == [{"id": r["id"]} for r in emu.records("contacts")]
    assert support.run_folders(tmp_path / "out") == [f"run={summary['run']}"]
    assert not path.exists()


def test_random_429_and_503_are_absorbed_and_counted(
    clio_emulator_factory: Callable[..., ClioEmulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    from airflow_provider_clio.testing import Faults

    emu = clio_emulator_factory(
        rate_limit=1000,
        records={"contacts": 1000},
        page_size=50,
        faults=Faults(seed=3, error_rate=0.3, error_statuses=(429, 503)),
    )
    conn_id = support.clio_connection(monkeypatch, emu)
    summary = _operator(
        conn_id,
        tmp_path / "faulty",
        task_id="faulty",
        endpoint="grow/contacts",
        fields=["id", "name"],
        request_retry=RetrySettings(max_attempts=20, initial=0.001, maximum=0.005, max_total_wait=5.0),
    ).execute({})
    expected = support.project(emu.records("contacts"), ["id", "name"])
    assert support.manifest_records(tmp_path / "faulty") == expected
    assert summary["rate_limited"] == emu.count(status=429) > 0
    assert emu.count(status=503) > 0


def test_read_extract_refuses_a_destination_with_nothing_committed(tmp_path: Path) -> None:
    (tmp_path / "run=abandoned").mkdir()
    (tmp_path / "run=abandoned" / "part-00000.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(FileNotFoundError, match=r"_manifest\.json is missing"):
        next(read_extract(f"file://{tmp_path}"))


_STORE = MemoryTokenStore()


def _interval_operator(
    conn_id: str, destination: Path, since: datetime.datetime, until: datetime.datetime, **kwargs: Any
) -> ClioExtractOperator:
    return _operator(
        conn_id,
        destination,
        task_id=f"interval_{since:%m}",
        fields=["id", "updated_at"],
        updated_since=since.isoformat(),
        updated_until=until.isoformat(),
        token_store=_STORE,
        **kwargs,
    )


def test_a_destination_of_another_interval_is_refused_unless_overwrite(
    emu: ClioEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu)
    destination = tmp_path / "static"
    march, may, july = (datetime.datetime(2026, m, 1, tzinfo=UTC) for m in (3, 5, 7))
    first = _interval_operator(conn_id, destination, march, may).execute({})
    committed = support.manifest_records(destination)
    assert committed
    emu.clear_requests()

    # The next interval at the same static destination would delete the first one's data: refused at once.
    with pytest.raises(ClioConfigError, match=r"one destination per interval.*overwrite=True"):
        _interval_operator(conn_id, destination, may, july).execute({})
    assert emu.count(path_prefix="/grow") == 0
    assert support.manifest_records(destination) == committed
    assert support.run_folders(destination) == [f"run={first['run']}"]

    # A rerun of the same interval replaces it; overwrite=True replaces another interval on purpose.
    again = _interval_operator(conn_id, destination, march, may).execute({})
    assert support.run_folders(destination) == [f"run={again['run']}"]
    replaced = _interval_operator(conn_id, destination, may, july, overwrite=True).execute({})
    assert support.run_folders(destination) == [f"run={replaced['run']}"]
    truth = emu.records("matters")
    assert support.manifest_records(destination) == [
        {"id": r["id"], "updated_at": r["updated_at"]} for r in truth if _in(r, may, july)
    ]


def test_a_manifest_committed_meanwhile_for_another_interval_is_not_replaced(
    emu: ClioEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    # Paced at 20 requests/s so the test thread commits the other run's manifest between two pages.
    conn_id = support.clio_connection(monkeypatch, emu, requests_per_slot=20)
    destination = tmp_path / "shared"
    destination.mkdir()
    since, until = datetime.datetime(2026, 1, 1, tzinfo=UTC), datetime.datetime(2026, 7, 1, tzinfo=UTC)
    other = {
        "version": 1,
        "run": "other",
        "endpoint": "grow/matters",
        "fields": "id,updated_at",
        "params": {"updated_since": "2025-01-01T00:00:00+00:00"},
        "interval": {"since": "2025-01-01T00:00:00+00:00", "until": "2025-02-01T00:00:00+00:00"},
        "files": [],
    }

    def commit_other_run() -> None:
        deadline = time.monotonic() + 30
        while emu.count(status=200, path_prefix="/grow") < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        (destination / "run=other").mkdir()
        (destination / "_manifest.json").write_text(json.dumps(other))

    watcher = threading.Thread(target=commit_other_run, daemon=True)
    watcher.start()
    with pytest.raises(ClioConfigError, match="one destination per interval"):
        _interval_operator(conn_id, destination, since, until, records_per_file=50).execute({})
    watcher.join(timeout=5)
    assert emu.count(status=200, path_prefix="/grow") == 6  # it failed at the commit, after every page
    assert support.manifest(destination) == other
    assert (destination / "run=other").is_dir()


def test_a_commit_deletes_only_the_replaced_run_not_a_concurrent_one(
    emu: ClioEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu)
    destination = tmp_path / "out"
    since, until = datetime.datetime(2026, 3, 1, tzinfo=UTC), datetime.datetime(2026, 5, 1, tzinfo=UTC)
    first = _interval_operator(conn_id, destination, since, until).execute({})
    # A concurrent run of the same interval is still uploading its parts (no manifest of its own yet).
    in_progress = destination / "run=20990101T000000-concurrent"
    in_progress.mkdir()
    (in_progress / "part-00000.jsonl").write_text('{"id": 1}\n')
    (destination / "_manifest.json.tmp-deadbeef").write_text("{")
    (destination / "._manifest.json.k2j4h.tmp").write_text("{")

    second = _interval_operator(conn_id, destination, since, until).execute({})
    assert support.run_folders(destination) == sorted([f"run={second['run']}", in_progress.name])
    assert f"run={first['run']}" not in support.run_folders(destination)
    assert (in_progress / "part-00000.jsonl").exists()
    assert not (destination / "_manifest.json.tmp-deadbeef").exists()
    assert not (destination / "._manifest.json.k2j4h.tmp").exists()


def test_parquet_parts_of_a_run_and_its_resumed_try_share_one_schema(
    clio_emulator_factory: Callable[..., ClioEmulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    import pyarrow.dataset as ds

    emu = clio_emulator_factory(rate_limit=1000, records={"activities": 300}, page_size=50)
    conn_id = support.clio_connection(monkeypatch, emu, requests_per_slot=20)
    fields = ["id", "quantity", "total", "billed", "matter{id,display_number}"]
    destination = tmp_path / "activities"
    operator = _tries(
        conn_id,
        destination,
        task_id="pq",
        endpoint="grow/activities",
        fields=fields,
        file_format="parquet",
        records_per_file=50,
        request_retry=support.FAST_FAIL,
    )

    run_schema = {
        "id": "int64",
        "quantity": "float64",
        "total": "float64",
        "billed": "bool",
        "matter": "string",
    }
    with support.OutageAfterPages(emu, pages=3, requests=2), pytest.raises(ClioTransientError):
        operator().execute({})
    # The resumed try must write its parts with the schema the first try's parts have.
    saved = json.loads((destination / "_checkpoint.json").read_text())
    assert saved["units"] > 0
    assert saved["sink_state"]["parquet_schema"] == run_schema
    summary = operator().execute({})
    assert summary["resumed"] is True
    manifest = support.manifest(destination)
    assert manifest["schema"] == run_schema
    paths = [str(destination / entry["path"]) for entry in manifest["files"]]
    assert len(paths) == 6
    assert len({str(pq.read_schema(path)) for path in paths}) == 1
    table = ds.dataset(paths, format="parquet").to_table()
    assert [str(f.type) for f in table.schema] == ["int64", "double", "double", "bool", "string"]
    expected = support.project(emu.records("activities"), fields)
    for row in expected:
        row["quantity"] = float(row["quantity"])
        row["matter"] = json.dumps(row["matter"], separators=(",", ":"))
    assert table.to_pylist() == expected


def test_a_backfill_that_drops_most_records_still_checkpoints_its_cursor(
    clio_emulator_factory: Callable[..., ClioEmulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    emu = clio_emulator_factory(rate_limit=1000, records={"contacts": 500}, page_size=10)
    conn_id = support.clio_connection(monkeypatch, emu, requests_per_slot=20)
    # Clio applies updated_since; the upper bound is client-side, so nearly every page is dropped whole.
    since = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    until = datetime.datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    destination = tmp_path / "backfill"
    operator = _tries(
        conn_id,
        destination,
        task_id="backfill",
        endpoint="grow/contacts",
        fields=["id", "updated_at"],
        updated_since=since.isoformat(),
        updated_until=until.isoformat(),
        request_retry=support.FAST_FAIL,
    )

    with support.OutageAfterPages(emu, pages=25, requests=2), pytest.raises(ClioTransientError):
        operator().execute({})
    saved = json.loads((destination / "_checkpoint.json").read_text())
    # The cursor was saved after 20 pages although no record was pending, and no empty part was written.
    assert saved["units"] == 0
    assert saved["pages"] == 20
    assert saved["next_url"]
    assert support.run_folders(destination) == []

    summary = operator().execute({})
    assert summary["resumed"] is True
    assert summary["pages"] == 50
    truth = [r for r in emu.records("contacts") if _in(r, since, until)]
    assert summary["records"] == len(truth)
    before, after = support.split_at_outage(emu.requests)
    first_try, second_try = support.page_tokens(before), support.page_tokens(after)
    assert second_try[0] == first_try[20]
    assert len(second_try) == 30


def test_the_checkpoint_does_not_grow_with_the_number_of_parts(
    clio_emulator_factory: Callable[..., ClioEmulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    # The checkpoint is rewritten after every part: listing every part in it would make a 10 M-row load
    # write gigabytes to the state store. It keeps counts and the last few entries; the rest go beside
    # the parts in segments of PART_LOG_SEGMENT, from which the manifest is assembled.
    from airflow_provider_clio.operators import writers

    monkeypatch.setattr(writers, "PART_LOG_SEGMENT", 3)
    emu = clio_emulator_factory(rate_limit=1000, records={"contacts": 500}, page_size=25)
    conn_id = support.clio_connection(monkeypatch, emu, requests_per_slot=20)
    destination = tmp_path / "contacts"
    task_state = support.TaskState()  # its ``saved`` list holds every checkpoint written
    operator = _tries(
        conn_id,
        destination,
        task_id="bounded",
        endpoint="grow/contacts",
        fields=["id", "name"],
        records_per_file=25,  # one page per part: 20 parts
        request_retry=support.FAST_FAIL,
    )

    with support.OutageAfterPages(emu, pages=11, requests=2), pytest.raises(ClioTransientError):
        operator().execute({"task_state_store": task_state})  # type: ignore[arg-type]
    summary = operator().execute({"task_state_store": task_state})  # type: ignore[arg-type]
    assert summary["resumed"] is True
    assert summary["files"] == 20

    sizes = [len(json.dumps(value)) for value in task_state.saved]
    assert len(sizes) >= 20
    assert all(len(value["sink_state"]["files"]) < 3 for value in task_state.saved)
    # Two part entries are about 200 bytes: the last checkpoint is as small as the first ones.
    assert max(sizes) - min(sizes) < 300
    manifest = support.manifest(destination)
    assert [entry["path"] for entry in manifest["files"]] == [
        f"run={summary['run']}/part-{index:05d}.jsonl" for index in range(20)
    ]
    assert support.manifest_records(destination) == support.project(emu.records("contacts"), ["id", "name"])
    assert list(read_extract(f"file://{destination}")) == support.manifest_records(destination)


def test_a_resumed_complete_checkpoint_keeps_the_parquet_schema_in_the_manifest(
    clio_emulator_factory: Callable[..., ClioEmulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    from airflow_provider_clio.operators import extract

    emu = clio_emulator_factory(rate_limit=1000, records={"activities": 120}, page_size=50)
    conn_id = support.clio_connection(monkeypatch, emu)
    destination = tmp_path / "activities"
    real_write = extract.write_json_atomic
    failures = iter([OSError("store unavailable")])

    def manifest_write_fails_once(path: Any, value: Any) -> None:
        error = next(failures, None)
        if error is not None:
            raise error
        real_write(path, value)

    operator = _tries(
        conn_id,
        destination,
        task_id="pq",
        endpoint="grow/activities",
        fields=["id", "total", "billed"],
        file_format="parquet",
        records_per_file=50,
    )

    monkeypatch.setattr(extract, "write_json_atomic", manifest_write_fails_once)
    # Every part is uploaded and the checkpoint says so; only the manifest commit fails.
    with pytest.raises(OSError, match="store unavailable"):
        operator().execute({})
    assert json.loads((destination / "_checkpoint.json").read_text())["next_url"] is None
    requests = emu.count(path_prefix="/grow")
    summary = operator().execute({})
    assert emu.count(path_prefix="/grow") == requests  # finished without reading a page again
    assert summary["resumed"] is True
    manifest = support.manifest(destination)
    assert manifest["schema"] == {"id": "int64", "total": "float64", "billed": "bool"}
    assert len(manifest["files"]) == 3
    assert [r["id"] for r in read_extract(f"file://{destination}")] == [
        r["id"] for r in emu.records("activities")
    ]


@pytest.mark.parametrize(
    "path",
    [
        "../elsewhere/part-00000.jsonl",
        "run=x/../../elsewhere.jsonl",
        "/etc/passwd",
        "file:///etc/passwd",
        "run=x\\..\\..\\secret",
        "run=x/part-00000.jsonl\n",
        "run=x/./part-00000.jsonl",
    ],
)
def test_read_extract_refuses_a_manifest_path_outside_the_destination(tmp_path: Path, path: str) -> None:
    destination = tmp_path / "dest"
    (destination / "run=x").mkdir(parents=True)
    (destination / "run=x" / "part-00000.jsonl").write_text('{"id": 1}\n')
    (tmp_path / "elsewhere.jsonl").write_text('{"secret": true}\n')
    files = [{"path": "run=x/part-00000.jsonl", "records": 1}, {"path": path, "records": 1}]
    (destination / "_manifest.json").write_text(json.dumps({"format": "jsonl", "files": files}))
    reader = read_extract(f"file://{destination}")
    with pytest.raises(ClioConfigError, match="not a part file inside the destination"):
        next(reader)
