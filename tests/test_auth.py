# SPDX-License-Identifier: Apache-2.0
"""Token stores and TokenManager against the real emulator, metadata DB, dag.test() and real processes."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_clio.auth import (
    VARIABLE_KEY_PREFIX,
    FileTokenStore,
    MemoryTokenStore,
    TokenManager,
    TokenSet,
    TokenStore,
    VariableTokenStore,
    parse_expires_at,
)
from airflow_provider_clio.exceptions import (
    ClioAuthError,
    ClioConfigError,
    ClioRetryableError,
    ClioTokenRaceError,
)

CLIENT_ID = "clio-auth-tests"
CLIENT_SECRET = "auth-tests-client-secret-5f1e"
TOKEN_KEYS = ("access_token", "refresh_token")


def _post(url: str, form: dict[str, str]) -> requests.Response:
    # Stand-in for the hook's send path: the token endpoint is plain form POST either way.
    return requests.post(url, data=form, timeout=30)


class Clio:
    """A registered emulator application plus helpers to mint tokens and call the API like a worker."""

    def __init__(self, emulator: Any, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET) -> None:
        self.emu = emulator
        self.client_id = client_id
        self.client_secret = client_secret
        emulator.register_app(client_id=client_id, client_secret=client_secret, region="us")
        self.token_url = f"{emulator.url}/oauth/token"

    def fresh(self) -> TokenSet:
        """Return a valid access token and refresh token of the app, as a connection would carry them."""
        access, expires_at = self.emu.issue_access_token(self.client_id)
        return TokenSet(access, self.emu.issue_refresh_token(self.client_id), expires_at)

    def manager(
        self, store: TokenStore, initial: TokenSet, conn_id: str | None = None, **kw: Any
    ) -> TokenManager:
        kw.setdefault("sleep", lambda s: None)
        return TokenManager(
            conn_id=conn_id or f"clio_{uuid.uuid4().hex[:8]}",
            client_id=self.client_id,
            client_secret=self.client_secret,
            token_url=self.token_url,
            initial=initial,
            store=store,
            post=_post,
            **kw,
        )

    def api_status(self, access_token: str) -> int:
        """Call one API endpoint with ``access_token`` and return the HTTP status."""
        response = requests.get(
            f"{self.emu.url}/grow/users", headers={"Authorization": f"Bearer {access_token}"}, timeout=30
        )
        return response.status_code

    def token_calls(self, status: int | None = None) -> int:
        """Count token-endpoint requests (optionally with one status) the emulator recorded."""
        return sum(
            1
            for r in self.emu.requests
            if r.path == "/oauth/token"
            and r.client_id in (self.client_id, None)
            and status in (None, r.status)
        )


@pytest.fixture
def clio(clio_emulator_factory: Callable[..., Any]) -> Clio:
    # A generous rate limit: these tests are about tokens, not pacing.
    return Clio(clio_emulator_factory(rate_limit=1000))


def _direct_refresh(clio: Clio, refresh_token: str) -> requests.Response:
    return _post(
        clio.token_url,
        {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": clio.client_id,
            "client_secret": clio.client_secret,
        },
    )


class Clock:
    """An epoch clock tests move by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


# -- TokenSet ------------------------------------------------------------------------------------------


def test_token_set_repr_and_str_never_show_the_values():
    tokens = TokenSet("access-value-123456", "refresh-value-123456", 1.5)
    for text in (repr(tokens), str(tokens), f"{tokens}", repr([tokens])):
        assert "access-value" not in text
        assert "refresh-value" not in text
        assert "1.5" in text


def test_token_set_json_round_trip():
    tokens = TokenSet("a" * 20, "r" * 20, 1767225600.0)
    assert TokenSet.from_json(tokens.to_json()) == tokens
    without_access = TokenSet(None, "r" * 20, None)
    assert TokenSet.from_json(without_access.to_json()) == without_access


@pytest.mark.parametrize("bad", ["", "[]", '{"access_token": "x"}', '{"refresh_token": 5}', "not json"])
def test_token_set_from_json_rejects_other_shapes(bad):
    with pytest.raises(ValueError, match="not a Clio token set"):
        TokenSet.from_json(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        (1767225600, 1767225600.0),
        ("1767225600.5", 1767225600.5),
        ("2026-01-01T00:00:00Z", 1767225600.0),
        ("2026-01-01T01:00:00+01:00", 1767225600.0),
        ("2026-01-01T00:00:00", 1767225600.0),  # naive means UTC
    ],
)
def test_expires_at_accepts_epoch_seconds_and_iso_8601(value, expected):
    assert parse_expires_at(value) == expected


@pytest.mark.parametrize("value", ["tomorrow", True, [1]])
def test_expires_at_rejects_anything_else(value):
    with pytest.raises(ClioConfigError, match="expires_at"):
        parse_expires_at(value)


def test_token_set_from_connection_extra():
    extra = {
        "refresh_token": "r" * 20,
        "access_token": "a" * 20,
        "expires_at": "2026-01-01T00:00:00Z",
        "x": 1,
    }
    assert TokenSet.from_connection_extra(extra) == TokenSet("a" * 20, "r" * 20, 1767225600.0)
    assert TokenSet.from_connection_extra({}) == TokenSet(None, "", None)


