# SPDX-License-Identifier: Apache-2.0
"""How an operator chooses the records it reads: the ``mode`` argument and the interval it resolves to.

============================  =====================================================================
``"full"``                    every record (no ``updated_at`` bound)
``"interval"``                ``[updated_since, updated_until)`` when given, else the run's
                              ``[data_interval_start, data_interval_end)``: consecutive runs partition the
                              changes, exact only when every interval runs
``"since_last_success"``      gap-free: ``[prev_data_interval_end_success - overlap, data_interval_end)``,
                              the lower bound falling back to ``data_interval_start`` before any success
``"reconcile"``               ``ClioToSqlOperator`` only: scan every id and mark rows Clio no longer has
============================  =====================================================================

The bounds come from Airflow's own state, fixed before the first request, never from the ``updated_at`` of
loaded rows: Clio's cursor walks by id, so a record edited behind the cursor during a scan carries a newer
``updated_at`` than rows read later, and a watermark taken from the rows would skip it forever. Another mode
(e.g. ``"ids"``) is one more entry in :data:`MODES` and one more branch in :func:`resolve_interval`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from airflow_provider_clio.dates import parse_instant
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.extraction import Interval

__all__ = [
    "DEFAULT_OVERLAP",
    "FULL",
    "INTERVAL",
    "MODES",
    "RECONCILE",
    "SINCE_LAST_SUCCESS",
    "check_mode",
    "effective_mode",
    "resolve_interval",
    "to_overlap",
]

FULL = "full"
INTERVAL = "interval"
SINCE_LAST_SUCCESS = "since_last_success"
RECONCILE = "reconcile"
MODES = (FULL, INTERVAL, SINCE_LAST_SUCCESS, RECONCILE)
"""Every mode; an operator accepts the subset it implements."""

DEFAULT_OVERLAP = timedelta(minutes=5)
"""How far ``since_last_success`` reaches back before the last success (clock skew, late commits)."""

# Modes whose bounds come from the run alone: explicit updated_since/updated_until would contradict them.
_NO_EXPLICIT_BOUNDS = frozenset({FULL, SINCE_LAST_SUCCESS, RECONCILE})


def to_overlap(value: Any) -> timedelta | None:
    """Return ``value`` (a ``timedelta`` or seconds) as a non-negative ``timedelta``; ``None`` stays."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        overlap = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        overlap = timedelta(seconds=value)
    else:
        raise ClioConfigError(f"overlap must be a timedelta or a number of seconds, got {value!r}")
    if overlap < timedelta(0):
        raise ClioConfigError(f"overlap must not be negative, got {overlap}")
    return overlap


def _given(value: Any) -> bool:
    return value is not None and value != ""


def effective_mode(mode: str | None, updated_since: Any, updated_until: Any) -> str:
    """The mode a run uses: ``mode``, or without it ``interval`` when a bound is given, else ``full``."""
    if mode is None or mode == "":
        # Backward compatible: updated_since/updated_until alone keep their explicit interval.
        return INTERVAL if _given(updated_since) or _given(updated_until) else FULL
    return mode


def check_mode(
    mode: Any,
    allowed: tuple[str, ...],
    *,
    updated_since: Any = None,
    updated_until: Any = None,
    overlap: Any = None,
) -> None:
    """
    Raise ClioConfigError when ``mode`` is unknown to the operator or contradicts the other arguments.

    Called at construction (values not yet rendered are skipped) and again at run time, before any request.
    """
    if isinstance(mode, str) and "{{" in mode:
        return
    if mode is not None and mode != "" and mode not in allowed:
        raise ClioConfigError(f"mode must be one of {', '.join(map(repr, allowed))}, got {mode!r}")
    chosen = effective_mode(mode, updated_since, updated_until)
    if chosen in _NO_EXPLICIT_BOUNDS:
        given = [
            n for n, v in (("updated_since", updated_since), ("updated_until", updated_until)) if _given(v)
        ]
        if given:
            raise ClioConfigError(
                f"mode={chosen!r} takes its bounds from the run: do not pass {' or '.join(given)} "
                "(use mode='interval' for explicit bounds)"
            )
    if overlap is not None and chosen != SINCE_LAST_SUCCESS:
        raise ClioConfigError(f"overlap applies to mode='since_last_success' only, not mode={chosen!r}")
    to_overlap(overlap)


def _context_instant(context: Mapping[str, Any], key: str) -> datetime | None:
    # Airflow passes prev_* values as lazy proxies: isinstance sees through them, ``is None`` does not.
    value = context.get(key)
    return parse_instant(value, key) if isinstance(value, datetime) else None


def resolve_interval(
    mode: str | None,
    updated_since: Any,
    updated_until: Any,
    overlap: Any,
    context: Mapping[str, Any],
) -> Interval:
    """
    Return the ``updated_at`` window a run reads, from the rendered arguments and the task context.

    :raise ClioConfigError: for an invalid combination, an empty or reversed window, or a mode that needs a
        data interval on a run without one.
    """
    chosen = effective_mode(mode, updated_since, updated_until)
    if chosen in (FULL, RECONCILE):
        return Interval()
    if chosen == SINCE_LAST_SUCCESS:
        chosen_overlap = to_overlap(overlap)
        return _since_last_success(DEFAULT_OVERLAP if chosen_overlap is None else chosen_overlap, context)
    since = parse_instant(updated_since, "updated_since")
    until = parse_instant(updated_until, "updated_until")
    if mode == INTERVAL and since is None and until is None:
        since, until = _data_interval(context, chosen)
    elif since is not None and until is None:
        # Today's behaviour: an explicit lower bound is closed by the run's interval end when that is later.
        end = _context_instant(context, "data_interval_end")
        if end is not None and end > since:
            until = end
    return _checked(Interval(since, until))


def _data_interval(context: Mapping[str, Any], mode: str) -> tuple[datetime, datetime]:
    start = _context_instant(context, "data_interval_start")
    end = _context_instant(context, "data_interval_end")
    if start is None or end is None or start >= end:
        raise ClioConfigError(
            f"mode={mode!r} needs a run with a non-empty data interval (got {start} .. {end}): schedule the "
            "DAG with a timetable that has one, e.g. CronDataIntervalTimetable, or pass updated_since"
        )
    return start, end


def _since_last_success(overlap: timedelta, context: Mapping[str, Any]) -> Interval:
    start, end = _data_interval(context, SINCE_LAST_SUCCESS)
    # Airflow's own record of the last successful run of this DAG before this one (any run type).
    previous = _context_instant(context, "prev_data_interval_end_success")
    lower = previous if previous is not None and previous < end else start
    return _checked(Interval(lower - overlap, end))


def _checked(interval: Interval) -> Interval:
    since, until = interval.since, interval.until
    if since is not None and until is not None and until <= since:
        raise ClioConfigError(
            f"updated_until ({until.isoformat()}) must be later than updated_since ({since.isoformat()})"
        )
    return interval
