# SPDX-License-Identifier: Apache-2.0
"""Pytest fixtures that run the Clio emulator on a free loopback port.

Enable with ``pytest_plugins = ["airflow_provider_clio.testing.pytest_plugin"]``. Options for the
``clio_emulator`` fixture come from the ``clio_emulator`` marker::

    @pytest.mark.clio_emulator(rate_limit=1000, records={"contacts": 50})
    def test_extract(clio_emulator): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_provider_clio.testing.emulator import ClioEmulator

__all__ = ["clio_emulator", "clio_emulator_factory"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "clio_emulator(**kwargs): ClioEmulator constructor arguments for the clio_emulator fixture"
    )


@pytest.fixture
def clio_emulator_factory() -> Iterator[Callable[..., ClioEmulator]]:
    """Return ``make(**kwargs) -> ClioEmulator`` (started on a free port); every one is stopped afterwards."""
    started: list[ClioEmulator] = []

    def make(**kwargs: Any) -> ClioEmulator:
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
