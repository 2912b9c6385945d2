# SPDX-License-Identifier: Apache-2.0
"""Client-side pacing and backoff: the burst-free limiter, its per-process registry, pools and retry waits.

Clio allows 3 requests per second per OAuth application and region, shared by every worker. Across
processes the Airflow pool ``clio_<region>`` is the semaphore: its slots equal the limit, and a task holding
``k`` slots paces itself at ``k * requests_per_slot`` req/s, so the running tasks' rates never add up to more
than the limit. Inside one process :class:`RateLimiter` does the pacing, shared by every hook of the same
application and region (:func:`shared_limiter`).
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime

from airflow_provider_clio.exceptions import ClioConfigError

log = logging.getLogger(__name__)

DEFAULT_SAFETY = 0.05
"""Fraction by which the limiter stretches the emission interval beyond ``1 / rate``."""

POOL_PREFIX = "clio_"


class RateLimiter:
    """
    Space requests evenly at ``rate`` per second: a GCRA with zero burst tolerance, plus a window guard.

    The limiter keeps the theoretical arrival time (TAT) of the next request. A caller reserves the slot
    ``max(now, TAT)`` under the lock and moves TAT one emission interval ``T`` later, then sleeps *outside*
    the lock, so concurrent threads queue up in reservation order without holding each other up.

    Why ``T = (1 + safety) / rate`` rather than ``1 / rate``: Clio counts requests in any sliding 1-second
    window. With ``T = 1 / rate`` exactly, ``rate + 1`` consecutive requests span exactly 1 s, so the
    slightest clock skew, scheduler hiccup or network jitter between our send and the server's arrival
    stamp puts ``rate + 1`` of them into one window and earns a 429. With the margin, any ``N + 1``
    consecutive requests span ``N * T = N (1 + safety) / rate`` seconds, which is more than 1 s for every
    ``N >= rate``; at rate 3 the 4th request comes 1.05 s after the 1st, leaving 50 ms for jitter. Across
    processes each one holds its own ``k`` slots of the pool, and each process keeps to ``k`` per second in
    every window by the same argument, so their sum keeps to the pool's slots. The margin costs 5 % of
    the throughput, and there is no burst after an idle period (a burst would break the same window).

    The window guard covers what the margin cannot: a stall longer than the margin between our send and
    the server's arrival stamp (a descheduled worker, a paused server). The server stamps a request after
    we send it and before we get its response, so a request sent at least ``window`` seconds after the
    response to the ``k``-th previous one can never share a window with it, whatever the delays. With
    ``k = max(1, floor(rate))`` requests per window per process, the pool's slots again bound the sum. The
    guard only binds when a response takes longer than the GCRA's slack (50 ms at rate 1); callers report
    responses with :meth:`release`.

    Hand-over: a task that just got its pool slots does not know when their previous holder sent its last
    request, only that it was before this task started. So a new limiter (and one whose rate changes) starts
    with its window guard full, as if it had used every slot at that moment: its first request waits one
    window, which puts it out of reach of every request sent before the slots changed hands. A real scheduler
    run showed the cost of skipping this: a 4th request in one second, 0.5 s after a slot changed hands.

    :param rate: Requests per second, > 0.
    :param safety: Margin on the emission interval (0.05 = 5 %).
    :param window: Length of the server's sliding window in seconds.
    :param clock: Monotonic clock in seconds (injectable for tests).
    :param name: Label used in log lines.
    """

    def __init__(
        self,
        rate: float,
        *,
        safety: float = DEFAULT_SAFETY,
        window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
    ) -> None:
        if not safety >= 0:
            raise ClioConfigError(f"limiter safety margin must be >= 0, got {safety!r}")
        if not 0 <= window < math.inf:
            raise ClioConfigError(f"limiter window must be >= 0 seconds, got {window!r}")
        self._safety = safety
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._tat = -math.inf
        self.name = name
        self._rate = _check_rate(rate)
        self._interval = (1.0 + safety) / self._rate
        # Completion times of the most recent requests, one per request allowed in a window; seeded with the
        # creation time for the slot hand-over (see the class docstring).
        self._done: deque[float] = _full_window(clock(), self._rate)

    @property
    def rate(self) -> float:
        """Requests per second this limiter paces at (before the safety margin)."""
        return self._rate

    @property
    def interval(self) -> float:
        """Seconds between two consecutive requests: ``(1 + safety) / rate``."""
        return self._interval

    @property
    def per_window(self) -> int:
        """Requests this limiter lets into one sliding window: ``max(1, floor(rate))``."""
        return self._done.maxlen or 1

    def set_rate(self, rate: float) -> bool:
        """Change the rate for later reservations; return whether it changed."""
        rate = _check_rate(rate)
        with self._lock:
            if rate == self._rate:
                return False
            old, self._rate = self._rate, rate
            self._interval = (1.0 + self._safety) / rate
            # More slots may have just changed hands: treat the change like a fresh hand-over.
            self._done = _full_window(self._clock(), rate)
        log.info("Clio rate limiter %s: rate changed from %.3g to %.3g req/s", self.name, old, rate)
        return True

    def reserve(self) -> float:
        """Reserve the next free send time and return how many seconds to wait for it (>= 0)."""
        with self._lock:
            now = self._clock()
            start = max(now, self._tat)
            if len(self._done) == self._done.maxlen:
                start = max(start, self._done[0] + self._window)
            self._tat = start + self._interval
        return start - now

    def acquire(self, sleep: Callable[[float], None] = time.sleep) -> float:
        """Wait until this caller may send; return the seconds waited. Call :meth:`release` afterwards."""
        delay = self.reserve()
        if delay > 0:
            sleep(delay)
            with self._lock:
                # A late wake-up (busy host, GC pause) shortens the gap to the next request; push later
                # reservations back so the gap before the next send is still a whole interval.
                late_start = self._clock()
                self._tat = max(self._tat, late_start + self._interval)
        return delay

    def release(self) -> None:
        """Record that the response to an acquired request arrived (or that the request failed)."""
        with self._lock:
            self._done.append(self._clock())

    def __repr__(self) -> str:
        return f"RateLimiter(name={self.name!r}, rate={self._rate!r}, interval={self._interval:.4f})"


def _full_window(now: float, rate: float) -> deque[float]:
    per_window = _per_window(rate)
    return deque([now] * per_window, maxlen=per_window)


def _per_window(rate: float) -> int:
    # The small epsilon keeps rates computed as 3 * 1.0 or 0.1 * 30 from flooring one short.
    return max(1, math.floor(rate + 1e-9))


def _check_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not (0 < rate < math.inf):
        raise ClioConfigError(f"request rate must be a positive number of requests per second, got {rate!r}")
    return float(rate)


class LimiterRegistry:
    """Hand out one :class:`RateLimiter` per (client id, region) so all hooks in a process share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limiters: dict[tuple[str, str, Callable[[], float]], RateLimiter] = {}

    def get(
        self,
        client_id: str,
        region: str,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        safety: float = DEFAULT_SAFETY,
    ) -> RateLimiter:
        """Return the shared limiter of this application and region, set to the latest caller's rate."""
        # The clock is part of the key only so tests with fake clocks never share state with real hooks;
        # in production every hook uses time.monotonic and the key is (client_id, region).
        key = (client_id, region, clock)
        with self._lock:
            limiter = self._limiters.get(key)
            if limiter is None:
                limiter = RateLimiter(rate, safety=safety, clock=clock, name=f"{client_id}/{region}")
                self._limiters[key] = limiter
                log.debug("Clio rate limiter %s created at %.3g req/s", limiter.name, rate)
                return limiter
        limiter.set_rate(rate)
        return limiter

    def clear(self) -> None:
        """Forget every limiter (tests; after fork)."""
        self._lock = threading.Lock()
        self._limiters = {}


