# SPDX-License-Identifier: Apache-2.0
"""Tests for airflow_provider_clio.lookups: id parsing, batching, and answers the emulator never gives.

The happy paths through the emulator are in ``tests/hooks/test_clio_lookups.py``; here a tiny real server on
loopback sends what Clio should not: a record twice, a record nobody asked for, a record without an id.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.exceptions import ClioConfigError, ClioFatalError
from airflow_provider_clio.hooks.clio import ClioHook
from airflow_provider_clio.lookups import RecordLookup, batches, normalize_ids, with_id_field
from airflow_provider_clio.rate_limit import reset_shared_limiters

# -- normalize_ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([3, 1, 2], [3, 1, 2]),
        ((5, "6", " 7 "), [5, 6, 7]),
        (iter([1, 1, "1", 2]), [1, 2]),  # repeats are looked up once, first position kept
        (range(1, 4), [1, 2, 3]),
        (42, [42]),
        ("12", [12]),
        ("1,2, 3", [1, 2, 3]),
        ("1 2\n3", [1, 2, 3]),
        ("[4, 5, 4]", [4, 5]),  # what a templated list renders to
        ("['8', '9']", [8, 9]),
        ("", []),
        ([], []),
    ],
)
def test_normalize_ids(ids: Any, expected: list[int]) -> None:
    assert normalize_ids(ids) == expected


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([1, "x7"], "'x7'"),
        ([1, 2.5], "2.5"),
        ([False], "False"),
        (["0"], "'0'"),
        ([-3], "-3"),
        (["1.0"], "'1.0'"),
        ([None], "None"),
        ("1;2", "'1;2'"),
        (None, "NoneType"),
        (b"12", "bytes"),
        ({"id": 1}, "dict"),
        (3.0, "float"),
    ],
)
def test_normalize_ids_names_the_bad_value(ids: Any, message: str) -> None:
    with pytest.raises(ClioConfigError, match=message):
        normalize_ids(ids)


# -- with_id_field and batches ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (None, None),
        ("", None),
        (["name"], "id,name"),
        ("name, id", "name,id"),
        (["client{id,name}", "name"], "id,client{id,name},name"),
    ],
)
def test_with_id_field(fields: Any, expected: str | None) -> None:
    assert with_id_field(fields) == expected


def test_with_id_field_rejects_bad_syntax() -> None:
    with pytest.raises(ClioConfigError):
        with_id_field("name{")


def test_batches_are_at_most_50() -> None:
    assert [len(b) for b in batches(list(range(120)))] == [50, 50, 20]
    assert [b for b in batches([1, 2, 3], 2)] == [[1, 2], [3]]
    assert list(batches([])) == []
    for size in (0, 51, True, 2.0):
        with pytest.raises(ClioConfigError, match="batch size"):
            list(batches([1], size))  # type: ignore[arg-type]


# -- a server that misbehaves ------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    """Answer ``/grow/<name>`` from ``pages[name][page_token]``; record every query."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.base = f"http://127.0.0.1:{self.server_address[1]}"
        self.queries: list[dict[str, list[str]]] = []
        self.pages: dict[str, dict[str, dict[str, Any]]] = {}
        self.filtered: set[str] = set()  # endpoints that apply ids[] like Clio (the others ignore it)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self.server.queries.append(query)
        name = url.path.rsplit("/", 1)[-1]
        body = self.server.pages[name][query.get("page_token", [""])[0]]
        if name in self.server.filtered:
            body = {**body, "data": [r for r in body["data"] if str(r["id"]) in query["ids[]"]]}
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def hook(server: _Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[ClioHook]:
    reset_shared_limiters()
    conn = {
        "conn_type": "clio",
        "host": server.base,
        "login": "lookup-app",
        "password": "lookup-secret",
        "extra": {
            "refresh_token": "unused",
            "access_token": "lookup-token",
            "expires_at": time.time() + 3600,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_CLIO_LOOKUP", json.dumps(conn))
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    yield ClioHook("clio_lookup", token_store=MemoryTokenStore(), clock=lambda: now[0], sleep=sleep)
    reset_shared_limiters()


def _page(server: _Server, name: str, ids: list[Any], next_token: str | None = None) -> dict[str, Any]:
    paging = {"next": f"{server.base}/grow/{name}?page_token={next_token}"} if next_token else {}
    return {"data": [{"id": i, "name": f"n{i}"} for i in ids], "meta": {"paging": paging}}


def test_a_record_the_server_sends_twice_is_yielded_once(server: _Server, hook: ClioHook) -> None:
    server.pages["twice"] = {"": _page(server, "twice", [1, 2], "p2"), "p2": _page(server, "twice", [2, 3])}
    lookup = RecordLookup(hook, "grow/twice", [1, 2, 3, 4])
    pages = list(lookup.pages())
    assert [[r["id"] for r in page.records] for page in pages] == [[1, 2], [3]]
    assert (lookup.missing, lookup.repeated, lookup.found, lookup.requests) == ([4], 1, 3, 2)
    assert server.queries[0]["ids[]"] == ["1", "2", "3", "4"]
    assert server.queries[1] == {"page_token": ["p2"]}  # the next URL exactly as sent


def test_a_server_ignoring_ids_stops_the_lookup(server: _Server, hook: ClioHook) -> None:
    server.pages["all"] = {"": _page(server, "all", [1, 2, 3], "p2"), "p2": _page(server, "all", [4, 5])}
    lookup = hook.get_records("grow/all", [2])
    records = lookup.records()
    with pytest.raises(ClioFatalError, match="ignored the ids\\[\\] filter"):
        list(records)
    assert len(server.queries) == 1  # never read the rest of the endpoint


def test_a_record_without_an_integer_id_is_fatal(server: _Server, hook: ClioHook) -> None:
    server.pages["noid"] = {"": {"data": [{"name": "x"}], "meta": {"paging": {}}}}
    with pytest.raises(ClioFatalError, match="without an integer 'id'"):
        list(hook.get_records("grow/noid", [1]).records())


def test_string_ids_in_records_match(server: _Server, hook: ClioHook) -> None:
    server.pages["strings"] = {"": _page(server, "strings", ["7", "8"])}
    lookup = hook.get_records("grow/strings", ["8", 7])
    assert [r["id"] for r in lookup.records()] == ["7", "8"]
    assert lookup.missing == []


def test_params_go_into_every_batch_and_cannot_set_ids(server: _Server, hook: ClioHook) -> None:
    server.pages["inc"] = {"": _page(server, "inc", [1])}
    server.filtered.add("inc")
    lookup = RecordLookup(
        hook, "grow/inc", [1, 2, 3], params={"include": "custom_field_values"}, batch_size=2
    )
    assert lookup.batches == 2
    list(lookup.records())
    assert [(q["ids[]"], q["include"]) for q in server.queries] == [
        (["1", "2"], ["custom_field_values"]),
        (["3"], ["custom_field_values"]),
    ]
    assert lookup.missing == [2, 3]
    for params in ({"ids[]": [1]}, {"ids": "1"}, {"fields": "id"}):
        with pytest.raises(ClioConfigError, match="params"):
            hook.get_records("grow/inc", [1], params=params)
    with pytest.raises(ClioConfigError, match="batch size"):
        RecordLookup(hook, "grow/inc", [1], batch_size=60)
    assert len(server.queries) == 2
