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

The manifest lists every part, but the checkpoint (rewritten after each part) must stay small whatever the
number of parts: the writer keeps the entries of the last parts in its checkpoint state and, every
``PART_LOG_SEGMENT`` parts, moves them to ``run=<token>/_parts-NNNNN.json`` beside the parts. The manifest's
file list is those segments plus the entries still in the state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_clio.columns import json_text, parquet_type, value_kind
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.storage import upload_atomic, write_json_atomic

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

__all__ = ["FILE_FORMATS", "PART_LOG_SEGMENT", "PartWriter", "part_name", "segment_name", "write_parquet"]

log = logging.getLogger(__name__)

FILE_FORMATS = {"jsonl": "jsonl", "parquet": "parquet"}
"""Supported ``file_format`` values and their file extensions."""

PARQUET_ROW_GROUP = 1000

PART_LOG_SEGMENT = 100
"""Part entries kept in the checkpoint before they are written to a segment file beside the parts."""


def part_name(token: str, index: int, file_format: str) -> str:
    """Return part ``index``'s path relative to the destination, e.g. ``run=<token>/part-00000.jsonl``."""
    return f"run={token}/part-{index:05d}.{FILE_FORMATS[file_format]}"


def segment_name(token: str, index: int) -> str:
    """Return the path of segment ``index`` of run ``token``'s part list, relative to the destination."""
    return f"run={token}/_parts-{index:05d}.json"


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
        self.recent: list[dict[str, Any]] = []
        """Manifest entries of the parts committed since the last segment was written."""
        self.segments = 0
        """Segments of the part list written beside the parts so far."""

    @property
    def pending(self) -> int:
        """Records written to the local part file since the last commit."""
        return self._pending

    def state(self) -> dict[str, Any]:
        """Return what a resumed try must reuse: the run's Parquet schema and the recent part entries."""
        state: dict[str, Any] = {"files": list(self.recent), "segments": self.segments}
        if self.schema:
            state["parquet_schema"] = dict(self.schema)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Continue a run from :meth:`state` saved in its checkpoint."""
        self.schema = dict(state.get("parquet_schema") or {})
        self.recent = [dict(entry) for entry in state.get("files") or []]
        self.segments = int(state.get("segments") or 0)

    def files(self, token: str) -> list[dict[str, Any]]:
        """Return the manifest entries of every part of run ``token``, in commit order."""
        entries: list[dict[str, Any]] = []
        for index in range(self.segments):
            entries.extend(json.loads((self.destination / segment_name(token, index)).read_text()))
        return entries + self.recent

    def add(self, records: list[dict[str, Any]]) -> None:
        """Append one page's records to the local part file."""
        if self._handle is None:
            self._handle = open(self._buffer_path, "w", encoding="utf-8")  # noqa: SIM115 - closed on commit
        for record in records:
            self._handle.write(json_text(record))
            self._handle.write("\n")
        self._pending += len(records)

    def commit(self, index: int, token: str) -> int:
        """Upload the local part as part ``index`` of run ``token``; return its record count."""
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
        upload_atomic(local, self.destination / relative)
        records = self._pending
        self._pending = 0
        for path in {self._buffer_path, local}:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        log.info("Wrote %s (%d records, %d bytes)", relative, records, size)
        self.recent.append({"path": relative, "records": records, "bytes": size})
        if len(self.recent) >= PART_LOG_SEGMENT:
            # Durable before the checkpoint that forgets these entries; rewritten as is if that save fails.
            write_json_atomic(self.destination / segment_name(token, self.segments), self.recent)
            self.segments += 1
            self.recent = []
        return records

    def close(self) -> None:
        """Drop any uncommitted local data."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _read_jsonl(path: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


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
        return value if isinstance(value, str) else json_text(value)
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
