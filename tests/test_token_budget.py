# SPDX-License-Identifier: Apache-2.0
"""TokenBudgetPacer: each behaviour on a fake clock, then whole deployments against a simulated Manage server.

Nothing sleeps: ``sleep`` advances the fake clock, and the simulation is a discrete-event loop in which every
task's pacer reads the same clock.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import pytest

from airflow_provider_clio.apis.manage import manage_pacer
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.rate_limit import Pacer, PacerRequest
from airflow_provider_clio.token_budget import TokenBudgetPacer

EPOCH = 1_800_000_000.0
"""Unix time at fake-clock 0."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def pacer(clock: FakeClock, share: float = 1.0, **kwargs: Any) -> TokenBudgetPacer:
    kwargs.setdefault("wall", clock.wall)
    return TokenBudgetPacer(share, clock=clock, **kwargs)


def headers(
    clock: FakeClock, limit: int, remaining: int, reset_in: float, *, date: bool = True
) -> dict[str, str]:
    found = {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(int(clock.wall() + reset_in)),
    }
    if date:
        found["Date"] = formatdate(clock.wall(), usegmt=True)
    return found


# -- single behaviours ------------------------------------------------------------------------------------


def test_before_any_response_it_paces_at_its_share_of_the_peak_limit() -> None:
    clock = FakeClock()
    budget = pacer(clock, share=0.2)
    assert budget.rate() == pytest.approx(0.2 * 50 / 60)
    assert budget.acquire(clock.sleep) == 0.0  # the first request goes at once
    assert budget.acquire(clock.sleep) == pytest.approx(6.0)  # then 10 a minute
    assert clock.now == pytest.approx(6.0)


def test_it_spreads_its_share_of_what_remains_over_the_rest_of_the_window() -> None:
    clock = FakeClock()
    budget = pacer(clock, share=0.5, reserve=1, reset_margin=0.0)
    budget.acquire(clock.sleep)
    budget.observe_headers(200, headers(clock, 50, 41, 40))
    # share x (Remaining - reserve) / seconds to reset = 0.5 x 40 / 40.
    assert budget.rate() == pytest.approx(0.5)
    assert budget.acquire(clock.sleep) == pytest.approx(2.0)
    assert budget.remaining == 40  # its own send counts at once


def test_the_reset_is_read_with_the_servers_clock_or_as_seconds() -> None:
    clock = FakeClock()
    skewed = pacer(clock, reset_margin=0.0, wall=lambda: EPOCH + 500.0)  # local clock 500 s fast
    skewed.observe_headers(200, headers(clock, 50, 30, 30))  # Date says the server's time
    assert skewed.window_end == pytest.approx(30.0)
    no_date = pacer(clock, reset_margin=0.0)
    no_date.observe_headers(200, headers(clock, 50, 30, 30, date=False))
    assert no_date.window_end == pytest.approx(30.0)
    seconds = pacer(clock, reset_margin=0.5)
    seconds.observe_headers(
        200, {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "12"}
    )
    assert seconds.window_end == pytest.approx(12.5)


def test_with_nothing_left_it_waits_for_the_window_end_then_uses_the_new_window() -> None:
    clock = FakeClock()
    budget = pacer(clock, share=1.0, reserve=1, reset_margin=1.0)
    budget.acquire(clock.sleep)
    budget.observe_headers(200, headers(clock, 50, 1, 20))
    assert budget.rate() == 0.0
    waited = budget.acquire(clock.sleep)
    assert waited == pytest.approx(21.0)  # the window's end plus the margin
    assert budget.remaining == 49  # a fresh window of the last limit, less this send


def test_the_higher_off_peak_limit_is_used_as_soon_as_the_headers_show_it() -> None:
    clock = FakeClock()
    budget = pacer(clock, share=0.2, reset_margin=0.0)
    budget.observe_headers(200, headers(clock, 50, 49, 60))
    peak = budget.rate()
    clock.now = 61.0
    budget.observe_headers(200, headers(clock, 300, 299, 59))
    assert budget.limit == 300
    assert budget.rate() == pytest.approx(peak * 298 / 48 * 60 / 59, rel=0.01)


