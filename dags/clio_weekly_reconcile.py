# SPDX-License-Identifier: Apache-2.0
"""
Weekly reconcile of the warehouse tables that ``clio_incremental_warehouse`` loads: mark deleted rows.

Clio has no delete signal. Each task scans every id of its endpoint (``fields=id``, 200 ids per
request: about 5 requests per 1,000 records) and, once the scan is complete, sets
``_clio_deleted_at`` on the rows whose ids Clio no longer returns, among the rows loaded before the
scan started. Rows are marked, never removed; a later load of the same id clears the mark. A task
refuses to mark more than 5 % of a table's live rows (the token may see fewer records than before,
e.g. after a re-authorization by a less privileged user): check, then run it once with
``allow_mass_delete=True`` if the deletes are real.

Connections: ``clio_default`` (type ``clio``) and ``clio_warehouse``, as the warehouse DAG.
"""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, CronDataIntervalTimetable

from airflow_provider_clio.transfers.clio_to_sql import ClioToSqlOperator

TABLES = {
    "grow/contacts": "clio_contacts",
    "grow/matters": "clio_matters",
    "grow/activities": "clio_activities",
}

with DAG(
    dag_id="clio_weekly_reconcile",
    description="Weekly: mark warehouse rows whose Clio records were deleted",
    schedule=CronDataIntervalTimetable("@weekly", timezone="UTC"),
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["clio", "example"],
) as dag:
    for endpoint, table in TABLES.items():
        ClioToSqlOperator(
            task_id=f"reconcile_{table}",
            clio_conn_id="clio_default",
            endpoint=endpoint,
            mode="reconcile",
            sql_conn_id="clio_warehouse",
            table=table,
        )
