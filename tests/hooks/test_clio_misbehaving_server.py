# SPDX-License-Identifier: Apache-2.0
"""ClioHook against a deliberately misbehaving HTTP server: loops, foreign next URLs, redirects, bad bodies.

The emulator behaves like Clio, so it cannot produce these answers; a tiny real server on loopback does. A
second loopback port (:class:`_Listener`) plays the host that must never receive a connection, let alone
the bearer token.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from airflow_provider_clio.auth import MemoryTokenStore, TokenSet
from airflow_provider_clio.exceptions import (
    ClioBadRequestError,
    ClioFatalError,
    ClioNotFoundError,
    ClioPaginationError,
    ClioTransientError,
)
from airflow_provider_clio.hooks.clio import ClioHook, RetrySettings
from airflow_provider_clio.operators.extract import ClioExtractOperator
from airflow_provider_clio.pagination import MAX_EMPTY_PAGES
from airflow_provider_clio.rate_limit import reset_shared_limiters
from airflow_provider_clio.testing import ClioEmulator

pytestmark = pytest.mark.integration

ACCESS_TOKEN = "misbehaving-server-access-token"
ROTATED_AWAY = "stored-refresh-rotated-away-111"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        page = self.path.split("?", 1)[0]
        self.server.hits[page] = self.server.hits.get(page, 0) + 1
        if page in self.server.links:
            # A page whose next link the test planted (e.g. one naming the listener's port).
            link = self.server.links[page]
            status, headers = 200, {"Content-Type": "application/json"}
            body = json.dumps({"data": [{"id": 1}], "meta": {"paging": {"next": link}}}).encode()
        else:
            status, headers, body = self.server.route(self.path, self.server.base, self.server.hits[page])
        self._answer(status, headers, body)

    def do_POST(self) -> None:
        # The OAuth token endpoint: every refresh answers a new, rotated pair.
        length = int(self.headers.get("Content-Length") or 0)
        self.server.posts.append(self.rfile.read(length).decode())
        n = len(self.server.posts)
        body = {"access_token": f"stub-access-{n:04d}", "refresh_token": f"stub-refresh-{n:04d}"}
        payload = json.dumps({**body, "token_type": "bearer", "expires_in": 3600}).encode()
        self._answer(200, {"Content-Type": "application/json"}, payload)

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
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
        self.links: dict[str, str] = {}
        self.posts: list[str] = []

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
            if "page_token=p3" in path:
                body = {"data": [{"id": 3}], "meta": {"paging": {}}}
            elif "page_token=p2" in path:
                link = "https://api.clio.com/grow/clio-next?fields=id%2Cname&page_token=p3"
                body = {"data": [{"id": 2}], "meta": {"paging": {"next": link}}}
            else:
                link = "https://api.clio.com/grow/clio-next?fields=id%2Cname&page_token=p2"
                body = {"data": [{"id": 1}], "meta": {"paging": {"next": link}}}
            return 200, json_type, json.dumps(body).encode()
        if page == "/grow/other-clio-host":
            # A host of Clio's that is not the connection's API host: the legacy grow.clio.com of the spec.
            link = "https://grow.clio.com/api/v2/contacts?fields=id%2Cname&page_token=p2"
            return (
                200,
                json_type,
                json.dumps({"data": [{"id": 1}], "meta": {"paging": {"next": link}}}).encode(),
            )
        if page == "/grow/empty-forever":
            # A fresh cursor on every empty page; after 100 it gives up, so an unguarded client ends too.
            paging = {"next": f"{base}{page}?page_token=e{hit}"} if hit < 100 else {}
            return 200, json_type, json.dumps({"data": [], "meta": {"paging": paging}}).encode()
        if page in ("/grow/echo-old-refresh-422", "/grow/echo-old-refresh-503"):
            # A careless server echoing a refresh token this process has rotated away (no key=value form
            # and no "Bearer" for the pattern scrubbers to catch: only the exact value can be removed).
            status = int(page[-3:])
            message = f"grant {ROTATED_AWAY} was revoked"
            return (
                status,
                json_type,
                json.dumps({"error": {"status": str(status), "message": message}}).encode(),
            )
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


class _Listener:
    """
    A loopback port that must never be contacted: it records every connection and its first bytes.

    It answers plain-HTTP requests with one record, so a client that wrongly talks to it gets an answer
    instead of hanging; a TLS handshake is simply closed.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                self.received.append(data)
                if data.startswith(b"GET"):
                    body = b'{"data": [{"id": 666}], "meta": {"paging": {}}}'
                    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
                    conn.sendall(head.encode() + b"\r\nConnection: close\r\n\r\n" + body)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[_Listener]:
    srv = _Listener()
    yield srv
    srv.close()


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
    with pytest.raises(ClioPaginationError, match="it is not the connection's host"):
        list(hook.paginate("grow/foreign"))
    assert [path for path, _ in server.seen] == ["/grow/foreign"]


