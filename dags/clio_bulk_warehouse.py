# SPDX-License-Identifier: Apache-2.0
"""
Bulk load into a warehouse: Clio → Parquet on object storage → staging table → MERGE on ``id``.

Two DAGs joined by Assets (docs/warehouse.md):

- ``clio_bulk_extract`` (hourly) extracts each endpoint's changes since the last successful run
  (``mode="since_last_success"``: nothing is skipped after a pause; consecutive folders may share a record
  changed within the 5-minute overlap, which the merge's latest-row-per-id absorbs) as Parquet to
  ``<CLIO_LAKE_ROOT>/<endpoint>/<interval start>/`` and, once the folder's ``_manifest.json`` is committed,
  emits an event on the endpoint's Asset (``<CLIO_LAKE_ROOT>/<endpoint>``) naming that folder.
- ``clio_bulk_merge`` runs when either Asset has new events and merges every announced folder into its table
  (``COPY`` into a staging table, latest row per id, ``MERGE``), one transaction per folder. It never calls
  Clio, so it needs no Clio pool slot. Loads of one table take turns (``merge_extract`` locks it).

Trigger ``clio_bulk_extract`` with ``{"full_refresh": true}`` for the first load (every record, into the
endpoint's ``full`` folder). Trigger ``clio_bulk_merge`` with
``{"destinations": {"contacts": ["s3://.../contacts/full"]}}`` to reload folders by hand.

Connections: ``clio_default`` (type ``clio``) and ``clio_lakehouse`` (PostgreSQL 15 or later). Tables go to
the schema named by ``CLIO_LAKEHOUSE_SCHEMA`` (default ``public``).
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param, task

from airflow_provider_clio.operators.extract import ClioExtractOperator
from airflow_provider_clio.warehouse import announce_extract, announced_extracts, merge_extract

LAKE_ROOT = os.environ.get("CLIO_LAKE_ROOT", "file:///tmp/clio-lake").rstrip("/")
SCHEMA = os.environ.get("CLIO_LAKEHOUSE_SCHEMA", "public")
WAREHOUSE_CONN_ID = "clio_lakehouse"
START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)

# endpoint -> (table, fields). The merge needs id and updated_at; nested selections land as JSONB.
ENDPOINTS = {
    "contacts": ("clio_contacts", ["id", "name", "email", "status", "source{id,name}", "updated_at"]),
    "matters": ("clio_matters", ["id", "display_number", "status", "client{id,name}", "updated_at"]),
}
ASSETS = {name: Asset(f"{LAKE_ROOT}/{name}") for name in ENDPOINTS}

with DAG(
    dag_id="clio_bulk_extract",
    description="Hourly Clio changes as Parquet on object storage, announced on one Asset per endpoint",
    schedule=CronDataIntervalTimetable("@hourly", timezone="UTC"),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    params={"full_refresh": Param(False, type="boolean", description="Extract every record")},
    tags=["clio", "example"],
) as extract_dag:
    for name, (_table, fields) in ENDPOINTS.items():
        ClioExtractOperator(
            task_id=f"extract_{name}",
            endpoint=f"grow/{name}",
            fields=fields,
            mode="{{ 'full' if params.full_refresh else 'since_last_success' }}",
            destination=f"{LAKE_ROOT}/{name}/"
            + "{{ 'full' if params.full_refresh else data_interval_start | ts_nodash }}",
            file_format="parquet",
            # The destination is templated, so name the Asset explicitly; the event carries the folder.
            outlets=[ASSETS[name]],
            post_execute=announce_extract(ASSETS[name]),
            # Scheduled loads first when the region's pool is full (docs/priority-and-alerts.md).
            priority_weight=100,
            weight_rule="absolute",
        )


@task(task_id="merge")
def merge_announced(
    endpoint: str,
    table: str,
    triggering_asset_events: Any = None,
    params: Any = None,
) -> list[dict[str, Any]]:
    """Merge every folder announced on the endpoint's Asset (or named in the run's conf) into ``table``."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    events = triggering_asset_events[ASSETS[endpoint]] if triggering_asset_events else None
    folders = [(extra["destination"], extra.get("region") or "us") for extra in announced_extracts(events)]
    manual = ((params or {}).get("destinations") or {}).get(endpoint) or []
    folders += [(folder, (params or {}).get("region") or "us") for folder in manual]
    conn = PostgresHook(postgres_conn_id=WAREHOUSE_CONN_ID).get_conn()
    try:
        return [merge_extract(conn, folder, f"{SCHEMA}.{table}", region=region) for folder, region in folders]
    finally:
        conn.close()


with DAG(
    dag_id="clio_bulk_merge",
    description="Merge each announced Clio extraction into the warehouse (staging + MERGE on id)",
    schedule=ASSETS["contacts"] | ASSETS["matters"],
    start_date=START,
    catchup=False,
    max_active_runs=1,
    params={
        "destinations": Param({}, type="object", description='Manual reload: {"contacts": ["<folder>"]}'),
        "region": Param("us", type="string", description="Region of the folders named in destinations"),
    },
    tags=["clio", "example"],
) as merge_dag:
    for name, (table, _fields) in ENDPOINTS.items():
        merge_announced.override(task_id=f"merge_{name}")(endpoint=name, table=table)
