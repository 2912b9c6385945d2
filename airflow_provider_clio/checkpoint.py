# SPDX-License-Identifier: Apache-2.0
"""Resume state of an extraction, so a retried task continues from its last committed page.

An operator saves a :class:`Checkpoint` only after a unit of output is durable (a part file uploaded, a SQL
batch committed). The next try of the same task instance loads it and asks the hook to start from the saved
``next_url``, so committed pages are never read again and the final output holds every record exactly once.

Where the checkpoint lives:

- Airflow 3.3+: the task instance's ``task_state_store`` (key ``clio_checkpoint``), scoped to
  ``(dag_id, run_id, task_id, map_index)`` and therefore shared by every try of the task instance.
- Older Airflow: a ``_checkpoint.json`` beside the output (file operator) or an Airflow Variable (SQL
  operator).

A checkpoint written for another extraction (different endpoint, fields, filters, interval or target) is
ignored with a log line: resuming it would mix two different result sets.

Inside a task the checkpoint also names the try that owns it, and every commit is fenced with that try
number so a stale attempt cannot commit over a newer try's work (see :mod:`airflow_provider_clio.fencing`).

The checkpoint is rewritten after every committed unit, so its size must not grow with the extraction: it
holds counts and the sink's small state, never one entry per unit (the file writer keeps its list of parts
beside the parts, see ``operators.writers``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_clio.exceptions import ClioAttemptSupersededError
from airflow_provider_clio.fencing import claim_record, is_claim, refuse_if_superseded
from airflow_provider_clio.storage import write_json_atomic

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_KEY",
    "Checkpoint",
    "CheckpointStore",
    "Checkpointer",
    "FileCheckpointStore",
    "MemoryCheckpointStore",
    "TaskStateCheckpointStore",
    "VariableCheckpointStore",
    "new_token",
    "store_for_context",
    "variable_key",
]

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "clio_checkpoint"
"""Key of the checkpoint in ``context["task_state_store"]``."""

CHECKPOINT_FILE = "_checkpoint.json"
"""File name of the fallback checkpoint beside an extraction's output."""

CHECKPOINT_VERSION = 2
"""Version 2 counts units instead of listing them; a version 1 checkpoint is ignored (the try starts over)."""


@dataclass
class Checkpoint:
    """
    Progress of one extraction after its last durable commit.

    :param token: Names the attempt's output (the ``run=<token>`` folder, or a SQL load); reused on resume.
    :param next_url: The ``next`` URL after the last committed page; ``None`` once every page is committed.
    :param units: Units committed so far (part files or SQL batches); the next unit's index.
    :param records: Records committed so far.
    :param pages: Pages read so far (only pages whose records are committed count).
    :param key: Identity of the extraction (endpoint, fields, params, interval, target); see :meth:`mismatch`.
    :param rate_limited: 429 answers seen by the tries so far, carried into the final summary.
    :param sink_state: What the sink must reuse on resume (e.g. the run's Parquet schema); small JSON.
    :param owner: The try number of the attempt that saved it (``None`` outside a task); see ``fencing``.
    """

    token: str
    next_url: str | None
    units: int = 0
    records: int = 0
    pages: int = 0
    key: dict[str, Any] = field(default_factory=dict)
    rate_limited: int = 0
    sink_state: dict[str, Any] = field(default_factory=dict)
    version: int = CHECKPOINT_VERSION
    owner: int | None = None

    @property
    def complete(self) -> bool:
        """Whether every page is committed (only the final step, e.g. the manifest, may be missing)."""
        return self.next_url is None

    @property
    def interval(self) -> Any:
        """The interval part of the key, ``{"since": ..., "until": ...}``."""
        return self.key.get("interval")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        """Build a checkpoint from :meth:`to_dict` output, raising ValueError when it is malformed."""
        if not isinstance(data, Mapping):
            raise ValueError(f"checkpoint must be a JSON object, got {type(data).__name__}")
        if data.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"unsupported checkpoint version {data.get('version')!r}")
        token = data.get("token")
        next_url = data.get("next_url")
        units = data.get("units", 0)
        key = data.get("key")
        if not isinstance(token, str) or not token:
            raise ValueError("checkpoint has no token")
        if next_url is not None and not isinstance(next_url, str):
            raise ValueError("checkpoint next_url must be a string or null")
        if not isinstance(units, int) or isinstance(units, bool) or units < 0:
            raise ValueError("checkpoint units must be a non-negative integer")
        if not isinstance(key, dict):
            raise ValueError("checkpoint key must be an object")
        sink_state = data.get("sink_state") or {}
        if not isinstance(sink_state, dict):
            raise ValueError("checkpoint sink_state must be an object")
        owner = data.get("owner")
        if owner is not None and (not isinstance(owner, int) or isinstance(owner, bool)):
            raise ValueError("checkpoint owner must be a try number or null")
        return cls(
            token=token,
            next_url=next_url,
            units=units,
            records=int(data.get("records", 0)),
            pages=int(data.get("pages", 0)),
            key=dict(key),
            rate_limited=int(data.get("rate_limited", 0)),
            sink_state=dict(sink_state),
            owner=owner,
        )

    def mismatch(self, key: Mapping[str, Any]) -> str | None:
        """Return why this checkpoint does not belong to the extraction ``key``, or ``None`` if it does."""
        differing = sorted(name for name in set(self.key) | set(key) if self.key.get(name) != key.get(name))
        if not differing:
            return None
        return ", ".join(f"{name}: saved {self.key.get(name)!r}, now {key.get(name)!r}" for name in differing)


