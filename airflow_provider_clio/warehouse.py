# SPDX-License-Identifier: Apache-2.0
"""Bulk-load a committed Clio extraction into a warehouse table: stage it, keep the latest row per id, MERGE.

The pattern (docs/warehouse.md): ``ClioExtractOperator`` writes Parquet parts and a ``_manifest.json`` to
object storage and announces the committed folder on its Asset (:func:`announce_extract`); a DAG scheduled on
that Asset calls :func:`merge_extract` for each announced folder (:func:`announced_extracts`).

:func:`merge_extract`, in one transaction:

1. streams the manifest's records (``read_extract``) into a staging table of text columns (``COPY`` on
   PostgreSQL), with their position in the extraction;
2. locks the target against other loads (not readers) and adds any column it lacks, nullable (schema
   drift: a field Clio added or the DAG newly selects);
3. keeps one staged row per ``id``, the one with the latest ``updated_at`` (the last one on a tie), so the
   target ends with one row per id even where keys are not enforced;
4. ``MERGE`` on ``id``: inserts new ids; updates a row only when the staged one is not older and differs, so
   a rerun of the same extraction changes nothing (not even the metadata columns).

Metadata columns added to every target: ``_loaded_at`` (the loading transaction's time), ``_clio_region``
and ``_clio_run`` (the extraction run that delivered the row's current version). A field no longer selected
keeps its column: existing rows keep their last value, new rows get NULL.

Executed dialect: ``postgres`` (15+, for ``MERGE``). Snowflake and BigQuery are documented in
docs/warehouse.md with their own providers' operators. (Slightly over 400 lines: the loader's SQL and the
Asset helpers that feed it read best together.)
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_clio.columns import json_text, value_kind
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.fields import parse_fields
from airflow_provider_clio.operators.extract import MANIFEST_FILE, read_extract

__all__ = [
    "DIALECTS",
    "METADATA_COLUMNS",
    "ExtractColumns",
    "announce_extract",
    "announced_extracts",
    "committed_parts",
    "merge_extract",
]

METADATA_COLUMNS: Mapping[str, str] = {
    "_loaded_at": "TIMESTAMPTZ",
    "_clio_region": "TEXT",
    "_clio_run": "TEXT",
}
"""The columns the loader adds to every target, with their PostgreSQL types."""

DIALECTS = ("postgres",)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PART = re.compile(r"run=[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
_SEQ = "_clio_seq"
"""Staging-only column: the record's position in the extraction, the tie-break of the dedupe."""

# Logical column type -> PostgreSQL type of a column the loader creates.
_PG_TYPES = {
    "bigint": "BIGINT",
    "numeric": "NUMERIC",
    "boolean": "BOOLEAN",
    "timestamp": "TIMESTAMPTZ",
    "json": "JSONB",
    "text": "TEXT",
}


@dataclass
class ExtractColumns:
    """
    The columns of one extraction and the logical type each would get in a new target column.

    :param nested: Names selected with braces (``client{id,name}``): JSON even when stored as JSON text
        (Parquet parts hold nested values as strings).
    """

    nested: frozenset[str] = frozenset()
    kinds: dict[str, set[str]] = field(default_factory=dict)

    def observe(self, record: Mapping[str, Any]) -> None:
        """Record the columns and value kinds of one record (columns keep their first-seen order)."""
        for name, value in record.items():
            seen = self.kinds.setdefault(name, set())
            if value is not None:
                seen.add(value_kind(value))

    @property
    def names(self) -> list[str]:
        """The data columns in first-seen order."""
        return list(self.kinds)

    def logical_type(self, name: str) -> str:
        """Return ``bigint``, ``numeric``, ``boolean``, ``timestamp``, ``json`` or ``text`` for ``name``."""
        kinds = self.kinds.get(name, set())
        if name == "id" and kinds <= {"int"}:
            return "bigint"
        if name in self.nested or "json" in kinds:
            return "json"
        if kinds == {"bool"}:
            return "boolean"
        if kinds and kinds <= {"int", "float"}:
            return "numeric"
        # Clio's *_at fields are ISO-8601 instants; other strings (dates included) and all-null columns: text.
        if name.endswith("_at") and kinds == {"str"}:
            return "timestamp"
        return "text"

    def cell(self, name: str, value: Any) -> str:
        """Return one CSV cell: NULL unquoted and empty, every value quoted (so ``""`` stays a string)."""
        if value is None:
            return ""
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (dict, list)):
            text = json_text(value)
        else:
            text = str(value)
        return '"' + text.replace('"', '""') + '"'


