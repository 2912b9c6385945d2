# SPDX-License-Identifier: Apache-2.0
"""In-request retries of retryable answers (429, 5xx, transport errors), as tenacity's own objects.

``RetrySettings`` builds a :class:`tenacity.Retrying`: retry on :class:`ClioRetryableError`, stop after
``max_attempts`` requests or once the waits would overrun ``max_total_wait``, and wait exponentially (full
jitter by default), or exactly what the server's ``Retry-After`` asks. Once it stops, the typed retryable
error propagates and Airflow's task retry takes over.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import tenacity

from airflow_provider_clio.exceptions import ClioConfigError, ClioRetryableError


def _retry_after(retry_state: tenacity.RetryCallState) -> float | None:
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    value = getattr(exc, "retry_after", None)
    return None if value is None else float(value)


class wait_retry_after(tenacity.wait.wait_base):  # lower case like tenacity's own waits
    """
    Wait what the failed attempt's ``Retry-After`` asks, else ``fallback`` cut to the budget left.

    The server's wait is returned exactly, never cut: retrying earlier would only earn another 429, so a
    wait beyond the budget is left to :class:`stop_after_total_wait`, which hands over to Airflow at once.

    :param fallback: The computed wait (exponential backoff).
    :param budget: Seconds all waits of one call may add up to.
    """

    def __init__(self, fallback: tenacity.wait.wait_base, budget: float) -> None:
        self.fallback = fallback
        self.budget = budget

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        retry_after = _retry_after(retry_state)
        if retry_after is not None:
            return retry_after
        return min(self.fallback(retry_state), max(0.0, self.budget - retry_state.idle_for))


class stop_after_total_wait(tenacity.stop.stop_base):  # lower case like tenacity's own stops
    """
    Stop when the budget of waiting is spent, or the upcoming wait would overrun it.

    Counts only the waits between attempts (``idle_for``), not the requests themselves, unlike tenacity's
    ``stop_after_delay``. tenacity computes the upcoming wait before it asks the stop.

    :param budget: Seconds all waits of one call may add up to.
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        remaining = self.budget - retry_state.idle_for
        return remaining <= 0 or retry_state.upcoming_sleep > remaining


@dataclass(frozen=True)
class RetrySettings:
    """
    In-request retry policy for retryable answers (429, 5xx, transport errors).

    The n-th retry waits ``min(maximum, initial * multiplier**(n-1))`` seconds (1, 2, 4, 8, 16 by default,
    as Clio recommends), drawn uniformly below that value when ``jitter`` is on ("full jitter": workers
    that failed together do not retry together). A ``Retry-After`` from the server replaces the computed
    wait, without jitter. Once ``max_attempts`` requests were sent, or the next wait would take the total
    past ``max_total_wait``, the hook raises the typed retryable error and Airflow's task retry takes over.

    :param max_attempts: Requests per call, including the first one.
    :param initial: Upper bound of the first retry's wait, seconds.
    :param maximum: Cap of a single computed wait, seconds.
    :param multiplier: Growth of the wait per retry.
    :param jitter: Draw computed waits uniformly from ``[0, wait]``.
    :param max_total_wait: Budget of seconds spent waiting within one call.
    """

    max_attempts: int = 6
    initial: float = 1.0
    maximum: float = 16.0
    multiplier: float = 2.0
    jitter: bool = True
    max_total_wait: float = 60.0

    def __post_init__(self) -> None:
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ClioConfigError(f"retry.max_attempts must be an integer >= 1, got {attempts!r}")
        for name, minimum in (("initial", 0), ("maximum", 0), ("max_total_wait", 0), ("multiplier", 1)):
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not minimum <= value < math.inf:
                raise ClioConfigError(f"retry.{name} must be a number >= {minimum}, got {value!r}")

    def stop(self) -> tenacity.stop.stop_base:
        """Stop after ``max_attempts`` requests or when the waits would overrun ``max_total_wait``."""
        return tenacity.stop_after_attempt(self.max_attempts) | stop_after_total_wait(self.max_total_wait)

    def wait(self) -> tenacity.wait.wait_base:
        """Wait ``Retry-After`` when the server sent one, else the (jittered) exponential backoff."""
        backoff_type = tenacity.wait_random_exponential if self.jitter else tenacity.wait_exponential
        backoff = backoff_type(multiplier=self.initial, max=self.maximum, exp_base=self.multiplier)
        return wait_retry_after(backoff, self.max_total_wait)

    def retrying(
        self,
        *,
        sleep: Callable[[float], None] = time.sleep,
        before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
    ) -> tenacity.Retrying:
        """Return the tenacity controller of one call; it re-raises the last error once it stops."""
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(ClioRetryableError),
            stop=self.stop(),
            wait=self.wait(),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )


def log_before_sleep(
    warn: Callable[..., object], label: str, max_attempts: int
) -> Callable[[tenacity.RetryCallState], None]:
    """
    Return a ``before_sleep`` that logs the failed attempt and the wait ahead, once per retry.

    :param warn: A logger's ``warning`` method (stdlib or structlog; both take ``%`` arguments).
    """

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        status = getattr(exc, "status_code", None)
        warn(
            "Clio %s: %s on attempt %d/%d (%s); %s %.2f s%s",
            label,
            f"HTTP {status}" if status is not None else "transport error",
            retry_state.attempt_number,
            max_attempts,
            exc,
            "rate limited, sleeping" if status == 429 else "backing off",
            retry_state.upcoming_sleep,
            " as Retry-After asks" if _retry_after(retry_state) is not None else "",
        )

    return before_sleep


__all__ = ["RetrySettings", "log_before_sleep", "stop_after_total_wait", "wait_retry_after"]
