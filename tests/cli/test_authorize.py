# SPDX-License-Identifier: Apache-2.0
"""The authorize URL, code parsing, and receiving the code on a real loopback listener or a paste."""

from __future__ import annotations

import io
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_clio.cli.authorize import CodeReceiver, authorize_url, code_from
from airflow_provider_clio.cli.loopback import loopback_addresses

REDIRECT_URI = "http://localhost:8910/callback"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _BlockingStdin(io.StringIO):
    """A terminal nobody types into: readline() blocks until the test ends."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        self.released.wait(30)
        return ""


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
    assert code_from("?code=abc123&state=st", state="st") == "abc123"
    assert code_from("code=abc123", state=None) == "abc123"
    with pytest.raises(SystemExit, match="state mismatch"):
        code_from(f"{REDIRECT_URI}?code=abc123&state=other", state="st")
    with pytest.raises(SystemExit, match="access_denied"):
        code_from(f"{REDIRECT_URI}?error=access_denied&state=st", state="st")
    with pytest.raises(SystemExit, match="no authorization code"):
        code_from("\n", state="st")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://127.0.0.1:8910/callback", (("127.0.0.1",), 8910, "/callback")),
        ("http://localhost:8910/cb", (("127.0.0.1", "::1"), 8910, "/cb")),
        ("http://[::1]:8910", (("::1",), 8910, "/")),
        ("http://localhost/callback", None),  # no explicit port: port 80 needs root
        ("https://127.0.0.1:8910/callback", None),  # a browser cannot reach a local https listener
        ("http://example.com:8910/callback", None),
        ("http://10.0.0.5:8910/callback", None),
    ],
)
def test_only_loopback_redirect_uris_with_a_port_are_served(uri, expected):
    assert loopback_addresses(uri) == expected


def test_the_redirect_delivers_the_code_and_a_wrong_state_is_refused():
    uri = f"http://127.0.0.1:{free_port()}/callback"
    stdin = _BlockingStdin()
    with CodeReceiver(uri, "good-state", timeout=30, stdin=stdin, prompt=io.StringIO()) as receiver:
        assert receiver.listening
        # Another attempt's redirect, a stray path: refused, and the command keeps waiting.
        wrong = requests.get(uri, params={"code": "stolen", "state": "other"}, timeout=10)
        assert wrong.status_code == 400
        assert "Wrong authorization attempt" in wrong.text
        assert requests.get(uri.replace("/callback", "/favicon.ico"), timeout=10).status_code == 404
        threading.Timer(
            0.2, lambda: requests.get(uri, params={"code": "the-code", "state": "good-state"}, timeout=10)
        ).start()
        assert receiver.wait() == "the-code"
    stdin.released.set()
    with pytest.raises(requests.ConnectionError):  # the listener is gone after the block
        requests.get(uri, timeout=5)


def test_a_refusal_arrives_as_a_clear_error():
    uri = f"http://127.0.0.1:{free_port()}/callback"
    stdin = _BlockingStdin()
    with CodeReceiver(uri, "st", timeout=30, stdin=stdin, prompt=io.StringIO()) as receiver:
        page = requests.get(uri, params={"error": "access_denied", "state": "st"}, timeout=10)
        assert page.status_code == 200
        with pytest.raises(SystemExit, match="Clio answered access_denied"):
            receiver.wait()
    stdin.released.set()


def test_a_paste_wins_when_no_redirect_comes():
    uri = f"http://127.0.0.1:{free_port()}/callback"
    prompt = io.StringIO()
    stdin = io.StringIO(f"\n{uri}?code=pasted&state=st\n")
    with CodeReceiver(uri, "st", timeout=30, stdin=stdin, prompt=prompt) as receiver:
        assert receiver.wait() == "pasted"
    assert "Waiting for the redirect (or paste" in prompt.getvalue()


def test_closed_stdin_keeps_waiting_for_the_redirect_until_the_time_limit():
    uri = f"http://127.0.0.1:{free_port()}/callback"
    started = time.monotonic()
    receiver = CodeReceiver(uri, "st", timeout=0.5, stdin=io.StringIO(""), prompt=io.StringIO())
    with receiver, pytest.raises(SystemExit, match=r"no authorization arrived within 0\.5 s at http://127"):
        receiver.wait()
    assert 0.4 < time.monotonic() - started < 10


def test_without_a_listener_a_closed_stdin_fails_at_once():
    with CodeReceiver(REDIRECT_URI, "st", listen=False, stdin=io.StringIO(""), prompt=io.StringIO()) as r:
        assert not r.listening
        with pytest.raises(SystemExit, match="no authorization code given"):
            r.wait()


def test_a_busy_port_falls_back_to_the_paste():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        uri = f"http://127.0.0.1:{busy.getsockname()[1]}/callback"
        stdin = io.StringIO("pasted-code\n")
        with CodeReceiver(uri, "st", stdin=stdin, prompt=io.StringIO()) as receiver:
            assert not receiver.listening
            assert len(receiver.bind_errors) == 1
            assert "127.0.0.1" in receiver.bind_errors[0]
            assert receiver.wait() == "pasted-code"


def test_localhost_is_served_on_ipv4_whatever_happens_on_ipv6():
    port = free_port()
    stdin = _BlockingStdin()
    with CodeReceiver(f"http://localhost:{port}/cb", "st", stdin=stdin, prompt=io.StringIO()) as receiver:
        threading.Timer(
            0.2, lambda: requests.get(f"http://127.0.0.1:{port}/cb?code=c4&state=st", timeout=10)
        ).start()
        assert receiver.wait() == "c4"
    stdin.released.set()


def test_the_emulators_authorize_redirect_completes_with_a_plain_get(clio_emulator_factory):
    # What `airflow clio auth` relies on: a GET that follows the redirect lands on the listener with a
    # code and the state; a request that cannot get a code lands there with the error and the state.
    emulator = clio_emulator_factory(rate_limit=1000)
    emulator.register_app("scoped-app", "scoped-secret-01", region="us", scopes=["grow_contact_read"])
    uri = f"http://127.0.0.1:{free_port()}/callback?tenant=a"
    for scope, expected in (("grow_contact_read", "code"), ("grow_matter_read", "invalid_scope")):
        stdin = _BlockingStdin()
        with CodeReceiver(uri, "st-1", timeout=30, stdin=stdin, prompt=io.StringIO()) as receiver:
            url = authorize_url(
                f"{emulator.url}/oauth/authorize",
                client_id="scoped-app",
                redirect_uri=uri,
                state="st-1",
                scope=scope,
            )
            page = requests.get(url, timeout=30)
            assert page.status_code == 200
            assert parse_qs(urlsplit(page.url).query)["tenant"] == ["a"]  # the URI's own query is kept
            if expected == "code":
                assert receiver.wait().startswith("emu-code-")
            else:
                with pytest.raises(SystemExit, match="Clio answered invalid_scope: requested scopes exceed"):
                    receiver.wait()
        stdin.released.set()
    location = requests.get(
        f"{emulator.url}/oauth/authorize",
        params={"client_id": "scoped-app", "redirect_uri": uri, "response_type": "token", "state": "s"},
        allow_redirects=False,
        timeout=30,
    ).headers["Location"]
    with pytest.raises(SystemExit, match="unsupported_response_type"):
        code_from(location, state="s")
