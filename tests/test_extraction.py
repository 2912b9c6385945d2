# SPDX-License-Identifier: Apache-2.0
"""extraction.py: the plan (request, projection, interval filter), the interval, and the page loop."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from airflow_provider_clio.exceptions import ClioBadRequestError
from airflow_provider_clio.extraction import ExtractionPlan, Interval

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
