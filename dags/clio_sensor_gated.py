# SPDX-License-Identifier: Apache-2.0
"""
Load matters only once Clio has changes for the interval.

The sensor asks Clio for one page of matters updated since the last successful run's interval
end (the interval start before the first success), and the load reads the same changes with
``mode="since_last_success"``, so days the DAG was paused are not skipped. In ``reschedule``
mode the sensor gives its worker and its pool slot back between pokes, so a waiting sensor costs
no request budget; set ``deferrable=True`` to hand the wait to the triggerer instead.
"""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, CronDataIntervalTimetable

from airflow_provider_clio.sensors.clio import ClioRecordsSensor
from airflow_provider_clio.transfers.clio_to_sql import ClioToSqlOperator

with DAG(
    dag_id="clio_sensor_gated",
    description="Wait for changed Clio matters, then load them",
    # A real data interval: Airflow 3's plain "@daily" runs with an empty one, which selects nothing.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    tags=["clio", "example"],
) as dag:
    wait_for_matters = ClioRecordsSensor(
        task_id="wait_for_changed_matters",
        clio_conn_id="clio_default",
        endpoint="grow/matters",
        updated_since="{{ prev_data_interval_end_success or data_interval_start }}",
        mode="reschedule",
        poke_interval=datetime.timedelta(minutes=10),
        timeout=datetime.timedelta(hours=6),
    )
    load_matters = ClioToSqlOperator(
        task_id="load_matters",
        clio_conn_id="clio_default",
        endpoint="grow/matters",
        fields=["id", "display_number", "status", "client{id,name}", "updated_at"],
        mode="since_last_success",
        sql_conn_id="clio_warehouse",
        table="clio_matters",
    )
    wait_for_matters >> load_matters
