# SPDX-License-Identifier: Apache-2.0
"""
Export contacts from two Clio regions to object storage.

Each region is a separate Clio instance with its own OAuth application and its own 3 requests per
second, so each task runs in its own region's pool (``clio_us`` and ``clio_eu``), derived from the
connection. The destination is any ``ObjectStoragePath`` URL (``file://``, ``s3://``, ``gs://`` ...);
each run writes one folder per interval and commits it with a ``_manifest.json``.

``mode="since_last_success"`` exports the changes since the last successful run (minus a 5-minute
overlap), so a paused DAG loses nothing. Each folder is exact for its run; consecutive folders may
both hold a record changed within the overlap: readers dedupe on (``id``, ``updated_at``).
"""

from __future__ import annotations

import datetime
import os

from airflow.sdk import DAG, CronDataIntervalTimetable

from airflow_provider_clio.operators.extract import ClioExtractOperator

EXPORT_ROOT = os.environ.get("CLIO_EXPORT_ROOT", "file:///tmp/clio-exports")

with DAG(
    dag_id="clio_two_regions",
    description="Daily contact exports from the US and EU Clio regions",
    # A real data interval: Airflow 3's plain "@daily" runs with an empty one, which selects nothing.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    tags=["clio", "example"],
) as dag:
    for conn_id, region in (("clio_default", "us"), ("clio_eu", "eu")):
        ClioExtractOperator(
            task_id=f"export_contacts_{region}",
            clio_conn_id=conn_id,
            region=region,
            endpoint="grow/contacts",
            fields=["id", "name", "email", "status", "updated_at"],
            mode="since_last_success",
            destination=EXPORT_ROOT + f"/{region}/contacts/" + "{{ data_interval_start | ts_nodash }}",
        )
