# SPDX-License-Identifier: Apache-2.0
"""Read an API response: its JSON body, or the typed exception that tells the caller what to do.

Error bodies are parsed by the API's own parser (:attr:`ApiSpec.parse_error
<airflow_provider_clio.apis.ApiSpec.parse_error>`), then scrubbed of secrets and truncated before they reach
an exception; :func:`~airflow_provider_clio.exceptions.error_for_status` maps the status to the exception.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_clio.exceptions import (
    ClioAuthError,
    ClioTransientError,
    error_for_status,
    scrub,
    truncate,
)

if TYPE_CHECKING:
    import requests

ErrorParser = Callable[[bytes | str | None], tuple[str | None, str]]
"""An API's error-body parser: body -> ``(error_code, message)``."""


@dataclass
class Answer:
    """
    A response the caller can use.

    :param response: The raw response (headers such as ``ETag`` live there).
    :param body: The parsed JSON body; ``None`` for 304 Not Modified.
    """

    response: requests.Response
    body: Any


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for (delta-seconds or HTTP-date), else ``None``."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now())


def error_text(
    body: bytes | str | None, parse_error: ErrorParser, secrets: Iterable[str | None] = ()
) -> tuple[str | None, str]:
    """Parse an error body with the API's parser, then scrub secrets from the message and truncate it."""
    code, message = parse_error(body)
    return code, truncate(scrub(message, secrets))


def classify(
    response: requests.Response,
    *,
    label: str,
    parse_error: ErrorParser,
    secrets: Iterable[str | None] = (),
    allow_not_modified: bool = False,
) -> Answer:
    """
    Return the usable answer of ``response``, or raise the typed error its status calls for.

    :param label: The endpoint label that exceptions carry.
    :param parse_error: The API's error-body parser.
    :param secrets: Values to scrub from server messages.
    :param allow_not_modified: A 304 is an answer (conditional GET), not an error.
    """
    status = response.status_code
    if status == 304 and allow_not_modified:
        return Answer(response, None)
    if 200 <= status < 300:
        return Answer(response, _json_body(response, label))
    _, message = error_text(response.content, parse_error, secrets)
    if status == 401:
        raise ClioAuthError(
            f"Clio rejected the access token even after a refresh: {message or 'unauthorized'}. "
            "Check that the application is registered in the connection's region, or authorize it "
            "again.",
            status_code=status,
            endpoint=label,
        )
    if 300 <= status < 400:
        # Redirects are never followed: they could carry the bearer token to another host.
        message = f"unexpected redirect (HTTP {status}); set the connection host to the final API URL"
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    raise error_for_status(status, message, endpoint=label, retry_after=retry_after)


def _json_body(response: requests.Response, label: str) -> Any:
    # Every call the hook makes reads a JSON object. An empty or unparsable 2xx body (a proxy's hiccup, a
    # transfer cut short) is the same fault either way and worth another try; turning an empty body into {}
    # made a list page look malformed and failed the task for good.
    status = response.status_code
    if not response.content.strip():
        raise ClioTransientError(
            f"empty body where JSON was expected (HTTP {status})", status_code=status, endpoint=label
        )
    try:
        return response.json()
    except ValueError:
        raise ClioTransientError(
            f"unparsable JSON body ({len(response.content)} bytes)", status_code=status, endpoint=label
        ) from None


__all__ = ["Answer", "ErrorParser", "classify", "error_text", "parse_retry_after"]
