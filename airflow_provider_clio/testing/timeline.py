# SPDX-License-Identifier: Apache-2.0
"""Timestamps of the emulated records: microseconds since the epoch, and the append-only timeline arrays.

Both record stores (Platform, :mod:`~airflow_provider_clio.testing.data`; Manage,
:mod:`~airflow_provider_clio.testing.manage.data`) keep ``created_at`` and ``updated_at`` as integer arrays.
"""

from __future__ import annotations

import datetime
import threading
from array import array

__all__ = ["SECOND_US", "append_stamps", "format_timestamp", "now_us", "to_microseconds"]

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


def append_stamps(
    lock: threading.Lock, created: array[int], updated: array[int], n: int, stamp: int
) -> list[int]:
    """Append ``n`` records created and updated at ``stamp`` to one resource's timeline; return their ids.

    :param lock: the store's lock, held while both arrays grow.
    :param created: the resource's ``created_at`` array.
    :param updated: the resource's ``updated_at`` array.
    :param n: how many records to add (>= 0).
    :param stamp: their ``created_at`` and ``updated_at``, microseconds since the epoch.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    with lock:
        first = len(updated) + 1
        created.extend([stamp] * n)
        updated.extend([stamp] * n)
    return list(range(first, first + n))
