# SPDX-License-Identifier: Apache-2.0
"""Tests for the in-request retry policy: tenacity's stop/wait/retry objects driven with a fake sleep."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from airflow_provider_clio.exceptions import (
    ClioConfigError,
    ClioError,
    ClioNotFoundError,
    ClioRateLimitError,
    ClioTransientError,
)
from airflow_provider_clio.retrying import RetrySettings, log_before_sleep


class Flaky:
    """A call that raises the given errors one after another, then answers ``"ok"``."""

    def __init__(self, errors: Iterable[ClioError]) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def outage(n: int = 100) -> Flaky:
    return Flaky(ClioTransientError("maintenance", status_code=503) for _ in range(n))


def run(settings: RetrySettings, call: Flaky, **kwargs: Any) -> tuple[Any, list[float]]:
    """Run ``call`` under ``settings``; return its result (or the error it ended with) and the sleeps."""
    sleeps: list[float] = []
    try:
        result: Any = settings.retrying(sleep=sleeps.append, **kwargs)(call)
    except ClioError as exc:
        result = exc
    return result, sleeps


def test_backoff_without_jitter_follows_clio_recommendation() -> None:
    settings = RetrySettings(max_attempts=8, jitter=False, max_total_wait=1000)
    error, sleeps = run(settings, outage())
    assert sleeps == [1, 2, 4, 8, 16, 16, 16]
    assert isinstance(error, ClioTransientError)  # the last error itself, for Airflow's task retry


def test_backoff_with_full_jitter_stays_below_the_cap() -> None:
    settings = RetrySettings(max_attempts=10, max_total_wait=1000)
    draws: list[list[float]] = [run(settings, outage())[1] for _ in range(200)]
    for n in range(1, 10):
        base = min(16, 2 ** (n - 1))
        waits = [sleeps[n - 1] for sleeps in draws]
        assert all(0 <= w <= base for w in waits)
        assert max(waits) > base / 2  # actually spread, not pinned to 0


def test_stops_after_max_attempts() -> None:
    call = outage()
    error, sleeps = run(RetrySettings(max_attempts=3, jitter=False), call)
    assert isinstance(error, ClioTransientError)
    assert call.calls == 3
    assert sleeps == [1, 2]


def test_a_success_after_retries_is_returned() -> None:
    result, sleeps = run(RetrySettings(jitter=False), outage(2))
    assert result == "ok"
    assert sleeps == [1, 2]


def test_fatal_errors_are_not_retried() -> None:
    call = Flaky([ClioNotFoundError("gone", status_code=404)])
    error, sleeps = run(RetrySettings(), call)
    assert isinstance(error, ClioNotFoundError)
    assert (call.calls, sleeps) == (1, [])


def test_retry_after_overrides_the_computed_wait_without_jitter() -> None:
    errors = [ClioRateLimitError("slow down", retry_after=7.0), ClioRateLimitError("again", retry_after=0.0)]
    result, sleeps = run(RetrySettings(jitter=True), Flaky(errors))
    assert result == "ok"
    assert sleeps == [7.0, 0.0]


def test_retry_after_beyond_the_budget_gives_up_at_once() -> None:
    call = Flaky([ClioRateLimitError("slow down", retry_after=61)])
    error, sleeps = run(RetrySettings(max_total_wait=60), call)
    assert isinstance(error, ClioRateLimitError)
    assert error.retry_after == 61
    assert (call.calls, sleeps) == (1, [])


@pytest.mark.parametrize(("second", "fits"), [(11, False), (10, True)])
def test_retry_after_must_fit_in_the_budget_left(second: float, fits: bool) -> None:
    errors = [ClioRateLimitError("a", retry_after=50), ClioRateLimitError("b", retry_after=second)]
    result, sleeps = run(RetrySettings(max_total_wait=60), Flaky(errors))
    assert sleeps == ([50, second] if fits else [50])
    assert (result == "ok") is fits


def test_computed_wait_is_capped_by_the_remaining_budget() -> None:
    call = outage()
    error, sleeps = run(RetrySettings(jitter=False, max_total_wait=20, max_attempts=10), call)
    assert isinstance(error, ClioTransientError)
    assert sleeps == [1, 2, 4, 8, 5]  # 16 s cut to the 5 s left, then the budget is spent
    assert call.calls == 6


def test_a_zero_budget_never_waits() -> None:
    call = outage()
    _, sleeps = run(RetrySettings(max_total_wait=0), call)
    assert (call.calls, sleeps) == (1, [])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": 1.5},
        {"initial": -1},
        {"maximum": float("inf")},
        {"multiplier": 0.5},
        {"max_total_wait": "60"},
    ],
)
def test_invalid_retry_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ClioConfigError, match="retry\\."):
        RetrySettings(**kwargs)  # type: ignore[arg-type]


def test_every_retry_is_logged_with_its_wait_and_cause() -> None:
    lines: list[str] = []

    def warn(message: str, *args: Any) -> None:
        lines.append(message % args)

    errors = [ClioTransientError("maintenance", status_code=503), ClioRateLimitError("slow", retry_after=3)]
    before_sleep = log_before_sleep(warn, "grow/contacts", 4)
    result, _ = run(RetrySettings(max_attempts=4, jitter=False), Flaky(errors), before_sleep=before_sleep)
    assert result == "ok"
    assert lines == [
        "Clio grow/contacts: HTTP 503 on attempt 1/4 (maintenance (HTTP 503)); backing off 1.00 s",
        "Clio grow/contacts: HTTP 429 on attempt 2/4 (slow (HTTP 429)); rate limited, sleeping 3.00 s as "
        "Retry-After asks",
    ]
