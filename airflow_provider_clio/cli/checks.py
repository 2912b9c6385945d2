# SPDX-License-Identifier: Apache-2.0
"""The parts of ``airflow clio check`` and ``airflow clio pools`` beyond the API call: budget and token store.

The rate budget: a pool of ``slots`` slots whose tasks each pace at ``requests_per_slot`` per slot sends at
most ``slots x requests_per_slot`` requests per second, which must not exceed the application's limit. Where
an API sizes pools in shares of a token's budget (Clio Manage), the pool's slots must not exceed the
connection's ``pool_size``.
The token store: tasks rotate the refresh token and must read back what they wrote; a secrets backend that
also holds the token Variable answers reads with its own, stale pair.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from airflow_provider_clio.auth import TokenSet, TokenStore

__all__ = [
    "DEFAULT_LIMIT",
    "PoolInfo",
    "budget_problem",
    "read_pool",
    "share_problem",
    "slots_for",
    "token_store_problem",
]

DEFAULT_LIMIT = 3.0
"""Clio's rate limit per application and region, requests per second."""

# Tolerates float noise such as 3 / 0.1 = 29.999999999999996 (which is 30 slots).
_EPSILON = 1e-9


def slots_for(limit: float, requests_per_slot: float) -> int:
    """Return the most pool slots whose tasks stay within ``limit``: ``floor(limit / requests_per_slot)``."""
    return math.floor(limit / requests_per_slot + _EPSILON)


def budget_problem(slots: int, requests_per_slot: float, limit: float) -> str | None:
    """Return why ``slots x requests_per_slot`` exceeds ``limit``, or None when it does not."""
    rate = slots * requests_per_slot
    if rate <= limit * (1 + _EPSILON):
        return None
    return (
        f"{slots} slots x {requests_per_slot:g} req/s per slot = {rate:g} req/s exceeds the limit of "
        f"{limit:g} req/s (expect 429s)"
    )


def share_problem(slots: int, pool_size: int) -> str | None:
    """
    Return why a pool of ``slots`` slots breaks the shares of a token's budget, or None when it does not.

    Each task paces at ``pool_slots / pool_size`` of the token's budget (``pool_size``: the connection's
    extra); the tasks a pool of ``slots`` slots runs at once add up to ``slots / pool_size`` of it.
    """
    if slots <= pool_size:
        return None
    return (
        f"{slots} slots but the connection's pool_size is {pool_size}: running tasks would pace at "
        f"{slots}/{pool_size} of the token's budget together (expect 429s); set the connection's pool_size "
        f"extra to {slots}, or size the pool to {pool_size}"
    )


class PoolInfo(NamedTuple):
    """An Airflow pool as stored in the metadata database."""

    name: str
    slots: int
    include_deferred: bool


def read_pool(name: str) -> PoolInfo | None:
    """Return the pool ``name`` from the metadata database, or None when it does not exist."""
    from airflow.models import Pool

    pool = Pool.get_pool(name)
    if pool is None:
        return None
    return PoolInfo(name, int(pool.slots), bool(pool.include_deferred))


def token_store_problem(store: TokenStore, conn_id: str, tokens: TokenSet) -> str | None:
    """
    Write ``tokens`` to ``store`` and read them back; return what went wrong, or None.

    ``tokens`` is the pair the check just used, which the store must already hold (or be empty, when the
    connection's extras supplied it). A store answering with another pair is shadowed (a secrets backend
    holding the token Variable wins every read) or was rotated by a task meanwhile. The pair written back
    differs from the one read in ``expires_at`` only (one second earlier, so at worst one early refresh),
    so a read that does not see the write is caught even when the shadowing copy equals the pair in use.
    """
    key = getattr(store, "key", None)
    where = f"the Variable {key(conn_id)!r}" if callable(key) else type(store).__name__
    shadowed = (
        f"reading {where} does not return what was written to it: a secrets backend probably holds "
        "the same key and wins every read, so tasks would keep reading a revoked refresh token. Delete it "
        "from the secrets backend (tokens rotate; tasks must read where they write), then run "
        "`airflow clio auth` again"
    )
    current = store.load(conn_id)
    if current is not None and current != tokens:
        return f"{shadowed} (or a task rotated the tokens just now: run the check again)"
    # Written only while the store holds the pair in use (or nothing), so no newer pair is overwritten;
    # only a changed value proves that reads see writes.
    probe = tokens
    if tokens.expires_at is not None:
        probe = dataclasses.replace(tokens, expires_at=tokens.expires_at - 1)
    store.save(conn_id, probe)
    if store.load(conn_id) != probe:
        return shadowed
    return None
