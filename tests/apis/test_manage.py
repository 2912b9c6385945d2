# SPDX-License-Identifier: Apache-2.0
"""Clio Manage v4: the spec's rules, then ClioExtractOperator end to end against a stub Manage server.

The stub (loopback, compact; the emulator's Manage mode replaces it when it lands) speaks Manage where it
matters here: ``api/v4`` paths, a pinned ``X-API-VERSION`` (410 otherwise), cursor paging that needs
``order=id(asc)`` and ``fields`` and refuses ``offset`` (422), Manage error bodies, per-token windows with
``X-RateLimit-*`` headers and ``Retry-After`` on 429, a limit that changes with the time, and refresh tokens
that do not rotate. Its windows last ``WINDOW`` seconds instead of 60 so the tests stay fast.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from airflow_provider_clio.apis import get_api
from airflow_provider_clio.apis.manage import API_VERSION, MANAGE, manage_list_query
from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.connection import ClioConfig
from airflow_provider_clio.dates import parse_instant
from airflow_provider_clio.exceptions import ClioBadRequestError, ClioConfigError, ClioFatalError
from airflow_provider_clio.operators.extract import ClioExtractOperator, read_extract
from airflow_provider_clio.token_budget import TokenBudgetPacer

CLIENT_ID, CLIENT_SECRET = "manage-app", "manage-app-secret-value"
REFRESH_TOKEN = "manage-refresh-token-reused-forever"
WINDOW = 1.0
ACTIVITIES = [
    {
        "id": i,
        "note": f"Call {i}",
        "quantity": 360 * i,
        "etag": f'"e{i}"',
        "updated_at": f"2026-03-01T{10 + i // 60}:{i % 60:02d}:00Z",
    }
    for i in range(1, 61)
]
PAGE = 5


# -- the spec --------------------------------------------------------------------------------------------


def test_manage_is_a_built_in_api_on_the_app_hosts() -> None:
    assert get_api("manage") is MANAGE
    assert (
        dict(MANAGE.api_hosts)
        == dict(MANAGE.auth_hosts)
        == {
            "us": "app.clio.com",
            "ca": "ca.app.clio.com",
            "eu": "eu.app.clio.com",
            "au": "au.app.clio.com",
        }
    )
    assert MANAGE.base_path == "api/v4"
    # The token goes to the region's app host only, not to every *.clio.com host.
    assert MANAGE.token_hosts("eu") == frozenset({"eu.app.clio.com"})
    assert (MANAGE.rotates_refresh_token, MANAGE.authorize_scope) == (False, False)
    assert (MANAGE.pool_prefix, MANAGE.pool_size, MANAGE.probe_endpoint) == (
        "clio_manage_",
        5,
        "users/who_am_i",
    )
    assert dict(MANAGE.headers) == {"X-API-VERSION": "4.0.13"}


def test_a_manage_connection_resolves_hosts_pool_and_pool_size() -> None:
    from airflow.sdk import Connection

    def config(**extra: Any) -> ClioConfig:
        conn = Connection(
            conn_id="m", conn_type="clio", login="id", password="secret", extra=json.dumps(extra)
        )
        return ClioConfig.from_connection(conn)

    eu = config(api="manage", region="eu")
    assert (eu.base_url, eu.token_url) == (
        "https://eu.app.clio.com/api/v4",
        "https://eu.app.clio.com/oauth/token",
    )
    assert eu.authorize_url == "https://eu.app.clio.com/oauth/authorize"
    assert (eu.pool, eu.pool_size) == ("clio_manage_eu", 5)
    second = config(api="manage", pool="clio_manage_us_reports", pool_size="8")
    assert (second.pool, second.pool_size) == ("clio_manage_us_reports", 8)
    assert config(pool_size=4).pool_size is None  # the Platform sizes pools by rate, not by share
    for bad in (0, "two", 1.5, True):
        with pytest.raises(ClioConfigError, match="pool_size"):
            config(api="manage", pool_size=bad)


def test_a_lists_first_page_asks_for_cursor_paging_and_default_fields() -> None:
    assert manage_list_query({}) == {"order": "id(asc)", "fields": "id,etag"}
    sent = manage_list_query({"fields": "id,note", "updated_since": "2026-01-01T00:00:00+00:00", "x": 1})
    assert sent == {
        "order": "id(asc)",
        "fields": "id,note",
        "updated_since": "2026-01-01T00:00:00+00:00",
        "x": 1,
    }
    assert manage_list_query({"order": None})["order"] is None  # a list without order (calendar_entries)
    with pytest.raises(ClioConfigError, match=r"offset.*10,000"):
        manage_list_query({"offset": 200})


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            404,
            b'{"error":{"type":"RecordNotFound","message":"Matter not found"}}',
            ("RecordNotFound", "Matter not found"),
        ),
        (401, b'{"error":"invalid_token","error_description":"expired"}', ("invalid_token", "expired")),
        (502, b"<html><h1>Bad gateway</h1></html>", (None, "Bad gateway")),
        (
            410,
            b'{"error":{"type":"Gone","message":"Unsupported version"}}',
            ("Gone", "Unsupported version. "),
        ),
        (422, b"", (None, "Clio Manage rejected")),
    ],
)
def test_error_bodies_and_the_hints_of_410_and_422(
    status: int, body: bytes, expected: tuple[Any, str]
) -> None:
    code, message = MANAGE.error_parser(status)(body)
    assert code == expected[0]
    assert message.startswith(expected[1])
    if status == 410:
        assert f"X-API-VERSION {API_VERSION}" in message


# -- the stub Manage server ------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Manage

    def do_POST(self) -> None:
        form = {
            k: v[0]
            for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()).items()
        }
        self._answer(*self.server.token(form))

    def do_GET(self) -> None:
        self._answer(*self.server.api(self.path, dict(self.headers.items())))

    def _answer(self, status: int, headers: dict[str, str], body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)  # also sends Date, the server's clock the pacer reads Reset against
        for name, value in {
            **headers,
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
        }.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Manage(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.lock = threading.Lock()
        self.started = time.time()
        self.limit_at: Callable[[float], int] = lambda elapsed: 10
        self.versions = {API_VERSION}
        self.valid: set[str] = set()
        self.refreshes: list[str] = []
        self.expire_after_pages = 0
        self.counts: dict[int, int] = {}
        self.log: list[tuple[float, str, int]] = []
        self.drop_after_page = 0
        self.dropped: tuple[int, int] | None = None
        """(window, limit): the window whose limit fell to what it had already spent."""

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            if (form.get("client_id"), form.get("client_secret")) != (CLIENT_ID, CLIENT_SECRET):
                return 401, {}, {"error": "invalid_client", "error_description": "unknown client"}
            if form.get("grant_type") == "authorization_code" and form.get("code") == "good-code":
                self.valid.add("manage-access-code-value")
                answer = {"access_token": "manage-access-code-value", "refresh_token": REFRESH_TOKEN}
                return 200, {}, {**answer, "token_type": "bearer", "expires_in": 2592000}
            self.refreshes.append(form.get("refresh_token", ""))
            if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != REFRESH_TOKEN:
                return (
                    400,
                    {},
                    {"error": "invalid_grant", "error_description": "The provided grant is invalid"},
                )
            access = f"manage-access-{len(self.refreshes)}-value"
            self.valid.add(access)
            return 200, {}, {"token_type": "bearer", "access_token": access, "expires_in": 2592000}

    def api(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            now = time.time()
            status, answer, body = self._api(now, urlsplit(path), headers)
            self.log.append((now, path, status))
            return status, answer, body

    def _api(self, now: float, url: Any, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        window = int(now // WINDOW)
        limit, used = self.limit_at(now - self.started), self.counts.get(window, 0)
        if self.dropped is not None and self.dropped[1] < 0:
            self.dropped = (window, used)  # the limit falls mid-window, to what this window already spent
        if self.dropped is not None and self.dropped[0] == window:
            limit = self.dropped[1]
        rate = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Reset": f"{(window + 1) * WINDOW:.3f}"}
        if used >= limit:
            retry = str(math.ceil((window + 1) * WINDOW - now))
            return (
                429,
                {**rate, "X-RateLimit-Remaining": "0", "Retry-After": retry},
                _error("RateLimited", "slow down"),
            )
        self.counts[window] = used + 1
        rate["X-RateLimit-Remaining"] = str(limit - used - 1)
        if headers.get("X-API-VERSION") not in self.versions:
            return 410, rate, _error("Gone", f"API version {headers.get('X-API-VERSION')} is not supported")
        if headers.get("Authorization", "").removeprefix("Bearer ") not in self.valid:
            return 401, rate, {"error": "invalid_token", "error_description": "The access token expired"}
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if "offset" in query or set(query) - {"fields", "order", "page_token", "updated_since"}:
            return 422, rate, _error("ArgumentError", f"unsupported parameters {sorted(query)}")
        if url.path == "/api/v4/users/who_am_i":
            return 200, rate, {"data": {"id": 1}}
        if url.path != "/api/v4/activities.json" and url.path != "/api/v4/activities":
            return 404, rate, _error("RecordNotFound", url.path)
        if query.get("order") != "id(asc)" or "fields" not in query:
            return 400, rate, _error("InvalidParameter", "cursor paging needs order=id(asc) and fields")
        return 200, rate, self._page(query)

    def _page(self, query: dict[str, str]) -> dict[str, Any]:
        start = int(query.get("page_token", "0"))
        fields = query["fields"].split(",")
        since = parse_instant(query.get("updated_since"), "updated_since")
        # Manage's updated_since is strictly "after".
        matching = [
            a for a in ACTIVITIES if since is None or parse_instant(a["updated_at"], "updated_at") > since
        ]
        rows = [{f: a[f] for f in fields} for a in matching[start : start + PAGE]]
        nxt = None
        if start + PAGE < len(matching):
            query = {**query, "page_token": str(start + PAGE)}
            nxt = "https://app.clio.com/api/v4/activities?" + urlencode(query, safe="(),")
        page = start // PAGE + 1
        if page == self.expire_after_pages:
            self.valid.clear()  # the next request meets a 401; the hook refreshes with the same token
        if page == self.drop_after_page:
            self.dropped = (-1, -1)  # armed: the next request's window
        return {"data": rows, "meta": {"paging": {"next": nxt}}}


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


@pytest.fixture
def manage() -> Iterator[_Manage]:
    server = _Manage()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def conn_id(manage: _Manage, monkeypatch: pytest.MonkeyPatch) -> str:
    # Its own pool, sized 1: this token's whole budget goes to the one task (one slot of one).
    extra = {"api": "manage", "refresh_token": REFRESH_TOKEN, "pool": "clio_manage_stub", "pool_size": 1}
    conn = {
        "conn_type": "clio",
        "host": manage.url,
        "login": CLIENT_ID,
        "password": CLIENT_SECRET,
        "extra": extra,
    }
    monkeypatch.setenv("AIRFLOW_CONN_CLIO_MANAGE_STUB", json.dumps(conn))
    return "clio_manage_stub"


def extract(conn_id: str, tmp_path: Path, **kwargs: Any) -> tuple[dict[str, Any], MemoryTokenStore]:
    store = MemoryTokenStore()
    operator = ClioExtractOperator(
        task_id="extract_activities",
        clio_conn_id=conn_id,
        endpoint="activities",
        fields=["id", "note", "quantity"],
        destination=f"file://{tmp_path}/activities",
        records_per_file=20,
        token_store=store,
        **kwargs,
    )
    return operator.execute({}), store


# -- end to end ------------------------------------------------------------------------------------------


def test_activities_are_extracted_exactly_across_a_limit_rise_without_a_429(
    manage: _Manage, conn_id: str, tmp_path: Path
) -> None:
    manage.limit_at = lambda elapsed: 4 if elapsed < 2 * WINDOW else 12  # peak, then off-peak
    manage.expire_after_pages = 3
    summary, store = extract(conn_id, tmp_path)

    expected = [{k: a[k] for k in ("id", "note", "quantity")} for a in ACTIVITIES]
    assert list(read_extract(f"file://{tmp_path}/activities")) == expected
    assert (summary["records"], summary["pages"], summary["rate_limited"]) == (60, 12, 0)
    assert [status for _, _, status in manage.log].count(429) == 0
    # Cursor paging from the first page on (order and fields), never offset; every request pinned the version.
    first = urlsplit(manage.log[0][1])
    assert parse_qs(first.query) == {"fields": ["id,note,quantity"], "order": ["id(asc)"]}
    assert not any("offset" in path for _, path, _ in manage.log)
    # The refresh token did not rotate: presented once, answered without a new one, still the stored one.
    assert manage.refreshes == [REFRESH_TOKEN, REFRESH_TOKEN]
    stored = store.load(conn_id)
    assert stored is not None
    assert (stored.refresh_token, stored.access_token) == (REFRESH_TOKEN, "manage-access-2-value")
    # The higher limit was used once the headers showed it: more requests per window after the rise.
    per_window = [count for window, count in sorted(manage.counts.items())]
    assert max(per_window[2:]) > max(per_window[:2])


def test_a_limit_dropped_mid_window_costs_waits_not_the_task(
    manage: _Manage, conn_id: str, tmp_path: Path
) -> None:
    manage.drop_after_page = 4
    summary, _ = extract(conn_id, tmp_path)

    assert summary["records"] == 60
    assert list(read_extract(f"file://{tmp_path}/activities"))[-1]["id"] == 60
    assert manage.dropped is not None
    window_end = (manage.dropped[0] + 1) * WINDOW
    statuses = [status for _, _, status in manage.log]
    assert statuses.count(429) == summary["rate_limited"] == 1  # the drop, then waited out
    refused = statuses.index(429)
    # Nothing more was sent until the window with the fallen limit had ended (Retry-After and the pacer).
    assert manage.log[refused + 1][0] >= window_end
    assert statuses[refused + 1 :] == [200] * (len(statuses) - refused - 1)


def test_a_retired_api_version_fails_at_once_naming_the_pinned_version(
    manage: _Manage, conn_id: str, tmp_path: Path
) -> None:
    manage.versions = {"4.0.99"}
    with pytest.raises(ClioFatalError, match=r"X-API-VERSION 4\.0\.13.*HTTP 410") as info:
        extract(conn_id, tmp_path)
    assert info.value.status_code == 410
    assert [status for _, _, status in manage.log] == [410]  # not retried


def test_a_rejected_query_fails_at_once_and_offset_is_refused_before_sending(
    manage: _Manage, conn_id: str, tmp_path: Path
) -> None:
    with pytest.raises(ClioBadRequestError, match=r"unsupported parameters.*HTTP 422"):
        extract(conn_id, tmp_path, query_params={"matter_id": 7})
    with pytest.raises(ClioConfigError, match="offset"):
        extract(conn_id, tmp_path, query_params={"offset": 10000})
    assert [status for _, _, status in manage.log] == [422]


def test_the_hook_builds_a_token_budget_pacer_at_the_tasks_share(conn_id: str) -> None:
    from airflow_provider_clio.hooks.clio import ClioHook

    pacer = ClioHook(conn_id, pool_slots=1).pacer
    assert isinstance(pacer, TokenBudgetPacer)
    assert (pacer.share, pacer.name) == (1.0, "clio_manage_stub")


@pytest.mark.integration
def test_the_cli_sizes_checks_and_authorizes_a_manage_connection(airflow_db: Path, manage: _Manage) -> None:
    import os
    import subprocess
    import sys

    from airflow.configuration import conf

    extra = {"api": "manage", "refresh_token": REFRESH_TOKEN, "pool": "clio_manage_cli", "pool_size": 4}
    conn = {
        "conn_type": "clio",
        "host": manage.url,
        "login": CLIENT_ID,
        "password": CLIENT_SECRET,
        "extra": extra,
    }
    env = {
        **os.environ,
        "AIRFLOW__CORE__FERNET_KEY": conf.get("core", "fernet_key"),
        "AIRFLOW_CONN_CLIO_MANAGE_CLI": json.dumps(conn),
    }

    def airflow(*args: str) -> subprocess.CompletedProcess:
        command = [
            str(Path(sys.executable).with_name("airflow")),
            "clio",
            *args,
            "--conn-id",
            "clio_manage_cli",
        ]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)

    made = airflow("pools")
    assert made.returncode == 0, made.stderr
    assert "Pool clio_manage_cli created: 4 slots" in made.stdout
    assert "a slot is 1/4 of the token's budget" in made.stdout
    checked = airflow("check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (
        "OK: Pool: clio_manage_cli (4 slots; a task holding k slots paces at k/4 of the token's budget"
        in (checked.stdout)
    )
    assert any(path.startswith("/api/v4/users/who_am_i") for _, path, _ in manage.log)
    too_big = airflow("pools", "--slots", "6")
    assert "pool_size is 4" in too_big.stderr
    assert airflow("check").returncode == 1
    scoped = airflow("auth", "--scope", "matters", "--code", "x")
    assert scoped.returncode == 1
    assert "--scope does not apply to the manage API" in scoped.stderr
    authorized = airflow("auth", "--code", "good-code")
    assert authorized.returncode == 0, authorized.stdout + authorized.stderr
    (url,) = [line.strip() for line in authorized.stdout.splitlines() if "/oauth/authorize?" in line]
    assert url.startswith(f"{manage.url}/oauth/authorize?")  # the API's own host (the stub stands in)
    assert "scope=" not in url
    assert "the refresh token does not rotate" in authorized.stdout


def test_an_incremental_load_into_sqlite_keeps_a_record_updated_at_the_intervals_start(
    manage: _Manage, conn_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3
    from contextlib import closing

    from airflow_provider_clio.transfers.clio_to_sql import ClioToSqlOperator

    warehouse = tmp_path / "warehouse.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_MANAGE_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(warehouse)})
    )
    ClioToSqlOperator(
        task_id="load_activities",
        clio_conn_id=conn_id,
        endpoint="activities",
        fields=["id", "note"],
        updated_since="2026-03-01T10:51:00+00:00",  # exactly activity 51's updated_at
        sql_conn_id="manage_warehouse",
        table="clio_manage_activities",
        token_store=MemoryTokenStore(),
    ).execute({})

    with closing(sqlite3.connect(warehouse)) as db:
        rows = db.execute("SELECT id, note FROM clio_manage_activities ORDER BY id").fetchall()
    # Manage's "after" would have dropped activity 51: the operator asked from one second earlier (once).
    assert rows == [(i, f"Call {i}") for i in range(51, 61)]
    assert parse_qs(urlsplit(manage.log[0][1]).query)["updated_since"] == ["2026-03-01T10:50:59+00:00"]
