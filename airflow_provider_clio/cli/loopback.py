# SPDX-License-Identifier: Apache-2.0
"""Receive the OAuth redirect on the loopback interface, as ``gcloud auth login`` does (RFC 8252 §7.3).

``airflow clio auth`` listens on the redirect URI's port when that URI is ``http://127.0.0.1:PORT/...``,
``http://localhost:PORT/...`` or ``http://[::1]:PORT/...``; the browser then hands the code over by itself.
Only a redirect carrying this attempt's ``state`` is accepted. Nothing here logs a request line: it holds
the authorization code.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

__all__ = ["RedirectListener", "loopback_addresses"]

# A redirect to "localhost" may reach either stack, so both are served when they can be bound.
_ADDRESSES = {"127.0.0.1": ("127.0.0.1",), "localhost": ("127.0.0.1", "::1"), "::1": ("::1",)}

_PAGE = (
    "<!doctype html><html><head><meta charset='utf-8'><title>airflow clio auth</title></head>"
    "<body style='font-family: sans-serif'><h3>{title}</h3><p>{text}</p></body></html>"
)


def loopback_addresses(redirect_uri: str) -> tuple[tuple[str, ...], int, str] | None:
    """
    Return ``(addresses, port, path)`` to listen on for ``redirect_uri``, or None when it is not loopback.

    Only plain ``http`` with an explicit port qualifies: a browser cannot reach a local ``https`` listener
    without a certificate, and port 80 needs root.
    """
    parts = urlsplit(redirect_uri)
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() != "http" or port is None or (parts.hostname or "") not in _ADDRESSES:
        return None
    return _ADDRESSES[parts.hostname or ""], port, parts.path or "/"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        super().__init__((address, port), handler)
        self.label = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for seconds without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]


def _handler(path: str, state: str, deliver: Callable[[str], None]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path != path:
                self._answer(HTTPStatus.NOT_FOUND, "Not found", "This is not the redirect URI.")
                return
            query = parse_qs(parts.query)
            if query.get("state", [None])[0] != state:
                # Another attempt's (or a forged) redirect: refuse it and keep waiting for ours.
                self._answer(
                    HTTPStatus.BAD_REQUEST,
                    "Wrong authorization attempt",
                    "This redirect does not carry the state of the running <code>airflow clio auth</code>; "
                    "open the URL it printed.",
                )
                return
            if "error" in query:
                self._answer(HTTPStatus.OK, "Authorization refused", "Clio refused; see the terminal.")
            else:
                self._answer(
                    HTTPStatus.OK,
                    "Authorization received",
                    "<code>airflow clio auth</code> has the code. You can close this tab.",
                )
            deliver("?" + parts.query)

        def _answer(self, status: HTTPStatus, title: str, text: str) -> None:
            body = _PAGE.format(title=title, text=text).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the request line carries the code: never log it

    return Handler


class RedirectListener:
    """
    Serve ``redirect_uri`` on the loopback interface inside a ``with`` block.

    ``deliver`` gets the redirect's query string (``?code=...&state=...`` or ``?error=...``) once a request
    with ``state`` arrives. :attr:`addresses` is empty when ``redirect_uri`` is not a loopback URI or
    nothing could be bound (then :attr:`errors` says why, and the caller falls back to the paste).

    :param redirect_uri: The redirect URI of the authorize request.
    :param state: The ``state`` of the authorize request.
    :param deliver: Called from a server thread with the accepted redirect's query string.
    """

    def __init__(self, redirect_uri: str, state: str, deliver: Callable[[str], None]) -> None:
        self.target = loopback_addresses(redirect_uri)
        self._state = state
        self._deliver = deliver
        self._servers: list[_Server] = []
        self.errors: list[str] = []
        """Why an address could not be bound (``host:port: reason``)."""

    @property
    def addresses(self) -> list[str]:
        """The ``host:port`` pairs served."""
        return [server.label for server in self._servers]

    def __enter__(self) -> RedirectListener:
        if self.target is not None:
            addresses, port, path = self.target
            handler = _handler(path, self._state, self._deliver)
            for address in addresses:
                try:
                    self._servers.append(_Server(address, port, handler))
                except OSError as exc:
                    self.errors.append(f"{address}:{port}: {exc.strerror or exc}")
        for server in self._servers:
            threading.Thread(target=server.serve_forever, name="clio-auth-redirect", daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()
