# SPDX-License-Identifier: Apache-2.0
"""Tests for the URL rules: endpoint URLs, next-link resolution, host rewrites and where the token may go.

Where a URL goes is urllib3's reading (the parser requests connects with), and the token goes to an exact
allowlist: the API host of the connection's API and region, or the ``host`` override's origin.
"""

from __future__ import annotations

import re

import pytest

from airflow_provider_clio.apis.platform import PLATFORM
from airflow_provider_clio.exceptions import ClioConfigError, ClioFatalError, ClioPaginationError
from airflow_provider_clio.urls import UrlRules, origin, same_origin, url_problem

BASE = "https://api.clio.com"
PROXY = "https://clio-proxy.example.com/clio"


def rules(root: str = BASE, *, host_override: bool = False, base_path: str = "") -> UrlRules:
    """The Platform API's rules for region ``us``, optionally behind a ``host`` override."""
    return UrlRules(root, base_path, PLATFORM.token_hosts("us"), host_override=host_override)


def test_origin_fills_default_ports_and_lowercases() -> None:
    assert origin("HTTPS://API.Clio.com/grow/contacts") == ("https", "api.clio.com", 443)
    assert origin("http://127.0.0.1:8765/x") == ("http", "127.0.0.1", 8765)
    assert origin("http://[::1]:8765/x") == ("http", "::1", 8765)


@pytest.mark.parametrize(
    ("url", "connects_to"),
    [
        # urlsplit reads the part after the last "@" as the host; urllib3 (and so requests) stops the
        # authority at the backslash and connects to the part before it.
        ("http://127.0.0.1:1111\\@127.0.0.1:2222/grow/contacts?page_token=p2", ("http", "127.0.0.1", 1111)),
        ("https://evil.example\\@api.clio.com/grow/contacts", ("https", "evil.example", 443)),
    ],
)
def test_origin_is_where_requests_connects(url: str, connects_to: tuple[str, str, int]) -> None:
    assert origin(url) == connects_to


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


def test_the_platform_token_hosts_are_the_region_api_host_only() -> None:
    # No wildcard: not *.clio.com, not another region, not the legacy grow.clio.com.
    assert PLATFORM.token_hosts("us") == frozenset({"api.clio.com"})
    assert PLATFORM.token_hosts("eu") == frozenset({"eu.api.clio.com"})


UNSAFE_URLS = [
    # The audit's examples: each parser sees another host.
    "http://127.0.0.1:1111\\@127.0.0.1:2222/grow/contacts?page_token=p2",
    "https://evil.example\\@api.clio.com/grow/contacts?page_token=p2",
    "https://api.clio.com\\@evil.example/grow/contacts?page_token=p2",
    "https://api.clio.com/grow\\contacts?page_token=p2",
    # Userinfo, on the API host itself too (requests would turn it into a Basic auth header).
    "https://evil.example@api.clio.com/grow/contacts?page_token=p2",
    "https://user:pass@api.clio.com/grow/contacts?page_token=p2",
    # Whitespace and control characters, which urlsplit strips or keeps silently.
    " https://api.clio.com/grow/contacts?page_token=p2",
    "https://api.clio.com/grow/contacts?page_token=p2 ",
    "https://api.clio.com/grow/contacts?page_token=p 2",
    "https://api.clio.com\t/grow/contacts?page_token=p2",
    "https://api.cl\nio.com/grow/contacts?page_token=p2",
    "https://api.clio.com/grow/contacts?page_token=p2\x00",
    "https://api.clio.com/grow/contacts?page_token=p2\x7f",
    "https://api.clio.com/grow/contacts?page_token=p2\u2028",
]


@pytest.mark.parametrize("url", UNSAFE_URLS)
@pytest.mark.parametrize("host_override", [False, True])
def test_urls_parsers_may_read_differently_are_refused(url: str, host_override: bool) -> None:
    urls = rules(PROXY if host_override else BASE, host_override=host_override)
    assert url_problem(url) is not None
    with pytest.raises(ClioPaginationError, match=r"refusing to follow a start URL: it (contains|carries)"):
        urls.resolve(url, what="start URL")
    assert not urls.may_carry_token(url)
    with pytest.raises(ClioFatalError, match="refusing to send the access token"):
        urls.check_destination(url)


def test_a_backslash_next_link_on_the_override_is_checked_as_requests_connects() -> None:
    # Served from an override on port 2222, the link points at port 1111, which must not get the token.
    urls = rules("http://127.0.0.1:2222", host_override=True)
    prepared = "http://127.0.0.1:1111/%5C@127.0.0.1:2222/grow/contacts?page_token=p2"  # what requests sends
    assert not urls.may_carry_token(prepared)
    with pytest.raises(ClioFatalError, match=re.escape("to http://127.0.0.1:1111")):
        urls.check_destination(prepared)
    urls.check_destination("http://127.0.0.1:2222/grow/contacts?page_token=p2")


@pytest.mark.parametrize(
    "root",
    ["https://api.clio.com\\@evil.example", "https://u@api.clio.com", "https://api.clio.com?x=1", "ftp://x"],
)
def test_an_unsafe_base_url_is_a_config_error(root: str) -> None:
    with pytest.raises(ClioConfigError, match="plain http"):
        UrlRules(root, "", frozenset({"api.clio.com"}))


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
        # Clio's other hosts are not on the allowlist either: the Grow spec's own Paging.next example (the
        # legacy grow.clio.com), another region's API host, the bare domain.
        "https://grow.clio.com/api/v2/contacts?page_token=t",
        "https://eu.api.clio.com/grow/contacts?page_token=t",
        "https://clio.com/grow/contacts?page_token=t",
        "https://auth.api.clio.com/grow/contacts?page_token=t",
    ],
)
@pytest.mark.parametrize("host_override", [False, True])
def test_a_foreign_url_is_refused(url: str, host_override: bool) -> None:
    urls = rules(PROXY if host_override else BASE, host_override=host_override)
    with pytest.raises(ClioPaginationError, match="would carry the access token") as info:
        urls.resolve(url)
    assert "https://api.clio.com" in str(info.value)
    assert not urls.may_carry_token(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.clio.com/grow/contacts?page_token=t",
        "https://API.Clio.COM:443/grow/contacts?page_token=t",
    ],
)
def test_without_override_a_url_on_the_api_host_is_followed_as_is(url: str) -> None:
    assert rules().resolve(url) == url
    assert rules().may_carry_token(url)
    rules().check_destination(url)


@pytest.mark.parametrize(
    ("next_url", "expected"),
    [
        (
            "https://api.clio.com/grow/contacts?fields=id%2Cname&updated_since=2026-01-01T00%3A00%3A00%2B00%3A00"
            "&page_token=t%3D",
            "https://clio-proxy.example.com/clio/grow/contacts?fields=id%2Cname"
            "&updated_since=2026-01-01T00%3A00%3A00%2B00%3A00&page_token=t%3D",
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
    with pytest.raises(
        ClioPaginationError,
        match=re.escape("not the API host of the connection's region (https://app.example.test)"),
    ):
        urls.resolve("https://grow.clio.com/api/v4/matters")
    # With an override, the token goes to the override's exact origin only, not to the API host.
    proxied = rules(PROXY, host_override=True)
    assert not proxied.may_carry_token("https://api.clio.com/grow/contacts")
    assert not proxied.may_carry_token("https://clio-proxy.example.com:8443/clio/grow/contacts")
    assert not proxied.may_carry_token("http://clio-proxy.example.com/clio/grow/contacts")
