# SPDX-License-Identifier: Apache-2.0
"""Part-file writers for ClioExtractOperator: JSONL or Parquet, streamed through a local temporary file.

Records of the current part are appended to a local JSONL file page by page, so memory holds one page at a
time whatever the part or extraction size. On commit the part is converted if needed (Parquet is written in
row groups read back from the local file) and uploaded to ``<destination>/run=<token>/part-NNNNN.<ext>``.

Parquet: one schema per run. Readers such as ``pyarrow.dataset`` take the schema of the first part and cast
the others to it, so every part of a run must agree. Column types are therefore decided per run, not per part:

- ``id`` is ``int64``; booleans are ``bool``; every other number is ``float64`` (a column whose first part
  happens to hold only whole numbers still holds ``2500.75`` later); strings are ``string``, and nested
  objects and lists are ``string`` holding JSON text.
- A column is typed the first time a part is written, from the kinds seen in that part, and the type is kept
  for the rest of the run (in the checkpoint, so a resumed try reuses it). A column with no value yet (all
  null in the first part) is ``string``, which can hold any later value as text.
- A later value that the column's type cannot hold losslessly (text in a ``float64`` column, a number in a
  ``bool`` one) fails the task with ``ClioConfigError``: widening the column now would contradict the parts
  already uploaded. Use ``file_format="jsonl"`` for such data. Without ``fields``, a column that first
  appears after the first part fails the same way (pass ``fields``).

The manifest records the run's schema under ``schema``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_clio.checkpoint import is_local
from airflow_provider_clio.exceptions import ClioConfigError

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

FILE_FORMATS = {"jsonl": "jsonl", "parquet": "parquet"}
"""Supported ``file_format`` values and their file extensions."""

PARQUET_ROW_GROUP = 1000


def part_name(token: str, index: int, file_format: str) -> str:
    """Return part ``index``'s path relative to the destination, e.g. ``run=<token>/part-00000.jsonl``."""
    return f"run={token}/part-{index:05d}.{FILE_FORMATS[file_format]}"


def _dumps(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)


class PartWriter:
    """
    Buffer the records of one part in a local file and upload it on commit.

    :param destination: The extraction's destination folder.
    :param file_format: ``jsonl`` or ``parquet``.
    :param workdir: A local temporary directory owned by the caller.
    :param columns: Parquet column order (the fields' top-level names); default: order of first appearance.
    """

    def __init__(
        self,
        destination: ObjectStoragePath,
        file_format: str,
        workdir: str,
        columns: Sequence[str] | None = None,
    ) -> None:
        if file_format not in FILE_FORMATS:
            raise ClioConfigError(f"file_format must be one of {sorted(FILE_FORMATS)}, got {file_format!r}")
        if file_format == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise ClioConfigError(
                    "file_format='parquet' needs pyarrow: pip install 'airflow-provider-clio[parquet]'"
                ) from None
        self.destination = destination
        self.file_format = file_format
        self.workdir = workdir
        self.columns = list(columns) if columns else None
        self._buffer_path = os.path.join(workdir, "part.jsonl")
        self._handle: IO[str] | None = None
        self._pending = 0
        self.schema: dict[str, str] = {}
        """The run's Parquet schema so far, column -> ``int64``/``bool``/``float64``/``string``."""

    @property
    def pending(self) -> int:
        """Records written to the local part file since the last commit."""
        return self._pending

    def state(self) -> dict[str, Any]:
        """Return what a resumed try must reuse: the run's Parquet schema."""
        return {"parquet_schema": dict(self.schema)} if self.schema else {}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue a run from :meth:`state` saved in its checkpoint."""
        self.schema = dict(state.get("parquet_schema") or {})

    def add(self, records: list[dict[str, Any]]) -> None:
        """Append one page's records to the local part file."""
        if self._handle is None:
            self._handle = open(self._buffer_path, "w", encoding="utf-8")  # noqa: SIM115 - closed on commit
        for record in records:
            self._handle.write(_dumps(record))
            self._handle.write("\n")
        self._pending += len(records)

    def commit(self, index: int, token: str) -> dict[str, Any]:
        """Upload the local part as part ``index`` of run ``token``; return its manifest entry."""
        if self._handle is None:
            raise RuntimeError("commit() without records")
        self._handle.close()
        self._handle = None
        local = self._buffer_path
        if self.file_format == "parquet":
            local = os.path.join(self.workdir, "part.parquet")
            self.schema = write_parquet(self._buffer_path, local, self.columns, self.schema)
        relative = part_name(token, index, self.file_format)
        size = os.path.getsize(local)
        upload(local, self.destination / relative)
        records = self._pending
        self._pending = 0
        for path in {self._buffer_path, local}:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        log.info("Wrote %s (%d records, %d bytes)", relative, records, size)
        return {"path": relative, "records": records, "bytes": size}

    def close(self) -> None:
        """Drop any uncommitted local data."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def upload(local_path: str, target: ObjectStoragePath) -> None:
    """
    Copy a finished local file to ``target`` and make it durable before returning.

    Local destinations get a temporary name in the target folder, ``fsync`` and an atomic rename; object
    stores get one streamed upload (an object is visible only once complete).
    """
    if is_local(target):
        final = target.path
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = f"{final}.tmp"
        with open(local_path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, final)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.fs.put_file(local_path, target.path)


def _read_jsonl(path: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def value_kind(value: Any) -> str:
    """Classify a JSON value for column typing: ``bool``, ``int``, ``float``, ``str`` or ``json``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


