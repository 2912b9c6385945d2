# SPDX-License-Identifier: Apache-2.0
"""The base of the Clio operators: arguments, task defaults, the checked hook, the plan and lineage.

``ClioExtractOperator`` (files) and ``ClioToSqlOperator`` (tables) subclass :class:`ClioBaseOperator` and
run an :class:`~airflow_provider_clio.extraction.Extraction` with their own sink. Pool, region and retry
defaults come from :mod:`airflow_provider_clio.task_policy`, shared with the sensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import Asset, BaseOperator

from airflow_provider_clio.extraction import ExtractionPlan
from airflow_provider_clio.modes import FULL, INTERVAL, SINCE_LAST_SUCCESS, check_mode, resolve_interval
from airflow_provider_clio.task_policy import (
    DEFAULT_TASK_RETRY_ARGS,
    apply_task_defaults,
    connection_region_and_pool,
    default_retry_policy,
    task_hook,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_clio.hooks.clio import ClioHook
    from airflow_provider_clio.retrying import RetrySettings

__all__ = ["ClioBaseOperator", "clio_asset_uri"]


class ClioBaseOperator(BaseOperator):
    """
    Base of the Clio extraction operators: region pool, task retries, interval and hook.

    :param endpoint: List endpoint relative to the API base URL, e.g. ``grow/contacts`` (templated).
    :param fields: Fields to select, a list (``["id", "name", "client{id,name}"]``) or the string form;
        ``None`` for the server's default fields (templated).
    :param query_params: Extra query parameters such as ``{"ids[]": [1, 2]}`` (templated). ``fields``,
        ``page_token`` and ``updated_since`` have their own arguments.
    :param mode: Which records to read (templated; see :mod:`airflow_provider_clio.modes`): ``"full"``
        (every record), ``"interval"`` (``[updated_since, updated_until)`` when given, else the run's data
        interval), ``"since_last_success"`` (gap-free: from the end of the last successful run's interval
        minus ``overlap`` to this run's ``data_interval_end``). ``None`` (default): ``"interval"`` when
        ``updated_since`` or ``updated_until`` is given, else ``"full"``.
    :param updated_since: With ``mode`` ``None`` or ``"interval"``: keep records with ``updated_at`` at or
        after this instant (ISO-8601 or datetime; templated). ``None`` or ``""``: no lower bound.
    :param updated_until: With ``mode`` ``None`` or ``"interval"``: keep records with ``updated_at`` strictly
        before this instant (templated). Defaults to the run's ``data_interval_end`` when ``updated_since`` is
        set and the interval end is later.
    :param overlap: ``since_last_success`` only: how far before the last success's interval end to start
        (``timedelta`` or seconds; default 5 minutes). The upsert absorbs the re-read rows; file extracts may
        repeat them (dedupe on ``id`` + ``updated_at``).
    :param clio_conn_id: The Clio connection.
    :param region: Clio region (``us``, ``ca``, ``eu``, ``au``); default: the connection's ``region`` extra.
        Picks the default pool ``clio_<region>`` and the lineage URI; the task fails if it is not the
        connection's region (the hook always uses the connection's).
    :param token_store: Where the hook keeps rotated OAuth tokens; default: the hook's Variable store.
    :param request_retry: The hook's in-request retry policy (``RetrySettings``); default: the hook's (waits
        of 1, 2, 4, 8, 16 s). When it is spent, the task-level retry takes over and resumes.
    """

    template_fields: Sequence[str] = (
        "endpoint",
        "fields",
        "query_params",
        "mode",
        "updated_since",
        "updated_until",
    )
    allowed_modes: ClassVar[tuple[str, ...]] = (FULL, INTERVAL, SINCE_LAST_SUCCESS)
    template_fields_renderers: ClassVar[dict[str, str]] = {"query_params": "json"}
    ui_color = "#0f5ea8"
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        endpoint: str,
        fields: str | Sequence[str] | None = None,
        query_params: Mapping[str, Any] | None = None,
        mode: str | None = None,
        updated_since: str | datetime | None = None,
        updated_until: str | datetime | None = None,
        overlap: timedelta | float | None = None,
        clio_conn_id: str = "clio_default",
        region: str | None = None,
        token_store: Any | None = None,
        request_retry: RetrySettings | None = None,
        **kwargs: Any,
    ) -> None:
        check_mode(
            mode,
            self.allowed_modes,
            updated_since=updated_since,
            updated_until=updated_until,
            overlap=overlap,
        )
        resolved_region, pool = connection_region_and_pool(clio_conn_id, region)
        apply_task_defaults(kwargs, {"pool": pool, **DEFAULT_TASK_RETRY_ARGS})
        policy = default_retry_policy()
        if policy is not None:
            apply_task_defaults(kwargs, {"retry_policy": policy})
        if "inlets" not in kwargs and "{{" not in endpoint:
            kwargs["inlets"] = [Asset(clio_asset_uri(resolved_region, endpoint))]
        super().__init__(**kwargs)
        self.endpoint = endpoint
        self.fields = list(fields) if isinstance(fields, (list, tuple)) else fields
        self.query_params = dict(query_params) if query_params else {}
        self.mode = mode
        self.updated_since = updated_since
        self.updated_until = updated_until
        self.overlap = overlap
        self.clio_conn_id = clio_conn_id
        self.region = resolved_region
        self.explicit_region = region
        self.token_store = token_store
        self.request_retry = request_retry
        self._summary: dict[str, Any] | None = None

    def get_hook(self) -> ClioHook:
        """Return a hook pacing at this task's pool slots; fail when it paces for another pool or region."""
        return task_hook(
            self,
            self.clio_conn_id,
            self.explicit_region,
            token_store=self.token_store,
            retry=self.request_retry,
        )

    def build_plan(self, context: Context, required: Iterable[str] = ()) -> ExtractionPlan:
        """Resolve the interval and the request from the rendered arguments (before any request)."""
        mode = self.mode or None
        check_mode(
            mode,
            self.allowed_modes,
            updated_since=self.updated_since,
            updated_until=self.updated_until,
            overlap=self.overlap,
        )
        interval = resolve_interval(mode, self.updated_since, self.updated_until, self.overlap, context)
        return ExtractionPlan.build(self.endpoint, self.fields, self.query_params, interval, required)

    # OpenLineage: the imports stay inside the methods so the provider works without the OpenLineage provider.
    def _ol_outputs(self, summary: Mapping[str, Any] | None) -> list[Any]:
        return []

    def get_openlineage_facets_on_start(self) -> Any:
        """Describe the Clio endpoint read and the output written, for OpenLineage."""
        from airflow.providers.common.compat.openlineage.facet import InputDataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        endpoint = str(self.endpoint).strip("/")
        return OperatorLineage(
            inputs=[InputDataset(namespace=f"clio://{self.region}", name=endpoint)],
            outputs=self._ol_outputs(None),
        )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Like :meth:`get_openlineage_facets_on_start`, with the output's row count."""
        lineage = self.get_openlineage_facets_on_start()
        lineage.outputs = self._ol_outputs(self._summary)
        return lineage


def clio_asset_uri(region: str, endpoint: str) -> str:
    """Return the Asset URI of a Clio endpoint, ``clio://<region>/<endpoint>``."""
    return f"clio://{region}/{endpoint.strip().strip('/')}"
