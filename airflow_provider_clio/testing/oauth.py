# SPDX-License-Identifier: Apache-2.0
"""Emulate Clio's OAuth 2.0 server: applications, codes, expiring access tokens, rotating refresh tokens.

Refresh tokens are single-use like the Platform API's: each refresh returns a new one and revokes the old
one at once, so two workers refreshing with the same token see exactly one success and one ``invalid_grant``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from airflow_provider_clio.regions import REGIONS

__all__ = [
    "DEFAULT_SECRET",
    "REGIONS",
    "AccessGrant",
    "EmulatorApp",
    "OAuthError",
    "OAuthServer",
    "describe_apps",
    "scope_allows",
]

DEFAULT_SECRET = "emulator-secret"
_CODE_TTL = 600.0

_SINGULAR = {
    "contacts": "contact",
    "matters": "matter",
    "activities": "activity",
    "users": "user",
    "sources": "source",
}


def scope_allows(scopes: frozenset[str] | None, resource: str) -> bool:
    """Tell whether ``scopes`` grant reading ``resource``.

    A scope is either the resource name (``contacts``) or Clio's style (``grow_contact_read``);
    None grants everything.
    """
    if scopes is None:
        return True
    singular = _SINGULAR.get(resource, resource)
    return bool({resource, f"grow_{singular}_read", f"grow_{singular}_write"} & scopes)


@dataclass(frozen=True)
class EmulatorApp:
    """An OAuth application registered in one region.

    :param client_id: the app key.
    :param client_secret: the app secret.
    :param region: ``us``, ``ca``, ``eu`` or ``au``; every request with this app's tokens counts there.
    :param scopes: granted scopes, None for every resource (see :func:`scope_allows`).
    """

    client_id: str
    client_secret: str
    region: str
    scopes: frozenset[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping (includes the secret: the emulator's apps are test fixtures)."""
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "region": self.region,
            "scopes": sorted(self.scopes) if self.scopes is not None else None,
        }

    def connection(self, host: str, extra: dict[str, Any]) -> dict[str, Any]:
        """Return an Airflow connection dict that signs in as this app at ``host`` with ``extra``."""
        return {
            "conn_type": "clio",
            "host": host,
            "login": self.client_id,
            "password": self.client_secret,
            "extra": extra,
        }


@dataclass(frozen=True)
class AccessGrant:
    """What an access or refresh token stands for.

    :param client_id: owning application.
    :param scopes: granted scopes (None: all).
    :param expires_at: epoch seconds after which an access token answers 401 (None for refresh tokens).
    """

    client_id: str
    scopes: frozenset[str] | None
    expires_at: float | None = None


@dataclass(frozen=True)
class _Code:
    client_id: str
    redirect_uri: str
    scopes: frozenset[str] | None
    expires_at: float


class OAuthError(Exception):
    """An OAuth failure answered as ``{"error": code, "error_description": description}``.

    :param status: HTTP status.
    :param code: RFC 6749 error code.
    :param description: human-readable text.
    """

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.status = status
        self.code = code
        self.description = description

    def body(self) -> dict[str, str]:
        """Return the RFC 6749 error body."""
        return {"error": self.code, "error_description": self.description}


