# SPDX-License-Identifier: Apache-2.0
"""Tests for the cursor pagination guards: next links, loops and foreign hosts."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_clio.exceptions import ClioPaginationError
from airflow_provider_clio.pagination import (
    CursorTracker,
    next_link,
    origin,
    page_records,
    page_token_of,
    same_origin,
)

BASE = "https://api.clio.com"


def test_origin_fills_default_ports_and_lowercases() -> None:
    assert origin("HTTPS://API.Clio.com/grow/contacts") == ("https", "api.clio.com", 443)
    assert origin("http://127.0.0.1:8765/x") == ("http", "127.0.0.1", 8765)


@pytest.mark.parametrize(
    ("url", "same"),
    [
        ("https://api.clio.com/grow/contacts?page_token=a", True),
        ("https://api.clio.com:443/grow/contacts", True),
        ("https://API.CLIO.COM/grow/contacts", True),
        ("http://api.clio.com/grow/contacts", False),
        ("https://api.clio.com:8443/grow/contacts", False),
        ("https://eu.api.clio.com/grow/contacts", False),
        ("https://api.clio.com.evil.example/grow/contacts", False),
        ("https://evil.example/?u=https://api.clio.com", False),
        ("/grow/contacts", False),
    ],
)
def test_same_origin(url: str, same: bool) -> None:
    assert same_origin(url, BASE) is same


def test_page_token_of() -> None:
    assert page_token_of(f"{BASE}/grow/contacts?fields=id&page_token=abc%3D") == "abc="
    assert page_token_of(f"{BASE}/grow/contacts?fields=id") is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"data": [], "meta": {"paging": {"next": f"{BASE}/grow/x?page_token=1"}}},
            f"{BASE}/grow/x?page_token=1",
        ),
        ({"data": [], "meta": {"paging": {}}}, None),
        ({"data": [], "meta": {"paging": {"next": None}}}, None),
        ({"data": [], "meta": {"paging": {"next": ""}}}, None),
        ({"data": [], "meta": {}}, None),
        ({"data": []}, None),
        ({"data": [], "meta": None}, None),
    ],
)
def test_next_link(body: dict[str, Any], expected: str | None) -> None:
    assert next_link(body) == expected


def test_next_link_must_be_a_string() -> None:
    with pytest.raises(ClioPaginationError, match="not a URL"):
        next_link({"meta": {"paging": {"next": 5}}})


def test_page_records() -> None:
    assert page_records({"data": [{"id": 1}]}, BASE) == [{"id": 1}]
    with pytest.raises(ClioPaginationError, match="'data' array"):
        page_records({"data": {"id": 1}}, BASE)
    with pytest.raises(ClioPaginationError, match="'data' array"):
        page_records([{"id": 1}], BASE)


def test_tracker_follows_next_exactly_as_given() -> None:
    tracker = CursorTracker(BASE)
    link = (
        f"{BASE}/grow/contacts?fields=id%2Cname&updated_since=2026-01-01T00%3A00%3A00%2B00%3A00&page_token=t1"
    )
    body = {"data": [], "meta": {"paging": {"next": link}}}
    assert tracker.follow(body, f"{BASE}/grow/contacts?fields=id%2Cname") == link


def test_tracker_resolves_a_relative_next_against_the_current_page() -> None:
    tracker = CursorTracker(BASE)
    body = {"meta": {"paging": {"next": "/grow/contacts?page_token=t2"}}}
    assert tracker.follow(body, f"{BASE}/grow/contacts") == f"{BASE}/grow/contacts?page_token=t2"


def test_tracker_refuses_a_foreign_next_url() -> None:
    tracker = CursorTracker(BASE)
    body = {"meta": {"paging": {"next": "https://grow.clio.com/api/v2/contacts?page_token=t"}}}
    with pytest.raises(ClioPaginationError, match="would carry the access token"):
        tracker.follow(body, f"{BASE}/grow/contacts")


def test_tracker_detects_a_repeated_url() -> None:
    tracker = CursorTracker(BASE)
    tracker.visit(f"{BASE}/grow/contacts")
    tracker.visit(f"{BASE}/grow/contacts?page_token=a")
    with pytest.raises(ClioPaginationError, match="pagination loop"):
        tracker.visit(f"{BASE}/grow/contacts?page_token=a")


def test_tracker_detects_a_repeated_page_token_under_another_url() -> None:
    tracker = CursorTracker(BASE)
    tracker.visit(f"{BASE}/grow/contacts?page_token=a")
    with pytest.raises(ClioPaginationError, match="pagination loop"):
        tracker.visit(f"{BASE}/grow/contacts?fields=id&page_token=a")