def test_next_urls_on_the_api_host_are_rewritten_onto_the_override(server: _Server, hook: ClioHook) -> None:
    pages = list(hook.iter_pages("grow/clio-next", fields="id,name"))
    assert [record["id"] for page in pages for record in page.records] == [1, 2, 3]
    # Path and query exactly as Clio sent them, only the origin swapped for the proxy's; the token went to
    # the proxy every time and never towards Clio's hosts.
    assert server.seen == [
        ("/grow/clio-next?fields=id%2Cname", f"Bearer {ACCESS_TOKEN}"),
        ("/grow/clio-next?fields=id%2Cname&page_token=p2", f"Bearer {ACCESS_TOKEN}"),
        ("/grow/clio-next?fields=id%2Cname&page_token=p3", f"Bearer {ACCESS_TOKEN}"),
    ]
    assert pages[0].next_url == f"{server.base}/grow/clio-next?fields=id%2Cname&page_token=p2"
    # A checkpoint holding Clio's URL resumes through the proxy too.
    resumed = hook.iter_pages("grow/clio-next", start_url="https://api.clio.com/grow/clio-next?page_token=p3")
    assert [page.records for page in resumed] == [[{"id": 3}]]
    assert server.seen[-1][0] == "/grow/clio-next?page_token=p3"


def test_a_next_url_on_another_clio_host_is_refused_not_rewritten(server: _Server, hook: ClioHook) -> None:
    # Only the API host of the connection's region is rewritten onto the override: grow.clio.com (or
    # another region's host) is not where this connection's records live.
    with pytest.raises(ClioPaginationError, match=re.escape("https://grow.clio.com:443")):
        list(hook.paginate("grow/other-clio-host"))
    assert [path for path, _ in server.seen] == ["/grow/other-clio-host"]


def test_a_backslash_next_link_does_not_reach_the_other_port(
    server: _Server, hook: ClioHook, listener: _Listener
) -> None:
    # The audit's example, served from the host override on port B: urlsplit reads host B, requests
    # connects to port A. Port A must get no connection at all, let alone the token.
    port_b = server.server_address[1]
    server.links["/grow/planted"] = (
        f"http://127.0.0.1:{listener.port}\\@127.0.0.1:{port_b}/grow/contacts?page_token=p2"
    )
    with pytest.raises(ClioPaginationError, match="refusing to follow a next URL: it contains a backslash"):
        list(hook.paginate("grow/planted"))
    time.sleep(0.1)
    assert listener.received == []
    assert [path for path, _ in server.seen] == ["/grow/planted"]


@pytest.mark.parametrize("what", ["host override", "Clio's API host"])
def test_a_backslash_start_url_is_refused_before_connecting(
    server: _Server,
    hook: ClioHook,
    listener: _Listener,
    monkeypatch: pytest.MonkeyPatch,
    sleeps: list[float],
    what: str,
) -> None:
    if what == "host override":
        port_b = server.server_address[1]
        planted = f"http://127.0.0.1:{listener.port}\\@127.0.0.1:{port_b}/grow/contacts?page_token=p2"
    else:
        # Without an override urlsplit sees api.clio.com on https:443, requests connects to the listener.
        conn = {"conn_type": "clio", "login": "app", "password": "app-secret"}
        conn["extra"] = json.dumps({"access_token": ACCESS_TOKEN, "expires_at": time.time() + 3600})
        monkeypatch.setenv("AIRFLOW_CONN_CLIO_NO_OVERRIDE", json.dumps(conn))
        hook = ClioHook(
            "clio_no_override", token_store=MemoryTokenStore(), retry=RetrySettings(max_attempts=1)
        )
        planted = f"https://127.0.0.1:{listener.port}\\@api.clio.com/grow/contacts?page_token=p2"
        with pytest.raises(ClioPaginationError, match="backslash"):
            next(
                hook.iter_pages(
                    "grow/contacts", start_url="https://evil.example\\@api.clio.com/grow/contacts"
                )
            )
    with pytest.raises(ClioPaginationError, match="refusing to follow a start URL: it contains a backslash"):
        next(hook.iter_pages("grow/contacts", start_url=planted))
    time.sleep(0.1)
    assert listener.received == []
    assert server.seen == []


def test_a_planted_checkpoint_url_is_discarded_not_followed(
    clio_emulator_factory: Callable[..., ClioEmulator],
    listener: _Listener,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    support: ModuleType,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Anyone who can edit a task's state can write its checkpoint: its next URL is untrusted input.
    emu = clio_emulator_factory(rate_limit=1000, records={"contacts": 120}, page_size=20)
    conn_id = support.clio_connection(monkeypatch, emu, requests_per_slot=20)
    store = MemoryTokenStore()

    def operator() -> ClioExtractOperator:
        return ClioExtractOperator(
            task_id="planted",
            clio_conn_id=conn_id,
            endpoint="grow/contacts",
            fields=["id"],
            destination=f"file://{tmp_path}/out",
            records_per_file=40,
            token_store=store,
            request_retry=support.FAST_FAIL,
        )

    with support.OutageAfterPages(emu, pages=3, requests=2), pytest.raises(ClioTransientError):
        operator().execute({})
    path = tmp_path / "out" / "_checkpoint.json"
    saved = json.loads(path.read_text())
    emulator_origin = emu.url.split("://", 1)[1]
    query = saved["next_url"].split("?", 1)[1]
    saved["next_url"] = f"http://127.0.0.1:{listener.port}\\@{emulator_origin}/grow/contacts?{query}"
    path.write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING):
        summary = operator().execute({})
    assert "Cannot resume from the saved cursor" in caplog.text
    assert "backslash" in caplog.text
    assert summary["resumed"] is False
    assert summary["records"] == 120
    time.sleep(0.1)
    assert listener.received == []


