# SPDX-License-Identifier: Apache-2.0
"""Client-side pacing: the :class:`Pacer` protocol the hook talks to, and the burst-free limiter behind it.

Clio allows 3 requests per second per OAuth application and region, shared by every worker. Across
processes the Airflow pool ``clio_<region>`` is the semaphore (see :mod:`~airflow_provider_clio.pools`): its
slots equal the limit, and a task holding ``k`` slots paces itself at ``k * requests_per_slot`` req/s, so the
running tasks' rates never add up to more than the limit. Inside one process :class:`RateLimiter` does the
pacing, shared by every hook of the same application and region (:func:`shared_limiter`). Each API's spec
builds the pacer its hooks use (:attr:`ApiSpec.make_pacer <airflow_provider_clio.apis.ApiSpec.make_pacer>`).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from airflow_provider_clio.exceptions import ClioConfigError

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

DEFAULT_SAFETY = 0.05
"""Fraction by which the limiter stretches the emission interval beyond ``1 / rate``."""


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


@dataclass(frozen=True)
class PacerRequest:
    """
    What an API's ``make_pacer`` needs to build (or share) the pacer of one hook.

    :param client_id: The OAuth application; Clio counts its limit per application and region.
    :param region: The connection's region.
    :param rate: Requests per second this hook may send: ``pool_slots * requests_per_slot``.
    :param clock: Monotonic clock (injected by tests).
    :param pool_slots: The pool slots the hook's work holds.
    :param pool_size: The slots of the connection's pool when the API sizes pools in shares of a token's
        budget (:attr:`ApiSpec.pool_size <airflow_provider_clio.apis.ApiSpec.pool_size>`), else ``None``.
    :param pool: The connection's pool: one per token where the budget is per token.
    """

    client_id: str
    region: str
    rate: float
    clock: Callable[[], float] = time.monotonic
    pool_slots: int = 1
    pool_size: int | None = None
    pool: str = ""


@runtime_checkable
class Pacer(Protocol):
    """
    Hold API requests back so they stay within the API's rate limit; the hook talks only to this.

    The hook calls :meth:`acquire` before each API request, :meth:`release` once its response arrived (or the
    request failed), then :meth:`observe` with the response, where an API announces its limit in headers.
    """

    def acquire(self, sleep: Callable[[float], None]) -> float:
        """Wait (with ``sleep``) until a request may go; return the seconds waited."""
        ...

    def release(self) -> None:
        """Record that the response to an acquired request arrived, or that the request failed."""
        ...

    def observe(self, response: requests.Response) -> None:
        """Learn from a response (rate-limit headers, a 429); a fixed-rate pacer ignores it."""
        ...


class LimiterPacer:
    """
    The :class:`Pacer` over a fixed-rate :class:`RateLimiter`: Clio Platform announces no limit in headers.

    :param limiter: The (usually process-wide, see :func:`shared_limiter`) limiter to pace with.
    """

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def acquire(self, sleep: Callable[[float], None]) -> float:
        """Wait for the limiter's next slot; return the seconds waited."""
        return self.limiter.acquire(sleep)

    def release(self) -> None:
        """Feed the limiter's window guard (see :class:`RateLimiter`)."""
        self.limiter.release()

    def observe(self, response: requests.Response) -> None:
        """Nothing to learn: the rate comes from the pool slots, not from the server."""

    def __repr__(self) -> str:
        return f"LimiterPacer({self.limiter!r})"


__all__ = [
    "DEFAULT_SAFETY",
    "LimiterPacer",
    "LimiterRegistry",
    "Pacer",
    "PacerRequest",
    "RateLimiter",
    "reset_shared_limiters",
    "shared_limiter",
]