class OAuthServer:
    """Keep apps and tokens; issue, rotate, expire and check them. Thread-safe.

    :param access_token_ttl: lifetime of access tokens in seconds.
    :param clock: wall clock (epoch seconds) for expiry.
    """

    def __init__(self, access_token_ttl: float = 86400.0, clock: Callable[[], float] = time.time) -> None:
        self.access_token_ttl = access_token_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._apps: dict[str, EmulatorApp] = {}
        self._access: dict[str, AccessGrant] = {}
        self._refresh: dict[str, AccessGrant] = {}
        self._revoked_refresh: set[str] = set()
        self._codes: dict[str, _Code] = {}
        # Every token ever minted, with its app, so tests can look for leaks even after rotation.
        self._issued: dict[str, str] = {}

    # -- apps ----------------------------------------------------------------------------------

    def register_app(
        self, client_id: str, client_secret: str, region: str = "us", scopes: Iterable[str] | None = None
    ) -> EmulatorApp:
        """Register (or replace) an application; its existing tokens stay valid."""
        if region not in REGIONS:
            raise ValueError(f"unknown region {region!r}; known: {list(REGIONS)}")
        if not client_id or not client_secret:
            raise ValueError("client_id and client_secret must not be empty")
        app = EmulatorApp(client_id, client_secret, region, frozenset(scopes) if scopes is not None else None)
        with self._lock:
            self._apps[client_id] = app
        return app

    def app(self, client_id: str) -> EmulatorApp | None:
        """Return the registered app, or None."""
        with self._lock:
            return self._apps.get(client_id)

    def apps(self) -> list[EmulatorApp]:
        """Return every registered app."""
        with self._lock:
            return list(self._apps.values())

    def _require_app(self, client_id: str) -> EmulatorApp:
        app = self._apps.get(client_id)
        if app is None:
            raise KeyError(f"unknown client_id {client_id!r}")
        return app

    # -- issuing -------------------------------------------------------------------------------

    def issue_refresh_token(self, client_id: str, scopes: frozenset[str] | None = None) -> str:
        """Mint a valid refresh token (scopes default to the app's)."""
        with self._lock:
            app = self._require_app(client_id)
            token = "emu-rt-" + secrets.token_urlsafe(24)
            self._refresh[token] = AccessGrant(client_id, scopes if scopes is not None else app.scopes)
            self._issued[token] = client_id
            return token

    def issue_access_token(
        self, client_id: str, ttl: float | None = None, scopes: frozenset[str] | None = None
    ) -> tuple[str, float]:
        """Mint an access token; return ``(token, expires_at epoch seconds)``."""
        with self._lock:
            app = self._require_app(client_id)
            return self._mint_access(client_id, scopes if scopes is not None else app.scopes, ttl)

    def _mint_access(
        self, client_id: str, scopes: frozenset[str] | None, ttl: float | None
    ) -> tuple[str, float]:
        expires_at = self._clock() + (self.access_token_ttl if ttl is None else ttl)
        token = "emu-at-" + secrets.token_urlsafe(24)
        self._access[token] = AccessGrant(client_id, scopes, expires_at)
        self._issued[token] = client_id
        return token, expires_at

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far answer 401 (expired)."""
        now = self._clock()
        with self._lock:
            for token, grant in self._access.items():
                self._access[token] = AccessGrant(
                    grant.client_id, grant.scopes, min(grant.expires_at or now, now)
                )

    # -- endpoints -----------------------------------------------------------------------------

    def authorize(self, client_id: str, redirect_uri: str, scope: str | None = None) -> str:
        """Grant an authorization code for ``client_id`` (the emulated user always consents)."""
        with self._lock:
            app = self._apps.get(client_id)
            if app is None:
                raise OAuthError(400, "invalid_client", "unknown client_id")
            if not redirect_uri:
                raise OAuthError(400, "invalid_request", "redirect_uri is required")
            scopes = app.scopes
            if scope:
                requested = frozenset(scope.split())
                if app.scopes is not None and not requested <= app.scopes:
                    raise OAuthError(400, "invalid_scope", "requested scopes exceed the application's")
                scopes = requested
            code = "emu-code-" + secrets.token_urlsafe(16)
            self._codes[code] = _Code(client_id, redirect_uri, scopes, self._clock() + _CODE_TTL)
            return code

    def authorize_redirect(self, params: Mapping[str, str]) -> str:
        """Answer ``GET /oauth/authorize``: return where to redirect the browser (RFC 6749 §4.1.2).

        The emulated user always consents, so the redirect carries a fresh ``code`` and the request's
        ``state`` at once; a plain HTTP GET that follows it completes the flow (no browser needed). A request
        that cannot get a code (another ``response_type``, scopes beyond the application's) redirects with
        ``error``, ``error_description`` and ``state`` instead. An unknown client or a missing
        ``redirect_uri`` raises :class:`OAuthError`: there is no URI to trust with an answer.
        """
        client_id, redirect_uri = params.get("client_id", ""), params.get("redirect_uri", "")
        if self.app(client_id) is None:
            raise OAuthError(400, "invalid_client", "unknown client_id")
        if not redirect_uri:
            raise OAuthError(400, "invalid_request", "redirect_uri is required")
        answer: dict[str, str]
        if params.get("response_type", "code") != "code":
            answer = {"error": "unsupported_response_type", "error_description": "only 'code' is supported"}
        else:
            try:
                answer = {"code": self.authorize(client_id, redirect_uri, params.get("scope"))}
            except OAuthError as exc:
                answer = exc.body()
        if "state" in params:
            answer["state"] = params["state"]
        return redirect_uri + ("&" if urlsplit(redirect_uri).query else "?") + urlencode(answer)

    def token(self, form: dict[str, str]) -> dict[str, Any]:
        """Answer a token request (form already parsed); raise :class:`OAuthError` on failure."""
        grant_type = form.get("grant_type", "")
        client_id = form.get("client_id", "")
        with self._lock:
            app = self._apps.get(client_id)
            if app is None or not secrets.compare_digest(app.client_secret, form.get("client_secret", "")):
                raise OAuthError(401, "invalid_client", "Client authentication failed")
            if grant_type == "refresh_token":
                grant = self._redeem_refresh(client_id, form.get("refresh_token", ""))
            elif grant_type == "authorization_code":
                grant = self._redeem_code(client_id, form.get("code", ""), form.get("redirect_uri", ""))
            else:
                raise OAuthError(400, "unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
            access, expires_at = self._mint_access(client_id, grant.scopes, None)
            refresh = "emu-rt-" + secrets.token_urlsafe(24)
            self._refresh[refresh] = AccessGrant(client_id, grant.scopes)
            self._issued[refresh] = client_id
            return {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": round(expires_at - self._clock()),
                "refresh_token": refresh,
            }

    def _redeem_refresh(self, client_id: str, token: str) -> AccessGrant:
        if not token:
            raise OAuthError(400, "invalid_request", "refresh_token is required")
        grant = self._refresh.get(token)
        if grant is None or grant.client_id != client_id:
            reason = (
                "was already used (refresh tokens rotate)" if token in self._revoked_refresh else "is unknown"
            )
            raise OAuthError(
                400,
                "invalid_grant",
                f"The provided authorization grant is invalid, expired or revoked: token {reason}",
            )
        # Rotation: the old token dies now, before the new pair leaves the server.
        del self._refresh[token]
        self._revoked_refresh.add(token)
        return grant

    def _redeem_code(self, client_id: str, code: str, redirect_uri: str) -> AccessGrant:
        stored = self._codes.pop(code, None)
        if stored is None or stored.client_id != client_id or stored.expires_at < self._clock():
            raise OAuthError(
                400, "invalid_grant", "The authorization code is invalid, expired or already used"
            )
        if stored.redirect_uri != redirect_uri:
            raise OAuthError(400, "invalid_grant", "redirect_uri does not match the authorization request")
        return AccessGrant(client_id, stored.scopes)

    def issued_tokens(self, client_id: str | None = None) -> set[str]:
        """Return every access and refresh token ever issued (to ``client_id``), revoked ones included."""
        with self._lock:
            return {t for t, owner in self._issued.items() if client_id is None or owner == client_id}

    def revoke(self, token: str) -> None:
        """Revoke an access or refresh token (unknown tokens are ignored, as RFC 7009 says)."""
        with self._lock:
            self._access.pop(token, None)
            if self._refresh.pop(token, None) is not None:
                self._revoked_refresh.add(token)

    def check_access(self, token: str) -> tuple[AccessGrant | None, str]:
        """Return ``(grant, "")`` for a valid token, else ``(None, reason)``."""
        with self._lock:
            grant = self._access.get(token)
        if grant is None:
            return None, "The access token is invalid"
        if grant.expires_at is not None and self._clock() >= grant.expires_at:
            return None, "The access token expired"
        return grant, ""


def describe_apps(
    apps: Iterable[EmulatorApp], issue_refresh_token: Callable[[str], str]
) -> dict[str, dict[str, str]]:
    """Return ``{client_id: {"client_secret", "region", "refresh_token"}}``, minting a refresh token each.

    :param apps: the apps to describe.
    :param issue_refresh_token: the OAuth server's minting function for the apps' API.
    """
    return {
        app.client_id: {
            "client_secret": app.client_secret,
            "region": app.region,
            "refresh_token": issue_refresh_token(app.client_id),
        }
        for app in apps
    }
