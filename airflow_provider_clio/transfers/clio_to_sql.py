# SPDX-License-Identifier: Apache-2.0
"""Load one Clio endpoint into a SQL table through any common.sql ``DbApiHook``, upserting on ``id``.

Pages are grouped into batches of whole pages (about ``batch_size`` rows); each batch is one transaction, and
the resume checkpoint is saved only after that transaction commits. Rows are upserted on ``id``, so a batch
replayed after a crash between commit and checkpoint, or a rerun of the same interval, changes no row count.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_provider_clio.checkpoint import (
    Checkpointer,
    CheckpointStore,
    MemoryCheckpointStore,
    VariableCheckpointStore,
    store_for_context,
    variable_key,
)
from airflow_provider_clio.columns import sql_type, to_cell
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.extraction import Extraction
from airflow_provider_clio.fencing import attempt_of
from airflow_provider_clio.fields import top_level_names
from airflow_provider_clio.operators.base import ClioBaseOperator

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.sdk import Context

__all__ = ["ClioToSqlOperator", "SqlSink", "check_upsert_key", "split_table", "validate_identifier"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

UPSERT_ON_CONFLICT = frozenset({"sqlite", "postgresql", "postgres"})
UPSERT_ON_DUPLICATE_KEY = frozenset({"mysql", "mariadb"})


def validate_identifier(name: str, what: str) -> str:
    """Return ``name`` if it is a plain SQL identifier (letters, digits, underscores), else raise."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ClioConfigError(
            f"{what} {name!r} is not a plain identifier (letters, digits, underscores; no leading digit)"
        )
    return name


def split_table(table: str) -> list[str]:
    """Validate ``table`` or ``schema.table`` and return its parts."""
    parts = str(table or "").split(".")
    if len(parts) > 2:
        raise ClioConfigError(f"table {table!r}: expected 'table' or 'schema.table'")
    return [validate_identifier(part, "table name part") for part in parts]


def check_upsert_key(db_hook: DbApiHook, table: str) -> bool:
    """
    Return whether ``table`` exists; raise ClioConfigError when it has no primary or unique key on ``(id)``.

    ``CREATE TABLE IF NOT EXISTS`` keeps such a table: SQLite and PostgreSQL would fail on ``ON CONFLICT``
    once the first pages were read (every retry alike), MySQL would insert duplicates on every rerun.
    """
    from sqlalchemy import inspect

    *schemas, name = split_table(table)
    schema = schemas[0] if schemas else None
    engine = db_hook.get_sqlalchemy_engine()
    try:
        inspector = inspect(engine)
        if not inspector.has_table(name, schema=schema):
            return False
        keys = _unique_keys(inspector, name, schema)
    finally:
        engine.dispose()
    if ("id",) not in keys:
        found = ", ".join("(" + ", ".join(key) + ")" for key in sorted(keys)) or "none"
        raise ClioConfigError(
            f"Table {table} has no primary key or unique constraint on (id) (unique keys: {found}): rows "
            f"are upserted on id, so add one, e.g. ALTER TABLE {table} ADD PRIMARY KEY (id), or load into "
            "a new table"
        )
    return True


def _unique_keys(inspector: Any, name: str, schema: str | None) -> set[tuple[str, ...]]:
    """Return the column tuples of the table's primary key, unique constraints and unique indexes."""
    primary = inspector.get_pk_constraint(name, schema=schema) or {}
    candidates = [primary.get("constrained_columns") or []]
    candidates += [c.get("column_names") or [] for c in inspector.get_unique_constraints(name, schema=schema)]
    candidates += [
        i.get("column_names") or [] for i in inspector.get_indexes(name, schema=schema) if i.get("unique")
    ]
    return {tuple(str(column).lower() for column in columns) for columns in candidates if columns}


