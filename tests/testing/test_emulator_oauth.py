# SPDX-License-Identifier: Apache-2.0
"""The emulator's OAuth server: rotating refresh tokens, code exchange, expiry, client errors, scopes."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_clio.testing import ClioEmulator, EmulatorApp

US = "clio-emulator-us"
SECRET = "emulator-secret"


@pytest.fixture
def http() -> requests.Session:
    """A session without any bearer token."""
    return requests.Session()


def refresh(
    http: requests.Session, emu: ClioEmulator, token: str, client_id: str = US, secret: str = SECRET
) -> requests.Response:
    return http.post(
        f"{emu.url}/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": token,
            "client_id": client_id,
            "client_secret": secret,
        },
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestRefresh:
    def test_refresh_rotates_and_revokes_the_old_token(
        self, emu: ClioEmulator, http: requests.Session
    ) -> None:
        old = emu.issue_refresh_token(US)
        first = refresh(http, emu, old)
        assert first.status_code == 200
        body = first.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
        assert (body["token_type"], body["expires_in"]) == ("Bearer", 86400)
        assert body["refresh_token"] != old
        assert http.get(f"{emu.url}/grow/contacts", headers=bearer(body["access_token"])).status_code == 200

        reused = refresh(http, emu, old)
        assert reused.status_code == 400
        assert reused.json()["error"] == "invalid_grant"
        assert "already used" in reused.json()["error_description"]
        # The new one works exactly once too.
        assert refresh(http, emu, body["refresh_token"]).status_code == 200
        assert refresh(http, emu, body["refresh_token"]).status_code == 400
        # Every token ever issued stays listed, for leak checks.
        assert {old, body["refresh_token"], body["access_token"]} <= emu.issued_tokens(US)
        assert old not in emu.issued_tokens("clio-emulator-eu")

    def test_concurrent_refreshes_with_one_token_have_one_winner(self, emu: ClioEmulator) -> None:
        token = emu.issue_refresh_token(US)
        statuses: list[int] = []
        barrier = threading.Barrier(8)

        def worker() -> None:
            with requests.Session() as session:
                barrier.wait()
                statuses.append(refresh(session, emu, token).status_code)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(statuses) == [200] + [400] * 7

    def test_unknown_refresh_token_is_invalid_grant(self, emu: ClioEmulator, http: requests.Session) -> None:
        response = refresh(http, emu, "emu-rt-never-issued")
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_grant"

    def test_refresh_token_of_another_app_is_invalid_grant(
        self, emu: ClioEmulator, http: requests.Session
    ) -> None:
        eu_token = emu.issue_refresh_token("clio-emulator-eu")
        assert refresh(http, emu, eu_token).json()["error"] == "invalid_grant"
        # ... and it was not consumed by the failed attempt.
        assert refresh(http, emu, eu_token, client_id="clio-emulator-eu").status_code == 200

    @pytest.mark.parametrize(("client_id", "secret"), [(US, "wrong"), ("nobody", SECRET), ("", "")])
    def test_bad_client_is_401_invalid_client(
        self, emu: ClioEmulator, http: requests.Session, client_id: str, secret: str
    ) -> None:
        token = emu.issue_refresh_token(US)
        response = refresh(http, emu, token, client_id=client_id, secret=secret)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"
        # A rejected client does not burn the token.
        assert refresh(http, emu, token).status_code == 200

    def test_basic_client_authentication(self, emu: ClioEmulator, http: requests.Session) -> None:
        token = emu.issue_refresh_token(US)
        response = http.post(
            f"{emu.url}/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": token},
            auth=(US, SECRET),
        )
        assert response.status_code == 200

    def test_unsupported_grant_type(self, emu: ClioEmulator, http: requests.Session) -> None:
        response = http.post(
            f"{emu.url}/oauth/token",
            data={"grant_type": "client_credentials", "client_id": US, "client_secret": SECRET},
        )
        assert response.status_code == 400
        assert response.json()["error"] == "unsupported_grant_type"

    def test_token_calls_are_recorded_but_not_rate_limited(
        self, clio_emulator_factory: Callable[..., ClioEmulator], http: requests.Session
    ) -> None:
        emu = clio_emulator_factory(rate_limit=1)
        token = emu.issue_refresh_token("clio-emulator-ca")
        for _ in range(5):
            response = refresh(http, emu, token, client_id="clio-emulator-ca")
            assert response.status_code == 200
            token = response.json()["refresh_token"]
        records = emu.requests
        assert [(r.path, r.status, r.client_id, r.region) for r in records] == [
            ("/oauth/token", 200, "clio-emulator-ca", "ca")
        ] * 5
        assert emu.max_requests_in_window() == 0  # only API requests count


class TestAuthorizationCode:
    def test_authorize_and_exchange(self, emu: ClioEmulator, http: requests.Session) -> None:
        redirect = "http://localhost:9999/callback"
        response = http.get(
            f"{emu.url}/oauth/authorize",
            params={"client_id": US, "redirect_uri": redirect, "state": "xyz", "response_type": "code"},
            allow_redirects=False,
        )
        assert response.status_code == 302
        location = urlsplit(response.headers["Location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == redirect
        query = parse_qs(location.query)
        assert query["state"] == ["xyz"]
        code = query["code"][0]

        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "client_id": US,
            "client_secret": SECRET,
        }
        wrong_uri = http.post(f"{emu.url}/oauth/token", data={**form, "redirect_uri": "http://evil/cb"})
        assert wrong_uri.status_code == 400
        # The mismatch consumed the code, as a real server would.
        assert http.post(f"{emu.url}/oauth/token", data=form).json()["error"] == "invalid_grant"

        code = parse_qs(
            urlsplit(
                http.get(
                    f"{emu.url}/oauth/authorize",
                    params={"client_id": US, "redirect_uri": redirect, "response_type": "code"},
                    allow_redirects=False,
                ).headers["Location"]
            ).query
        )["code"][0]
        tokens = http.post(f"{emu.url}/oauth/token", data={**form, "code": code})
        assert tokens.status_code == 200
        assert (
            http.get(f"{emu.url}/grow/contacts", headers=bearer(tokens.json()["access_token"])).status_code
            == 200
        )
        assert refresh(http, emu, tokens.json()["refresh_token"]).status_code == 200
        # A code is single-use.
        assert (
            http.post(f"{emu.url}/oauth/token", data={**form, "code": code}).json()["error"]
            == "invalid_grant"
        )

    def test_authorize_unknown_client_is_400(self, emu: ClioEmulator, http: requests.Session) -> None:
        response = http.get(
            f"{emu.url}/oauth/authorize",
            params={"client_id": "nobody", "redirect_uri": "http://localhost/cb", "response_type": "code"},
            allow_redirects=False,
        )
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_client"


class TestAccessTokens:
    def test_missing_or_unknown_token_is_401(self, emu: ClioEmulator, http: requests.Session) -> None:
        for headers in ({}, bearer("emu-at-forged"), {"Authorization": "Basic abc"}):
            response = http.get(f"{emu.url}/grow/contacts", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["status"] == "401"

    def test_expired_token_is_401(self, emu: ClioEmulator, http: requests.Session) -> None:
        token, expires_at = emu.issue_access_token(US, ttl=0)
        assert expires_at > 0
        response = http.get(f"{emu.url}/grow/contacts", headers=bearer(token))
        assert response.status_code == 401
        assert "expired" in response.json()["error"]["message"]

    def test_expire_access_tokens(self, emu: ClioEmulator, http: requests.Session) -> None:
        old, _ = emu.issue_access_token(US)
        assert http.get(f"{emu.url}/grow/contacts", headers=bearer(old)).status_code == 200
        emu.expire_access_tokens()
        assert http.get(f"{emu.url}/grow/contacts", headers=bearer(old)).status_code == 401
        new = refresh(http, emu, emu.issue_refresh_token(US)).json()["access_token"]
        assert http.get(f"{emu.url}/grow/contacts", headers=bearer(new)).status_code == 200

    def test_access_token_ttl_is_reported(
        self, clio_emulator_factory: Callable[..., ClioEmulator], http: requests.Session
    ) -> None:
        emu = clio_emulator_factory(access_token_ttl=120)
        assert refresh(http, emu, emu.issue_refresh_token(US)).json()["expires_in"] == 120


class TestAppsAndScopes:
    def test_scopes_limit_resources(self, emu: ClioEmulator, http: requests.Session) -> None:
        app = emu.register_app("narrow", "s3cret", region="eu", scopes=["contacts", "grow_matter_read"])
        assert app == EmulatorApp("narrow", "s3cret", "eu", frozenset({"contacts", "grow_matter_read"}))
        token, _ = emu.issue_access_token("narrow")
        assert http.get(f"{emu.url}/grow/contacts", headers=bearer(token)).status_code == 200
        assert http.get(f"{emu.url}/grow/matters/1", headers=bearer(token)).status_code == 200
        forbidden = http.get(f"{emu.url}/grow/activities", headers=bearer(token))
        assert forbidden.status_code == 403
        assert "activities" in forbidden.json()["error"]["message"]
        assert emu.requests[-1].region == "eu"

    def test_register_app_rejects_unknown_region(self, emu: ClioEmulator) -> None:
        with pytest.raises(ValueError, match="region"):
            emu.register_app("x", "y", region="mars")

    def test_default_apps(self, emu: ClioEmulator) -> None:
        assert {(a.client_id, a.region, a.client_secret) for a in emu.apps()} == {
            (f"clio-emulator-{r}", r, SECRET) for r in ("us", "ca", "eu", "au")
        }

    def test_admin_registers_apps(self, emu: ClioEmulator, http: requests.Session) -> None:
        response = http.post(
            f"{emu.url}/_emulator/apps",
            json={"client_id": "viaadmin", "client_secret": "pw", "region": "au", "scopes": None},
        )
        assert response.status_code == 200
        assert refresh(http, emu, response.json()["refresh_token"], "viaadmin", "pw").status_code == 200

    def test_connection_dict(self, emu: ClioEmulator, http: requests.Session) -> None:
        conn = emu.connection(region="eu", requests_per_slot=2.0)
        assert conn["conn_type"] == "clio"
        assert conn["host"] == emu.url
        assert (conn["login"], conn["password"]) == ("clio-emulator-eu", SECRET)
        assert conn["extra"]["region"] == "eu"
        assert conn["extra"]["requests_per_slot"] == 2.0
        assert refresh(http, emu, conn["extra"]["refresh_token"], "clio-emulator-eu").status_code == 200

    def test_connection_registers_unknown_apps(self, emu: ClioEmulator) -> None:
        conn = emu.connection(client_id="brand-new", region="ca")
        assert conn["login"] == "brand-new"
        assert conn["extra"]["region"] == "ca"
        # A known app keeps its own region whatever is asked.
        assert emu.connection(client_id="brand-new", region="us")["extra"]["region"] == "ca"

    def test_connection_env(self, emu: ClioEmulator) -> None:
        name, value = emu.connection_env("clio_eu", region="eu")
        assert name == "AIRFLOW_CONN_CLIO_EU"
        conn = json.loads(value)
        assert conn["login"] == "clio-emulator-eu"
        assert emu.connection_env()[0] == "AIRFLOW_CONN_CLIO_DEFAULT"

    def test_connection_env_is_understood_by_airflow(
        self, emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow.models.connection import Connection

        name, value = emu.connection_env("clio_default")
        conn = Connection.from_json(value, conn_id="clio_default")
        assert (conn.conn_type, conn.host, conn.login, conn.password) == ("clio", emu.url, US, SECRET)
        assert conn.extra_dejson["region"] == "us"
        assert name == "AIRFLOW_CONN_CLIO_DEFAULT"


def test_revoke(emu: ClioEmulator, http: requests.Session) -> None:
    token = emu.issue_refresh_token(US)
    auth = "Basic " + base64.b64encode(f"{US}:{SECRET}".encode()).decode()
    assert http.post(f"{emu.url}/oauth/revoke", data={"token": token}, headers={"Authorization": auth}).ok
    assert refresh(http, emu, token).json()["error"] == "invalid_grant"