PARQUET_TYPES = ("int64", "bool", "float64", "string")
"""The Parquet column types a run uses."""


def parquet_type(name: str, kinds: set[str]) -> str | None:
    """Return the Parquet type of a column holding values of ``kinds`` (module docstring), or ``None``."""
    if name == "id" and kinds <= {"int"}:
        return "int64"
    if not kinds:
        return None
    if kinds == {"bool"}:
        return "bool"
    if kinds <= {"int", "float"}:
        return "float64"
    # Strings, nested values (as JSON text) and mixed kinds.
    return "string"


def _merge_type(name: str, current: str | None, kinds: set[str]) -> str:
    wanted = parquet_type(name, kinds)
    if current is None:
        return wanted or "string"
    if wanted is None or wanted == current or current == "string":
        # A string column holds any later value as text.
        return current
    raise ClioConfigError(
        f"Parquet column {name!r} was written as {current} in earlier parts of this run, but a later part "
        f"holds {'/'.join(sorted(kinds))} values: all parts of a run share one schema, so it cannot change "
        "now. Use file_format='jsonl' for this selection"
    )


def _arrow_type(type_name: str) -> Any:
    import pyarrow as pa

    return {"int64": pa.int64(), "bool": pa.bool_(), "float64": pa.float64(), "string": pa.string()}[
        type_name
    ]


def _convert(value: Any, type_name: str) -> Any:
    if value is None:
        return None
    if type_name == "string":
        return value if isinstance(value, str) else _dumps(value)
    if type_name == "float64":
        return float(value)
    if type_name == "int64":
        return int(value)
    return value


def write_parquet(
    jsonl_path: str,
    parquet_path: str,
    columns: Sequence[str] | None = None,
    run_schema: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """
    Convert a local JSONL file to Parquet in bounded memory (two passes, row groups of 1,000 records).

    :param columns: Column order (the fields' top-level names); default: ``run_schema``'s, then as seen.
    :param run_schema: The types earlier parts of the run were written with; kept, so every part agrees.
    :return: The run's schema after this part (``run_schema`` plus the columns typed now).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    fixed = dict(run_schema or {})
    order: list[str] = list(columns) if columns else list(fixed)
    kinds: dict[str, set[str]] = {name: set() for name in order}
    for record in _read_jsonl(jsonl_path):
        for name, value in record.items():
            if name not in kinds:
                if columns:
                    continue
                if fixed:
                    raise ClioConfigError(
                        f"Parquet column {name!r} first appears after the first part of this run; all parts "
                        "of a run share one schema. Pass `fields` to fix the columns"
                    )
                kinds[name] = set()
                order.append(name)
            if value is not None:
                kinds[name].add(value_kind(value))
    types = {name: _merge_type(name, fixed.get(name), kinds[name]) for name in order}
    schema = pa.schema([(name, _arrow_type(types[name])) for name in order])
    with pq.ParquetWriter(parquet_path, schema) as writer:
        batch: list[dict[str, Any]] = []
        for record in _read_jsonl(jsonl_path):
            batch.append(record)
            if len(batch) >= PARQUET_ROW_GROUP:
                writer.write_table(_table(batch, schema, types))
                batch = []
        if batch:
            writer.write_table(_table(batch, schema, types))
    return types


def _table(batch: list[dict[str, Any]], schema: Any, types: Mapping[str, str]) -> Any:
    import pyarrow as pa

    data = {f.name: [_convert(record.get(f.name), types[f.name]) for record in batch] for f in schema}
    return pa.Table.from_pydict(data, schema=schema)
