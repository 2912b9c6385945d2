# SPDX-License-Identifier: Apache-2.0
"""The emulator's latency knobs: the arrival stamp lags the send by the inbound delay, the answer by both.

Real time with small delays (50-100 ms). Lower bounds are tight (a delay is never shortened); upper bounds
leave room for a busy 2-core machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import requests

from airflow_provider_clio.testing import ClioEmulator, Latency
from airflow_provider_clio.testing.faults import LatencyInjector

EPS = 0.003  # clock granularity between the client's and the server's monotonic reads
SLACK = 0.15  # scheduling noise allowed above a delay
FAST = 1000  # no test here waits for the rate limit's window


def timed_get(
    emu: ClioEmulator, session: requests.Session, path: str = "/grow/users"
) -> tuple[float, float, float]:
    """GET once; return (send, arrival stamp, answer received) on the monotonic clock."""
    emu.clear_requests()
    sent = time.monotonic()
    response = session.get(f"{emu.url}{path}", params={"fields": "id"}, timeout=10)
    received = time.monotonic()
    assert response.status_code == 200
    (record,) = emu.requests
    return sent, record.t, received


@pytest.mark.clio_emulator(
    rate_limit=FAST, records={"users": 3}, latency=Latency(inbound_delay=0.05, response_delay=0.08)
)
def test_arrival_lags_send_by_inbound_delay_and_answer_by_both(
    clio_emulator: ClioEmulator, api_session: Callable[..., requests.Session]
) -> None:
    api = api_session(clio_emulator)
    api.get(f"{clio_emulator.url}/grow/users", timeout=10)  # open the keep-alive connection first
    for _ in range(3):
        sent, arrived, received = timed_get(clio_emulator, api)
        assert 0.05 - EPS <= arrived - sent <= 0.05 + SLACK
        assert 0.08 - EPS <= received - arrived <= 0.08 + SLACK
        assert 0.13 - EPS <= received - sent <= 0.13 + SLACK


def test_inbound_jitter_spreads_arrivals_within_bounds(
    clio_emulator_factory: Callable[..., ClioEmulator], api_session: Callable[..., requests.Session]
) -> None:
    emu = clio_emulator_factory(
        rate_limit=FAST,
        records={"users": 3},
        latency=Latency(inbound_delay=0.06, inbound_jitter=0.03, seed=7),
    )
    api = api_session(emu)
    lags = [arrived - sent for sent, arrived, _ in (timed_get(emu, api) for _ in range(8))]
    assert min(lags) >= 0.03 - EPS
    assert max(lags) <= 0.09 + SLACK
    assert max(lags) - min(lags) > 0.01  # jittered, not constant


def test_jitter_draws_are_seeded_and_clipped_at_zero() -> None:
    a = LatencyInjector(Latency(inbound_delay=0.01, inbound_jitter=0.05, seed=3))
    b = LatencyInjector(Latency(inbound_delay=0.01, inbound_jitter=0.05, seed=3))
    draws = [a.inbound() for _ in range(200)]
    assert draws == [b.inbound() for _ in range(200)]
    assert min(draws) == 0.0
    assert max(draws) <= 0.06
    with pytest.raises(ValueError, match="inbound_delay"):
        Latency(inbound_delay=-1)
    with pytest.raises(ValueError, match="unknown latency fields"):
        Latency.from_dict({"inbound": 1})


def test_latency_set_at_run_time_and_admin_surface_not_delayed(
    emu: ClioEmulator, api: requests.Session
) -> None:
    sent, arrived, received = timed_get(emu, api)
    assert received - sent < 0.1 + SLACK
    emu.latency = Latency(inbound_delay=0.3, response_delay=0.1)
    assert emu.latency.inbound_delay == 0.3
    sent, arrived, received = timed_get(emu, api)
    assert arrived - sent >= 0.3 - EPS
    assert received - sent >= 0.4 - EPS
    started = time.monotonic()
    assert requests.get(f"{emu.url}/_emulator/latency", timeout=10).json()["latency"]["inbound_delay"] == 0.3
    assert time.monotonic() - started < 0.25
    emu.set_latency(Latency())
    assert emu.latency == Latency()


def test_rate_limit_counts_arrivals_after_the_inbound_delay(
    clio_emulator_factory: Callable[..., ClioEmulator], api_session: Callable[..., requests.Session]
) -> None:
    # Two requests sent 50 ms apart with limit 1 per second: both arrive late, but still 50 ms apart -> 429.
    emu = clio_emulator_factory(rate_limit=1, records={"users": 3}, latency=Latency(inbound_delay=0.1))
    a, b = api_session(emu), api_session(emu)
    statuses = []
    for session in (a, b):
        statuses.append(session.get(f"{emu.url}/grow/users", timeout=10).status_code)
    assert sorted(statuses) == [200, 429]
