# SPDX-License-Identifier: Apache-2.0
"""ClioHook.get_records against the real emulator on loopback: ``ids[]`` batches, exact records, missing ids.

The functional tests pace with an injected fake clock (the emulator's limit is off, as in ``test_clio.py``);
``test_get_records_holds_the_real_rate_limit`` runs in real time against the default 3 req/s limit.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.hooks.clio import ClioHook
from airflow_provider_clio.lookups import MAX_IDS_PER_REQUEST, RecordLookup
from airflow_provider_clio.rate_limit import reset_shared_limiters
from airflow_provider_clio.testing import ClioEmulator

CONN_ID = "clio_lookups"


@pytest.fixture(autouse=True)
def _fresh_limiters() -> Iterator[None]:
    reset_shared_limiters()
    yield
    reset_shared_limiters()


def make_hook(
    monkeypatch: pytest.MonkeyPatch, emu: ClioEmulator, *, fake_time: bool = True, **extra: Any
) -> ClioHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(emu.connection(**extra)))
    if not fake_time:
        return ClioHook(CONN_ID, token_store=MemoryTokenStore(), pool_slots=3)
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    return ClioHook(CONN_ID, token_store=MemoryTokenStore(), clock=lambda: now[0], sleep=sleep)


def list_requests(emu: ClioEmulator) -> list[Any]:
    return [r for r in emu.requests if r.is_api and r.path == "/grow/contacts"]


def test_get_records_batches_of_at_most_50_exact_records_and_missing_ids(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any
) -> None:
    emu = clio_emulator_factory(records={"contacts": 300}, rate_limit=None)
    truth = {record["id"]: record for record in emu.records("contacts")}
    wanted = random.Random(7).sample(range(1, 301), 120)
    gone = [900, 301, 5000]  # past the last record: deleted, or never visible to this token
    ids = [*wanted[:60], *gone[:2], *wanted[:10], *map(str, wanted[60:]), gone[2]]  # with repeats
    hook = make_hook(monkeypatch, emu)

    lookup = hook.get_records("grow/contacts", ids)
    assert isinstance(lookup, RecordLookup)
    assert emu.requests == []  # nothing is sent before the records are read
    records = list(lookup.records())

    sent = list_requests(emu)
    assert [len(r.query["ids[]"]) for r in sent] == [50, 50, 23]  # 123 distinct ids
    assert all(r.status == 200 and r.page_token is None for r in sent)
    assert sorted(int(i) for r in sent for i in r.query["ids[]"]) == sorted([*wanted, *gone])
    assert len(records) == 120
    assert {record["id"]: record for record in records} == {i: truth[i] for i in wanted}
    assert lookup.missing == [900, 301, 5000]  # in the order they were asked for
    assert (lookup.requests, lookup.batches, lookup.found) == (3, 3, 120)
    assert hook.stats.requests == 3
    assert emu.count(status=429) == 0


def test_get_records_adds_id_to_the_field_selection(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any
) -> None:
    emu = clio_emulator_factory(records={"contacts": 20}, rate_limit=None)
    hook = make_hook(monkeypatch, emu)
    lookup = hook.get_records("grow/contacts", [3, 1, 2], fields=["name", "updated_at"])
    records = list(lookup.records())
    truth = emu.records("contacts")
    assert records == [
        {"id": i, "name": truth[i - 1]["name"], "updated_at": truth[i - 1]["updated_at"]} for i in (1, 2, 3)
    ]
    (request,) = list_requests(emu)
    assert request.query["fields"] == ["id,name,updated_at"]
    assert lookup.missing == []


def test_get_records_follows_next_when_the_server_pages_a_batch(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any
) -> None:
    # Clio pages at 200 records and a batch holds at most 50 ids, so this only happens if Clio changes its
    # page size; the emulator's page_size knob makes it happen here.
    emu = clio_emulator_factory(records={"contacts": 100}, rate_limit=None, page_size=20)
    hook = make_hook(monkeypatch, emu)
    ids = list(range(1, 71))
    lookup = hook.get_records("grow/contacts", ids, fields="id,name")
    pages = list(lookup.pages())

    sent = list_requests(emu)
    # Batch 1 (ids 1-50): 3 pages; batch 2 (ids 51-70): exactly one page of 20.
    assert [(len(r.query["ids[]"]), r.page_token is not None) for r in sent] == [
        (50, False),
        (50, True),
        (50, True),
        (20, False),
    ]
    assert [len(page.records) for page in pages] == [20, 20, 10, 20]
    assert [page.number for page in pages] == [1, 2, 3, 4]
    assert [page.next_url is None for page in pages] == [False, False, True, True]
    assert [record["id"] for page in pages for record in page.records] == ids
    assert lookup.missing == []
    assert lookup.requests == 4


@pytest.mark.parametrize(
    ("ids", "bad"),
    [
        ([1, "two", 3], "'two'"),
        ([1, 2.0], "2.0"),
        ([True], "True"),
        (["-4"], "'-4'"),
        ([0], "0"),
        (None, "NoneType"),
    ],
)
def test_get_records_rejects_bad_ids_before_any_request(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, ids: Any, bad: str
) -> None:
    emu = clio_emulator_factory(records={"contacts": 5}, rate_limit=None)
    hook = make_hook(monkeypatch, emu)
    with pytest.raises(ClioConfigError, match=bad):
        hook.get_records("grow/contacts", ids)
    assert emu.requests == []


def test_get_records_of_no_ids_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any
) -> None:
    emu = clio_emulator_factory(records={"contacts": 5}, rate_limit=None)
    hook = make_hook(monkeypatch, emu)
    lookup = hook.get_records("grow/contacts", [])
    assert list(lookup.records()) == []
    assert lookup.missing == []
    assert emu.requests == []


def test_get_records_is_read_once_and_reports_missing_only_when_done(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any
) -> None:
    emu = clio_emulator_factory(records={"contacts": 5}, rate_limit=None)
    hook = make_hook(monkeypatch, emu)
    lookup = hook.get_records("grow/contacts", [1, 2, 99])
    records = lookup.records()
    assert next(records)["id"] == 1
    with pytest.raises(RuntimeError, match="exhausted"):
        _ = lookup.missing
    assert [record["id"] for record in records] == [2]
    assert lookup.missing == [99]
    with pytest.raises(RuntimeError, match="read once"):
        list(lookup.records())
    assert len(list_requests(emu)) == 1


@pytest.mark.integration
@pytest.mark.serial  # counts arrivals per real second: no other xdist worker on the CPU
def test_get_records_holds_the_real_rate_limit(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any
) -> None:
    emu = clio_emulator_factory(records={"contacts": 600})  # Clio's limit: 3 requests per sliding second
    hook = make_hook(monkeypatch, emu, fake_time=False)  # 3 pool slots: the whole limit, real clock
    lookup = hook.get_records("grow/contacts", range(1, 501))
    assert sum(1 for _ in lookup.records()) == 500
    assert lookup.missing == []
    assert len(list_requests(emu)) == 500 // MAX_IDS_PER_REQUEST
    assert emu.count(status=429) == 0
    assert emu.max_requests_in_window(window=1.0) <= 3
