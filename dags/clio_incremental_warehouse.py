# SPDX-License-Identifier: Apache-2.0
"""
Hourly incremental load of Clio contacts, matters and activities into a SQL warehouse.

Each run loads the records whose ``updated_at`` falls in its data interval, upserting on ``id``, so
consecutive runs partition the changes and a rerun changes nothing. Trigger a run with
``{"full_refresh": true}`` for the first load or a backfill of everything.

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
    # Renders `None` and datetimes as Python objects, so a full refresh passes no updated_since at all.
    render_template_as_native_obj=True,
    params={"full_refresh": Param(False, type="boolean", description="Load every record, not one interval")},
    tags=["clio", "example"],
) as dag:
    for endpoint, (table, fields) in EXTRACTS.items():
        ClioToSqlOperator(
            task_id=f"load_{table}",
            clio_conn_id="clio_default",
            endpoint=endpoint,
            fields=fields,
            updated_since="{{ None if params.full_refresh else data_interval_start }}",
            sql_conn_id="clio_warehouse",
            table=table,
        )