# -- stores --------------------------------------------------------------------------------------------


def test_memory_store_round_trip():
    store = MemoryTokenStore()
    assert store.load("c") is None
    store.save("c", TokenSet("a" * 20, "r" * 20, 1.0))
    assert store.load("c") == TokenSet("a" * 20, "r" * 20, 1.0)
    assert store.load("other") is None
    assert store.saves == 1
    assert isinstance(store, TokenStore)


def test_file_store_round_trip_keeps_other_connections_and_is_private(tmp_path):
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path)
    assert store.load("one") is None
    store.save("one", TokenSet("a1" * 10, "r1" * 10, 10.0))
    store.save("two", TokenSet(None, "r2" * 10, None))
    store.save("one", TokenSet("a3" * 10, "r3" * 10, 30.0))

    again = FileTokenStore(path)  # a fresh object reads what the file holds, not a cache
    assert again.load("one") == TokenSet("a3" * 10, "r3" * 10, 30.0)
    assert again.load("two") == TokenSet(None, "r2" * 10, None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Only the data file and lock files remain: every temporary file was renamed into place.
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["tokens.json"]
    assert isinstance(store, TokenStore)


def test_file_store_ignores_a_corrupt_file(tmp_path, caplog):
    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    assert FileTokenStore(path).load("one") is None
    path.write_text(json.dumps({"one": {"access_token": "x"}}))
    assert FileTokenStore(path).load("one") is None


_CONCURRENT_WRITER = """
import sys
from airflow_provider_clio.auth import FileTokenStore, TokenSet
store = FileTokenStore(sys.argv[1])
for i in range(15):
    store.save(sys.argv[2], TokenSet("access-%03d-%s" % (i, sys.argv[2]), "refresh-%03d" % i, float(i)))
"""


@pytest.mark.slow
def test_file_store_writers_in_several_processes_lose_nothing(tmp_path):
    path = tmp_path / "tokens.json"
    procs = [
        subprocess.Popen([sys.executable, "-c", _CONCURRENT_WRITER, str(path), f"conn{n}"]) for n in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    store = FileTokenStore(path)
    for n in range(4):
        assert store.load(f"conn{n}") == TokenSet(f"access-014-conn{n}", "refresh-014", 14.0)


def test_variable_store_round_trip_through_the_metadata_db(airflow_db):
    from airflow.models import Variable

    conn_id = f"clio_{uuid.uuid4().hex[:8]}"
    store = VariableTokenStore()
    assert store.key(conn_id) == f"clio_oauth_tokens__{conn_id}" == VARIABLE_KEY_PREFIX + conn_id
    assert store.load(conn_id) is None

    store.save(conn_id, TokenSet("a1" * 10, "r1" * 10, 10.0))
    store.save(conn_id, TokenSet("a2" * 10, "r2" * 10, 20.0))  # an upsert, not a duplicate key
    assert VariableTokenStore().load(conn_id) == TokenSet("a2" * 10, "r2" * 10, 20.0)
    assert json.loads(Variable.get(store.key(conn_id)))["refresh_token"] == "r2" * 10

    Variable.set(store.key(conn_id), "garbage")
    assert store.load(conn_id) is None


# -- TokenManager against the emulator ------------------------------------------------------------------


def test_uses_the_connection_tokens_while_the_store_is_empty(clio):
    initial = clio.fresh()
    store = MemoryTokenStore()
    tm = clio.manager(store, initial)
    token = tm.access_token()
    assert token == initial.access_token
    assert clio.api_status(token) == 200
    assert tm.refreshes == 0
    assert clio.token_calls() == 0
    assert store.saves == 0


def test_the_store_wins_over_the_connection(clio):
    stored = clio.fresh()
    conn_id = "clio_store_wins"
    tm = clio.manager(MemoryTokenStore({conn_id: stored}), clio.fresh(), conn_id=conn_id)
    assert tm.access_token() == stored.access_token
    assert tm.refreshes == 0


def test_a_connection_with_only_a_refresh_token_refreshes_and_stores(clio):
    initial = TokenSet(None, clio.fresh().refresh_token, None)
    store = MemoryTokenStore()
    tm = clio.manager(store, initial, conn_id="clio_refresh_only")
    token = tm.access_token()
    assert clio.api_status(token) == 200
    saved = store.load("clio_refresh_only")
    assert saved is not None
    assert saved.access_token == token
    assert saved.refresh_token != initial.refresh_token


def test_expiry_mid_run_refreshes_ahead_of_time_and_persists_the_rotation_before_use(clio):
    clock = Clock()
    initial = clio.fresh()
    conn_id = "clio_mid_run"
    store = MemoryTokenStore()
    tm = clio.manager(store, initial, conn_id=conn_id, clock=clock, refresh_margin=300.0)

    seen: list[str] = []
    for step in range(6):
        if step == 3:
            # The emulator's token lives 24 h; jump to 4 minutes before it expires (inside the 5 min margin).
            assert initial.expires_at is not None
            clock.now = initial.expires_at - 240
        token = tm.access_token()
        # Whatever the manager hands out after a refresh is already in the store: a crash now loses nothing.
        stored = store.load(conn_id)
        assert (stored is None) if step < 3 else (stored is not None and stored.access_token == token)
        assert clio.api_status(token) == 200
        seen.append(token)

    assert seen[:3] == [initial.access_token] * 3
    assert len(set(seen[3:])) == 1
    assert seen[3] != initial.access_token
    assert tm.refreshes == 1
    assert clio.token_calls(200) == 1
    rotated = store.load(conn_id)
    assert rotated is not None
    assert rotated.refresh_token != initial.refresh_token
    assert rotated.expires_at == pytest.approx(clock.now + 86400, abs=5)
    # The old refresh token is gone at the server, which is why the store must have the new one.
    assert _direct_refresh(clio, initial.refresh_token).json()["error"] == "invalid_grant"


def test_short_lived_tokens_are_not_refreshed_on_every_call(clio_emulator_factory):
    clio = Clio(clio_emulator_factory(rate_limit=1000, access_token_ttl=60))
    tm = clio.manager(
        MemoryTokenStore(), TokenSet(None, clio.fresh().refresh_token, None), refresh_margin=300
    )
    first = tm.access_token()
    # 60 s tokens sit inside a 300 s margin; without capping the margin each call would refresh again.
    assert [tm.access_token() for _ in range(3)] == [first] * 3
    assert tm.refreshes == 1


def test_refresh_after_401_refreshes_once_for_all_threads(clio):
    initial = clio.fresh()
    store = MemoryTokenStore()
    tm = clio.manager(store, initial)
    clio.emu.expire_access_tokens()
    assert clio.api_status(initial.access_token) == 401

    results: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(tm.refresh_after_401(initial.access_token))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert len(set(results)) == 1
    assert clio.api_status(results[0]) == 200
    assert tm.refreshes == 1
    assert clio.token_calls() == 1


def test_two_managers_in_one_process_share_the_rotation_through_the_store(clio):
    initial = clio.fresh()
    store = MemoryTokenStore()
    conn_id = "clio_two_hooks"
    first = clio.manager(store, initial, conn_id=conn_id)
    second = clio.manager(store, initial, conn_id=conn_id)
    assert first.access_token() == second.access_token() == initial.access_token
    clio.emu.expire_access_tokens()

    new = first.refresh_after_401(initial.access_token)
    # The second hook still holds the rotated-away refresh token; it must adopt, not refresh with it.
    assert second.refresh_after_401(initial.access_token) == new
    assert (first.refreshes, second.refreshes) == (1, 0)
    assert clio.token_calls(400) == 0


def test_invalid_grant_with_no_newer_token_asks_a_person_to_reauthorize(clio, caplog):
    initial = clio.fresh()
    assert _direct_refresh(clio, initial.refresh_token).status_code == 200  # rotated away elsewhere, lost
    sleeps: list[float] = []
    tm = clio.manager(
        MemoryTokenStore(),
        TokenSet(initial.access_token, initial.refresh_token, time.time() - 1),
        conn_id="clio_stranded",
        sleep=sleeps.append,
        invalid_grant_wait=3.0,
        poll_interval=0.5,
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(ClioAuthError) as excinfo:
        tm.access_token()
    message = str(excinfo.value)
    assert "invalid_grant" in message
    assert "airflow clio auth --conn-id clio_stranded" in message
    assert excinfo.value.status_code == 400
    # It watched the store for the winner's tokens for invalid_grant_wait seconds before giving up.
    assert sleeps == [0.5] * 6
    for secret in (initial.access_token, initial.refresh_token, CLIENT_SECRET):
        assert secret not in message
        assert secret not in caplog.text


def test_invalid_grant_adopts_the_tokens_a_slower_winner_saves_while_it_waits(clio):
    initial = clio.fresh()
    conn_id = "clio_late_winner"
    store = MemoryTokenStore()
    # Another worker refreshed with the same token first but has not saved yet.
    winner_body = _direct_refresh(clio, initial.refresh_token).json()
    winner = TokenSet(winner_body["access_token"], winner_body["refresh_token"], time.time() + 86400)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            store.save(conn_id, winner)  # the winner's save lands during our second wait

    tm = clio.manager(
        store, TokenSet(None, initial.refresh_token, None), conn_id=conn_id, sleep=sleep, poll_interval=0.25
    )
    assert tm.access_token() == winner.access_token
    assert tm.refreshes == 0
    assert len(sleeps) == 2
    assert clio.token_calls(200) == 1
    assert clio.token_calls(400) == 1


def test_a_newer_refresh_token_in_the_store_is_used_when_its_access_token_is_not(clio):
    initial = clio.fresh()
    conn_id = "clio_newer_refresh"
    store = MemoryTokenStore()
    tm = clio.manager(store, TokenSet(None, initial.refresh_token, None), conn_id=conn_id)
    body = _direct_refresh(clio, initial.refresh_token).json()
    store.save(conn_id, TokenSet(None, body["refresh_token"], None))  # someone saved only a refresh token

    token = tm.access_token()
    assert clio.api_status(token) == 200
    assert tm.refreshes == 1
    assert clio.token_calls(400) == 0  # it never tried the rotated-away token


def test_a_lost_race_with_a_slow_winner_is_retryable_and_the_retry_adopts_the_winner(clio):
    # VariableTokenStore has no inter-process lock: two workers may spend the stored R1 at once. The loser's
    # invalid_grant is a lost race, not a dead connection, when the token it presented is the one the store
    # holds; a winner slower to save than invalid_grant_wait must not fail the loser's task for good.
    conn_id = "clio_slow_winner"
    r1 = clio.fresh().refresh_token
    store = MemoryTokenStore({conn_id: TokenSet(None, r1, None)})
    # The connection's own token: valid in the emulator here, so presenting it would be visible below.
    connection_token = clio.fresh().refresh_token
    sleeps: list[float] = []
    tm = clio.manager(
        store,
        TokenSet(None, connection_token, None),
        conn_id=conn_id,
        sleep=sleeps.append,
        invalid_grant_wait=1.0,
        poll_interval=0.5,
    )
    winner_body = _direct_refresh(clio, r1).json()  # the winner refreshed and has not stored yet

    with pytest.raises(ClioTokenRaceError, match="another process refreshed with the same token") as excinfo:
        tm.access_token()
    assert isinstance(excinfo.value, ClioRetryableError)
    assert not isinstance(excinfo.value, AirflowFailException)
    assert "airflow clio auth --conn-id clio_slow_winner" in str(excinfo.value)
    assert r1 not in str(excinfo.value)
    assert sleeps == [0.5, 0.5]
    assert clio.token_calls(400) == 1
    # The store moved on from the connection's token, which was therefore never presented: still valid.
    assert _direct_refresh(clio, connection_token).status_code == 200

    # Retrying before the winner saved: no second attempt with the rejected token, the same retryable error.
    with pytest.raises(ClioTokenRaceError):
        tm.access_token()
    assert clio.token_calls(400) == 1

    winner = TokenSet(winner_body["access_token"], winner_body["refresh_token"], time.time() + 86400)
    store.save(conn_id, winner)
    assert tm.access_token() == winner.access_token
    assert tm.refreshes == 0
    assert clio.token_calls(400) == 1


def test_a_rotated_away_connection_token_is_not_presented_once_the_store_moved_on(clio):
    conn_id = "clio_fresh_connection"
    stale = clio.fresh()
    _direct_refresh(clio, stale.refresh_token)  # the stored pair was rotated away long ago
    store = MemoryTokenStore({conn_id: TokenSet(None, stale.refresh_token, None)})
    # Whatever the connection holds is older than the store's chain (the store wins); presenting a revoked
    # token may make Clio revoke the whole chain (reuse detection), so it is not tried as a last resort.
    connection_token = clio.fresh().refresh_token

    tm = clio.manager(store, TokenSet(None, connection_token, None), conn_id=conn_id)
    with pytest.raises(ClioRetryableError):
        tm.access_token()
    assert clio.token_calls(400) == 1
    assert _direct_refresh(clio, connection_token).status_code == 200  # never spent


def test_invalid_client_is_a_configuration_error(clio):
    tm = TokenManager(
        conn_id="clio_bad_client",
        client_id=CLIENT_ID,
        client_secret="wrong-secret-value-1234",
        token_url=clio.token_url,
        initial=TokenSet(None, clio.fresh().refresh_token, None),
        store=MemoryTokenStore(),
        post=_post,
        sleep=lambda s: None,
    )
    with pytest.raises(ClioAuthError, match="client credentials") as excinfo:
        tm.access_token()
    assert "invalid_client" in str(excinfo.value)
    assert "wrong-secret-value-1234" not in str(excinfo.value)


def test_no_refresh_token_asks_for_onboarding(clio):
    tm = clio.manager(MemoryTokenStore(), TokenSet(None, "", None), conn_id="clio_new")
    with pytest.raises(ClioAuthError, match="airflow clio auth --conn-id clio_new"):
        tm.access_token()
    assert clio.token_calls() == 0


class FailingStore(MemoryTokenStore):
    """A store whose next ``fail`` saves raise the way a database driver does: quoting the values."""

    def __init__(self, fail: int) -> None:
        super().__init__()
        self.fail = fail

    def save(self, conn_id: str, tokens: TokenSet) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError(f"INSERT INTO variable failed [parameters: {tokens.to_json()}]")
        super().save(conn_id, tokens)


def test_a_failed_save_keeps_the_new_tokens_and_is_retried(clio, caplog):
    store = FailingStore(fail=1)
    tm = clio.manager(store, TokenSet(None, clio.fresh().refresh_token, None), conn_id="clio_flaky")
    token = tm.access_token()
    assert clio.api_status(token) == 200
    assert store.load("clio_flaky") is None
    assert "Could not store the rotated Clio tokens of clio_flaky (OSError)" in caplog.text
    assert token not in caplog.text
    assert tm.access_token() == token
    assert store.load("clio_flaky").access_token == token


@pytest.mark.parametrize("after_401", [False, True])
def test_a_failed_save_never_brings_back_the_rotated_away_refresh_token(clio, caplog, after_401):
    # The store still holds R1 after the R1 -> R2 rotation failed to save, and keeps failing for a while.
    # Adopting R1 again (it differs from ours, so it looked "newer") would present a revoked token and
    # throw away R2, the only refresh token Clio still accepts.
    clock = Clock()
    conn_id = "clio_save_outage"
    r1 = clio.fresh()
    store = FailingStore(fail=2)
    MemoryTokenStore.save(store, conn_id, TokenSet(r1.access_token, r1.refresh_token, clock.now + 100))
    tm = clio.manager(store, TokenSet(None, "connection-token-long-gone", None), conn_id=conn_id, clock=clock)
    with caplog.at_level(logging.INFO):
        a2 = tm.access_token()  # A1 expires within the margin: R1 -> R2, the save fails
    assert tm.refreshes == 1
    assert store.load(conn_id).refresh_token == r1.refresh_token
    assert "stored the rotated pair" not in caplog.text
    assert "NOT stored yet" in caplog.text

    clock.now += 86400  # a day later; the first retried save fails too
    if after_401:
        clio.emu.expire_access_tokens()
        a3 = tm.refresh_after_401(a2)
    else:
        a3 = tm.access_token()
    assert clio.api_status(a3) == 200
    assert tm.refreshes == 2
    assert clio.token_calls(400) == 0  # R1 was never presented again
    # The store ends with the newest pair, whose refresh token Clio still accepts.
    newest = store.load(conn_id)
    assert newest.access_token == a3
    assert _direct_refresh(clio, newest.refresh_token).status_code == 200


def test_exchange_code_fails_loudly_when_the_tokens_cannot_be_stored(clio, caplog):
    tm = clio.manager(FailingStore(fail=1), TokenSet(None, "", None), conn_id="clio_onboard_fail")
    with pytest.raises(ClioAuthError, match=r"storing them failed \(OSError\); nothing was saved") as excinfo:
        tm.exchange_code(_authorization_code(clio, "http://localhost/cb"), "http://localhost/cb")
    assert "emu-" not in str(excinfo.value)
    assert "emu-" not in caplog.text


def test_a_forked_child_does_not_inherit_a_held_refresh_lock():
    from airflow_provider_clio import auth

    conn_id = "clio_fork"
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with auth._local_lock(conn_id):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(30)
    try:
        pid = os.fork()
        if pid == 0:  # the child: a Celery prefork worker, a task using multiprocessing, ...
            os._exit(0 if auth._local_lock(conn_id).acquire(timeout=10) else 1)
    finally:
        release.set()
        thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _authorization_code(clio: Clio, redirect_uri: str) -> str:
    location = requests.get(
        f"{clio.emu.url}/oauth/authorize",
        params={
            "client_id": clio.client_id,
            "redirect_uri": redirect_uri,
            "state": "s",
            "response_type": "code",
        },
        allow_redirects=False,
        timeout=30,
    ).headers["Location"]
    return parse_qs(urlsplit(location).query)["code"][0]


def test_exchange_code_stores_the_tokens(clio):
    redirect_uri = "http://localhost/clio/callback"
    code = _authorization_code(clio, redirect_uri)
    store = MemoryTokenStore()
    tm = clio.manager(store, TokenSet(None, "", None), conn_id="clio_onboard")

    tokens = tm.exchange_code(code, redirect_uri)
    assert store.load("clio_onboard") == tokens
    assert tm.access_token() == tokens.access_token
    assert clio.api_status(tokens.access_token) == 200

    with pytest.raises(ClioAuthError, match="authorization code") as excinfo:
        tm.exchange_code(code, redirect_uri)  # codes are single-use
    assert code not in str(excinfo.value)


def test_every_secret_is_masked_and_absent_from_logs(clio, caplog):
    from airflow.sdk._shared.secrets_masker import redact

    initial = clio.fresh()
    store = MemoryTokenStore()
    with caplog.at_level(logging.DEBUG):
        tm = clio.manager(store, initial, conn_id="clio_masking")
        clio.emu.expire_access_tokens()
        new = tm.refresh_after_401(initial.access_token)
    rotated = store.load("clio_masking")
    secrets = [CLIENT_SECRET, initial.access_token, initial.refresh_token, new, rotated.refresh_token]
    for secret in secrets:
        assert redact(f"x {secret} y") == "x *** y"
        assert secret not in caplog.text
    assert "Refreshed the Clio access token of connection clio_masking" in caplog.text
    assert CLIENT_SECRET not in repr(tm)


# -- real processes --------------------------------------------------------------------------------------

_WORKER = r"""
import json, sys, time
import requests
from airflow_provider_clio.auth import FileTokenStore, TokenManager, TokenSet, VariableTokenStore

cfg = json.loads(sys.stdin.readline())
store = FileTokenStore(cfg["path"]) if cfg["store"] == "file" else VariableTokenStore()
store.load(cfg["conn_id"] + "_warm_up")  # pay the import and connection costs before the start line


def post(url, form):
    return requests.post(url, data=form, timeout=30)


def api(token):
    headers = {"Authorization": "Bearer " + token}
    return requests.get(cfg["url"] + "/grow/users", headers=headers, timeout=30).status_code


tm = TokenManager(
    conn_id=cfg["conn_id"], client_id=cfg["client_id"], client_secret=cfg["client_secret"],
    token_url=cfg["url"] + "/oauth/token", initial=TokenSet.from_json(cfg["initial"]), store=store, post=post,
)
print("ready", flush=True)
start_at = float(sys.stdin.readline())
time.sleep(max(0.0, start_at - time.time()))
token = tm.access_token()
statuses = [api(token)]
if statuses[-1] == 401:
    token = tm.refresh_after_401(token)
    statuses.append(api(token))
if cfg.get("force_refresh"):
    token = tm.refresh_after_401(token)
    statuses.append(api(token))
print(json.dumps({"statuses": statuses, "refreshes": tm.refreshes}), flush=True)
"""


def _subprocess_env() -> dict[str, str]:
    from airflow.configuration import conf

    # Share this process's fernet key: an `airflow` command run earlier in the session may have written
    # airflow.cfg with a generated key this process never read, and Variables must decrypt on both sides.
    return {**os.environ, "AIRFLOW__CORE__FERNET_KEY": conf.get("core", "fernet_key")}


def _run_workers(n: int, config: dict[str, Any], logs: Path) -> list[dict[str, Any]]:
    """Start ``n`` worker processes, release them at one common instant, and return their reports."""
    procs = []
    for i in range(n):
        with (logs / f"worker{i}.log").open("w") as stderr:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _WORKER],
                    env=_subprocess_env(),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                )
            )
    try:
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(json.dumps(config) + "\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
        start_at = time.time() + 0.3
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"{start_at}\n")
            p.stdin.close()
        reports = []
        for i, p in enumerate(procs):
            assert p.stdout is not None
            out = p.stdout.read()
            assert p.wait(timeout=120) == 0, (logs / f"worker{i}.log").read_text()[-3000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _worker_config(clio: Clio, store: str, conn_id: str, initial: TokenSet, path: Path | None = None) -> dict:
    return {
        "store": store,
        "path": str(path) if path else None,
        "conn_id": conn_id,
        "url": clio.emu.url,
        "client_id": clio.client_id,
        "client_secret": clio.client_secret,
        "initial": initial.to_json(),
    }


def _assert_no_secret_in_logs(logs: Path, secrets: list[str | None]) -> None:
    for log_file in logs.glob("worker*.log"):
        text = log_file.read_text()
        for secret in secrets:
            assert not secret or secret not in text, log_file.name


def _assert_all_workers_ended_with_a_working_token(reports: list[dict[str, Any]]) -> None:
    # A worker the OS starts late may already find the winner's token in the store ([200]); the race
    # itself needs at least two workers that started with the expired token.
    statuses = [r["statuses"] for r in reports]
    assert all(s in ([401, 200], [200]) for s in statuses), statuses
    assert statuses.count([401, 200]) >= 2, statuses


@pytest.fixture
def worker_logs(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    logs.mkdir()
    return logs


@pytest.mark.integration
@pytest.mark.parametrize("store_kind", ["file", "variable"])
def test_a_new_process_authenticates_with_the_stored_rotated_token(
    request, clio, store_kind, tmp_path, worker_logs
):
    if store_kind == "variable":
        request.getfixturevalue("airflow_db")
    conn_id = f"clio_new_process_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "tokens.json"
    store: TokenStore = FileTokenStore(path) if store_kind == "file" else VariableTokenStore()
    initial = clio.fresh()
    clock = Clock()
    tm = clio.manager(store, initial, conn_id=conn_id, clock=clock)
    clock.now = initial.expires_at  # the first run outlives its access token
    rotated_access = tm.access_token()
    assert tm.refreshes == 1
    clock.now = time.time()  # back to real time, which the worker's expiry stamps use

    # The next process still has the connection's original, rotated-away pair; the store must win.
    (report,) = _run_workers(
        1, {**_worker_config(clio, store_kind, conn_id, initial, path), "force_refresh": True}, worker_logs
    )
    # 200 with the stored access token, then a forced refresh with the stored refresh token works too.
    assert report == {"statuses": [200, 200], "refreshes": 1}
    assert clio.token_calls(400) == 0
    latest = store.load(conn_id)
    assert latest.access_token != rotated_access
    # And the first process adopts the second one's rotation instead of spending its revoked token.
    clio.emu.expire_access_tokens()
    assert tm.refresh_after_401(rotated_access) == latest.access_token
    _assert_no_secret_in_logs(
        worker_logs, [CLIENT_SECRET, initial.access_token, initial.refresh_token, latest.refresh_token]
    )


@pytest.mark.integration
@pytest.mark.slow
def test_four_processes_refreshing_at_once_with_the_file_lock_make_exactly_one_refresh(
    clio, tmp_path, worker_logs
):
    conn_id = "clio_race_locked"
    path = tmp_path / "tokens.json"
    initial = clio.fresh()
    FileTokenStore(path).save(conn_id, initial)
    clio.emu.expire_access_tokens()  # every worker's first call answers 401

    reports = _run_workers(4, _worker_config(clio, "file", conn_id, initial, path), worker_logs)

    _assert_all_workers_ended_with_a_working_token(reports)
    assert sum(r["refreshes"] for r in reports) == 1
    assert clio.token_calls(200) == 1
    assert clio.token_calls(400) == 0  # nobody even tried the revoked token: no stranding possible
    final = FileTokenStore(path).load(conn_id)
    assert clio.api_status(final.access_token) == 200
    _assert_no_secret_in_logs(worker_logs, [CLIENT_SECRET, initial.refresh_token, final.refresh_token])


@pytest.mark.integration
@pytest.mark.slow
def test_four_processes_without_a_shared_lock_recover_from_invalid_grant(airflow_db, clio, worker_logs):
    # The Variable store has no inter-process lock (tasks run on many machines): losers of the race get
    # invalid_grant and must adopt the winner's tokens from the store instead of stranding the connection.
    conn_id = f"clio_race_variable_{uuid.uuid4().hex[:8]}"
    initial = clio.fresh()
    VariableTokenStore().save(conn_id, initial)
    clio.emu.expire_access_tokens()

    reports = _run_workers(4, _worker_config(clio, "variable", conn_id, initial), worker_logs)

    _assert_all_workers_ended_with_a_working_token(reports)
    assert sum(r["refreshes"] for r in reports) == 1
    assert clio.token_calls(200) == 1
    losers = clio.token_calls(400)
    assert 0 <= losers <= 3
    final = VariableTokenStore().load(conn_id)
    assert clio.api_status(final.access_token) == 200
    print(f"variable-store race: 1 successful refresh, {losers} invalid_grant recovered")
    _assert_no_secret_in_logs(worker_logs, [CLIENT_SECRET, initial.refresh_token, final.refresh_token])


# -- inside a running task ------------------------------------------------------------------------------


def _dag_test(dag: Any) -> Any:
    """Run ``dag.test()`` for a DAG defined in a test (dag.test needs the DAG serialized in a bundle)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    DagBundlesManager().sync_bundles_to_db()
    with create_session() as session:
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
        )
    return dag.test()


@pytest.mark.integration
def test_variable_store_inside_a_running_task_goes_through_the_supervisor(airflow_db, clio, monkeypatch):
    from airflow.sdk import DAG, Variable, task

    from airflow_provider_clio import auth

    conn_id = f"clio_in_task_{uuid.uuid4().hex[:8]}"
    initial = clio.fresh()
    VariableTokenStore().save(conn_id, initial)  # like `airflow clio auth`: through the metadata DB
    clio.emu.expire_access_tokens()

    sdk_calls: list[str] = []
    sdk_get, sdk_set = Variable.get.__func__, Variable.set.__func__  # type: ignore[attr-defined]

    def spy_get(cls, key, *args, **kwargs):
        sdk_calls.append(f"get {key}")
        return sdk_get(cls, key, *args, **kwargs)

    def spy_set(cls, key, *args, **kwargs):
        sdk_calls.append(f"set {key}")
        return sdk_set(cls, key, *args, **kwargs)

    monkeypatch.setattr(Variable, "get", classmethod(spy_get))
    monkeypatch.setattr(Variable, "set", classmethod(spy_set))
    outcome: dict[str, Any] = {}

    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    with DAG(dag_id=f"clio_auth_{uuid.uuid4().hex[:8]}", schedule=None, start_date=start) as dag:

        @task
        def use_clio_tokens() -> None:
            outcome["in_task_runner"] = auth._in_task_runner()
            tm = clio.manager(VariableTokenStore(), TokenSet(None, "", None), conn_id=conn_id)
            token = tm.access_token()
            outcome["first"] = (token == initial.access_token, clio.api_status(token))
            token = tm.refresh_after_401(token)
            outcome["after_refresh"] = clio.api_status(token)
            stored = VariableTokenStore().load(conn_id)
            outcome["stored_is_new"] = stored is not None and stored.access_token == token

        use_clio_tokens()

    run = _dag_test(dag)
    assert run.state == "success"
    assert outcome == {
        "in_task_runner": True,
        "first": (True, 401),
        "after_refresh": 200,
        "stored_is_new": True,
    }
    key = VariableTokenStore().key(conn_id)
    assert sdk_calls.count(f"set {key}") == 1
    assert f"get {key}" in sdk_calls

    # Outside the task again: the plain-process path reads the rotated pair from the metadata DB.
    assert not auth._in_task_runner()
    stored = VariableTokenStore().load(conn_id)
    assert stored.refresh_token != initial.refresh_token
    assert clio.api_status(stored.access_token) == 200


_PROBE_DAG = """
from __future__ import annotations

import datetime
import json
import os

import requests
from airflow.sdk import DAG, task

with DAG("clio_token_probe", schedule=None, start_date=datetime.datetime(2026, 1, 1)) as dag:

    @task
    def probe():
        from airflow_provider_clio import auth
        from airflow_provider_clio.auth import TokenManager, TokenSet, VariableTokenStore

        try:  # what a real worker forbids, and why the store must not use the metadata DB here
            from airflow.models import Pool

            Pool.get_pool("default_pool")
            orm_blocked = False
        except RuntimeError as exc:
            orm_blocked = "not allowed" in str(exc)
        url = os.environ["CLIO_PROBE_URL"]
        tm = TokenManager(
            conn_id=os.environ["CLIO_PROBE_CONN_ID"],
            client_id=os.environ["CLIO_PROBE_CLIENT_ID"],
            client_secret=os.environ["CLIO_PROBE_CLIENT_SECRET"],
            token_url=url + "/oauth/token",
            initial=TokenSet(None, "", None),
            store=VariableTokenStore(),
            post=lambda u, form: requests.post(u, data=form, timeout=30),
        )

        def api(token):
            headers = {"Authorization": "Bearer " + token}
            return requests.get(url + "/grow/users", headers=headers, timeout=30).status_code

        token = tm.access_token()
        statuses = [api(token)]
        token = tm.refresh_after_401(token)
        statuses.append(api(token))
        stored = VariableTokenStore().load(os.environ["CLIO_PROBE_CONN_ID"])
        result = {
            "in_task_runner": auth._in_task_runner(),
            "orm_blocked": orm_blocked,
            "pid": os.getpid(),
            "statuses": statuses,
            "refreshes": tm.refreshes,
            "stored_is_new": stored is not None and stored.access_token == token,
        }
        with open(os.environ["CLIO_PROBE_OUT"], "w") as f:
            json.dump(result, f)

    probe()
"""

_RUN_WITH_EXECUTOR = """
import sys
from airflow.dag_processing.bundles.manager import DagBundlesManager
DagBundlesManager().sync_bundles_to_db()
sys.path.insert(0, sys.argv[1])
from clio_token_probe import dag
print("STATE", dag.test(use_executor=True).state)
"""

_STORE_IO = """
import json, sys
from airflow_provider_clio.auth import TokenSet, VariableTokenStore
conn_id, tokens = sys.stdin.readline().strip(), sys.stdin.readline().strip()
if tokens:
    VariableTokenStore().save(conn_id, TokenSet.from_json(tokens))
loaded = VariableTokenStore().load(conn_id)
print(loaded.to_json() if loaded else "null")
"""


@pytest.mark.integration
@pytest.mark.scheduler
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_variable_store_in_a_task_the_local_executor_runs_under_a_real_supervisor(tmp_path, clio):
    # dag.test() runs the task in-process; a deployed worker forks it under a supervisor, blocks the ORM and
    # serves Variables through the execution API. Run that for real: api-server + LocalExecutor.
    import signal
    import socket
    import urllib.request

    home = tmp_path / "home"
    dags = home / "dags"
    dags.mkdir(parents=True)
    (dags / "clio_token_probe.py").write_text(_PROBE_DAG)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conn_id = "clio_real_worker"
    out = tmp_path / "probe.json"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "CLIO_PROBE_URL": clio.emu.url,
        "CLIO_PROBE_CONN_ID": conn_id,
        "CLIO_PROBE_CLIENT_ID": clio.client_id,
        "CLIO_PROBE_CLIENT_SECRET": clio.client_secret,
        "CLIO_PROBE_OUT": str(out),
    }
    airflow = str(Path(sys.executable).with_name("airflow"))

    def run(args: list[str], stdin: str = "") -> str:
        # Output goes to a file, not a pipe: executor workers outlive the command and would hold a pipe open.
        log = tmp_path / "command.log"
        with log.open("w") as output:
            proc = subprocess.Popen(
                args,
                env=env,
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            try:
                proc.communicate(stdin, timeout=300)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # whatever the command left behind in its session
        text = log.read_text()
        assert proc.returncode == 0, text[-3000:]
        return text

    run([airflow, "db", "migrate"])
    initial = clio.fresh()
    run([sys.executable, "-c", _STORE_IO], f"{conn_id}\n{initial.to_json()}\n")  # like `airflow clio auth`
    clio.emu.expire_access_tokens()

    with (tmp_path / "api-server.log").open("w") as api_log:
        api = subprocess.Popen(
            [airflow, "api-server", "--port", str(port), "--apps", "execution"],
            env=env,
            stdout=api_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert api.poll() is None, (tmp_path / "api-server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/execution/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "api-server did not become healthy"
            time.sleep(1)
        assert "STATE success" in run([sys.executable, "-c", _RUN_WITH_EXECUTOR, str(dags)])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(api.pid, signal.SIGTERM)
        try:
            api.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(api.pid, signal.SIGKILL)
            api.wait(timeout=30)

    result = json.loads(out.read_text())
    assert result["pid"] != os.getpid()
    assert result == {
        "in_task_runner": True,
        "orm_blocked": True,
        "pid": result["pid"],
        "statuses": [401, 200],
        "refreshes": 1,
        "stored_is_new": True,
    }
    stored = TokenSet.from_json(run([sys.executable, "-c", _STORE_IO], f"{conn_id}\n\n").strip())
    assert stored.refresh_token != initial.refresh_token
    assert clio.api_status(stored.access_token) == 200
