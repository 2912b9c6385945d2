# SPDX-License-Identifier: Apache-2.0
"""Pacing for a per-token budget that the server announces: ``X-RateLimit-Limit/Remaining/Reset`` headers.

Clio Manage counts requests per access token in 60-second windows. Its limit changes with the time of day
(50 per minute at peak, more off-peak) and can drop in the middle of a window, and every response says
where the window stands. Every task using the token shares that budget, across workers, so a fixed rate
(:class:`~airflow_provider_clio.rate_limit.RateLimiter`) is either too slow off-peak or too fast at peak.

:class:`TokenBudgetPacer` paces one task at its *share* of the token's budget. The share is the task's pool
slots over the pool's slots (one pool per token, so shares of the tasks that can run at once add up to at
most 1). From each response it learns the window's limit ``L``, what is left of it ``M`` and the seconds to
its end ``τ``, then spaces its next request at ``1 / rate`` where::

    rate = min(share * (M - reserve) / τ,  (M - reserve - others * τ) / τ)

- ``share * (M - reserve) / τ``: its share of what is left, spread over the rest of the window. If every
  task of the pool does so, ``M`` shrinks in proportion to ``τ`` and reaches ``reserve`` (not 0) at the
  window's end: the deployment's own traffic never earns a 429 in steady state.
- ``others``: the rate at which the rest of the world (the pool's other tasks, or another client of the same
  token) spends the budget, learned as ``Remaining`` dropping faster than this task's own sends explain
  (smoothed over ``smoothing`` seconds). When the others would leave this task less than its share, it slows
  down *early*, before ``Remaining`` runs out.
- A higher off-peak limit shows up as a larger ``Limit``/``Remaining`` in the next window, and the rate
  follows at once. A limit that drops mid-window shows up as a low ``Remaining`` (rate 0: wait for the
  window's end) or a 429, after which the pacer sends nothing until the later of ``Retry-After`` and the
  window's end (the hook's retry also waits ``Retry-After``).
- Before the first response it paces at ``share * start_limit / start_window`` (Manage's peak, 50/min).

Times from the server (``X-RateLimit-Reset`` as Unix time, or as seconds when it is small) are turned into
the injected monotonic clock at the moment a response is observed, using the response's ``Date`` when sent
(the server's clock, so the local clock's skew does not matter), plus ``reset_margin`` seconds: waking up a
little after the window's end is safe, a little before is not.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.responses import parse_retry_after

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

PEAK_LIMIT = 50
"""Requests per window Clio Manage allows at peak: the assumption before the first response."""

WINDOW_SECONDS = 60.0
"""Length of Clio Manage's rate-limit window."""

_EPOCH_THRESHOLD = 1e9
"""An ``X-RateLimit-Reset`` above this is Unix time (2001 on); below, seconds until the reset."""


