# SPDX-License-Identifier: Apache-2.0
"""ClioRetryPolicy: Retry-After waits, fail-fast on fatal errors, serialization, and a real retried task."""

from __future__ import annotations

import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from airflow.sdk import BaseOperator
from airflow.sdk.definitions.retry_policy import RetryAction

from airflow_provider_clio.exceptions import (
    ClioBadRequestError,
    ClioPermissionError,
    ClioRateLimitError,
    ClioTransientError,
)
from airflow_provider_clio.operators.retry_policy import ClioRetryPolicy
from airflow_provider_clio.task_policy import DEFAULT_TASK_RETRY_ARGS


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(7.0, 7.0), (0.0, 1.0), (3600.0, 600.0)],
    ids=["as-asked", "min-1s", "capped-10min"],
)
def test_rate_limit_with_retry_after_waits_what_the_server_asked(retry_after: float, expected: float) -> None:
    decision = ClioRetryPolicy().evaluate(ClioRateLimitError("slow down", retry_after=retry_after), 1, 5)
    assert decision.action is RetryAction.RETRY
    assert decision.retry_delay == datetime.timedelta(seconds=expected)
    assert decision.reason is not None
    assert "Retry-After" in decision.reason


def test_any_retryable_error_with_retry_after_waits_what_the_server_asked() -> None:
    # A 503 during maintenance may carry Retry-After too (the hook sets it on ClioTransientError).
    error = ClioTransientError("maintenance", status_code=503)
    error.retry_after = 120.0  # type: ignore[attr-defined]
    decision = ClioRetryPolicy().evaluate(error, 1, 5)
    assert decision.action is RetryAction.RETRY
    assert decision.retry_delay == datetime.timedelta(seconds=120)
    assert "Retry-After" in (decision.reason or "")
    # A non-Clio error with such an attribute is not the server's answer: the task's backoff applies.
    stranger = RuntimeError("bug")
    stranger.retry_after = 5.0  # type: ignore[attr-defined]
    assert ClioRetryPolicy().evaluate(stranger, 1, 5).action is RetryAction.DEFAULT


@pytest.mark.parametrize(
    "error",
    [ClioRateLimitError("no header"), ClioTransientError("503", status_code=503), RuntimeError("bug")],
    ids=["429-without-retry-after", "transient", "other"],
)
def test_other_errors_keep_the_task_backoff(error: BaseException) -> None:
    assert ClioRetryPolicy().evaluate(error, 1, 5).action is RetryAction.DEFAULT


@pytest.mark.parametrize(
    "error",
    [ClioPermissionError("forbidden", status_code=403), ClioBadRequestError("bad field", status_code=400)],
)
def test_fatal_errors_fail_at_once(error: BaseException) -> None:
    decision = ClioRetryPolicy().evaluate(error, 1, 5)
    assert decision.action is RetryAction.FAIL
    assert type(error).__name__ in (decision.reason or "")


def test_serialize_round_trip() -> None:
    policy = ClioRetryPolicy(max_rate_limit_wait=120, min_rate_limit_wait=2)
    data = policy.serialize()
    assert data["__type"] == "airflow_provider_clio.operators.retry_policy.ClioRetryPolicy"
    assert ClioRetryPolicy.deserialize(data) == policy
    assert repr(policy) == "ClioRetryPolicy(max_rate_limit_wait=120, min_rate_limit_wait=2)"


def test_default_task_retry_arguments() -> None:
    defaults = dict(DEFAULT_TASK_RETRY_ARGS)
    assert defaults == {
        "retries": 5,
        "retry_delay": datetime.timedelta(seconds=30),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": datetime.timedelta(minutes=10),
    }


_attempts: list[int] = []


class _RateLimitedOnce(BaseOperator):
    def execute(self, context: Any) -> str:
        _attempts.append(context["ti"].try_number)
        if len(_attempts) == 1:
            # Retry-After: 1 replaces the task's 10-minute retry_delay.
            raise ClioRateLimitError("Too Many Requests", retry_after=1.0)
        return "done"


def test_a_real_task_retries_after_retry_after_not_retry_delay(airflow_db: Path, support: ModuleType) -> None:
    _attempts.clear()
    with support.manual_dag("retry_policy") as dag:
        _RateLimitedOnce(
            task_id="limited",
            retries=1,
            retry_delay=datetime.timedelta(minutes=10),
            retry_policy=ClioRetryPolicy(),
        )
    dag_run = support.run_dag(dag)
    assert support.ti_state(dag_run, "limited") == "success"
    assert _attempts == [1, 2]
