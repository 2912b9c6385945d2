# SPDX-License-Identifier: Apache-2.0
"""The token manager: hand out a valid access token, refreshing and persisting the pair safely.

Clio's refresh tokens are single-use: every refresh answers a new pair and revokes the old refresh token at
once. A process that refreshes and then loses the answer, or two processes that refresh with the same token,
leave the connection needing a person to authorize it again. So :class:`TokenManager`

- persists the rotated pair to a :class:`~airflow_provider_clio.auth.stores.TokenStore` right after the
  token response, retrying a failed save with backoff, and never hands out the new access token before the
  store has the pair (if the store keeps failing it raises, saying how to recover);
- serializes refreshes per connection with a process-local lock, plus an inter-process lock when the store
  offers one (:class:`~airflow_provider_clio.auth.stores.FileTokenStore`);
- re-reads the store before refreshing and on ``invalid_grant``, so a process that lost a refresh race
  adopts the winner's tokens instead of failing.

APIs whose refresh tokens do not rotate (``rotates_refresh_token=False``) need none of the race handling:
a refresh leaves the old refresh token valid, so losing the answer loses nothing.

Every token and the client secret go through ``mask_secret`` as soon as they are seen, and
:meth:`TokenManager.secrets` lists every token value seen, for scrubbing exception text.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence

from airflow_provider_clio.auth.chain import SAVE_RETRY_DELAYS, TokenChain
from airflow_provider_clio.auth.oauth import (
    ENDPOINT,
    REAUTHORIZE_HINT,
    ErrorParser,
    Grant,
    InvalidGrant,
    OAuthClient,
    PostCallable,
)
from airflow_provider_clio.auth.stores import SupportsRefreshLock, TokenSet, TokenStore
from airflow_provider_clio.exceptions import ClioAuthError, ClioTokenRaceError, parse_error_body

log = logging.getLogger(__name__)

_LOCAL_LOCKS: dict[str, threading.RLock] = {}
_LOCAL_LOCKS_GUARD = threading.Lock()


def _reset_local_locks() -> None:
    # A lock another thread held at fork time stays locked forever in the child: start the child afresh.
    global _LOCAL_LOCKS_GUARD
    _LOCAL_LOCKS.clear()
    _LOCAL_LOCKS_GUARD = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_local_locks)


def _local_lock(conn_id: str) -> threading.RLock:
    # One lock per connection for the whole process: every hook (and thread) of a connection shares it.
    with _LOCAL_LOCKS_GUARD:
        return _LOCAL_LOCKS.setdefault(conn_id, threading.RLock())


class TokenManager:
    """
    Hand out a valid access token for one connection, refreshing and persisting the rotated pair safely.

    The first call loads the newest tokens: the store wins over ``initial`` (the connection's extras) when
    it holds any, because the connection's refresh token has been rotated away since. Access tokens are
    refreshed ``refresh_margin`` seconds ahead of expiry (at most half their lifetime), and once after a 401.

    :param conn_id: The Airflow connection id; keys the store and the locks.
    :param client_id: OAuth client id (the connection's login).
    :param client_secret: OAuth client secret (the connection's password).
    :param token_url: The token endpoint, e.g. ``https://auth.api.clio.com/oauth/token``.
    :param initial: Tokens from the connection's extras, used when the store has none.
    :param store: Where rotated tokens are persisted and read back.
    :param post: ``post(url, form) -> requests.Response``: the hook's send path for the token endpoint.
    :param clock: Epoch-seconds clock (token expiry is shared between processes, so not monotonic).
    :param sleep: Sleep function, injected by tests.
    :param refresh_margin: Refresh this many seconds before the access token expires.
    :param invalid_grant_wait: After ``invalid_grant``, watch the store this long for the winner's tokens.
    :param poll_interval: Interval between those store reads.
    :param rotates_refresh_token: Whether a refresh revokes the presented refresh token (Clio Platform). When
        ``False`` a response without ``refresh_token`` keeps the old one and no refresh race can strand it.
    :param parse_error: Reads ``(error_code, message)`` from the token endpoint's error bodies.
    :param save_retry_delays: Waits before each new attempt to save a rotated pair after a failed save.
    :param max_race_waits: Lost refresh races on one stored token that count as a race (retryable); the next
        one is a broken chain that needs a person (:class:`ClioAuthError`), so a task does not spend all its
        retries on a revoked token.
    """

    def __init__(
        self,
        *,
        conn_id: str,
        client_id: str,
        client_secret: str,
        token_url: str,
        initial: TokenSet,
        store: TokenStore,
        post: PostCallable,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        refresh_margin: float = 300.0,
        invalid_grant_wait: float = 5.0,
        poll_interval: float = 0.25,
        rotates_refresh_token: bool = True,
        parse_error: ErrorParser = parse_error_body,
        save_retry_delays: Sequence[float] = SAVE_RETRY_DELAYS,
        max_race_waits: int = 3,
    ) -> None:
        self.conn_id = conn_id
        self.client_id = client_id
        self.token_url = token_url
        self.store = store
        self._clock = clock
        self._sleep = sleep
        self.refresh_margin = refresh_margin
        self.invalid_grant_wait = invalid_grant_wait
        self.poll_interval = poll_interval
        self.rotates_refresh_token = rotates_refresh_token
        self.max_race_waits = max_race_waits
        self._race_waits: dict[str, int] = {}
        self._chain = TokenChain(
            conn_id=conn_id, store=store, initial=initial, sleep=sleep, save_retry_delays=save_retry_delays
        )
        self.oauth = OAuthClient(
            conn_id=conn_id,
            client_id=client_id,
            client_secret=client_secret,
            token_url=token_url,
            post=post,
            parse_error=parse_error,
            clock=clock,
            known_secrets=self._chain.secrets,
        )
        self._lock = _local_lock(conn_id)
        self._tokens: TokenSet | None = None
        self._lifetime: float | None = None
        self.refreshes = 0
        """Successful refreshes this manager made (not counting tokens adopted from other processes)."""

    def __repr__(self) -> str:
        return f"TokenManager(conn_id={self.conn_id!r}, client_id={self.client_id!r}, url={self.token_url!r})"

    # -- public API -----------------------------------------------------------------------------------

    @property
    def tokens(self) -> TokenSet:
        """The token set in use (loaded on first access)."""
        with self._lock:
            return self._current()

    def secrets(self) -> list[str]:
        """
        Return every token value this manager has seen, oldest first, to scrub from exception text.

        The connection's, every stored pair it read, every pair it received (refreshed or exchanged, rotated
        away since or not) and authorization codes. The client secret is not among them.
        """
        return self._chain.secrets()

    def access_token(self) -> str:
        """Return a valid access token, refreshing it first when it expires within the margin."""
        with self._lock:
            self._retry_unsaved()
            tokens = self._current()
            if self._usable(tokens):
                return tokens.access_token  # type: ignore[return-value]  # _usable checked it
            # Before spending our refresh token, see whether another process already refreshed.
            stored = self._chain.load()
            if self._chain.adoptable(stored) and self._usable(stored):
                self._tokens = stored
                return stored.access_token  # type: ignore[return-value]
            return self._refresh(rejected=None)

    def usable_access_token(self) -> str | None:
        """Return a still valid access token (store or connection) without ever refreshing, else ``None``."""
        with self._lock:
            self._retry_unsaved()
            tokens = self._current()
            if self._usable(tokens):
                return tokens.access_token
            stored = self._chain.load()
            if self._chain.adoptable(stored) and self._usable(stored):
                self._tokens = stored
                return stored.access_token
            return None

    def refresh_after_401(self, rejected: str) -> str:
        """
        Return an access token to retry with after the API rejected ``rejected`` with 401.

        Refreshes once, unless another thread or process already replaced the rejected token.
        """
        with self._lock:
            self._retry_unsaved()
            tokens = self._current()
            if tokens.access_token and tokens.access_token != rejected and self._usable(tokens):
                return tokens.access_token  # another thread of this process refreshed meanwhile
            stored = self._chain.load()
            if self._chain.adoptable(stored) and stored.access_token != rejected and self._usable(stored):
                self._tokens = stored
                return stored.access_token  # type: ignore[return-value]
            return self._refresh(rejected=rejected)

    def exchange_code(self, code: str, redirect_uri: str) -> TokenSet:
        """Exchange an authorization code for tokens (onboarding), save them and start using them."""
        self._chain.see(None, code)
        with self._lock:
            grant = self.oauth.exchange_code(code, redirect_uri)
            tokens = self._received(grant)
            failure = self._chain.save_with_retries(tokens, what="the new Clio tokens")
            if failure is not None:
                # Nobody would retry this save: fail now, naming only the exception type (database errors
                # quote the statement's parameters, which hold the tokens).
                raise ClioAuthError(
                    f"Clio issued tokens for connection {self.conn_id!r} but storing them failed "
                    f"({type(failure).__name__}); nothing was saved. Fix the token store and authorize again."
                )
            self._tokens = tokens
            self._chain.unsaved = None
            log.info("Exchanged an authorization code for Clio tokens (connection %s).", self.conn_id)
            return tokens

    def verify_client_credentials(self) -> None:
        """
        Raise unless the token endpoint accepts the client id and secret; spends no token.

        Raises :class:`~airflow_provider_clio.exceptions.ClioAuthError` for ``invalid_client``,
        :class:`~airflow_provider_clio.exceptions.ClioFatalError` when a made-up refresh token is accepted
        (the host is not Clio), and the status's error for anything else.
        """
        self.oauth.verify_client_credentials()

    # -- state (call with self._lock held) ------------------------------------------------------------

    def _received(self, grant: Grant) -> TokenSet:
        """Note a token response's pair and lifetime and return the pair."""
        self._chain.see(grant.tokens)
        if grant.lifetime is not None:
            self._lifetime = grant.lifetime
        return grant.tokens

    def _current(self) -> TokenSet:
        if self._tokens is None:
            stored = self._chain.load()
            self._tokens = stored if stored is not None else self._chain.initial
        return self._tokens

    def _usable(self, tokens: TokenSet) -> bool:
        if not tokens.access_token:
            return False
        if tokens.expires_at is None:
            return True  # unknown expiry: use it until the API answers 401
        margin = self.refresh_margin
        if self._lifetime is not None:
            # Short-lived tokens (tests, a changed Clio policy) must not be refreshed on every call.
            margin = min(margin, self._lifetime / 2)
        return tokens.expires_at - margin > self._clock()

    # -- refresh and races (call with self._lock held) ------------------------------------------------

    def _refresh(self, *, rejected: str | None) -> str:
        lock = (
            self.store.refresh_lock(self.conn_id)
            if isinstance(self.store, SupportsRefreshLock)
            else contextlib.nullcontext()
        )
        with lock:
            current = self._current()
            # Whoever held the lock before us may have refreshed already: use their tokens if they are newer.
            stored = self._chain.load()
            if self._chain.adoptable(stored) and stored.refresh_token != current.refresh_token:
                self._tokens = current = stored
                if stored.access_token != rejected and self._usable(stored):
                    return stored.access_token  # type: ignore[return-value]
            # A token the store holds is visible to every worker, so one of them may spend it at the same
            # moment (VariableTokenStore has no inter-process lock): a rejection of it may be a lost race.
            shared = stored.refresh_token if stored is not None else None
            tokens = self._refresh_with(current.refresh_token, tried=set(), shared=shared)
            return tokens.access_token  # type: ignore[return-value]  # token responses always carry one

    def _refresh_with(self, refresh_token: str, *, tried: set[str], shared: str | None) -> TokenSet:
        if not refresh_token:
            raise ClioAuthError(
                f"Clio connection {self.conn_id!r} has no refresh token. "
                + REAUTHORIZE_HINT.format(conn_id=self.conn_id)
            )
        tried.add(refresh_token)
        if refresh_token in self._chain.revoked:
            # Clio already rejected it (an earlier attempt of this call or task): presenting a dead token
            # again could look like token reuse to Clio. Only a newer stored token can help now.
            return self._recover_from_invalid_grant(
                "the refresh token was already rejected", status_code=400, tried=tried, shared=shared
            )
        try:
            grant = self.oauth.refresh(refresh_token)
        except InvalidGrant as refused:
            self._chain.revoked.add(refresh_token)
            return self._recover_from_invalid_grant(
                refused.message, status_code=refused.status_code, tried=tried, shared=shared
            )
        tokens = self._received(grant)
        self._tokens = tokens
        self.refreshes += 1
        if self.rotates_refresh_token and tokens.refresh_token != refresh_token:
            self._chain.revoked.add(refresh_token)  # Clio revoked it the moment it answered
            self._chain.save_rotated(tokens)  # raises unless the store has the new pair
            stored = "stored the rotated pair."
        else:
            stored = self._chain.save_unrotated(tokens)
        log.info(
            "Refreshed the Clio access token of connection %s (valid %s s); %s",
            self.conn_id,
            f"{grant.lifetime:.0f}" if grant.lifetime is not None else "?",
            stored,
        )
        return tokens

    def _recover_from_invalid_grant(
        self, message: str, *, status_code: int, tried: set[str], shared: str | None
    ) -> TokenSet:
        # The usual cause: another worker refreshed with the same token a moment ago and is about to save the
        # rotated pair (it may not have yet). Watch the store for a token we have not tried. Without
        # rotation no other worker can have revoked ours: one look suffices (a re-authorization).
        waits = self.rotates_refresh_token and self.invalid_grant_wait > 0
        polls = max(1, math.ceil(self.invalid_grant_wait / self.poll_interval)) if waits else 0
        for attempt in range(polls + 1):
            stored = self._chain.load()
            if self._chain.adoptable(stored) and stored.refresh_token not in tried:
                log.info(
                    "Another process refreshed the Clio tokens of %s first; using its tokens.", self.conn_id
                )
                self._tokens = stored
                if self._usable(stored):
                    return stored
                return self._refresh_with(stored.refresh_token, tried=tried, shared=stored.refresh_token)
            if attempt < polls:
                self._sleep(self.poll_interval)
        # Last resort, only while the store never held another token: then the connection's token may be the
        # only one there is. Once the chain moved on, the connection's token was rotated away, and presenting
        # a revoked token can make Clio revoke the whole chain (reuse detection), the winner's new token too.
        initial = self._chain.initial.refresh_token
        if initial and initial not in tried and initial not in self._chain.revoked and not self._chain.moved:
            log.warning(
                "The Clio refresh token of %s was rejected; trying the one in the connection.", self.conn_id
            )
            return self._refresh_with(initial, tried=tried, shared=None)
        raise self._invalid_grant_error(message, status_code=status_code, tried=tried, shared=shared)

    def _invalid_grant_error(
        self, message: str, *, status_code: int, tried: set[str], shared: str | None
    ) -> ClioAuthError | ClioTokenRaceError:
        hint = REAUTHORIZE_HINT.format(conn_id=self.conn_id)
        if shared is not None:
            self._race_waits[shared] = self._race_waits.get(shared, 0) + 1
        lost_races = self._race_waits.get(shared, 0) if shared is not None else 0
        if (
            self.rotates_refresh_token
            and shared is not None
            and shared in tried
            and lost_races < self.max_race_waits
        ):
            # Clio rejected the token every worker reads from the store: the usual cause is another worker
            # that refreshed with it first and has not stored the rotated pair yet. Let the task retry.
            return ClioTokenRaceError(
                f"Clio rejected the stored refresh token of connection {self.conn_id!r} (invalid_grant: "
                f"{message}) and no newer token appeared in the token store within "
                f"{self.invalid_grant_wait:g} s. Most likely another process refreshed with the same token "
                "and has not stored the new one yet; a retry will pick it up. If this keeps happening, the "
                "token was revoked: " + hint,
                status_code=status_code,
                endpoint=ENDPOINT,
            )
        # A winner saves its rotated pair within seconds; a stored token still dead after several waits means
        # the chain broke (a process killed between Clio's rotation and its save): retrying cannot help.
        waited = f" after {lost_races} waits" if lost_races > 1 else ""
        return ClioAuthError(
            f"Clio rejected the refresh token of connection {self.conn_id!r} (invalid_grant: {message}) "
            f"and no newer token appeared in the token store{waited}. " + hint,
            status_code=status_code,
            endpoint=ENDPOINT,
        )

    def _retry_unsaved(self) -> None:
        unsaved = self._chain.unsaved
        if unsaved is not None and unsaved is self._tokens:
            self._chain.save_rotated(unsaved)


__all__ = ["TokenManager"]
