# SPDX-License-Identifier: Apache-2.0
"""Tests for the URL rules: endpoint URLs, next-link resolution, host rewrites and where the token may go."""

from __future__ import annotations

import re

import pytest

from airflow_provider_clio.apis.platform import PLATFORM
from airflow_provider_clio.exceptions import ClioConfigError, ClioPaginationError
from airflow_provider_clio.urls import UrlRules, host_matches, origin, same_origin

BASE = "https://api.clio.com"
PROXY = "https://clio-proxy.example.com/clio"


def rules(root: str = BASE, *, host_override: bool = False, base_path: str = "") -> UrlRules:
    """The Platform API's rules for region ``us``, optionally behind a ``host`` override."""
    return UrlRules(root, base_path, PLATFORM.token_hosts("us"), host_override=host_override)


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


@pytest.mark.parametrize(
    ("host", "matches"),
    [
        ("clio.com", True),
        ("grow.clio.com", True),
        ("EU.API.CLIO.COM", True),
        ("evilclio.com", False),
        ("clio.com.evil.example", False),
        ("example.com", False),
    ],
)
def test_host_matches_exact_hosts_and_dotted_domains(host: str, matches: bool) -> None:
    assert host_matches(host, frozenset({"clio.com", ".clio.com"})) is matches


def test_endpoint_urls() -> None:
    assert rules().endpoint("grow/contacts") == f"{BASE}/grow/contacts"
    assert rules().endpoint(" /grow/contacts ") == f"{BASE}/grow/contacts"
    assert rules(PROXY, host_override=True).endpoint("grow/contacts") == f"{PROXY}/grow/contacts"
    # An API with a base path (Manage's api/v4) puts endpoints under it, the proxy's prefix first.
    assert rules(base_path="api/v4").endpoint("matters") == f"{BASE}/api/v4/matters"
    assert rules(PROXY, host_override=True, base_path="/api/v4/").base_url == f"{PROXY}/api/v4"


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [("", "relative path"), ("/", "relative path"), ("https://evil.example/grow/contacts", "relative")],
)
def test_bad_endpoints(endpoint: str, reason: str) -> None:
    with pytest.raises(ClioConfigError, match=reason):
        rules().endpoint(endpoint)


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
def test_a_foreign_url_is_refused(url: str, host_override: bool) -> None:
    urls = rules(PROXY if host_override else BASE, host_override=host_override)
    with pytest.raises(ClioPaginationError, match="would carry the access token") as info:
        urls.resolve(url)
    assert "*.clio.com" in str(info.value)
    assert not urls.may_carry_token(url)


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
def test_without_override_a_url_on_clio_is_followed_as_is(url: str) -> None:
    assert rules().resolve(url) == url
    assert rules().may_carry_token(url)


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
def test_with_override_a_clio_url_is_rewritten_onto_it(next_url: str, expected: str) -> None:
    urls = rules(PROXY, host_override=True)
    assert urls.resolve(next_url) == expected
    # The proxy is the only place the token goes: never Clio's host directly.
    assert urls.may_carry_token(expected)
    assert not urls.may_carry_token("https://api.clio.com/grow/contacts")


def test_the_start_url_is_named_in_the_refusal() -> None:
    with pytest.raises(
        ClioPaginationError, match=re.escape("refusing to follow a start URL on https://evil.example:443")
    ):
        rules().resolve("https://evil.example/x", what="start URL")


def test_token_hosts_of_another_api_are_exact() -> None:
    # An API without token domains sends the token to its API host only.
    urls = UrlRules("https://app.example.test", "api/v4", frozenset({"app.example.test"}))
    assert urls.may_carry_token("https://app.example.test/api/v4/matters?page_token=x")
    assert not urls.may_carry_token("https://other.example.test/api/v4/matters")
    with pytest.raises(ClioPaginationError, match=re.escape("nor an https URL on app.example.test")):
        urls.resolve("https://grow.clio.com/api/v4/matters")
