# SPDX-License-Identifier: Apache-2.0
"""Shared machinery of the Clio operators: pool and retry defaults, the interval, the resumable page loop.

``ClioExtractOperator`` (files) and ``ClioToSqlOperator`` (tables) differ only in where a committed unit of
records goes; both subclass :class:`ClioBaseOperator` and hand a sink to :func:`run_extraction`, which reads
pages through the hook, keeps the records of the interval, commits whole pages in bounded units and saves a
checkpoint after each durable commit.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import pendulum
from airflow.sdk import Asset, BaseHook, BaseOperator

from airflow_provider_clio.checkpoint import Checkpoint, Checkpointer, new_token
from airflow_provider_clio.exceptions import (
    ClioBadRequestError,
    ClioConfigError,
    ClioNotFoundError,
    ClioPaginationError,
)
from airflow_provider_clio.fields import Field, normalize_fields, parse_fields, top_level_names
from airflow_provider_clio.regions import DEFAULT_REGION, REGIONS

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_clio.hooks.clio import ClioHook
    from airflow_provider_clio.pagination import Page
    from airflow_provider_clio.retrying import RetrySettings

log = logging.getLogger(__name__)


DEFAULT_TASK_RETRY_ARGS: dict[str, Any] = {
    "retries": 5,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}
"""Task-level retries once the hook's in-request retries are spent; user arguments and default_args win."""

STALE_CURSOR_ERRORS = (ClioBadRequestError, ClioNotFoundError, ClioPaginationError)
"""Errors of a resumed first request that mean the saved cursor is unusable, not that the API is down."""

CHECKPOINT_EVERY_PAGES = 20
"""Pages after which the cursor is saved even when no unit is full (e.g. a backfill dropping most records)."""

RESERVED_QUERY_PARAMS = frozenset({"fields", "page_token", "updated_since"})

_NONE_STRINGS = frozenset({"", "none", "null"})


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
    from airflow_provider_clio.pools import pool_name_for

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
    return resolved, pool_name_for(resolved, override.strip() if isinstance(override, str) else None)


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


def parse_instant(value: Any, name: str) -> datetime | None:
    """
    Parse a templated timestamp argument into an aware datetime (naive values are UTC).

    Accepts ``None``, ``""``, ``"None"`` (a template that rendered nothing), datetimes and ISO-8601 strings.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        # pendulum.instance() reads a naive datetime as UTC.
        instant = pendulum.instance(value)
    elif isinstance(value, str):
        if value.strip().lower() in _NONE_STRINGS:
            return None
        try:
            parsed = pendulum.parse(value.strip())
        except Exception as err:
            raise ClioConfigError(
                f"{name}: cannot parse {value!r} as an ISO-8601 timestamp ({err})"
            ) from None
        if not isinstance(parsed, datetime):
            raise ClioConfigError(f"{name}: {value!r} is not a timestamp (got {type(parsed).__name__})")
        instant = pendulum.instance(parsed)
    else:
        raise ClioConfigError(f"{name}: expected a timestamp string or datetime, got {type(value).__name__}")
    return instant.in_timezone("UTC")


def _parse_updated_at(value: Any) -> datetime | None:
    """Parse a record's ``updated_at`` (any ISO-8601 form, ``Z`` included); ``None`` if impossible."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        # pendulum, not datetime.fromisoformat: Python 3.10's rejects "Z" and offsets without a colon.
        parsed = pendulum.parse(value.strip())
    except Exception:
        return None
    return parsed if isinstance(parsed, datetime) else None


def project(record: Mapping[str, Any], selection: Sequence[Field]) -> dict[str, Any]:
    """
    Return ``record`` with only the selected top-level keys and, for ``name{a,b}``, the selected sub-keys.

    A nested selection applies to an object and to each object of a list. Keys the record lacks stay absent.
    """
    row: dict[str, Any] = {}
    for item in selection:
        if item.name not in record:
            continue
        value = record[item.name]
        if item.nested is not None:
            if isinstance(value, Mapping):
                value = {name: value[name] for name in item.nested if name in value}
            elif isinstance(value, list):
                value = [
                    {name: v[name] for name in item.nested if name in v} if isinstance(v, Mapping) else v
                    for v in value
                ]
        row[item.name] = value
    return row


