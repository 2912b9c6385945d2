# SPDX-License-Identifier: Apache-2.0
"""Describe and draw the emulator's injected faults (outages, errors, drops, slow and truncated replies)
and its network latency (a jittered inbound delay and a response delay).

Draws come from one RNG seeded with :attr:`Faults.seed` and reset whenever faults are set, and every API
request consumes the same number of draws, so a given sequence of requests always meets the same faults.
Latency draws come from their own RNG (:attr:`Latency.seed`), so turning latency on never shifts faults.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FaultDecision", "FaultInjector", "Faults", "Latency", "LatencyInjector"]

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


@dataclass(frozen=True)
class Latency:
    """Network latency knobs, applied to every request but the ``/_emulator`` admin surface.

    A request sent at ``s`` is stamped as arrived (and meets the rate limiter) at ``s + inbound``, where
    ``inbound`` is drawn uniformly from ``[inbound_delay - inbound_jitter, inbound_delay + inbound_jitter]``
    (clipped at 0); its answer leaves ``response_delay`` seconds after it was handled (server work and the
    way back). A round trip therefore takes about ``inbound_delay + response_delay``. Requests in flight
    wait concurrently (one server thread per connection), as on a real network.

    :param inbound_delay: mean seconds between the client's send and the server's arrival stamp.
    :param inbound_jitter: half-width of the uniform spread around ``inbound_delay``, seconds.
    :param response_delay: seconds between handling a request and the client receiving the answer.
    :param seed: seed of the jitter RNG (reset each time latency is set).
    """

    inbound_delay: float = 0.0
    inbound_jitter: float = 0.0
    response_delay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("inbound_delay", "inbound_jitter", "response_delay"):
            value = getattr(self, name)
            if not 0.0 <= value < 3600:
                raise ValueError(f"{name} must be within [0, 3600) seconds, got {value}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Latency:
        """Build from a JSON-style mapping; unknown keys raise ``ValueError``."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown latency fields {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping."""
        return dataclasses.asdict(self)


class LatencyInjector:
    """Draw each request's inbound delay from the current :class:`Latency`.

    :param latency: initial knobs (default: no latency).
    """

    def __init__(self, latency: Latency | None = None) -> None:
        self._lock = threading.Lock()
        self._latency = Latency()
        self._rng = random.Random(0)
        self.set(latency or Latency())

    @property
    def latency(self) -> Latency:
        """The current knobs."""
        return self._latency

    def set(self, latency: Latency) -> None:
        """Replace the knobs and reseed the jitter RNG."""
        with self._lock:
            self._latency = latency
            self._rng = random.Random(latency.seed)

    def inbound(self) -> float:
        """Draw the seconds the next request spends on its way in."""
        with self._lock:
            lat = self._latency
            if not lat.inbound_jitter:
                return lat.inbound_delay
            u = self._rng.uniform(-lat.inbound_jitter, lat.inbound_jitter)
        return max(0.0, lat.inbound_delay + u)

    @property
    def response(self) -> float:
        """Seconds each answer spends on its way back."""
        return self._latency.response_delay
