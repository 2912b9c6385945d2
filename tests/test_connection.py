# SPDX-License-Identifier: Apache-2.0
"""Tests for the connection settings: fields, extras, the ``api`` choice, hosts and the host override."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

import pytest
from airflow.sdk import Connection

from airflow_provider_clio.apis.platform import PLATFORM
from airflow_provider_clio.connection import ClioConfig
from airflow_provider_clio.exceptions import ClioConfigError


def connection(conn_id: str = "clio_test", **fields: Any) -> Connection:
    """A ``clio`` connection with a client id and secret; ``extra`` as a dict."""
    extra = fields.pop("extra", {})
    values = {"login": "app-key", "password": "app-secret-value", **fields}
    return Connection(conn_id=conn_id, conn_type="clio", extra=json.dumps(extra), **values)


def config(**fields: Any) -> ClioConfig:
    return ClioConfig.from_connection(connection(**fields))


@pytest.mark.parametrize(
    ("region", "api", "auth"),
    [
        ("us", "https://api.clio.com", "https://auth.api.clio.com"),
        ("ca", "https://ca.api.clio.com", "https://ca.auth.api.clio.com"),
        ("eu", "https://eu.api.clio.com", "https://eu.auth.api.clio.com"),
        ("au", "https://au.api.clio.com", "https://au.auth.api.clio.com"),
        ("EU ", "https://eu.api.clio.com", "https://eu.auth.api.clio.com"),
    ],
)
def test_region_picks_hosts_and_pool(region: str, api: str, auth: str) -> None:
    settings = config(extra={"region": region})
    assert settings.base_url == api
    assert settings.token_url == f"{auth}/oauth/token"
    assert settings.authorize_url == f"{auth}/oauth/authorize"
    assert settings.region == region.strip().lower()
    assert settings.pool == f"clio_{settings.region}"
    assert not settings.host_override


def test_defaults() -> None:
    settings = config()
    assert (settings.region, settings.requests_per_slot, settings.pool) == ("us", 1.0, "clio_us")
    assert settings.api is PLATFORM
    assert (settings.refresh_token, settings.access_token, settings.expires_at) == (None, None, None)


@pytest.mark.parametrize("extra", [{"api": "platform"}, {"api": " Platform "}, {"api": ""}, {"api": None}])
def test_api_extra_selects_the_platform_api(extra: dict[str, Any]) -> None:
    assert config(extra=extra).api is PLATFORM


@pytest.mark.parametrize("value", ["grow", 3, ["platform"]])
def test_unknown_api_names_the_choices(value: Any) -> None:
    with pytest.raises(ClioConfigError, match=r"extra 'api' must be one of platform") as info:
        config(extra={"api": value})
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("pool", ["", None])
def test_empty_or_null_pool_means_the_default_pool(pool: str | None) -> None:
    assert config(extra={"region": "eu", "pool": pool}).pool == "clio_eu"


def test_host_override_serves_api_and_oauth() -> None:
    settings = config(host="https://clio-proxy.example.com/clio/", extra={"region": "eu"})
    assert settings.base_url == "https://clio-proxy.example.com/clio"
    assert settings.token_url == "https://clio-proxy.example.com/clio/oauth/token"
    assert settings.authorize_url == "https://clio-proxy.example.com/clio/oauth/authorize"
    assert settings.pool == "clio_eu"
    assert settings.host_override


@pytest.mark.parametrize(
    "host", ["http://127.0.0.1:8765", "http://127.3.4.5:1", "http://localhost:8765", "http://[::1]:8765"]
)
def test_plain_http_is_accepted_on_loopback(host: str) -> None:
    assert config(host=host).base_url == host


def test_connection_port_is_added_to_a_host_without_one() -> None:
    assert config(host="http://127.0.0.1", port=8765).base_url == "http://127.0.0.1:8765"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"login": ""}, "login"),
        ({"password": None}, "password"),
        ({"extra": {"region": "uk"}}, "'region' must be one of us, ca, eu, au"),
        ({"extra": {"region": 3}}, "'region'"),
        ({"host": "api.clio.com"}, "host must be a URL with its scheme"),
        ({"host": "ftp://api.clio.com"}, "host must be a URL with its scheme"),
        ({"host": "http://clio-proxy.example.com"}, "plain http"),
        ({"host": "http://10.0.0.5:8765"}, "plain http"),
        ({"host": "https://user:pw@proxy.example.com"}, "without credentials"),
        ({"host": "https://proxy.example.com/?a=1"}, "without credentials, query"),
        ({"extra": {"requests_per_slot": 0}}, "'requests_per_slot'"),
        ({"extra": {"requests_per_slot": -1}}, "'requests_per_slot'"),
        ({"extra": {"requests_per_slot": "fast"}}, "'requests_per_slot'"),
        ({"extra": {"requests_per_slot": True}}, "'requests_per_slot'"),
        ({"extra": {"requests_per_slot": "inf"}}, "'requests_per_slot'"),
        ({"extra": {"expires_at": "tomorrow"}}, "'expires_at'"),
        ({"extra": {"refresh_token": 123}}, "'refresh_token'"),
        ({"extra": {"access_token": ["x"]}}, "'access_token'"),
        ({"extra": {"pool": " "}}, "'pool'"),
        ({"extra": {"pool": 5}}, "'pool'"),
    ],
)
def test_invalid_connections_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ClioConfigError, match=field) as info:
        config(**fields)
    assert "app-secret-value" not in str(info.value)
    assert "'clio_test'" in str(info.value)


def test_extras_are_parsed() -> None:
    settings = config(
        extra={
            "region": "ca",
            "refresh_token": "refresh-abc",
            "access_token": "access-abc",
            "expires_at": "2026-07-01T00:00:00Z",
            "requests_per_slot": "0.5",
            "pool": "clio_shared",
        }
    )
    assert settings.refresh_token == "refresh-abc"
    assert settings.access_token == "access-abc"
    assert settings.expires_at == datetime(2026, 7, 1, tzinfo=timezone.utc).timestamp()
    assert settings.requests_per_slot == 0.5
    assert settings.pool == "clio_shared"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        (1780000000, 1780000000.0),
        (1767225600, 1767225600.0),
        ("1767225600.5", 1767225600.5),
        ("2026-01-01T00:00:00Z", 1767225600.0),
        ("2026-01-01T01:00:00+01:00", 1767225600.0),
        ("2026-01-01T00:00:00", 1767225600.0),  # naive means UTC
    ],
)
def test_expires_at_accepts_epoch_seconds_and_iso_8601(value: Any, expected: float | None) -> None:
    assert config(extra={"expires_at": value}).expires_at == expected


@pytest.mark.parametrize("value", ["tomorrow", True, [1]])
def test_expires_at_rejects_anything_else(value: Any) -> None:
    with pytest.raises(ClioConfigError) as info:
        config(extra={"expires_at": value})
    assert str(info.value) == (
        "Clio connection 'clio_test': Connection extra 'expires_at' must be epoch seconds or an ISO 8601 "
        f"timestamp, got {value!r}."
    )


def test_prefixed_extras_are_a_fallback() -> None:
    settings = config(
        extra={
            "extra__clio__region": "au",
            "extra__clio__requests_per_slot": 2,
            "extra__clio__refresh_token": "legacy-refresh",
            "requests_per_slot": 3,  # the plain key wins
        }
    )
    assert (settings.region, settings.requests_per_slot, settings.refresh_token) == (
        "au",
        3.0,
        "legacy-refresh",
    )


def test_extras_are_copied_not_mutated() -> None:
    extra = {"region": "eu", "refresh_token": "r-token-value"}
    conn = Connection(
        conn_id="c", conn_type="clio", login="id", password="secret-value", extra=json.dumps(extra)
    )
    before = conn.extra
    ClioConfig.from_connection(conn)
    assert conn.extra == before
    assert json.loads(conn.extra) == extra


def test_unknown_extras_are_named_but_not_echoed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        config(extra={"refresh_tokn": "typo-secret-value"})
    assert "refresh_tokn" in caplog.text
    assert "typo-secret-value" not in caplog.text


def test_config_repr_hides_secrets() -> None:
    text = repr(
        config(extra={"refresh_token": "refresh-secret-value", "access_token": "access-secret-value"})
    )
    for secret in ("app-secret-value", "refresh-secret-value", "access-secret-value"):
        assert secret not in text
    assert "ApiSpec(name='platform')" in text


def test_secrets_are_registered_with_the_masker() -> None:
    from airflow.sdk._shared.secrets_masker import redact

    # Secrets no other test registers: the masker is process-wide, and another test's "app-secret" would
    # mask part of a longer secret here.
    config(password="client-mask-me-456", extra={"refresh_token": "refresh-mask-me-123"})
    assert redact("x client-mask-me-456 refresh-mask-me-123 y") == "x *** *** y"


def test_urls_follow_the_api_token_rules() -> None:
    settings = config(extra={"region": "eu"})
    assert settings.urls.endpoint("grow/contacts") == "https://eu.api.clio.com/grow/contacts"
    # The token goes to the region's API host only: not another Clio host, not another region's.
    assert settings.urls.may_carry_token("https://eu.api.clio.com/grow/contacts?page_token=t")
    assert not settings.urls.may_carry_token("https://grow.clio.com/api/v2/contacts")
    assert not settings.urls.may_carry_token("https://api.clio.com/grow/contacts")
    proxied = config(host="https://clio-proxy.example.com", extra={"region": "eu"})
    assert not proxied.urls.may_carry_token("https://grow.clio.com/api/v2/contacts")
    assert not proxied.urls.may_carry_token("https://eu.api.clio.com/grow/contacts")
    assert proxied.urls.may_carry_token("https://clio-proxy.example.com/grow/contacts")