_REGISTRY = LimiterRegistry()

# A forked worker (LocalExecutor, Celery prefork) holds its own pool slots: it must not inherit the parent's
# schedule, nor a lock some other parent thread held at fork time.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_REGISTRY.clear)


def shared_limiter(
    client_id: str,
    region: str,
    rate: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    safety: float = DEFAULT_SAFETY,
) -> RateLimiter:
    """Return the process-wide limiter for ``(client_id, region)``, updated to ``rate``."""
    return _REGISTRY.get(client_id, region, rate, clock=clock, safety=safety)


def reset_shared_limiters() -> None:
    """Drop every process-wide limiter (for tests)."""
    _REGISTRY.clear()


def pool_name_for(region: str, override: str | None = None) -> str:
    """Return the Airflow pool of a region: ``override`` when given, else ``clio_<region>``."""
    return override or f"{POOL_PREFIX}{region}"


def current_task_pool_slots() -> int | None:
    """Return the ``pool_slots`` of the running Airflow task, or ``None`` outside a task."""
    try:
        from airflow.sdk import get_current_context

        context = get_current_context()
    except Exception:
        # No task is running (CLI, scripts, tests) or the SDK is unavailable: the caller falls back to 1.
        return None
    task = context.get("task") or getattr(context.get("ti"), "task", None)
    slots = getattr(task, "pool_slots", None)
    if isinstance(slots, int) and not isinstance(slots, bool) and slots >= 1:
        return slots
    return None


def resolve_pool_slots(pool_slots: int | None) -> int:
    """Return ``pool_slots`` if given (validated), else the running task's, else 1."""
    if pool_slots is None:
        return current_task_pool_slots() or 1
    if isinstance(pool_slots, bool) or not isinstance(pool_slots, int) or pool_slots < 1:
        raise ClioConfigError(f"pool_slots must be a positive integer, got {pool_slots!r}")
    return pool_slots


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

    def backoff(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Return the computed wait before retry number ``retry_number`` (1-based)."""
        base = min(self.maximum, self.initial * self.multiplier ** (retry_number - 1))
        if not self.jitter:
            return base
        return (rng or random).uniform(0.0, base)

    def next_wait(
        self,
        retry_number: int,
        *,
        waited: float,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float | None:
        """
        Return the wait before retry ``retry_number``, or ``None`` when the call must give up.

        :param retry_number: 1 for the first retry.
        :param waited: Seconds already spent waiting in this call.
        :param retry_after: The server's ``Retry-After`` in seconds, if any.
        """
        if retry_number >= self.max_attempts:
            return None
        remaining = self.max_total_wait - waited
        if retry_after is not None:
            # The server's wait is honoured exactly or not at all: retrying earlier would just earn
            # another 429, so a wait beyond the budget hands over to Airflow's task retry now.
            return retry_after if retry_after <= remaining else None
        if remaining <= 0:
            return None
        return min(self.backoff(retry_number, rng), remaining)


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for (delta-seconds or HTTP-date), else ``None``."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now())


__all__ = [
    "DEFAULT_SAFETY",
    "LimiterRegistry",
    "RateLimiter",
    "RetrySettings",
    "current_task_pool_slots",
    "parse_retry_after",
    "pool_name_for",
    "reset_shared_limiters",
    "resolve_pool_slots",
    "shared_limiter",
]