def merge_extract(
    conn: Any,
    destination: str | ObjectStoragePath,
    target: str,
    *,
    region: str,
    dialect: str = "postgres",
) -> dict[str, Any]:
    """
    Load the extraction committed at ``destination`` into ``target`` (staging → dedupe → MERGE on ``id``).

    Creates ``target`` when missing (``id`` as primary key, the metadata columns of :data:`METADATA_COLUMNS`)
    and commits ``conn`` on success (rolls back on failure). The extraction must select ``id`` and
    ``updated_at``.

    :param conn: A DB-API connection (``psycopg2`` or ``psycopg`` 3 for ``postgres``), e.g.
        ``PostgresHook(...).get_conn()``.
    :param destination: The extract operator's rendered ``destination`` (a committed folder).
    :param target: Table name, optionally schema-qualified (``analytics.clio_contacts``).
    :param region: The Clio region the extraction came from, stored in ``_clio_region``.
    :param dialect: ``postgres`` (see :data:`DIALECTS`).
    :return: ``run``, ``staged`` (records read), ``merged`` (distinct ids), ``inserted``, ``updated``,
        ``unchanged`` and ``added_columns``.
    :raise ClioConfigError: bad names, an extraction without ``id``/``updated_at``, an unknown dialect.
    """
    if dialect not in DIALECTS:
        raise ClioConfigError(f"dialect must be one of {list(DIALECTS)}, got {dialect!r}")
    table = _qualified(target)
    root = destination if isinstance(destination, ObjectStoragePath) else ObjectStoragePath(destination)
    manifest = _manifest(root)
    columns = ExtractColumns(
        nested=frozenset(f.name for f in parse_fields(manifest.get("fields")) if f.nested is not None)
    )
    with tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as spool:
        staged = _spool(read_extract(root), columns, spool)
        if _manifest(root).get("run") != manifest.get("run"):
            # A rerun committed while this load read the parts: what was read may mix two runs.
            raise RuntimeError(f"{root} was re-committed while loading; retry to load the new run")
        if staged == 0:
            return _summary(manifest, 0, 0, 0, 0)
        for required in ("id", "updated_at"):
            if required not in columns.kinds:
                raise ClioConfigError(f"{root} has no {required!r} column: select it in the extract's fields")
        spool.seek(0)
        # One transaction, also on an autocommit connection: the staging table lives until the commit.
        autocommit = bool(getattr(conn, "autocommit", False))
        if autocommit:
            conn.autocommit = False
        try:
            with contextlib.closing(conn.cursor()) as cur:
                result = _PostgresMerge(cur, table, columns, region, str(manifest.get("run"))).run(spool)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            if autocommit:
                conn.autocommit = True
    return _summary(manifest, staged, *result)


def _spool(records: Iterable[Mapping[str, Any]], columns: ExtractColumns, spool: IO[str]) -> int:
    """Write records to ``spool`` as JSON lines (columns are known only at the end); return the count."""
    count = 0
    for record in records:
        columns.observe(record)
        spool.write(json.dumps(record, ensure_ascii=False, default=str))
        spool.write("\n")
        count += 1
    return count


def _summary(
    manifest: Mapping[str, Any],
    staged: int,
    merged: int,
    inserted: int,
    updated: int,
    added: Sequence[str] = (),
) -> dict[str, Any]:
    return {
        "run": manifest.get("run"),
        "staged": staged,
        "merged": merged,
        "inserted": inserted,
        "updated": updated,
        "unchanged": merged - inserted - updated,
        "added_columns": list(added),
    }


