# SPDX-License-Identifier: Apache-2.0
"""
Hourly incremental load of Clio Manage matters, activities and bills into a SQL warehouse.

Each run loads, with ``mode="since_last_success"``, the records changed since the end of the last
successful run's interval (minus a 5-minute overlap) up to its own interval end, upserting on ``id``, so
nothing is skipped after a pause and a rerun changes nothing. Trigger a run with ``{"full_refresh": true}``
for the first load or to reload everything.

Connection ``clio_manage`` (type ``clio``, extra ``{"api": "manage"}``) holds a Clio Manage application
and one user's token. Manage counts its rate limit per access token (50 requests a minute at peak, more
off-peak), so the token has its own pool, ``clio_manage_us`` (create it with
``airflow clio pools --conn-id clio_manage``; 5 slots by default). Each task below holds one slot and
paces itself at 1/5 of the budget the token's ``X-RateLimit-*`` headers announce, so the three tasks
together never use more than 3/5 of it, leaving room for another DAG on the same token.

``fields`` is required in practice on Manage (without it a record is only ``id`` and ``etag``); nested
records take one level of braces.

Connections: ``clio_manage`` and ``clio_warehouse`` (any common.sql database; SQLite or Postgres).
"""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from airflow_provider_clio.transfers.clio_to_sql import ClioToSqlOperator

CONN_ID = "clio_manage"
POOL = "clio_manage_us"
"""The token's pool: the connection's default (``clio_manage_<region>``), named here so parsing needs no
connection."""

# endpoint -> (table, fields): select only what the warehouse needs; nested records arrive as JSON.
EXTRACTS = {
    "matters": (
        "clio_manage_matters",
        [
            "id",
            "etag",
            "display_number",
            "description",
            "status",
            "open_date",
            "close_date",
            "client{id,name}",
            "practice_area{id,name}",
            "responsible_attorney{id,name}",
            "created_at",
            "updated_at",
        ],
    ),
    "activities": (
        "clio_manage_activities",
        # quantity is in seconds since API version 4.0.4 (the provider pins 4.0.13).
        [
            "id",
            "etag",
            "type",
            "date",
            "quantity",
            "price",
            "total",
            "billed",
            "note",
            "matter{id,display_number}",
            "user{id,name}",
            "created_at",
            "updated_at",
        ],
    ),
    "bills": (
        "clio_manage_bills",
        [
            "id",
            "etag",
            "number",
            "state",
            "issued_at",
            "due_at",
            "total",
            "balance",
            "client{id,name}",
            "created_at",
            "updated_at",
        ],
    ),
}

with DAG(
    dag_id="clio_manage_warehouse",
    description="Hourly incremental Clio Manage -> warehouse load within the token's rate limit",
    schedule=CronDataIntervalTimetable("@hourly", timezone="UTC"),
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    params={"full_refresh": Param(False, type="boolean", description="Load every record, not the changes")},
    tags=["clio", "clio-manage", "example"],
) as dag:
    for endpoint, (table, fields) in EXTRACTS.items():
        ClioToSqlOperator(
            task_id=f"load_{table}",
            clio_conn_id=CONN_ID,
            pool=POOL,
            endpoint=endpoint,
            fields=fields,
            mode="{{ 'full' if params.full_refresh else 'since_last_success' }}",
            sql_conn_id="clio_warehouse",
            table=table,
        )
