# SPDX-License-Identifier: Apache-2.0
"""Cursor pagination over Clio list endpoints: pages, ``next`` links, loop and host checks.

Clio pages with an opaque ``page_token`` carried in ``meta.paging.next``, an absolute URL that already holds
the original filters and fields. Clients that merged their own parameters back into it looped or duplicated
records, so the path and query are requested exactly as given.

The ``next`` URL need not be on the API base's host: Clio's own spec shows
``https://grow.clio.com/api/v2/contacts?page_token=…`` for an API at ``api.clio.com``. Since every request
carries the bearer token, and Clio says to send it only to ``*.clio.com``:

- without a ``host`` override, a ``next`` URL on the API origin or on ``https://clio.com`` /
  ``https://*.clio.com`` (default port) is followed as is;
- with a ``host`` override (a proxy, an emulator), Clio's ``next`` still names Clio's host, which this
  deployment must not (or cannot) reach directly: a ``next`` URL on ``*.clio.com`` or on the override's own
  origin is rewritten onto the override base, keeping its path and query byte for byte;
- anything else (plain http, a foreign host, another port) is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

from airflow_provider_clio.exceptions import ClioPaginationError

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Page:
    """
    One page of a list endpoint.

    :param records: The page's records, in the server's order (id ascending on Clio).
    :param next_url: The ``next`` URL exactly as the server sent it (absolute), ``None`` on the last page.
        Persist it to resume an interrupted extraction with ``iter_pages(..., start_url=next_url)``.
    :param number: 1-based number of this page within the current ``iter_pages`` call.
    :param url: The URL this page was fetched from.
    """

    records: list[dict[str, Any]]
    next_url: str | None
    number: int
    url: str


def origin(url: str) -> tuple[str, str, int | None]:
    """Return ``(scheme, host, port)`` of ``url``, lower-cased, with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)


def same_origin(url: str, base_url: str) -> bool:
    """Tell whether ``url`` is on the same scheme, host and port as ``base_url``."""
    return origin(url) == origin(base_url) and bool(origin(url)[1])


def is_clio_https(url: str) -> bool:
    """Tell whether ``url`` is ``https`` on ``clio.com`` or a subdomain of it, on the default port."""
    scheme, host, port = origin(url)
    return scheme == "https" and port == 443 and (host == "clio.com" or host.endswith(".clio.com"))


def token_allowed(url: str, base_url: str, *, host_override: bool) -> bool:
    """
    Tell whether a request to ``url`` may carry the bearer token of an API at ``base_url``.

    Always on the API origin; without a ``host`` override also on ``https://*.clio.com`` (Clio's rule).
    """
    return same_origin(url, base_url) or (not host_override and is_clio_https(url))


def page_token_of(url: str) -> str | None:
    """Return the ``page_token`` query value of ``url``, if any."""
    values = parse_qs(urlsplit(url).query).get("page_token")
    return values[0] if values else None


def next_link(body: Mapping[str, Any]) -> str | None:
    """Return ``meta.paging.next`` of a list response, ``None`` when absent, null or empty (last page)."""
    meta = body.get("meta")
    paging = meta.get("paging") if isinstance(meta, Mapping) else None
    link = paging.get("next") if isinstance(paging, Mapping) else None
    if link is None or link == "":
        return None
    if not isinstance(link, str):
        raise ClioPaginationError(f"meta.paging.next is not a URL: {type(link).__name__}")
    return link


def page_records(body: Any, url: str) -> list[dict[str, Any]]:
    """Return the ``data`` list of a list response, raising ClioPaginationError when it has none."""
    data = body.get("data") if isinstance(body, Mapping) else None
    if not isinstance(data, list):
        raise ClioPaginationError(
            f"expected a list response with a 'data' array from {_short(url)}, got "
            f"{type(data).__name__ if isinstance(body, Mapping) else type(body).__name__}"
        )
    return data


class CursorTracker:
    """
    Guard one pagination run: every URL goes where the token may go, and none is fetched twice.

    :param base_url: The API base URL (Clio's, or the connection's ``host`` override).
    :param host_override: ``base_url`` comes from the connection's ``host`` (a proxy or an emulator):
        ``next`` URLs naming Clio's hosts are rewritten onto it instead of being followed there.
    """

    def __init__(self, base_url: str, *, host_override: bool = False) -> None:
        self.base_url = base_url.rstrip("/")
        self.host_override = host_override
        self._urls: set[str] = set()
        self._tokens: set[str] = set()

    def resolve(self, url: str, *, what: str = "next URL") -> str:
        """Return the URL to request for ``url`` (see the module docstring), or raise ClioPaginationError."""
        if self.host_override:
            if same_origin(url, self.base_url):
                return url
            if is_clio_https(url):
                # The proxy fronts Clio: keep Clio's path and query exactly, swap only scheme and host.
                parts = urlsplit(url)
                return f"{self.base_url}{parts.path}" + (f"?{parts.query}" if parts.query else "")
        elif token_allowed(url, self.base_url, host_override=False):
            return url
        scheme, host, port = origin(url)
        clio = "an https://*.clio.com URL to rewrite onto it" if self.host_override else "https://*.clio.com"
        raise ClioPaginationError(
            f"refusing to follow a {what} on {scheme}://{host}:{port}: it is neither the API host "
            f"{self.base_url} nor {clio}, and the request would carry the access token there"
        )

    def check_origin(self, url: str, *, what: str = "next URL") -> None:
        """Refuse ``url`` unless :meth:`resolve` accepts it (the bearer token must not go anywhere else)."""
        self.resolve(url, what=what)

    def visit(self, url: str) -> None:
        """Record that ``url`` is about to be fetched; raise ClioPaginationError if this run saw it before."""
        token = page_token_of(url)
        if url in self._urls or (token is not None and token in self._tokens):
            raise ClioPaginationError(
                f"pagination loop: the server sent a next URL that was already fetched ({_short(url)}); "
                "stopping instead of reading the same records again"
            )
        self._urls.add(url)
        if token is not None:
            self._tokens.add(token)

    def follow(self, body: Mapping[str, Any], current_url: str) -> str | None:
        """Return the URL to request for ``body``'s ``next`` link (see :meth:`resolve`), or ``None``."""
        link = next_link(body)
        if link is None:
            return None
        # Clio sends absolute URLs, which urljoin returns unchanged; a relative one resolves like a browser.
        return self.resolve(urljoin(current_url, link))


def _short(url: str, limit: int = 200) -> str:
    return url if len(url) <= limit else url[: limit - 1] + "…"
