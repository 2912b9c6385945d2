# SPDX-License-Identifier: Apache-2.0
"""Hold Clio's sliding-window rate limit exactly, per key, under any number of threads.

A request at time ``t`` is admitted only if, with it, no window ``(s - window, s]`` ending at an admitted
request holds more than ``limit`` admitted requests. The server passes each request's arrival time
(taken when its request line was parsed), so :meth:`ClioEmulator.max_requests_in_window` over recorded
arrivals can never exceed the limit, even when threads reach the limiter out of arrival order.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Hashable

__all__ = ["SlidingWindowLimiter"]


class SlidingWindowLimiter:
    """Admit at most ``limit`` events per sliding ``window`` seconds for each key.

    :param limit: events admitted per window and key; None admits everything (and records nothing).
    :param window: window length in seconds.
    :param clock: monotonic clock used when :meth:`try_acquire` gets no explicit time.
    :param horizon: admitted times older than this many seconds before the newest are forgotten; an
        event that reaches the limiter later than that after its own timestamp may be misjudged.
    """

    def __init__(
        self,
        limit: int | None = 3,
        window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        horizon: float = 60.0,
    ) -> None:
        if window <= 0:
            raise ValueError("window must be > 0")
        self._check_limit(limit)
        self._limit = limit
        self.window = window
        self._clock = clock
        self._horizon = max(horizon, 2 * window)
        self._lock = threading.Lock()
        self._admitted: dict[Hashable, list[float]] = {}

    @staticmethod
    def _check_limit(limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0 or None")

    @property
    def limit(self) -> int | None:
        """Events admitted per window and key (None: unlimited)."""
        return self._limit

    @limit.setter
    def limit(self, value: int | None) -> None:
        self._check_limit(value)
        with self._lock:
            self._limit = value

    def try_acquire(self, key: Hashable, at: float | None = None) -> bool:
        """Admit an event for ``key`` at time ``at`` (default: now) if the limit allows; never blocks."""
        now = self._clock() if at is None else at
        # One lock around prune, check and append: two threads can never both take the last slot.
        with self._lock:
            if self._limit is None:
                return True
            times = self._admitted.setdefault(key, [])
            if times and times[-1] - self._horizon > times[0]:
                del times[: bisect.bisect_left(times, times[-1] - self._horizon)]
            if not self._fits(times, now, self._limit):
                return False
            bisect.insort(times, now)
            return True

    def _fits(self, times: list[float], t: float, limit: int) -> bool:
        w = self.window
        # Windows that end at t: events in (t - w, t].
        lo = bisect.bisect_right(times, t - w)
        hi = bisect.bisect_right(times, t)
        if hi - lo + 1 > limit:
            return False
        # Windows that end at a later event u (out-of-order arrival): t joins (u - w, u] for u < t + w.
        end = bisect.bisect_left(times, t + w)
        for j in range(hi, end):
            u = times[j]
            inside = j + 1 - bisect.bisect_right(times, u - w)
            if inside + 1 > limit:
                return False
        return True

    def count(self, key: Hashable, at: float | None = None) -> int:
        """Return how many events of ``key`` were admitted in the window ending at ``at`` (default: now)."""
        now = self._clock() if at is None else at
        with self._lock:
            times = self._admitted.get(key, [])
            return bisect.bisect_right(times, now) - bisect.bisect_right(times, now - self.window)

    def reset(self) -> None:
        """Forget every admitted event."""
        with self._lock:
            self._admitted.clear()
