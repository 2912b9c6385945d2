# SPDX-License-Identifier: Apache-2.0
"""Serve the emulator over HTTP/1.1 with keep-alive on the stdlib threading server, and record every request.

The stdlib server is used rather than an ASGI one because the drop and truncate faults need control of the
raw socket: closing it without an answer, or after half a body announced with its full ``Content-Length``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from airflow_provider_clio.testing.faults import LatencyInjector
from airflow_provider_clio.testing.recorder import RequestLog, RequestRecord

__all__ = ["ADMIN_PREFIX", "EmulatorHTTPServer", "Request", "Response", "json_response"]

ADMIN_PREFIX = "/_emulator/"
"""Paths of the emulator's own admin surface: never delayed by the latency knobs."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request.

    :param method: HTTP method.
    :param path: URL path.
    :param pairs: query parameters in order, repeats kept.
    :param headers: header names lower-cased (last value wins).
    :param body: raw body.
    :param t: monotonic arrival time (after the injected inbound delay).
    :param wall: epoch arrival time.
    :param host: the ``Host`` the client used (or the server's address), for absolute URLs.
    """

    method: str
    path: str
    pairs: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    t: float
    wall: float
    host: str


@dataclass
class Response:
    """What to answer, how to deliver it, and what to record about the request.

    :param status: HTTP status (0 with ``drop``).
    :param body: response body.
    :param headers: extra headers (``Content-Length`` is always added).
    :param drop: close the connection without answering.
    :param slow_seconds: wait this long before answering.
    :param truncate: send half the body after a full ``Content-Length``, then close.
    :param client_id: recorded client id.
    :param region: recorded region.
    :param resource: recorded API resource.
    :param page_token: recorded page token.
    :param fault: recorded fault kind.
    :param api: recorded API (``"platform"``, ``"manage"``), None for other paths.
    :param token_id: recorded access-token id (a digest, never the token).
    """

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    drop: bool = False
    slow_seconds: float = 0.0
    truncate: bool = False
    client_id: str | None = None
    region: str | None = None
    resource: str | None = None
    page_token: str | None = None
    fault: str | None = None
    api: str | None = None
    token_id: str | None = None


def json_response(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    """Build a JSON response."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, [("Content-Type", "application/json; charset=utf-8"), *(headers or [])])


Dispatcher = Callable[[Request], Response]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ClioEmulator/1.0"
    # Idle keep-alive connections are closed after this long, so abandoned clients do not pin threads.
    timeout = 120
    # Small answers must not wait for delayed ACKs (Nagle would add ~40 ms per request on loopback).
    disable_nagle_algorithm = True
    server: EmulatorHTTPServer

    _arrival: tuple[float, float] = (0.0, 0.0)

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def parse_request(self) -> bool:
        # The request line and headers have just been read. The injected inbound delay is spent here, before
        # the arrival stamp that the limiter and the log use, as if the request had travelled that long.
        ok = super().parse_request()
        if ok and not self.path.startswith(ADMIN_PREFIX):
            delay = self.server.latency.inbound()
            if delay > 0:
                time.sleep(delay)
        self._arrival = (time.monotonic(), time.time())
        return ok

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _handle(self) -> None:
        t, wall = self._arrival
        split = urlsplit(self.path)
        pairs = parse_qsl(split.query, keep_blank_values=True)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "invalid Content-Length")
            return
        body = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        host = headers.get("host") or "{}:{}".format(*self.server.server_address[:2])
        request = Request(self.command, split.path, pairs, headers, body, t, wall, host)
        try:
            response = self.server.dispatch(request)
        except Exception:
            log.exception("emulator failed on %s %s", self.command, self.path)
            response = json_response(500, {"error": {"status": "500", "message": "emulator internal error"}})
        query: dict[str, list[str]] = {}
        for key, value in pairs:
            query.setdefault(key, []).append(value)
        self.server.log.append(
            RequestRecord(
                t=t,
                wall=wall,
                method=self.command,
                path=split.path,
                query=query,
                status=0 if response.drop else response.status,
                client_id=response.client_id,
                region=response.region,
                resource=response.resource,
                page_token=response.page_token,
                fault=response.fault,
                api=response.api,
                token_id=response.token_id,
            )
        )
        # Recorded before answering: a client that got its answer always finds its request in the log.
        back = 0.0 if split.path.startswith(ADMIN_PREFIX) else self.server.latency.response
        self._deliver(response, back)

    def _deliver(self, response: Response, back: float = 0.0) -> None:
        if response.drop:
            # Nothing is written; finish() closes the socket, the client sees the connection end.
            self.close_connection = True
            return
        if response.slow_seconds + back > 0:
            time.sleep(response.slow_seconds + back)
        reason = self.responses.get(response.status, ("",))[0]
        lines = [
            f"{self.protocol_version} {response.status} {reason}",
            f"Server: {self.version_string()}",
            f"Date: {self.date_time_string()}",
            *(f"{name}: {value}" for name, value in response.headers),
            f"Content-Length: {len(response.body)}",
        ]
        body = response.body
        if response.truncate:
            lines.append("Connection: close")
            body = body[: len(body) // 2]
            self.close_connection = True
        self.log_request(response.status, len(body))
        try:
            # Status line, headers and body leave in one write: one segment per small answer.
            self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            self.wfile.flush()
        except OSError:
            # The client went away mid-answer; nothing to do but close.
            self.close_connection = True


class EmulatorHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that dispatches to the emulator and can cut every open connection on stop.

    :param address: ``(host, port)``; port 0 picks a free port.
    :param dispatch: maps a :class:`Request` to a :class:`Response`.
    :param log: where every request is recorded.
    :param latency: the injected network latency (default: none).
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        dispatch: Dispatcher,
        log: RequestLog,
        latency: LatencyInjector | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.log = log
        self.latency = latency or LatencyInjector()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket) -> None:
        """Remember an open client connection."""
        with self._conns_lock:
            self._conns.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        """Forget a closed client connection."""
        with self._conns_lock:
            self._conns.discard(conn)

    def close_connections(self) -> None:
        """Shut every open keep-alive connection, so no client keeps talking to a stopped emulator."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
