# SPDX-License-Identifier: Apache-2.0
"""Where a connection's OAuth tokens live between processes: :class:`TokenSet` and the token stores."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from airflow.sdk.log import mask_secret

from airflow_provider_clio.dates import parse_timestamp
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.storage import replace_local

log = logging.getLogger(__name__)

VARIABLE_KEY_PREFIX = "clio_oauth_tokens__"
"""Prefix of the Variable that holds a connection's tokens; the name contains "token", so the UI masks it."""


def mask(*values: str | None) -> None:
    """Register every non-empty value with Airflow's secrets masker."""
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
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)  # exact, even where a datetime could not hold it
    parsed = parse_timestamp(value) if isinstance(value, str) else None
    if parsed is None:
        shown = "" if isinstance(value, bool) else f", got {value!r}"
        raise ClioConfigError(
            f"Connection extra 'expires_at' must be epoch seconds or an ISO 8601 timestamp{shown}."
        )
    return parsed.timestamp()


@dataclass(frozen=True, repr=False)
class TokenSet:
    """
    Hold one OAuth token pair as issued by Clio; ``repr`` never shows the token values.

    :param access_token: The bearer token for API calls, ``None`` when only a refresh token is known.
    :param refresh_token: The refresh token (empty string when none is known yet).
    :param expires_at: When the access token expires, epoch seconds; ``None`` when unknown.
    """

    access_token: str | None
    refresh_token: str
    expires_at: float | None = None

    def __post_init__(self) -> None:
        # Whatever created this object (a token response, a store, a connection), its values are secrets now.
        mask(self.access_token, self.refresh_token)

    def __repr__(self) -> str:
        return (
            f"TokenSet(access_token={_masked(self.access_token)}, "
            f"refresh_token={_masked(self.refresh_token or None)}, expires_at={self.expires_at!r})"
        )

    __str__ = __repr__

    def values(self) -> list[str]:
        """Return the token values this set holds (for scrubbing), without empty ones."""
        return [value for value in (self.access_token, self.refresh_token) if value]

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

    Writes go through :func:`~airflow_provider_clio.storage.replace_local` (atomic and durable) under an
    ``fcntl`` lock, so readers never see a half-written file and concurrent writers never lose each other's
    connections. The store also offers an inter-process :meth:`refresh_lock` that the token manager holds
    around a refresh. The file is created with mode 0600.

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
            text = json.dumps(data, indent=2, sort_keys=True).encode()
            # The temporary file replace_local writes is created 0600 (mkstemp), so the tokens never sit in a
            # world-readable file; a crash right after a refresh cannot bring back the revoked token.
            replace_local(self.path, lambda handle: handle.write(text))

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


__all__ = [
    "VARIABLE_KEY_PREFIX",
    "FileTokenStore",
    "MemoryTokenStore",
    "SupportsRefreshLock",
    "TokenSet",
    "TokenStore",
    "VariableTokenStore",
    "mask",
    "parse_expires_at",
]
