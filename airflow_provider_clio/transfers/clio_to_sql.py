# SPDX-License-Identifier: Apache-2.0
"""Load one Clio endpoint into a SQL table through any common.sql ``DbApiHook``, upserting on ``id``.

Pages are grouped into batches of whole pages (about ``batch_size`` rows); each batch is one transaction, and
the resume checkpoint is saved only after that transaction commits. Rows are upserted on ``id``, so a batch
replayed after a crash between commit and checkpoint, or a rerun of the same interval, changes no row count.
``mode="reconcile"`` marks the rows whose records Clio no longer has (:mod:`.reconcile`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
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
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.extraction import Extraction
from airflow_provider_clio.fencing import attempt_of
from airflow_provider_clio.fields import top_level_names
from airflow_provider_clio.modes import (
    FULL,
    INTERVAL,
    RECONCILE,
    SINCE_LAST_SUCCESS,
    check_mode,
    effective_mode,
)
from airflow_provider_clio.operators.base import ClioBaseOperator
from airflow_provider_clio.transfers.reconcile import (
    DEFAULT_DELETED_COLUMN,
    DEFAULT_MAX_DELETED_SHARE,
    LOADED_AT_COLUMN,
    Reconcile,
    loaded_at_now,
    table_columns,
)
from airflow_provider_clio.transfers.sql_sink import (
    SqlSink,
    check_upsert_key,
    split_table,
    validate_identifier,
)

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.sdk import Context

__all__ = ["ClioToSqlOperator", "SqlSink", "check_upsert_key", "split_table", "validate_identifier"]


def _fallback_store(context: Context) -> CheckpointStore:
    # Before Airflow 3.3 a Variable carries the checkpoint across tries; outside a task nothing follows.
    if context.get("ti") is None:
        return MemoryCheckpointStore()
    return VariableCheckpointStore(variable_key(context))


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

    Every upsert sets ``_loaded_at`` (the batch's commit time, UTC ISO-8601 text; the column is added to
    an existing table that lacks it unless ``create_table=False``) and clears ``deleted_column`` when the
    table has it. ``mode="reconcile"`` scans every id instead and marks the rows Clio no longer has in
    ``deleted_column`` (see :mod:`airflow_provider_clio.transfers.reconcile`).

    The returned XCom holds ``records``, ``pages``, ``batches``, ``table``, ``rate_limited``, ``seconds``,
    ``interval``, ``mode`` and ``resumed``; a reconcile's holds ``scanned``, ``pages``, ``live``,
    ``candidates``, ``missing``, ``marked``, ``table``, ``rate_limited``, ``seconds`` and ``scan_started``.

    :param sql_conn_id: A connection whose hook is a common.sql ``DbApiHook`` (SQLite, PostgreSQL, MySQL...).
    :param table: Target table, ``table`` or ``schema.table`` (plain identifiers; templated).
    :param batch_size: Target rows per transaction (default 1000); batches hold whole pages.
    :param create_table: Create the table when it is missing, and add ``_loaded_at`` (and, reconciling, the
        deleted column) when an existing table lacks it (default ``True``).
    :param mode: ``"full"``, ``"interval"``, ``"since_last_success"`` (see :class:`ClioBaseOperator`) or
        ``"reconcile"``: an id-only scan marking deleted rows (no ``fields``, ``updated_since``,
        ``overlap``).
    :param deleted_column: The column a reconcile sets to the time it found a row's record gone (default
        ``_clio_deleted_at``); loads clear it when they upsert the id again.
    :param max_deleted_share: A reconcile refuses (``ClioConfigError``, nothing marked) to mark more than this
        share of the live rows (default ``0.05``).
    :param allow_mass_delete: Mark however many rows are missing (default ``False``), e.g. for one manual run
        after checking that the records were really deleted.
    :param endpoint: List endpoint, e.g. ``grow/matters`` (templated).
    :param fields: Fields to select, list or string form (templated); ``id`` is always loaded.
    :param kwargs: ``query_params``, ``updated_since``, ``updated_until``, ``overlap``, ``clio_conn_id``,
        ``region``, ``token_store``, ``request_retry`` as documented on :class:`ClioBaseOperator`, and
        ``BaseOperator``'s.
    """

    template_fields: Sequence[str] = (*ClioBaseOperator.template_fields, "table")
    allowed_modes = (FULL, INTERVAL, SINCE_LAST_SUCCESS, RECONCILE)

    def __init__(
        self,
        *,
        sql_conn_id: str,
        table: str,
        batch_size: int = 1000,
        create_table: bool = True,
        deleted_column: str = DEFAULT_DELETED_COLUMN,
        max_deleted_share: float = DEFAULT_MAX_DELETED_SHARE,
        allow_mass_delete: bool = False,
        **kwargs: Any,
    ) -> None:
        if batch_size < 1:
            raise ClioConfigError(f"batch_size must be at least 1, got {batch_size}")
        if table and "{{" not in table:
            split_table(table)
        validate_identifier(deleted_column, "deleted_column")
        if not 0 <= max_deleted_share <= 1:
            raise ClioConfigError(f"max_deleted_share must be between 0 and 1, got {max_deleted_share}")
        if kwargs.get("mode") == RECONCILE and kwargs.get("fields") is not None:
            raise ClioConfigError("mode='reconcile' reads ids only: do not pass fields")
        super().__init__(**kwargs)
        self.sql_conn_id = sql_conn_id
        self.table = table
        self.batch_size = batch_size
        self.create_table = create_table
        self.deleted_column = deleted_column
        self.max_deleted_share = max_deleted_share
        self.allow_mass_delete = allow_mass_delete

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
        """Extract and upsert batch by batch (or reconcile); return the summary."""
        started = datetime.now(timezone.utc)
        split_table(self.table)
        if self.mode == RECONCILE:
            return self._reconcile(context)
        plan = self.build_plan(context, required=("id",))
        db_hook = self.get_db_hook()
        # Before the first request: a table the upsert cannot work on would fail every retry after the reads.
        if not check_upsert_key(db_hook, self.table) and not self.create_table:
            raise ClioConfigError(f"Table {self.table} does not exist and create_table=False")
        loaded_at, clear_column = self._prepare_columns(db_hook)
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
            sink = SqlSink(db_hook, conn, self.table, columns, self.create_table, loaded_at, clear_column)
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
            "mode": effective_mode(self.mode or None, self.updated_since, self.updated_until),
            "resumed": result.resumed,
            "resumed_batches": result.resumed_units,
        }
        self._summary = summary
        return summary

    def _prepare_columns(self, db_hook: DbApiHook) -> tuple[bool, str | None]:
        """Return whether upserts set ``_loaded_at`` (added when missing) and the column they clear."""
        existing = table_columns(db_hook, split_table(self.table))
        if existing is None:
            return self.create_table, None  # created with _loaded_at
        clear = self.deleted_column if self.deleted_column.lower() in existing else None
        if LOADED_AT_COLUMN in existing:
            return True, clear
        if not self.create_table:
            self.log.warning(
                "Table %s has no %s column: reconcile will need it", self.table, LOADED_AT_COLUMN
            )
            return False, clear
        with closing(db_hook.get_conn()) as conn:
            sink = SqlSink(db_hook, conn, self.table, None)
            with closing(conn.cursor()) as cur:
                cur.execute(
                    f"ALTER TABLE {sink.qualified_table} ADD COLUMN {sink.quote(LOADED_AT_COLUMN)} TEXT"
                )
            conn.commit()
        self.log.info("Added column %s to %s", LOADED_AT_COLUMN, self.table)
        return True, clear

    def _reconcile(self, context: Context) -> dict[str, Any]:
        """Scan every id, then mark the rows loaded before the scan whose records are gone; return counts."""
        started = time.monotonic()
        check_mode(
            self.mode,
            self.allowed_modes,
            updated_since=self.updated_since,
            updated_until=self.updated_until,
            overlap=self.overlap,
        )
        if self.fields:
            raise ClioConfigError("mode='reconcile' reads ids only: do not pass fields")
        db_hook = self.get_db_hook()
        parts = split_table(self.table)
        with closing(db_hook.get_conn()) as conn:
            if db_hook.supports_autocommit:
                db_hook.set_autocommit(conn, False)
            quote = SqlSink(db_hook, conn, self.table, None).quote
            job = Reconcile(
                db_hook=db_hook,
                conn=conn,
                table_parts=parts,
                quote=quote,
                deleted_column=self.deleted_column,
                max_deleted_share=self.max_deleted_share,
                allow_mass_delete=self.allow_mass_delete,
            )
            # Before the first request: the columns the marking needs.
            job.prepare(table_columns(db_hook, parts), self.create_table)
            scan_started = loaded_at_now()
            hook = self.get_hook()
            self.log.info("Reconciling %s against every id of %s", self.table, self.endpoint)
            seen, pages = job.scan(hook, str(self.endpoint), dict(self.query_params))
            counts = job.mark(seen, scan_started)
        summary = {
            "mode": RECONCILE,
            "table": self.table,
            "scanned": len(seen),
            "pages": pages,
            **counts,
            "rate_limited": int(getattr(hook.stats, "rate_limited", 0)),
            "seconds": round(time.monotonic() - started, 3),
            "scan_started": scan_started,
        }
        self.log.info("Reconciled %s: %s", self.table, summary)
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
