# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the token tests: an emulator application, a hand-moved clock, failing stores, a stub server."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_clio.auth import FileTokenStore, MemoryTokenStore, TokenManager, TokenSet, TokenStore

CLIENT_ID = "clio-auth-tests"
CLIENT_SECRET = "auth-tests-client-secret-5f1e"


def post(url: str, form: dict[str, str]) -> requests.Response:
    """Stand in for the hook's send path: the token endpoint is a plain form POST either way."""
    return requests.post(url, data=form, timeout=30)


class Clio:
    """A registered emulator application plus helpers to mint tokens and call the API like a worker."""

    def __init__(self, emulator: Any, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET) -> None:
        self.emu = emulator
        self.client_id = client_id
        self.client_secret = client_secret
        emulator.register_app(client_id=client_id, client_secret=client_secret, region="us")
        self.token_url = f"{emulator.url}/oauth/token"
        self.post = post

    def fresh(self) -> TokenSet:
        """Return a valid access token and refresh token of the app, as a connection would carry them."""
        access, expires_at = self.emu.issue_access_token(self.client_id)
        return TokenSet(access, self.emu.issue_refresh_token(self.client_id), expires_at)

    def manager(
        self, store: TokenStore, initial: TokenSet, conn_id: str | None = None, **kw: Any
    ) -> TokenManager:
        kw.setdefault("sleep", lambda s: None)
        kw.setdefault("client_secret", self.client_secret)
        return TokenManager(
            conn_id=conn_id or f"clio_{uuid.uuid4().hex[:8]}",
            client_id=self.client_id,
            token_url=self.token_url,
            initial=initial,
            store=store,
            post=post,
            **kw,
        )

    def api_status(self, access_token: str) -> int:
        """Call one API endpoint with ``access_token`` and return the HTTP status."""
        response = requests.get(
            f"{self.emu.url}/grow/users", headers={"Authorization": f"Bearer {access_token}"}, timeout=30
        )
        return response.status_code

    def token_calls(self, status: int | None = None) -> int:
        """Count token-endpoint requests (optionally with one status) the emulator recorded."""
        return sum(
            1
            for r in self.emu.requests
            if r.path == "/oauth/token"
            and r.client_id in (self.client_id, None)
            and status in (None, r.status)
        )

    def direct_refresh(self, refresh_token: str) -> requests.Response:
        """Spend ``refresh_token`` at the token endpoint, as another worker would."""
        return post(
            self.token_url,
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": self.client_id,
                "client_secret": self.client_secret,
            },
        )

    def authorization_code(self, redirect_uri: str) -> str:
        """Authorize the application (the emulator consents at once) and return the code."""
        location = requests.get(
            f"{self.emu.url}/oauth/authorize",
            params={
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "state": "s",
                "response_type": "code",
            },
            allow_redirects=False,
            timeout=30,
        ).headers["Location"]
        return parse_qs(urlsplit(location).query)["code"][0]


@pytest.fixture
def clio(clio_emulator_factory: Callable[..., Any]) -> Clio:
    # A generous rate limit: these tests are about tokens, not pacing.
    return Clio(clio_emulator_factory(rate_limit=1000))


@pytest.fixture
def clio_with(clio_emulator_factory: Callable[..., Any]) -> Callable[..., Clio]:
    """Return ``make(**emulator_options) -> Clio`` for an emulator with other options."""
    return lambda **options: Clio(clio_emulator_factory(**{"rate_limit": 1000, **options}))


class Clock:
    """An epoch clock tests move by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


class FailingStore(MemoryTokenStore):
    """A store whose next ``fail`` saves raise the way a database driver does: quoting the values."""

    def __init__(self, fail: int) -> None:
        super().__init__()
        self.fail = fail

    def save(self, conn_id: str, tokens: TokenSet) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError(f"INSERT INTO variable failed [parameters: {tokens.to_json()}]")
        super().save(conn_id, tokens)


class FailingFileStore(FileTokenStore):
    """A file store whose next ``fail`` saves raise (a full disk, a lost NFS mount)."""

    def __init__(self, path: Any, fail: int) -> None:
        super().__init__(path)
        self.fail = fail

    def save(self, conn_id: str, tokens: TokenSet) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError(f"No space left on device while writing {tokens.to_json()}")
        super().save(conn_id, tokens)


@pytest.fixture
def failing_store() -> type[FailingStore]:
    return FailingStore


@pytest.fixture
def failing_file_store() -> type[FailingFileStore]:
    return FailingFileStore


class StubTokenServer:
    """
    A token endpoint on 127.0.0.1 for another API's rules: refresh tokens that do not rotate, and
    ``answer`` to override the reply (``(status, body, headers)``) for endpoints that are not Clio.

    Refresh tokens in ``refresh_tokens`` stay valid after use; every refresh answers a new access token
    and no ``refresh_token``. Unknown tokens answer ``error_body(code, description)`` with status 400.
    """

    def __init__(self) -> None:
        self.refresh_tokens: set[str] = set()
        self.client_secret = CLIENT_SECRET
        self.answer: tuple[int, str, dict[str, str]] | None = None
        self.error_body: Callable[[str, str], dict[str, Any]] = lambda code, text: {
            "error": code,
            "error_description": text,
        }
        self.forms: list[dict[str, str]] = []
        self.issued: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/oauth/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reply(self, form: dict[str, str]) -> tuple[int, str, dict[str, str]]:
        self.forms.append(form)
        if self.answer is not None:
            return self.answer
        if form.get("client_secret") != self.client_secret:
            return 401, json.dumps(self.error_body("invalid_client", "client authentication failed")), {}
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") not in self.refresh_tokens:
            return 400, json.dumps(self.error_body("invalid_grant", "the refresh token is invalid")), {}
        access = f"stub-access-{uuid.uuid4().hex}"
        self.issued.append(access)
        body = {"access_token": access, "token_type": "bearer", "expires_in": 2592000}
        return 200, json.dumps(body), {}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                status, body, headers = stub.reply(form)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def stub_token_server() -> Iterator[StubTokenServer]:
    server = StubTokenServer()
    yield server
    server.close()


@pytest.fixture
def stub_manager(stub_token_server: StubTokenServer) -> Callable[..., TokenManager]:
    """Return ``make(store, initial, **kw) -> TokenManager`` talking to the stub token endpoint."""

    def make(store: TokenStore, initial: TokenSet, conn_id: str | None = None, **kw: Any) -> TokenManager:
        kw.setdefault("sleep", lambda s: None)
        return TokenManager(
            conn_id=conn_id or f"stub_{uuid.uuid4().hex[:8]}",
            client_id=CLIENT_ID,
            client_secret=kw.pop("client_secret", CLIENT_SECRET),
            token_url=stub_token_server.url,
            initial=initial,
            store=store,
            post=post,
            **kw,
        )

    return make
