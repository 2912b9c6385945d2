# SPDX-License-Identifier: Apache-2.0
"""ClioHook against a deliberately misbehaving HTTP server: loops, foreign next URLs, redirects, bad bodies.

The emulator behaves like Clio, so it cannot produce these answers; a tiny real server on loopback does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.exceptions import (
    ClioBadRequestError,
    ClioFatalError,
    ClioNotFoundError,
    ClioPaginationError,
    ClioTransientError,
)
from airflow_provider_clio.hooks.clio import ClioHook, RetrySettings
from airflow_provider_clio.rate_limit import reset_shared_limiters

pytestmark = pytest.mark.integration

ACCESS_TOKEN = "misbehaving-server-access-token"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        page = self.path.split("?", 1)[0]
        self.server.hits[page] = self.server.hits.get(page, 0) + 1
        status, headers, body = self.server.route(self.path, self.server.base, self.server.hits[page])
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.base = f"http://127.0.0.1:{self.server_address[1]}"
        self.seen: list[tuple[str, str | None]] = []
        self.hits: dict[str, int] = {}

    @staticmethod
    def route(path: str, base: str, hit: int) -> tuple[int, dict[str, str], bytes]:
        json_type = {"Content-Type": "application/json"}
        page = path.split("?", 1)[0]
        if page == "/grow/maintenance-once":
            if hit == 1:
                body = b'{"error": {"status": "503", "message": "maintenance"}}'
                return 503, {**json_type, "Retry-After": "7"}, body
            return 200, json_type, b'{"data": []}'
        if page == "/grow/loop":
            body = {"data": [{"id": 1}], "meta": {"paging": {"next": f"{base}/grow/loop?page_token=same"}}}
            return 200, json_type, json.dumps(body).encode()
        if page == "/grow/foreign":
            body = {
                "data": [{"id": 1}],
                "meta": {"paging": {"next": "http://127.0.0.2:9/grow/x?page_token=b"}},
            }
            return 200, json_type, json.dumps(body).encode()
        if page == "/grow/redirect":
            return 302, {"Location": "http://127.0.0.2:9/steal"}, b""
        if page == "/grow/clio-next":
            # Clio's next URLs name Clio's hosts, not the proxy the connection's host points at.
            if "page_token=p2" in path:
                link = "https://grow.clio.com/api/v2/contacts?fields=id%2Cname&page_token=p3"
                body = {"data": [{"id": 2}], "meta": {"paging": {"next": link}}}
            else:
                link = "https://api.clio.com/grow/clio-next?fields=id%2Cname&page_token=p2"
                body = {"data": [{"id": 1}], "meta": {"paging": {"next": link}}}
            return 200, json_type, json.dumps(body).encode()
        if page == "/api/v2/contacts":
            return 200, json_type, json.dumps({"data": [{"id": 3}], "meta": {"paging": {}}}).encode()
        if page == "/grow/empty-200":
            return 200, json_type, b""
        if page == "/grow/empty-second-page":
            if "page_token" in path:
                return 200, json_type, b""
            body = {"data": [{"id": 1}], "meta": {"paging": {"next": f"{base}{page}?page_token=p2"}}}
            return 200, json_type, json.dumps(body).encode()
        if page == "/grow/not-json":
            return 200, json_type, b"<html>maintenance</html>"
        if page == "/grow/no-data":
            return 200, json_type, b'{"records": []}'
        if page == "/grow/manage-404":
            return 404, json_type, b'{"error": {"type": "RecordNotFound", "message": "Matter not found"}}'
        if page == "/grow/html-502":
            return 502, {"Content-Type": "text/html"}, b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        if page == "/grow/echo-token-422":
            # A careless server echoing the credentials it received.
            message = f"invalid request with Bearer {ACCESS_TOKEN}"
            return 422, json_type, json.dumps({"error": {"status": "422", "message": message}}).encode()
        return 404, json_type, b'{"error": {"status": "404", "message": "no route"}}'


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def hook(server: _Server, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> Iterator[ClioHook]:
    reset_shared_limiters()
    conn = {
        "conn_type": "clio",
        "host": server.base,
        "login": "misbehaving-app",
        "password": "misbehaving-secret",
        "extra": {
            "refresh_token": "unused-refresh",
            "access_token": ACCESS_TOKEN,
            "expires_at": time.time() + 3600,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_CLIO_ODD", json.dumps(conn))
    now = [0.0]

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    yield ClioHook(
        "clio_odd",
        token_store=MemoryTokenStore(),
        retry=RetrySettings(max_attempts=3),
        clock=lambda: now[0],
        sleep=sleep,
    )
    reset_shared_limiters()


def test_a_repeated_next_url_is_a_loop(server: _Server, hook: ClioHook) -> None:
    pages = hook.iter_pages("grow/loop")
    assert next(pages).records == [{"id": 1}]
    assert next(pages).records == [{"id": 1}]  # page 2, whose next URL points at page 2 again
    with pytest.raises(ClioPaginationError, match="pagination loop"):
        next(pages)  # refused before sending it
    assert len(server.seen) == 2


def test_a_next_url_on_another_host_is_refused(server: _Server, hook: ClioHook) -> None:
    with pytest.raises(ClioPaginationError, match="neither the API host"):
        list(hook.paginate("grow/foreign"))
    assert [path for path, _ in server.seen] == ["/grow/foreign"]


def test_next_urls_on_clio_hosts_are_rewritten_onto_the_override(server: _Server, hook: ClioHook) -> None:
    pages = list(hook.iter_pages("grow/clio-next", fields="id,name"))
    assert [record["id"] for page in pages for record in page.records] == [1, 2, 3]
    # Path and query exactly as Clio sent them, only the origin swapped for the proxy's; the token went to
    # the proxy every time and never towards Clio's hosts.
    assert server.seen == [
        ("/grow/clio-next?fields=id%2Cname", f"Bearer {ACCESS_TOKEN}"),
        ("/grow/clio-next?fields=id%2Cname&page_token=p2", f"Bearer {ACCESS_TOKEN}"),
        ("/api/v2/contacts?fields=id%2Cname&page_token=p3", f"Bearer {ACCESS_TOKEN}"),
    ]
    assert pages[0].next_url == f"{server.base}/grow/clio-next?fields=id%2Cname&page_token=p2"
    # A checkpoint holding Clio's URL resumes through the proxy too.
    resumed = hook.iter_pages(
        "grow/clio-next", start_url="https://grow.clio.com/api/v2/contacts?page_token=p3"
    )
    assert [page.records for page in resumed] == [[{"id": 3}]]
    assert server.seen[-1][0] == "/api/v2/contacts?page_token=p3"


def test_redirects_are_not_followed(server: _Server, hook: ClioHook) -> None:
    with pytest.raises(ClioFatalError, match="unexpected redirect") as info:
        hook.get("grow/redirect")
    assert info.value.status_code == 302
    assert len(server.seen) == 1


def test_unparsable_2xx_body_is_retried_then_transient(server: _Server, hook: ClioHook) -> None:
    with pytest.raises(ClioTransientError, match="unparsable JSON"):
        hook.get("grow/not-json")
    assert len(server.seen) == 3  # max_attempts
    assert hook.stats.retries == 2


@pytest.mark.parametrize("endpoint", ["grow/empty-200", "grow/empty-second-page"])
def test_an_empty_2xx_body_is_retried_then_transient(server: _Server, hook: ClioHook, endpoint: str) -> None:
    # An empty body is a cut-short answer like an unparsable one, not a malformed list: retry, and leave
    # the rest to Airflow's task retry instead of failing the task for good.
    with pytest.raises(ClioTransientError, match="empty body"):
        list(hook.paginate(endpoint))
    assert hook.stats.retries == 2
    with pytest.raises(ClioTransientError, match="empty body"):
        hook.get("grow/empty-200")


def test_a_list_without_data_is_a_pagination_error(server: _Server, hook: ClioHook) -> None:
    with pytest.raises(ClioPaginationError, match="'data' array"):
        list(hook.paginate("grow/no-data"))


def test_manage_style_error_body(server: _Server, hook: ClioHook) -> None:
    with pytest.raises(ClioNotFoundError) as info:
        hook.get("grow/manage-404")
    assert info.value.message == "Matter not found"


def test_html_gateway_error_is_transient_with_its_text(server: _Server, hook: ClioHook) -> None:
    with pytest.raises(ClioTransientError) as info:
        hook.get("grow/html-502")
    assert info.value.status_code == 502
    assert info.value.message == "502 Bad Gateway"
    assert len(server.seen) == 3


def test_echoed_credentials_are_scrubbed_from_errors(server: _Server, hook: ClioHook) -> None:
    with pytest.raises(ClioBadRequestError) as info:
        hook.get("grow/echo-token-422")
    assert ACCESS_TOKEN not in str(info.value)
    assert "Bearer ***" in info.value.message
    # The token did go to the API host, and only there.
    assert server.seen == [("/grow/echo-token-422", f"Bearer {ACCESS_TOKEN}")]


def test_retry_after_on_a_503_is_honoured(server: _Server, hook: ClioHook, sleeps: list[float]) -> None:
    assert hook.get("grow/maintenance-once") == {"data": []}
    # Exactly the server's wait: retrying a maintenance 503 sooner only earns another 503.
    # (The first sleep is the limiter's hand-over window of a new hook; the backoff is the second.)
    assert sleeps[1:] == [7.0]
    assert hook.stats.retries == 1
    assert [path for path, _ in server.seen] == ["/grow/maintenance-once"] * 2
