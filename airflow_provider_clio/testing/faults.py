# SPDX-License-Identifier: Apache-2.0
"""Describe and draw the emulator's injected faults: outages, errors, drops, slow and truncated replies.

Draws come from one RNG seeded with :attr:`Faults.seed` and reset whenever faults are set, and every API
request consumes the same number of draws, so a given sequence of requests always meets the same faults.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FaultDecision", "FaultInjector", "Faults"]

_RATES = ("error_rate", "drop_rate", "slow_rate", "truncate_rate")


@dataclass(frozen=True)
class Faults:
    """Fault knobs applied to API requests (never to ``/oauth`` or ``/_emulator``).

    Checked in this order per request: outage, drop, error; a request that passes them may still be
    answered slowly and/or truncated.

    :param seed: seed of the fault RNG (reset each time faults are set).
    :param error_rate: fraction of requests answered with one of ``error_statuses``.
    :param error_statuses: statuses drawn uniformly for random errors.
    :param outage_requests: the next K API requests answer ``outage_status``.
    :param outage_status: status of outage answers.
    :param drop_rate: fraction of requests whose connection is closed without any answer.
    :param slow_rate: fraction of requests answered after ``slow_seconds``.
    :param slow_seconds: delay of slow answers.
    :param truncate_rate: fraction of answers sent with the full ``Content-Length`` but half the body.
    :param retry_after: when set, every 429 (injected or from the limiter) carries ``Retry-After: N``.
    """

    seed: int = 0
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (429, 503)
    outage_requests: int = 0
    outage_status: int = 503
    drop_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 0.0
    truncate_rate: float = 0.0
    retry_after: float | None = None

    def __post_init__(self) -> None:
        for name in _RATES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        # Accept any sequence (JSON gives lists) but keep the dataclass hashable.
        object.__setattr__(self, "error_statuses", tuple(int(s) for s in self.error_statuses))
        if self.error_rate and not self.error_statuses:
            raise ValueError("error_rate needs at least one error status")
        if self.outage_requests < 0 or self.slow_seconds < 0:
            raise ValueError("outage_requests and slow_seconds must be >= 0")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Faults:
        """Build from a JSON-style mapping; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping."""
        out = dataclasses.asdict(self)
        out["error_statuses"] = list(self.error_statuses)
        return out


@dataclass(frozen=True)
class FaultDecision:
    """What to do to one API request.

    :param status: answer this status instead of handling the request (outage or random error).
    :param kind: ``"outage"``, ``"error"``, ``"drop"`` or None; recorded with the request.
    :param drop: close the connection without answering.
    :param slow_seconds: wait this long before answering.
    :param truncate: send only part of the body.
    """

    status: int | None = None
    kind: str | None = None
    drop: bool = False
    slow_seconds: float = 0.0
    truncate: bool = False


_NO_FAULT = FaultDecision()


class FaultInjector:
    """Draw a :class:`FaultDecision` per API request from the current :class:`Faults`.

    :param faults: initial knobs (default: no faults).
    """

    def __init__(self, faults: Faults | None = None) -> None:
        self._lock = threading.Lock()
        self._faults = Faults()
        self._rng = random.Random(0)
        self._outage_left = 0
        self.set(faults or Faults())

    @property
    def faults(self) -> Faults:
        """The current knobs."""
        return self._faults

    def set(self, faults: Faults) -> None:
        """Replace the knobs, reseed the RNG and restart the outage counter."""
        with self._lock:
            self._faults = faults
            self._rng = random.Random(faults.seed)
            self._outage_left = faults.outage_requests

    def draw(self) -> FaultDecision:
        """Decide the fate of the next API request."""
        with self._lock:
            f = self._faults
            if self._outage_left > 0:
                self._outage_left -= 1
                return FaultDecision(status=f.outage_status, kind="outage")
            if not (f.error_rate or f.drop_rate or f.slow_rate or f.truncate_rate):
                return _NO_FAULT
            # Always five draws, so one request's fate does not shift the next ones'.
            rnd = self._rng.random
            u_drop, u_error, u_pick, u_slow, u_trunc = rnd(), rnd(), rnd(), rnd(), rnd()
        if u_drop < f.drop_rate:
            return FaultDecision(kind="drop", drop=True)
        if u_error < f.error_rate:
            status = f.error_statuses[min(int(u_pick * len(f.error_statuses)), len(f.error_statuses) - 1)]
            return FaultDecision(status=status, kind="error")
        slow = f.slow_seconds if u_slow < f.slow_rate else 0.0
        truncate = u_trunc < f.truncate_rate
        if not slow and not truncate:
            return _NO_FAULT
        return FaultDecision(slow_seconds=slow, truncate=truncate, kind="truncate" if truncate else "slow")
