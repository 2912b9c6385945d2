# SPDX-License-Identifier: Apache-2.0
"""Client-side pacing: the :class:`Pacer` protocol the hook talks to, and the burst-free limiter behind it.

Clio allows 3 requests per second per OAuth application and region, shared by every worker. Across
processes the Airflow pool ``clio_<region>`` is the semaphore (see :mod:`~airflow_provider_clio.pools`): its
slots equal the limit, and a task holding ``k`` slots paces itself at ``k * requests_per_slot`` req/s, so the
running tasks' rates never add up to more than the limit. Inside one process :class:`RateLimiter` does the
pacing, shared by every hook of the same application and region (:func:`shared_limiter`). Each API's spec
builds the pacer its hooks use (:attr:`ApiSpec.make_pacer <airflow_provider_clio.apis.ApiSpec.make_pacer>`).

(Just over 400 lines: most of it is the limiter's own account of its spacing and window guard.)
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
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
    Space requests evenly at ``rate`` per second (a GCRA with zero burst) and guard every sliding window.

    **Spacing.** The limiter keeps the theoretical arrival time (TAT) of the next request. A caller reserves
    the slot ``max(now, TAT)`` under the lock and moves TAT one emission interval ``T = (1 + safety) / rate``
    later, then sleeps *outside* the lock, so concurrent threads queue up in reservation order. Why not
    ``T = 1 / rate``: Clio counts requests in any sliding 1-second window, and ``rate + 1`` requests spaced
    exactly ``1 / rate`` apart span exactly 1 s, so the slightest jitter between our send and the server's
    arrival stamp puts ``rate + 1`` of them into one window. With the margin, ``rate + 1`` consecutive
    requests span ``1 + safety`` seconds (1.05 s at the default), leaving 50 ms for jitter. No burst
    after an idle period either (it would break the same window).

    **Window guard by send time.** Clio's limiter sits in front of the application, so a request is stamped
    shortly after we send it, not when we get the answer. With ``k = max(1, floor(rate))`` requests allowed
    per window, a request may leave at ``t`` only if the ``k``-th previous request of this limiter was
    stamped more than ``window`` before ``t``; the latest it can have been stamped is taken as ``min(its
    send + margin + excess, its answer)``, where the excess is how much longer its round trip took than the
    usual one, counted only beyond ``margin / 2``: up to that it is jitter, which the margin covers with
    half of it to spare; beyond it the request may have waited at the server's door, and then all of it
    counts. The check and the recording of the send happen together under the lock, when the caller wakes
    up, so the guard holds whatever the threads' wake-up order. On time, the guard coincides with the
    spacing: no round trip is paid.

    *Assumption*: the one-way delays from us to Clio's limiter of two requests ``k`` apart differ by less
    than ``margin`` (default ``safety * window`` = 50 ms), and nothing stalls between :meth:`acquire`
    returning and the request leaving. What covers the cases the assumption can miss:

    - *slot hand-over*: the slots' previous holder had its last request answered before the scheduler gave
      the slots to this task, so before this task's process started (Airflow forks a new process per task
      try). A limiter starts as if it had sent ``k`` requests at ``handed_over_at``, by default its
      creation, in production the start of its process (see :func:`shared_limiter`): its first request
      leaves one window after that, so the task's own start-up (DAG parse, imports) counts towards that
      wait. A rate change within a process counts as a hand-over at that moment;
    - *stalled worker*: a caller that wakes up late is checked against the sends recorded meanwhile and
      waits again if needed, and a late send pushes the next reservations back by a whole interval;
    - *paused server*, stalled network or a send delayed after :meth:`acquire`: whatever a round trip took
      beyond the shortest of the last 32 may have been spent before the stamp, so the guard adds that
      excess once it exceeds half the margin (bounded by the answer); until 8 round trips are known, the
      shortest may still hide how fast the server answers, so such a slow request counts from its answer;
      while a request slower than usual is still in flight, the ``k``-th next one waits for its answer;
    - *first round trips*: until ``k + 1`` round trips are known the guard counts from answers. The first
      ``k`` requests may all have waited at a paused server's door (or paid a connection's TCP and TLS
      set-up), but request ``k + 1`` leaves only after the first one's answer, so the ``k + 1`` round trips
      include one that shows the usual time;
    - *any 429* (:meth:`observe` / :meth:`on_rate_limited`): the assumption failed somewhere, so for
      ``fallback_seconds`` the guard is the strict one, one window after the ``k``-th previous *answer*
      (always safe, at the cost of one round trip per ``k`` requests); every 429 extends it.

    :param rate: Requests per second, > 0.
    :param safety: Margin on the emission interval (0.05 = 5 %).
    :param window: Length of the server's sliding window in seconds.
    :param margin: Largest difference of one-way delays the send-time guard absorbs, seconds (default
        ``safety * window``).
    :param fallback_seconds: How long a 429 switches the guard to answer times.
    :param clock: Monotonic clock in seconds (injectable for tests).
    :param name: Label used in log lines.
    :param handed_over_at: When this limiter's pool slots became its own, on ``clock``; no later than now.
        Default: now (the first request waits one window).
    """

    def __init__(
        self,
        rate: float,
        *,
        safety: float = DEFAULT_SAFETY,
        window: float = 1.0,
        margin: float | None = None,
        fallback_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
        handed_over_at: float | None = None,
    ) -> None:
        if not safety >= 0:
            raise ClioConfigError(f"limiter safety margin must be >= 0, got {safety!r}")
        if not 0 <= window < math.inf:
            raise ClioConfigError(f"limiter window must be >= 0 seconds, got {window!r}")
        margin = safety * window if margin is None else margin
        for value in (margin, fallback_seconds):
            if not 0 <= value < math.inf:
                raise ClioConfigError(
                    f"limiter margin and fallback_seconds must be >= 0 seconds, got {value!r}"
                )
        self._safety = safety
        self._window = window
        self._margin = margin
        self._fallback = fallback_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._local = threading.local()
        self._tat = -math.inf
        self._strict_until = -math.inf
        self.name = name
        self._rate = _check_rate(rate)
        self._interval = (1.0 + safety) / self._rate
        # Recent round trips: the shortest is the "usual" one, against which a held request stands out.
        self._rtts: deque[float] = deque(maxlen=32)
        self._answered = 0  # round trips seen in all: the warm-up counts them, the usual one needs only 32
        # The last k sends, oldest first; seeded as if k requests were answered at the hand-over.
        now = clock()
        seed = now if handed_over_at is None else min(handed_over_at, now)
        self._sent: deque[_Send] = _full_window(seed, self._rate)

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
        return self._sent.maxlen or 1

    @property
    def strict(self) -> bool:
        """Whether the guard counts from answers (a 429 came less than ``fallback_seconds`` ago)."""
        return self._clock() < self._strict_until

    def set_rate(self, rate: float) -> bool:
        """Change the rate for later reservations; return whether it changed."""
        rate = _check_rate(rate)
        with self._lock:
            if rate == self._rate:
                return False
            old, self._rate = self._rate, rate
            self._interval = (1.0 + self._safety) / rate
            # More slots may have just changed hands: treat the change like a fresh hand-over.
            self._sent = _full_window(self._clock(), rate)
        log.info("Clio rate limiter %s: rate changed from %.3g to %.3g req/s", self.name, old, rate)
        return True

    def reserve(self) -> float:
        """Reserve the next send slot and return how many seconds away it is (>= 0).

        The slot honours the spacing and the window guard as known now; :meth:`acquire` checks the guard
        again when the slot comes.
        """
        with self._lock:
            now = self._clock()
            ready = self._ready_at(now) or now
            start = max(now, self._tat, ready)
            self._tat = start + self._interval
            handing_over = self._sent[-1].seed and ready > now  # no request sent since the hand-over
        if handing_over:
            # Say why a task's first request waits: otherwise a second of silence looks like a hang.
            log.info(
                "Clio rate limiter %s: first request waits %.2f s for the pool slot hand-over "
                "(the slot's previous holder may have sent a request just before this task started)",
                self.name,
                ready - now,
            )
        return start - now

    def acquire(self, sleep: Callable[[float], None] = time.sleep) -> float:
        """Wait until this caller may send; return the seconds waited. Call :meth:`release` afterwards."""
        started = self._clock()
        slot = started + self.reserve()
        while True:
            with self._lock:
                now = self._clock()
                ready = self._ready_at(now)
                if ready is not None and max(slot, ready) <= now:
                    self._record_send(now, slot)
                    return now - started
            # Waiting on an unanswered request: poll, since its answer may come at any moment.
            wait = max(slot, ready) - now if ready is not None else self._poll_seconds()
            sleep(max(wait, 1e-4))

    def release(self) -> None:
        """Record that the answer to this thread's acquired request arrived (or that the request failed)."""
        with self._lock:
            send = getattr(self._local, "send", None)
            self._local.send = None
            if send is None or send.done is not None:
                # Released from another thread than the one that acquired: answer the oldest one in flight.
                send = next((s for s in self._sent if s.done is None), None)
            if send is not None:
                send.done = self._clock()
                self._rtts.append(send.done - send.sent)
                self._answered += 1

    def observe(self, status_code: int, headers: Mapping[str, str] | None = None) -> None:
        """Read an answer's status (the hook calls it for every API answer): a 429 makes the guard strict."""
        if status_code == 429:
            self.on_rate_limited()

    def on_rate_limited(self) -> None:
        """Fall back to the answer-time guard for ``fallback_seconds`` (the send-time assumption failed)."""
        with self._lock:
            was_strict = self._clock() < self._strict_until
            self._strict_until = self._clock() + self._fallback
        if not was_strict:
            log.warning(
                "Clio rate limiter %s: 429 received; pacing by answer times for %.0f s",
                self.name,
                self._fallback,
            )

    def __repr__(self) -> str:
        return f"RateLimiter(name={self.name!r}, rate={self._rate!r}, interval={self._interval:.4f})"

    # -- guard ---------------------------------------------------------------------------------------------

    def _ready_at(self, now: float) -> float | None:
        """Earliest send time the window guard allows; None while it must wait for an answer (lock held)."""
        if len(self._sent) < (self._sent.maxlen or 1):
            return now
        kth = self._sent[0]
        # Until k + 1 round trips are known, none is "usual": the guard counts from answers (see above).
        usual = min(self._rtts) if self._answered > len(self._sent) else 0.0
        if kth.done is None:
            in_flight = now - kth.sent
            if in_flight >= _LOST_AFTER:  # never released: a caller broke the protocol; do not wait forever
                return kth.sent + _LOST_AFTER + self._window
            if now < self._strict_until or in_flight - usual > self._margin / 2:
                return None  # slower than usual: it may not have been stamped yet, wait for its answer
            return kth.sent + self._margin + self._window
        if now < self._strict_until:
            return kth.done + self._window
        # Time a round trip took beyond the usual one may have been spent before the stamp (held at the door).
        held = kth.done - kth.sent - usual
        if held <= self._margin / 2:
            held = 0.0  # jitter: the margin covers it, with half of it to spare
        elif self._answered < _SETTLED:
            # The shortest of a few round trips may still hide how fast the server can answer, so how much of
            # this one's excess came before the stamp is unknown: count from its answer.
            return kth.done + self._window
        return min(kth.sent + self._margin + held, kth.done) + self._window

    def _record_send(self, now: float, slot: float) -> None:
        """Record a send at ``now`` (lock held); a late wake-up pushes later reservations back."""
        if now - slot > self._margin:
            log.debug("Clio rate limiter %s: woke up %.3f s late", self.name, now - slot)
        self._tat = max(self._tat, now + self._interval)
        send = _Send(now)
        self._sent.append(send)
        self._local.send = send

    def _poll_seconds(self) -> float:
        return max(self._margin, 0.01)


