# SPDX-License-Identifier: Apache-2.0
"""Hold Manage's per-access-token rate limit: fixed 60 s windows, peak/off-peak limits, endpoint overrides.

Window model (fixed, not sliding): a token's window opens at its first request after the previous window
ended and lasts ``window`` seconds; ``X-RateLimit-Reset`` is the Unix second it ends (rounded up), so a
client that waits until then always finds a fresh window. Each request is checked against the limit in
force *at its arrival*: switching to off-peak mid-window raises ``Remaining`` at once, and a limit dropped
below what the window already used answers 429 until the window ends (``Retry-After`` = seconds left).
Only admitted requests count. An endpoint with its own limit has its own window per token.
"""

from __future__ import annotations

import datetime
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from airflow_provider_clio.testing.manage.settings import CLIO_SCHEDULE, PeakSetting, check_peak

__all__ = ["Admission", "TokenWindowLimiter", "is_clio_peak"]

# Clio's peak hours, Monday to Friday in local time: (time zone, first hour, end hour).
_PEAK_HOURS: Mapping[str, tuple[str, int, int]] = {
    "us": ("America/Los_Angeles", 4, 19),
    "ca": ("America/Los_Angeles", 4, 19),
    "eu": ("UTC", 7, 22),
    "au": ("Australia/Sydney", 6, 21),
}
# Standard offsets, used only when the system has no time zone database.
_FALLBACK_OFFSETS = {"America/Los_Angeles": -8, "UTC": 0, "Australia/Sydney": 10}


def _zone(name: str) -> datetime.tzinfo:
    try:
        import zoneinfo

        return zoneinfo.ZoneInfo(name)
    except Exception:  # no tz database: a fixed offset is close enough for an emulator
        return datetime.timezone(datetime.timedelta(hours=_FALLBACK_OFFSETS[name]))


def is_clio_peak(region: str, at: float) -> bool:
    """Tell whether Unix time ``at`` falls in Clio's peak hours for ``region`` (Mon-Fri, local time)."""
    zone, first, end = _PEAK_HOURS.get(region, _PEAK_HOURS["us"])
    local = datetime.datetime.fromtimestamp(at, _zone(zone))
    return local.weekday() < 5 and first <= local.hour < end


@dataclass(frozen=True)
class Admission:
    """The limiter's answer for one request, and what the ``X-RateLimit-*`` headers say.

    :param admitted: the request may proceed (else 429).
    :param limit: requests per window now in force; None when unlimited (no headers are sent).
    :param remaining: requests left in the window after this one.
    :param reset: Unix second the window ends.
    :param retry_after: whole seconds until the window ends (at least 1).
    """

    admitted: bool
    limit: int | None
    remaining: int
    reset: int
    retry_after: int

    def headers(self) -> list[tuple[str, str]]:
        """Return the rate-limit headers (plus ``Retry-After`` when refused)."""
        if self.limit is None:
            return []
        out = [
            ("X-RateLimit-Limit", str(self.limit)),
            ("X-RateLimit-Remaining", str(self.remaining)),
            ("X-RateLimit-Reset", str(self.reset)),
        ]
        if not self.admitted:
            out.append(("Retry-After", str(self.retry_after)))
        return out


