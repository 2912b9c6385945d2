# SPDX-License-Identifier: Apache-2.0
"""Fetch known records by id in batched list calls (``ids[]=1&ids[]=2``) instead of one GET per record.

Every Platform list endpoint filters on ``ids[]`` with 1 to 50 ids per request, so refreshing 1,000 known
records costs 20 requests instead of 1,000 (:meth:`ClioHook.get_records
<airflow_provider_clio.hooks.clio.ClioHook.get_records>` is the public entry point). Each batch is read with
:meth:`~airflow_provider_clio.hooks.clio.ClioHook.iter_pages`, so a batch the server pages is followed through
its ``next`` links like any list. Ids the server does not return (deleted, or not visible to the token) are
reported in :attr:`RecordLookup.missing` instead of failing the lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_clio.exceptions import ClioConfigError, ClioFatalError
from airflow_provider_clio.fields import Field, parse_fields
from airflow_provider_clio.pagination import Page

if TYPE_CHECKING:
    from airflow_provider_clio.hooks.clio import ClioHook

__all__ = ["MAX_IDS_PER_REQUEST", "RecordLookup", "batches", "normalize_ids", "with_id_field"]

MAX_IDS_PER_REQUEST = 50
"""Clio accepts 1 to 50 ``ids[]`` values per list request."""

_DIGITS = re.compile(r"^\d+$")
# A templated list renders to its text form ("[1, 2, 3]" or "['1', '2']"); separators of that text.
_SEPARATORS = re.compile(r"[\s,]+")
_RESERVED_PARAMS = frozenset({"ids[]", "ids"})
_LOGGED_MISSING = 20


def normalize_ids(ids: Any) -> list[int]:
    """
    Return the ids as positive ints in first-seen order, without repeats; raise ClioConfigError otherwise.

    ``ids`` is an iterable of ints or digit strings, a single id, or a string listing ids separated by commas
    or whitespace, optionally in brackets and quotes (the text a templated list renders to, e.g.
    ``"[1, 2, 3]"``). The error names the first bad value; nothing is sent before every id is valid.
    """
    if isinstance(ids, str):
        text = ids.strip()
        if text[:1] == "[" and text[-1:] == "]":
            text = text[1:-1]
        values: Iterable[Any] = [token.strip("'\"") for token in _SEPARATORS.split(text) if token]
    elif isinstance(ids, int) and not isinstance(ids, bool):
        values = [ids]
    elif isinstance(ids, Iterable) and not isinstance(ids, bytes | Mapping):
        values = ids
    else:
        raise ClioConfigError(f"ids: expected a list of record ids, got {type(ids).__name__}")
    return list(dict.fromkeys(_to_id(value) for value in values))


def _to_id(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.match(value.strip()):
        number = int(value.strip())
    else:
        raise ClioConfigError(f"ids: {value!r} is not a record id (a positive integer or a string of digits)")
    if number < 1:
        raise ClioConfigError(f"ids: {value!r} is not a record id (ids are positive)")
    return number


def with_id_field(fields: str | Sequence[str] | None) -> str | None:
    """Return the ``fields`` selection with ``id`` first if it lacks it (records are matched on ``id``)."""
    parsed = parse_fields(fields)
    if not parsed:
        return None  # the server's default fields include id
    if not any(field.name == "id" and field.nested is None for field in parsed):
        parsed = [Field("id"), *(field for field in parsed if field.name != "id")]
    return ",".join(str(field) for field in parsed)


def batches(ids: Sequence[int], size: int = MAX_IDS_PER_REQUEST) -> Iterator[list[int]]:
    """Yield ``ids`` in consecutive slices of at most ``size``."""
    _check_batch_size(size)
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


class RecordLookup:
    """
    One batched lookup: read it once with :meth:`records` or :meth:`pages`, then ask :attr:`missing`.

    Records stream: at most one page is held at a time (the ids themselves, and the set of ids found, are
    kept to report what is missing). Each record is yielded once, even if the server sends it twice. A
    record the lookup did not ask for means the server ignored ``ids[]``, and would otherwise page through
    the whole endpoint: that stops the lookup with ClioFatalError.

    :param hook: The hook whose request path (pacing, tokens, retries) is used.
    :param endpoint: The list endpoint, e.g. ``grow/contacts``.
    :param ids: The ids to fetch (see :func:`normalize_ids`).
    :param fields: Fields to select; ``id`` is added when missing.
    :param params: Other list parameters (e.g. ``include``); filters such as ``updated_since`` narrow the
        answer, and the ids they filter out are reported missing.
    :param batch_size: Ids per request, 1 to 50.

    While and after reading, ``requests`` counts the requests the hook sent for it (retries included),
    ``found`` the records yielded and ``repeated`` the repeated records skipped.
    """

    def __init__(
        self,
        hook: ClioHook,
        endpoint: str,
        ids: Any,
        fields: str | Sequence[str] | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        batch_size: int = MAX_IDS_PER_REQUEST,
    ) -> None:
        self.hook = hook
        self.endpoint = endpoint
        self.ids = normalize_ids(ids)
        self.fields = with_id_field(fields)
        self.params = dict(params or {})
        reserved = _RESERVED_PARAMS.intersection(self.params)
        if reserved:
            raise ClioConfigError(f"params: {sorted(reserved)[0]} is set by the lookup from ids")
        if "fields" in self.params:
            raise ClioConfigError("params: pass fields as the fields argument (id is added to it)")
        self.batch_size = _check_batch_size(batch_size)
        self.requests = 0
        self.found = 0
        self.repeated = 0
        self._missing: list[int] | None = None
        self._started = False

    @property
    def missing(self) -> list[int]:
        """The requested ids the server did not return, in request order (known once reading finished)."""
        if self._missing is None:
            raise RuntimeError("RecordLookup.missing is known only after records() or pages() is exhausted")
        return self._missing

    @property
    def batches(self) -> int:
        """The number of ``ids[]`` batches (one request each unless the server pages a batch)."""
        return -(-len(self.ids) // self.batch_size)

    def records(self) -> Iterator[dict[str, Any]]:
        """Yield every record found, once each, batch by batch (id ascending within a batch)."""
        for page in self.pages():
            yield from page.records

    def pages(self) -> Iterator[Page]:
        """
        Yield the server's pages of every batch, each with only the records not yielded before.

        ``number`` counts pages across batches; ``next_url`` is the server's ``next`` link *within* the batch
        (``None`` at the end of every batch), so it does not resume a lookup: rerun it instead (it costs
        :attr:`batches` requests).
        """
        if self._started:
            raise RuntimeError("a RecordLookup is read once; call ClioHook.get_records again to re-read")
        self._started = True
        seen: set[int] = set()
        number = 0
        before = self.hook.stats.requests
        for batch in batches(self.ids, self.batch_size):
            wanted = set(batch)
            params = {**self.params, "ids[]": [str(record_id) for record_id in batch]}
            for page in self.hook.iter_pages(self.endpoint, self.fields, params):
                self.requests = self.hook.stats.requests - before
                number += 1
                fresh = self._fresh(page.records, wanted, seen)
                yield Page(records=fresh, next_url=page.next_url, number=number, url=page.url)
        self.requests = self.hook.stats.requests - before
        self._missing = [record_id for record_id in self.ids if record_id not in seen]
        self._log_summary()

    def _fresh(self, records: list[dict[str, Any]], wanted: set[int], seen: set[int]) -> list[dict[str, Any]]:
        """Return the records of a page not yielded before; check each one was asked for."""
        fresh: list[dict[str, Any]] = []
        for record in records:
            record_id = _record_id(record, self.endpoint)
            if record_id not in wanted:
                raise ClioFatalError(
                    f"the server returned record {record_id}, which this batch did not ask for: it ignored "
                    "the ids[] filter; stopping instead of reading the whole endpoint",
                    endpoint=self.endpoint,
                )
            if record_id in seen:
                self.repeated += 1
                continue
            seen.add(record_id)
            fresh.append(record)
        self.found += len(fresh)
        return fresh

    def _log_summary(self) -> None:
        missing = self.missing
        shown = ", ".join(map(str, missing[:_LOGGED_MISSING])) + (
            ", …" if len(missing) > _LOGGED_MISSING else ""
        )
        self.hook.log.info(
            "Clio %s: looked up %d id(s) in %d batch(es) and %d request(s): %d found, %d missing%s%s",
            self.endpoint,
            len(self.ids),
            self.batches,
            self.requests,
            self.found,
            len(missing),
            f" ({shown})" if missing else "",
            f"; {self.repeated} repeated record(s) skipped" if self.repeated else "",
        )


def _check_batch_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IDS_PER_REQUEST:
        raise ClioConfigError(f"batch size must be an int from 1 to {MAX_IDS_PER_REQUEST}, got {size!r}")
    return size


def _record_id(record: Any, endpoint: str) -> int:
    value = record.get("id") if isinstance(record, Mapping) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _DIGITS.match(value):
        return int(value)
    raise ClioFatalError(f"a record without an integer 'id' came back: {value!r}", endpoint=endpoint)
