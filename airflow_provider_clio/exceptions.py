# SPDX-License-Identifier: Apache-2.0
"""Typed Clio errors, named by what the caller should do, and the parser that builds them from responses.

``ClioRetryableError`` subclasses are worth retrying later (Airflow's task-level retry takes over once the
hook's in-request budget is spent); ``ClioFatalError`` subclasses are ``AirflowFailException`` too, so
Airflow fails the task at once instead of retrying a request that can never succeed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

__all__ = [
    "MAX_MESSAGE_CHARS",
    "REDACTED",
    "ClioAttemptSupersededError",
    "ClioAuthError",
    "ClioBadRequestError",
    "ClioConfigError",
    "ClioError",
    "ClioFatalError",
    "ClioNotFoundError",
    "ClioPaginationError",
    "ClioPermissionError",
    "ClioRateLimitError",
    "ClioRetryableError",
    "ClioTokenRaceError",
    "ClioTransientError",
    "error_for_status",
    "error_message",
    "parse_error_body",
    "scrub",
    "truncate",
]

MAX_MESSAGE_CHARS = 500
"""Server messages are cut to this length before they reach an exception or a log line."""

REDACTED = "***"

# Secrets can also hide in places the hook never registered (an echoed form body, a proxy's error page), so
# these patterns scrub the usual carriers of credentials on top of the exact values the hook knows.
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
_KEY_VALUE = re.compile(
    r"(?i)([\"']?\b(?:access_token|refresh_token|client_secret|id_token|password)[\"']?\s*[:=]\s*[\"']?)"
    r"[^\"'&\s,;}]+"
)
# Registered secrets shorter than this are not replaced verbatim: they would shred ordinary words.
_MIN_SECRET_CHARS = 6


class ClioError(AirflowException):
    """
    Base class of every error the Clio provider raises.

    :param message: What went wrong, in the server's words when there are any (already scrubbed).
    :param status_code: The HTTP status of the response, ``None`` for transport and configuration errors.
    :param endpoint: The endpoint (relative path) the request went to, when there was one.
    """

    def __init__(self, message: str, *, status_code: int | None = None, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # AirflowException declares a class-level HTTPStatus; ours is the response's status, if any.
        self.status_code: int | None = status_code  # type: ignore[assignment]
        self.endpoint = endpoint

    def __str__(self) -> str:
        where = [f"HTTP {self.status_code}"] if self.status_code is not None else []
        if self.endpoint:
            where.append(self.endpoint)
        return f"{self.message} ({', '.join(where)})" if where else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the keyword attributes across pickling (executors and triggers pickle exceptions).
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[ClioError], message: str, state: dict[str, Any]) -> ClioError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(state)
    return exc


class ClioRetryableError(ClioError):
    """
    Raise when the request may succeed later; Airflow's task-level retry is the next layer.

    :param retry_after: Seconds the server asked to wait (``Retry-After``), ``None`` when it sent none. A
        429 or a 503 may carry it; whoever schedules the next attempt should wait at least that long.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        endpoint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, endpoint=endpoint)
        self.retry_after = retry_after


