# SPDX-License-Identifier: Apache-2.0
"""Contract test: a second API plugged in from a test runs ClioExtractOperator end to end, unchanged.

The fake API differs from the Clio Platform API wherever Clio Manage does (clio-api-reference.md): its own
host and base path, an error body of another shape, refresh tokens that do not rotate (the token response
has no ``refresh_token``), and a rate limit announced in ``X-RateLimit-*`` headers, which a :class:`Pacer`
defined here reads. A stub HTTP server on loopback speaks it; the connection's ``host`` points at the stub,
so the bearer token goes there and ``next`` links naming the fake API's host are rewritten onto it.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_clio.apis import ApiSpec, register_api, unregister_api
from airflow_provider_clio.auth import MemoryTokenStore, TokenSet
from airflow_provider_clio.exceptions import ClioBadRequestError
from airflow_provider_clio.operators.extract import ClioExtractOperator, read_extract
from airflow_provider_clio.rate_limit import Pacer, PacerRequest

pytestmark = pytest.mark.integration

API_HOST = "api.fake-clio.test"
BASE_PATH = "api/v9"
CLIENT_ID = "fake-app"
CLIENT_SECRET = "fake-app-secret-value"
REFRESH_TOKEN = "fake-refresh-token-that-never-rotates"
LIMIT = 3
"""Requests the stub admits per window."""
WINDOW = 1.5
"""Seconds of one rate-limit window (60 s on Clio Manage; short here so the test stays fast)."""
RECORDS = [{"id": i, "name": f"Matter {i}", "status": "open"} for i in range(1, 24)]
PAGE_SIZE = 5


def parse_problem(body: bytes | str | None) -> tuple[str | None, str]:
    """The fake API's error body: ``{"problem": {"kind": ..., "title": ..., "detail": ...}}``."""
    try:
        problem = json.loads(body or b"")["problem"]
    except (ValueError, KeyError, TypeError):
        return None, (body.decode(errors="replace") if isinstance(body, bytes) else body or "")
    return problem["kind"], f"{problem['title']}: {problem['detail']}"


class HeaderPacer:
    """A pacer that learns the limit from headers: once none is left, it waits for the window end."""

    def __init__(self, margin: float = 0.02) -> None:
        self.margin = margin
        self.remaining: int | None = None
        self.reset_at = 0.0
        self.observed: list[dict[str, str]] = []
        self.waits: list[float] = []
        self.requests: list[PacerRequest] = []
        self.acquired = 0
        self.released = 0

    def acquire(self, sleep: Callable[[float], None]) -> float:
        self.acquired += 1
        if self.remaining is None or self.remaining > 0:
            return 0.0
        wait = max(0.0, self.reset_at - time.time()) + self.margin
        sleep(wait)
        self.waits.append(wait)
        self.remaining = None  # a new window: unknown until the next answer says
        return wait

    def release(self) -> None:
        self.released += 1

    def observe(self, response: requests.Response) -> None:
        headers = {k: v for k, v in response.headers.items() if k.lower().startswith("x-ratelimit-")}
        self.observed.append(headers)
        if "X-RateLimit-Remaining" in response.headers:
            self.remaining = int(response.headers["X-RateLimit-Remaining"])
            self.reset_at = float(response.headers["X-RateLimit-Reset"])