def test_endless_empty_pages_stop_after_the_limit(server: _Server, hook: ClioHook) -> None:
    with pytest.raises(ClioPaginationError, match=f"{MAX_EMPTY_PAGES} empty pages in a row"):
        list(hook.paginate("grow/empty-forever"))
    assert len(server.seen) == MAX_EMPTY_PAGES


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


@pytest.fixture
def rotated(server: _Server, monkeypatch: pytest.MonkeyPatch) -> tuple[str, TokenSet]:
    """A connection whose stored refresh token is rotated away by the first request's refresh."""
    conn = {
        "conn_type": "clio",
        "host": server.base,
        "login": "rotating-app",
        "password": "rotating-secret",
        "extra": {"refresh_token": "connection-refresh-000"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CLIO_ROTATED", json.dumps(conn))
    # In the store, not in the connection: only the token manager knows this value.
    return "clio_rotated", TokenSet(access_token=None, refresh_token=ROTATED_AWAY, expires_at=None)


@pytest.mark.parametrize("status", [422, 503])
def test_a_rotated_away_refresh_token_is_scrubbed_from_errors_and_retry_reasons(
    server: _Server,
    rotated: tuple[str, TokenSet],
    status: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    conn_id, stored = rotated
    store = MemoryTokenStore()
    store.save(conn_id, stored)
    hook = ClioHook(conn_id, token_store=store, retry=RetrySettings(max_attempts=2, initial=0, jitter=False))
    with pytest.raises((ClioBadRequestError, ClioTransientError)) as info:
        hook.get(f"grow/echo-old-refresh-{status}")
    assert f"refresh_token={ROTATED_AWAY}" in server.posts[0]  # it was spent, and rotated away
    assert store.load(conn_id).refresh_token == "stub-refresh-0001"
    assert ROTATED_AWAY not in str(info.value)
    assert "grant *** was revoked" in str(info.value)
    logged = capsys.readouterr()
    if status == 503:
        # The retry reason logged before backing off, and the give-up line, carry the scrubbed message.
        assert "on attempt 1/2 (grant *** was revoked" in logged.out + logged.err
    assert ROTATED_AWAY not in logged.out + logged.err


def test_a_rotated_away_refresh_token_is_scrubbed_from_trigger_events(
    airflow_db: Path, server: _Server, rotated: tuple[str, TokenSet]
) -> None:
    import asyncio

    from airflow_provider_clio.auth import VariableTokenStore
    from airflow_provider_clio.triggers.clio import ClioRecordsTrigger

    conn_id, stored = rotated
    VariableTokenStore().save(conn_id, stored)  # the triggerer's hook uses the default store
    trigger = ClioRecordsTrigger(endpoint="grow/echo-old-refresh-422", clio_conn_id=conn_id)

    async def first_event() -> Any:
        async for event in trigger.run():
            return event.payload
        return None

    payload = asyncio.run(first_event())
    assert payload["status"] == "error"
    assert payload["error_type"] == "ClioBadRequestError"
    assert "grant *** was revoked" in payload["message"]
    assert ROTATED_AWAY not in json.dumps(payload)


def test_retry_after_on_a_503_is_honoured(server: _Server, hook: ClioHook, sleeps: list[float]) -> None:
    assert hook.get("grow/maintenance-once") == {"data": []}
    # Exactly the server's wait: retrying a maintenance 503 sooner only earns another 503.
    # (The first sleep is the limiter's hand-over window of a new hook; the backoff is the second.)
    assert sleeps[1:] == [7.0]
    assert hook.stats.retries == 1
    assert [path for path, _ in server.seen] == ["/grow/maintenance-once"] * 2


def test_the_prepared_request_is_checked_right_before_sending(
    server: _Server, hook: ClioHook, listener: _Listener
) -> None:
    # The last line of defence, below next-link resolution: whatever URL reaches the send path, the token
    # goes only where requests will really connect, read from the prepared request with urllib3's parser.
    port_b = server.server_address[1]
    sneaky = f"http://127.0.0.1:{listener.port}\\@127.0.0.1:{port_b}/grow/contacts"
    with pytest.raises(
        ClioFatalError, match=f"refusing to send the access token to http://127.0.0.1:{listener.port}"
    ):
        hook._call("GET", sneaky, label="grow/contacts")
    time.sleep(0.1)
    assert listener.received == []
    assert server.seen == []
    assert hook.stats.requests == 0
