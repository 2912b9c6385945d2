# SPDX-License-Identifier: Apache-2.0
"""The OAuth 2.0 token endpoint protocol: the forms Clio expects and how to read what it answers.

:class:`OAuthClient` knows the grants (refresh token, authorization code, and a made-up refresh token to
check the client credentials without spending a real one), the token response, and the OAuth error body
``{"error", "error_description"}``. It holds no tokens: keeping, persisting and racing for them is the
token manager's job (:mod:`airflow_provider_clio.auth.tokens`).
"""

from __future__ import annotations

import secrets as secrets_module
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_clio.auth.stores import TokenSet, mask
from airflow_provider_clio.exceptions import (
    ClioAuthError,
    ClioError,
    ClioFatalError,
    ClioRateLimitError,
    ClioTransientError,
    error_for_status,
    parse_error_body,
    scrub,
    truncate,
)
from airflow_provider_clio.responses import parse_retry_after

if TYPE_CHECKING:
    import requests

ENDPOINT = "oauth/token"
"""The endpoint label the token endpoint's errors carry."""

REAUTHORIZE_HINT = (
    "A person must authorize the application again: run `airflow clio auth --conn-id {conn_id}`."
)

PostCallable = Callable[[str, dict[str, str]], "requests.Response"]
"""Send a form-encoded POST to the token endpoint and return the response (the hook's single send path)."""

ErrorParser = Callable[[bytes | str | None], tuple[str | None, str]]
"""Read ``(error_code, message)`` from an error body (an API description's ``parse_error``)."""


@dataclass(frozen=True)
class Grant:
    """
    One successful token response.

    :param tokens: The new pair; its refresh token is the presented one when the response carried none.
    :param lifetime: The access token's lifetime in seconds (``expires_in``), ``None`` when not given.
    """

    tokens: TokenSet
    lifetime: float | None


