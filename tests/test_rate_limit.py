# SPDX-License-Identifier: Apache-2.0
"""Tests for the burst-free limiter, its registry and the Pacer over it (fake clock)."""

from __future__ import annotations

import itertools
import logging
import random
import threading
from collections.abc import Iterator

import pytest
import requests

from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.rate_limit import (
    LimiterPacer,
    LimiterRegistry,
    Pacer,
    RateLimiter,
    reset_shared_limiters,
    shared_limiter,
)


class FakeTime:
    """A monotonic clock that only moves when someone sleeps (or the test advances it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    reset_shared_limiters()
    yield
    reset_shared_limiters()


def _settled(limiter: RateLimiter, fake: FakeTime) -> RateLimiter:
    """Let one window pass so the slot hand-over guard of a new limiter no longer binds."""
    fake.now += 1.0
    return limiter


def _warmed(limiter: RateLimiter, fake: FakeTime) -> RateLimiter:
    """Give a limiter the round trips (10 ms each) it needs before it trusts send times; settle it."""
    for _ in range(4):
        limiter.acquire(fake.sleep)
        fake.now += 0.01
        limiter.release()
    fake.now += 2.0
    return limiter


def _send_times(limiter: RateLimiter, fake: FakeTime, n: int) -> list[float]:
    times = []
    for _ in range(n):
        limiter.acquire(fake.sleep)
        times.append(fake.now)
        limiter.release()  # an instant answer
    return times


def test_interval_includes_the_safety_margin() -> None:
    limiter = RateLimiter(3, clock=FakeTime().clock)
    assert limiter.rate == 3.0
    assert limiter.interval == pytest.approx(1.05 / 3)
    assert RateLimiter(2, safety=0.0).interval == 0.5


def test_requests_are_evenly_spaced() -> None:
    fake = FakeTime()
    limiter = _settled(RateLimiter(3, clock=fake.clock), fake)
    times = _send_times(limiter, fake, 10)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 1001.0  # the first request of an idle, settled limiter goes at once
    assert gaps == pytest.approx([limiter.interval] * 9)


@pytest.mark.parametrize("rate", [1, 2, 3, 5, 10])
def test_no_window_of_one_second_holds_more_than_rate_requests(rate: int) -> None:
    fake = FakeTime()
    limiter = RateLimiter(rate, clock=fake.clock)
    times = _send_times(limiter, fake, 5 * rate + 1)
    # Any rate + 1 consecutive requests span more than one second.
    for i in range(len(times) - rate):
        assert times[i + rate] - times[i] > 1.0


def test_no_burst_after_idle() -> None:
    fake = FakeTime()
    limiter = RateLimiter(3, clock=fake.clock)
    _send_times(limiter, fake, 3)
    fake.now += 3600  # a long idle period must not bank credit
    idle_until = fake.now
    times = _send_times(limiter, fake, 4)
    assert times[0] == idle_until
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([limiter.interval] * 3)
    assert times[3] - times[0] > 1.0


def test_work_between_requests_is_not_added_to_the_interval() -> None:
    fake = FakeTime()
    limiter = _warmed(RateLimiter(1, clock=fake.clock), fake)
    limiter.acquire(fake.sleep)
    fake.now += 0.01  # the usual 10 ms round trip
    limiter.release()
    fake.now += 0.39  # then 390 ms of work on the page
    waited = limiter.acquire(fake.sleep)
    assert waited == pytest.approx(1.05 - 0.4)


def test_late_wake_up_pushes_the_next_reservation_back() -> None:
    fake = FakeTime()
    limiter = RateLimiter(1, clock=fake.clock)
    limiter.acquire(fake.sleep)
    limiter.release()

    def oversleep(seconds: float) -> None:
        fake.sleep(seconds + 0.2)  # a busy host woke us 200 ms late

    limiter.acquire(oversleep)
    sent_late = fake.now
    limiter.release()
    limiter.acquire(fake.sleep)
    assert fake.now - sent_late == pytest.approx(limiter.interval)


@pytest.mark.parametrize(
    ("rate", "per_window"), [(0.5, 1), (1, 1), (2.9, 2), (3, 3), (0.1 * 30, 3), (10, 10)]
)
def test_per_window(rate: float, per_window: int) -> None:
    assert RateLimiter(rate).per_window == per_window


def test_window_guard_is_idle_while_responses_are_fast() -> None:
    fake = FakeTime()
    limiter = RateLimiter(1, clock=fake.clock)
    limiter.acquire(fake.sleep)
    fake.now += 0.02  # a 20 ms response: well inside the GCRA's 50 ms slack
    limiter.release()
    assert limiter.acquire(fake.sleep) == pytest.approx(1.03)


def test_slow_response_does_not_cost_its_round_trip() -> None:
    # The server stamps a request shortly after its send: a 300 ms answer does not delay the next send,
    # as long as round trips that long are usual.
    fake = FakeTime()
    limiter = _settled(RateLimiter(1, clock=fake.clock), fake)
    for _ in range(4):
        limiter.acquire(fake.sleep)
        fake.now += 0.3
        limiter.release()
    limiter.acquire(fake.sleep)
    sent = fake.now
    fake.now += 0.3
    limiter.release()
    limiter.acquire(fake.sleep)
    assert fake.now - sent == pytest.approx(limiter.interval)


def test_window_guard_counts_from_the_answer_of_an_unusually_slow_request() -> None:
    # Usual round trips take 10 ms; one takes 300 ms: it may have waited at the server's door (a paused
    # server) and been stamped just before its answer, so the next request waits one window after that answer.
    fake = FakeTime()
    limiter = _warmed(RateLimiter(1, clock=fake.clock), fake)
    limiter.acquire(fake.sleep)
    fake.now += 0.3
    limiter.release()
    answered = fake.now
    limiter.acquire(fake.sleep)
    assert fake.now - answered == pytest.approx(1.0)


def _usual(limiter: RateLimiter, fake: FakeTime, round_trip: float, n: int = 8) -> RateLimiter:
    """Give a settled limiter ``n`` round trips of ``round_trip`` seconds: its usual one."""
    _settled(limiter, fake)
    for _ in range(n):
        limiter.acquire(fake.sleep)
        fake.now += round_trip
        limiter.release()
    return limiter


def test_window_guard_adds_the_excess_of_a_slow_request_to_the_margin() -> None:
    # Usual round trips take 200 ms (most of it after the stamp); one takes 600 ms. Its extra 400 ms may all
    # have been spent before the stamp: send + 50 ms margin + 400 ms, then one window.
    fake = FakeTime()
    limiter = _usual(RateLimiter(1, clock=fake.clock), fake, 0.2)
    limiter.acquire(fake.sleep)
    sent = fake.now
    fake.now += 0.6
    limiter.release()
    limiter.acquire(fake.sleep)
    assert fake.now - sent == pytest.approx(0.05 + 0.4 + 1.0)


def test_a_slow_request_among_the_first_round_trips_counts_from_its_answer() -> None:
    # After a few round trips the shortest may still hide how fast the server answers, so a slow one's
    # excess cannot be split into before and after the stamp yet: one window after its answer.
    fake = FakeTime()
    limiter = _usual(RateLimiter(1, clock=fake.clock), fake, 0.2, n=3)
    limiter.acquire(fake.sleep)
    fake.now += 0.6
    limiter.release()
    answered = fake.now
    limiter.acquire(fake.sleep)
    assert fake.now - answered == pytest.approx(1.0)


@pytest.mark.parametrize(("excess", "gap"), [(0.025, 1.05), (0.03, 1.08)])
def test_jitter_within_half_the_margin_costs_nothing(excess: float, gap: float) -> None:
    # Up to half the margin (25 ms) a slower round trip is jitter, which the margin covers: the spacing alone
    # binds. Beyond it the request may have waited at the server's door, and all its excess counts.
    fake = FakeTime()
    limiter = _usual(RateLimiter(1, clock=fake.clock), fake, 0.2)
    limiter.acquire(fake.sleep)
    sent = fake.now
    fake.now += 0.2 + excess
    limiter.release()
    limiter.acquire(fake.sleep)
    assert fake.now - sent == pytest.approx(gap)


def test_new_limiter_counts_from_answers_until_round_trips_are_known() -> None:
    fake = FakeTime()
    limiter = _settled(RateLimiter(1, clock=fake.clock), fake)
    limiter.acquire(fake.sleep)
    fake.now += 0.3
    limiter.release()
    answered = fake.now
    limiter.acquire(fake.sleep)
    assert fake.now - answered == pytest.approx(1.0)  # one round trip known: not enough for k = 1
    sent = fake.now
    fake.now += 0.3
    limiter.release()
    limiter.acquire(fake.sleep)
    # k + 1 = 2 known: 300 ms is the usual round trip, so the spacing from the send binds, not the answer.
    assert fake.now - sent == pytest.approx(limiter.interval)


@pytest.mark.parametrize("rate", [1, 3])
def test_the_first_k_requests_held_at_a_paused_server_cannot_burst(rate: int) -> None:
    # The k requests a new task may send at once all wait at the door of a paused server and are stamped
    # together when it resumes, just before their answers: request k + 1 must count from an answer, whatever
    # the k (equal, hence "usual") round trips say.
    fake = FakeTime()
    limiter = _settled(RateLimiter(rate, clock=fake.clock), fake)
    for _ in range(rate):
        limiter.acquire(fake.sleep)
    fake.now += 2.0  # the pause
    for _ in range(rate):
        limiter.release()
    resumed = fake.now
    limiter.acquire(fake.sleep)
    assert fake.now - resumed == pytest.approx(1.0)


def test_window_guard_counts_back_per_window_requests() -> None:
    fake = FakeTime()
    limiter = _settled(RateLimiter(3, clock=fake.clock, safety=0.0, margin=0.05), fake)
    sends = []
    for _ in range(4):
        limiter.acquire(fake.sleep)
        sends.append(fake.now)
        fake.now += 0.01
        limiter.release()
    # Without the spacing's margin (safety 0), the 4th waits for the guard: 1st send + margin + window.
    assert sends[1] - sends[0] == pytest.approx(1 / 3)
    assert sends[3] - sends[0] == pytest.approx(1.01)  # the 1st was answered 10 ms after its send


@pytest.mark.parametrize("rate", [1, 2, 3])
def test_after_a_429_no_window_overflows_whatever_the_latency(rate: int) -> None:
    # After a 429 the guard counts from answers again: the server stamps each request at some moment between
    # our send and its answer, and with latencies far beyond the margin (stalls up to 1.5 s), no 1-second
    # window may hold more than `rate`.
    rng = random.Random(rate)
    fake = FakeTime()
    limiter = RateLimiter(rate, clock=fake.clock, fallback_seconds=10_000)
    limiter.observe(429, {})
    arrivals = []
    for _ in range(300):
        limiter.acquire(fake.sleep)
        latency = rng.choice([0.005, 0.02, 0.08, 0.3, 1.5])
        arrivals.append(fake.now + rng.uniform(0, latency))
        fake.now += latency
        limiter.release()
    assert arrivals == sorted(arrivals)
    for first, later in zip(arrivals, arrivals[rate:], strict=False):
        assert later - first > 1.0


def test_set_rate_resizes_the_window_guard() -> None:
    limiter = RateLimiter(1)
    limiter.set_rate(3)
    assert limiter.per_window == 3


@pytest.mark.parametrize("rate", [1, 3, 6])
def test_new_limiter_waits_one_window_for_the_slot_hand_over(rate: int) -> None:
    # The previous holder of our pool slots may have sent its last request just before this task started.
    fake = FakeTime()
    limiter = RateLimiter(rate, clock=fake.clock)
    assert limiter.reserve() == pytest.approx(1.0)
    fake.now += 5.0
    assert limiter.reserve() == 0.0  # a limiter created long ago does not wait


def test_the_hand_over_counts_from_when_the_slots_were_handed_over() -> None:
    fake = FakeTime()
    started = RateLimiter(1, clock=fake.clock, handed_over_at=fake.now - 0.6)
    assert started.reserve() == pytest.approx(0.4)  # 0.6 s of the window already spent starting up
    assert RateLimiter(1, clock=fake.clock, handed_over_at=fake.now - 5).reserve() == 0.0
    # A hand-over "in the future" is taken as now, never later.
    assert RateLimiter(1, clock=fake.clock, handed_over_at=fake.now + 5).reserve() == pytest.approx(1.0)


def test_the_hand_over_wait_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTime()
    limiter = RateLimiter(1, clock=fake.clock, name="app/us", handed_over_at=fake.now - 0.25)
    with caplog.at_level(logging.INFO, logger="airflow_provider_clio.rate_limit"):
        limiter.acquire(fake.sleep)
        limiter.release()
        limiter.acquire(fake.sleep)  # waits for the spacing: nothing to explain
    assert [r.getMessage() for r in caplog.records] == [
        "Clio rate limiter app/us: first request waits 0.75 s for the pool slot hand-over "
        "(the slot's previous holder may have sent a request just before this task started)"
    ]
    caplog.clear()
    settled = RateLimiter(1, clock=fake.clock, handed_over_at=fake.now - 5)
    with caplog.at_level(logging.INFO, logger="airflow_provider_clio.rate_limit"):
        settled.acquire(fake.sleep)
    assert caplog.records == []


def test_a_forked_process_counts_the_hand_over_from_its_fork() -> None:
    # Airflow forks a process per task try after the scheduler gave it its pool slots: the shared limiter of
    # a fresh child waits one window from the fork, while this long-running process's waits nothing.
    import multiprocessing
    import time

    from airflow_provider_clio import rate_limit

    time.sleep(max(0.0, rate_limit._process_started + 1.0 - time.monotonic()))
    assert shared_limiter("app", "us", 1).reserve() == 0.0  # a new limiter, in a process started > 1 s ago
    reset_shared_limiters()
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()

    def first_wait() -> None:
        child.send(shared_limiter("app", "us", 1).reserve())

    process = context.Process(target=first_wait)
    process.start()
    assert parent.poll(30)
    waited = parent.recv()
    process.join(30)
    assert 0.5 < waited <= 1.0


def test_rate_change_is_a_hand_over_too() -> None:
    fake = FakeTime()
    limiter = _settled(RateLimiter(1, clock=fake.clock), fake)
    assert limiter.reserve() == 0.0
    fake.now += 5.0
    limiter.set_rate(3)  # two more slots, possibly used by another task a moment ago
    assert limiter.reserve() == pytest.approx(1.0)


def test_reserve_queues_concurrent_callers_in_order() -> None:
    fake = FakeTime()
    limiter = _settled(RateLimiter(4, clock=fake.clock), fake)
    delays = [limiter.reserve() for _ in range(5)]
    assert delays == pytest.approx([i * limiter.interval for i in range(5)])


def test_threads_get_distinct_evenly_spaced_slots() -> None:
    fake = FakeTime()  # frozen: every reservation is relative to the same instant
    limiter = _settled(RateLimiter(3, clock=fake.clock), fake)
    delays: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(50):
            delay = limiter.reserve()
            with lock:
                delays.append(delay)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    delays.sort()
    assert len(delays) == 400
    assert delays == pytest.approx([i * limiter.interval for i in range(400)])


def test_set_rate_applies_to_later_reservations_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTime()
    limiter = RateLimiter(1, clock=fake.clock, name="app/us")
    with caplog.at_level(logging.INFO, logger="airflow_provider_clio.rate_limit"):
        assert limiter.set_rate(3) is True
        assert limiter.set_rate(3) is False
    assert [r.getMessage() for r in caplog.records] == [
        "Clio rate limiter app/us: rate changed from 1 to 3 req/s"
    ]
    assert limiter.interval == pytest.approx(0.35)


@pytest.mark.parametrize("rate", [0, -1, float("inf"), float("nan"), True, "3"])
def test_invalid_rate(rate: object) -> None:
    with pytest.raises(ClioConfigError, match="request rate"):
        RateLimiter(rate)  # type: ignore[arg-type]


def test_registry_shares_one_limiter_per_application_and_region() -> None:
    fake = FakeTime()
    registry = LimiterRegistry()
    us = registry.get("app", "us", 1, clock=fake.clock)
    assert registry.get("app", "us", 1, clock=fake.clock) is us
    assert registry.get("app", "eu", 1, clock=fake.clock) is not us
    assert registry.get("other-app", "us", 1, clock=fake.clock) is not us
    # The latest hook's rate wins.
    assert registry.get("app", "us", 3, clock=fake.clock) is us
    assert us.rate == 3


def test_shared_limiter_paces_hooks_together() -> None:
    fake = FakeTime()
    first = _settled(shared_limiter("app", "us", 1, clock=fake.clock), fake)
    second = shared_limiter("app", "us", 1, clock=fake.clock)
    first.acquire(fake.sleep)
    first.release()
    second.acquire(fake.sleep)
    assert fake.now - 1001.0 == pytest.approx(1.05)
    reset_shared_limiters()
    assert shared_limiter("app", "us", 1, clock=fake.clock) is not first


def test_limiter_pacer_paces_with_its_limiter_and_ignores_responses() -> None:
    fake = FakeTime()
    limiter = _settled(RateLimiter(1, clock=fake.clock), fake)
    pacer = LimiterPacer(limiter)
    assert isinstance(pacer, Pacer)
    assert pacer.acquire(fake.sleep) == 0.0
    pacer.release()
    pacer.observe(requests.Response())  # a fixed-rate pacer learns nothing from responses
    assert pacer.acquire(fake.sleep) == pytest.approx(1.05)
    assert fake.sleeps == pytest.approx([1.05])


def test_the_platform_pacer_hands_a_429_to_its_limiter_so_pacing_turns_strict():
    import requests

    from airflow_provider_clio.rate_limit import LimiterPacer

    limiter = RateLimiter(3.0, clock=FakeTime().clock)
    pacer = LimiterPacer(limiter)
    ok = requests.Response()
    ok.status_code = 200
    pacer.observe(ok)
    assert not limiter.strict
    limited = requests.Response()
    limited.status_code = 429
    pacer.observe(limited)
    assert limiter.strict
