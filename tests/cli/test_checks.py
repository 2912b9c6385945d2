# SPDX-License-Identifier: Apache-2.0
"""Pool sizing and the rate budget, the token store round trip, and the local-mode hand-over file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from airflow_provider_clio.auth import FileTokenStore, MemoryTokenStore, TokenSet
from airflow_provider_clio.cli.checks import budget_problem, share_problem, slots_for, token_store_problem
from airflow_provider_clio.cli.handover import handover_document, write_token_file

PAIR = TokenSet(access_token="at-check-0001", refresh_token="rt-check-0001", expires_at=2_000_000_000.0)


@pytest.mark.parametrize(
    ("limit", "per_slot", "slots"),
    [(3, 1, 3), (3, 1.5, 2), (3, 0.1, 30), (3, 0.3, 10), (3, 4, 0), (4.5, 1, 4), (10, 2.5, 4)],
)
def test_slots_are_the_most_that_fit_the_limit(limit, per_slot, slots):
    assert slots_for(limit, per_slot) == slots
    assert budget_problem(slots, per_slot, limit) is None
    assert budget_problem(slots + 1, per_slot, limit) is not None


def test_budget_problem_names_the_numbers():
    # Issue 8 finding 6: 3 slots at 1.5 req/s each sent 4.5 req/s against a limit of 3.
    assert budget_problem(3, 1.5, 3) == (
        "3 slots x 1.5 req/s per slot = 4.5 req/s exceeds the limit of 3 req/s (expect 429s)"
    )


def test_a_share_sized_pool_may_not_have_more_slots_than_the_connections_pool_size():
    # Clio Manage: each task paces at pool_slots / pool_size of the token's budget.
    assert share_problem(5, 5) is None
    assert share_problem(3, 5) is None  # fewer slots: the budget is under-used, never exceeded
    assert share_problem(6, 5) == (
        "6 slots but the connection's pool_size is 5: running tasks would pace at 6/5 of the token's "
        "budget together (expect 429s); set the connection's pool_size extra to 6, or size the pool to 5"
    )


def test_a_store_that_reads_back_passes_and_keeps_a_usable_pair(tmp_path: Path):
    for store in (MemoryTokenStore({"c": PAIR}), FileTokenStore(tmp_path / "tokens.json")):
        store.save("c", PAIR)
        assert token_store_problem(store, "c", PAIR) is None
        stored = store.load("c")
        assert stored is not None
        assert (stored.access_token, stored.refresh_token) == (PAIR.access_token, PAIR.refresh_token)
        assert stored.expires_at == PAIR.expires_at - 1  # the probe: one second earlier, nothing else


def test_an_empty_store_is_filled_with_the_pair_in_use():
    store = MemoryTokenStore()
    assert token_store_problem(store, "c", PAIR) is None
    assert store.load("c") is not None


def test_a_store_holding_another_pair_is_reported_and_not_overwritten():
    other = TokenSet(access_token="at-other-0002", refresh_token="rt-other-0002", expires_at=1.0)
    store = MemoryTokenStore({"c": other})
    problem = token_store_problem(store, "c", PAIR)
    assert problem is not None
    assert "does not return what was written" in problem
    assert store.load("c") == other
    assert store.saves == 0


def test_the_hand_over_replaces_the_token_extras_and_keeps_the_rest(tmp_path: Path):
    extra = {"region": "eu", "requests_per_slot": 1, "refresh_token": "old", "expires_at": 5}
    document = handover_document("clio_eu", extra, PAIR, "clio_oauth_tokens__clio_eu")
    assert document["connection_extra"] == {
        "region": "eu",
        "requests_per_slot": 1,
        "refresh_token": PAIR.refresh_token,
        "access_token": PAIR.access_token,
        "expires_at": "2033-05-18T03:33:20+00:00",
    }
    assert document["token_variable"]["key"] == "clio_oauth_tokens__clio_eu"
    assert TokenSet.from_json(document["token_variable"]["value"]) == PAIR
    path = tmp_path / "handover.json"
    write_token_file(str(path), document)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == document
