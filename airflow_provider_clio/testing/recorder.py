# SPDX-License-Identifier: Apache-2.0
"""Record every request the emulator receives and answer questions about them (rate held? how many 429s?)."""

from __future__ import annotations

import bisect
import dataclasses
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

__all__ = ["API_PREFIX", "RequestLog", "RequestRecord"]

API_PREFIX = "/grow"


@dataclass(frozen=True)
class RequestRecord:
    """One request as the emulator saw it.

    :param t: monotonic arrival time, taken when the request was parsed: after the injected inbound
        latency, before any slow fault or response delay.
    :param wall: arrival time in epoch seconds.
    :param method: HTTP method.
    :param path: URL path without the query.
    :param query: parsed query string, every value kept.
    :param status: answered status; 0 when the connection was dropped without an answer.
    :param client_id: the app of the access token (API) or of the form (``/oauth/token``), if known.
    :param region: that app's region, if known.
    :param resource: API resource (``contacts`` ...), None for other paths.
    :param page_token: the ``page_token`` parameter, if any.
    :param fault: injected fault (``outage``, ``error``, ``drop``, ``slow``, ``truncate``) or None.
    :param api: ``"platform"`` (``/grow``), ``"manage"`` (``/api/v4`` and Manage apps' OAuth) or None.
    :param token_id: Manage: a digest of the access token (its rate-limit key), never the token itself.
    """

    t: float
    wall: float
    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    client_id: str | None = None
    region: str | None = None
    resource: str | None = None
    page_token: str | None = None
    fault: str | None = None
    api: str | None = None
    token_id: str | None = None

    @property
    def is_api(self) -> bool:
        """Tell whether this was an API request (the kind the limiter counts)."""
        return self.path == API_PREFIX or self.path.startswith(API_PREFIX + "/")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping."""
        return dataclasses.asdict(self)


class RequestLog:
    """Append-only, thread-safe list of :class:`RequestRecord`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def append(self, record: RequestRecord) -> None:
        """Add one record."""
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> list[RequestRecord]:
        """Return a copy ordered by arrival time."""
        with self._lock:
            records = list(self._records)
        records.sort(key=lambda r: r.t)
        return records

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._records.clear()

    def max_in_window(
        self,
        region: str | None = None,
        client_id: str | None = None,
        window: float = 1.0,
        statuses: Collection[int] | None = None,
    ) -> int:
        """Return the most API requests one rate-limit budget received within any sliding ``window``.

        A budget is a ``(client_id, region)`` pair, as for the limiter, so the answer is directly comparable
        with the rate limit; ``region`` and ``client_id`` narrow which budgets are looked at. Every arrival
        counts (admitted or not) unless ``statuses`` narrows it; only API requests count. A window is
        ``(u - window, u]``, the one the limiter uses.
        """
        groups: dict[tuple[str | None, str | None], list[float]] = {}
        for r in self.snapshot():
            if (
                r.is_api
                and (region is None or r.region == region)
                and (client_id is None or r.client_id == client_id)
                and (statuses is None or r.status in statuses)
            ):
                groups.setdefault((r.client_id, r.region), []).append(r.t)
        best = 0
        for times in groups.values():
            for u in times:
                best = max(best, bisect.bisect_right(times, u) - bisect.bisect_right(times, u - window))
        return best

    def count(
        self, status: int | None = None, region: str | None = None, path_prefix: str | None = None
    ) -> int:
        """Return how many requests match every given filter."""
        return sum(
            1
            for r in self.snapshot()
            if (status is None or r.status == status)
            and (region is None or r.region == region)
            and (path_prefix is None or r.path.startswith(path_prefix))
        )