@dataclass(frozen=True)
class Interval:
    """
    The half-open ``[since, until)`` window of ``updated_at`` an extraction keeps; either end may be open.

    :param since: Inclusive lower bound, sent to Clio as ``updated_since`` (inclusive on the Platform API).
    :param until: Exclusive upper bound, applied to each record (Clio has no ``updated_before``).
    """

    since: datetime | None = None
    until: datetime | None = None

    def contains(self, updated_at: datetime) -> bool:
        """Whether ``updated_at`` falls in the interval."""
        if self.since is not None and updated_at < self.since:
            return False
        return not (self.until is not None and updated_at >= self.until)

    def to_dict(self) -> dict[str, str | None]:
        """Return the JSON form used in checkpoints, manifests and summaries."""
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }


def resolve_interval(updated_since: Any, updated_until: Any, context: Mapping[str, Any]) -> Interval:
    """
    Build the interval from the rendered arguments.

    With ``updated_since`` and no ``updated_until``, the upper bound is the run's ``data_interval_end`` when
    that is later than ``updated_since`` (scheduled runs), else open (manual runs, whose interval is empty).
    Consecutive scheduled intervals therefore partition the changes: each record version lands in exactly one.
    """
    since = parse_instant(updated_since, "updated_since")
    until = parse_instant(updated_until, "updated_until")
    if since is not None and until is not None and until <= since:
        raise ClioConfigError(
            f"updated_until ({until.isoformat()}) must be later than updated_since ({since.isoformat()})"
        )
    if since is not None and until is None:
        end = context.get("data_interval_end")
        if isinstance(end, datetime):
            end_utc = parse_instant(end, "data_interval_end")
            if end_utc is not None and end_utc > since:
                until = end_utc
    return Interval(since, until)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass
