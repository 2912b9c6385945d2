# SPDX-License-Identifier: Apache-2.0
"""The pytest plugin's fixtures: a running emulator per test, configurable by marker or factory."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests

from airflow_provider_clio.testing import ClioEmulator

pytest_plugins = ["pytester"]


def test_clio_emulator_fixture_runs_with_defaults(clio_emulator: ClioEmulator) -> None:
    assert requests.get(f"{clio_emulator.url}/_emulator/health", timeout=10).json() == {"ok": True}
    assert clio_emulator.rate_limit == 3
    assert len(clio_emulator.records("contacts")) == 1000


@pytest.mark.clio_emulator(rate_limit=1000, records={"contacts": 5}, seed=9)
def test_marker_configures_the_fixture(clio_emulator: ClioEmulator) -> None:
    assert clio_emulator.rate_limit == 1000
    assert clio_emulator.seed == 9
    assert [r["id"] for r in clio_emulator.records("contacts")] == [1, 2, 3, 4, 5]


def test_factory_starts_independent_emulators(clio_emulator_factory: Callable[..., ClioEmulator]) -> None:
    a = clio_emulator_factory(records={"users": 1})
    b = clio_emulator_factory(records={"users": 2})
    assert a.url != b.url
    assert len(a.records("users")) == 1
    assert len(b.records("users")) == 2


def test_stopped_emulator_closes_kept_alive_connections() -> None:
    emu = ClioEmulator().start()
    session = requests.Session()
    url = emu.url
    assert session.get(f"{url}/_emulator/health", timeout=10).ok
    emu.stop()
    emu.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        session.get(f"{url}/_emulator/health", timeout=10)
    with pytest.raises(RuntimeError, match="not running"):
        _ = emu.url


def test_context_manager_starts_and_stops() -> None:
    with ClioEmulator(records={"sources": 1}) as emu:
        url = emu.url
        assert requests.get(f"{url}/_emulator/health", timeout=10).ok
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/_emulator/health", timeout=10)


def test_command_line_latency_applies_unless_the_test_sets_its_own(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from airflow_provider_clio.testing import Latency

        def test_default(clio_emulator):
            expected = Latency(inbound_delay=0.02, inbound_jitter=0.01, response_delay=0.03)
            assert clio_emulator.latency == expected

        @pytest.mark.clio_emulator(latency=Latency())
        def test_marker_wins(clio_emulator):
            assert clio_emulator.latency == Latency()
        """
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "airflow_provider_clio.testing.pytest_plugin",
        "--clio-inbound-delay=0.02",
        "--clio-inbound-jitter=0.01",
        "--clio-response-delay=0.03",
    )
    result.assert_outcomes(passed=2)
