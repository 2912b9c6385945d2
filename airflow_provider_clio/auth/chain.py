# SPDX-License-Identifier: Apache-2.0
"""What one process knows about a connection's token chain: the stored pair, dead tokens, unsaved pairs.

:class:`TokenChain` is the token manager's view of the store. It reads the newest pair, remembers which
refresh tokens are dead (rotated away or rejected) so a stale stored pair never replaces a newer one, keeps
every token value seen for scrubbing, and saves new pairs: a rotated pair with retries and backoff before
anyone may use it, since until the store has it the only valid refresh token lives in this process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TypeGuard

from airflow_provider_clio.auth.oauth import ENDPOINT
from airflow_provider_clio.auth.stores import TokenSet, TokenStore
from airflow_provider_clio.exceptions import ClioAuthError

log = logging.getLogger(__name__)

SAVE_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
"""Seconds to wait before each new attempt to save a rotated pair (five attempts, 7.5 s in all)."""


class TokenChain:
    """
    One connection's token chain as this process sees it (not thread-safe: the manager's lock guards it).

    :param conn_id: The Airflow connection id; keys the store.
    :param store: Where pairs are persisted and read back.
    :param initial: The connection's tokens (extras), used while the store has none.
    :param sleep: Sleep function for the backoff between save attempts.
    :param save_retry_delays: Waits before each new attempt to save a rotated pair after a failed save.
    """

    def __init__(
        self,
        *,
        conn_id: str,
        store: TokenStore,
        initial: TokenSet,
        sleep: Callable[[float], None],
        save_retry_delays: Sequence[float] = SAVE_RETRY_DELAYS,
    ) -> None:
        self.conn_id = conn_id
        self.store = store
        self.initial = initial
        self._sleep = sleep
        self.save_retry_delays = tuple(save_retry_delays)
        self._seen: dict[str, None] = {}  # insertion-ordered set of every token value seen
        self._seen_lock = threading.Lock()  # secrets() is called without the manager's lock
        self.see(initial)
        self.revoked: set[str] = set()
        """Refresh tokens known dead: rotated away by this process (Clio revoked them when it answered) or
        rejected by Clio. A stored pair holding one is older than ours (a slower process saved over it)."""
        self.moved = False
        """The store held a refresh token other than the connection's: the connection's was rotated away."""
        self.unsaved: TokenSet | None = None
        """A rotated pair the store does not have yet: the only copy of the refresh token Clio accepts."""

    # -- secrets ----------------------------------------------------------------------------------------

    def see(self, tokens: TokenSet | None, *extra: str) -> None:
        """Remember the values of ``tokens`` (and ``extra`` values such as a code) for :meth:`secrets`."""
        values = [*(tokens.values() if tokens is not None else ()), *extra]
        with self._seen_lock:
            self._seen.update(dict.fromkeys(values))

    def secrets(self) -> list[str]:
        """Return every token value seen, oldest first."""
        with self._seen_lock:
            return list(self._seen)

    # -- reading ----------------------------------------------------------------------------------------

    def load(self) -> TokenSet | None:
        """Return the stored pair, ``None`` when there is none or the store cannot be read."""
        try:
            stored = self.store.load(self.conn_id)
        except Exception as exc:
            # A store outage must not stop a task that still holds usable tokens; the refresh path copes.
            log.warning("Could not read the stored Clio tokens of %s: %s", self.conn_id, type(exc).__name__)
            return None
        self.see(stored)
        if stored is not None and stored.refresh_token and stored.refresh_token != self.initial.refresh_token:
            self.moved = True
        return stored

    def adoptable(self, stored: TokenSet | None) -> TypeGuard[TokenSet]:
        """Tell whether a stored pair may replace ours: not one whose refresh token is dead."""
        return stored is not None and stored.refresh_token not in self.revoked

    # -- saving -----------------------------------------------------------------------------------------

    def save_rotated(self, tokens: TokenSet) -> None:
        """
        Store a rotated pair before anyone uses it, retrying with backoff; raise if the store keeps failing.

        Clio revoked the previous refresh token when it answered, so the new pair lives only in this
        process's memory until the store has it. Handing out its access token first would let a short
        process (one sensor poke) end with it unsaved, and the next process fail with ``invalid_grant``.
        """
        self.unsaved = tokens
        failure = self.save_with_retries(tokens, what="the rotated Clio tokens")
        if failure is None:
            self.unsaved = None
            return
        # Not retryable: a new process would read the revoked token from the store. This process keeps the
        # pair and retries the save on its next call, so a caller outliving the store outage loses nothing.
        raise ClioAuthError(
            f"Clio rotated the refresh token of connection {self.conn_id!r}, but the token store "
            f"({type(self.store).__name__}) failed to save the new pair {len(self.save_retry_delays) + 1} "
            f"times ({type(failure).__name__}; the store's own logs say why). Clio has revoked the previous "
            "refresh token, so the new one exists only in this process's memory and was not used. If this "
            "process ends before the store recovers, the connection's tokens are lost: fix the token store, "
            f"then authorize the application again with `airflow clio auth --conn-id {self.conn_id}`.",
            endpoint=ENDPOINT,
        )

    def save_unrotated(self, tokens: TokenSet) -> str:
        """Store a pair whose refresh token stays valid anyway (a failure loses nothing); say how it went."""
        try:
            self.store.save(self.conn_id, tokens)
        except Exception as exc:
            log.warning(
                "Could not store the new Clio tokens of %s (%s); the stored refresh token stays valid.",
                self.conn_id,
                type(exc).__name__,
            )
            return "the new pair is NOT stored (the previous refresh token stays valid)."
        return "stored the new pair."

    def save_with_retries(self, tokens: TokenSet, *, what: str) -> Exception | None:
        """Save ``tokens``, retrying after each of ``save_retry_delays``; return the last failure, if any."""
        failure: Exception | None = None
        attempts = len(self.save_retry_delays) + 1
        for attempt, delay in enumerate((*self.save_retry_delays, None), start=1):
            try:
                self.store.save(self.conn_id, tokens)
            except Exception as exc:
                failure = exc
                # Only the exception type: database errors quote the statement's parameters (the tokens).
                log.warning(
                    "Could not store %s of %s (%s), attempt %d of %d.",
                    what,
                    self.conn_id,
                    type(exc).__name__,
                    attempt,
                    attempts,
                )
                if delay is not None:
                    self._sleep(delay)
            else:
                return None
        return failure


__all__ = ["SAVE_RETRY_DELAYS", "TokenChain"]
