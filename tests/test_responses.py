# SPDX-License-Identifier: Apache-2.0
"""Tests for response classification: bodies, typed errors, error-body parsers and Retry-After."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
import requests

from airflow_provider_clio.exceptions import (
    MAX_MESSAGE_CHARS,
    ClioAuthError,
    ClioBadRequestError,
    ClioFatalError,
    ClioNotFoundError,
    ClioRateLimitError,
    ClioTransientError,
    parse_error_body,
)
from airflow_provider_clio.responses import Answer, classify, error_text, parse_retry_after


def response(status: int, body: bytes | str | Any = b"", **headers: str) -> requests.Response:
    """A real ``requests.Response`` as the session returns it."""
    answer = requests.Response()
    answer.status_code = status
    if not isinstance(body, bytes | str):
        body = json.dumps(body)
    answer._content = body.encode() if isinstance(body, str) else body
    answer.headers.update(headers)
    answer.url = "https://api.clio.com/grow/contacts"
    return answer


def classified(answer: requests.Response, **kwargs: Any) -> Answer:
    return classify(answer, label="grow/contacts", parse_error=parse_error_body, **kwargs)


def test_a_json_2xx_is_the_answer() -> None:
    answer = classified(response(200, {"data": [{"id": 1}]}))
    assert answer.body == {"data": [{"id": 1}]}
    assert answer.response.status_code == 200


@pytest.mark.parametrize(
    ("body", "match"), [(b"", "empty body"), (b"  \n", "empty body"), (b"<html>", "unparsable")]
)
def test_an_empty_or_unparsable_2xx_is_transient(body: bytes, match: str) -> None:
    with pytest.raises(ClioTransientError, match=match) as info:
        classified(response(200, body))
    assert (info.value.status_code, info.value.endpoint) == (200, "grow/contacts")


def test_304_is_an_answer_only_for_a_conditional_get() -> None:
    assert classified(response(304), allow_not_modified=True).body is None
    with pytest.raises(ClioFatalError, match="unexpected redirect"):
        classified(response(304))


def test_401_here_means_rejected_even_after_a_refresh() -> None:
    with pytest.raises(ClioAuthError, match="even after a refresh: token expired") as info:
        classified(response(401, {"error": {"status": "401", "message": "token expired"}}))
    assert info.value.status_code == 401


def test_redirects_are_errors_not_followed() -> None:
    with pytest.raises(ClioFatalError, match="unexpected redirect") as info:
        classified(response(302, b"", Location="https://evil.example/steal"))
    assert info.value.status_code == 302


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (400, {"error": {"status": "400", "message": "bad field"}}, ClioBadRequestError, "bad field"),
        (404, {"error": {"type": "RecordNotFound", "message": "Matter not found"}}, ClioNotFoundError, None),
        (502, "<html><body><h1>502 Bad Gateway</h1></body></html>", ClioTransientError, "502 Bad Gateway"),
        (429, {"message": "Rate limit exceeded"}, ClioRateLimitError, "Rate limit exceeded"),
    ],
)
def test_error_statuses_become_typed_errors(status: int, body: Any, error: type, message: str | None) -> None:
    with pytest.raises(error) as info:
        classified(response(status, body))
    assert info.value.message == (message or "Matter not found")
    assert info.value.status_code == status


def test_retry_after_reaches_the_error() -> None:
    with pytest.raises(ClioRateLimitError) as info:
        classified(response(429, {"message": "slow down"}, **{"Retry-After": "7"}))
    assert info.value.retry_after == 7.0
    with pytest.raises(ClioTransientError) as transient:
        classified(response(503, b"", **{"Retry-After": "30"}))
    assert transient.value.retry_after == 30.0
    assert transient.value.message == "HTTP 503 with an empty body"


def test_the_api_parser_reads_the_error_body() -> None:
    def parse(body: bytes | str | None) -> tuple[str | None, str]:
        data = json.loads(body or b"{}")
        return data["fault"]["code"], data["fault"]["text"]

    answer = response(422, {"fault": {"code": "E_FIELD", "text": "no such field: bogus"}})
    with pytest.raises(ClioBadRequestError) as info:
        classify(answer, label="x", parse_error=parse)
    assert info.value.message == "no such field: bogus"


def test_error_messages_are_scrubbed_and_truncated() -> None:
    body = {"error": {"message": "echo secret-token-value access_token=abcdef123 " + "x" * 1000}}
    with pytest.raises(ClioBadRequestError) as info:
        classified(response(400, body), secrets=["secret-token-value"])
    assert "secret-token-value" not in info.value.message
    assert "abcdef123" not in info.value.message
    assert len(info.value.message) == MAX_MESSAGE_CHARS
    assert error_text(b"", parse_error_body) == (None, "")


def test_parse_retry_after_seconds_and_dates() -> None:
    now = datetime(2026, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    clock = now.timestamp
    assert parse_retry_after("3", now=clock) == 3.0
    assert parse_retry_after(" 1.5 ", now=clock) == 1.5
    assert parse_retry_after("-4", now=clock) == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=clock) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=clock) == 0.0
    for value in (None, "", "soon", "inf", "nan"):
        assert parse_retry_after(value, now=clock) is None
