# SPDX-License-Identifier: Apache-2.0
"""Tests for cursor pagination: next links, page records and loop detection (host rules: test_urls.py)."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_clio.apis.platform import PLATFORM
from airflow_provider_clio.exceptions import ClioPaginationError
from airflow_provider_clio.pagination import CursorTracker, next_link, page_records, page_token_of
from airflow_provider_clio.urls import UrlRules

BASE = "https://api.clio.com"


def tracker_for(base: str = BASE, *, host_override: bool = False) -> CursorTracker:
    return CursorTracker(UrlRules(base, "", PLATFORM.token_hosts("us"), host_override=host_override))


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
    tracker = tracker_for()
    link = (
        f"{BASE}/grow/contacts?fields=id%2Cname&updated_since=2026-01-01T00%3A00%3A00%2B00%3A00&page_token=t1"
    )
    body = {"data": [], "meta": {"paging": {"next": link}}}
    assert tracker.follow(body, f"{BASE}/grow/contacts?fields=id%2Cname") == link


def test_tracker_resolves_a_relative_next_against_the_current_page() -> None:
    tracker = tracker_for()
    body = {"meta": {"paging": {"next": "/grow/contacts?page_token=t2"}}}
    assert tracker.follow(body, f"{BASE}/grow/contacts") == f"{BASE}/grow/contacts?page_token=t2"


@pytest.mark.parametrize("host_override", [False, True])
def test_tracker_refuses_a_foreign_next_url(host_override: bool) -> None:
    base = "https://clio-proxy.example.com/clio" if host_override else BASE
    tracker = tracker_for(base, host_override=host_override)
    body = {"meta": {"paging": {"next": "https://evil.example/grow/contacts?page_token=t"}}}
    with pytest.raises(ClioPaginationError, match="would carry the access token"):
        tracker.follow(body, f"{base}/grow/contacts")


def test_tracker_rewrites_an_api_host_next_url_onto_the_override() -> None:
    base = "https://clio-proxy.example.com/clio"
    body = {"meta": {"paging": {"next": "https://api.clio.com/grow/contacts?page_token=t"}}}
    followed = tracker_for(base, host_override=True).follow(body, f"{base}/grow/contacts")
    assert followed == f"{base}/grow/contacts?page_token=t"
    # Another Clio host is not the connection's API host: refused, not rewritten.
    body = {"meta": {"paging": {"next": "https://grow.clio.com/api/v2/contacts?page_token=t"}}}
    with pytest.raises(ClioPaginationError, match="would carry the access token"):
        tracker_for(base, host_override=True).follow(body, f"{base}/grow/contacts")


@pytest.mark.parametrize(
    "link",
    [
        "http://127.0.0.1:1111\\@127.0.0.1:8765/grow/contacts?page_token=p2",
        "https://evil.example\\@api.clio.com/grow/contacts?page_token=p2",
        "/grow/contacts?page_token=p2\\@evil",
        "\t/grow/contacts?page_token=p2",
        "https://user@api.clio.com/grow/contacts?page_token=p2",
    ],
)
def test_tracker_refuses_an_unsafe_next_link_before_joining_it(link: str) -> None:
    # Checked as sent: urljoin would strip some of these characters and hide what the server sent.
    base = "http://127.0.0.1:8765"
    body = {"data": [{"id": 1}], "meta": {"paging": {"next": link}}}
    with pytest.raises(ClioPaginationError, match="refusing to follow a next URL: it"):
        tracker_for(base, host_override=True).follow(body, f"{base}/grow/contacts")


def test_tracker_stops_after_20_empty_pages_with_fresh_cursors() -> None:
    tracker = tracker_for()

    def empty(n: int) -> dict[str, Any]:
        return {"data": [], "meta": {"paging": {"next": f"{BASE}/grow/contacts?page_token=e{n}"}}}

    for n in range(19):
        assert tracker.follow(empty(n), BASE) is not None
    # A page with records resets the count.
    assert tracker.follow({"data": [{"id": 1}], "meta": {"paging": {"next": f"{BASE}/x?page_token=r"}}}, BASE)
    for n in range(19):
        assert tracker.follow(empty(100 + n), BASE) is not None
    with pytest.raises(ClioPaginationError, match="20 empty pages in a row"):
        tracker.follow(empty(200), BASE)
    # An empty last page ends the run normally.
    assert tracker_for().follow({"data": [], "meta": {"paging": {}}}, BASE) is None


def test_a_rewritten_next_url_still_counts_for_loop_detection() -> None:
    base = "http://127.0.0.1:8765"
    tracker = tracker_for(base, host_override=True)
    first = tracker.resolve("https://api.clio.com/grow/contacts?page_token=a")
    tracker.visit(first)
    with pytest.raises(ClioPaginationError, match="pagination loop"):
        tracker.visit(tracker.resolve("http://127.0.0.1:8765/grow/contacts?page_token=a"))


def test_tracker_detects_a_repeated_url() -> None:
    tracker = tracker_for()
    tracker.visit(f"{BASE}/grow/contacts")
    tracker.visit(f"{BASE}/grow/contacts?page_token=a")
    with pytest.raises(ClioPaginationError, match="pagination loop"):
        tracker.visit(f"{BASE}/grow/contacts?page_token=a")


def test_tracker_detects_a_repeated_page_token_under_another_url() -> None:
    tracker = tracker_for()
    tracker.visit(f"{BASE}/grow/contacts?page_token=a")
    with pytest.raises(ClioPaginationError, match="pagination loop"):
        tracker.visit(f"{BASE}/grow/contacts?fields=id&page_token=a")