def new_token() -> str:
    """Return a fresh, sortable attempt token such as ``20260301T120000-1a2b3c4d``."""
    from datetime import datetime, timezone

    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


class CheckpointStore(Protocol):
    """Where a checkpoint is kept between tries of one task instance."""

    description: str

    def load(self) -> Any:
        """Return the saved JSON value, or ``None`` when there is none."""

    def save(self, value: dict[str, Any]) -> None:
        """Persist ``value`` durably before returning."""

    def clear(self) -> None:
        """Remove the saved value; no error when there is none."""


class TaskStateCheckpointStore:
    """
    Keep the checkpoint in Airflow 3.3's ``task_state_store``, shared by every try of the task instance.

    :param accessor: ``context["task_state_store"]``.
    :param key: The key to store under.
    """

    def __init__(self, accessor: Any, key: str = CHECKPOINT_KEY) -> None:
        self.accessor = accessor
        self.key = key
        self.description = f"task_state_store[{key!r}]"

    def load(self) -> Any:
        return self.accessor.get(self.key)

    def save(self, value: dict[str, Any]) -> None:
        self.accessor.set(self.key, value)

    def clear(self) -> None:
        self.accessor.delete(self.key)


class FileCheckpointStore:
    """
    Keep the checkpoint in a JSON file (any ``ObjectStoragePath``), written atomically.

    :param path: The checkpoint file, normally ``<destination>/_checkpoint.json``.
    """

    def __init__(self, path: ObjectStoragePath) -> None:
        self.path = path
        self.description = str(path)

    def load(self) -> Any:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except ValueError:
            log.warning("Ignoring unreadable checkpoint file %s", self.path)
            return None

    def save(self, value: dict[str, Any]) -> None:
        write_json_atomic(self.path, value)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class VariableCheckpointStore:
    """
    Keep the checkpoint in an Airflow Variable (Airflow before 3.3, for outputs with no file beside them).

    :param key: The Variable key; :func:`variable_key` derives one from the task instance.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.description = f"Variable {key!r}"

    def load(self) -> Any:
        from airflow.sdk import Variable

        return Variable.get(self.key, default=None, deserialize_json=True)

    def save(self, value: dict[str, Any]) -> None:
        from airflow.sdk import Variable

        Variable.set(self.key, value, serialize_json=True)

    def clear(self) -> None:
        from airflow.sdk import Variable

        with contextlib.suppress(Exception):
            Variable.delete(self.key)


class MemoryCheckpointStore:
    """Keep the checkpoint in memory: for code running outside an Airflow task, where no try follows."""

    def __init__(self) -> None:
        self.value: dict[str, Any] | None = None
        self.description = "memory"

    def load(self) -> Any:
        return self.value

    def save(self, value: dict[str, Any]) -> None:
        self.value = json.loads(json.dumps(value))

    def clear(self) -> None:
        self.value = None


def variable_key(context: Context) -> str:
    """Return a short Variable key unique to the running task instance."""
    ti = context["ti"]
    scope = f"{ti.dag_id}\0{ti.run_id}\0{ti.task_id}\0{getattr(ti, 'map_index', -1)}"
    digest = hashlib.sha256(scope.encode()).hexdigest()[:16]
    return f"{CHECKPOINT_KEY}__{ti.dag_id}__{ti.task_id}__{digest}"


def store_for_context(context: Context, fallback: Callable[[], CheckpointStore]) -> CheckpointStore:
    """Return the task state store when the running Airflow has one (3.3+), else ``fallback()``."""
    accessor = context.get("task_state_store")
    if accessor is not None:
        return TaskStateCheckpointStore(accessor)
    return fallback()


class Checkpointer:
    """
    Load, validate, save and clear the checkpoint of one extraction, fenced by the try number.

    :param store: Where the checkpoint lives.
    :param key: Identity of the extraction; a saved checkpoint with another key is ignored.
    :param owner: The running try's number (:func:`~airflow_provider_clio.fencing.attempt_of`); with it,
        :meth:`resume` claims the store and every write first checks that no newer try owns it. ``None``
        (outside a task): no fence.
    """

    def __init__(self, store: CheckpointStore, key: Mapping[str, Any], owner: int | None = None) -> None:
        self.store = store
        self.key = dict(key)
        self.owner = owner
        self.abandoned: list[str] = []
        """Tokens of saved checkpoints this extraction will not resume (their output may be deleted)."""
        self._claimed = False

    def resume(self) -> Checkpoint | None:
        """Return the checkpoint to resume from (``None``: start from the first page); claim it first."""
        try:
            raw = self.store.load()
        except Exception:
            log.warning(
                "Could not read the checkpoint from %s; starting over", self.store.description, exc_info=True
            )
            raw = None
        if self.owner is not None:
            refuse_if_superseded(raw, self.owner, False, self.store.description)
        checkpoint = self._parse(raw)
        if self.owner is not None:
            # Before the first request: from now on an older attempt's commits are refused.
            if checkpoint is not None:
                checkpoint.owner = self.owner
            claim = claim_record(self.owner, CHECKPOINT_VERSION)
            self.store.save(claim if checkpoint is None else checkpoint.to_dict())
            self._claimed = True
            log.info("Try %d owns the checkpoint in %s", self.owner, self.store.description)
        return checkpoint

    def _parse(self, raw: Any) -> Checkpoint | None:
        if raw is None or is_claim(raw):
            return None
        try:
            checkpoint = Checkpoint.from_dict(raw)
        except ValueError as err:
            log.warning("Ignoring the checkpoint in %s: %s", self.store.description, err)
            return None
        reason = checkpoint.mismatch(self.key)
        if reason:
            self.abandoned.append(checkpoint.token)
            log.warning(
                "Ignoring the checkpoint in %s: it belongs to a different extraction (%s); starting over",
                self.store.description,
                reason,
            )
            return None
        log.info(
            "Resuming from the checkpoint in %s: %d unit(s), %d record(s), %d page(s) already committed",
            self.store.description,
            checkpoint.units,
            checkpoint.records,
            checkpoint.pages,
        )
        return checkpoint

    def check(self) -> None:
        """
        Raise ``ClioAttemptSupersededError`` when a newer try owns the checkpoint; call before each commit.

        Reads the store (one round trip); does nothing outside a task.
        """
        if self.owner is not None:
            refuse_if_superseded(self.store.load(), self.owner, self._claimed, self.store.description)

    def save(self, checkpoint: Checkpoint) -> None:
        """Persist ``checkpoint``; call only after the output it describes is durable."""
        self.check()
        checkpoint.key = dict(self.key)
        checkpoint.owner = self.owner
        self.store.save(checkpoint.to_dict())

    def abandon(self, checkpoint: Checkpoint) -> None:
        """Forget ``checkpoint`` without finishing it (e.g. its cursor expired) and remember its token."""
        self.abandoned.append(checkpoint.token)
        if self.owner is None:
            self.clear()
            return
        # Keep owning the store: the extraction starts over under this try.
        self.check()
        self.store.save(claim_record(self.owner, CHECKPOINT_VERSION))

    def clear(self) -> None:
        """Forget the checkpoint once the extraction's output is committed (never a newer try's)."""
        try:
            self.check()
            self.store.clear()
        except ClioAttemptSupersededError:
            raise
        except Exception:
            # The output is already committed; a stale checkpoint is ignored later because its token is gone.
            log.warning("Could not clear the checkpoint in %s", self.store.description, exc_info=True)
