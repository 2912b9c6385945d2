# SPDX-License-Identifier: Apache-2.0
"""TokenManager against the real emulator and real processes: expiry, refresh, rotation races, saves."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_clio.auth import (
    FileTokenStore,
    MemoryTokenStore,
    TokenSet,
    TokenStore,
    VariableTokenStore,
)
from airflow_provider_clio.auth.tokens import _local_lock
from airflow_provider_clio.exceptions import (
    ClioAuthError,
    ClioRetryableError,
    ClioTokenRaceError,
    scrub,
)

# -- expiry and refresh --------------------------------------------------------------------------------------


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


def test_expiry_mid_run_refreshes_ahead_of_time_and_persists_the_rotation_before_use(clio, clock):
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
    assert clio.direct_refresh(initial.refresh_token).json()["error"] == "invalid_grant"


def test_short_lived_tokens_are_not_refreshed_on_every_call(clio_with):
    clio = clio_with(access_token_ttl=60)
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


# -- rotation races ---------------------------------------------------------------------------------------


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
    assert clio.direct_refresh(initial.refresh_token).status_code == 200  # rotated away elsewhere, lost
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
    for secret in (initial.access_token, initial.refresh_token, clio.client_secret):
        assert secret not in message
        assert secret not in caplog.text


def test_invalid_grant_adopts_the_tokens_a_slower_winner_saves_while_it_waits(clio):
    initial = clio.fresh()
    conn_id = "clio_late_winner"
    store = MemoryTokenStore()
    # Another worker refreshed with the same token first but has not saved yet.
    winner_body = clio.direct_refresh(initial.refresh_token).json()
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
    body = clio.direct_refresh(initial.refresh_token).json()
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
    winner_body = clio.direct_refresh(r1).json()  # the winner refreshed and has not stored yet

    with pytest.raises(ClioTokenRaceError, match="another process refreshed with the same token") as excinfo:
        tm.access_token()
    assert isinstance(excinfo.value, ClioRetryableError)
    assert not isinstance(excinfo.value, AirflowFailException)
    assert "airflow clio auth --conn-id clio_slow_winner" in str(excinfo.value)
    assert r1 not in str(excinfo.value)
    assert sleeps == [0.5, 0.5]
    assert clio.token_calls(400) == 1
    # The store moved on from the connection's token, which was therefore never presented: still valid.
    assert clio.direct_refresh(connection_token).status_code == 200

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
    clio.direct_refresh(stale.refresh_token)  # the stored pair was rotated away long ago
    store = MemoryTokenStore({conn_id: TokenSet(None, stale.refresh_token, None)})
    # Whatever the connection holds is older than the store's chain (the store wins); presenting a revoked
    # token may make Clio revoke the whole chain (reuse detection), so it is not tried as a last resort.
    connection_token = clio.fresh().refresh_token

    tm = clio.manager(store, TokenSet(None, connection_token, None), conn_id=conn_id)
    with pytest.raises(ClioRetryableError):
        tm.access_token()
    assert clio.token_calls(400) == 1
    assert clio.direct_refresh(connection_token).status_code == 200  # never spent


def test_no_refresh_token_asks_for_onboarding(clio):
    tm = clio.manager(MemoryTokenStore(), TokenSet(None, "", None), conn_id="clio_new")
    with pytest.raises(ClioAuthError, match="airflow clio auth --conn-id clio_new"):
        tm.access_token()
    assert clio.token_calls() == 0


# -- locks and masking ----------------------------------------------------------------------------------


def test_a_forked_child_does_not_inherit_a_held_refresh_lock():
    conn_id = "clio_fork"
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with _local_lock(conn_id):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(30)
    try:
        pid = os.fork()
        if pid == 0:  # the child: a Celery prefork worker, a task using multiprocessing, ...
            os._exit(0 if _local_lock(conn_id).acquire(timeout=10) else 1)
    finally:
        release.set()
        thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_every_secret_is_masked_and_absent_from_logs(clio, caplog):
    from airflow.sdk._shared.secrets_masker import redact

    initial = clio.fresh()
    store = MemoryTokenStore()
    with caplog.at_level(logging.DEBUG):
        tm = clio.manager(store, initial, conn_id="clio_masking")
        clio.emu.expire_access_tokens()
        new = tm.refresh_after_401(initial.access_token)
    rotated = store.load("clio_masking")
    secrets = [clio.client_secret, initial.access_token, initial.refresh_token, new, rotated.refresh_token]
    for secret in secrets:
        assert redact(f"x {secret} y") == "x *** y"
        assert secret not in caplog.text
    assert "Refreshed the Clio access token of connection clio_masking" in caplog.text
    assert clio.client_secret not in repr(tm)


# -- saving a rotated pair (issue 8, finding 4) -------------------------------------------------------


def test_a_save_that_fails_once_is_retried_before_the_new_token_is_used(clio, caplog, failing_store):
    # Before the fix the pair stayed in memory, to be saved on the next call: a short process (one sensor
    # poke) ended with it unsaved, and the next process presented the revoked token.
    store = failing_store(fail=1)
    sleeps: list[float] = []
    initial = TokenSet(None, clio.fresh().refresh_token, None)
    tm = clio.manager(store, initial, conn_id="clio_flaky", sleep=sleeps.append)
    token = tm.access_token()
    assert sleeps == [0.5]
    stored = store.load("clio_flaky")
    assert stored is not None
    assert stored.access_token == token  # stored before the caller got it
    assert clio.api_status(token) == 200
    assert "Could not store the rotated Clio tokens of clio_flaky (OSError), attempt 1 of 5" in caplog.text
    assert token not in caplog.text
    assert stored.refresh_token not in caplog.text

    # This process ends here. The next one starts from the connection's (rotated-away) token and carries on.
    following = clio.manager(store, initial, conn_id="clio_flaky")
    assert following.access_token() == token
    clio.emu.expire_access_tokens()
    assert clio.api_status(following.refresh_after_401(token)) == 200
    assert clio.token_calls(400) == 0


@pytest.mark.integration
def test_the_process_after_a_save_hiccup_finds_the_rotated_pair(
    clio, clock, tmp_path, worker_logs, failing_file_store
):
    conn_id = f"clio_hiccup_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "tokens.json"
    initial = clio.fresh()
    tm = clio.manager(failing_file_store(path, fail=1), initial, conn_id=conn_id, clock=clock)
    clock.now = initial.expires_at  # the access token expired: R1 -> R2, and the first save fails
    rotated = tm.access_token()
    assert tm.refreshes == 1
    # The first process ends right away (a sensor poke); a real new process reads the store and refreshes.
    (report,) = _run_workers(
        1, {**_worker_config(clio, "file", conn_id, initial, path), "force_refresh": True}, worker_logs
    )
    assert report == {"statuses": [200, 200], "refreshes": 1}
    assert clio.token_calls(400) == 0
    assert FileTokenStore(path).load(conn_id).access_token != rotated


def test_a_store_that_keeps_failing_stops_with_a_way_to_recover_and_no_secret(clio, caplog, failing_store):
    conn_id = "clio_store_down"
    store = failing_store(fail=5)
    sleeps: list[float] = []
    initial = TokenSet(None, clio.fresh().refresh_token, None)
    tm = clio.manager(store, initial, conn_id=conn_id, sleep=sleeps.append)
    with caplog.at_level(logging.DEBUG), pytest.raises(ClioAuthError) as excinfo:
        tm.access_token()
    message = str(excinfo.value)
    assert sleeps == [0.5, 1.0, 2.0, 4.0]
    # Not retryable: a retry runs in a new process, which would read the revoked token from the store.
    assert isinstance(excinfo.value, AirflowFailException)
    assert "failed to save the new pair 5 times (OSError" in message
    assert "only in this process's memory" in message
    assert f"airflow clio auth --conn-id {conn_id}" in message
    # The driver's error quotes the tokens: neither it nor any token may ride along.
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__context__ is None
    for secret in [*clio.emu.issued_tokens(clio.client_id), clio.client_secret]:
        assert secret not in message
        assert secret not in caplog.text
    assert store.load(conn_id) is None

    # The pair was kept, never used: once the store recovers, this process saves it before handing it out.
    token = tm.access_token()
    assert store.load(conn_id).access_token == token
    assert clio.api_status(token) == 200
    assert tm.refreshes == 1


@pytest.mark.parametrize("after_401", [False, True])
def test_a_stale_pair_saved_over_ours_never_brings_back_the_rotated_away_refresh_token(
    clio, clock, after_401
):
    # A slower process saves the pair it got long ago over ours (VariableTokenStore has no lock), so the
    # store holds R1 again after our R1 -> R2 rotation. Adopting R1 (it differs from ours, so it looks
    # "newer") would present a revoked token and throw away R2, the only refresh token Clio still accepts.
    conn_id = "clio_stale_save"
    r1 = clio.fresh()
    store = MemoryTokenStore({conn_id: TokenSet(r1.access_token, r1.refresh_token, clock.now + 100)})
    tm = clio.manager(store, TokenSet(None, "connection-token-long-gone", None), conn_id=conn_id, clock=clock)
    a2 = tm.access_token()  # A1 expires within the margin: R1 -> R2
    assert tm.refreshes == 1
    late = TokenSet(r1.access_token, r1.refresh_token, clock.now + 10 * 86400)
    store.save(conn_id, late)  # the late writer

    clock.now += 86400  # a day later
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
    assert clio.direct_refresh(newest.refresh_token).status_code == 200


def test_secrets_lists_every_token_seen_including_rotated_away_refresh_tokens(clio, clock):
    conn_id = "clio_secrets"
    initial, stored = clio.fresh(), clio.fresh()
    store = MemoryTokenStore({conn_id: stored})
    tm = clio.manager(store, initial, conn_id=conn_id, clock=clock)
    assert tm.secrets() == initial.values()
    assert tm.access_token() == stored.access_token
    clock.now = stored.expires_at
    tm.access_token()  # stored R -> R2
    second = store.load(conn_id)
    clock.now = second.expires_at
    tm.access_token()  # R2 -> R3: R2 is rotated away now
    third = store.load(conn_id)

    assert tm.secrets() == [*initial.values(), *stored.values(), *second.values(), *third.values()]
    assert clio.client_secret not in tm.secrets()
    # An error body echoing a rotated-away refresh token is scrubbed with them (issue 8, finding 10).
    assert second.refresh_token not in scrub(f"token {second.refresh_token} was already used", tm.secrets())


# -- refresh tokens that do not rotate ----------------------------------------------------------------


def test_a_refresh_without_rotation_keeps_the_refresh_token(stub_token_server, stub_manager, clock):
    refresh = "stub-refresh-token-0001"
    stub_token_server.refresh_tokens.add(refresh)
    store = MemoryTokenStore()
    tm = stub_manager(
        store, TokenSet(None, refresh, None), conn_id="stub_keep", rotates_refresh_token=False, clock=clock
    )
    first = tm.access_token()
    assert first == stub_token_server.issued[-1]
    assert store.load("stub_keep") == TokenSet(first, refresh, clock.now + 2592000)
    clock.now += 2592000  # 30 days later
    second = tm.access_token()
    assert second == stub_token_server.issued[-1] != first
    assert tm.refreshes == 2
    assert [form["refresh_token"] for form in stub_token_server.forms] == [refresh, refresh]
    assert set(tm.secrets()) == {refresh, first, second}


def test_without_rotation_a_store_outage_loses_nothing_and_waits_for_nothing(
    stub_token_server, stub_manager, failing_store, caplog
):
    refresh = "stub-refresh-token-0002"
    stub_token_server.refresh_tokens.add(refresh)
    sleeps: list[float] = []
    store = failing_store(fail=99)
    tm = stub_manager(store, TokenSet(None, refresh, None), rotates_refresh_token=False, sleep=sleeps.append)
    token = tm.access_token()  # no error: the refresh token the store (or connection) holds stays valid
    assert token == stub_token_server.issued[-1]
    assert sleeps == []
    assert "the stored refresh token stays valid" in caplog.text
    # A new process holding only the connection's token still gets in.
    following = stub_manager(MemoryTokenStore(), TokenSet(None, refresh, None), rotates_refresh_token=False)
    assert following.access_token() == stub_token_server.issued[-1] != token


@pytest.mark.parametrize("rotates", [True, False])
def test_a_rejected_stored_token_is_a_possible_race_only_when_tokens_rotate(
    stub_token_server, stub_manager, rotates
):
    # With rotation, another worker may have spent the stored token a moment ago: wait, then a retryable
    # error. Without rotation nobody else can have spent it: the answer is final at once.
    conn_id = f"stub_revoked_{rotates}"
    revoked = TokenSet(None, "stub-refresh-revoked-01", None)
    sleeps: list[float] = []
    tm = stub_manager(
        MemoryTokenStore({conn_id: revoked}),
        revoked,
        conn_id=conn_id,
        rotates_refresh_token=rotates,
        sleep=sleeps.append,
    )
    with pytest.raises(ClioAuthError if not rotates else ClioTokenRaceError) as excinfo:
        tm.access_token()
    assert f"airflow clio auth --conn-id {conn_id}" in str(excinfo.value)
    assert isinstance(excinfo.value, ClioTokenRaceError) is rotates
    assert (sleeps != []) is rotates
    assert len(stub_token_server.forms) == 1


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


def _worker_config(clio: Any, store: str, conn_id: str, initial: TokenSet, path: Path | None = None) -> dict:
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
    request, clio, clock, store_kind, tmp_path, worker_logs
):
    if store_kind == "variable":
        request.getfixturevalue("airflow_db")
    conn_id = f"clio_new_process_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "tokens.json"
    store: TokenStore = FileTokenStore(path) if store_kind == "file" else VariableTokenStore()
    initial = clio.fresh()
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
        worker_logs, [clio.client_secret, initial.access_token, initial.refresh_token, latest.refresh_token]
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
    _assert_no_secret_in_logs(worker_logs, [clio.client_secret, initial.refresh_token, final.refresh_token])


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
    _assert_no_secret_in_logs(worker_logs, [clio.client_secret, initial.refresh_token, final.refresh_token])


def test_a_stored_token_that_stays_dead_ends_the_task_instead_of_burning_its_retries(clio):
    # The soak test's finding: a process killed between Clio's rotation and its save leaves a revoked token in
    # the store for good. The first waits are a possible race (retryable); after max_race_waits the same dead
    # token is a broken chain, and the error says a person must authorize again.
    conn_id = "clio_broken_chain"
    r1 = clio.fresh().refresh_token
    store = MemoryTokenStore({conn_id: TokenSet(None, r1, None)})
    tm = clio.manager(
        store,
        TokenSet(None, "", None),
        conn_id=conn_id,
        sleep=lambda _s: None,
        invalid_grant_wait=1.0,
        poll_interval=0.5,
        max_race_waits=3,
    )
    assert clio.direct_refresh(r1).status_code == 200  # rotated by a process that died before saving

    for _ in range(2):
        with pytest.raises(ClioTokenRaceError):
            tm.access_token()
    with pytest.raises(ClioAuthError, match="after 3 waits") as excinfo:
        tm.access_token()
    assert not isinstance(excinfo.value, ClioRetryableError)
    assert "airflow clio auth --conn-id clio_broken_chain" in str(excinfo.value)
    assert r1 not in str(excinfo.value)
    assert clio.token_calls(400) == 1  # the dead token was presented once only
