# SPDX-License-Identifier: Apache-2.0
"""The examples of docs/testing-dags.md, run as written (the page includes them from this file)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.hooks.clio import ClioHook
from airflow_provider_clio.operators.extract import read_extract
from airflow_provider_clio.testing import ClioEmulator, Faults

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"


# [START hook_test]
@pytest.mark.clio_emulator(records={"contacts": 250}, page_size=100)
def test_every_contact_comes_back_once(clio_emulator: ClioEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(*clio_emulator.connection_env("clio_default"))
    # A MemoryTokenStore keeps the rotated tokens in the test: no metadata database needed.
    hook = ClioHook("clio_default", token_store=MemoryTokenStore())

    contacts = list(hook.paginate("grow/contacts", fields=["id", "name"]))

    assert [c["id"] for c in contacts] == [c["id"] for c in clio_emulator.records("contacts")]
    assert clio_emulator.count(status=429) == 0
    assert clio_emulator.max_requests_in_window(region="us") <= 3


# [END hook_test]


# [START fault_test]
@pytest.mark.clio_emulator(records={"contacts": 250}, page_size=100)
def test_an_outage_is_retried_in_the_request(
    clio_emulator: ClioEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(*clio_emulator.connection_env("clio_default"))
    hook = ClioHook("clio_default", token_store=MemoryTokenStore())
    clio_emulator.set_faults(Faults(outage_requests=2, outage_status=503))  # the next 2 requests fail

    contacts = list(hook.paginate("grow/contacts", fields=["id"]))

    assert len(contacts) == 250
    assert clio_emulator.count(status=503) == 2


# [END fault_test]


# [START dag_test]
@pytest.mark.clio_emulator(records={"contacts": 500})
def test_two_region_export(
    clio_emulator: ClioEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, airflow_db: Path
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models import Variable

    for conn_id, region in (("clio_default", "us"), ("clio_eu", "eu")):
        # Tasks keep tokens in a Variable; a pair left by an earlier test belongs to another emulator.
        Variable.delete(f"clio_oauth_tokens__{conn_id}")
        monkeypatch.setenv(*clio_emulator.connection_env(conn_id, region=region))
    monkeypatch.setenv("CLIO_EXPORT_ROOT", f"file://{tmp_path}")
    # The seeded records change in January to June 2026; make three contacts change on 1 September.
    changed_at = datetime.datetime(2026, 9, 1, 12, tzinfo=datetime.timezone.utc)
    clio_emulator.touch("contacts", [3, 5, 8], at=changed_at)

    dag = DagBag(dag_folder=str(DAGS_FOLDER)).get_dag("clio_two_regions")
    run = dag.test(logical_date=datetime.datetime(2026, 9, 2, tzinfo=datetime.timezone.utc))

    assert run.state == "success"
    interval = run.data_interval_start.strftime("%Y%m%dT%H%M%S")  # the DAG's ts_nodash folder
    exported = list(read_extract(f"file://{tmp_path}/us/contacts/{interval}"))
    assert [c["id"] for c in exported] == [3, 5, 8]
    assert clio_emulator.count(status=429) == 0


# [END dag_test]