class SqlSink:
    """
    Buffer whole pages and write them as one upsert transaction per batch.

    :param hook: The target database hook.
    :param conn: An open DB-API connection of ``hook``, used for every batch.
    :param table: Validated ``table`` or ``schema.table``.
    :param columns: Column names, ``id`` first; ``None`` to take them from the first batch's keys (a later
        record with another key then fails with ``ClioConfigError``: pass ``fields``).
    :param create_table: Whether to create the table when it is missing.
    """

    def __init__(
        self,
        hook: DbApiHook,
        conn: Any,
        table: str,
        columns: Sequence[str] | None,
        create_table: bool = True,
    ) -> None:
        self.hook = hook
        self.conn = conn
        self.table_parts = split_table(table)
        self.columns: list[str] | None = _id_first(columns) if columns else None
        self.inferred = columns is None
        self.create_table = create_table
        self.dialect = _dialect_name(hook)
        self.table_ready = False
        self._rows: list[dict[str, Any]] = []
        self._ignored: set[str] = set()
        self.log = hook.log
        self.before_commit: Callable[[], None] | None = None
        """Called inside each batch's transaction right before ``COMMIT`` (the try-number fence)."""

    @property
    def pending(self) -> int:
        """Rows buffered since the last commit."""
        return len(self._rows)

    def state(self) -> dict[str, Any]:
        """Return the columns taken from the first batch, so a resumed try loads the same ones."""
        return {"columns": list(self.columns)} if self.inferred and self.columns else {}

    def restore(self, state: dict[str, Any]) -> None:
        """Reuse the columns an earlier try inferred (see :meth:`state`)."""
        columns = state.get("columns")
        if self.inferred and columns:
            self.columns = list(columns)

    def add(self, records: list[dict[str, Any]]) -> None:
        """Buffer one page's records."""
        self._rows.extend(records)

    def quote(self, name: str) -> str:
        """Quote a validated identifier for this dialect."""
        return f"`{name}`" if self.dialect in UPSERT_ON_DUPLICATE_KEY else f'"{name}"'

    @property
    def qualified_table(self) -> str:
        """The quoted, possibly schema-qualified table name."""
        return ".".join(self.quote(part) for part in self.table_parts)

    def ensure_table(self, sample: Sequence[Mapping[str, Any]]) -> None:
        """Fix the column list and create the table if it is missing (types inferred from ``sample``)."""
        if self.columns is None:
            seen: dict[str, None] = {}
            for record in sample:
                for name in record:
                    seen.setdefault(name, None)
            self.columns = _id_first(list(seen) or ["id"])
        for name in self.columns:
            validate_identifier(name, "column name")
        if self.create_table:
            definitions = ["{} BIGINT PRIMARY KEY".format(self.quote("id"))]
            for name in self.columns[1:]:
                column_type = sql_type(record.get(name) for record in sample)
                definitions.append(f"{self.quote(name)} {column_type}")
            ddl = f"CREATE TABLE IF NOT EXISTS {self.qualified_table} ({', '.join(definitions)})"
            with closing(self.conn.cursor()) as cur:
                cur.execute(ddl)
            self.conn.commit()
        self.table_ready = True

    def upsert_sql(self) -> str | None:
        """Return the dialect's single-row upsert statement, ``None`` to fall back to ``insert_rows``."""
        assert self.columns is not None
        columns = ", ".join(self.quote(c) for c in self.columns)
        placeholders = ", ".join([self.hook.placeholder] * len(self.columns))
        # Identifiers are validated and quoted; values are always bound parameters.
        insert = f"INSERT INTO {self.qualified_table} ({columns}) VALUES ({placeholders})"  # noqa: S608
        others = self.columns[1:]
        if self.dialect in UPSERT_ON_CONFLICT:
            if not others:
                return f"{insert} ON CONFLICT ({self.quote('id')}) DO NOTHING"
            updates = ", ".join(f"{self.quote(c)} = excluded.{self.quote(c)}" for c in others)
            return f"{insert} ON CONFLICT ({self.quote('id')}) DO UPDATE SET {updates}"
        if self.dialect in UPSERT_ON_DUPLICATE_KEY:
            target = others or ["id"]
            updates = ", ".join(f"{self.quote(c)} = VALUES({self.quote(c)})" for c in target)
            return f"{insert} ON DUPLICATE KEY UPDATE {updates}"
        return None

    def commit(self, index: int, token: str) -> int:
        """Upsert the buffered rows in one transaction; return how many."""
        if not self.table_ready:
            self.ensure_table(self._rows)
        assert self.columns is not None
        rows = [self._row(record) for record in self._rows]
        sql = self.upsert_sql()
        if sql is None:
            if self.before_commit is not None:
                self.before_commit()  # insert_rows commits on its own: check before it
            # Unknown dialect: the hook's own REPLACE/MERGE generation, one transaction for the batch.
            self.hook.insert_rows(
                ".".join(self.table_parts),
                rows,
                target_fields=self.columns,
                replace=True,
                replace_index=["id"],
                commit_every=len(rows),
            )
        else:
            try:
                with closing(self.conn.cursor()) as cur:
                    cur.executemany(sql, rows)
                if self.before_commit is not None:
                    self.before_commit()
                self.conn.commit()
            except BaseException:
                self.conn.rollback()
                raise
        count = len(rows)
        self._rows = []
        self.log.info("Upserted batch %d: %d row(s) into %s", index, count, ".".join(self.table_parts))
        return count

    def _row(self, record: Mapping[str, Any]) -> tuple[Any, ...]:
        assert self.columns is not None
        extra = set(record) - set(self.columns) - self._ignored
        if extra and self.inferred:
            # The columns came from the first batch; dropping these values silently would lose data.
            raise ClioConfigError(
                f"Record id={record.get('id')!r} has field(s) {', '.join(sorted(extra))} that the first "
                f"batch did not have, so table {'.'.join(self.table_parts)} has no column for them. Pass "
                "`fields` to fix the columns (and create or alter the table to match)"
            )
        if extra:
            self._ignored |= extra
            self.log.warning("Ignoring field(s) not in the table's columns: %s", ", ".join(sorted(extra)))
        return tuple(to_cell(record.get(name)) for name in self.columns)


