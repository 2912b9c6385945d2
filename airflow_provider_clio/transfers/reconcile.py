# SPDX-License-Identifier: Apache-2.0
"""Mark the rows of a ClioToSqlOperator table whose records no longer exist in Clio (``mode="reconcile"``).

Clio has no ``deleted_since``: the only delete signal is an id missing from a complete list. The reconcile
scans every id (``fields=id``, 200 per request) and, only once the scan has completed, sets the deleted column
(``_clio_deleted_at`` by default) of the rows it did not see, among those loaded before the scan started
(``_loaded_at``, written by every upsert; a row loaded later may be a record created after the scan passed).
It refuses to mark more than a share of the live rows (default 5 %): what a token sees depends on the
authorizing user's role, so a re-authorization by a less privileged user must not "delete" half the table.
A later upsert of a marked id (the record is visible again) clears the mark.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import closing
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_clio.checkpoint import Checkpointer, MemoryCheckpointStore
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.extraction import Extraction, ExtractionPlan, Interval

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    from airflow_provider_clio.hooks.clio import ClioHook

__all__ = [
    "DEFAULT_DELETED_COLUMN",
    "DEFAULT_MAX_DELETED_SHARE",
    "IDS_PER_REQUEST",
    "LOADED_AT_COLUMN",
    "IdSink",
    "Reconcile",
    "loaded_at_now",
    "table_columns",
]

LOADED_AT_COLUMN = "_loaded_at"
"""Set by every upsert to the batch's commit time (UTC ISO-8601 text, fixed width, so it sorts as text)."""
DEFAULT_DELETED_COLUMN = "_clio_deleted_at"
DEFAULT_MAX_DELETED_SHARE = 0.05
IDS_PER_REQUEST = 200
_MARK_CHUNK = 500