class TokenWindowLimiter:
    """Count requests per access token (and per overridden endpoint) in fixed windows. Thread-safe.

    :param peak_limit: limit at peak (None: unlimited).
    :param off_peak_limit: limit off-peak (None: unlimited).
    :param peak: ``True``, ``False``, ``"clio"`` (Clio's schedule of the token's region, by ``at``) or
        ``schedule(region, unix_time) -> is_peak``.
    :param endpoint_limits: resource -> its own limit, at any time of day.
    :param window: window length in seconds.
    """

    def __init__(
        self,
        peak_limit: int | None,
        off_peak_limit: int | None,
        peak: PeakSetting = True,
        endpoint_limits: Mapping[str, int] | None = None,
        window: float = 60.0,
    ) -> None:
        self._lock = threading.Lock()
        self._limits: dict[bool, int | None] = {True: peak_limit, False: off_peak_limit}
        self._peak = peak
        self._endpoint_limits: dict[str, int] = dict(endpoint_limits or {})
        self.window = window
        # key -> [window end (Unix seconds, exact), admitted count]
        self._windows: dict[tuple[str, str | None], list[float]] = {}
        self._regions: dict[str, str] = {}  # token id -> region, for consume() under Clio's schedule

    # -- knobs ---------------------------------------------------------------------------------

    @property
    def peak(self) -> PeakSetting:
        """``True``, ``False``, ``"clio"`` or a schedule callable."""
        return self._peak

    def set_peak(self, peak: PeakSetting) -> None:
        """Switch to peak (True), off-peak (False), Clio's schedule (``"clio"``) or a callable at run time."""
        check_peak(peak)
        with self._lock:
            self._peak = peak

    def set_limit(self, limit: int | None, endpoint: str | None = None, peak: bool | None = None) -> None:
        """Change a limit at run time; windows in progress keep their count (so a drop can refuse at once).

        :param limit: the new limit (None: unlimited; for an endpoint, None removes its own limit).
        :param endpoint: change this resource's own limit instead of the token-wide one.
        :param peak: which period's limit to change; None = the period in force now (as the US region
            sees it under Clio's schedule).
        """
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0 or None")
        with self._lock:
            if endpoint is not None:
                if limit is None:
                    self._endpoint_limits.pop(endpoint, None)
                else:
                    self._endpoint_limits[endpoint] = limit
                return
            period = self._is_peak("us", _now()) if peak is None else peak
            self._limits[period] = limit

    def limits(self) -> dict[str, object]:
        """Return the current knobs as a JSON-ready mapping."""
        with self._lock:
            return {
                "peak_limit": self._limits[True],
                "off_peak_limit": self._limits[False],
                "peak": self._peak if not callable(self._peak) else "schedule",
                "endpoint_limits": dict(self._endpoint_limits),
                "window": self.window,
            }

    def _is_peak(self, region: str, at: float) -> bool:
        if callable(self._peak):
            return bool(self._peak(region, at))
        if self._peak == CLIO_SCHEDULE:
            return is_clio_peak(region, at)
        return bool(self._peak)

    # -- admission -----------------------------------------------------------------------------

    def acquire(self, token_id: str, region: str, resource: str | None, at: float) -> Admission:
        """Count one request of ``token_id`` arriving at Unix time ``at`` if the limit allows."""
        return self._admit(token_id, region, resource, at, count=True)

    def peek(self, token_id: str, region: str, resource: str | None, at: float) -> Admission:
        """Return the state of the token's window without counting (for answers that are not admitted)."""
        return self._admit(token_id, region, resource, at, count=False)

    def _admit(self, token_id: str, region: str, resource: str | None, at: float, count: bool) -> Admission:
        with self._lock:
            own = self._endpoint_limits.get(resource) if resource is not None else None
            limit = own if own is not None else self._limits[self._is_peak(region, at)]
            key = (token_id, resource if own is not None else None)
            self._regions[token_id] = region
            state = self._windows.get(key)
            if state is None or at >= state[0]:
                state = [at + self.window, 0.0]
                if count:
                    self._windows[key] = state
            end, used = state
            admitted = limit is None or used < limit
            if admitted and count:
                state[1] = used = used + 1
        remaining = 0 if limit is None else max(0, limit - int(used))
        return Admission(admitted, limit, remaining, math.ceil(end), max(1, math.ceil(end - at)))

    def consume(self, n: int, token_id: str | None = None, at: float | None = None) -> None:
        """Count ``n`` requests in a token's window (default: every token seen), as another client would.

        Requests beyond the limit are dropped, as the refused requests of that other client would be.
        """
        at = _now() if at is None else at
        with self._lock:
            tokens = {key[0] for key in self._windows} if token_id is None else {token_id}
        for tid in tokens:
            region = self._regions.get(tid, "us")
            for _ in range(n):
                self._admit(tid, region, None, at, count=True)

    def reset(self) -> None:
        """Forget every window."""
        with self._lock:
            self._windows.clear()


def _now() -> float:
    return datetime.datetime.now(datetime.timezone.utc).timestamp()
