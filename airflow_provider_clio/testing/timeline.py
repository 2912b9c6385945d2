# SPDX-License-Identifier: Apache-2.0
"""Timestamps of the emulated records: microseconds since the epoch, and the append-only timeline arrays.

Both record stores (Platform, :mod:`~airflow_provider_clio.testing.data`; Manage,
:mod:`~airflow_provider_clio.testing.manage.data`) keep ``created_at`` and ``updated_at`` as integer arrays.
"""

from __future__ import annotations

import datetime
import threading
from array import array

__all__ = ["SECOND_US", "TimelineStore", "format_timestamp", "now_us", "to_microseconds"]

SECOND_US = 1_000_000
"""Microseconds in a second: record timestamps are whole seconds."""

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def format_timestamp(us: int) -> str:
    """Format microseconds since the epoch as ISO-8601 with a UTC offset (``2026-03-01T12:00:00+00:00``)."""
    return (_EPOCH + datetime.timedelta(microseconds=us)).isoformat()


def to_microseconds(at: datetime.datetime) -> int:
    """Return an aware datetime as microseconds since the epoch."""
    if at.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * SECOND_US + delta.microseconds


def now_us() -> int:
    """Return the current time as microseconds since the epoch."""
    return to_microseconds(datetime.datetime.now(datetime.timezone.utc))


class TimelineStore:
    """What both record stores share: per resource, ``created_at`` and ``updated_at`` arrays, one lock.

    Ids are ``1..count``: record ``i`` sits at index ``i - 1`` of both arrays; added records follow the last.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._created: dict[str, array[int]] = {}
        self._updated: dict[str, array[int]] = {}

    def count(self, resource: str) -> int:
        """Return how many records ``resource`` has now."""
        return len(self._updated[resource])

    def updated_us(self, resource: str, record_id: int) -> int:
        """Return the record's ``updated_at`` in microseconds since the epoch."""
        return self._updated[resource][record_id - 1]

    def add(self, resource: str, n: int, at: datetime.datetime | None = None) -> list[int]:
        """Append ``n`` new records created and updated at ``at`` (default: now); return their ids."""
        if n < 0:
            raise ValueError("n must be >= 0")
        stamp = self._added_stamp(at)
        with self._lock:
            first = len(self._updated[resource]) + 1
            self._created[resource].extend([stamp] * n)
            self._updated[resource].extend([stamp] * n)
        return list(range(first, first + n))

    def _added_stamp(self, at: datetime.datetime | None) -> int:
        """Return the stamp of records :meth:`add` creates at ``at``: now, in whole seconds, by default."""
        return to_microseconds(at) if at is not None else now_us() // SECOND_US * SECOND_US
