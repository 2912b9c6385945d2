# SPDX-License-Identifier: Apache-2.0
"""Tests for the Clio Platform API's spec and for the registry that picks an API by name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_clio.apis import DEFAULT_API, ApiSpec, api_names, get_api, register_api, unregister_api
from airflow_provider_clio.apis.platform import PLATFORM, platform_pacer
from airflow_provider_clio.exceptions import ClioConfigError, parse_error_body
from airflow_provider_clio.rate_limit import (
    LimiterPacer,
    Pacer,
    PacerRequest,
    reset_shared_limiters,
    shared_limiter,
)
from airflow_provider_clio.regions import REGIONS


@pytest.fixture(autouse=True)
def _fresh_limiters() -> Iterator[None]:
    reset_shared_limiters()
    yield
    reset_shared_limiters()


def test_platform_is_the_default_api() -> None:
    assert DEFAULT_API == "platform"
    assert get_api() is PLATFORM
    assert get_api("platform") is PLATFORM
    assert api_names()[0] == "platform"
    assert repr(PLATFORM) == "ApiSpec(name='platform')"


def test_platform_serves_every_region_on_its_own_hosts() -> None:
    assert PLATFORM.regions == REGIONS
    assert dict(PLATFORM.api_hosts) == {
        "us": "api.clio.com",
        "ca": "ca.api.clio.com",
        "eu": "eu.api.clio.com",
        "au": "au.api.clio.com",
    }
    assert dict(PLATFORM.auth_hosts) == {
        "us": "auth.api.clio.com",
        "ca": "ca.auth.api.clio.com",
        "eu": "eu.auth.api.clio.com",
        "au": "au.auth.api.clio.com",
    }
    assert PLATFORM.base_path == ""


def test_platform_rules() -> None:
    assert PLATFORM.rotates_refresh_token
    assert PLATFORM.parse_error is parse_error_body
    assert PLATFORM.pool_prefix == "clio_"
    assert PLATFORM.probe_endpoint == "grow/users"
    # The token may go to the region's API host only: an exact allowlist, no *.clio.com.
    assert PLATFORM.token_hosts("eu") == frozenset({"eu.api.clio.com"})


def test_platform_pacer_is_the_shared_limiter_of_the_application_and_region() -> None:
    clock = iter(range(1000, 10**6)).__next__
    pacer = platform_pacer(PacerRequest("app", "us", 2.0, clock=lambda: float(clock())))
    assert isinstance(pacer, LimiterPacer)
    assert isinstance(pacer, Pacer)
    assert pacer.limiter.rate == 2.0
    # Every hook of the application and region in the process gets the same limiter.
    again = platform_pacer(PacerRequest("app", "us", 3.0, clock=pacer.limiter._clock))
    assert isinstance(again, LimiterPacer)
    assert again.limiter is pacer.limiter is shared_limiter("app", "us", 3.0, clock=pacer.limiter._clock)
    assert pacer.limiter.rate == 3.0  # the latest hook's rate wins


def _spec(name: str) -> ApiSpec:
    return ApiSpec(
        name=name,
        api_hosts={"us": "api.example.test"},
        auth_hosts={"us": "auth.example.test"},
        base_path="v1",
        rotates_refresh_token=False,
        parse_error=parse_error_body,
        make_pacer=platform_pacer,
    )


def test_registered_apis_are_selectable_and_named_in_errors() -> None:
    spec = register_api(_spec("example"))
    try:
        assert get_api("example") is spec
        assert api_names() == ("platform", "manage", "example")
        with pytest.raises(ClioConfigError, match="already registered"):
            register_api(_spec("example"))
        assert register_api(_spec("example"), replace=True) is not spec
    finally:
        unregister_api("example")
    with pytest.raises(ClioConfigError, match="unknown Clio API 'example'; choose one of platform"):
        get_api("example")


@pytest.mark.parametrize(
    ("name", "hosts", "match"),
    [
        ("", {"us": "a"}, "lower-case"),
        ("Example", {"us": "a"}, "lower-case"),
        ("example", {"eu": "a"}, "same regions"),
    ],
)
def test_invalid_specs(name: str, hosts: dict[str, str], match: str) -> None:
    with pytest.raises(ClioConfigError, match=match):
        ApiSpec(
            name=name,
            api_hosts=hosts,
            auth_hosts={"us": "auth"},
            base_path="",
            rotates_refresh_token=True,
            parse_error=parse_error_body,
            make_pacer=platform_pacer,
        )
