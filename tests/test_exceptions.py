# SPDX-License-Identifier: Apache-2.0
"""Tests for the Clio exception tree, the error-body parser and secret scrubbing."""

from __future__ import annotations

import pickle

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_clio.exceptions import (
    MAX_MESSAGE_CHARS,
    ClioAuthError,
    ClioBadRequestError,
    ClioConfigError,
    ClioError,
    ClioFatalError,
    ClioNotFoundError,
    ClioPaginationError,
    ClioPermissionError,
    ClioRateLimitError,
    ClioRetryableError,
    ClioTokenRaceError,
    ClioTransientError,
    error_for_status,
    error_message,
    parse_error_body,
    scrub,
    truncate,
)


@pytest.mark.parametrize(
    ("cls", "retryable"),
    [
        (ClioRateLimitError, True),
        (ClioTransientError, True),
        (ClioTokenRaceError, True),
        (ClioConfigError, False),
        (ClioAuthError, False),
        (ClioPermissionError, False),
        (ClioBadRequestError, False),
        (ClioNotFoundError, False),
        (ClioPaginationError, False),
    ],
)
def test_hierarchy_says_what_to_do(cls: type[ClioError], retryable: bool) -> None:
    assert issubclass(cls, ClioError)
    assert issubclass(cls, AirflowException)
    assert issubclass(cls, ClioRetryableError) is retryable
    # Airflow fails AirflowFailException at once, without spending the task's retries.
    assert issubclass(cls, AirflowFailException) is (not retryable)
    assert issubclass(cls, ClioFatalError) is (not retryable)


def test_attributes_and_str() -> None:
    exc = ClioBadRequestError("unknown field 'x'", status_code=400, endpoint="grow/contacts")
    assert exc.message == "unknown field 'x'"
    assert exc.status_code == 400
    assert exc.endpoint == "grow/contacts"
    assert str(exc) == "unknown field 'x' (HTTP 400, grow/contacts)"
    assert str(ClioConfigError("login is empty")) == "login is empty"


def test_rate_limit_error_carries_retry_after_and_survives_pickling() -> None:
    exc = ClioRateLimitError("Too Many Requests", endpoint="grow/contacts", retry_after=7.0)
    assert exc.status_code == 429
    clone = pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes
    assert type(clone) is ClioRateLimitError
    assert (clone.message, clone.status_code, clone.endpoint, clone.retry_after) == (
        "Too Many Requests",
        429,
        "grow/contacts",
        7.0,
    )
    assert str(clone) == str(exc)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            b'{"error": {"status": "400", "message": "fields: unknown field"}}',
            ("400", "fields: unknown field"),
            id="platform",
        ),
        pytest.param(
            '{"error": {"type": "ArgumentError", "message": "Matter not found"}}',
            ("ArgumentError", "Matter not found"),
            id="manage",
        ),
        pytest.param(
            '{"error": "invalid_grant", "error_description": "The grant is invalid"}',
            ("invalid_grant", "The grant is invalid"),
            id="oauth",
        ),
        pytest.param('{"error": "invalid_client"}', ("invalid_client", "invalid_client"), id="oauth-bare"),
        pytest.param('{"message": "Too Many Requests"}', (None, "Too Many Requests"), id="message"),
        pytest.param(
            "<html><body><h1>502 Bad Gateway</h1>\n<p>nginx</p></body></html>",
            (None, "502 Bad Gateway nginx"),
            id="html",
        ),
        pytest.param("upstream timed out", (None, "upstream timed out"), id="text"),
        pytest.param(b"", (None, ""), id="empty"),
        pytest.param(None, (None, ""), id="none"),
        pytest.param("[1, 2]", (None, "[1, 2]"), id="json-list"),
        pytest.param(b"\xff\xfe broken", (None, "\ufffd\ufffd broken"), id="bad-utf8"),
    ],
)
def test_parse_error_body_accepts_every_shape(
    body: bytes | str | None, expected: tuple[str | None, str]
) -> None:
    assert parse_error_body(body) == expected


def test_scrub_removes_known_secrets_and_credential_patterns() -> None:
    text = (
        "Authorization: Bearer abc.DEF-123_x= failed; "
        '{"access_token": "tok-1", "refresh_token":"tok-2"} client_secret=hunter22&grant_type=x '
        "and the value my-client-secret-value leaked"
    )
    cleaned = scrub(text, ["my-client-secret-value", None, ""])
    for secret in ("abc.DEF-123_x=", "tok-1", "tok-2", "hunter22", "my-client-secret-value"):
        assert secret not in cleaned
    assert "Bearer ***" in cleaned
    assert "grant_type=x" in cleaned


def test_scrub_ignores_too_short_secrets() -> None:
    # Replacing "us" everywhere would shred the message without protecting anything.
    assert scrub("status us", ["us"]) == "status us"


def test_truncate() -> None:
    assert truncate("abc", 10) == "abc"
    long = "x" * (MAX_MESSAGE_CHARS + 50)
    assert len(truncate(long)) == MAX_MESSAGE_CHARS
    assert truncate(long).endswith("…")


def test_error_message_scrubs_before_truncating() -> None:
    secret = "s" * 40
    body = '{"error": "invalid_grant", "error_description": "' + "x" * 480 + secret + '"}'
    code, message = error_message(body, [secret])
    assert code == "invalid_grant"
    assert "sssss" not in message
    assert len(message) <= MAX_MESSAGE_CHARS


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ClioBadRequestError),
        (401, ClioAuthError),
        (403, ClioPermissionError),
        (404, ClioNotFoundError),
        (408, ClioTransientError),
        (410, ClioFatalError),
        (422, ClioBadRequestError),
        (429, ClioRateLimitError),
        (500, ClioTransientError),
        (502, ClioTransientError),
        (503, ClioTransientError),
        (504, ClioTransientError),
    ],
)
def test_error_for_status(status: int, cls: type[ClioError]) -> None:
    exc = error_for_status(status, "boom", endpoint="grow/contacts", retry_after=2.0)
    assert type(exc) is cls
    assert exc.status_code == status
    assert exc.endpoint == "grow/contacts"
    assert exc.message == "boom"
    if issubclass(cls, ClioRetryableError):
        # A 503 for maintenance may say when to come back, exactly like a 429.
        assert isinstance(exc, ClioRetryableError)
        assert exc.retry_after == 2.0


def test_every_retryable_error_carries_retry_after_and_survives_pickling() -> None:
    assert ClioTransientError("timed out").retry_after is None
    assert ClioRetryableError("later").retry_after is None
    exc = ClioTransientError("maintenance", status_code=503, endpoint="grow/contacts", retry_after=120.0)
    clone = pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes
    assert type(clone) is ClioTransientError
    assert (clone.status_code, clone.retry_after) == (503, 120.0)


def test_error_for_status_names_an_empty_body() -> None:
    assert error_for_status(503, "").message == "HTTP 503 with an empty body"