class _Handler(BaseHTTPRequestHandler):
    server: _FakeApi

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        self._answer(*self.server.token(self.path, form))

    def do_GET(self) -> None:
        self._answer(*self.server.api(self.path, self.headers.get("Authorization")))

    def _answer(self, status: int, headers: dict[str, str], body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _FakeApi(ThreadingHTTPServer):
    """The stub of the fake API: OAuth without rotation, X-RateLimit windows, problem-shaped errors."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.lock = threading.Lock()
        self.refreshes: list[str] = []
        self.valid: set[str] = set()
        self.log: list[tuple[str, int, str | None]] = []
        self.window_end = 0.0
        self.used = 0
        self.expire_after_pages: int | None = None
        self.pages_served = 0

    def token(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            client_ok = (form.get("client_id"), form.get("client_secret")) == (CLIENT_ID, CLIENT_SECRET)
            if path != "/oauth/token" or not client_ok or form.get("grant_type") != "refresh_token":
                return 401, {}, {"error": "invalid_client"}
            self.refreshes.append(form.get("refresh_token", ""))
            if form.get("refresh_token") != REFRESH_TOKEN:
                return 400, {}, {"error": "invalid_grant", "error_description": "unknown refresh token"}
            access = f"fake-access-{len(self.refreshes)}-value"
            self.valid.add(access)
            # No refresh_token in the answer: the old one stays valid (it does not rotate).
            return 200, {}, {"access_token": access, "token_type": "bearer", "expires_in": 3600}

    def api(self, path: str, authorization: str | None) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            status, headers, body = self._api(path, authorization)
            self.log.append((path, status, authorization))
            return status, headers, body

    def _api(self, path: str, authorization: str | None) -> tuple[int, dict[str, str], Any]:
        now = time.time()
        if now >= self.window_end:
            self.window_end, self.used = now + WINDOW, 0
        if self.used >= LIMIT:
            retry_after = str(math.ceil(self.window_end - now))
            return (
                429,
                {"Retry-After": retry_after},
                problem("rate_limited", "Too many requests", "slow down"),
            )
        self.used += 1
        limits = {
            "X-RateLimit-Limit": str(LIMIT),
            "X-RateLimit-Remaining": str(LIMIT - self.used),
            "X-RateLimit-Reset": f"{self.window_end:.3f}",
        }
        token = (authorization or "").removeprefix("Bearer ")
        if token not in self.valid:
            return 401, limits, problem("unauthorized", "Unauthorized", "the access token expired")
        parts = urlsplit(path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path != f"/{BASE_PATH}/matters":
            return 404, limits, problem("not_found", "Not found", parts.path)
        fields = query.get("fields", "id").split(",")
        unknown = [f for f in fields if f not in RECORDS[0]]
        if unknown:
            return (
                400,
                limits,
                problem("invalid_field", "Unknown field", f"{unknown[0]} is not a field of matters"),
            )
        return 200, limits, self._page(fields, query)

    def _page(self, fields: list[str], query: dict[str, str]) -> dict[str, Any]:
        start = int(query.get("page_token", "0"))
        rows = [{f: r[f] for f in fields} for r in RECORDS[start : start + PAGE_SIZE]]
        nxt = None
        if start + PAGE_SIZE < len(RECORDS):
            # The fake API's own host, as a real API names it: the hook rewrites it onto the override.
            token = start + PAGE_SIZE
            nxt = f"https://{API_HOST}/{BASE_PATH}/matters?fields={','.join(fields)}&page_token={token}"
        self.pages_served += 1
        if self.pages_served == self.expire_after_pages:
            self.valid.clear()  # the next request meets a 401 and the hook refreshes
        return {"data": rows, "meta": {"paging": {"next": nxt}}}


def problem(kind: str, title: str, detail: str) -> dict[str, Any]:
    return {"problem": {"kind": kind, "title": title, "detail": detail}}


@pytest.fixture
def fake_api() -> Iterator[_FakeApi]:
    server = _FakeApi()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def pacer() -> Iterator[HeaderPacer]:
    """The fake API's pacer, registered with the fake API's spec for this test only."""
    made = HeaderPacer()

    def make_pacer(request: PacerRequest) -> Pacer:
        made.requests.append(request)
        return made

    register_api(
        ApiSpec(
            name="fakeapi",
            api_hosts={"us": API_HOST},
            auth_hosts={"us": "auth.fake-clio.test"},
            base_path=BASE_PATH,
            rotates_refresh_token=False,
            parse_error=parse_problem,
            make_pacer=make_pacer,
            pool_prefix="fake_",
            probe_endpoint="matters",
        )
    )
    yield made
    unregister_api("fakeapi")


def connect(monkeypatch: pytest.MonkeyPatch, fake_api: _FakeApi, conn_id: str = "fake_api_conn") -> str:
    conn = {
        "conn_type": "clio",
        "host": fake_api.url,
        "login": CLIENT_ID,
        "password": CLIENT_SECRET,
        "extra": {"api": "fakeapi", "region": "us", "refresh_token": REFRESH_TOKEN, "pool": "fake_us"},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return conn_id


def test_a_second_api_runs_the_extract_operator_end_to_end(
    fake_api: _FakeApi,
    pacer: HeaderPacer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
) -> None:
    conn_id = connect(monkeypatch, fake_api)
    fake_api.expire_after_pages = 2
    store = MemoryTokenStore()
    summary = ClioExtractOperator(
        task_id="extract_fake",
        clio_conn_id=conn_id,
        endpoint="matters",
        fields=["id", "name"],
        destination=f"file://{tmp_path}/matters",
        records_per_file=10,
        token_store=store,
    ).execute({})

    expected = [{"id": r["id"], "name": r["name"]} for r in RECORDS]
    assert list(read_extract(f"file://{tmp_path}/matters")) == expected
    assert support.read_jsonl(sorted((tmp_path / "matters").glob("run=*/part-*.jsonl"))) == expected
    assert (summary["records"], summary["pages"], summary["rate_limited"]) == (23, 5, 0)

    # Five pages and the resend after one 401, all on the stub (the host override) under the API's base path;
    # the next links named the fake API's own host and were rewritten onto the stub, path and query intact.
    first = f"/{BASE_PATH}/matters?fields=id%2Cname"
    pages = [f"/{BASE_PATH}/matters?fields=id,name&page_token={n}" for n in (5, 10, 10, 15, 20)]
    assert [(path, status) for path, status, _ in fake_api.log] == [
        (first, 200),
        (pages[0], 200),
        (pages[1], 401),
        (pages[2], 200),
        (pages[3], 200),
        (pages[4], 200),
    ]
    tokens = [auth for _, _, auth in fake_api.log]
    assert tokens == ["Bearer fake-access-1-value"] * 3 + ["Bearer fake-access-2-value"] * 3

    # Refresh tokens do not rotate: the same one was presented twice and is still the stored one.
    assert fake_api.refreshes == [REFRESH_TOKEN, REFRESH_TOKEN]
    stored = store.load(conn_id)
    assert isinstance(stored, TokenSet)
    assert stored.refresh_token == REFRESH_TOKEN
    assert stored.access_token == "fake-access-2-value"

    # The test's pacer was the one consulted: it saw every answer's headers and waited for the window end
    # whenever the stub said no request was left, so the stub never had to answer 429.
    assert pacer.requests
    assert all(r.client_id == CLIENT_ID and r.region == "us" for r in pacer.requests)
    assert pacer.acquired == pacer.released == len(pacer.observed) == len(fake_api.log)
    assert all(h["X-RateLimit-Limit"] == str(LIMIT) for h in pacer.observed)
    remaining = [h["X-RateLimit-Remaining"] for h in pacer.observed]
    assert remaining[:LIMIT] == ["2", "1", "0"]
    # One wait for every answer that said "0" and was followed by another request, never one without.
    assert len(pacer.waits) == remaining[:-1].count("0") >= 1
    assert all(0 < w <= WINDOW + pacer.margin for w in pacer.waits)


def test_an_error_body_of_the_other_shape_reaches_the_exception(
    fake_api: _FakeApi, pacer: HeaderPacer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn_id = connect(monkeypatch, fake_api)
    operator = ClioExtractOperator(
        task_id="extract_fake_bad_field",
        clio_conn_id=conn_id,
        endpoint="matters",
        fields=["id", "bogus"],
        destination=f"file://{tmp_path}/bad",
        token_store=MemoryTokenStore(),
    )
    with pytest.raises(ClioBadRequestError) as info:
        operator.execute({})
    # Exactly what the fake API's parser makes of its body (Platform's parser would keep the raw JSON).
    assert info.value.message == "Unknown field: bogus is not a field of matters"
    assert info.value.status_code == 400
    assert [status for _, status, _ in fake_api.log] == [400]
