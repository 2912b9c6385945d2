# SPDX-License-Identifier: Apache-2.0
"""Cursor pagination over Clio list endpoints: pages, ``next`` links, loop and host checks.

Clio pages with an opaque ``page_token`` carried in ``meta.paging.next``, an absolute URL that already holds
the original filters and fields. Clients that merged their own parameters back into it looped or duplicated
records, so the URL is requested exactly as given. Since the hook sends a bearer token with every request,
a ``next`` URL on any other scheme, host or port than the API base is refused rather than followed.
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
    Guard one pagination run: every URL stays on the API origin and none is fetched twice.

    :param base_url: The API base URL; ``next`` URLs must share its scheme, host and port.
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._urls: set[str] = set()
        self._tokens: set[str] = set()

    def check_origin(self, url: str, *, what: str = "next URL") -> None:
        """Refuse ``url`` unless it is on the API origin (the bearer token must not go anywhere else)."""
        if not same_origin(url, self.base_url):
            scheme, host, port = origin(url)
            raise ClioPaginationError(
                f"refusing to follow a {what} on {scheme}://{host}:{port}: it is not the API host "
                f"{self.base_url}, and the request would carry the access token there"
            )

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
        """Return the checked ``next`` URL of ``body`` (resolved against ``current_url``), or ``None``."""
        link = next_link(body)
        if link is None:
            return None
        # Clio sends absolute URLs, which urljoin returns unchanged; a relative one resolves like a browser.
        url = urljoin(current_url, link)
        self.check_origin(url)
        return url


def _short(url: str, limit: int = 200) -> str:
    return url if len(url) <= limit else url[: limit - 1] + "…"
