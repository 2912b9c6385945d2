# SPDX-License-Identifier: Apache-2.0
"""Emulate Manage's OAuth rules: month-long access tokens and refresh tokens that never rotate.

Manage applications are separate from Platform ones (their own registry and tokens), as on Clio's two
developer portals. A refresh answers a new access token, and by default **omits** ``refresh_token``
(Clio may): the refresh token used stays valid and can be used again, from any number of workers.
"""

from __future__ import annotations

import secrets
from typing import Any

from airflow_provider_clio.testing.oauth import AccessGrant, OAuthError, OAuthServer

__all__ = ["INVALID_TOKEN", "ManageOAuthServer"]

INVALID_TOKEN = {
    "error": "invalid_token",
    "error_description": (
        "The access token provided is expired, revoked, malformed or invalid for other reasons."
    ),
}
"""Manage's 401 body for a missing, expired, revoked or malformed access token (Doorkeeper's wording)."""


class ManageOAuthServer(OAuthServer):
    """The Platform OAuth server with Manage's refresh rules. Thread-safe.

    :param access_token_ttl: ``expires_in`` of access tokens (Clio: 30 days).
    :param refresh_returns_token: repeat the unchanged refresh token in refresh responses.
    """

    def __init__(self, access_token_ttl: float = 2_592_000.0, refresh_returns_token: bool = False) -> None:
        super().__init__(access_token_ttl=access_token_ttl)
        self.refresh_returns_token = refresh_returns_token

    def token(self, form: dict[str, str]) -> dict[str, Any]:
        """Answer a token request; a refresh never rotates the refresh token."""
        if form.get("grant_type") != "refresh_token":
            return {**super().token(form), "token_type": "bearer"}
        with self._lock:
            client_id = form.get("client_id", "")
            app = self._apps.get(client_id)
            if app is None or not secrets.compare_digest(app.client_secret, form.get("client_secret", "")):
                raise OAuthError(401, "invalid_client", "Client authentication failed")
            refresh = form.get("refresh_token", "")
            grant = self._refresh.get(refresh) if refresh else None
            if grant is None or grant.client_id != client_id:
                raise OAuthError(
                    400,
                    "invalid_grant",
                    "The provided authorization grant is invalid, expired, revoked, does not match the "
                    "redirection URI used in the authorization request, or was issued to another client.",
                )
            access, expires_at = self._mint_access(client_id, grant.scopes, None)
        body: dict[str, Any] = {
            "token_type": "bearer",
            "access_token": access,
            "expires_in": round(expires_at - self._clock()),
        }
        if self.refresh_returns_token:
            body["refresh_token"] = refresh
        return body

    def grant_of(self, token: str) -> AccessGrant | None:
        """Return the grant of a valid, unexpired access token, else None."""
        grant, _ = self.check_access(token)
        return grant
