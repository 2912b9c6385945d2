# SPDX-License-Identifier: Apache-2.0
"""ExtractionPlan: the request it builds and the records it keeps (projection, interval filter)."""

from __future__ import annotations

import datetime

from airflow_provider_clio.operators.base import ExtractionPlan, Interval

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
