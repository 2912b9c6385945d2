# SPDX-License-Identifier: Apache-2.0
"""OAuth tokens for Clio: where the rotating pair lives, and the manager that refreshes it safely.

Clio's refresh tokens are single-use: every refresh answers a new pair and revokes the old refresh token at
once. A process that refreshes and then loses the answer, or two processes that refresh with the same token,
leave the connection needing a person to authorize it again. So :class:`TokenManager`

- persists the rotated pair to a :class:`TokenStore` right after the token response, before the new access
  token is used;
- serializes refreshes per connection with a process-local lock, plus an inter-process lock when the store
  offers one (:class:`FileTokenStore`);
- re-reads the store before refreshing and on ``invalid_grant``, so a process that lost a refresh race
  adopts the winner's tokens instead of failing.

Every token and the client secret go through ``mask_secret`` as soon as they are seen.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, runtime_checkable

from airflow.sdk.log import mask_secret

from airflow_provider_clio.exceptions import (
    ClioAuthError,
    ClioConfigError,
    ClioError,
    ClioFatalError,
    ClioRateLimitError,
    ClioTokenRaceError,
    ClioTransientError,
    error_for_status,
    error_message,
)
from airflow_provider_clio.responses import parse_retry_after

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

VARIABLE_KEY_PREFIX = "clio_oauth_tokens__"
"""Prefix of the Variable that holds a connection's tokens; the name contains "token", so the UI masks it."""

REAUTHORIZE_HINT = (
    "A person must authorize the application again: run `airflow clio auth --conn-id {conn_id}`."
)

PostCallable = Callable[[str, dict[str, str]], "requests.Response"]
"""Send a form-encoded POST to the token endpoint and return the response (the hook's single send path)."""


def _mask(*values: str | None) -> None:
    for value in values:
        if value:
            mask_secret(value)


def _masked(value: str | None) -> str:
    return "None" if value is None else "'***'"


def parse_expires_at(value: Any) -> float | None:
    """
    Convert an ``expires_at`` connection extra (epoch seconds or ISO 8601) into epoch seconds.

    Naive ISO timestamps are read as UTC. Raises :class:`ClioConfigError` for anything else.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ClioConfigError("Connection extra 'expires_at' must be epoch seconds or an ISO 8601 timestamp.")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        with contextlib.suppress(ValueError):
            return float(text)
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return parsed.timestamp()
    raise ClioConfigError(
        f"Connection extra 'expires_at' must be epoch seconds or an ISO 8601 timestamp, got {value!r}."
    )


@dataclass(frozen=True, repr=False)
class TokenSet:
    """
    Hold one OAuth token pair as issued by Clio; ``repr`` never shows the token values.

    :param access_token: The bearer token for API calls, ``None`` when only a refresh token is known.
    :param refresh_token: The single-use refresh token (empty string when none is known yet).
    :param expires_at: When the access token expires, epoch seconds; ``None`` when unknown.
    """

    access_token: str | None
    refresh_token: str
    expires_at: float | None = None

    def __post_init__(self) -> None:
        # Whatever created this object (a token response, a store, a connection), its values are secrets now.
        _mask(self.access_token, self.refresh_token)

    def __repr__(self) -> str:
        return (
            f"TokenSet(access_token={_masked(self.access_token)}, "
            f"refresh_token={_masked(self.refresh_token or None)}, expires_at={self.expires_at!r})"
        )

    __str__ = __repr__

    def to_json(self) -> str:
        """Serialize to the JSON object the stores persist."""
        return json.dumps(
            {
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "expires_at": self.expires_at,
            }
        )

    @classmethod
    def from_json(cls, s: str) -> TokenSet:
        """Parse what :meth:`to_json` wrote; raises ``ValueError`` on anything else."""
        try:
            data = json.loads(s)
        except ValueError:
            raise ValueError("not a Clio token set: invalid JSON") from None  # the text may hold a secret
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> TokenSet:
        """Build from a mapping with ``access_token``, ``refresh_token`` and ``expires_at``."""
        if not isinstance(data, Mapping) or not isinstance(data.get("refresh_token"), str):
            raise ValueError("not a Clio token set: a JSON object with a string 'refresh_token' is required")
        access = data.get("access_token")
        expires_at = data.get("expires_at")
        return cls(
            access_token=access if isinstance(access, str) and access else None,
            refresh_token=data["refresh_token"],
            expires_at=float(expires_at) if isinstance(expires_at, int | float) else None,
        )

    @classmethod
    def from_connection_extra(cls, extra: Mapping[str, Any]) -> TokenSet:
        """Build the initial token set from the connection extras (refresh/access token, expires_at)."""
        refresh = extra.get("refresh_token") or ""
        access = extra.get("access_token") or None
        if not isinstance(refresh, str) or not (access is None or isinstance(access, str)):
            raise ClioConfigError("Connection extras 'refresh_token' and 'access_token' must be strings.")
        return cls(
            access_token=access, refresh_token=refresh, expires_at=parse_expires_at(extra.get("expires_at"))
        )


@runtime_checkable
class TokenStore(Protocol):
    """Persist the newest token pair of each connection between processes."""

    def load(self, conn_id: str) -> TokenSet | None:
        """Return the stored tokens of ``conn_id``, or ``None`` when there are none."""
        ...

    def save(self, conn_id: str, tokens: TokenSet) -> None:
        """Store ``tokens`` as the newest pair of ``conn_id``, durably, replacing what was there."""
        ...


@runtime_checkable
class SupportsRefreshLock(Protocol):
    """Serialize refreshes of one connection across processes (an optional capability of a store)."""

    def refresh_lock(self, conn_id: str) -> contextlib.AbstractContextManager[None]:
        """Hold an exclusive, inter-process lock for refreshing ``conn_id``'s tokens."""
        ...


