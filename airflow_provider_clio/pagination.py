# SPDX-License-Identifier: Apache-2.0
"""Cursor pagination over list endpoints: pages, ``next`` links and loop detection.

Clio pages with an opaque ``page_token`` carried in ``meta.paging.next``, an absolute URL that already holds
the original filters and fields. Clients that merged their own parameters back into it looped or duplicated
records, so the path and query are requested exactly as given. Where a ``next`` URL may be requested (it
carries the bearer token) is decided by :class:`~airflow_provider_clio.urls.UrlRules`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urljoin, urlsplit

from airflow_provider_clio.exceptions import ClioPaginationError
from airflow_provider_clio.urls import url_problem

if TYPE_CHECKING:
    from airflow_provider_clio.urls import UrlRules

MAX_EMPTY_PAGES = 20
"""Consecutive empty pages that each carry a fresh ``next`` link before pagination gives up."""


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
    Guard one pagination run: every URL goes where the token may go, none is fetched twice, and a server
    sending empty page after empty page, each with a fresh cursor, is stopped after ``max_empty_pages``.

    :param urls: The connection's URL rules; ``next`` links are resolved with :meth:`UrlRules.resolve`.
    :param max_empty_pages: Consecutive empty pages with a ``next`` link tolerated before giving up.
    """

    def __init__(self, urls: UrlRules, *, max_empty_pages: int = MAX_EMPTY_PAGES) -> None:
        self.urls = urls
        self.max_empty_pages = max_empty_pages
        self._urls: set[str] = set()
        self._tokens: set[str] = set()
        self._empty = 0

    def resolve(self, url: str, *, what: str = "next URL") -> str:
        """Return the URL to request for ``url``, or raise ClioPaginationError (see :class:`UrlRules`)."""
        return self.urls.resolve(url, what=what)

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
        """
        Return the URL to request for ``body``'s ``next`` link (see :meth:`resolve`), or ``None``.

        Raise ClioPaginationError when the link is unsafe, or when this is the ``max_empty_pages``-th
        empty page in a row that still has one: fresh cursors escape loop detection, so without this limit
        a misbehaving server would be paged forever without a single record.
        """
        link = next_link(body)
        records = body.get("data")
        self._empty = self._empty + 1 if link is not None and not records else 0
        if link is None:
            return None
        problem = url_problem(link)
        if problem is not None:
            # Checked before urljoin, which silently strips some of the characters that make a URL unsafe.
            raise ClioPaginationError(f"refusing to follow a next URL: {problem}")
        if self._empty >= self.max_empty_pages:
            raise ClioPaginationError(
                f"{self._empty} empty pages in a row, each with a new next URL ({_short(current_url)}): "
                "stopping instead of paging an endless run of empty pages"
            )
        # Clio sends absolute URLs, which urljoin returns unchanged; a relative one resolves like a browser.
        return self.resolve(urljoin(current_url, link))


def _short(url: str, limit: int = 200) -> str:
    return url if len(url) <= limit else url[: limit - 1] + "…"


__all__ = ["MAX_EMPTY_PAGES", "CursorTracker", "Page", "next_link", "page_records", "page_token_of"]
