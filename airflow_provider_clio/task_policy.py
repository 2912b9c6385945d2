# SPDX-License-Identifier: Apache-2.0
"""Task defaults every Clio task shares (operators and the sensor): pool, region, retries, the checked hook.

One pool slot is worth a fixed request rate only if every Clio task of an application and region runs in the
pool its hook paces for. This module picks that pool at DAG-parse time (:func:`connection_region_and_pool`),
fills the task's defaults without overriding the user's (:func:`apply_task_defaults`) and fails the task at
run time when the hook resolves another pool or region (:func:`check_pool_and_region`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_provider_clio.apis import ApiSpec, get_api
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.pools import pool_name_for
from airflow_provider_clio.regions import DEFAULT_REGION, REGIONS

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator

    from airflow_provider_clio.hooks.clio import ClioHook

__all__ = [
    "DEFAULT_TASK_RETRY_ARGS",
    "apply_task_defaults",
    "check_pool_and_region",
    "connection_region_and_pool",
    "default_retry_policy",
    "task_hook",
]

log = logging.getLogger(__name__)

DEFAULT_TASK_RETRY_ARGS: dict[str, Any] = {
    "retries": 5,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}
"""Task-level retries once the hook's in-request retries are spent; user arguments and default_args win."""


def apply_task_defaults(kwargs: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    """Fill ``kwargs`` with ``defaults`` for the arguments neither the caller nor ``default_args`` set."""
    default_args = kwargs.get("default_args") or {}
    for name, value in defaults.items():
        if name not in kwargs and name not in default_args:
            kwargs[name] = value


def default_retry_policy() -> Any | None:
    """Return a :class:`ClioRetryPolicy` on Airflow 3.3+, ``None`` where ``retry_policy`` does not exist."""
    try:
        from airflow_provider_clio.operators.retry_policy import ClioRetryPolicy
    except ImportError:
        return None
    return ClioRetryPolicy()


def connection_region_and_pool(clio_conn_id: str, region: str | None = None) -> tuple[str, str]:
    """
    Return ``(region, pool)`` for a Clio connection without failing DAG parsing.

    The region is ``region`` when given, else the connection's ``region`` extra; the pool is the connection's
    ``pool`` extra, else ``clio_<region>``. Extras are read as ``ClioConfig`` reads them (the
    ``extra__clio__`` prefixed form is a fallback), so the task lands in the pool the hook paces for. A
    connection that cannot be read here (no secrets backend at parse time, a missing connection) falls back to
    the ``us`` region; :func:`check_pool_and_region` fails the task at run time if the hook then resolves
    another pool.
    """
    if region is not None and str(region).strip().lower() not in REGIONS:
        raise ClioConfigError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
    extra: Mapping[str, Any] = {}
    try:
        extra = BaseHook.get_connection(clio_conn_id).extra_dejson or {}
    except Exception as err:
        log.debug(
            "Could not read connection %r at construction (%s); assuming region 'us'", clio_conn_id, err
        )
    connection_region = _connection_extra(extra, "region")
    if not (isinstance(connection_region, str) and connection_region.strip().lower() in REGIONS):
        connection_region = DEFAULT_REGION
    resolved = str(region or connection_region).strip().lower()
    override = _connection_extra(extra, "pool")
    prefix = _api_of(extra).pool_prefix
    return resolved, pool_name_for(
        resolved, override.strip() if isinstance(override, str) else None, prefix=prefix
    )


def _api_of(extra: Mapping[str, Any]) -> ApiSpec:
    """The connection's API description; the default one when it names none or an unknown one."""
    name = _connection_extra(extra, "api")
    try:
        return get_api(name.strip().lower() if isinstance(name, str) and name.strip() else None)
    except ClioConfigError:
        # Parse time must not fail; the hook raises the clear error when the task runs.
        return get_api()


def _connection_extra(extra: Mapping[str, Any], name: str) -> Any:
    """Read one extra like ``ClioConfig`` does: ``name``, else ``extra__clio__<name>``; empty is unset."""
    from airflow_provider_clio.connection import EXTRA_PREFIX

    value = extra.get(name)
    if value is None or value == "":
        value = extra.get(EXTRA_PREFIX + name)
    return None if value == "" else value


def check_pool_and_region(
    task: BaseOperator, hook: ClioHook, clio_conn_id: str, explicit_region: str | None
) -> None:
    """
    Fail when the task would not be counted in the pool its hook paces for.

    One pool slot is worth a fixed request rate only if every Clio task of an application and region runs in
    that region's pool; a task in another pool, or pacing for another region than the one it names, would
    break the rate guarantee silently, so it is a configuration error, not a warning.
    """
    if explicit_region is not None and explicit_region.strip().lower() != hook.region:
        raise ClioConfigError(
            f"Task {task.task_id!r} names region {explicit_region!r} but connection {clio_conn_id!r} is in "
            f"region {hook.region!r} (the hook's requests count against that region's limit and pool "
            f"{hook.pool_name!r}): drop region= or use a connection of region {explicit_region!r}"
        )
    if task.pool != hook.pool_name:
        raise ClioConfigError(
            f"Task {task.task_id!r} runs in pool {task.pool!r} but connection {clio_conn_id!r} paces for "
            f"pool {hook.pool_name!r} (region {hook.region!r}): every task of one Clio application and "
            "region must share that region's pool, or the rate limit is not held. Drop pool= (the default "
            "is the connection's pool), or set the connection's 'pool' extra to use a custom pool"
        )


def task_hook(
    task: BaseOperator,
    clio_conn_id: str,
    explicit_region: str | None,
    *,
    token_store: Any | None = None,
    retry: Any | None = None,
) -> ClioHook:
    """
    Return a hook pacing at ``task``'s pool slots; fail when it paces for another pool or region.

    :param token_store: Where rotated OAuth tokens are kept; ``None``: the hook's default store.
    :param retry: The hook's in-request retry settings; ``None``: the hook's default.
    """
    from airflow_provider_clio.hooks.clio import ClioHook

    kwargs: dict[str, Any] = {"pool_slots": task.pool_slots}
    if token_store is not None:
        kwargs["token_store"] = token_store
    if retry is not None:
        kwargs["retry"] = retry
    hook = ClioHook(clio_conn_id, **kwargs)
    check_pool_and_region(task, hook, clio_conn_id, explicit_region)
    return hook