def loaded_at_now() -> str:
    """The ``_loaded_at`` value of a commit made now."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def table_columns(db_hook: DbApiHook, table_parts: list[str]) -> set[str] | None:
    """Return the lower-cased column names of the table, ``None`` when it does not exist."""
    from sqlalchemy import inspect

    *schemas, name = table_parts
    engine = db_hook.get_sqlalchemy_engine()
    try:
        inspector = inspect(engine)
        if not inspector.has_table(name, schema=schemas[0] if schemas else None):
            return None
        return {
            str(c["name"]).lower()
            for c in inspector.get_columns(name, schema=schemas[0] if schemas else None)
        }
    finally:
        engine.dispose()


class IdSink:
    """Collect the ids of an id-only scan in memory (about 70 bytes per id); nothing is written."""

    def __init__(self) -> None:
        self.ids: set[int] = set()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Ids added since the last commit."""
        return self._pending

    def add(self, records: list[dict[str, Any]]) -> None:
        """Keep the ids of one page."""
        self.ids.update(int(record["id"]) for record in records)
        self._pending += len(records)

    def commit(self, index: int, token: str) -> int:
        """Nothing to make durable: a retried reconcile scans again from the first page."""
        count, self._pending = self._pending, 0
        return count

    def state(self) -> dict[str, Any]:
        """No state: the scan is not resumed across tries."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


class Reconcile:
    """
    One reconcile of ``table`` against ``endpoint``: prepare the columns, scan the ids, mark the missing rows.

    :param conn: An open DB-API connection of ``db_hook`` (autocommit off).
    :param quote: The sink's identifier quoting for this dialect.
    """

    def __init__(
        self,
        *,
        db_hook: DbApiHook,
        conn: Any,
        table_parts: list[str],
        quote: Any,
        deleted_column: str,
        max_deleted_share: float,
        allow_mass_delete: bool,
    ) -> None:
        self.db_hook = db_hook
        self.conn = conn
        self.table = ".".join(table_parts)
        self.qualified = ".".join(quote(part) for part in table_parts)
        self.quote = quote
        self.deleted_column = deleted_column
        self.max_deleted_share = max_deleted_share
        self.allow_mass_delete = allow_mass_delete
        self.log = db_hook.log

    def prepare(self, columns: set[str] | None, may_alter: bool) -> None:
        """Add ``_loaded_at`` and the deleted column when missing (or raise when the table may not change)."""
        if columns is None:
            raise ClioConfigError(f"Table {self.table} does not exist: load it before reconciling it")
        for name in (LOADED_AT_COLUMN, self.deleted_column):
            if name.lower() in columns:
                continue
            if not may_alter:
                raise ClioConfigError(
                    f"Table {self.table} has no column {name}, which reconcile needs, and "
                    f"create_table=False: add it (ALTER TABLE {self.table} ADD COLUMN {name} TEXT)"
                )
            self._execute(f"ALTER TABLE {self.qualified} ADD COLUMN {self.quote(name)} TEXT")
            self.log.info("Added column %s to %s", name, self.table)

    def scan(self, hook: ClioHook, endpoint: str, query_params: dict[str, Any]) -> tuple[set[int], int]:
        """Read every id of ``endpoint``; any failure raises, so a partial scan never marks anything."""
        params = {**query_params, "limit": IDS_PER_REQUEST}
        plan = ExtractionPlan.build(endpoint, ["id"], params, Interval(), required=("id",))
        sink = IdSink()
        result = Extraction(
            hook=hook,
            plan=plan,
            checkpointer=Checkpointer(MemoryCheckpointStore(), plan.key()),
            sink=sink,
            unit_size=10**9,
        ).run()
        return sink.ids, result.pages_read

    def mark(self, seen: set[int], scan_started: str) -> dict[str, int]:
        """Mark the live rows loaded before ``scan_started`` that the scan did not see; return the counts."""
        deleted, loaded = self.quote(self.deleted_column), self.quote(LOADED_AT_COLUMN)
        live = self._scalar(f"SELECT COUNT(*) FROM {self.qualified} WHERE {deleted} IS NULL")  # noqa: S608
        placeholder = self.db_hook.placeholder
        candidates = self._column(
            f"SELECT {self.quote('id')} FROM {self.qualified} WHERE {deleted} IS NULL "  # noqa: S608
            f"AND ({loaded} IS NULL OR {loaded} < {placeholder})",
            (scan_started,),
        )
        missing = sorted(set(candidates) - seen)
        counts = {"live": live, "candidates": len(candidates), "missing": len(missing), "marked": 0}
        if missing and len(missing) > self.max_deleted_share * live and not self.allow_mass_delete:
            raise ClioConfigError(
                f"Reconcile of {self.table} would mark {len(missing)} of {live} live row(s) deleted "
                f"({len(missing) / live:.1%}), more than max_deleted_share={self.max_deleted_share:.1%}; "
                f"the scan saw {len(seen)} id(s). The token may see fewer records than before (re-authorized "
                "by a less privileged user?). Nothing was marked. If the deletes are real, rerun with "
                "allow_mass_delete=True or a higher max_deleted_share"
            )
        if missing:
            counts["marked"] = self._mark(missing, loaded_at_now())
        return counts

    def _mark(self, ids: list[int], stamp: str) -> int:
        deleted = self.quote(self.deleted_column)
        marked = 0
        try:
            with closing(self.conn.cursor()) as cur:
                for start in range(0, len(ids), _MARK_CHUNK):
                    chunk = ids[start : start + _MARK_CHUNK]
                    marks = ", ".join([self.db_hook.placeholder] * len(chunk))
                    cur.execute(
                        f"UPDATE {self.qualified} SET {deleted} = {self.db_hook.placeholder} "  # noqa: S608
                        f"WHERE {deleted} IS NULL AND {self.quote('id')} IN ({marks})",
                        (stamp, *chunk),
                    )
                    marked += max(cur.rowcount, 0)
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        return marked

    def _execute(self, sql: str) -> None:
        with closing(self.conn.cursor()) as cur:
            cur.execute(sql)
        self.conn.commit()

    def _column(self, sql: str, params: Iterable[Any] = ()) -> list[int]:
        with closing(self.conn.cursor()) as cur:
            cur.execute(sql, tuple(params))
            rows = cur.fetchall()
        self.conn.commit()
        return [int(row[0]) for row in rows]

    def _scalar(self, sql: str) -> int:
        with closing(self.conn.cursor()) as cur:
            cur.execute(sql)
            row = cur.fetchone()
        self.conn.commit()
        return int(row[0]) if row else 0