class _PostgresMerge:
    """The statements of one load on PostgreSQL 15+, on one cursor inside the caller's transaction."""

    def __init__(self, cur: Any, table: str, columns: ExtractColumns, region: str, run: str) -> None:
        self.cur = cur
        self.table = table
        self.columns = columns
        self.region = region
        self.run_token = run
        for name in columns.names:
            _identifier(name)

    def run(self, spool: IO[str]) -> tuple[int, int, int, list[str]]:
        """Create/extend the target, stage, dedupe and merge; return (merged, inserted, updated, added)."""
        types, added = self._prepare_target()
        self.cur.execute(
            "CREATE TEMP TABLE _clio_stage ("
            + ", ".join([*(f"{_q(n)} TEXT" for n in self.columns.names), f"{_SEQ} BIGINT"])
            + ") ON COMMIT DROP"
        )
        with tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as csv_file:
            self._write_csv(spool, csv_file)
            csv_file.seek(0)
            _copy(self.cur, "COPY _clio_stage FROM STDIN WITH (FORMAT csv)", csv_file)
        self.cur.execute(f"SELECT count(*) FROM {self.table}")  # noqa: S608 - validated identifiers
        before = self.cur.fetchone()[0]
        self.cur.execute(self._merge_sql(types), {"region": self.region, "run": self.run_token})
        merged_rows = self.cur.rowcount
        self.cur.execute(f"SELECT count(*) FROM {self.table}")  # noqa: S608 - validated identifiers
        inserted = self.cur.fetchone()[0] - before
        self.cur.execute("SELECT count(DISTINCT id) FROM _clio_stage")
        distinct = self.cur.fetchone()[0]
        return distinct, inserted, merged_rows - inserted, added

    def _write_csv(self, spool: IO[str], out: IO[str]) -> None:
        names = self.columns.names
        for seq, line in enumerate(spool):
            record = json.loads(line)
            cells = [self.columns.cell(name, record.get(name)) for name in names]
            out.write(",".join([*cells, str(seq)]) + "\n")

    def _prepare_target(self) -> tuple[dict[str, str], list[str]]:
        """Create the target or add its missing columns; return (column -> SQL type, added columns)."""
        wanted = {name: _PG_TYPES[self.columns.logical_type(name)] for name in self.columns.names}
        self.cur.execute("SELECT to_regclass(%s)", (self.table,))
        if self.cur.fetchone()[0] is None:
            cols = [f"{_q(n)} {t}{' PRIMARY KEY' if n == 'id' else ''}" for n, t in wanted.items()]
            cols += [f"{_q(n)} {t}" for n, t in METADATA_COLUMNS.items()]
            self.cur.execute(f"CREATE TABLE IF NOT EXISTS {self.table} ({', '.join(cols)})")
            return {**wanted, **METADATA_COLUMNS}, []
        # One load of a target at a time (readers go on): two MERGEs inserting the same new id would collide.
        self.cur.execute(f"LOCK TABLE {self.table} IN SHARE ROW EXCLUSIVE MODE")
        existing = self._target_types()
        added = [name for name in [*wanted, *METADATA_COLUMNS] if name not in existing]
        for name in added:
            # Nullable: rows loaded before the field existed have no value for it.
            sql_type = wanted.get(name) or METADATA_COLUMNS[name]
            self.cur.execute(f"ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS {_q(name)} {sql_type}")
            existing[name] = sql_type
        return existing, [name for name in added if name in wanted]

    def _target_types(self) -> dict[str, str]:
        self.cur.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (self.table,),
        )
        return dict(self.cur.fetchall())

    def _merge_sql(self, types: Mapping[str, str]) -> str:
        """The MERGE of the latest staged row per id; casts each text cell to the target column's type."""
        names = self.columns.names
        data = [n for n in names if n != "id"]
        casts = ", ".join(f"{_q(n)}::{types[n]} AS {_q(n)}" for n in names)
        latest = (
            f"SELECT {casts} FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY "  # noqa: S608 - quoted names
            f"updated_at::timestamptz DESC NULLS LAST, {_SEQ} DESC) AS _rank FROM _clio_stage) AS ranked "
            "WHERE _rank = 1"
        )
        differs = " IS DISTINCT FROM ".join(
            f"ROW({', '.join(f'{side}.{_q(n)}' for n in data)})" for side in "ts"
        )
        meta = "now(), %(region)s, %(run)s"
        meta_sets = ["_loaded_at = now()", "_clio_region = %(region)s", "_clio_run = %(run)s"]
        sets = ", ".join([*(f"{_q(n)} = s.{_q(n)}" for n in data), *meta_sets])
        return (
            f"MERGE INTO {self.table} AS t USING ({latest}) AS s ON t.id = s.id "  # noqa: S608 - quoted names
            "WHEN MATCHED AND (t.updated_at IS NULL OR s.updated_at >= t.updated_at) "
            f"AND {differs} THEN UPDATE SET {sets} "
            f"WHEN NOT MATCHED THEN INSERT ({', '.join([*map(_q, names), *METADATA_COLUMNS])}) "
            f"VALUES ({', '.join(f's.{_q(n)}' for n in names)}, {meta})"
        )


