# SPDX-License-Identifier: Apache-2.0
"""ClioExtractOperator ``mode="ids"`` on the real emulator: ids from XCom, batches, missing ids, retries."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import task

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.exceptions import ClioAttemptSupersededError, ClioConfigError
from airflow_provider_clio.lookups import MAX_IDS_PER_REQUEST
from airflow_provider_clio.operators import writers
from airflow_provider_clio.operators.extract import ClioExtractOperator, read_extract
from airflow_provider_clio.testing import ClioEmulator

# No id: the lookup adds it to the request, the output keeps the user's selection.
FIELDS = ["name", "updated_at"]


@pytest.fixture
def emu(clio_emulator_factory: Callable[..., ClioEmulator]) -> ClioEmulator:
    """300 contacts in pages of 20: a lookup reads each batch of 50 ids as 20 + 20 + 10 records."""
    return clio_emulator_factory(rate_limit=1000, records={"contacts": 300}, page_size=20)


@pytest.fixture
def few(clio_emulator_factory: Callable[..., ClioEmulator]) -> ClioEmulator:
    """An emulator with 5 contacts, for the tests that end before any request."""
    return clio_emulator_factory(rate_limit=1000, records={"contacts": 5})


@pytest.fixture
def few_ids_operator(
    few: ClioEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> Callable[..., ClioExtractOperator]:
    """Return ``make(task_id, **arguments)``: a ``mode="ids"`` extraction of ``few`` into ``tmp_path/out``."""
    clio = support.clio_connection(monkeypatch, few)

    def make(task_id: str, **arguments: Any) -> ClioExtractOperator:
        return ClioExtractOperator(
            task_id=task_id,
            clio_conn_id=clio,
            endpoint="grow/contacts",
            mode="ids",
            destination=f"file://{tmp_path}/out",
            token_store=MemoryTokenStore(),
            **arguments,
        )

    return make


def test_ids_from_an_upstream_xcom_are_extracted_exactly_in_batches_of_50(
    airflow_db: Path,
    clio_emulator_factory: Callable[..., ClioEmulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    emu = clio_emulator_factory(rate_limit=1000, records={"contacts": 400}, page_size=50)
    emu.delete_records("contacts", [7, 8])
    wanted = random.Random(12).sample(range(9, 401), 110)
    gone = [7, 8, 9001]  # deleted in Clio, and an id Clio never had
    ids = [*wanted[:60], *gone, *wanted[:5], *wanted[60:]]  # repeats are looked up once
    clio = support.clio_connection(monkeypatch, emu)
    with support.manual_dag("extract_ids") as dag:

        @task
        def pick() -> list[int]:
            return ids

        picked = pick()
        common = {"clio_conn_id": clio, "endpoint": "grow/contacts", "token_store": MemoryTokenStore()}
        ClioExtractOperator(
            task_id="native",  # ids=task.output: the XComArg resolves to the list itself
            fields=FIELDS,
            mode="ids",
            ids=picked,
            destination=f"file://{tmp_path}/native",
            records_per_file=40,
            **common,
        )
        ClioExtractOperator(
            task_id="rendered",  # a template renders the list to its text, "[1, 2, 3]"
            fields=FIELDS,
            mode="ids",
            ids="{{ ti.xcom_pull(task_ids='pick') }}",
            destination=f"file://{tmp_path}/rendered",
            **common,
        ).set_upstream(picked)
    dag_run = support.run_dag(dag)
    assert support.ti_state(dag_run, "native") == "success"
    assert support.ti_state(dag_run, "rendered") == "success"

    truth = {r["id"]: {"name": r["name"], "updated_at": r["updated_at"]} for r in emu.records("contacts")}
    expected = sorted((truth[i] for i in wanted), key=lambda r: (r["updated_at"], r["name"]))
    for task_id in ("native", "rendered"):
        summary = support.xcom_value(dag_run, task_id)
        rows = list(read_extract(f"file://{tmp_path}/{task_id}"))
        # Exactly the records of the ids Clio has, once each, projected on the selection (no id added).
        assert sorted(rows, key=lambda r: (r["updated_at"], r["name"])) == expected
        assert summary["records"] == len(rows) == 110
        assert summary["mode"] == "ids"
        assert summary["interval"] == {"since": None, "until": None}
        assert (summary["requested_ids"], summary["id_batches"], summary["id_requests"]) == (113, 3, 3)
        assert (summary["missing_ids"], summary["missing_ids_first"]) == (3, gone)
        assert summary["rate_limited"] == 0
        assert summary["resumed"] is False
        manifest = support.manifest(tmp_path / task_id)
        assert manifest["mode"] == "ids"
        assert manifest["ids"]["count"] == 113
    assert support.xcom_value(dag_run, "native")["files"] == 3  # parts of whole pages, about 40 records

    sent = support.id_lookups(emu.requests)
    assert len(sent) == 6  # 3 batches per task, nothing else listed
    assert all(len(r.query["ids[]"]) <= MAX_IDS_PER_REQUEST for r in sent)
    assert [len(r.query["ids[]"]) for r in sent] == [50, 50, 13] * 2
    assert sorted(int(i) for r in sent[:3] for i in r.query["ids[]"]) == sorted([*wanted, *gone])
    assert all(r.query["fields"] == ["id,name,updated_at"] for r in sent)
    assert emu.count(status=429) == 0
    assert emu.count(path_prefix="/grow") == 6


def test_a_retry_after_a_failure_in_batch_2_of_3_ends_with_every_record(
    airflow_db: Path, emu: ClioEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    # Pages of 20 split each batch of 50 ids into 20 + 20 + 10. With parts of 20 records, the part holding
    # batch 1's last page is uploaded when batch 2's first page arrives: a checkpoint saved then would name
    # that page's next_url, None at the end of batch 1, which reads as "every page committed". The outage
    # hits batch 2's second page; a retry resuming that checkpoint would commit batch 1 alone.
    ids = list(range(101, 221))  # 120 ids: batches of 50, 50, 20
    clio = support.clio_connection(monkeypatch, emu, requests_per_slot=20)  # the watcher lands between pages
    destination = tmp_path / "contacts"
    with support.manual_dag("extract_ids_retry") as dag:
        ClioExtractOperator(
            task_id="extract",
            clio_conn_id=clio,
            endpoint="grow/contacts",
            fields=["id", "name"],
            mode="ids",
            ids=ids,
            destination=f"file://{destination}",
            records_per_file=20,
            token_store=MemoryTokenStore(),
            **support.ONE_RETRY,
        )
    dag_run = support.run_through_outage(dag, emu, "extract", pages=4)

    truth = {r["id"]: {"id": r["id"], "name": r["name"]} for r in emu.records("contacts")}
    assert list(read_extract(f"file://{destination}")) == [truth[i] for i in ids]
    summary = support.xcom_value(dag_run, "extract")
    assert (summary["records"], summary["missing_ids"], summary["resumed"]) == (120, 0, False)
    # The first try's parts were abandoned and removed once the retry committed; no checkpoint is left.
    assert support.run_folders(destination) == [f"run={summary['run']}"]
    assert not (destination / "_checkpoint.json").exists()
    assert support.task_state_keys(dag_run, "extract") == []

    # The first try committed parts past the end of batch 1 before failing in batch 2 ...
    before, after = support.split_at_outage(emu.requests)
    first_try = [r for r in before if "ids[]" in r.query]
    assert [(len(r.query["ids[]"]), r.page_token is None) for r in first_try] == [
        (50, True),
        (50, False),
        (50, False),
        (50, True),
    ]
    # ... and the retry read every batch again (7 pages, each batch from its first page).
    second_try = [r for r in after if "ids[]" in r.query]
    assert [len(r.query["ids[]"]) for r in second_try if r.page_token is None] == [50, 50, 20]
    assert len(second_try) == 7
    assert sorted({int(i) for r in second_try for i in r.query["ids[]"]}) == ids
    assert emu.count(status=429) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "ids"}, "mode='ids' needs ids"),
        ({"mode": "full", "ids": [1]}, "ids applies to mode='ids' only, not mode='full'"),
        ({"ids": [1]}, "not mode='full'"),
        ({"mode": "ids", "ids": [1], "updated_since": "2026-08-01"}, "do not pass updated_since"),
        ({"mode": "ids", "ids": [1], "updated_until": "2026-08-01"}, "do not pass updated_until"),
        ({"mode": "ids", "ids": [1], "overlap": 60}, "overlap applies to mode='since_last_success' only"),
        ({"mode": "ids", "ids": [1, "x7"]}, "'x7' is not a record id"),
        ({"mode": "ids", "ids": "[1, 2.5]"}, "'2.5' is not a record id"),
        ({"mode": "ids", "ids": [0]}, "ids are positive"),
        ({"mode": "ids", "ids": {"id": 1}}, "got dict"),
    ],
)
def test_invalid_ids_arguments_fail_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ClioConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        ClioExtractOperator(task_id="x", endpoint="grow/contacts", destination="file:///tmp/x", **kwargs)


@pytest.mark.parametrize(
    ("rendered", "message"),
    [
        ("[1, 2, 'abc']", "'abc' is not a record id"),
        ("{{ ti.xcom_pull(task_ids='missing') }}", r"'\{\{' is not a record id"),  # never rendered
        ("None", "'None' is not a record id"),  # what an empty xcom_pull renders to
        ([3, -1], "-1"),
    ],
)
def test_bad_rendered_ids_fail_before_any_request(
    few: ClioEmulator,
    few_ids_operator: Callable[..., ClioExtractOperator],
    tmp_path: Path,
    rendered: Any,
    message: str,
) -> None:
    # The template is skipped at construction: it is not rendered yet.
    op = few_ids_operator("bad", ids="{{ ti.xcom_pull(task_ids='pick') }}")
    op.ids = rendered
    with pytest.raises(ClioConfigError, match=message):
        op.execute({})
    assert few.count(path_prefix="/grow") == 0
    assert not (tmp_path / "out").exists()


def test_ids_in_query_params_are_refused_before_any_request(
    few: ClioEmulator, few_ids_operator: Callable[..., ClioExtractOperator]
) -> None:
    op = few_ids_operator("bad", ids=[1, 2], query_params={"ids[]": [3]})
    with pytest.raises(ClioConfigError, match=r"must not set ids\[\] with mode='ids'"):
        op.execute({})
    assert few.count(path_prefix="/grow") == 0


def test_a_destination_holding_other_ids_is_refused_unless_overwrite(
    clio_emulator_factory: Callable[..., ClioEmulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    emu = clio_emulator_factory(rate_limit=1000, records={"contacts": 30})
    clio = support.clio_connection(monkeypatch, emu)
    store = MemoryTokenStore()  # refresh tokens rotate: every run of this connection shares the store

    def operator(ids: list[int], **kwargs: Any) -> ClioExtractOperator:
        return ClioExtractOperator(
            task_id="refresh",
            clio_conn_id=clio,
            endpoint="grow/contacts",
            fields=["id"],
            mode="ids",
            ids=ids,
            destination=f"file://{tmp_path}/out",
            token_store=store,
            **kwargs,
        )

    operator([3, 1, 2]).execute({})
    # The same ids in another order are the same extraction: a rerun replaces it.
    assert operator([2, 3, 1]).execute({})["records"] == 3
    emu.clear_requests()
    with pytest.raises(ClioConfigError, match="different ids"):
        operator([4, 5]).execute({})  # would delete the records of ids 1-3 from the destination
    assert emu.count(path_prefix="/grow") == 0
    assert [r["id"] for r in read_extract(f"file://{tmp_path}/out")] == [1, 2, 3]
    assert operator([4, 5], overwrite=True).execute({})["records"] == 2
    assert [r["id"] for r in read_extract(f"file://{tmp_path}/out")] == [4, 5]


def test_an_empty_id_list_commits_an_empty_extract_without_a_request(
    few: ClioEmulator, few_ids_operator: Callable[..., ClioExtractOperator], tmp_path: Path
) -> None:
    op = few_ids_operator("nothing", ids="[]")  # an upstream task found nothing to refresh
    summary = op.execute({})
    assert (summary["records"], summary["requested_ids"], summary["id_requests"]) == (0, 0, 0)
    assert list(read_extract(f"file://{tmp_path}/out")) == []
    assert few.count(path_prefix="/grow") == 0


def test_the_try_fence_refuses_a_superseded_lookup_after_the_newer_try_committed(
    emu: ClioEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    clio = support.clio_connection(monkeypatch, emu)
    tokens, store = MemoryTokenStore(), support.TaskState()
    destination = tmp_path / "contacts"
    ids = list(range(101, 221))
    newer: list[dict[str, Any]] = []

    def execute(try_number: int) -> dict[str, Any]:
        ti = SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=-1, try_number=try_number)
        return ClioExtractOperator(
            task_id="t",
            clio_conn_id=clio,
            endpoint="grow/contacts",
            fields=["id", "name"],
            mode="ids",
            ids=ids,
            destination=f"file://{destination}",
            records_per_file=20,
            token_store=tokens,
        ).execute({"task_state_store": store, "ti": ti})  # type: ignore[arg-type]

    real_add = writers.PartWriter.add
    added: list[int] = []

    def add(self: Any, records: list[dict[str, Any]]) -> None:
        added.append(len(records))
        if len(added) == 5 and not newer:
            # Try 1 committed 4 parts (into batch 2) and stalls; Airflow runs try 2 to the end meanwhile.
            newer.append(execute(2))
        real_add(self, records)

    monkeypatch.setattr(writers.PartWriter, "add", add)
    with pytest.raises(ClioAttemptSupersededError, match="Try 1 of this task instance was superseded"):
        execute(1)

    (summary,) = newer
    assert (summary["records"], summary["resumed"]) == (120, False)
    assert support.manifest(destination)["task"]["try_number"] == 2
    truth = {r["id"]: {"id": r["id"], "name": r["name"]} for r in emu.records("contacts")}
    assert list(read_extract(f"file://{destination}")) == [truth[i] for i in ids]
    # Try 2 removed try 1's abandoned parts; try 1 uploaded nothing after it woke.
    assert support.run_folders(destination) == [f"run={summary['run']}"]
    assert store.values == {}
