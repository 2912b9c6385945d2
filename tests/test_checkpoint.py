# SPDX-License-Identifier: Apache-2.0
"""Checkpoints: round trip, validation, key matching, the stores, the try-number fence, real retries."""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from airflow.sdk import BaseOperator, ObjectStoragePath
from airflow.sdk.exceptions import AirflowException

from airflow_provider_clio.checkpoint import (
    CHECKPOINT_KEY,
    CHECKPOINT_VERSION,
    Checkpoint,
    Checkpointer,
    FileCheckpointStore,
    MemoryCheckpointStore,
    TaskStateCheckpointStore,
    new_token,
    store_for_context,
)
from airflow_provider_clio.exceptions import ClioAttemptSupersededError

KEY = {
    "endpoint": "grow/contacts",
    "fields": "id,name,updated_at",
    "params": {"updated_since": "2026-03-01T00:00:00+00:00"},
    "interval": {"since": "2026-03-01T00:00:00+00:00", "until": "2026-03-02T00:00:00+00:00"},
    "target": "file:///data/contacts",
}


def _checkpoint(**overrides: Any) -> Checkpoint:
    values: dict[str, Any] = {
        "token": "20260301T000000-abcdef12",
        "next_url": "http://127.0.0.1:1/grow/contacts?page_token=p3",
        "units": 1,
        "records": 400,
        "pages": 2,
        "key": dict(KEY),
        "rate_limited": 1,
        "sink_state": {"parquet_schema": {"id": "int64", "total": "float64"}},
    }
    values.update(overrides)
    return Checkpoint(**values)


def test_round_trip_through_json() -> None:
    checkpoint = _checkpoint()
    again = Checkpoint.from_dict(json.loads(json.dumps(checkpoint.to_dict())))
    assert again == checkpoint
    assert not again.complete
    assert again.interval == KEY["interval"]
    assert _checkpoint(next_url=None).complete


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 99}, "unsupported checkpoint version"),
        ({"token": ""}, "no token"),
        ({"next_url": 5}, "next_url"),
        ({"units": "x"}, "units"),
        ({"units": -1}, "units"),
        ({"key": []}, "key"),
        ({"sink_state": [1]}, "sink_state"),
    ],
    ids=["version", "token", "next_url", "units", "negative-units", "key", "sink_state"],
)
def test_from_dict_rejects_malformed(change: dict[str, Any], message: str) -> None:
    data = {**_checkpoint().to_dict(), **change}
    with pytest.raises(ValueError, match=message):
        Checkpoint.from_dict(data)


def test_mismatch_names_every_differing_item() -> None:
    checkpoint = _checkpoint()
    assert checkpoint.mismatch(KEY) is None
    other = {**KEY, "fields": "id", "interval": {"since": None, "until": None}}
    reason = checkpoint.mismatch(other)
    assert reason is not None
    assert "fields" in reason
    assert "interval" in reason
    assert "endpoint" not in reason


def test_new_tokens_are_unique_and_sortable() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(len(t.split("-")[0]) == 15 for t in tokens)


def test_file_store_round_trip_atomic_and_clear(tmp_path: Path) -> None:
    path = ObjectStoragePath(f"file://{tmp_path}/out/_checkpoint.json")
    store = FileCheckpointStore(path)
    assert store.load() is None
    store.save(_checkpoint().to_dict())
    assert Checkpoint.from_dict(store.load()) == _checkpoint()
    # Only the final file: the temporary name was renamed over it.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_checkpoint.json"]
    store.clear()
    store.clear()  # idempotent
    assert store.load() is None


def test_file_store_ignores_unreadable_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "_checkpoint.json").write_text("{not json")
    store = FileCheckpointStore(ObjectStoragePath(f"file://{tmp_path}/_checkpoint.json"))
    with caplog.at_level(logging.WARNING):
        assert store.load() is None
    assert "unreadable checkpoint" in caplog.text


