# SPDX-License-Identifier: Apache-2.0
"""The emulator's sliding-window limiter: exact per key, with an injected clock and over real HTTP."""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections.abc import Callable

import pytest
import requests

from airflow_provider_clio.testing import ClioEmulator
from airflow_provider_clio.testing.limiter import SlidingWindowLimiter

US = "clio-emulator-us"


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    return max(
        (bisect.bisect_right(times, u) - bisect.bisect_right(times, u - window) for u in times),
        default=0,
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestSlidingWindowLimiter:
    def test_limit_per_window_then_slides(self) -> None:
        clock = FakeClock()
        limiter = SlidingWindowLimiter(3, clock=clock)
        assert [limiter.try_acquire("k") for _ in range(4)] == [True, True, True, False]
        clock.now += 0.999
        assert not limiter.try_acquire("k")
        # The window is (now - 1, now]: at exactly +1.0 s the first three have left it.
        clock.now = 101.0
        assert [limiter.try_acquire("k") for _ in range(4)] == [True, True, True, False]

    def test_rejected_events_do_not_count(self) -> None:
        clock = FakeClock()
        limiter = SlidingWindowLimiter(2, clock=clock)
        assert limiter.try_acquire("k")
        clock.now = 100.5
        assert limiter.try_acquire("k")
        for _ in range(10):
            assert not limiter.try_acquire("k")
        clock.now = 101.0  # only the event at 100.0 has left; the rejections never counted
        assert limiter.try_acquire("k")
        assert not limiter.try_acquire("k")
        assert limiter.count("k") == 2

    def test_keys_are_independent(self) -> None:
        limiter = SlidingWindowLimiter(1, clock=FakeClock())
        keys = [("app", "us"), ("app", "eu"), ("other", "us")]
        assert all(limiter.try_acquire(k) for k in keys)
        assert not any(limiter.try_acquire(k) for k in keys)

    def test_late_out_of_order_events_are_judged_exactly(self) -> None:
        limiter = SlidingWindowLimiter(3)
        assert all(limiter.try_acquire("k", at=10.0) for _ in range(3))
        # An event stamped 9.2 but judged now would put four events in (9.0, 10.0].
        assert not limiter.try_acquire("k", at=9.2)
        # One stamped 8.9 shares no window with them.
        assert limiter.try_acquire("k", at=8.9)
        assert limiter.try_acquire("k", at=8.5)
        assert limiter.try_acquire("k", at=8.2)
        assert not limiter.try_acquire("k", at=7.95)  # (7.2, 8.2] is fine but (7.9, 8.9] would hold four

    def test_random_out_of_order_stream_never_exceeds_the_limit(self) -> None:
        rng = random.Random(1)
        limiter = SlidingWindowLimiter(3)
        stamps = [rng.uniform(0, 20) for _ in range(2000)]
        # Mostly ordered with local shuffles, like threads reaching the limiter a little out of order.
        stamps.sort()
        for i in range(0, len(stamps) - 5, 5):
            chunk = stamps[i : i + 5]
            rng.shuffle(chunk)
            stamps[i : i + 5] = chunk
        admitted = [t for t in stamps if limiter.try_acquire("k", at=t)]
        assert max_in_window(admitted) == 3
        # Nearly every second holds its three admissions.
        assert len(admitted) >= 3 * 19

    def test_unlimited_zero_and_changing_limits(self) -> None:
        clock = FakeClock()
        limiter = SlidingWindowLimiter(None, clock=clock)
        assert all(limiter.try_acquire("k") for _ in range(100))
        limiter.limit = 0
        assert not limiter.try_acquire("k")
        limiter.limit = 2
        assert limiter.try_acquire("k")
        assert limiter.try_acquire("k")
        assert not limiter.try_acquire("k")
        with pytest.raises(ValueError, match="limit"):
            limiter.limit = -1
        limiter.reset()
        assert limiter.count("k") == 0

    def test_old_events_are_forgotten(self) -> None:
        clock = FakeClock()
        limiter = SlidingWindowLimiter(3, clock=clock, horizon=5.0)
        for step in range(1000):
            clock.now = 100.0 + step * 0.1
            limiter.try_acquire("k")
        assert len(limiter._admitted["k"]) <= 3 * 6

    def test_threads_never_overshoot(self) -> None:
        limiter = SlidingWindowLimiter(5)
        admitted: list[float] = []
        lock = threading.Lock()
        deadline = time.monotonic() + 0.5

        def hammer() -> None:
            while (now := time.monotonic()) < deadline:
                if limiter.try_acquire(("app", "us"), at=now):
                    with lock:
                        admitted.append(now)

        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(admitted) == 5
        assert max_in_window(admitted) == 5


@pytest.mark.serial  # quick requests must land in one real second: no other xdist worker on the CPU
class TestEmulatorRateLimit:
    def test_n_plus_one_quick_requests_get_exactly_one_429(
        self, clio_emulator_factory: Callable[..., ClioEmulator], api_session: Callable[..., requests.Session]
    ) -> None:
        emu = clio_emulator_factory(rate_limit=3)
        session = api_session(emu)
        statuses = [session.get(f"{emu.url}/grow/sources").status_code for _ in range(4)]
        records = emu.requests
        assert records[-1].t - records[0].t < 1.0  # all four inside one window
        assert statuses == [200, 200, 200, 429]
        assert (records[-1].resource, records[-1].client_id, records[-1].region) == ("sources", US, "us")
        assert session.get(f"{emu.url}/grow/sources").json() == {"message": "Too Many Requests"}
        assert emu.max_requests_in_window(statuses=(200,)) == 3
        assert emu.max_requests_in_window() == 5
        assert emu.count(status=429) == 2

    def test_regions_and_apps_have_separate_budgets(
        self, clio_emulator_factory: Callable[..., ClioEmulator], api_session: Callable[..., requests.Session]
    ) -> None:
        emu = clio_emulator_factory(rate_limit=3)
        emu.register_app("second-us-app", "pw", region="us")
        clients = ["clio-emulator-us", "clio-emulator-eu", "second-us-app"]
        sessions = {client: api_session(emu, client) for client in clients}
        for _ in range(3):
            for client in clients:
                assert sessions[client].get(f"{emu.url}/grow/sources").status_code == 200
        for client in clients:
            assert sessions[client].get(f"{emu.url}/grow/sources").status_code == 429
        # Measured per budget, like the limiter: two US apps do not add up.
        assert emu.max_requests_in_window(region="us", statuses=(200,)) == 3
        assert emu.max_requests_in_window(statuses=(200,)) == 3
        assert emu.max_requests_in_window(region="us", client_id="clio-emulator-us", statuses=(200,)) == 3
        assert emu.max_requests_in_window(region="eu") == 4
        assert emu.count(status=429, region="eu") == 1

    def test_unauthenticated_requests_are_not_admitted(
        self, clio_emulator_factory: Callable[..., ClioEmulator], api_session: Callable[..., requests.Session]
    ) -> None:
        emu = clio_emulator_factory(rate_limit=2)
        for _ in range(5):
            assert requests.get(f"{emu.url}/grow/sources", timeout=10).status_code == 401
        session = api_session(emu)
        assert [session.get(f"{emu.url}/grow/sources").status_code for _ in range(3)] == [200, 200, 429]

    def test_concurrent_clients_never_get_more_than_n_per_window(
        self, clio_emulator_factory: Callable[..., ClioEmulator], api_session: Callable[..., requests.Session]
    ) -> None:
        emu = clio_emulator_factory(rate_limit=3)
        apps = ["clio-emulator-us"] * 6 + ["clio-emulator-eu"] * 2
        sessions = [api_session(emu, app) for app in apps]
        deadline = time.monotonic() + 1.5

        def hammer(session: requests.Session) -> None:
            while time.monotonic() < deadline:
                session.get(f"{emu.url}/grow/sources", params={"fields": "id"})

        threads = [threading.Thread(target=hammer, args=(s,)) for s in sessions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for region in ("us", "eu"):
            assert emu.max_requests_in_window(region=region) > 3  # the clients really did push
            assert emu.max_requests_in_window(region=region, statuses=(200,)) == 3
            assert emu.count(status=200, region=region) >= 3
        assert emu.count(status=429) > 0

    def test_rate_limit_changes_at_run_time(
        self, clio_emulator_factory: Callable[..., ClioEmulator], api_session: Callable[..., requests.Session]
    ) -> None:
        emu = clio_emulator_factory(rate_limit=1)
        session = api_session(emu)
        assert [session.get(f"{emu.url}/grow/sources").status_code for _ in range(2)] == [200, 429]
        emu.set_rate_limit(3)
        assert emu.rate_limit == 3
        assert [session.get(f"{emu.url}/grow/sources").status_code for _ in range(3)] == [200, 200, 429]
        response = requests.post(f"{emu.url}/_emulator/rate_limit", json={"rate_limit": None}, timeout=10)
        assert response.json() == {"rate_limit": None}
        assert all(session.get(f"{emu.url}/grow/sources").ok for _ in range(10))

    def test_window_width_is_a_parameter(self, emu: ClioEmulator, api: requests.Session) -> None:
        for _ in range(5):
            api.get(f"{emu.url}/grow/sources")
        assert emu.max_requests_in_window(window=1.0) == 5
        assert emu.max_requests_in_window(window=1e-9) == 1
        assert emu.max_requests_in_window(region="ca") == 0
