# SPDX-License-Identifier: Apache-2.0
"""The real ``airflow clio ...`` commands, run as subprocesses on the test AIRFLOW_HOME and the emulator."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_clio.auth import VariableTokenStore
from airflow_provider_clio.cli.commands import authorize_url, code_from
from airflow_provider_clio.cli.definition import regions_argument, slots_argument

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


@pytest.fixture
def emulator(clio_emulator_factory: Callable[..., Any]) -> Any:
    return clio_emulator_factory(rate_limit=1000)


def _connection(
    emulator: Any, *, refresh_token: bool = True, secret: str = CLIENT_SECRET
) -> tuple[str, dict]:
    """Register a fresh app and return ``(conn_id, env)`` defining its connection."""
    conn_id = f"clio_cli_{uuid.uuid4().hex[:8]}"
    client_id = f"cli-app-{uuid.uuid4().hex[:6]}"
    emulator.register_app(client_id=client_id, client_secret=CLIENT_SECRET, region="us")
    env_name, conn_json = emulator.connection_env(conn_id=conn_id, client_id=client_id)
    conn = json.loads(conn_json)
    conn["password"] = secret
    if not refresh_token:
        conn["extra"].pop("refresh_token")
    return conn_id, {env_name: json.dumps(conn), "_CLIO_CLIENT_ID": client_id}


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


def _assert_no_secrets(result: subprocess.CompletedProcess, secrets: list[str]) -> None:
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


def test_authorize_url_and_code_parsing():
    url = authorize_url(
        "https://auth.api.clio.com/oauth/authorize",
        client_id="app",
        redirect_uri=REDIRECT_URI,
        state="st",
        scope="grow_contact_read,grow_matter_read",
    )
    query = parse_qs(urlsplit(url).query)
    assert query == {
        "response_type": ["code"],
        "client_id": ["app"],
        "redirect_uri": [REDIRECT_URI],
        "state": ["st"],
        "scope": ["grow_contact_read grow_matter_read"],
    }
    assert code_from("  abc123\n", state="st") == "abc123"
    assert code_from(f"{REDIRECT_URI}?code=abc123&state=st", state="st") == "abc123"
    assert code_from("code=abc123", state=None) == "abc123"
    with pytest.raises(SystemExit, match="state mismatch"):
        code_from(f"{REDIRECT_URI}?code=abc123&state=other", state="st")
    with pytest.raises(SystemExit, match="access_denied"):
        code_from(f"{REDIRECT_URI}?error=access_denied&state=st", state="st")
    with pytest.raises(SystemExit, match="no authorization code"):
        code_from("\n", state="st")


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


# -- check ------------------------------------------------------------------------------------------


def test_check_reports_ok_pool_and_rate_against_the_emulator(airflow_db, emulator):
    assert airflow("clio", "pools", "--region", "us").returncode == 0
    conn_id, env = _connection(emulator)
    result = airflow("clio", "check", "--conn-id", conn_id, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: Connected to Clio (us)" in result.stdout
    assert "Pool: clio_us (3 slots, deferred tasks keep their slot)." in result.stdout
    assert "Rate: 1 req/s per pool slot" in result.stdout
    stored = VariableTokenStore().load(conn_id)  # the check refreshed and rotated: the store has the pair
    assert stored is not None
    refresh = json_extra(env, conn_id)["refresh_token"]
    _assert_no_secrets(result, [CLIENT_SECRET, refresh, stored.refresh_token, stored.access_token or ""])


def test_check_fails_with_a_nonzero_exit_and_no_secret(airflow_db, emulator):
    conn_id, env = _connection(emulator, secret="wrong-client-secret-7731")
    result = airflow("clio", "check", "--conn-id", conn_id, env=env)
    assert result.returncode == 1
    assert "FAILED: ClioAuthError" in result.stdout
    _assert_no_secrets(result, ["wrong-client-secret-7731", json_extra(env, conn_id)["refresh_token"]])


def test_check_explains_a_broken_connection(airflow_db):
    env = {"AIRFLOW_CONN_CLIO_BROKEN": '{"conn_type": "clio", "login": "app", "extra": {"region": "us"}}'}
    result = airflow("clio", "check", "--conn-id", "clio_broken", env=env)
    assert result.returncode == 1
    assert "password (the OAuth client secret) is empty" in result.stderr


def test_check_names_a_missing_connection(airflow_db):
    result = airflow("clio", "check", "--conn-id", "clio_missing")
    assert result.returncode == 1
    assert "connection 'clio_missing' is not defined" in result.stderr
    assert "Traceback" not in result.stderr


def json_extra(env: dict[str, str], conn_id: str) -> dict[str, Any]:
    return json.loads(env[f"AIRFLOW_CONN_{conn_id.upper()}"])["extra"]


# -- auth -------------------------------------------------------------------------------------------


def test_auth_exchanges_a_code_and_stores_the_tokens(airflow_db, emulator):
    conn_id, env = _connection(emulator, refresh_token=False)
    code = _code(emulator, env["_CLIO_CLIENT_ID"])

    result = airflow("clio", "auth", "--conn-id", conn_id, "--code", code, env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"{emulator.url}/oauth/authorize?response_type=code&client_id={env['_CLIO_CLIENT_ID']}"
        in result.stdout
    )
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
    again = airflow("clio", "auth", "--conn-id", conn_id, "--code", code, env=env)
    assert again.returncode == 1
    assert "authorize again and paste the new code" in again.stderr
    assert VariableTokenStore().load(conn_id) == stored
    _assert_no_secrets(again, [code, CLIENT_SECRET])


def test_auth_reads_the_redirect_url_from_stdin_and_checks_its_state(airflow_db, emulator):
    conn_id, env = _connection(emulator, refresh_token=False)
    proc = subprocess.Popen(
        [AIRFLOW, "clio", "auth", "--conn-id", conn_id, "--redirect-uri", REDIRECT_URI],
        env=subprocess_env(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        url = ""
        while not url:
            line = proc.stdout.readline()
            assert line, "the command ended before printing the authorize URL"
            if "/oauth/authorize?" in line:
                url = line.strip()
        # Play the person: open the URL (the emulator approves at once) and paste where it redirected.
        location = requests.get(url, allow_redirects=False, timeout=30).headers["Location"]
        assert location.startswith(REDIRECT_URI)
        out, err = proc.communicate(location + "\n", timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    assert "Paste the code" in err
    assert "Stored the OAuth tokens" in out
    assert VariableTokenStore().load(conn_id) is not None
