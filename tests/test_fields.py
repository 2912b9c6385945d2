# SPDX-License-Identifier: Apache-2.0
"""Tests for the local validation of Clio ``fields`` selections."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.fields import Field, normalize_fields, parse_fields, project, top_level_names


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("id", "id"),
        ("id,name", "id,name"),
        (" id , name ,client{ id , name } ", "id,name,client{id,name}"),
        (["id", "name", "client{id,name}"], "id,name,client{id,name}"),
        (("id", "matter{id,display_number}", "user{id}"), "id,matter{id,display_number},user{id}"),
        (["id,name"], "id,name"),
        ("_private,a1_b2", "_private,a1_b2"),
        (None, None),
        ("", None),
        ("   ", None),
        ([], None),
    ],
)
def test_normalize_fields_valid(fields: str | Sequence[str] | None, expected: str | None) -> None:
    assert normalize_fields(fields) == expected


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ("id,", "empty item"),
        (",id", "empty item"),
        ("id,,name", "empty item"),
        (["id", ""], "empty item"),
        ("client{}", "empty item"),
        ("client{id,}", "empty item"),
        ("client{id", "unbalanced '{'"),
        ("id}", "unbalanced '}'"),
        ("client{id,name}}", "unbalanced '}'"),
        ("matter{client{name}}", "one level of braces"),
        ("1id", "invalid field name"),
        ("first-name", "unexpected '-'"),
        ("id name", "unexpected 'n'"),
        ("id,id", "listed twice"),
        ("client{id,id}", "listed twice"),
        ("na.me", "unexpected '.'"),
        ([1, 2], "must be a string"),
    ],
)
def test_normalize_fields_invalid(fields: object, reason: str) -> None:
    with pytest.raises(ClioConfigError, match=reason) as info:
        normalize_fields(fields)  # type: ignore[arg-type]
    assert str(info.value).startswith("fields: ")


def test_wrong_type_is_a_config_error() -> None:
    with pytest.raises(ClioConfigError, match="expected a string or a list"):
        normalize_fields(42)  # type: ignore[arg-type]


def test_top_level_names() -> None:
    assert top_level_names("id,name,client{id,name}") == ["id", "name", "client"]
    assert top_level_names(["id", "matter{id}"]) == ["id", "matter"]
    assert top_level_names(None) == []


def test_parse_fields_structure() -> None:
    assert parse_fields("id,client{id,name}") == [Field("id"), Field("client", ("id", "name"))]
    assert str(Field("client", ("id",))) == "client{id}"


def test_project_keeps_only_the_selection() -> None:
    selection = parse_fields("id,client{id,name},tags{name}")
    record = {
        "id": 1,
        "secret": "not selected",
        "client": {"id": 3, "name": "Olga", "email": "not selected"},
        "tags": [{"name": "a", "colour": "red"}, "plain"],
    }
    assert project(record, selection) == {
        "id": 1,
        "client": {"id": 3, "name": "Olga"},
        "tags": [{"name": "a"}, "plain"],
    }
    # Keys the record lacks stay absent; a null nested value stays null.
    assert project({"client": None}, selection) == {"client": None}
