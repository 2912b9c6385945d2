# SPDX-License-Identifier: Apache-2.0
"""The person-facing half of ``airflow clio auth``: the authorize URL, and getting the code back.

The code arrives either by itself, when the redirect URI is a loopback URI this process listens on
(:mod:`airflow_provider_clio.cli.loopback`), or pasted on stdin (the code or the whole redirect URL) —
whichever comes first, within a time limit.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from typing import TextIO
from urllib.parse import parse_qs, urlencode, urlsplit

from airflow_provider_clio.cli.loopback import RedirectListener

__all__ = ["CodeReceiver", "authorize_url", "code_from"]


def authorize_url(endpoint: str, *, client_id: str, redirect_uri: str, state: str, scope: str | None) -> str:
    """Return the URL a person opens to approve the application."""
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": state}
    if scope:
        params["scope"] = " ".join(scope.replace(",", " ").split())
    return f"{endpoint}?{urlencode(params)}"


def code_from(value: str, *, state: str | None) -> str:
    """
    Return the authorization code in ``value``: the bare code, or the whole URL Clio redirected to.

    A redirect URL (or its query string) is checked for Clio's ``error`` answer and, when ``state`` is
    given, for the state this command generated (so a code from another authorization attempt is not used
    by mistake).
    """
    value = value.strip()
    if "://" in value or value.startswith("?") or "code=" in value or "error=" in value:
        query = parse_qs(urlsplit(value).query if "://" in value else value.lstrip("?"))
        if "error" in query:
            description = query.get("error_description", [""])[0]
            raise SystemExit(f"error: Clio answered {query['error'][0]}: {description}".rstrip(": "))
        codes = query.get("code")
        if not codes or not codes[0]:
            raise SystemExit("error: the pasted URL has no 'code' parameter")
        returned_state = query.get("state", [None])[0]
        if state and returned_state and returned_state != state:
            raise SystemExit(
                "error: the pasted URL belongs to another authorization attempt (state mismatch); "
                "open the URL printed above and paste the URL it redirects to"
            )
        return codes[0]
    if not value:
        raise SystemExit("error: no authorization code given")
    return value


class CodeReceiver:
    """
    Wait for the authorization code from the loopback redirect or a paste on stdin, first come first served.

    Enter the ``with`` block before printing the authorize URL, so the listener is bound by the time a
    browser could redirect to it.

    :param redirect_uri: The redirect URI of the authorize request.
    :param state: The ``state`` of the authorize request; a redirect without it is refused.
    :param listen: Listen on the redirect URI when it is a loopback URI.
    :param timeout: Seconds to wait before giving up.
    :param stdin: Where a pasted code is read from.
    :param prompt: Where the prompt goes (stderr keeps stdout parseable).
    """

    def __init__(
        self,
        redirect_uri: str,
        state: str,
        *,
        listen: bool = True,
        timeout: float = 300.0,
        stdin: TextIO | None = None,
        prompt: TextIO | None = None,
    ) -> None:
        self.redirect_uri = redirect_uri
        self.state = state
        self.timeout = timeout
        self._stdin = stdin if stdin is not None else sys.stdin
        self._prompt = prompt if prompt is not None else sys.stderr
        self._inbox: queue.Queue[tuple[str, str]] = queue.Queue()
        self._listener = RedirectListener(redirect_uri, state, lambda query: self._put("redirect", query))
        self._listen = listen

    def _put(self, kind: str, value: str) -> None:
        self._inbox.put((kind, value))

    @property
    def listening(self) -> bool:
        """Whether the redirect URI is being served on the loopback interface."""
        return bool(self._listener.addresses)

    @property
    def bind_errors(self) -> list[str]:
        """Why the loopback listener could not be started (empty when it runs or was not wanted)."""
        return self._listener.errors

    def __enter__(self) -> CodeReceiver:
        if self._listen:
            self._listener.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._listener.__exit__(*exc_info)

    def wait(self) -> str:
        """Return the code; raise ``SystemExit`` on a refusal, a wrong state, no input or the time limit."""
        if self.listening:
            text = "Waiting for the redirect (or paste the redirect URL or the code here): "
        else:
            text = "Paste the code (or the whole redirect URL): "
        print(text, end="", file=self._prompt, flush=True)
        threading.Thread(target=self._read_paste, name="clio-auth-paste", daemon=True).start()
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                kind, value = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SystemExit(self._timeout_message()) from None
            if kind == "eof":
                if not self.listening:
                    raise SystemExit("error: no authorization code given")
                continue  # stdin is closed (a script): the redirect may still come
            if kind == "redirect":
                print("received.", file=self._prompt, flush=True)
            return code_from(value, state=self.state)

    def _read_paste(self) -> None:
        try:
            while line := self._stdin.readline():
                if line.strip():
                    self._put("paste", line)
                    return
        except (OSError, ValueError):
            pass  # no usable stdin: only the redirect can deliver
        self._put("eof", "")

    def _timeout_message(self) -> str:
        waited = f"no authorization arrived within {self.timeout:g} s"
        if self.listening:
            return (
                f"error: {waited} at {self.redirect_uri}. Open the URL above in a browser on this machine "
                "and approve; from another machine, paste the URL the browser ends on, or run again with "
                "--code '<that URL>'."
            )
        return f"error: {waited}. Run again and paste the redirect URL, or pass --code '<that URL>'."
