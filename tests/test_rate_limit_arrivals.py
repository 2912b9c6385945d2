# SPDX-License-Identifier: Apache-2.0
"""The limiter under real round trips, in virtual time: full use of the limit, never a 4th arrival.

Real threads call :meth:`RateLimiter.acquire` / :meth:`release` with a virtual clock that only moves when
every thread sleeps, so minutes of traffic run in milliseconds and the figures are exact. Each request is
stamped by the "server" 5-35 ms after its send (uniform jitter) and answered 180 ms after that: ~200 ms
round trips, as on Clio. The limit is 3 requests per sliding second.
"""

from __future__ import annotations

import bisect
import random
import threading
from collections.abc import Callable

import pytest

from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.rate_limit import RateLimiter

LIMIT = 3
DURATION = 60.0


class VirtualTime:
    """A clock shared by worker threads that jumps to the next wake-up once every worker is asleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self._cond = threading.Condition()
        self._sleepers: dict[int, float] = {}
        self._active = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._cond:
            me = threading.get_ident()
            self._sleepers[me] = self.now + max(seconds, 0.0)
            self._cond.notify_all()
            while me in self._sleepers:
                self._cond.wait()

    def run(self, workers: list[Callable[[], None]]) -> None:
        errors: list[BaseException] = []

        def wrap(work: Callable[[], None]) -> None:
            try:
                work()
            except BaseException as exc:  # surfaced below, in the test's thread
                errors.append(exc)
            finally:
                with self._cond:
                    self._active -= 1
                    self._cond.notify_all()

        self._active = len(workers)
        threads = [threading.Thread(target=wrap, args=(w,), daemon=True) for w in workers]
        for thread in threads:
            thread.start()
        with self._cond:
            while self._active:
                if len(self._sleepers) < self._active:
                    assert self._cond.wait(timeout=30), "a worker neither slept nor finished"
                    continue
                self.now = min(self._sleepers.values())
                for ident in [i for i, wake in self._sleepers.items() if wake <= self.now]:
                    del self._sleepers[ident]
                self._cond.notify_all()
        for thread in threads:
            thread.join(timeout=30)
        if errors:
            raise errors[0]


class Server:
    """Stamps arrivals (after a jittered inbound delay, or when a pause ends) and answers 180 ms later.

    ``answer`` makes the answer come a random time within that range after the stamp instead
    (``benchmarks/guard_sweep.py`` uses it for Clio's uneven page times).
    """

    def __init__(
        self, seed: int, pause: tuple[float, float] | None = None, answer: tuple[float, float] = (0.18, 0.18)
    ) -> None:
        self.rng = random.Random(seed)
        self.pause = pause
        self.answer = answer
        self.arrivals: list[float] = []
        self.sends: list[float] = []
        self._lock = threading.Lock()

    def request(self, vt: VirtualTime) -> None:
        sent = vt.now
        stamp = sent + self.rng.uniform(0.005, 0.035)
        if self.pause and self.pause[0] <= stamp < self.pause[1]:
            stamp = self.pause[1]  # held at the door until the server resumes
        with self._lock:
            self.sends.append(sent)
            self.arrivals.append(stamp)
        low, high = self.answer
        vt.sleep(stamp - sent + (self.rng.uniform(low, high) if high > low else low))


def stream(
    vt: VirtualTime, limiter: RateLimiter, server: Server, until: float = DURATION
) -> Callable[[], None]:
    def work() -> None:
        while vt.now < until:
            limiter.acquire(vt.sleep)
            try:
                server.request(vt)
            finally:
                limiter.release()

    return work


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """Most events in any sliding window ``(u - window, u]``, the emulator's and Clio's definition."""
    times = sorted(times)
    return max(bisect.bisect_right(times, u) - bisect.bisect_right(times, u - window) for u in times)


def utilisation(times: list[float], start: float = 2.0, end: float = DURATION - 1.0) -> float:
    inside = [t for t in times if start <= t < end]
    return len(inside) / (end - start) / LIMIT


def test_three_tasks_of_one_slot_use_the_limit_at_200ms_round_trips() -> None:
    vt, server = VirtualTime(), Server(seed=1)
    limiters = [RateLimiter(1, clock=vt.clock) for _ in range(3)]  # one per process: separate limiters
    vt.run([stream(vt, limiter, server) for limiter in limiters])
    assert utilisation(server.arrivals) >= 0.92
    assert max_in_window(server.arrivals) <= LIMIT
    assert max_in_window(server.sends) <= LIMIT


@pytest.mark.parametrize("streams", [1, 3])
def test_one_task_of_three_slots_uses_the_limit_at_200ms_round_trips(streams: int) -> None:
    vt, server = VirtualTime(), Server(seed=2)
    limiter = RateLimiter(3, clock=vt.clock)
    vt.run([stream(vt, limiter, server) for _ in range(streams)])
    assert utilisation(server.arrivals) >= 0.92
    assert max_in_window(server.arrivals) <= LIMIT


def test_a_429_falls_back_to_the_answer_time_guard_for_a_while() -> None:
    vt, server = VirtualTime(), Server(seed=3)
    limiter = RateLimiter(1, clock=vt.clock, fallback_seconds=20.0)

    def work() -> None:
        vt.sleep(10.0)
        limiter.on_rate_limited()
        assert limiter.strict
        stream(vt, limiter, server, until=50.0)()
        assert not limiter.strict

    vt.run([work])
    gaps = [b - a for a, b in zip(server.sends, server.sends[1:], strict=False)]
    strict = [g for s, g in zip(server.sends, gaps, strict=False) if s < 29.0]
    relaxed = [g for s, g in zip(server.sends, gaps, strict=False) if s > 31.0]
    # Strict: one window after the previous answer (~0.2 s after its send); relaxed: the 1.05 s spacing,
    # plus a round trip's excess over the shortest one where it exceeds 25 ms (the inbound jitter: <= 30 ms).
    assert min(strict) > 1.18
    assert min(relaxed) == pytest.approx(limiter.interval)
    assert max(relaxed) <= limiter.interval + 0.031
    limiter.observe(200, {})
    assert not limiter.strict
    limiter.observe(429, {"Retry-After": "1"})
    assert limiter.strict


def test_a_stalled_worker_is_checked_again_when_it_wakes_up() -> None:
    vt, server = VirtualTime(), Server(seed=4)
    limiter = RateLimiter(3, clock=vt.clock)
    stalls = iter([0.0] * 20 + [0.7] + [0.0] * 10_000)

    def stalling_sleep(seconds: float) -> None:
        vt.sleep(seconds + next(stalls))  # one wake-up 700 ms late (GC pause, busy host)

    def stalled() -> None:
        while vt.now < DURATION:
            limiter.acquire(stalling_sleep)
            try:
                server.request(vt)
            finally:
                limiter.release()

    vt.run([stalled, stream(vt, limiter, server), stream(vt, limiter, server)])
    assert max_in_window(server.arrivals) <= LIMIT
    assert utilisation(server.arrivals) >= 0.9


@pytest.mark.parametrize(("tasks", "slots"), [(3, 1), (1, 3)])
@pytest.mark.parametrize("pause", [(20.0, 21.5), (20.3, 20.9), (20.0, 24.0)])
def test_a_paused_server_makes_the_guard_count_the_held_requests(
    tasks: int, slots: int, pause: tuple[float, float]
) -> None:
    # The server holds every request arriving during the pause and stamps them all when it resumes.
    vt, server = VirtualTime(), Server(seed=5, pause=pause)
    limiters = [RateLimiter(slots, clock=vt.clock) for _ in range(tasks)]
    vt.run([stream(vt, limiter, server) for limiter in limiters for _ in range(slots)])
    assert max_in_window(server.arrivals) <= LIMIT
    assert utilisation(server.arrivals, start=30.0) >= 0.92  # and it recovers


def test_a_request_never_released_does_not_block_forever() -> None:
    vt = VirtualTime()
    limiter = RateLimiter(1, clock=vt.clock)
    waits: list[float] = []

    def work() -> None:
        limiter.acquire(vt.sleep)  # never released: a caller broke the protocol
        waits.append(limiter.acquire(vt.sleep))

    vt.run([work])
    assert waits[0] <= 121.5


@pytest.mark.parametrize("kwargs", [{"margin": -0.1}, {"fallback_seconds": float("inf")}])
def test_invalid_guard_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ClioConfigError, match="margin and fallback_seconds"):
        RateLimiter(1, **kwargs)


@pytest.mark.parametrize(("tasks", "slots"), [(3, 1), (1, 3)])
def test_no_pause_anywhere_makes_a_window_overflow(tasks: int, slots: int) -> None:
    # Pauses of 50 ms to 2.5 s at random moments (seeded), including during the first round trips.
    rng = random.Random(tasks * 10 + slots)
    for seed in range(20):
        begin = rng.uniform(0.2, 25.0)
        vt, server = VirtualTime(), Server(seed=seed, pause=(begin, begin + rng.uniform(0.05, 2.5)))
        limiters = [RateLimiter(slots, clock=vt.clock) for _ in range(tasks)]
        vt.run([stream(vt, limiter, server, until=30.0) for limiter in limiters for _ in range(slots)])
        assert max_in_window(server.arrivals) <= LIMIT, f"seed {seed}, pause {server.pause}"
