# SPDX-License-Identifier: Apache-2.0
"""extraction.py: the plan (request, projection, interval filter), the interval, and the page loop."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.checkpoint import Checkpointer, MemoryCheckpointStore
from airflow_provider_clio.exceptions import ClioBadRequestError
from airflow_provider_clio.extraction import Extraction, ExtractionPlan, Interval
from airflow_provider_clio.hooks.clio import ClioHook
from airflow_provider_clio.testing import ClioEmulator

UTC = datetime.timezone.utc


def test_select_projects_records_onto_the_requested_fields() -> None:
    # Clio may ignore `fields` and answer full objects: only the selection may reach the output.
    plan = ExtractionPlan.build(
        "grow/matters",
        ["id", "display_number", "client{id,name}", "custom_field_values{id,value}"],
        None,
        Interval(),
    )
    full = {
        "id": 1,
        "display_number": "00001-Andersen",
        "description": "not selected",
        "client": {"id": 3, "name": "Olga Silva", "email": "not selected"},
        "custom_field_values": [{"id": 9, "value": "x", "field_name": "not selected"}, {"id": 10}],
        "updated_at": "2026-03-01T00:00:00+00:00",
    }
    assert plan.select([full, {"id": 2, "client": None}]) == [
        {
            "id": 1,
            "display_number": "00001-Andersen",
            "client": {"id": 3, "name": "Olga Silva"},
            "custom_field_values": [{"id": 9, "value": "x"}, {"id": 10}],
        },
        {"id": 2, "client": None},
    ]


def test_names_added_for_filtering_are_requested_then_removed() -> None:
    since = datetime.datetime(2026, 3, 1, tzinfo=UTC)
    plan = ExtractionPlan.build("grow/contacts", ["id", "name"], None, Interval(since=since))
    assert plan.request_fields == "id,name,updated_at"
    record = {"id": 1, "name": "A", "email": "x", "updated_at": "2026-03-02T00:00:00+00:00"}
    assert plan.select([record]) == [{"id": 1, "name": "A"}]


def test_without_fields_every_key_is_kept() -> None:
    plan = ExtractionPlan.build("grow/contacts", None, None, Interval())
    record = {"id": 1, "name": "A", "source": {"id": 2, "name": "Google"}}
    assert plan.select([record]) == [record]


def test_updated_at_in_any_iso_form_places_a_record() -> None:
    since = datetime.datetime(2026, 3, 1, tzinfo=UTC)
    until = datetime.datetime(2026, 3, 2, tzinfo=UTC)
    plan = ExtractionPlan.build("grow/contacts", ["id", "updated_at"], None, Interval(since, until))
    records = [
        {"id": 1, "updated_at": "2026-03-01T00:00:00Z"},
        {"id": 2, "updated_at": "2026-03-01T18:59:59.999-05:00"},
        {"id": 3, "updated_at": "2026-03-01T19:00:00-05:00"},  # == the upper bound: the next interval's
        {"id": 4, "updated_at": "2026-03-01T12:00:00+0000"},
        {"id": 5, "updated_at": "2026-02-28T23:59:59+00:00"},
    ]
    assert [r["id"] for r in plan.select(records)] == [1, 2, 4]
    assert plan.dropped == 2


@pytest.mark.parametrize("updated_at", [None, "", "yesterday", 5], ids=["missing", "empty", "text", "number"])
def test_a_record_that_cannot_be_placed_in_the_interval_fails(updated_at: Any) -> None:
    # Kept, it would be written by every interval; dropped, it would be lost: neither is silent any more.
    plan = ExtractionPlan.build(
        "grow/contacts", None, None, Interval(since=datetime.datetime(2026, 3, 1, tzinfo=UTC))
    )
    record: dict[str, Any] = {"id": 7}
    if updated_at is not None:
        record["updated_at"] = updated_at
    with pytest.raises(ClioBadRequestError, match=r"id=7 of grow/contacts has no parsable updated_at"):
        plan.select([{"id": 6, "updated_at": "2026-03-02T00:00:00+00:00"}, record])


class _ListSink:
    """A sink keeping committed units in memory, with a state a resumed try must get back."""

    def __init__(self) -> None:
        self.units: list[list[dict[str, Any]]] = []
        self.buffer: list[dict[str, Any]] = []
        self.restored: list[dict[str, Any]] = []

    @property
    def pending(self) -> int:
        return len(self.buffer)

    def add(self, records: list[dict[str, Any]]) -> None:
        self.buffer.extend(records)

    def commit(self, index: int, token: str) -> int:
        assert index == len(self.units)
        self.units.append(self.buffer)
        self.buffer = []
        return len(self.units[-1])

    def state(self) -> dict[str, Any]:
        return {"committed": len(self.units)}

    def restore(self, state: dict[str, Any]) -> None:
        self.restored.append(state)


class _Recording(MemoryCheckpointStore):
    def __init__(self) -> None:
        super().__init__()
        self.saves: list[dict[str, Any]] = []

    def save(self, value: dict[str, Any]) -> None:
        super().save(value)
        self.saves.append(json.loads(json.dumps(value)))


def test_units_hold_whole_pages_and_each_commit_saves_the_next_page(
    clio_emulator_factory: Callable[..., ClioEmulator], monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    emu = clio_emulator_factory(rate_limit=1000, records={"contacts": 95}, page_size=20)
    hook = ClioHook(support.clio_connection(monkeypatch, emu), token_store=MemoryTokenStore())
    plan = ExtractionPlan.build("grow/contacts", ["id"], None, Interval())
    store = _Recording()
    checkpointer = Checkpointer(store, plan.key())
    sink = _ListSink()
    result = Extraction(hook=hook, plan=plan, checkpointer=checkpointer, sink=sink, unit_size=50).run()
    # Pages of 20: a unit is closed before the page that would take it past 50.
    assert [len(unit) for unit in sink.units] == [40, 40, 15]
    assert [r["id"] for unit in sink.units for r in unit] == [r["id"] for r in emu.records("contacts")]
    assert (result.state.units, result.state.records, result.state.pages) == (3, 95, 5)
    assert (result.resumed, result.pages_read) == (False, 5)
    tokens = support.page_tokens(emu.requests)
    # Each checkpoint names the first page the committed units do not hold; the last one, none.
    assert [save["next_url"] and save["next_url"].split("page_token=")[1] for save in store.saves] == [
        tokens[2],
        tokens[4],
        None,
    ]
    assert [save["units"] for save in store.saves] == [1, 2, 3]

    # A try that finds a complete checkpoint reads no page, and the sink gets its state back (the final
    # step, such as the manifest, needs it).
    requests = emu.count(path_prefix="/grow")
    again = _ListSink()
    resumed = Extraction(
        hook=hook, plan=plan, checkpointer=Checkpointer(store, plan.key()), sink=again, unit_size=50
    ).run()
    assert (resumed.resumed, resumed.resumed_units, resumed.pages_read) == (True, 3, 0)
    assert again.restored == [{"committed": 3}]
    assert emu.count(path_prefix="/grow") == requests


@pytest.mark.parametrize("inclusive", [True, False], ids=["platform-inclusive", "manage-exclusive"])
def test_a_record_stamped_on_the_lower_bound_is_kept_either_way_clio_reads_updated_since(
    inclusive: bool,
    clio_emulator_factory: Callable[..., ClioEmulator],
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    emu = clio_emulator_factory(
        rate_limit=1000, records={"contacts": 60}, page_size=20, updated_since_inclusive=inclusive
    )
    since = datetime.datetime(2026, 8, 1, tzinfo=UTC)
    until = since + datetime.timedelta(hours=1)
    emu.touch("contacts", [7], at=since)  # exactly on the inclusive lower bound
    emu.touch("contacts", [8], at=since - datetime.timedelta(microseconds=1))  # just before: not this one's
    emu.touch("contacts", [9], at=until - datetime.timedelta(microseconds=1))
    emu.touch("contacts", [10], at=until)  # the exclusive upper bound: the next interval's
    hook = ClioHook(support.clio_connection(monkeypatch, emu), token_store=MemoryTokenStore())
    plan = ExtractionPlan.build("grow/contacts", ["id", "updated_at"], None, Interval(since, until))
    # Clio is asked for one second more than needed; the interval is applied to each record.
    assert plan.params["updated_since"] == "2026-07-31T23:59:59+00:00"
    sink = _ListSink()
    Extraction(
        hook=hook,
        plan=plan,
        checkpointer=Checkpointer(MemoryCheckpointStore(), plan.key()),
        sink=sink,
        unit_size=50,
    ).run()
    assert [r["id"] for unit in sink.units for r in unit] == [7, 9]
    assert plan.dropped == 2  # id 8 (returned by the one-second slack) and id 10, filtered client-side