def _copy(cur: Any, sql: str, source: IO[str]) -> None:
    """Run ``COPY ... FROM STDIN`` with psycopg2 (``copy_expert``) or psycopg 3 (``copy``)."""
    if hasattr(cur, "copy_expert"):
        cur.copy_expert(sql, source)
        return
    with cur.copy(sql) as copy:
        while chunk := source.read(1 << 16):
            copy.write(chunk)


def _manifest(root: ObjectStoragePath) -> dict[str, Any]:
    path = root / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"no committed Clio extraction at {root}: {MANIFEST_FILE} is missing")
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ClioConfigError(f"{path} is not a Clio extraction manifest")
    return value


def _identifier(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise ClioConfigError(f"{name!r} is not a plain SQL identifier (letters, digits, underscores)")
    return name


def _q(name: str) -> str:
    return f'"{_identifier(name)}"'


def _qualified(target: str) -> str:
    """Quote ``table`` or ``schema.table`` (each part a plain identifier)."""
    parts = str(target).split(".")
    if not 1 <= len(parts) <= 2:
        raise ClioConfigError(f"target must be 'table' or 'schema.table', got {target!r}")
    return ".".join(_q(part) for part in parts)


def committed_parts(destination: str | ObjectStoragePath) -> list[str]:
    """
    Return the part files the manifest at ``destination`` commits, relative to it, in extraction order.

    For warehouses that load files themselves (Snowflake ``COPY INTO ... FILES = (...)``, BigQuery
    ``source_objects``): name exactly these files, never a listing of the folder, which may also hold a
    superseded or in-progress ``run=`` folder.
    """
    root = destination if isinstance(destination, ObjectStoragePath) else ObjectStoragePath(destination)
    paths = [entry.get("path") if isinstance(entry, Mapping) else None for entry in _manifest(root)["files"]]
    for path in paths:
        if not isinstance(path, str) or not _PART.fullmatch(path) or ".." in path.split("/"):
            raise ClioConfigError(f"{root / MANIFEST_FILE} lists {path!r}, which is not a part file of it")
    return [str(path) for path in paths]


def announce_extract(*assets: Any) -> Callable[[Any, Any], None]:
    """
    Return a ``post_execute`` callable that puts the committed folder on the extract task's Asset events.

    ``ClioExtractOperator(..., outlets=[asset], post_execute=announce_extract(asset))``: every event of
    ``asset`` then carries ``extra = {"destination", "run", "records", "region", "endpoint"}``, which is what
    a DAG scheduled on the Asset needs to load exactly that folder (the destination is usually templated
    per interval, so the Asset names the root and the event names the folder).
    """

    def post_execute(context: Any, result: Any = None) -> None:
        if not isinstance(result, Mapping) or not result.get("manifest"):
            return
        task = context["task"]
        extra = {
            "destination": str(result["manifest"]).removesuffix(f"/{MANIFEST_FILE}"),
            "run": result.get("run"),
            "records": result.get("records"),
            "region": getattr(task, "region", None),
            "endpoint": getattr(task, "endpoint", None),
        }
        for asset in assets:
            context["outlet_events"][asset].extra.update(extra)

    return post_execute


def announced_extracts(events: Sequence[Any] | None) -> list[dict[str, Any]]:
    """
    Return the ``extra`` of the triggering Asset events that announce a folder, oldest first, one per folder.

    :param events: ``triggering_asset_events[asset]`` of an Asset-scheduled run (several events queue up when
        the extract ran more than once before this run started).
    """
    latest: dict[str, dict[str, Any]] = {}
    for event in events or ():
        extra = dict(getattr(event, "extra", None) or {})
        if extra.get("destination"):
            latest.pop(extra["destination"], None)  # a rerun of the same interval: keep its place as latest
            latest[extra["destination"]] = extra
    return list(latest.values())
