# SPDX-License-Identifier: Apache-2.0
"""The OAuth token endpoint protocol: code exchange, client checks and error bodies, over loopback."""

from __future__ import annotations

import json

import pytest

from airflow_provider_clio.auth import MemoryTokenStore, TokenSet
from airflow_provider_clio.exceptions import (
    ClioAuthError,
    ClioFatalError,
    ClioRateLimitError,
    ClioRetryableError,
    ClioTransientError,
)

# -- exchanging an authorization code --------------------------------------------------------------------


def test_exchange_code_stores_the_tokens(clio):
    redirect_uri = "http://localhost/clio/callback"
    code = clio.authorization_code(redirect_uri)
    store = MemoryTokenStore()
    tm = clio.manager(store, TokenSet(None, "", None), conn_id="clio_onboard")

    tokens = tm.exchange_code(code, redirect_uri)
    assert store.load("clio_onboard") == tokens
    assert tm.access_token() == tokens.access_token
    assert clio.api_status(tokens.access_token) == 200
    assert {code, tokens.access_token, tokens.refresh_token} <= set(tm.secrets())

    with pytest.raises(ClioAuthError, match="authorization code") as excinfo:
        tm.exchange_code(code, redirect_uri)  # codes are single-use
    assert code not in str(excinfo.value)


def test_exchange_code_survives_a_store_hiccup(clio, failing_store):
    store = failing_store(fail=1)
    sleeps: list[float] = []
    tm = clio.manager(store, TokenSet(None, "", None), conn_id="clio_onboard_hiccup", sleep=sleeps.append)
    tokens = tm.exchange_code(clio.authorization_code("http://localhost/cb"), "http://localhost/cb")
    assert store.load("clio_onboard_hiccup") == tokens
    assert sleeps == [0.5]


def test_exchange_code_fails_loudly_when_the_tokens_cannot_be_stored(clio, caplog, failing_store):
    sleeps: list[float] = []
    tm = clio.manager(
        failing_store(fail=99), TokenSet(None, "", None), conn_id="clio_onboard_fail", sleep=sleeps.append
    )
    with pytest.raises(ClioAuthError, match=r"storing them failed \(OSError\); nothing was saved") as excinfo:
        tm.exchange_code(clio.authorization_code("http://localhost/cb"), "http://localhost/cb")
    assert "emu-" not in str(excinfo.value)
    assert "emu-" not in caplog.text
    assert sleeps == [0.5, 1.0, 2.0, 4.0]


# -- client credentials ------------------------------------------------------------------------------------


def test_invalid_client_is_a_configuration_error(clio):
    tm = clio.manager(
        MemoryTokenStore(),
        TokenSet(None, clio.fresh().refresh_token, None),
        conn_id="clio_bad_client",
        client_secret="wrong-secret-value-1234",
    )
    with pytest.raises(ClioAuthError, match="client credentials") as excinfo:
        tm.access_token()
    assert "invalid_client" in str(excinfo.value)
    assert "wrong-secret-value-1234" not in str(excinfo.value)


def test_verify_client_credentials_spends_no_token(clio):
    initial = clio.fresh()
    store = MemoryTokenStore()
    tm = clio.manager(store, initial, conn_id="clio_verify")
    tm.verify_client_credentials()  # accepted: returns
    # One token-endpoint call, answered invalid_grant for the made-up token; nothing refreshed or stored.
    assert clio.token_calls() == clio.token_calls(400) == 1
    assert tm.refreshes == 0
    assert store.saves == 0
    assert clio.direct_refresh(initial.refresh_token).status_code == 200  # the real token is unspent


def test_verify_client_credentials_rejects_a_wrong_secret(clio):
    tm = clio.manager(MemoryTokenStore(), TokenSet(None, "", None), client_secret="wrong-secret-value-1234")
    with pytest.raises(ClioAuthError, match="invalid_client") as excinfo:
        tm.verify_client_credentials()
    assert excinfo.value.endpoint == "oauth/token"
    assert "wrong-secret-value-1234" not in str(excinfo.value)


def test_verify_client_credentials_refuses_an_endpoint_that_accepts_anything(stub_token_server, stub_manager):
    stub_token_server.answer = (200, json.dumps({"access_token": "x" * 20, "refresh_token": "y" * 20}), {})
    with pytest.raises(ClioFatalError, match="really Clio"):
        stub_manager(MemoryTokenStore(), TokenSet(None, "", None)).verify_client_credentials()


@pytest.mark.parametrize(
    ("status", "expected"),
    [(503, ClioTransientError), (429, ClioRateLimitError), (403, ClioFatalError)],
)
def test_verify_client_credentials_classifies_other_answers(
    stub_token_server, stub_manager, status, expected
):
    stub_token_server.answer = (status, json.dumps({"error": "server_error"}), {"Retry-After": "7"})
    with pytest.raises(expected) as excinfo:
        stub_manager(MemoryTokenStore(), TokenSet(None, "", None)).verify_client_credentials()
    assert excinfo.value.status_code == status
    if isinstance(excinfo.value, ClioRetryableError):
        assert excinfo.value.retry_after == 7.0
    bogus = stub_token_server.forms[-1]["refresh_token"]
    assert bogus.startswith("airflow-provider-clio-test-")
    assert bogus not in str(excinfo.value)


# -- answers that are not tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected", "text"),
    [
        ((200, "<html>maintenance</html>", {}), ClioTransientError, "not JSON"),
        ((200, "[]", {}), ClioTransientError, "not an object"),
        ((200, json.dumps({"token_type": "bearer"}), {}), ClioAuthError, "lacks an access or refresh token"),
        ((502, "<html><b>Bad gateway</b></html>", {}), ClioTransientError, "Bad gateway"),
        ((429, json.dumps({"message": "slow down"}), {"Retry-After": "3"}), ClioRateLimitError, "slow down"),
        ((400, json.dumps({"error": "unsupported_grant_type"}), {}), ClioAuthError, "airflow clio auth"),
    ],
)
def test_a_refresh_answer_that_is_not_a_token_pair_is_classified(
    stub_token_server, stub_manager, answer, expected, text
):
    stub_token_server.answer = answer
    tm = stub_manager(MemoryTokenStore(), TokenSet(None, "refresh-token-value-0001", None))
    with pytest.raises(expected, match=text) as excinfo:
        tm.access_token()
    assert excinfo.value.endpoint == "oauth/token"
    assert "refresh-token-value-0001" not in str(excinfo.value)


def test_error_bodies_are_read_with_the_given_parser(stub_token_server, stub_manager):
    # Another API's error shape, {"errors": [{"code", "detail"}]}: the manager reads it through parse_error.
    stub_token_server.error_body = lambda code, text: {"errors": [{"code": code, "detail": text}]}

    def parse_error(body):
        errors = json.loads(body or "{}").get("errors") or [{}]
        return errors[0].get("code"), errors[0].get("detail") or ""

    with pytest.raises(
        ClioAuthError, match=r"client credentials .*invalid_client: client authentication failed"
    ):
        stub_manager(
            MemoryTokenStore(),
            TokenSet(None, "refresh-token-value-0002", None),
            client_secret="wrong-secret-value-5678",
            parse_error=parse_error,
        ).access_token()
    # The same body read with the default (Clio) parser has no OAuth error code: not a client error.
    with pytest.raises(ClioAuthError) as excinfo:
        stub_manager(
            MemoryTokenStore(),
            TokenSet(None, "refresh-token-value-0003", None),
            client_secret="wrong-secret-value-5678",
        ).access_token()
    assert "client credentials" not in str(excinfo.value)