def test_checkpointer_resumes_matching_checkpoint(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryCheckpointStore()
    Checkpointer(store, KEY).save(_checkpoint(key={}))
    with caplog.at_level(logging.INFO):
        resumed = Checkpointer(store, KEY).resume()
    assert resumed is not None
    assert resumed.next_url == _checkpoint().next_url
    assert "Resuming from the checkpoint" in caplog.text


@pytest.mark.parametrize(
    "other_key",
    [
        {**KEY, "endpoint": "grow/matters"},
        {**KEY, "fields": "id"},
        {**KEY, "interval": {"since": "2026-03-02T00:00:00+00:00", "until": None}},
        {**KEY, "target": "file:///elsewhere"},
    ],
    ids=["endpoint", "fields", "interval", "target"],
)
def test_checkpointer_ignores_other_extraction(
    other_key: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryCheckpointStore()
    Checkpointer(store, KEY).save(_checkpoint())
    checkpointer = Checkpointer(store, other_key)
    with caplog.at_level(logging.WARNING):
        assert checkpointer.resume() is None
    assert "belongs to a different extraction" in caplog.text
    # Its output is an abandoned attempt the new extraction may delete once it commits.
    assert checkpointer.abandoned == [_checkpoint().token]


def test_checkpointer_ignores_malformed_and_unreadable(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryCheckpointStore()
    store.value = {"version": 1, "token": ""}
    with caplog.at_level(logging.WARNING):
        assert Checkpointer(store, KEY).resume() is None

    class Broken(MemoryCheckpointStore):
        def load(self) -> Any:
            raise OSError("store down")

    with caplog.at_level(logging.WARNING):
        assert Checkpointer(Broken(), KEY).resume() is None
    assert "Could not read the checkpoint" in caplog.text


def test_store_for_context_prefers_task_state_store() -> None:
    accessor = object()
    store = store_for_context({"task_state_store": accessor}, MemoryCheckpointStore)  # type: ignore[arg-type]
    assert isinstance(store, TaskStateCheckpointStore)
    assert store.accessor is accessor
    assert store.key == CHECKPOINT_KEY
    assert isinstance(store_for_context({}, MemoryCheckpointStore), MemoryCheckpointStore)  # type: ignore[arg-type]


SEEN: list[tuple[int, Any]] = []


class _CheckpointProbe(BaseOperator):
    """Save a checkpoint then fail on try 1; on try 2 resume it and clear it."""

    def execute(self, context: Any) -> Any:
        checkpointer = Checkpointer(store_for_context(context, MemoryCheckpointStore), KEY)
        resumed = checkpointer.resume()
        SEEN.append((context["ti"].try_number, None if resumed is None else resumed.next_url))
        if resumed is None:
            checkpointer.save(_checkpoint())
            raise AirflowException("fail after the checkpoint is saved")
        checkpointer.clear()
        assert checkpointer.resume() is None
        return resumed.records


def test_task_state_store_survives_a_real_retry(airflow_db: Path, support: ModuleType) -> None:
    SEEN.clear()
    with support.manual_dag("checkpoint_probe") as dag:
        _CheckpointProbe(task_id="probe", retries=1, retry_delay=datetime.timedelta(0))
    dag_run = support.run_dag(dag)
    assert support.ti_state(dag_run, "probe") == "success"
    assert SEEN[0] == (1, None)
    assert SEEN[1] == (2, _checkpoint().next_url)
    assert len(SEEN) == 2
    assert support.xcom_value(dag_run, "probe") == 400


def test_a_try_claims_the_store_before_its_first_request() -> None:
    store = MemoryCheckpointStore()
    first = Checkpointer(store, KEY, owner=1)
    assert first.resume() is None
    assert store.value == {"version": CHECKPOINT_VERSION, "owner": 1}
    first.save(_checkpoint())
    assert store.value is not None
    assert store.value["owner"] == 1

    # Try 2 resumes try 1's checkpoint and owns it from then on; try 1's next commit is refused.
    second = Checkpointer(store, KEY, owner=2)
    resumed = second.resume()
    assert resumed is not None
    assert resumed.units == 1
    assert store.value["owner"] == 2
    with pytest.raises(ClioAttemptSupersededError, match="try 2 owns the checkpoint in memory"):
        first.save(_checkpoint(units=2))
    with pytest.raises(ClioAttemptSupersededError):
        first.check()
    with pytest.raises(ClioAttemptSupersededError):
        first.clear()  # never the newer try's checkpoint
    assert store.value["units"] == 1
    second.save(_checkpoint(units=2))
    assert store.value["units"] == 2

    # Once try 2 finished and cleared it, a late try 1 finds its claim gone and still may not commit.
    second.clear()
    assert store.value is None
    with pytest.raises(ClioAttemptSupersededError, match="is gone"):
        first.save(_checkpoint(units=3))
    assert store.value is None


def test_a_stale_try_is_refused_at_its_start() -> None:
    store = MemoryCheckpointStore()
    Checkpointer(store, KEY, owner=3).resume()
    with pytest.raises(ClioAttemptSupersededError, match="Try 2 of this task instance was superseded"):
        Checkpointer(store, KEY, owner=2).resume()
    assert store.value == {"version": CHECKPOINT_VERSION, "owner": 3}
    # A rerun after a clear has a higher try number and starts over from the claim record.
    assert Checkpointer(store, KEY, owner=4).resume() is None


def test_abandoning_a_checkpoint_keeps_the_claim() -> None:
    store = MemoryCheckpointStore()
    Checkpointer(store, KEY, owner=1).save(_checkpoint())
    checkpointer = Checkpointer(store, KEY, owner=2)
    resumed = checkpointer.resume()
    assert resumed is not None
    checkpointer.abandon(resumed)
    assert store.value == {"version": CHECKPOINT_VERSION, "owner": 2}
    assert checkpointer.abandoned == [resumed.token]
    checkpointer.save(_checkpoint(token="fresh"))  # still this try's to commit


def test_outside_a_task_nothing_is_fenced() -> None:
    store = MemoryCheckpointStore()
    Checkpointer(store, KEY, owner=5).save(_checkpoint())
    unfenced = Checkpointer(store, KEY)
    assert unfenced.resume() is not None
    unfenced.save(_checkpoint(units=7))
    assert store.value is not None
    assert store.value["owner"] is None
    unfenced.clear()
    assert store.value is None


def test_a_checkpoint_owner_must_be_a_try_number() -> None:
    with pytest.raises(ValueError, match="owner"):
        Checkpoint.from_dict({**_checkpoint().to_dict(), "owner": "2"})
    assert Checkpoint.from_dict({**_checkpoint().to_dict(), "owner": 2}).owner == 2
