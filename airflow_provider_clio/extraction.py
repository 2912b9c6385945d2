# SPDX-License-Identifier: Apache-2.0
"""One extraction: what to ask Clio for, which records to keep, and the resumable page loop.

``ClioExtractOperator`` (files) and ``ClioToSqlOperator`` (tables) differ only in where a committed unit of
records goes. Both build an :class:`ExtractionPlan` and hand a :class:`Sink` to :class:`Extraction`, which
reads pages through the hook, keeps the records of the interval, commits whole pages in bounded units and
saves a checkpoint after each durable commit.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_clio.checkpoint import Checkpoint, Checkpointer, new_token
from airflow_provider_clio.dates import parse_timestamp
from airflow_provider_clio.exceptions import (
    ClioBadRequestError,
    ClioConfigError,
    ClioNotFoundError,
    ClioPaginationError,
)
from airflow_provider_clio.fields import Field, normalize_fields, parse_fields, project, top_level_names

if TYPE_CHECKING:
    from airflow_provider_clio.hooks.clio import ClioHook
    from airflow_provider_clio.pagination import Page

__all__ = [
    "CHECKPOINT_EVERY_PAGES",
    "REQUEST_SLACK",
    "RESERVED_QUERY_PARAMS",
    "STALE_CURSOR_ERRORS",
    "Extraction",
    "ExtractionPlan",
    "ExtractionResult",
    "Interval",
    "Sink",
]

log = logging.getLogger(__name__)

STALE_CURSOR_ERRORS = (ClioBadRequestError, ClioNotFoundError, ClioPaginationError)
"""Errors of a resumed first request that mean the saved cursor is unusable, not that the API is down."""

CHECKPOINT_EVERY_PAGES = 20
"""Pages after which the cursor is saved even when no unit is full (e.g. a backfill dropping most records)."""

RESERVED_QUERY_PARAMS = frozenset({"fields", "page_token", "updated_since"})
"""Query parameters that have their own task arguments and must not be passed in ``query_params``."""

REQUEST_SLACK = timedelta(seconds=1)
"""How much earlier than the lower bound ``updated_since`` is sent. The Platform spec calls Clio's
``updated_since`` inclusive, the Manage spec exclusive: asking one second early and filtering
client-side keeps a record stamped exactly on the bound either way."""


@dataclass(frozen=True)
class Interval:
    """
    The half-open ``[since, until)`` window of ``updated_at`` an extraction keeps; either end may be open.

    :param since: Inclusive lower bound, applied to each record; Clio is asked for ``updated_since``
        :data:`REQUEST_SLACK` earlier, whether its bound is inclusive or exclusive.
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


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _request_fields(
    normalized: str | None, required: Sequence[str], interval: Interval
) -> tuple[str | None, tuple[str, ...]]:
    """Return the selection to send (``normalized`` plus what filtering needs) and the names to strip."""
    if normalized is None:
        return None, ()
    request_fields = normalized
    strip: list[str] = []
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
    return request_fields, tuple(strip)


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
        request_fields, strip = _request_fields(normalized, list(required), interval)
        if interval.since is not None:
            params["updated_since"] = (interval.since - REQUEST_SLACK).isoformat()
        projection = tuple(parse_fields(request_fields)) if request_fields is not None else None
        return cls(endpoint, normalized, request_fields, strip, _jsonable(params), interval, projection)

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
            if self.filtered and not self._in_interval(record):
                self.dropped += 1
                continue
            row = dict(record) if self.projection is None else project(record, self.projection)
            for name in self.strip:
                row.pop(name, None)
            kept.append(row)
        self.kept += len(kept)
        return kept

    def _in_interval(self, record: Mapping[str, Any]) -> bool:
        value = record.get("updated_at")
        # Clio sends ISO 8601 text: a bare number is a malformed record, not epoch seconds.
        updated_at = parse_timestamp(value) if isinstance(value, (str, datetime)) else None
        if updated_at is None:
            # Kept, it would land in every interval (duplicates); dropped, it would be lost silently.
            raise ClioBadRequestError(
                f"Record id={record.get('id')!r} of {self.endpoint} has no parsable updated_at "
                f"({record.get('updated_at')!r}), so it cannot be placed in the interval "
                f"{self.interval.to_dict()}. Select updated_at in fields, or extract "
                "everything (mode='full')",
                endpoint=self.endpoint,
            )
        return self.interval.contains(updated_at)

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

    def commit(self, index: int, token: str) -> int:
        """Make the pending records durable as unit ``index`` of attempt ``token``; return how many."""

    def state(self) -> dict[str, Any]:
        """Return what a resumed try must reuse (saved in the checkpoint after each commit; keep it small)."""

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` of an earlier try (``{}`` for a fresh extraction)."""


@dataclass
class ExtractionResult:
    """Outcome of :meth:`Extraction.run`; the checkpoint state after the last commit."""

    state: Checkpoint
    resumed: bool
    resumed_units: int
    pages_read: int
    seconds: float


class Extraction:
    """
    Read a plan's pages into a sink, committing whole pages in units of about ``unit_size`` records.

    A unit is committed before a page that would push it past ``unit_size`` (so units exceed it only when a
    single page does), and a checkpoint naming the next page is saved right after each commit. At least every
    ``checkpoint_pages`` pages the pending records are committed (or, when none are pending, the cursor alone
    is saved; no empty unit is written), so a retry never re-reads more than that many pages. A resumed run
    starts at the checkpoint's ``next_url``; pages already committed are not requested again.
    """

    def __init__(
        self,
        *,
        hook: ClioHook,
        plan: ExtractionPlan,
        checkpointer: Checkpointer,
        sink: Sink,
        unit_size: int,
        checkpoint_pages: int = CHECKPOINT_EVERY_PAGES,
    ) -> None:
        self.hook = hook
        self.plan = plan
        self.checkpointer = checkpointer
        self.sink = sink
        self.unit_size = unit_size
        self.checkpoint_pages = checkpoint_pages
        self.pages_read = 0
        self._uncommitted_pages = 0
        self._begin(None)

    def run(self) -> ExtractionResult:
        """Resume or start, read every remaining page, commit the last unit; return the outcome."""
        started = time.monotonic()
        self._begin(self.checkpointer.resume())
        pages = None if self.resumed and self.state.complete else self._open_pages()
        # Also for a complete checkpoint: the final step (e.g. the manifest) needs what the sink carried.
        self.sink.restore(self.state.sink_state)
        if pages is None:
            log.info("Every page was committed by an earlier try; finishing the extraction")
        else:
            self._read(pages)
        if self.plan.dropped:
            log.info(
                "Dropped %d record(s) updated outside %s", self.plan.dropped, self.plan.interval.to_dict()
            )
        return ExtractionResult(
            state=self.state,
            resumed=self.resumed,
            resumed_units=self.resumed_units,
            pages_read=self.pages_read,
            seconds=round(time.monotonic() - started, 3),
        )

    def _begin(self, saved: Checkpoint | None) -> None:
        """Continue ``saved``, or start a fresh attempt when it is ``None``."""
        self.state = saved if saved is not None else Checkpoint(token=new_token(), next_url=None)
        self.resumed = saved is not None
        self.resumed_units = self.state.units
        self._carried_rate_limited = self.state.rate_limited

    def _first_pages(self) -> Iterator[Page]:
        return self.hook.iter_pages(
            self.plan.endpoint, fields=self.plan.request_fields, params=self.plan.params
        )

    def _open_pages(self) -> Iterator[Page]:
        """Return the pages still to read: from the saved cursor when resuming, else from the first page."""
        if not self.resumed:
            return self._first_pages()
        resumed_pages = self.hook.iter_pages(self.plan.endpoint, start_url=self.state.next_url)
        try:
            first = next(resumed_pages, None)
        except STALE_CURSOR_ERRORS as err:
            # The saved cursor is no longer accepted (expired page token, changed API host): the output is
            # idempotent, so start over rather than fail every future try on the same cursor.
            log.warning("Cannot resume from the saved cursor (%s); starting the extraction over", err)
            self.checkpointer.abandon(self.state)
            self._begin(None)
            return self._first_pages()
        return _prepend(first, resumed_pages)

    def _read(self, pages: Iterator[Page]) -> None:
        # The URL of the page being read: a checkpoint saved before it resumes exactly there.
        current: str | None = self.state.next_url
        for page in pages:
            self.pages_read += 1
            records = self.plan.select(page.records)
            if self.sink.pending and self.sink.pending + len(records) > self.unit_size:
                self._commit(current)
            if records:
                self.sink.add(records)
            self._uncommitted_pages += 1
            current = page.next_url
            if self._uncommitted_pages >= self.checkpoint_pages and current is not None:
                # Pages whose records were all dropped still cost requests: do not read them again on retry.
                self._commit(current)
            log.debug("Page %d: %d record(s) kept of %d", page.number, len(records), len(page.records))
        self._commit(None)

    def _commit(self, next_url: str | None) -> None:
        """Commit the pending records (if any) as the next unit, then save the checkpoint at ``next_url``."""
        state = self.state
        if self.sink.pending:
            self.checkpointer.check()  # fence: never upload over a newer try's unit
            state.records += self.sink.commit(state.units, state.token)
            state.units += 1
            state.sink_state = self.sink.state()
        state.pages += self._uncommitted_pages
        self._uncommitted_pages = 0
        state.next_url = next_url
        state.rate_limited = self._carried_rate_limited + int(getattr(self.hook.stats, "rate_limited", 0))
        self.checkpointer.save(state)
        log.info(
            "Committed %d unit(s), %d record(s), %d page(s) so far%s",
            state.units,
            state.records,
            state.pages,
            "" if next_url is None else "; checkpoint saved",
        )


def _prepend(first: Page | None, rest: Iterator[Page]) -> Iterator[Page]:
    """Yield the already fetched first page, then the rest."""
    if first is not None:
        yield first
        yield from rest
