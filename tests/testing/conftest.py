# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the emulator's own tests: a fast emulator and bearer-token sessions against it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests

from airflow_provider_clio.testing import ClioEmulator

# Every test but the limiter's raises the limit, so the suite never waits for the 1 s window.
FAST = 1000


@pytest.fixture
def emu(clio_emulator_factory: Callable[..., ClioEmulator]) -> ClioEmulator:
    """An emulator with a high rate limit and a few hundred records per resource."""
    return clio_emulator_factory(
        rate_limit=FAST, records={"contacts": 450, "matters": 120, "activities": 300}
    )


@pytest.fixture
def api_session() -> Iterator[Callable[..., requests.Session]]:
    """Return ``make(emu, client_id="clio-emulator-us") -> Session`` carrying a fresh access token."""
    sessions: list[requests.Session] = []

    def make(emulator: ClioEmulator, client_id: str = "clio-emulator-us") -> requests.Session:
        token, _ = emulator.issue_access_token(client_id)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def api(emu: ClioEmulator, api_session: Callable[..., requests.Session]) -> requests.Session:
    """A session for the US default app of ``emu``."""
    return api_session(emu)