def test_it_slows_early_when_remaining_drops_faster_than_its_own_sends_explain() -> None:
    clock = FakeClock()
    alone, shared = pacer(clock, reset_margin=0.0), pacer(clock, reset_margin=0.0)
    for budget in (alone, shared):
        budget.observe_headers(200, headers(clock, 50, 49, 60))
    for step in range(1, 6):
        clock.now = step * 2.0
        for budget, foreign in ((alone, 0), (shared, 3)):
            budget.acquire(lambda s: None)
            used = step + foreign * step  # the other client's 3 requests per own one
            budget.observe_headers(200, headers(clock, 50, 49 - used, 60 - clock.now))
    assert alone.others == 0.0
    assert shared.others > 0.3  # requests per second spent by someone else (1.5, still being learnt)
    # Without the estimate its share would be (Remaining - reserve) / seconds left = 28 / 50 a second; the
    # other client's pace would use up the rest before the window's end, so it takes what that leaves.
    assert shared.rate() < 0.5 * 28 / 50
    assert alone.rate() == pytest.approx(43 / 50)


def test_a_429_stops_sending_until_the_later_of_retry_after_and_the_window_end() -> None:
    clock = FakeClock()
    budget = pacer(clock, reset_margin=0.0)
    budget.observe_headers(200, headers(clock, 300, 200, 40))
    # The limit drops to 50 mid-window: 60 already spent, nothing left.
    budget.observe_headers(429, {**headers(clock, 50, 0, 40), "Retry-After": "10"})
    assert budget.blocked_until == pytest.approx(40.0)
    assert budget.acquire(clock.sleep) == pytest.approx(40.0)
    late = pacer(clock, reset_margin=0.0)
    late.observe_headers(429, {"Retry-After": "7"})  # no rate headers at all: Retry-After alone
    assert late.acquire(clock.sleep) == pytest.approx(7.0)


@pytest.mark.parametrize("share", [0, -0.5, 1.5, math.nan, True])
def test_a_share_outside_0_to_1_is_refused(share: float) -> None:
    with pytest.raises(ClioConfigError, match="share"):
        TokenBudgetPacer(share)


def test_the_manage_spec_builds_one_pacer_per_hook_at_its_slot_share() -> None:
    made = manage_pacer(PacerRequest("app", "eu", 1.0, pool_slots=2, pool_size=8, pool="clio_manage_eu"))
    assert isinstance(made, Pacer)
    assert isinstance(made, TokenBudgetPacer)
    assert (made.share, made.name) == (0.25, "clio_manage_eu")
    default = manage_pacer(PacerRequest("app", "us", 1.0, pool_slots=1))
    assert isinstance(default, TokenBudgetPacer)
    assert (default.share, default.name) == (0.2, "clio_manage_us")  # 1 of the default 5 slots
    capped = manage_pacer(PacerRequest("app", "us", 1.0, pool_slots=9, pool_size=3))
    assert isinstance(capped, TokenBudgetPacer)
    assert capped.share == 1.0


# -- whole deployments against a simulated Manage server --------------------------------------------------


