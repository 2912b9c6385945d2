# SPDX-License-Identifier: Apache-2.0
"""The SQL side of ClioToSqlOperator: identifier checks, the upsert-key check, and the batch upsert sink.

Every upsert also sets ``_loaded_at`` (the batch's commit time) when the table has that column, and clears the
reconcile's deleted column when the table has one (a record that is visible again is not deleted).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Any

from airflow_provider_clio.columns import sql_type, to_cell
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.transfers.reconcile import LOADED_AT_COLUMN, loaded_at_now

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

__all__ = [
    "UPSERT_ON_CONFLICT",
    "UPSERT_ON_DUPLICATE_KEY",
    "SqlSink",
    "check_upsert_key",
    "dialect_name",
    "split_table",
    "validate_identifier",
]

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
    :param loaded_at: Set ``_loaded_at`` on every upserted row (the table has, or is created with, it).
    :param clear_column: A column set to NULL on every upserted row (the reconcile's deleted column), or None.
    """

    def __init__(
        self,
        hook: DbApiHook,
        conn: Any,
        table: str,
        columns: Sequence[str] | None,
        create_table: bool = True,
        loaded_at: bool = True,
        clear_column: str | None = None,
    ) -> None:
        self.hook = hook
        self.conn = conn
        self.table_parts = split_table(table)
        self.columns: list[str] | None = _id_first(columns) if columns else None
        self.inferred = columns is None
        self.create_table = create_table
        self.system_columns = [
            *([LOADED_AT_COLUMN] if loaded_at else []),
            *([validate_identifier(clear_column, "column name")] if clear_column else []),
        ]
        self.dialect = dialect_name(hook)
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
            if LOADED_AT_COLUMN in self.system_columns:
                definitions.append(f"{self.quote(LOADED_AT_COLUMN)} TEXT")
            ddl = f"CREATE TABLE IF NOT EXISTS {self.qualified_table} ({', '.join(definitions)})"
            with closing(self.conn.cursor()) as cur:
                cur.execute(ddl)
            self.conn.commit()
        self.table_ready = True

    def upsert_sql(self) -> str | None:
        """Return the dialect's single-row upsert statement, ``None`` to fall back to ``insert_rows``."""
        every = self.target_columns
        columns = ", ".join(self.quote(c) for c in every)
        placeholders = ", ".join([self.hook.placeholder] * len(every))
        # Identifiers are validated and quoted; values are always bound parameters.
        insert = f"INSERT INTO {self.qualified_table} ({columns}) VALUES ({placeholders})"  # noqa: S608
        others = every[1:]
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

    @property
    def target_columns(self) -> list[str]:
        """The columns every upsert writes: the record's, then ``_loaded_at`` and the cleared column."""
        assert self.columns is not None
        return [*self.columns, *(c for c in self.system_columns if c not in self.columns)]

    def commit(self, index: int, token: str) -> int:
        """Upsert the buffered rows in one transaction; return how many."""
        if not self.table_ready:
            self.ensure_table(self._rows)
        assert self.columns is not None
        system = tuple(
            loaded_at_now() if name == LOADED_AT_COLUMN else None
            for name in self.system_columns
            if name not in self.columns
        )
        rows = [self._row(record) + system for record in self._rows]
        sql = self.upsert_sql()
        if sql is None:
            if self.before_commit is not None:
                self.before_commit()  # insert_rows commits on its own: check before it
            # Unknown dialect: the hook's own REPLACE/MERGE generation, one transaction for the batch.
            self.hook.insert_rows(
                ".".join(self.table_parts),
                rows,
                target_fields=self.target_columns,
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


def _id_first(columns: Sequence[str]) -> list[str]:
    return ["id", *[c for c in columns if c != "id"]]


def dialect_name(hook: Any) -> str:
    try:
        name = str(hook.dialect_name or "").lower()
    except Exception:
        name = ""
    if not name or name == "default":
        name = str(getattr(getattr(hook, "connection", None), "conn_type", "") or "").lower()
    return name
