# SPDX-License-Identifier: Apache-2.0
"""Part-file writers for ClioExtractOperator: JSONL or Parquet, streamed through a local temporary file.

Records of the current part are appended to a local JSONL file page by page, so memory holds one page at a
time whatever the part or extraction size. On commit the part is converted if needed (Parquet is written in
row groups read back from the local file) and uploaded to ``<destination>/run=<token>/part-NNNNN.<ext>``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
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

    @property
    def pending(self) -> int:
        """Records written to the local part file since the last commit."""
        return self._pending

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
            write_parquet(self._buffer_path, local, self.columns)
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


def _arrow_type(kinds: set[str]) -> Any:
    import pyarrow as pa

    if kinds == {"bool"}:
        return pa.bool_()
    if kinds == {"int"}:
        return pa.int64()
    if kinds and kinds <= {"int", "float"}:
        return pa.float64()
    # Strings, nested values (as JSON text), mixed kinds and all-null columns.
    return pa.string()


def _convert(value: Any, arrow_type: Any) -> Any:
    import pyarrow as pa

    if value is None:
        return None
    if arrow_type == pa.string():
        return value if isinstance(value, str) else _dumps(value)
    if arrow_type == pa.float64():
        return float(value)
    return value


def write_parquet(jsonl_path: str, parquet_path: str, columns: Sequence[str] | None = None) -> None:
    """
    Convert a local JSONL file to Parquet in bounded memory (two passes, row groups of 1,000 records).

    Column types are inferred over the whole part: only-booleans, only-integers, numbers, else string; nested
    objects and lists are stored as JSON strings.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    order: list[str] = list(columns or [])
    kinds: dict[str, set[str]] = {name: set() for name in order}
    for record in _read_jsonl(jsonl_path):
        for name, value in record.items():
            if name not in kinds:
                if columns:
                    continue
                kinds[name] = set()
                order.append(name)
            if value is not None:
                kinds[name].add(value_kind(value))
    schema = pa.schema([(name, _arrow_type(kinds[name])) for name in order])
    with pq.ParquetWriter(parquet_path, schema) as writer:
        batch: list[dict[str, Any]] = []
        for record in _read_jsonl(jsonl_path):
            batch.append(record)
            if len(batch) >= PARQUET_ROW_GROUP:
                writer.write_table(_table(batch, schema))
                batch = []
        if batch:
            writer.write_table(_table(batch, schema))


def _table(batch: list[dict[str, Any]], schema: Any) -> Any:
    import pyarrow as pa

    data = {f.name: [_convert(record.get(f.name), f.type) for record in batch] for f in schema}
    return pa.Table.from_pydict(data, schema=schema)
