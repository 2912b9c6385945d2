# SPDX-License-Identifier: Apache-2.0
"""The one timestamp parser: ISO 8601 (any form Clio or a template produces) and epoch seconds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pendulum

from airflow_provider_clio.exceptions import ClioConfigError

_NONE_STRINGS = frozenset({"", "none", "null"})


def parse_timestamp(value: Any) -> datetime | None:
    """
    Return ``value`` as an aware UTC datetime, or ``None`` when it cannot be read as a timestamp.

    Accepts datetimes (naive ones are UTC), ISO 8601 strings (``Z``, offsets with or without a colon) and
    epoch seconds as numbers or numeric strings. pendulum, not ``datetime.fromisoformat``: Python 3.10's
    rejects ``Z`` and offsets without a colon.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        return pendulum.instance(value).in_timezone("UTC")
    if isinstance(value, int | float):
        try:
            return pendulum.from_timestamp(float(value), tz="UTC")
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return pendulum.from_timestamp(float(text), tz="UTC")
    except (OverflowError, OSError, ValueError):
        pass
    try:
        parsed = pendulum.parse(text)
    except Exception:
        return None
    return pendulum.instance(parsed).in_timezone("UTC") if isinstance(parsed, datetime) else None


def parse_instant(value: Any, name: str) -> datetime | None:
    """
    Parse a user-given timestamp argument; ``None``, ``""`` and ``"None"`` (a template that rendered nothing)
    mean no value. Raise :class:`ClioConfigError` naming ``name`` for anything else that is not a timestamp.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_STRINGS):
        return None
    parsed = parse_timestamp(value)
    if parsed is None:
        raise ClioConfigError(f"{name}: cannot read {value!r} as an ISO 8601 timestamp or epoch seconds")
    return parsed


__all__ = ["parse_instant", "parse_timestamp"]