def _fallback_store(context: Context) -> CheckpointStore:
    # Before Airflow 3.3 a Variable carries the checkpoint across tries; outside a task nothing follows.
    if context.get("ti") is None:
        return MemoryCheckpointStore()
    return VariableCheckpointStore(variable_key(context))


def _id_first(columns: Sequence[str]) -> list[str]:
    return ["id", *[c for c in columns if c != "id"]]


def _dialect_name(hook: Any) -> str:
    try:
        name = str(hook.dialect_name or "").lower()
    except Exception:
        name = ""
    if not name or name == "default":
        name = str(getattr(getattr(hook, "connection", None), "conn_type", "") or "").lower()
    return name


class ClioToSqlOperator(ClioBaseOperator):
    """
    Load the records of one Clio endpoint into a SQL table, upserting on ``id``; return a small summary.

    The table is created when missing: ``id BIGINT PRIMARY KEY`` plus one column per top-level field (or
    per key of the first batch when ``fields`` is not given, in which case a later record with another key
    fails with ``ClioConfigError`` rather than losing that value); booleans get ``BOOLEAN`` and numbers
    ``NUMERIC`` (exact, so amounts are never rounded) when every sampled value agrees, everything else
    (timestamps included) is ``TEXT``, and nested objects and lists are stored as JSON text. Upserts use
    ``INSERT ... ON CONFLICT (id) DO UPDATE`` on SQLite and PostgreSQL, ``ON DUPLICATE KEY UPDATE`` on MySQL,
    and the hook's ``insert_rows(replace=True)`` elsewhere. An existing table without a primary or unique key
    on ``id`` fails the task with ``ClioConfigError`` before any request.

    The returned XCom holds ``records``, ``pages``, ``batches``, ``table``, ``rate_limited``, ``seconds``,
    ``interval`` and ``resumed``.

    :param sql_conn_id: A connection whose hook is a common.sql ``DbApiHook`` (SQLite, PostgreSQL, MySQL...).
    :param table: Target table, ``table`` or ``schema.table`` (plain identifiers; templated).
    :param batch_size: Target rows per transaction (default 1000); batches hold whole pages.
    :param create_table: Create the table when it is missing (default ``True``).
    :param endpoint: List endpoint, e.g. ``grow/matters`` (templated).
    :param fields: Fields to select, list or string form (templated); ``id`` is always loaded.
    :param kwargs: ``query_params``, ``updated_since``, ``updated_until``, ``clio_conn_id``, ``region``,
        ``token_store``, ``request_retry`` as documented on :class:`ClioBaseOperator`, and ``BaseOperator``'s.
    """

    template_fields: Sequence[str] = (*ClioBaseOperator.template_fields, "table")

    def __init__(
        self,
        *,
        sql_conn_id: str,
        table: str,
        batch_size: int = 1000,
        create_table: bool = True,
        **kwargs: Any,
    ) -> None:
        if batch_size < 1:
            raise ClioConfigError(f"batch_size must be at least 1, got {batch_size}")
        if table and "{{" not in table:
            split_table(table)
        super().__init__(**kwargs)
        self.sql_conn_id = sql_conn_id
        self.table = table
        self.batch_size = batch_size
        self.create_table = create_table

    def get_db_hook(self) -> DbApiHook:
        """Return the common.sql hook of ``sql_conn_id``."""
        from airflow.providers.common.sql.hooks.sql import DbApiHook

        hook = BaseHook.get_connection(self.sql_conn_id).get_hook()
        if not isinstance(hook, DbApiHook):
            raise ClioConfigError(
                f"sql_conn_id {self.sql_conn_id!r} has hook {type(hook).__name__}, not a common.sql DbApiHook"
            )
        return hook

    def execute(self, context: Context) -> dict[str, Any]:
        """Extract and upsert batch by batch; return the summary."""
        started = datetime.now(timezone.utc)
        split_table(self.table)
        plan = self.build_plan(context, required=("id",))
        db_hook = self.get_db_hook()
        # Before the first request: a table the upsert cannot work on would fail every retry after the reads.
        if not check_upsert_key(db_hook, self.table) and not self.create_table:
            raise ClioConfigError(f"Table {self.table} does not exist and create_table=False")
        hook = self.get_hook()
        key = plan.key(api=hook.base_url, target=f"{self.sql_conn_id}/{self.table}")
        store = store_for_context(context, lambda: _fallback_store(context))
        checkpointer = Checkpointer(store, key, owner=attempt_of(context))
        self.log.info(
            "Loading %s (fields=%s, interval=%s) into %s via %s",
            plan.endpoint,
            plan.fields or "<default>",
            plan.interval.to_dict(),
            self.table,
            self.sql_conn_id,
        )
        columns = top_level_names(plan.fields) or None
        with closing(db_hook.get_conn()) as conn:
            if db_hook.supports_autocommit:
                db_hook.set_autocommit(conn, False)
            sink = SqlSink(db_hook, conn, self.table, columns, self.create_table)
            sink.before_commit = checkpointer.check
            result = Extraction(
                hook=hook, plan=plan, checkpointer=checkpointer, sink=sink, unit_size=self.batch_size
            ).run()
            if not sink.table_ready and columns is not None and self.create_table:
                # Nothing to load, but downstream queries expect the table to exist.
                sink.ensure_table([])
        checkpointer.clear()
        state = result.state
        summary = {
            "records": state.records,
            "pages": state.pages,
            "batches": state.units,
            "table": self.table,
            "rate_limited": state.rate_limited,
            "seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 3),
            "interval": plan.interval.to_dict(),
            "resumed": result.resumed,
            "resumed_batches": result.resumed_units,
        }
        self._summary = summary
        return summary

    def _ol_outputs(self, summary: Mapping[str, Any] | None) -> list[Any]:
        from airflow.providers.common.compat.openlineage.facet import (
            OutputDataset,
            OutputStatisticsOutputDatasetFacet,
        )

        table = str(self.table or "")
        if not table or "{{" in table:
            return []
        try:
            conn = BaseHook.get_connection(self.sql_conn_id)
            authority = conn.host or ""
            if conn.port:
                authority = f"{authority}:{conn.port}"
            namespace = f"{conn.conn_type}://{authority}"
            name = f"{conn.schema}.{table}" if conn.schema and conn.conn_type != "sqlite" else table
        except Exception:
            namespace, name = f"sql://{self.sql_conn_id}", table
        facets: dict[str, Any] = {}
        if summary:
            facets["outputStatistics"] = OutputStatisticsOutputDatasetFacet(rowCount=summary.get("records"))
        return [OutputDataset(namespace=namespace, name=name, outputFacets=facets)]
