# SPDX-License-Identifier: Apache-2.0
"""The real ``airflow clio ...`` commands, run as subprocesses on the test AIRFLOW_HOME and the emulator."""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_clio.auth import TokenSet, VariableTokenStore
from airflow_provider_clio.cli.definition import positive_number, regions_argument, slots_argument

pytestmark = pytest.mark.integration

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
CLIENT_SECRET = "cli-tests-client-secret-93ac"
REDIRECT_URI = "http://localhost:8910/callback"


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment for a child process that shares this test session's Airflow."""
    from airflow.configuration import conf

    # The first `airflow` command writes airflow.cfg with a generated fernet key that this process never
    # read: without pinning one key, Variables the CLI writes would be unreadable here (and vice versa).
    return {**os.environ, "AIRFLOW__CORE__FERNET_KEY": conf.get("core", "fernet_key"), **(extra or {})}


def airflow(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess:
    """Run the ``airflow`` CLI of this venv with the test AIRFLOW_HOME (set by tests/conftest.py)."""
    return subprocess.run(
        [AIRFLOW, *args],
        env=subprocess_env(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def start_airflow(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the ``airflow`` CLI with pipes (stdin is closed: no paste, only the redirect can answer)."""
    return subprocess.Popen(
        [AIRFLOW, *args],
        env=subprocess_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_authorize_url(proc: subprocess.Popen) -> str:
    """Return the authorize URL the running ``airflow clio auth`` prints (on stdout or stderr)."""
    stream = proc.stdout if "--print-only" not in proc.args else proc.stderr
    assert stream is not None
    while True:
        line = stream.readline()
        assert line, "the command ended before printing the authorize URL"
        proc.head = getattr(proc, "head", "") + line  # type: ignore[attr-defined]
        if "/oauth/authorize?" in line:
            return line.strip()


def finish(proc: subprocess.Popen, paste: str | None = None) -> tuple[str, str]:
    """Paste ``paste`` (if any), wait for the command, return its whole ``(stdout, stderr)``."""
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        if paste is not None:
            assert proc.stdin is not None
            proc.stdin.write(paste)
            proc.stdin.close()
        # Read through the same buffered streams read_authorize_url used (communicate() would skip them).
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    head = getattr(proc, "head", "")
    return (head + out, err) if "--print-only" not in proc.args else (out, head + err)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def emulator(clio_emulator_factory: Callable[..., Any]) -> Any:
    return clio_emulator_factory(rate_limit=1000)


def _app(emulator: Any) -> str:
    client_id = f"cli-app-{uuid.uuid4().hex[:6]}"
    emulator.register_app(client_id=client_id, client_secret=CLIENT_SECRET, region="us")
    return client_id


def _connection(
    emulator: Any, *, refresh_token: bool = True, secret: str = CLIENT_SECRET
) -> tuple[str, dict]:
    """Register a fresh app and return ``(conn_id, env)`` defining its connection in AIRFLOW_CONN_*."""
    conn_id = f"clio_cli_{uuid.uuid4().hex[:8]}"
    client_id = _app(emulator)
    env_name, conn_json = emulator.connection_env(conn_id=conn_id, client_id=client_id)
    conn = json.loads(conn_json)
    conn["password"] = secret
    if not refresh_token:
        conn["extra"].pop("refresh_token")
    return conn_id, {env_name: json.dumps(conn), "_CLIO_CLIENT_ID": client_id}


def _db_connection(
    emulator: Any, *, refresh_token: bool = True, secret: str = CLIENT_SECRET, **extra: Any
) -> tuple[str, str, dict[str, Any]]:
    """
    Register a fresh app and store its connection in the metadata database, as `airflow connections add`
    and the UI do; return ``(conn_id, client_id, extra)``.
    """
    from airflow.models import Connection
    from airflow.utils.session import create_session

    conn_id = f"clio_db_{uuid.uuid4().hex[:8]}"
    client_id = _app(emulator)
    conn = emulator.connection(client_id=client_id, **extra)
    if not refresh_token:
        conn["extra"].pop("refresh_token")
    with create_session() as session:
        session.add(
            Connection(
                conn_id=conn_id,
                conn_type="clio",
                host=conn["host"],
                login=client_id,
                password=secret,
                extra=json.dumps(conn["extra"]),
            )
        )
    return conn_id, client_id, conn["extra"]


def _create_pool(name: str, slots: int) -> None:
    from airflow.models import Pool

    Pool.create_or_update_pool(name, slots, description="cli tests", include_deferred=True)


def _code(emulator: Any, client_id: str, state: str = "s") -> str:
    location = requests.get(
        f"{emulator.url}/oauth/authorize",
        params={
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "state": state,
            "response_type": "code",
        },
        allow_redirects=False,
        timeout=30,
    ).headers["Location"]
    return parse_qs(urlsplit(location).query)["code"][0]


def _assert_no_secrets(result: Any, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in result.stdout
        assert secret not in result.stderr


# -- registration ----------------------------------------------------------------------------------------


def test_clio_group_is_registered_with_airflows_cli():
    result = airflow("clio", "--help")
    assert result.returncode == 0, result.stderr
    for command in ("auth", "pools", "check"):
        assert command in result.stdout


def test_declaring_the_commands_does_not_import_the_hook():
    # `airflow --help` builds every provider's command list; ours must stay a few argparse definitions.
    probe = (
        "import sys\n"
        "from airflow_provider_clio.cli.definition import get_clio_cli_commands\n"
        "(group,) = get_clio_cli_commands()\n"
        "assert group.name == 'clio' and [c.name for c in group.subcommands] == ['auth', 'pools', 'check']\n"
        "ours = ('airflow_provider_clio.cli.commands', 'airflow_provider_clio.hooks.clio')\n"
        "loaded = [m for m in ours if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", [("providers", "list"), ("providers", "behaviours")])
def test_airflow_lists_the_provider(command):
    result = airflow(*command)
    assert result.returncode == 0, result.stderr
    assert ("airflow-provider-clio" if command[1] == "list" else "clio") in result.stdout


# -- argument parsing -------------------------------------------------------------------------------------


def test_region_and_slots_arguments():
    assert regions_argument("all") == ["us", "ca", "eu", "au"]
    assert regions_argument(" EU, au,eu ") == ["eu", "au"]
    assert slots_argument("7") == 7
    for bad in ("", "uk", "us,uk", "all,us"):
        with pytest.raises(argparse.ArgumentTypeError):
            regions_argument(bad)
    for bad in ("0", "-1", "three"):
        with pytest.raises(argparse.ArgumentTypeError):
            slots_argument(bad)
    assert positive_number("4.5") == 4.5
    for bad in ("0", "-3", "nan", "inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_number(bad)


# -- pools --------------------------------------------------------------------------------------------------


def _pool(name: str) -> tuple[int, bool]:
    from airflow.models import Pool

    pool = Pool.get_pool(name)
    assert pool is not None, name
    return pool.slots, pool.include_deferred


def test_pools_creates_the_region_pools_and_updates_them(airflow_db):
    result = airflow("clio", "pools")
    assert result.returncode == 0, result.stderr
    for region in ("us", "ca", "eu", "au"):
        assert _pool(f"clio_{region}") == (3, True)
        assert f"Pool clio_{region} " in result.stdout

    try:
        result = airflow("clio", "pools", "--slots", "5", "--region", "au", "--no-include-deferred")
        assert result.returncode == 0, result.stderr
        assert "Pool clio_au updated: 5 slots, include_deferred=False" in result.stdout
        assert _pool("clio_au") == (5, False)
        assert _pool("clio_us") == (3, True)  # untouched
    finally:
        assert airflow("clio", "pools", "--region", "au").returncode == 0  # other tests expect the defaults
    assert _pool("clio_au") == (3, True)


def test_pools_rejects_bad_arguments(airflow_db):
    result = airflow("clio", "pools", "--region", "uk")
    assert result.returncode == 2
    assert "expected 'all' or a comma list" in result.stderr
    result = airflow("clio", "pools", "--slots", "0")
    assert result.returncode == 2


def test_pools_sizes_the_connections_pool_from_the_limit_and_requests_per_slot(airflow_db, emulator):
    # Issue 8 finding 6: 3 slots at requests_per_slot 1.5 sent 4.5 req/s; the pool must get floor(3 / 1.5).
    from airflow.models import Pool

    # The region pool at its defaults, here rather than from an earlier test (xdist may run that elsewhere).
    Pool.create_or_update_pool("clio_us", slots=3, description="clio us", include_deferred=True)
    pool = f"clio_sized_{uuid.uuid4().hex[:6]}"
    conn_id, _, _ = _db_connection(emulator, requests_per_slot=1.5, pool=pool)
    result = airflow("clio", "pools", "--conn-id", conn_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Pool {pool} created: 2 slots, include_deferred=True (limit 3 req/s / 1.5 req/s per slot)" in (
        result.stdout
    )
    assert _pool(pool) == (2, True)
    assert _pool("clio_us") == (3, True)  # only the connection's pool

    result = airflow("clio", "pools", "--conn-id", conn_id, "--limit", "1")
    assert result.returncode == 1
    assert "requests_per_slot 1.5 exceeds the limit of 1 req/s" in result.stderr


# -- check ------------------------------------------------------------------------------------------


def test_check_finds_a_connection_stored_in_the_database(airflow_db, emulator):
    # Where `airflow connections add` and the UI put it: a plain CLI process's Task SDK lookup misses it.
    pool = f"clio_check_{uuid.uuid4().hex[:6]}"
    _create_pool(pool, 3)
    conn_id, client_id, extra = _db_connection(emulator, pool=pool)
    result = airflow("clio", "check", "--conn-id", conn_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK: Connected to Clio (us) at {emulator.url} as application {client_id}" in result.stdout
    assert f"OK: Token store: 'clio_oauth_tokens__{conn_id}' reads back what was written." in result.stdout
    assert (
        f"OK: Pool: {pool} (3 slots x 1 req/s per slot = 3 req/s within the limit of 3 req/s; "
        "deferred tasks keep their slot)." in result.stdout
    )
    assert "Rate: 1 req/s per pool slot" in result.stdout
    stored = VariableTokenStore().load(conn_id)  # the check refreshed and rotated: the store has the pair
    assert stored is not None
    _assert_no_secrets(result, [CLIENT_SECRET, extra["refresh_token"], stored.refresh_token])
    _assert_no_secrets(result, [stored.access_token or "-"])


def test_airflows_own_connection_test_works_on_a_stored_connection(airflow_db, emulator):
    # docs/troubleshooting.md's workaround for the UI's Test button answering "Bad Request" on 3.3.2.
    conn_id, _, extra = _db_connection(emulator)
    result = airflow("connections", "test", conn_id, env={"AIRFLOW__CORE__TEST_CONNECTION": "Enabled"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Connection success!" in result.stdout
    _assert_no_secrets(result, [CLIENT_SECRET, extra["refresh_token"]])


def test_check_fails_when_the_pool_exceeds_the_limit(airflow_db, emulator):
    pool = f"clio_over_{uuid.uuid4().hex[:6]}"
    _create_pool(pool, 3)
    conn_id, _, _ = _db_connection(emulator, pool=pool, requests_per_slot=1.5)
    result = airflow("clio", "check", "--conn-id", conn_id)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "OK: Connected to Clio" in result.stdout
    assert (
        f"FAILED: Pool: {pool}: 3 slots x 1.5 req/s per slot = 4.5 req/s exceeds the limit of 3 req/s "
        f"(expect 429s). Run `airflow clio pools --conn-id {conn_id}` (sets 2 slots)" in result.stdout
    )
    # A higher limit (Clio raised the application's) makes the same pool fit.
    result = airflow("clio", "check", "--conn-id", conn_id, "--limit", "4.5")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_fails_when_the_pool_does_not_count_deferred_tasks(airflow_db, emulator):
    # Issue 8 finding 11: a deferred sensor's trigger polls on the slot its task keeps only with
    # include_deferred; a task cannot read that on Airflow 3, so `airflow clio check` does.
    from airflow.models import Pool

    pool = f"clio_nodefer_{uuid.uuid4().hex[:6]}"
    Pool.create_or_update_pool(pool, 3, description="cli tests", include_deferred=False)
    conn_id, _, _ = _db_connection(emulator, pool=pool)
    result = airflow("clio", "check", "--conn-id", conn_id)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "OK: Connected to Clio" in result.stdout
    assert (
        f"FAILED: Pool: {pool} has include_deferred off: a deferrable ClioRecordsSensor would give its "
        "slot back while its trigger keeps polling" in result.stdout
    )
    assert f"Run `airflow clio pools --conn-id {conn_id} --include-deferred`." in result.stdout
    fixed = airflow("clio", "pools", "--conn-id", conn_id, "--include-deferred")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    result = airflow("clio", "check", "--conn-id", conn_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deferred tasks keep their slot" in result.stdout


def test_check_catches_a_secrets_backend_shadowing_the_token_variable(airflow_db, emulator, tmp_path):
    pool = f"clio_shadow_{uuid.uuid4().hex[:6]}"
    _create_pool(pool, 3)
    conn_id, client_id, _ = _db_connection(emulator, pool=pool)
    # A copy of a token pair kept in a secrets backend under the token Variable's key: every read gets it.
    refresh = emulator.issue_refresh_token(client_id)
    access, expires_at = emulator.issue_access_token(client_id)
    stale = TokenSet(access_token=access, refresh_token=refresh, expires_at=expires_at)
    variables = tmp_path / "variables.json"
    variables.write_text(json.dumps({f"clio_oauth_tokens__{conn_id}": stale.to_json()}))
    backend = {
        "AIRFLOW__SECRETS__BACKEND": "airflow.secrets.local_filesystem.LocalFilesystemBackend",
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"variables_file_path": str(variables)}),
    }
    result = airflow("clio", "check", "--conn-id", conn_id, env=backend)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "OK: Connected to Clio" in result.stdout
    assert "FAILED: Token store: reading the Variable" in result.stdout
    assert "a secrets backend probably holds the same key" in result.stdout
    _assert_no_secrets(result, [refresh, access])


def test_check_fails_with_a_nonzero_exit_and_no_secret(airflow_db, emulator):
    conn_id, _, extra = _db_connection(emulator, secret="wrong-client-secret-7731", pool="clio_nowhere")
    result = airflow("clio", "check", "--conn-id", conn_id)
    assert result.returncode == 1
    assert "FAILED: ClioAuthError" in result.stdout
    assert "FAILED: Pool: clio_nowhere does not exist; run `airflow clio pools --conn-id" in result.stdout
    _assert_no_secrets(result, ["wrong-client-secret-7731", extra["refresh_token"]])


def test_check_explains_a_broken_connection(airflow_db):
    env = {"AIRFLOW_CONN_CLIO_BROKEN": '{"conn_type": "clio", "login": "app", "extra": {"region": "us"}}'}
    result = airflow("clio", "check", "--conn-id", "clio_broken", env=env)
    assert result.returncode == 1
    assert "password (the OAuth client secret) is empty" in result.stderr


def test_check_names_a_missing_connection(airflow_db):
    result = airflow("clio", "check", "--conn-id", "clio_missing")
    assert result.returncode == 1
    assert "connection 'clio_missing' is not defined (looked in the metadata database" in result.stderr
    assert "Traceback" not in result.stderr


# -- auth -------------------------------------------------------------------------------------------


def test_auth_exchanges_a_code_and_stores_the_tokens(airflow_db, emulator):
    conn_id, client_id, _ = _db_connection(emulator, refresh_token=False)
    code = _code(emulator, client_id)

    result = airflow("clio", "auth", "--conn-id", conn_id, "--code", code)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{emulator.url}/oauth/authorize?response_type=code&client_id={client_id}" in result.stdout
    assert f"Airflow Variable 'clio_oauth_tokens__{conn_id}'" in result.stdout
    stored = VariableTokenStore().load(conn_id)
    assert stored is not None
    assert stored.access_token
    api = requests.get(
        f"{emulator.url}/grow/users", headers={"Authorization": f"Bearer {stored.access_token}"}, timeout=30
    )
    assert api.status_code == 200
    _assert_no_secrets(result, [CLIENT_SECRET, stored.access_token, stored.refresh_token])

    # A code works once; the second exchange fails with the reason and without echoing the code.
    again = airflow("clio", "auth", "--conn-id", conn_id, "--code", code)
    assert again.returncode == 1
    assert "authorize again and paste the new code" in again.stderr
    assert VariableTokenStore().load(conn_id) == stored
    _assert_no_secrets(again, [code, CLIENT_SECRET])


def test_auth_reads_the_redirect_url_from_stdin_and_checks_its_state(airflow_db, emulator):
    conn_id, env = _connection(emulator, refresh_token=False)  # an AIRFLOW_CONN_* connection still works
    proc = subprocess.Popen(
        [AIRFLOW, "clio", "auth", "--conn-id", conn_id, "--redirect-uri", REDIRECT_URI, "--no-listen"],
        env=subprocess_env(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = read_authorize_url(proc)
    # Play the person: open the URL (the emulator approves at once) and paste where it redirected.
    location = requests.get(url, allow_redirects=False, timeout=30).headers["Location"]
    assert location.startswith(REDIRECT_URI)
    out, err = finish(proc, location + "\n")
    assert proc.returncode == 0, out + err
    assert "Paste the code" in err
    assert "Stored the OAuth tokens" in out
    assert VariableTokenStore().load(conn_id) is not None


def test_auth_receives_the_code_on_the_loopback_redirect_uri(airflow_db, emulator):
    conn_id, _, _ = _db_connection(emulator, refresh_token=False)
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    proc = start_airflow("clio", "auth", "--conn-id", conn_id, "--redirect-uri", redirect_uri)
    # Play the browser: open the URL; the emulator approves and redirects to the listening command.
    page = requests.get(read_authorize_url(proc), timeout=30)
    out, err = finish(proc)
    assert page.status_code == 200
    assert page.url.startswith(redirect_uri)
    assert "Authorization received" in page.text
    assert proc.returncode == 0, out + err
    assert f"Clio then redirects to {redirect_uri}, where this command is listening." in out
    stored = VariableTokenStore().load(conn_id)
    assert stored is not None
    _assert_no_secrets(subprocess.CompletedProcess([], 0, out, err), [stored.refresh_token, CLIENT_SECRET])


def test_auth_print_only_hands_the_pair_over_on_stdout_and_stores_nothing(airflow_db, emulator):
    conn_id, _, extra = _db_connection(emulator, requests_per_slot=0.5)
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    proc = start_airflow("clio", "auth", "--conn-id", conn_id, "--redirect-uri", redirect_uri, "--print-only")
    requests.get(read_authorize_url(proc), timeout=30)
    out, err = finish(proc)
    assert proc.returncode == 0, out + err
    document = json.loads(out)  # stdout holds the JSON and nothing else
    handed = document["connection_extra"]
    assert handed["region"] == "us"
    assert handed["requests_per_slot"] == 0.5
    assert handed["refresh_token"] != extra["refresh_token"]
    assert TokenSet.from_json(document["token_variable"]["value"]).refresh_token == handed["refresh_token"]
    assert document["token_variable"]["key"] == f"clio_oauth_tokens__{conn_id}"
    api = requests.get(
        f"{emulator.url}/grow/users",
        headers={"Authorization": f"Bearer {handed['access_token']}"},
        timeout=30,
    )
    assert api.status_code == 200
    assert "Hand the new token pair" in err
    assert handed["refresh_token"] not in err
    assert VariableTokenStore().load(conn_id) is None  # nothing written to this machine's Airflow


def test_auth_token_file_is_private_and_keeps_the_tokens_off_the_terminal(airflow_db, emulator, tmp_path):
    conn_id, client_id, _ = _db_connection(emulator, refresh_token=False)
    path = tmp_path / "handover.json"
    code = _code(emulator, client_id)
    result = airflow("clio", "auth", "--conn-id", conn_id, "--code", code, "--token-file", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    handed = document["connection_extra"]
    assert f"the file {path}, mode 0600" in result.stdout
    _assert_no_secrets(result, [handed["refresh_token"], handed["access_token"], CLIENT_SECRET])
    assert VariableTokenStore().load(conn_id) is None

    both = airflow("clio", "auth", "--conn-id", conn_id, "--print-only", "--token-file", str(path))
    assert both.returncode == 1
    assert "--print-only and --token-file exclude each other" in both.stderr