class TokenBudgetPacer:
    """
    Pace one task at its share of a token budget announced in ``X-RateLimit-*`` headers (module docstring).

    :param share: This task's fraction of the token's budget, ``pool_slots / pool size``, in (0, 1].
    :param start_limit: Requests per window assumed before the first response says (Manage's peak: 50).
    :param start_window: Window length in seconds assumed until a response shows it (60).
    :param reserve: Requests of every window left unspent, against stale views between concurrent tasks
        (at most a tenth of the limit).
    :param reset_margin: Seconds added to every window end read from the server.
    :param smoothing: Time constant in seconds of the estimate of the others' request rate.
    :param min_horizon: The smallest ``τ`` the rate is computed with (no burst in a window's last second).
    :param clock: Monotonic clock in seconds.
    :param wall: Unix time, used to read ``X-RateLimit-Reset`` when a response has no ``Date``.
    :param name: Label used in log lines (the pool).
    """

    def __init__(
        self,
        share: float,
        *,
        start_limit: int = PEAK_LIMIT,
        start_window: float = WINDOW_SECONDS,
        reserve: int = 1,
        reset_margin: float = 1.0,
        smoothing: float = 20.0,
        min_horizon: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        name: str = "",
    ) -> None:
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise ClioConfigError(f"a task's share of the token budget must be in (0, 1], got {share!r}")
        self.share = float(share)
        self.start_limit = start_limit
        self.reserve = reserve
        self.reset_margin = reset_margin
        self.smoothing = smoothing
        self.min_horizon = min_horizon
        self.name = name
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self.window = float(start_window)
        """Window length: ``start_window`` until responses show it (the longest time to a reset seen)."""
        self._longest = 0.0
        self.limit: int | None = None
        """The last ``X-RateLimit-Limit`` seen."""
        self.remaining: float | None = None
        """What is left of the window: the last ``X-RateLimit-Remaining`` minus this task's sends since."""
        self.window_end: float | None = None
        """The window's end on ``clock`` (margin included)."""
        self.others = 0.0
        """Requests per second the rest of the world spends of the budget, as of the last response."""
        self.blocked_until = -math.inf
        self._reset_raw: str | None = None
        self._observed_at: float | None = None
        self._observed_remaining: float | None = None
        self._sent_since = 0
        self._last_send: float | None = None
        self._others_since = 0.0

    # -- Pacer protocol --------------------------------------------------------------------------------

    def acquire(self, sleep: Callable[[float], None] = time.sleep) -> float:
        """Wait (with ``sleep``) until this task may send its next request; return the seconds waited."""
        with self._lock:
            now = self._clock()
            start = self._send_time(now)
            self._last_send = start
            self._sent_since += 1
            if self.remaining is not None:
                self.remaining -= 1
        delay = start - now
        if delay > 0:
            sleep(delay)
        return max(0.0, delay)

    def release(self) -> None:
        """Nothing to do: the budget is read from the response (:meth:`observe`)."""

    def observe(self, response: requests.Response) -> None:
        """Learn the window's limit, remaining budget and end from ``response``; stop sending after a 429."""
        self.observe_headers(response.status_code, response.headers)

    def observe_headers(self, status: int, headers: Mapping[str, str]) -> None:
        """:meth:`observe` on a status and headers (a case-insensitive mapping such as requests')."""
        now = self._clock()
        with self._lock:
            limit = _int(headers.get("X-RateLimit-Limit"))
            remaining = _int(headers.get("X-RateLimit-Remaining"))
            reset = headers.get("X-RateLimit-Reset")
            if remaining is not None and reset is not None and _number(reset) is not None:
                self._learn(now, status, limit, remaining, reset, headers.get("Date"))
            if status == 429:
                self._rate_limited(now, headers.get("Retry-After"))

    # -- the schedule ----------------------------------------------------------------------------------

    def rate(self, at: float | None = None) -> float:
        """Return the request rate (per second) this task may send at, at time ``at`` (default now)."""
        with self._lock:
            when = self._clock() if at is None else at
            self._roll(when)
            return self._rate(when)

    def _send_time(self, now: float) -> float:
        start = max(now, self.blocked_until)
        for _ in range(3):  # at most: this window, then the next one after waiting for its start
            self._roll(start)
            rate = self._rate(start)
            if rate <= 0:
                # Nothing left for this task in this window: send first thing in the next one.
                assert self.window_end is not None  # a zero rate needs a known window
                start = max(start, self.window_end)
                continue
            spaced = start if self._last_send is None else max(start, self._last_send + 1.0 / rate)
            if self.window_end is None or spaced < self.window_end:
                return spaced
            start = max(start, self.window_end)
        return start

    def _rate(self, at: float) -> float:
        if self.remaining is None or self.window_end is None:
            return self.share * self.start_limit / self.window
        horizon = max(self.window_end - at, self.min_horizon)
        # At most a tenth of the limit: a tiny limit (a test server's) must not be all reserve.
        spendable = self.remaining - min(self.reserve, (self.limit or 0) // 10)
        if spendable <= 0:
            return 0.0
        own_share = self.share * spendable / horizon
        left_by_others = (spendable - self._others_at(at) * horizon) / horizon
        return max(0.0, min(own_share, left_by_others))

    def _roll(self, at: float) -> None:
        """Past the known window's end, assume a fresh window: the last limit, ending a window later."""
        if self.window_end is None or at < self.window_end:
            return
        self.remaining = None if self.limit is None else float(self.limit)
        self.window_end = at + self.window + self.reset_margin
        self._reset_raw = None
        self._observed_at = self._observed_remaining = None

    # -- learning from responses -----------------------------------------------------------------------

    def _learn(
        self, now: float, status: int, limit: int | None, remaining: int, reset: str, date: str | None
    ) -> None:
        seconds_left = self._seconds_to_reset(reset, date)
        end = now + seconds_left + self.reset_margin
        # Unix-time resets name their window exactly; a seconds-to-reset one moves, give it a second.
        same_window = self._observed_at is not None and (
            reset == self._reset_raw or (self.window_end is not None and abs(end - self.window_end) < 1.0)
        )
        if same_window and limit == self.limit and status != 429:
            # A drop that a new limit or a refused request explains is not somebody else's traffic.
            self._learn_others(now, remaining)
        if seconds_left <= 3600:
            # The longest time to a reset seen is the window's length (as good as it gets after one window).
            self._longest = max(self._longest, seconds_left)
            self.window = self._longest
        if limit is not None and limit != self.limit:
            if self.limit is not None:
                log.info("Clio token budget %s: limit changed from %d to %d", self.name, self.limit, limit)
            self.limit = limit
        self.remaining = float(remaining)
        self.window_end = end
        self._reset_raw = reset
        self._observed_at, self._observed_remaining, self._sent_since = now, float(remaining), 0

    def _learn_others(self, now: float, remaining: int) -> None:
        assert self._observed_remaining is not None
        spent_by_others = max(0.0, self._observed_remaining - remaining - self._sent_since)
        # An exponential moving average of the others' rate: each request they spent adds 1 / smoothing,
        # and the estimate fades by e every `smoothing` seconds.
        self.others = self._others_at(now) + spent_by_others / self.smoothing
        self._others_since = now

    def _others_at(self, at: float) -> float:
        """
        The others' rate faded to ``at`` (an old estimate must not hold the task back for good), less one
        request per ``smoothing`` seconds: the estimate's own noise, which would otherwise hold the smaller
        shares of a pool below their share whenever it binds (simulated: a 2:1:1 pool split 2:0.8:0.9).
        """
        faded = self.others * math.exp(-max(0.0, at - self._others_since) / self.smoothing)
        return max(0.0, faded - 1.0 / self.smoothing)

    def _seconds_to_reset(self, reset: str, date: str | None) -> float:
        value = _number(reset) or 0.0
        if value < _EPOCH_THRESHOLD:
            return max(0.0, value)
        server_now = _http_date(date)
        return max(0.0, value - (server_now if server_now is not None else self._wall()))

    def _rate_limited(self, now: float, retry_after: str | None) -> None:
        wait = parse_retry_after(retry_after, now=self._wall)
        until = now + (wait if wait is not None else self.window)
        if self.window_end is not None and self.window_end > now:
            until = max(until, self.window_end)
        self.blocked_until = max(self.blocked_until, until)
        self.remaining = 0.0
        log.warning(
            "Clio token budget %s: rate limited (429); no request for %.1f s (Retry-After %s)",
            self.name,
            until - now,
            retry_after or "absent",
        )

    def __repr__(self) -> str:
        return (
            f"TokenBudgetPacer(name={self.name!r}, share={self.share:g}, limit={self.limit}, "
            f"remaining={self.remaining})"
        )


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _int(value: str | None) -> int | None:
    number = _number(value)
    return None if number is None or number < 0 else int(number)


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


__all__ = ["PEAK_LIMIT", "WINDOW_SECONDS", "TokenBudgetPacer"]
