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
    token_allowed,
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


@pytest.mark.parametrize(
    "url",
    [
        "http://api.clio.com/grow/contacts?page_token=t",
        "http://grow.clio.com/api/v2/contacts?page_token=t",
        "https://grow.clio.com:8443/api/v2/contacts?page_token=t",
        "https://evilclio.com/grow/contacts?page_token=t",
        "https://api.clio.com.evil.example/grow/contacts?page_token=t",
        "https://evil.example/grow/contacts?page_token=t",
    ],
)
@pytest.mark.parametrize("host_override", [False, True])
def test_tracker_refuses_a_foreign_next_url(url: str, host_override: bool) -> None:
    base = "https://clio-proxy.example.com/clio" if host_override else BASE
    tracker = CursorTracker(base, host_override=host_override)
    body = {"meta": {"paging": {"next": url}}}
    with pytest.raises(ClioPaginationError, match="would carry the access token"):
        tracker.follow(body, f"{base}/grow/contacts")
    assert not token_allowed(url, base, host_override=host_override)


@pytest.mark.parametrize(
    "url",
    [
        # The Grow spec's own Paging.next example, on a host other than the API base.
        "https://grow.clio.com/api/v2/contacts?page_token=t",
        "https://eu.api.clio.com/grow/contacts?page_token=t",
        "https://clio.com/grow/contacts?page_token=t",
        "https://API.Clio.COM:443/grow/contacts?page_token=t",
    ],
)
def test_without_override_a_next_url_on_clio_is_followed_as_is(url: str) -> None:
    tracker = CursorTracker(BASE)
    assert tracker.follow({"meta": {"paging": {"next": url}}}, f"{BASE}/grow/contacts") == url
    assert token_allowed(url, BASE, host_override=False)


@pytest.mark.parametrize(
    ("next_url", "expected"),
    [
        (
            "https://api.clio.com/grow/contacts?fields=id%2Cname&updated_since=2026-01-01T00%3A00%3A00%2B00%3A00"
            "&page_token=t%3D",
            "https://clio-proxy.example.com/clio/grow/contacts?fields=id%2Cname"
            "&updated_since=2026-01-01T00%3A00%3A00%2B00%3A00&page_token=t%3D",
        ),
        (
            "https://grow.clio.com/api/v2/contacts?page_token=t",
            "https://clio-proxy.example.com/clio/api/v2/contacts?page_token=t",
        ),
        # Already on the proxy: followed as is.
        (
            "https://clio-proxy.example.com/clio/grow/contacts?page_token=t",
            "https://clio-proxy.example.com/clio/grow/contacts?page_token=t",
        ),
    ],
)
def test_with_override_a_clio_next_url_is_rewritten_onto_it(next_url: str, expected: str) -> None:
    base = "https://clio-proxy.example.com/clio"
    tracker = CursorTracker(base, host_override=True)
    assert tracker.follow({"meta": {"paging": {"next": next_url}}}, f"{base}/grow/contacts") == expected
    # The proxy is the only place the token goes: never Clio's host directly.
    assert token_allowed(expected, base, host_override=True)
    assert not token_allowed("https://api.clio.com/grow/contacts", base, host_override=True)


def test_a_rewritten_next_url_still_counts_for_loop_detection() -> None:
    base = "http://127.0.0.1:8765"
    tracker = CursorTracker(base, host_override=True)
    first = tracker.resolve("https://api.clio.com/grow/contacts?page_token=a")
    tracker.visit(first)
    with pytest.raises(ClioPaginationError, match="pagination loop"):
        tracker.visit(tracker.resolve("https://grow.clio.com/grow/contacts?page_token=a"))


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