class InvalidGrant(Exception):
    """
    The token endpoint refused the presented grant (``invalid_grant``): the token or code is dead.

    Not a :class:`ClioError`: the token manager decides what it means (a lost race, or re-authorize).

    :param message: The endpoint's description, scrubbed and truncated.
    :param status_code: The HTTP status of the answer.
    """

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class OAuthClient:
    """
    Talk to one connection's OAuth token endpoint.

    :param conn_id: The Airflow connection id (named in error messages).
    :param client_id: OAuth client id (the connection's login).
    :param client_secret: OAuth client secret (the connection's password).
    :param token_url: The token endpoint, e.g. ``https://auth.api.clio.com/oauth/token``.
    :param post: ``post(url, form) -> requests.Response``: the hook's send path for the token endpoint.
    :param parse_error: Reads ``(error_code, message)`` from an error body.
    :param clock: Epoch-seconds clock, read just before each request to date the access token's expiry.
    :param known_secrets: Returns every token value to scrub from error messages besides the presented one.
    """

    def __init__(
        self,
        *,
        conn_id: str,
        client_id: str,
        client_secret: str,
        token_url: str,
        post: PostCallable,
        parse_error: ErrorParser = parse_error_body,
        clock: Callable[[], float] = time.time,
        known_secrets: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        mask(client_secret)
        self.conn_id = conn_id
        self.client_id = client_id
        self._client_secret = client_secret
        self.token_url = token_url
        self._post = post
        self._parse_error = parse_error
        self._clock = clock
        self._known_secrets = known_secrets

    def __repr__(self) -> str:
        return f"OAuthClient(conn_id={self.conn_id!r}, client_id={self.client_id!r}, url={self.token_url!r})"

    def refresh(self, refresh_token: str) -> Grant:
        """Redeem ``refresh_token``; raise :class:`InvalidGrant` when Clio refuses it."""
        return self._redeem(self._form("refresh_token", refresh_token=refresh_token), refresh_token)

    def exchange_code(self, code: str, redirect_uri: str) -> Grant:
        """Exchange an authorization code for a first pair; raise :class:`ClioAuthError` when refused."""
        mask(code)
        form = self._form("authorization_code", code=code, redirect_uri=redirect_uri)
        try:
            return self._redeem(form, code)
        except InvalidGrant as refused:
            raise ClioAuthError(
                f"Clio rejected the authorization code for connection {self.conn_id!r} "
                f"(invalid_grant: {refused.message}). Codes are single-use and short-lived, and "
                "redirect_uri must match the authorize request exactly: authorize again and paste the "
                "new code.",
                status_code=refused.status_code,
                endpoint=ENDPOINT,
            ) from None

    def verify_client_credentials(self) -> None:
        """
        Raise unless the token endpoint accepts the client id and secret; spends no token.

        Presents a refresh token made up on the spot: Clio authenticates the client first, so
        ``invalid_grant`` means the id and secret were accepted and ``invalid_client`` that they were not. The
        token was never issued, so presenting it cannot look like the reuse of a rotated-away token.
        """
        bogus = f"airflow-provider-clio-test-{secrets_module.token_urlsafe(16)}"
        response = self._post(self.token_url, self._form("refresh_token", refresh_token=bogus))
        status = response.status_code
        error, message = self._error(response, presented=bogus)
        if error == "invalid_grant" and 400 <= status < 500:
            return  # the client authenticated; only the (made-up) grant was refused
        if error == "invalid_client":
            raise self._invalid_client(status, message)
        if 200 <= status < 300:
            raise ClioFatalError(
                "the token endpoint accepted a made-up refresh token: is the connection's host really Clio?",
                status_code=status,
                endpoint=ENDPOINT,
            )
        raise error_for_status(
            status,
            f"Clio's token endpoint answered {error or 'an error'}: {message}",
            endpoint=ENDPOINT,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )

    # -- internals ------------------------------------------------------------------------------------

    def _form(self, grant_type: str, **fields: str) -> dict[str, str]:
        return {
            "grant_type": grant_type,
            **fields,
            "client_id": self.client_id,
            "client_secret": self._client_secret,
        }

    def _redeem(self, form: dict[str, str], presented: str) -> Grant:
        issued_at = self._clock()
        response = self._post(self.token_url, form)
        data = _token_response(response)
        if data is not None:
            previous = presented if form["grant_type"] == "refresh_token" else None
            return self._grant(data, previous_refresh=previous, issued_at=issued_at)
        error, message = self._error(response, presented=presented)
        if error == "invalid_grant":
            raise InvalidGrant(message, response.status_code)
        if error == "invalid_client":
            raise self._invalid_client(response.status_code, message)
        raise self._unexpected(response, error, message)

    def _grant(self, data: dict[str, Any], *, previous_refresh: str | None, issued_at: float) -> Grant:
        access = data.get("access_token")
        # A non-rotating refresh token (or an endpoint that omits it) stays the one presented.
        refresh = data.get("refresh_token") or previous_refresh
        if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
            raise ClioAuthError(
                f"Clio's token response for connection {self.conn_id!r} lacks an access or refresh token.",
                endpoint=ENDPOINT,
            )
        expires_in = data.get("expires_in")
        lifetime = None
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
            lifetime = float(expires_in)
        expires_at = issued_at + lifetime if lifetime is not None else None
        return Grant(TokenSet(access_token=access, refresh_token=refresh, expires_at=expires_at), lifetime)

    def _error(self, response: requests.Response, *, presented: str) -> tuple[str | None, str]:
        code, message = self._parse_error(response.content)
        secrets = [presented, self._client_secret, *self._known_secrets()]
        return code, truncate(scrub(message, secrets))

    def _invalid_client(self, status_code: int, message: str) -> ClioAuthError:
        return ClioAuthError(
            f"Clio rejected the client credentials of connection {self.conn_id!r} "
            f"(invalid_client: {message}). Check the connection's login (client id / App Key) and password "
            "(client secret), and that the application is registered in the connection's region.",
            status_code=status_code,
            endpoint=ENDPOINT,
        )

    def _unexpected(self, response: requests.Response, error: str | None, message: str) -> ClioError:
        status_code = response.status_code
        text = f"Clio's token endpoint answered {error or 'an error'}: {message}"
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status_code == 429:
            return ClioRateLimitError(
                text, status_code=status_code, endpoint=ENDPOINT, retry_after=retry_after
            )
        if status_code >= 500 or status_code == 408:
            return ClioTransientError(
                text, status_code=status_code, endpoint=ENDPOINT, retry_after=retry_after
            )
        return ClioAuthError(
            f"{text}. " + REAUTHORIZE_HINT.format(conn_id=self.conn_id),
            status_code=status_code,
            endpoint=ENDPOINT,
        )


def _token_response(response: requests.Response) -> dict[str, Any] | None:
    """Return the JSON body of a successful token response, ``None`` for an error status."""
    if not 200 <= response.status_code < 300:
        return None
    try:
        data = response.json()
    except ValueError:
        raise ClioTransientError(
            "Clio's token endpoint answered a body that is not JSON.",
            status_code=response.status_code,
            endpoint=ENDPOINT,
        ) from None
    if not isinstance(data, dict):
        raise ClioTransientError(
            "Clio's token endpoint answered JSON that is not an object.",
            status_code=response.status_code,
            endpoint=ENDPOINT,
        )
    # Mask before anything can log the body.
    for key in ("access_token", "refresh_token", "id_token"):
        value = data.get(key)
        if isinstance(value, str):
            mask(value)
    return data


__all__ = [
    "ENDPOINT",
    "REAUTHORIZE_HINT",
    "ErrorParser",
    "Grant",
    "InvalidGrant",
    "OAuthClient",
    "PostCallable",
]