@dataclass
class Server:
    """Manage's counting: fixed 60-s windows per token, a limit that depends on the time."""

    limit_at: Callable[[float], int]
    window: float = 60.0
    counts: dict[int, int] = field(default_factory=dict)
    answers: list[tuple[float, str, int]] = field(default_factory=list)

    def request(self, now: float, who: str) -> tuple[int, dict[str, str]]:
        index = int(now // self.window)
        limit = self.limit_at(now)
        used = self.counts.get(index, 0)
        reset = f"{EPOCH + (index + 1) * self.window:.0f}"
        date = formatdate(EPOCH + now, usegmt=True)
        if used >= limit:
            self.answers.append((now, who, 429))
            retry = str(math.ceil((index + 1) * self.window - now))
            return 429, {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": reset,
                "Retry-After": retry,
                "Date": date,
            }
        self.counts[index] = used + 1
        self.answers.append((now, who, 200))
        return 200, {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(limit - used - 1),
            "X-RateLimit-Reset": reset,
            "Date": date,
        }

    def statuses(self, who_prefix: str = "task") -> list[int]:
        return [status for _, who, status in self.answers if who.startswith(who_prefix)]

    def per_window(self) -> dict[int, int]:
        return dict(sorted(self.counts.items()))


def simulate(
    server: Server, shares: list[float], until: float, *, latency: float = 0.3, foreign_every: float = 0.0
) -> list[TokenBudgetPacer]:
    """Run a task per share (send, wait ``latency``, observe, acquire again), and maybe another client."""
    clock = FakeClock()
    pacers = [pacer(clock, share) for share in shares]
    events: list[tuple[float, int, str, int]] = []
    seq = 0

    def push(at: float, kind: str, task: int) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, kind, task))

    pending: dict[int, tuple[int, dict[str, str]]] = {}
    for task in range(len(pacers)):
        push(0.0, "acquire", task)
    if foreign_every:
        push(0.0, "foreign", -1)
    while events:
        at, _, kind, task = heapq.heappop(events)
        if at >= until:
            break
        clock.now = at
        if kind == "foreign":
            server.request(at, "foreign")
            push(at + foreign_every, "foreign", -1)
        elif kind == "acquire":
            delay = pacers[task].acquire(lambda s: None)
            push(at + delay, "send", task)
        elif kind == "send":
            pending[task] = server.request(at, f"task{task}")
            push(at + latency, "observe", task)
        else:
            status, found = pending.pop(task)
            pacers[task].observe_headers(status, found)
            push(at, "acquire", task)
    return pacers


def peak_then_off_peak(now: float) -> int:
    return 50 if now < 600 else 300


def test_a_full_pool_never_earns_a_429_across_a_peak_to_off_peak_change() -> None:
    server = Server(peak_then_off_peak)
    simulate(server, [0.2] * 5, until=1200.0)
    assert server.statuses().count(429) == 0
    windows = server.per_window()
    # The pool spends most of each window at both limits (the reserve and the start cost the rest).
    assert all(40 <= windows[w] <= 50 for w in range(1, 10))
    assert all(240 <= windows[w] <= 300 for w in range(11, 19))


def test_uneven_shares_split_the_budget_by_slots() -> None:
    server = Server(lambda now: 50)
    simulate(server, [0.5, 0.25, 0.25], until=600.0)
    assert server.statuses().count(429) == 0
    sent = {who: sum(1 for _, w, _ in server.answers if w == who) for who in ("task0", "task1", "task2")}
    assert sent["task0"] == pytest.approx(sent["task1"] + sent["task2"], rel=0.2)


def test_a_limit_dropping_mid_window_costs_waits_not_a_stream_of_429s() -> None:
    # Off-peak 300, then 50 from t=90 s, the middle of the second window.
    server = Server(lambda now: 300 if now < 90 else 50)
    pacers = simulate(server, [0.25] * 4, until=600.0)
    statuses = server.statuses()
    # At most one 429 per task when the limit drops under what was already spent, then none again.
    assert statuses.count(429) <= len(pacers)
    assert all(status == 200 for now, who, status in server.answers if now >= 120)
    assert all(40 <= count <= 50 for w, count in server.per_window().items() if 2 <= w < 10)


def test_another_client_on_the_same_token_makes_the_pool_slow_down_without_429s() -> None:
    server = Server(lambda now: 50)
    simulate(server, [0.5, 0.5], until=600.0, foreign_every=4.0)  # the other client: 15 a minute
    assert server.statuses().count(429) == 0
    assert server.statuses("foreign").count(429) == 0  # and the other client is not starved either
    ours = [0] * 10
    for now, who, _ in server.answers:
        ours[int(now // 60)] += who.startswith("task")
    # The pool leaves the other client its 15 and still uses most of the rest.
    assert all(28 <= n <= 35 for n in ours[1:]), ours