def _in_task_runner() -> bool:
    # Airflow's own test for "talk to the supervisor, not the database" (airflow.models.Variable does the
    # same): the task runner, dag.test(), the dag processor and the triggerer set SUPERVISOR_COMMS; the CLI,
    # scripts and the scheduler never do. Checking sys.modules avoids importing the task runner.
    return hasattr(sys.modules.get("airflow.sdk.execution_time.task_runner"), "SUPERVISOR_COMMS")


class VariableTokenStore:
    """
    Keep tokens in the Airflow Variable ``clio_oauth_tokens__<conn_id>`` (the default store).

    Inside a running task (or ``dag.test()``) the Variable goes through ``airflow.sdk.Variable`` and the task
    supervisor, the only path Airflow 3 allows there. Everywhere else (the ``airflow clio`` CLI, scripts,
    tests) it goes through ``airflow.models.Variable`` and the metadata database.

    :param key_prefix: Prefix of the Variable key; the connection id follows it.
    """

    def __init__(self, key_prefix: str = VARIABLE_KEY_PREFIX) -> None:
        self.key_prefix = key_prefix

    def key(self, conn_id: str) -> str:
        """Return the Variable key holding ``conn_id``'s tokens."""
        return f"{self.key_prefix}{conn_id}"

    def load(self, conn_id: str) -> TokenSet | None:
        """Return the tokens stored in the Variable, or ``None`` when it is missing or unreadable."""
        key = self.key(conn_id)
        if _in_task_runner():
            from airflow.sdk import Variable

            raw = Variable.get(key, default=None)
        else:
            from airflow.models import Variable as VariableModel

            raw = VariableModel.get(key, default_var=None)
        if raw is None:
            return None
        try:
            return TokenSet.from_json(raw)
        except ValueError:
            # Never echo the value: it is (or held) a secret.
            log.warning("Ignoring Variable %s: it does not hold a Clio token set.", key)
            return None

    def save(self, conn_id: str, tokens: TokenSet) -> None:
        """Write the tokens to the Variable (an upsert)."""
        key = self.key(conn_id)
        description = (
            f"OAuth tokens of Clio connection {conn_id!r}, rotated by airflow-provider-clio. Do not edit."
        )
        if _in_task_runner():
            from airflow.sdk import Variable

            Variable.set(key, tokens.to_json(), description=description)
        else:
            from airflow.models import Variable as VariableModel

            VariableModel.set(key, tokens.to_json(), description=description)


