# SPDX-License-Identifier: Apache-2.0
"""Shared setup of the Clio Manage end-to-end tests: a Manage connection, the limiter's ledger, the checks."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_clio.testing import ClioEmulator
from dev.manage_ledger import AdmissionLedger

ACTIVITY_FIELDS = [
    "id",
    "etag",
    "date",
    "quantity",
    "total",
    "note",
    "matter{id,display_number}",
    "user{id,name}",
    "updated_at",
]
"""What the tests extract from ``activities`` (one level of nesting, as Manage allows)."""

UNLIMITED = {"peak_limit": 100_000, "off_peak_limit": 100_000}
"""Manage settings whose rate limit never binds (the headers still announce it)."""


@pytest.fixture
def manage_conn(monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """Return ``make(emu, **extra) -> conn_id``: a fresh Manage connection (its own token) to ``emu``."""

    def make(emu: ClioEmulator, **extra: Any) -> str:
        conn_id = f"clio_manage_{uuid.uuid4().hex[:10]}"
        conn = emu.connection(api="manage", region="us", **extra)
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        return conn_id

    return make


@pytest.fixture
def ledger() -> Iterator[Callable[[ClioEmulator], AdmissionLedger]]:
    """Return ``watch(emu) -> AdmissionLedger`` recording ``emu``'s Manage limiter until the test ends."""
    made: list[AdmissionLedger] = []

    def watch(emu: ClioEmulator) -> AdmissionLedger:
        made.append(AdmissionLedger(emu))
        return made[-1]

    yield watch
    for one in made:
        one.close()


def assert_cursor_paging_only(emu: ClioEmulator) -> None:
    """No Manage request used ``offset``; every first page asked for ``order=id(asc)``, later a cursor."""
    api = [r for r in emu.manage_requests() if r.path.startswith("/api/v4/")]
    assert api, "no Manage API request was recorded"
    assert [r for r in api if "offset" in r.query] == []
    for request in api:
        if request.page_token is None:
            assert request.query.get("order") == ["id(asc)"], request.query


@pytest.fixture
def manage() -> SimpleNamespace:
    """The shared constants and checks: ``fields``, ``unlimited``, ``assert_cursor_paging_only(emu)``."""
    return SimpleNamespace(
        fields=ACTIVITY_FIELDS, unlimited=UNLIMITED, assert_cursor_paging_only=assert_cursor_paging_only
    )
