# SPDX-License-Identifier: Apache-2.0
"""Airflow pools as the cross-process share of an API's rate limit: pool names and the slots a task holds.

The pool of a connection (``clio_<region>`` unless the connection names another) has as many slots as the
application's limit allows; a task holding ``k`` slots paces its hook at ``k * requests_per_slot`` req/s.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_clio.exceptions import ClioConfigError

POOL_PREFIX = "clio_"
"""Prefix of the default pool of a region (the Platform API's; an API spec may name another)."""


def pool_name_for(region: str, override: str | None = None, *, prefix: str = POOL_PREFIX) -> str:
    """Return the Airflow pool of a region: ``override`` when given, else ``f"{prefix}{region}"``."""
    return override or f"{prefix}{region}"


def current_task() -> Any | None:
    """Return the running Airflow task (the operator); ``None`` outside a task (CLI, triggerer, scripts)."""
    try:
        from airflow.sdk import get_current_context

        context = get_current_context()
    except Exception:
        # No task is running (CLI, scripts, tests) or the SDK is unavailable.
        return None
    return context.get("task") or getattr(context.get("ti"), "task", None)


def current_task_pool_slots() -> int | None:
    """Return the ``pool_slots`` of the running Airflow task, or ``None`` outside a task."""
    slots = getattr(current_task(), "pool_slots", None)
    if isinstance(slots, int) and not isinstance(slots, bool) and slots >= 1:
        return slots
    return None


def resolve_pool_slots(pool_slots: int | None) -> int:
    """Return ``pool_slots`` if given (validated), else the running task's, else 1."""
    if pool_slots is None:
        return current_task_pool_slots() or 1
    if isinstance(pool_slots, bool) or not isinstance(pool_slots, int) or pool_slots < 1:
        raise ClioConfigError(f"pool_slots must be a positive integer, got {pool_slots!r}")
    return pool_slots


__all__ = [
    "POOL_PREFIX",
    "current_task",
    "current_task_pool_slots",
    "pool_name_for",
    "resolve_pool_slots",
]
