# SPDX-License-Identifier: Apache-2.0
"""TokenSet and the token stores: files, the metadata DB, dag.test() and a task under a real supervisor."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_clio.auth import (
    VARIABLE_KEY_PREFIX,
    FileTokenStore,
    MemoryTokenStore,
    TokenSet,
    TokenStore,
    VariableTokenStore,
    parse_expires_at,
)
from airflow_provider_clio.auth.stores import _in_task_runner
from airflow_provider_clio.exceptions import ClioConfigError

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
            outcome["in_task_runner"] = _in_task_runner()
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
    assert not _in_task_runner()
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
        from airflow_provider_clio.auth import TokenManager, TokenSet, VariableTokenStore
        from airflow_provider_clio.auth.stores import _in_task_runner

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
            "in_task_runner": _in_task_runner(),
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