class FileTokenStore:
    """
    Keep tokens of any number of connections in one JSON file (scripts, tests, multi-process benchmarks).

    Writes are atomic (temporary file + ``os.replace``) under an ``fcntl`` lock, so readers never see a
    half-written file and concurrent writers never lose each other's connections. The store also offers an
    inter-process :meth:`refresh_lock` that :class:`TokenManager` holds around a refresh. The file is created
    with mode 0600.

    :param path: The JSON file (its directory is created when missing). Lock files are created beside it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self, conn_id: str) -> TokenSet | None:
        """Return the stored tokens of ``conn_id``, or ``None``."""
        entry = self._read().get(conn_id)
        if entry is None:
            return None
        try:
            return TokenSet.from_dict(entry)
        except ValueError:
            log.warning("Ignoring the tokens of %s in %s: not a Clio token set.", conn_id, self.path)
            return None

    def save(self, conn_id: str, tokens: TokenSet) -> None:
        """Replace ``conn_id``'s tokens, keeping the other connections in the file."""
        with self._flock(self.path.with_name(self.path.name + ".lock")):
            data = self._read()
            data[conn_id] = json.loads(tokens.to_json())
            self._write(data)

    @contextlib.contextmanager
    def refresh_lock(self, conn_id: str) -> Iterator[None]:
        """Hold an exclusive lock for refreshing ``conn_id`` across processes (blocks until free)."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", conn_id)
        with self._flock(self.path.with_name(f"{self.path.name}.{safe}.refresh.lock")):
            yield

    @staticmethod
    @contextlib.contextmanager
    def _flock(lock_path: Path) -> Iterator[None]:
        import fcntl

        lock_path.parent.mkdir(parents=True, exist_ok=True)
        # A separate lock file: the data file itself is replaced on every write, so a lock on it would be
        # a lock on an inode nobody else opens any more.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError:
            log.warning("Ignoring %s: it is not JSON.", self.path)
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        # Make the rename itself durable: a crash right after a refresh must not bring back the revoked token.
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class MemoryTokenStore:
    """
    Keep tokens in a dict (tests, and single-process scripts that do not need them afterwards).

    :param tokens: Initial content, by connection id.
    """

    def __init__(self, tokens: Mapping[str, TokenSet] | None = None) -> None:
        self._tokens: dict[str, TokenSet] = dict(tokens or {})
        self._lock = threading.Lock()
        self.saves = 0
        """How many times :meth:`save` was called (tests assert on it)."""

    def load(self, conn_id: str) -> TokenSet | None:
        """Return the stored tokens of ``conn_id``, or ``None``."""
        with self._lock:
            return self._tokens.get(conn_id)

    def save(self, conn_id: str, tokens: TokenSet) -> None:
        """Replace ``conn_id``'s tokens."""
        with self._lock:
            self._tokens[conn_id] = tokens
            self.saves += 1


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
    ) -> None:
        _mask(client_secret)
        self.conn_id = conn_id
        self.client_id = client_id
        self._client_secret = client_secret
        self.token_url = token_url
        self._initial = initial
        self.store = store
        self._post = post
        self._clock = clock
        self._sleep = sleep
        self.refresh_margin = refresh_margin
        self.invalid_grant_wait = invalid_grant_wait
        self.poll_interval = poll_interval
        self._lock = _local_lock(conn_id)
        self._tokens: TokenSet | None = None
        self._lifetime: float | None = None
        self._unsaved: TokenSet | None = None
        # Refresh tokens this manager knows are dead: it rotated them away itself (Clio revoked them the
        # moment it answered) or Clio rejected them. A stored pair holding one is older than what this process
        # holds (typically because saving the rotation failed) and must never replace it.
        self._revoked: set[str] = set()
        # The store held a refresh token other than the connection's: the connection's was rotated away.
        self._chain_moved = False
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

    def access_token(self) -> str:
        """Return a valid access token, refreshing it first when it expires within the margin."""
        with self._lock:
            self._retry_unsaved()
            tokens = self._current()
            if self._usable(tokens):
                return tokens.access_token  # type: ignore[return-value]  # _usable checked it
            # Before spending our refresh token, see whether another process already refreshed.
            stored = self._load()
            if self._adoptable(stored) and self._usable(stored):
                self._tokens = stored
                return stored.access_token  # type: ignore[return-value]
            return self._refresh(rejected=None)

    def usable_access_token(self) -> str | None:
        """Return a still valid access token (store or connection) without ever refreshing, else ``None``."""
        with self._lock:
            tokens = self._current()
            if self._usable(tokens):
                return tokens.access_token
            stored = self._load()
            if self._adoptable(stored) and self._usable(stored):
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
            stored = self._load()
            if self._adoptable(stored) and stored.access_token != rejected and self._usable(stored):
                self._tokens = stored
                return stored.access_token  # type: ignore[return-value]
            return self._refresh(rejected=rejected)

    def exchange_code(self, code: str, redirect_uri: str) -> TokenSet:
        """Exchange an authorization code for tokens (onboarding), save them and start using them."""
        _mask(code)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.client_id,
            "client_secret": self._client_secret,
        }
        with self._lock:
            issued_at = self._clock()
            response = self._post(self.token_url, form)
            data = self._parse(response)
            if data is None:
                error, message = self._error(response, secrets=(code,))
                if error == "invalid_client":
                    raise self._invalid_client(response.status_code, message)
                if error != "invalid_grant":
                    raise self._unexpected(response, error, message)
                raise ClioAuthError(
                    f"Clio rejected the authorization code for connection {self.conn_id!r} "
                    f"({error or 'error'}: {message}). Codes are single-use and short-lived, and "
                    "redirect_uri must match the authorize request exactly: authorize again and paste the "
                    "new code.",
                    status_code=response.status_code,
                    endpoint="oauth/token",
                )
            tokens = self._tokens_from(data, previous_refresh=None, issued_at=issued_at)
            try:
                self.store.save(self.conn_id, tokens)
            except Exception as exc:
                # Nobody would retry this save: fail now, naming only the exception type (database errors
                # quote the statement's parameters, which hold the tokens).
                raise ClioAuthError(
                    f"Clio issued tokens for connection {self.conn_id!r} but storing them failed "
                    f"({type(exc).__name__}); nothing was saved. Fix the token store and authorize again."
                ) from None
            self._tokens = tokens
            self._unsaved = None
            log.info("Exchanged an authorization code for Clio tokens (connection %s).", self.conn_id)
            return tokens

    def verify_client_credentials(self) -> None:
        """Raise unless the token endpoint accepts the client id and secret; spends no token."""
        # Made up on the spot: it was never issued, so presenting it cannot look like the reuse of a token.
        bogus = f"airflow-provider-clio-test-{secrets.token_urlsafe(16)}"
        form = {
            "grant_type": "refresh_token",
            "refresh_token": bogus,
            "client_id": self.client_id,
            "client_secret": self._client_secret,
        }
        response = self._post(self.token_url, form)
        status = response.status_code
        known = (self._initial.refresh_token, self._initial.access_token or "")
        error, message = self._error(response, secrets=(*known, bogus))
        if error == "invalid_grant" and 400 <= status < 500:
            return  # the client authenticated; only the (made-up) grant was refused
        if error == "invalid_client":
            raise ClioAuthError(
                f"Clio rejected the client credentials (invalid_client: {message}). Check the connection's "
                "login (client id / App Key), password (client secret) and region.",
                status_code=status,
                endpoint="oauth/token",
            )
        if 200 <= status < 300:
            raise ClioFatalError(
                "the token endpoint accepted a made-up refresh token: is the connection's host really Clio?",
                status_code=status,
                endpoint="oauth/token",
            )
        raise error_for_status(
            status,
            f"Clio's token endpoint answered {error or 'an error'}: {message}",
            endpoint="oauth/token",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )

    # -- internals (call with self._lock held) --------------------------------------------------------

    def _current(self) -> TokenSet:
        if self._tokens is None:
            stored = self._load()
            self._tokens = stored if stored is not None else self._initial
        return self._tokens

    def _load(self) -> TokenSet | None:
        try:
            stored = self.store.load(self.conn_id)
        except Exception as exc:
            # A store outage must not stop a task that still holds usable tokens; the refresh path copes.
            log.warning("Could not read the stored Clio tokens of %s: %s", self.conn_id, type(exc).__name__)
            return None
        if (
            stored is not None
            and stored.refresh_token
            and stored.refresh_token != self._initial.refresh_token
        ):
            self._chain_moved = True
        return stored

    def _adoptable(self, stored: TokenSet | None) -> TypeGuard[TokenSet]:
        """Tell whether a stored pair may replace ours: not one whose refresh token we rotated away."""
        return stored is not None and stored.refresh_token not in self._revoked

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

    def _refresh(self, *, rejected: str | None) -> str:
        lock = (
            self.store.refresh_lock(self.conn_id)
            if isinstance(self.store, SupportsRefreshLock)
            else contextlib.nullcontext()
        )
        with lock:
            current = self._current()
            # Whoever held the lock before us may have refreshed already: use their tokens if they are newer.
            stored = self._load()
            if self._adoptable(stored) and stored.refresh_token != current.refresh_token:
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
        if refresh_token in self._revoked:
            # Clio already rejected it (an earlier attempt of this call or task): presenting a dead token
            # again could look like token reuse to Clio. Only a newer stored token can help now.
            return self._recover_from_invalid_grant(
                "the refresh token was already rejected", status_code=400, tried=tried, shared=shared
            )
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": self.client_id,
            "client_secret": self._client_secret,
        }
        issued_at = self._clock()
        response = self._post(self.token_url, form)
        data = self._parse(response)
        if data is not None:
            rotated = data.get("refresh_token")
            if isinstance(rotated, str) and rotated and rotated != refresh_token:
                self._revoked.add(refresh_token)  # Clio revoked it the moment it answered
            tokens = self._tokens_from(data, previous_refresh=refresh_token, issued_at=issued_at)
            saved = self._persist(tokens)
            self.refreshes += 1
            log.info(
                "Refreshed the Clio access token of connection %s (valid %.0f s); %s",
                self.conn_id,
                (tokens.expires_at - issued_at) if tokens.expires_at is not None else float("nan"),
                "stored the rotated pair."
                if saved
                else "the rotated pair is NOT stored yet (kept in memory, the save is retried).",
            )
            return tokens
        error, message = self._error(response, secrets=(refresh_token,))
        if error == "invalid_grant":
            self._revoked.add(refresh_token)
            return self._recover_from_invalid_grant(
                message, status_code=response.status_code, tried=tried, shared=shared
            )
        if error == "invalid_client":
            raise self._invalid_client(response.status_code, message)
        raise self._unexpected(response, error, message)

    def _recover_from_invalid_grant(
        self, message: str, *, status_code: int, tried: set[str], shared: str | None
    ) -> TokenSet:
        # The usual cause: another worker refreshed with the same token a moment ago and is about to save the
        # rotated pair (it may not have yet). Watch the store for a token we have not tried.
        polls = (
            max(1, math.ceil(self.invalid_grant_wait / self.poll_interval))
            if self.invalid_grant_wait > 0
            else 0
        )
        for attempt in range(polls + 1):
            stored = self._load()
            if self._adoptable(stored) and stored.refresh_token not in tried:
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
        initial = self._initial.refresh_token
        if initial and initial not in tried and initial not in self._revoked and not self._chain_moved:
            log.warning(
                "The Clio refresh token of %s was rejected; trying the one in the connection.", self.conn_id
            )
            return self._refresh_with(initial, tried=tried, shared=None)
        if shared is not None and shared in tried:
            # Clio rejected the token every worker reads from the store: the usual cause is another worker
            # that refreshed with it first and has not stored the rotated pair yet. Let the task retry.
            raise ClioTokenRaceError(
                f"Clio rejected the stored refresh token of connection {self.conn_id!r} (invalid_grant: "
                f"{message}) and no newer token appeared in the token store within "
                f"{self.invalid_grant_wait:g} s. Most likely another process refreshed with the same token "
                "and has not stored the new one yet; a retry will pick it up. If this keeps happening, the "
                "token was revoked: " + REAUTHORIZE_HINT.format(conn_id=self.conn_id),
                status_code=status_code,
                endpoint="oauth/token",
            )
        raise ClioAuthError(
            f"Clio rejected the refresh token of connection {self.conn_id!r} (invalid_grant: {message}) "
            "and no newer token appeared in the token store. "
            + REAUTHORIZE_HINT.format(conn_id=self.conn_id),
            status_code=status_code,
            endpoint="oauth/token",
        )

    def _persist(self, tokens: TokenSet) -> bool:
        """Use ``tokens`` from now on and try to store them; return whether the store has them."""
        self._tokens = tokens
        try:
            self.store.save(self.conn_id, tokens)
        except Exception as exc:
            # The old refresh token is already revoked, so failing here would lose the new one for good. Keep
            # it in memory, retry the save on the next call, and say loudly that a restart would strand it.
            # Only the exception type is logged: database errors quote the statement's parameters (tokens).
            self._unsaved = tokens
            log.error(
                "Could not store the rotated Clio tokens of %s (%s); will retry. If this process ends first, "
                "the connection must be authorized again.",
                self.conn_id,
                type(exc).__name__,
            )
            return False
        self._unsaved = None
        return True

    def _retry_unsaved(self) -> None:
        if self._unsaved is not None and self._unsaved is self._tokens:
            self._persist(self._unsaved)

    def _tokens_from(
        self, data: dict[str, Any], *, previous_refresh: str | None, issued_at: float
    ) -> TokenSet:
        access = data.get("access_token")
        refresh = data.get("refresh_token") or previous_refresh
        _mask(access if isinstance(access, str) else None, refresh if isinstance(refresh, str) else None)
        if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
            raise ClioAuthError(
                f"Clio's token response for connection {self.conn_id!r} lacks an access or refresh token.",
                endpoint="oauth/token",
            )
        expires_in = data.get("expires_in")
        expires_at = None
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
            self._lifetime = float(expires_in)
            expires_at = issued_at + float(expires_in)
        return TokenSet(access_token=access, refresh_token=refresh, expires_at=expires_at)

    @staticmethod
    def _parse(response: requests.Response) -> dict[str, Any] | None:
        """Return the JSON body of a successful token response, ``None`` for an error status."""
        if not 200 <= response.status_code < 300:
            return None
        try:
            data = response.json()
        except ValueError:
            raise ClioTransientError(
                "Clio's token endpoint answered a body that is not JSON.",
                status_code=response.status_code,
                endpoint="oauth/token",
            ) from None
        if not isinstance(data, dict):
            raise ClioTransientError(
                "Clio's token endpoint answered JSON that is not an object.",
                status_code=response.status_code,
                endpoint="oauth/token",
            )
        # Mask before anything can log the body.
        for key in ("access_token", "refresh_token", "id_token"):
            value = data.get(key)
            if isinstance(value, str):
                _mask(value)
        return data

    def _error(self, response: requests.Response, *, secrets: tuple[str, ...]) -> tuple[str | None, str]:
        return error_message(response.content, secrets=(*secrets, self._client_secret))

    def _invalid_client(self, status_code: int, message: str) -> ClioAuthError:
        return ClioAuthError(
            f"Clio rejected the client credentials of connection {self.conn_id!r} "
            f"(invalid_client: {message}). Check the connection's login (client id / App Key) and password "
            "(client secret), and that the application is registered in the connection's region.",
            status_code=status_code,
            endpoint="oauth/token",
        )

    def _unexpected(self, response: requests.Response, error: str | None, message: str) -> ClioError:
        status_code = response.status_code
        text = f"Clio's token endpoint answered {error or 'an error'}: {message}"
        retry_after: float | None = None
        with contextlib.suppress(TypeError, ValueError):
            retry_after = float(response.headers.get("Retry-After"))  # type: ignore[arg-type]
        if status_code == 429:
            return ClioRateLimitError(
                text, status_code=status_code, endpoint="oauth/token", retry_after=retry_after
            )
        if status_code >= 500 or status_code == 408:
            return ClioTransientError(
                text, status_code=status_code, endpoint="oauth/token", retry_after=retry_after
            )
        return ClioAuthError(
            f"{text}. " + REAUTHORIZE_HINT.format(conn_id=self.conn_id),
            status_code=status_code,
            endpoint="oauth/token",
        )