class ExtractionPlan:
    """
    What to ask Clio for and which of the returned records to keep.

    :param endpoint: API path such as ``grow/contacts``.
    :param fields: The user's normalised selection, ``None`` for the server's default fields.
    :param request_fields: The selection actually sent (adds ``updated_at``/``id`` when the filter or the sink
        needs them).
    :param strip: Names added only for filtering or keys, removed from each record before it is written.
    :param params: Query parameters, including ``updated_since``.
    :param interval: The ``updated_at`` window to keep.
    :param projection: The parsed ``request_fields``; each record is projected onto them client-side, because
        Clio may ignore ``fields`` and answer full objects (clio-api-reference §4). ``None``: keep every key.
    """

    endpoint: str
    fields: str | None
    request_fields: str | None
    strip: tuple[str, ...]
    params: dict[str, Any]
    interval: Interval
    projection: tuple[Field, ...] | None = None
    kept: int = field(default=0, init=False)
    dropped: int = field(default=0, init=False)

    @classmethod
    def build(
        cls,
        endpoint: str,
        fields: str | Sequence[str] | None,
        query_params: Mapping[str, Any] | None,
        interval: Interval,
        required: Iterable[str] = (),
    ) -> ExtractionPlan:
        """Validate the arguments and work out the request; ``required`` names must reach the sink."""
        endpoint = (endpoint or "").strip().strip("/")
        if not endpoint:
            raise ClioConfigError("endpoint must name a list endpoint such as 'grow/contacts'")
        if "?" in endpoint:
            raise ClioConfigError("endpoint must not carry a query string; use query_params")
        params = dict(query_params or {})
        reserved = sorted(RESERVED_QUERY_PARAMS.intersection(params))
        if reserved:
            raise ClioConfigError(
                f"query_params must not set {', '.join(reserved)}: use the fields / updated_since arguments"
            )
        normalized = normalize_fields(fields)
        request_fields = normalized
        strip: list[str] = []
        if normalized is not None:
            names = top_level_names(normalized)
            needed = list(required)
            if interval.since is not None or interval.until is not None:
                needed.append("updated_at")
            for name in needed:
                if name not in names:
                    request_fields = f"{request_fields},{name}"
                    names.append(name)
                    if name not in required:
                        strip.append(name)
        if interval.since is not None:
            params["updated_since"] = interval.since.isoformat()
        projection = tuple(parse_fields(request_fields)) if request_fields is not None else None
        return cls(
            endpoint, normalized, request_fields, tuple(strip), _jsonable(params), interval, projection
        )

    @property
    def filtered(self) -> bool:
        """Whether records are checked against the interval client-side."""
        return self.interval.since is not None or self.interval.until is not None

    def select(self, records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """
        Return the records of the interval, projected, without the names added only for filtering.

        :raise ClioBadRequestError: when the interval filter applies and a record's ``updated_at`` is missing
            or not a timestamp (it could not be placed in exactly one interval).
        """
        kept: list[dict[str, Any]] = []
        for record in records:
            if self.filtered:
                updated_at = _parse_updated_at(record.get("updated_at"))
                if updated_at is None:
                    # Kept, it would land in every interval (duplicates); dropped, it would be lost silently.
                    raise ClioBadRequestError(
                        f"Record id={record.get('id')!r} of {self.endpoint} has no parsable updated_at "
                        f"({record.get('updated_at')!r}), so it cannot be placed in the interval "
                        f"{self.interval.to_dict()}. Select updated_at in fields, or extract without "
                        "updated_since/updated_until",
                        endpoint=self.endpoint,
                    )
                if not self.interval.contains(updated_at):
                    self.dropped += 1
                    continue
            row = dict(record) if self.projection is None else project(record, self.projection)
            for name in self.strip:
                row.pop(name, None)
            kept.append(row)
        self.kept += len(kept)
        return kept

    def key(self, **extra: Any) -> dict[str, Any]:
        """Return the identity a checkpoint must match to be resumed."""
        return {
            "endpoint": self.endpoint,
            "fields": self.request_fields,
            "params": self.params,
            "interval": self.interval.to_dict(),
            **_jsonable(extra),
        }


class Sink(Protocol):
    """Where committed units of records go (part files, SQL transactions)."""

    @property
    def pending(self) -> int:
        """Records added since the last commit."""

    def add(self, records: list[dict[str, Any]]) -> None:
        """Buffer one page's records (locally, bounded)."""

    def commit(self, index: int, token: str) -> dict[str, Any]:
        """Make the pending records durable as unit ``index``; return a small description of the unit."""

    def state(self) -> dict[str, Any]:
        """Return what a resumed try must reuse (saved in the checkpoint after each commit)."""

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` of an earlier try (``{}`` for a fresh extraction)."""


@dataclass
class ExtractionResult:
    """Outcome of :func:`run_extraction`; the checkpoint state after the last commit."""

    state: Checkpoint
    resumed: bool
    resumed_parts: int
    pages_read: int
    seconds: float


def run_extraction(
    *,
    hook: ClioHook,
    plan: ExtractionPlan,
    checkpointer: Checkpointer,
    sink: Sink,
    unit_size: int,
    checkpoint_pages: int = CHECKPOINT_EVERY_PAGES,
) -> ExtractionResult:
    """
    Read the plan's pages into ``sink``, committing whole pages in units of about ``unit_size`` records.

    A unit is committed before a page that would push it past ``unit_size`` (so units exceed it only when a
    single page does), and a checkpoint naming the next page is saved right after each commit. At least every
    ``checkpoint_pages`` pages the pending records are committed (or, when none are pending, the cursor alone
    is saved; no empty unit is written), so a retry never re-reads more than that many pages. A resumed run
    starts at the checkpoint's ``next_url``; pages already committed are not requested again.
    """
    started = time.monotonic()
    saved = checkpointer.resume()
    resumed = saved is not None
    state = saved if saved is not None else Checkpoint(token=new_token(), next_url=None)
    resumed_parts = len(state.parts)
    carried_rate_limited = state.rate_limited
    pages_read = 0
    uncommitted_pages = 0

    def commit(next_url: str | None) -> None:
        nonlocal uncommitted_pages
        if sink.pending:
            unit = sink.commit(len(state.parts), state.token)
            state.parts.append(unit)
            state.records += int(unit.get("records", 0))
            state.sink_state = sink.state()
        state.pages += uncommitted_pages
        uncommitted_pages = 0
        state.next_url = next_url
        state.rate_limited = carried_rate_limited + int(getattr(hook.stats, "rate_limited", 0))
        checkpointer.save(state)
        log.info(
            "Committed %d unit(s), %d record(s), %d page(s) so far%s",
            len(state.parts),
            state.records,
            state.pages,
            "" if next_url is None else "; checkpoint saved",
        )

    if resumed and state.complete:
        log.info("Every page was committed by an earlier try; finishing the extraction")
    else:
        start_url = state.next_url if resumed else None
        pages: Iterator[Page]
        if start_url is None:
            pages = hook.iter_pages(plan.endpoint, fields=plan.request_fields, params=plan.params)
        else:
            resumed_pages = hook.iter_pages(plan.endpoint, start_url=start_url)
            try:
                first = next(resumed_pages, None)
            except STALE_CURSOR_ERRORS as err:
                # The saved cursor is no longer accepted (expired page token, changed API host): the output
                # is idempotent, so start over rather than fail every future try on the same cursor.
                log.warning("Cannot resume from the saved cursor (%s); starting the extraction over", err)
                checkpointer.abandon(state)
                state = Checkpoint(token=new_token(), next_url=None)
                resumed, resumed_parts, carried_rate_limited, start_url = False, 0, 0, None
                pages = hook.iter_pages(plan.endpoint, fields=plan.request_fields, params=plan.params)
            else:
                pages = _prepend(first, resumed_pages)
        sink.restore(state.sink_state)
        last_next: str | None = start_url
        for page in pages:
            pages_read += 1
            records = plan.select(page.records)
            if sink.pending and sink.pending + len(records) > unit_size:
                # ``last_next`` is the URL of this page: the checkpoint resumes exactly here.
                commit(last_next)
            if records:
                sink.add(records)
            uncommitted_pages += 1
            last_next = page.next_url
            if uncommitted_pages >= checkpoint_pages and last_next is not None:
                # Pages whose records were all dropped still cost requests: do not read them again on retry.
                commit(last_next)
            log.debug("Page %d: %d record(s) kept of %d", page.number, len(records), len(page.records))
        commit(None)
    if plan.dropped:
        log.info("Dropped %d record(s) updated outside %s", plan.dropped, plan.interval.to_dict())
    return ExtractionResult(
        state=state,
        resumed=resumed,
        resumed_parts=resumed_parts,
        pages_read=pages_read,
        seconds=round(time.monotonic() - started, 3),
    )


def _prepend(first: Page | None, rest: Iterator[Page]) -> Iterator[Page]:
    """Yield the already fetched first page, then the rest."""
    if first is not None:
        yield first
        yield from rest


class ClioBaseOperator(BaseOperator):
    """
    Base of the Clio extraction operators: region pool, task retries, interval and hook.

    :param endpoint: List endpoint relative to the API base URL, e.g. ``grow/contacts`` (templated).
    :param fields: Fields to select, a list (``["id", "name", "client{id,name}"]``) or the string form;
        ``None`` for the server's default fields (templated).
    :param query_params: Extra query parameters such as ``{"ids[]": [1, 2]}`` (templated). ``fields``,
        ``page_token`` and ``updated_since`` have their own arguments.
    :param updated_since: Keep records with ``updated_at`` at or after this instant (ISO-8601 or datetime;
        templated, e.g. ``{{ data_interval_start }}``). ``None`` or ``""``: no lower bound.
    :param updated_until: Keep records with ``updated_at`` strictly before this instant (templated). Defaults
        to the run's ``data_interval_end`` when ``updated_since`` is set and the interval end is later.
    :param clio_conn_id: The Clio connection.
    :param region: Clio region (``us``, ``ca``, ``eu``, ``au``); default: the connection's ``region`` extra.
        Picks the default pool ``clio_<region>`` and the lineage URI; the task fails if it is not the
        connection's region (the hook always uses the connection's).
    :param token_store: Where the hook keeps rotated OAuth tokens; default: the hook's Variable store.
    :param request_retry: The hook's in-request retry policy (``RetrySettings``); default: the hook's (waits
        of 1, 2, 4, 8, 16 s). When it is spent, the task-level retry takes over and resumes.
    """

    template_fields: Sequence[str] = ("endpoint", "fields", "query_params", "updated_since", "updated_until")
    template_fields_renderers: ClassVar[dict[str, str]] = {"query_params": "json"}
    ui_color = "#0f5ea8"
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        endpoint: str,
        fields: str | Sequence[str] | None = None,
        query_params: Mapping[str, Any] | None = None,
        updated_since: str | datetime | None = None,
        updated_until: str | datetime | None = None,
        clio_conn_id: str = "clio_default",
        region: str | None = None,
        token_store: Any | None = None,
        request_retry: RetrySettings | None = None,
        **kwargs: Any,
    ) -> None:
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
        self.updated_since = updated_since
        self.updated_until = updated_until
        self.clio_conn_id = clio_conn_id
        self.region = resolved_region
        self.explicit_region = region
        self.token_store = token_store
        self.request_retry = request_retry
        self._summary: dict[str, Any] | None = None

    def get_hook(self) -> ClioHook:
        """Return a hook pacing at this task's pool slots; fail when it paces for another pool or region."""
        from airflow_provider_clio.hooks.clio import ClioHook

        kwargs: dict[str, Any] = {"pool_slots": self.pool_slots}
        if self.token_store is not None:
            kwargs["token_store"] = self.token_store
        if self.request_retry is not None:
            kwargs["retry"] = self.request_retry
        hook = ClioHook(self.clio_conn_id, **kwargs)
        check_pool_and_region(self, hook, self.clio_conn_id, self.explicit_region)
        return hook

    def build_plan(self, context: Context, required: Iterable[str] = ()) -> ExtractionPlan:
        """Resolve the interval and the request from the rendered arguments."""
        interval = resolve_interval(self.updated_since, self.updated_until, context)
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