_SETTLED = 8
"""Round trips a limiter needs before it splits a slow one's excess into before and after the stamp."""

_LOST_AFTER = 120.0
"""Seconds after which a request never released is taken as stamped at that point (no infinite wait)."""


class _Send:
    """One request of a limiter: when it left and when its answer came (None while in flight).

    A *seed* stands for the slots' previous holder's requests at the hand-over.
    """

    __slots__ = ("done", "seed", "sent")

    def __init__(self, sent: float, done: float | None = None, *, seed: bool = False) -> None:
        self.sent = sent
        self.done = done
        self.seed = seed


def _full_window(now: float, rate: float) -> deque[_Send]:
    per_window = _per_window(rate)
    return deque([_Send(now, now, seed=True) for _ in range(per_window)], maxlen=per_window)


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
        # Only the real clock can be compared with the process's start (the slot hand-over).
        handed_over = _process_started if clock is time.monotonic else None
        with self._lock:
            limiter = self._limiters.get(key)
            if limiter is None:
                name = f"{client_id}/{region}"
                limiter = RateLimiter(rate, safety=safety, clock=clock, name=name, handed_over_at=handed_over)
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

_process_started = time.monotonic()
"""When this process started (forked, or imported this module; or :func:`reset_shared_limiters` ran): every
pool slot it holds was handed over before then. Airflow runs each task try in a process of its own, forked
after the scheduler queued it."""


def reset_shared_limiters() -> None:
    """Drop every process-wide limiter and take the pool slots as handed over now, as in a new task process.

    Called in every forked child; tests and benchmarks call it to start a "task" afresh in one process.
    """
    # A forked task process holds its own pool slots: it must not inherit the parent's schedule, nor a lock
    # some other parent thread held at fork time; and its slots were handed over before this moment.
    global _process_started
    _process_started = time.monotonic()
    _REGISTRY.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reset_shared_limiters)


# The process-wide registry's own method: after a fork it clears itself in place, so this stays valid.
shared_limiter = _REGISTRY.get
"""Return the process-wide limiter for ``(client_id, region)``, updated to ``rate``."""


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
        """
        Tell the limiter how the answer went: the rate comes from the pool slots, but a 429 means the
        send-time assumption failed, so the limiter paces by answer times for a while.
        """
        self.limiter.observe(response.status_code, response.headers)

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
