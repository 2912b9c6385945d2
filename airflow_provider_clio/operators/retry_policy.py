# SPDX-License-Identifier: Apache-2.0
"""Task-level retry policy for Clio tasks (Airflow 3.3+ ``retry_policy``).

The hook already retries each request with backoff; this policy decides what Airflow does once the hook
gives up: wait what the server asked for when the retryable error carried ``Retry-After`` (a 429, or a 503
during maintenance), fail at once on errors
that a retry cannot fix, and otherwise keep the task's exponential ``retry_delay``. Importing this module
fails on Airflow before 3.3, where operators simply go without a policy.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.definitions.retry_policy import RetryDecision, RetryPolicy

from airflow_provider_clio.exceptions import ClioFatalError, ClioRateLimitError, ClioRetryableError

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["ClioRetryPolicy"]


class ClioRetryPolicy(RetryPolicy):
    """
    Retry after the server's ``Retry-After`` when a retryable Clio error has one; fail fast on fatal errors.

    :param max_rate_limit_wait: Upper bound, in seconds, on a wait taken from ``Retry-After``; a longer
        request is capped so a misbehaving proxy cannot park the task for days.
    :param min_rate_limit_wait: Lower bound, in seconds, so ``Retry-After: 0`` does not retry in a tight loop.
    """

    def __init__(self, max_rate_limit_wait: float = 600.0, min_rate_limit_wait: float = 1.0) -> None:
        self.max_rate_limit_wait = float(max_rate_limit_wait)
        self.min_rate_limit_wait = float(min_rate_limit_wait)

    def evaluate(
        self,
        exception: BaseException,
        try_number: int,
        max_tries: int,
        context: Context | None = None,
    ) -> RetryDecision:
        """Return the decision for ``exception``; see the class docstring."""
        if isinstance(exception, ClioFatalError):
            return RetryDecision.fail(
                reason=f"{type(exception).__name__} cannot succeed on retry: {exception}"
            )
        # Any retryable error may carry the server's Retry-After (a 503 in maintenance, not only a 429).
        retry_after = (
            getattr(exception, "retry_after", None) if isinstance(exception, ClioRetryableError) else None
        )
        if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool):
            wait = min(max(float(retry_after), self.min_rate_limit_wait), self.max_rate_limit_wait)
            what = "rate limit" if isinstance(exception, ClioRateLimitError) else "server unavailable"
            return RetryDecision.retry(
                delay=timedelta(seconds=wait),
                reason=f"Clio {what}: retrying after the server's Retry-After ({wait:g} s)",
            )
        return RetryDecision.default()

    def serialize(self) -> dict[str, Any]:
        """Return the JSON form used by DAG serialization."""
        return {
            "__type": f"{type(self).__module__}.{type(self).__qualname__}",
            "max_rate_limit_wait": self.max_rate_limit_wait,
            "min_rate_limit_wait": self.min_rate_limit_wait,
        }

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> ClioRetryPolicy:
        """Rebuild the policy from :meth:`serialize` output."""
        return cls(
            max_rate_limit_wait=data.get("max_rate_limit_wait", 600.0),
            min_rate_limit_wait=data.get("min_rate_limit_wait", 1.0),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClioRetryPolicy) and self.serialize() == other.serialize()

    def __hash__(self) -> int:
        return hash((self.max_rate_limit_wait, self.min_rate_limit_wait))

    def __repr__(self) -> str:
        return (
            f"ClioRetryPolicy(max_rate_limit_wait={self.max_rate_limit_wait:g}, "
            f"min_rate_limit_wait={self.min_rate_limit_wait:g})"
        )
