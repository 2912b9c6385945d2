# SPDX-License-Identifier: Apache-2.0
"""Every admission decision of the emulator's Manage limiter, grouped by token and window (a test harness).

The emulator counts Manage requests per access token in fixed windows that open at a token's first request
after the previous window ended, so the recorded requests alone do not say which window a request fell in
when something else (``consume_manage_budget``) also opened windows. :class:`AdmissionLedger` wraps the
limiter of an in-process :class:`~airflow_provider_clio.testing.ClioEmulator` and keeps each decision as the
limiter made it (limit in force, remaining, the window's end), and runs one-shot actions at an exact
admission (switch to off-peak after the 24th request, drop the limit at the 8th request of a window, ...),
synchronously in the server thread before the answer leaves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_clio.testing import ClioEmulator
    from airflow_provider_clio.testing.manage.limiter import Admission

__all__ = ["AdmissionLedger", "Decision", "Window"]


@dataclass(frozen=True)
class Decision:
    """
    The limiter's decision on one Manage API request.

    :param index: 1-based position among all decisions.
    :param token_id: The access token's id (``RequestRecord.token_id``).
    :param at: Arrival, Unix seconds (``RequestRecord.wall``).
    :param admitted: Counted in the window (else answered 429).
    :param limit: Limit in force at arrival (``None``: unlimited).
    :param used: Requests the window had counted after this one (others' included).
    :param reset: The window's end, Unix second rounded up (``X-RateLimit-Reset``): names the window.
    """

    index: int
    token_id: str
    at: float
    admitted: bool
    limit: int | None
    used: int
    reset: int


@dataclass(frozen=True)
class Window:
    """
    One token's fixed window, as this deployment's own requests saw it.

    :param token_id: The access token's id.
    :param reset: The window's end (Unix second, rounded up).
    :param admitted: This deployment's requests counted in it.
    :param refused: Its requests answered 429 in it.
    :param limits: Every limit in force at its requests' arrivals.
    :param used: The most the window had counted (others' requests included).
    """

    token_id: str
    reset: int
    admitted: int
    refused: int
    limits: frozenset[int | None]
    used: int


class AdmissionLedger:
    """
    Record the decisions of ``emu``'s Manage limiter until :meth:`close` (or the ``with`` block's end).

    :param emu: An emulator running in this process.
    """

    def __init__(self, emu: ClioEmulator) -> None:
        self._limiter = emu.manage.limiter
        self._acquire = self._limiter.acquire
        self._lock = threading.Lock()
        self.decisions: list[Decision] = []
        self._actions: list[tuple[Callable[[Decision, list[Decision]], bool], Callable[[], None]]] = []
        self.fired: list[Decision] = []
        """The decision each one-shot action ran at, in order."""
        self._limiter.acquire = self._record  # type: ignore[method-assign]

    def _record(self, token_id: str, region: str, resource: str | None, at: float) -> Admission:
        admission = self._acquire(token_id, region, resource, at)
        limit = admission.limit
        with self._lock:
            used = 0 if limit is None else limit - admission.remaining
            decision = Decision(
                len(self.decisions) + 1, token_id, at, admission.admitted, limit, used, admission.reset
            )
            self.decisions.append(decision)
            due = [pair for pair in self._actions if pair[0](decision, self.decisions)]
            for pair in due:
                self._actions.remove(pair)
                self.fired.append(decision)
        for _, action in due:
            action()
        return admission

    def when(self, condition: Callable[[Decision, list[Decision]], bool], action: Callable[[], None]) -> None:
        """Run ``action`` once, right after the first decision where ``condition(decision, all)`` holds."""
        with self._lock:
            self._actions.append((condition, action))

    def admitted(self) -> int:
        """Return how many requests were admitted so far."""
        with self._lock:
            return sum(d.admitted for d in self.decisions)

    def windows(self) -> list[Window]:
        """Return every window this deployment's requests fell in, by token and then time."""
        groups: dict[tuple[str, int], list[Decision]] = {}
        with self._lock:
            for decision in self.decisions:
                groups.setdefault((decision.token_id, decision.reset), []).append(decision)
        return [
            Window(
                token_id,
                reset,
                sum(d.admitted for d in group),
                sum(not d.admitted for d in group),
                frozenset(d.limit for d in group),
                max(d.used for d in group),
            )
            for (token_id, reset), group in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1]))
        ]

    def close(self) -> None:
        """Stop recording (the limiter answers as before)."""
        self._limiter.__dict__.pop("acquire", None)

    def __enter__(self) -> AdmissionLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
