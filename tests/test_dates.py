# SPDX-License-Identifier: Apache-2.0
"""dates.py: the one timestamp parser (ISO 8601 in every form Clio or a template produces, epoch seconds)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from airflow_provider_clio.dates import parse_instant, parse_timestamp
from airflow_provider_clio.exceptions import ClioConfigError

UTC = datetime.timezone.utc
NOON = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "2026-03-01T12:00:00Z",
        "2026-03-01T12:00:00+00:00",
        "2026-03-01T12:00:00+0000",  # no colon in the offset: Python 3.10's fromisoformat rejects it
        "2026-03-01T07:00:00-05:00",
        " 2026-03-01T12:00:00Z ",
        datetime.datetime(2026, 3, 1, 12, 0),  # naive is UTC
        datetime.datetime(2026, 3, 1, 13, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
        NOON.timestamp(),
        str(int(NOON.timestamp())),
    ],
)
def test_every_form_reads_as_the_same_utc_instant(value: Any) -> None:
    parsed = parse_timestamp(value)
    assert parsed == NOON
    assert parsed is not None
    assert parsed.utcoffset() == datetime.timedelta(0)


@pytest.mark.parametrize("value", [None, "", "  ", "yesterday", "2026-13-45", True, [], {}])
def test_what_is_not_a_timestamp_reads_as_none(value: Any) -> None:
    assert parse_timestamp(value) is None


@pytest.mark.parametrize("value", [None, "", "None", "none", "null", " NULL "])
def test_an_argument_that_rendered_nothing_is_no_value(value: Any) -> None:
    assert parse_instant(value, "updated_since") is None


@pytest.mark.parametrize("value", ["yesterday", "2026-02-30", ["2026-03-01"]])
def test_a_bad_argument_fails_naming_it(value: Any) -> None:
    with pytest.raises(ClioConfigError, match=r"updated_since: cannot read .* as an ISO 8601 timestamp"):
        parse_instant(value, "updated_since")


def test_an_argument_reads_as_utc() -> None:
    assert parse_instant("2026-03-01T07:00:00-05:00", "updated_until") == NOON
