# SPDX-License-Identifier: Apache-2.0
"""Sensor that waits until a Clio endpoint has records matching a filter (e.g. changed since a time).

Each poke is one cheap request: the first page of the endpoint with ``fields=id``. In ``reschedule`` mode the
sensor gives its worker and its pool slot back between pokes; with ``deferrable=True`` the wait moves to the
triggerer (:class:`~airflow_provider_clio.triggers.clio.ClioRecordsTrigger`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, conf
from airflow.sdk.exceptions import AirflowException

from airflow_provider_clio.dates import parse_instant
from airflow_provider_clio.exceptions import ClioConfigError, ClioFatalError
from airflow_provider_clio.extraction import RESERVED_QUERY_PARAMS
from airflow_provider_clio.task_policy import apply_task_defaults, connection_region_and_pool, task_hook
from airflow_provider_clio.triggers.clio import ClioRecordsTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_clio.hooks.clio import ClioHook

__all__ = ["ClioRecordsSensor"]


class ClioRecordsSensor(BaseSensorOperator):
    """
    Wait until a Clio list endpoint returns at least one record for ``query_params`` / ``updated_since``.

    .. code-block:: python

        ClioRecordsSensor(
            task_id="wait_for_changed_matters",
            endpoint="grow/matters",
            updated_since="{{ data_interval_start }}",
            mode="reschedule",
            poke_interval=600,
        )

    :param endpoint: List endpoint, e.g. ``grow/matters`` (templated).
    :param query_params: Extra filters such as ``{"ids[]": [7]}`` (templated); ``fields`` is always ``id``.
    :param updated_since: Only count records with ``updated_at`` at or after this instant (templated).
    :param clio_conn_id: The Clio connection.
    :param region: Clio region; default: the connection's ``region`` extra. Picks the default pool; the task
        fails if it is not the connection's region.
    :param token_store: Where rotated OAuth tokens are kept (poke and reschedule modes only: the triggerer
        always uses the default Variable store); default: the hook's.
    :param deferrable: Wait in the triggerer instead of a worker; default ``[operators] default_deferrable``.
        **Requires a pool with** ``include_deferred``: the trigger polls on the slot the deferred task keeps,
        and a pool without it hands that slot to another task while the polls go on, exceeding the budget.
        A task cannot read its pool's settings on Airflow 3, so this is checked by ``airflow clio check``
        (which fails on such a pool); ``airflow clio pools --include-deferred`` (the default) sets it.
    :param mode: ``reschedule`` by default (unless deferrable): a ``poke``-mode sensor would hold a worker
        and a pool slot worth one request per second while it sends one request per ``poke_interval``.
    """

    template_fields: Sequence[str] = ("endpoint", "query_params", "updated_since")
    ui_color = "#0f5ea8"
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        endpoint: str,
        query_params: Mapping[str, Any] | None = None,
        updated_since: str | datetime | None = None,
        clio_conn_id: str = "clio_default",
        region: str | None = None,
        token_store: Any | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        if deferrable and token_store is not None:
            # The triggerer rebuilds the hook from the connection id alone, with the default store: a custom
            # store would see its refresh token rotated by the first check and the trigger use a revoked one.
            raise ClioConfigError("token_store cannot be combined with deferrable=True (default store only)")
        resolved_region, pool = connection_region_and_pool(clio_conn_id, region)
        apply_task_defaults(kwargs, {"pool": pool})
        if not deferrable:
            # A poke-mode sensor holds a pool slot (1 request/s) while using one request per poke_interval.
            apply_task_defaults(kwargs, {"mode": "reschedule"})
        super().__init__(**kwargs)
        self.endpoint = endpoint
        self.query_params = dict(query_params) if query_params else {}
        self.updated_since = updated_since
        self.clio_conn_id = clio_conn_id
        self.region = resolved_region
        self.explicit_region = region
        self.token_store = token_store
        self.deferrable = deferrable

    def request_params(self) -> dict[str, Any]:
        """Return the query of one poke: the filters, ``updated_since`` and ``fields=id``."""
        endpoint = str(self.endpoint or "").strip().strip("/")
        if not endpoint or "?" in endpoint:
            raise ClioConfigError(
                "endpoint must name a list endpoint such as 'grow/matters', without a query"
            )
        reserved = sorted(RESERVED_QUERY_PARAMS.intersection(self.query_params))
        if reserved:
            raise ClioConfigError(f"query_params must not set {', '.join(reserved)}")
        params: dict[str, Any] = {**self.query_params, "fields": "id"}
        since = parse_instant(self.updated_since, "updated_since")
        if since is not None:
            params["updated_since"] = since.isoformat()
        return params

    def get_hook(self) -> ClioHook:
        """Return a hook pacing at this task's pool slots; fail when it paces for another pool or region."""
        return task_hook(self, self.clio_conn_id, self.explicit_region, token_store=self.token_store)

    def poke(self, context: Context) -> bool:
        """Ask for the first page of ids; true when it holds at least one record."""
        params = self.request_params()
        response = self.get_hook().get(str(self.endpoint).strip().strip("/"), params=params)
        data = response.get("data") if isinstance(response, Mapping) else None
        found = len(data) if isinstance(data, list) else 0
        self.log.info("%s: %s record(s) on the first page for %s", self.endpoint, found or "no", params)
        return found > 0

    def execute(self, context: Context) -> Any:
        """Poke (or reschedule) as a normal sensor, or check once and defer to the triggerer."""
        if not self.deferrable:
            return super().execute(context)
        # One check first: when records already exist the task finishes without a trip to the triggerer.
        if self.poke(context):
            return None
        self.log.info(
            "Deferring to the triggerer: its polls count against this task's slot in pool %s only if that "
            "pool has include_deferred (`airflow clio check` verifies it)",
            self.pool,
        )
        self.defer(
            trigger=ClioRecordsTrigger(
                endpoint=str(self.endpoint).strip().strip("/"),
                params=self.request_params(),
                clio_conn_id=self.clio_conn_id,
                poke_interval=self.poke_interval,
                pool_slots=self.pool_slots,
                # The check above was this slot's request: the trigger's first poll waits a full interval.
                first_poll_delay=self.poke_interval,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout) if self.timeout else None,
        )

    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> None:
        """Finish after the trigger fired: succeed on a success event, raise the reported error otherwise."""
        if event and event.get("status") == "success":
            self.log.info("%s has records (after %s poll(s))", event.get("endpoint"), event.get("polls"))
            return
        message = f"Clio sensor trigger failed: {(event or {}).get('message', 'no event')}"
        if event and event.get("fatal"):
            raise ClioFatalError(message, endpoint=str(event.get("endpoint") or self.endpoint))
        raise AirflowException(message)
