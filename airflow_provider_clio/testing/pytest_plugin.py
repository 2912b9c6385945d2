# SPDX-License-Identifier: Apache-2.0
"""Pytest fixtures that run the Clio emulator on a free loopback port.

Enable with ``pytest_plugins = ["airflow_provider_clio.testing.pytest_plugin"]``. Options for the
``clio_emulator`` fixture come from the ``clio_emulator`` marker::

    @pytest.mark.clio_emulator(rate_limit=1000, records={"contacts": 50})
    def test_extract(clio_emulator): ...

Network latency is set like faults, per test with the marker
(``@pytest.mark.clio_emulator(latency=Latency(inbound_delay=0.02, inbound_jitter=0.015,
response_delay=0.18))``), or for every emulator of a run from the command line:
``pytest --clio-inbound-delay 0.02 --clio-inbound-jitter 0.015 --clio-response-delay 0.18``. An explicit
``latency`` argument (marker or factory) wins over the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_provider_clio.testing.emulator import ClioEmulator
from airflow_provider_clio.testing.faults import Latency

__all__ = ["clio_emulator", "clio_emulator_factory"]

_LATENCY_OPTIONS = {
    "inbound_delay": "mean seconds from a request's send to its arrival stamp (and the rate limit)",
    "inbound_jitter": "uniform +/- spread of the inbound delay, seconds",
    "response_delay": "seconds from handling a request to the client receiving the answer",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("clio-emulator", "Clio emulator started by the clio_emulator fixtures")
    for name, help_text in _LATENCY_OPTIONS.items():
        group.addoption(
            f"--clio-{name.replace('_', '-')}", type=float, default=0.0, dest=f"clio_{name}", help=help_text
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "clio_emulator(**kwargs): ClioEmulator constructor arguments for the clio_emulator fixture"
    )


def _default_latency(config: pytest.Config) -> Latency | None:
    values = {name: float(config.getoption(f"clio_{name}", default=0.0) or 0.0) for name in _LATENCY_OPTIONS}
    if not any(values.values()):
        return None
    return Latency(
        inbound_delay=values["inbound_delay"],
        inbound_jitter=values["inbound_jitter"],
        response_delay=values["response_delay"],
    )


@pytest.fixture
def clio_emulator_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., ClioEmulator]]:
    """Return ``make(**kwargs) -> ClioEmulator`` (started on a free port); every one is stopped afterwards.

    Without a ``latency`` argument, the ``--clio-*-delay`` / ``--clio-inbound-jitter`` options apply.
    """
    started: list[ClioEmulator] = []
    latency = _default_latency(request.config)

    def make(**kwargs: Any) -> ClioEmulator:
        if latency is not None:
            kwargs.setdefault("latency", latency)
        emu = ClioEmulator(**kwargs).start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()


@pytest.fixture
def clio_emulator(
    request: pytest.FixtureRequest, clio_emulator_factory: Callable[..., ClioEmulator]
) -> ClioEmulator:
    """A running emulator (defaults, or the ``clio_emulator`` marker's arguments), stopped after the test."""
    marker = request.node.get_closest_marker("clio_emulator")
    kwargs = dict(marker.kwargs) if marker is not None else {}
    return clio_emulator_factory(**kwargs)