class ClioRateLimitError(ClioRetryableError):
    """Raise when Clio answered 429 Too Many Requests and the in-request retry budget is spent."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = 429,
        endpoint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, endpoint=endpoint, retry_after=retry_after)


class ClioTransientError(ClioRetryableError):
    """Raise for 5xx answers, connection errors, timeouts and truncated or unparsable bodies."""


class ClioTokenRaceError(ClioRetryableError):
    """
    Raise when Clio rejected a refresh token that other processes could use too, and no newer one appeared.

    Most likely another worker refreshed with the same token and has not stored the rotated pair yet; a
    later attempt finds it in the token store. If it keeps happening, the token was revoked: authorize again.
    """


class ClioFatalError(ClioError, AirflowFailException):
    """Raise when retrying cannot help: the task fails without using its retries."""


class ClioConfigError(ClioFatalError):
    """Raise when the connection or the arguments are invalid; the message names the field to fix."""


class ClioAuthError(ClioFatalError):
    """Raise when the application must be re-authorized (invalid grant or client, 401 after a refresh)."""


class ClioPermissionError(ClioFatalError):
    """Raise on 403: the application's scopes or the authorizing user's role do not allow the request."""


class ClioBadRequestError(ClioFatalError):
    """Raise on 400 and 422: a bad field, filter or parameter."""


class ClioNotFoundError(ClioFatalError):
    """Raise on 404: an unknown endpoint, or a record deleted since it was listed."""


class ClioPaginationError(ClioFatalError):
    """Raise when pagination loops or a ``next`` URL points away from the API host."""


class ClioAttemptSupersededError(ClioFatalError):
    """
    Raise when a newer try of the task instance owns its checkpoint: this attempt stops without committing.

    Nothing to fix: a timed-out or zombie attempt outlived the try Airflow started after it, and the newer
    try carries the extraction on. Do not clear the task because of it.
    """


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Replace every known secret and every credential-looking value in ``text`` with ``***``."""
    for secret in sorted((s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    return _KEY_VALUE.sub(rf"\g<1>{REDACTED}", text)


def truncate(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Cut ``text`` to ``limit`` characters, marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_error_body(body: bytes | str | None) -> tuple[str | None, str]:
    """
    Extract ``(error_code, message)`` from any of the error bodies Clio sends.

    Accepts the Platform shape ``{"error": {"status", "message"}}``, the Manage shape
    ``{"error": {"type", "message"}}``, the OAuth shape ``{"error", "error_description"}``, the bare
    ``{"message": ...}`` of a 429, and bodies that are not JSON at all (proxy pages, empty bodies).
    The message is neither scrubbed nor truncated here; :func:`error_message` does both.
    """
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    text = (body or "").strip()
    if not text:
        return None, ""
    try:
        data = json.loads(text)
    except ValueError:
        # HTML error pages: keep the words, drop the markup.
        return None, " ".join(re.sub(r"<[^>]+>", " ", text).split())
    if not isinstance(data, dict):
        return None, text
    error = data.get("error")
    if isinstance(error, dict):
        code = error.get("type") or error.get("code") or error.get("status")
        message = error.get("message") or error.get("detail")
        return (str(code) if code is not None else None), str(message) if message else json.dumps(error)
    if isinstance(error, str):
        description = data.get("error_description") or data.get("message")
        return error, str(description) if description else error
    if data.get("message"):
        return None, str(data["message"])
    return None, text


def error_message(body: bytes | str | None, secrets: Iterable[str | None] = ()) -> tuple[str | None, str]:
    """Parse an error body like :func:`parse_error_body`, then scrub and truncate the message."""
    code, message = parse_error_body(body)
    return code, truncate(scrub(message, secrets))


def error_for_status(
    status: int,
    message: str,
    *,
    endpoint: str | None = None,
    retry_after: float | None = None,
) -> ClioError:
    """Build the exception that tells the caller what to do about an HTTP error status."""
    text = message or f"HTTP {status} with an empty body"
    if status == 429:
        return ClioRateLimitError(text, status_code=status, endpoint=endpoint, retry_after=retry_after)
    if status >= 500 or status == 408:
        # A 503 for maintenance may say when to come back; retrying sooner only earns another 503.
        return ClioTransientError(text, status_code=status, endpoint=endpoint, retry_after=retry_after)
    if status == 401:
        return ClioAuthError(text, status_code=status, endpoint=endpoint)
    if status == 403:
        return ClioPermissionError(text, status_code=status, endpoint=endpoint)
    if status == 404:
        return ClioNotFoundError(text, status_code=status, endpoint=endpoint)
    if status in (400, 422):
        return ClioBadRequestError(text, status_code=status, endpoint=endpoint)
    # 405, 410 (retired API version), 412, unexpected redirects, ...: retrying the same request cannot help.
    return ClioFatalError(text, status_code=status, endpoint=endpoint)
