# SPDX-License-Identifier: Apache-2.0
"""
Hourly incremental load of Clio contacts, matters and activities into a SQL warehouse.

Each run loads, with ``mode="since_last_success"``, the records changed since the end of the last
successful run's interval (minus a 5-minute overlap) up to its own interval end, upserting on ``id``.
After a pause or an outage (``catchup=False`` runs only the latest interval) the next run therefore
loads every change in between; the overlap re-reads a few rows the upsert absorbs, and a rerun
changes nothing. Trigger a run with ``{"full_refresh": true}`` for the first load or to reload
everything. A weekly reconcile (``clio_weekly_reconcile``) marks the rows deleted in Clio.

All three tasks run in the connection region's pool (``clio_us`` here; create it with
``airflow clio pools``): each holds one slot and paces itself at one request per second, so the
scheduler keeps the whole deployment within Clio's 3 requests per second.

Connections: ``clio_default`` (type ``clio``) and ``clio_warehouse`` (any common.sql database;
the demo uses SQLite).
"""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from airflow_provider_clio.transfers.clio_to_sql import ClioToSqlOperator

# endpoint -> (table, fields): select only what the warehouse needs; nested records arrive as JSON.
EXTRACTS = {
    "grow/contacts": ("clio_contacts", ["id", "name", "email", "status", "created_at", "updated_at"]),
    "grow/matters": (
        "clio_matters",
        ["id", "display_number", "status", "status_category", "client{id,name}", "created_at", "updated_at"],
    ),
    "grow/activities": (
        "clio_activities",
        ["id", "type", "date", "quantity", "total", "matter{id,display_number}", "created_at", "updated_at"],
    ),
}

with DAG(
    dag_id="clio_incremental_warehouse",
    description="Hourly incremental Clio -> warehouse load, rate-limit safe",
    # A real data interval: Airflow 3's plain "@hourly" runs with an empty one, which selects nothing.
    schedule=CronDataIntervalTimetable("@hourly", timezone="UTC"),
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    params={"full_refresh": Param(False, type="boolean", description="Load every record, not the changes")},
    tags=["clio", "example"],
) as dag:
    for endpoint, (table, fields) in EXTRACTS.items():
        ClioToSqlOperator(
            task_id=f"load_{table}",
            clio_conn_id="clio_default",
            endpoint=endpoint,
            fields=fields,
            mode="{{ 'full' if params.full_refresh else 'since_last_success' }}",
            sql_conn_id="clio_warehouse",
            table=table,
        )
