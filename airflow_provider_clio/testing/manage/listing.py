# SPDX-License-Identifier: Apache-2.0
"""Validate a Manage list query: ``fields``, ``limit``, ``order``, cursor or offset paging, time filters.

Cursor paging (no ``offset``) follows ``meta.paging.next``, whose opaque ``page_token`` is only valid
with the query that produced it. Offset paging works too, but a page reaching past ``offset_cap`` records
answers 422 (Clio's ArgumentError), which is why an extractor must never use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from airflow_provider_clio.testing.manage.data import NO_UPDATED_SINCE
from airflow_provider_clio.testing.manage.settings import ManageSettings
from airflow_provider_clio.testing.query import (
    QueryError,
    decode_page_token,
    parse_timestamp,
    reject_repeated,
)

__all__ = ["MAX_LIMIT", "ListParams", "ManageQueryError", "parse_list_params"]

MAX_LIMIT = 200
_ORDERS = ("id(asc)",)


class ManageQueryError(QueryError):
    """A parameter error answered with ``status`` (400 unless told)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ListParams:
    """A validated list query.

    :param fields: the raw ``fields`` (None: only ``id`` and ``etag``).
    :param limit: records per page.
    :param offset: offset paging's start, None for cursor paging.
    :param after_id: the cursor: ids above it.
    :param updated_after_us: keep records updated strictly after it (microseconds), or None.
    :param created_since_us: keep records created at or after it, or None.
    :param ids: only these ids, or None.
    """

    fields: str | None
    limit: int
    offset: int | None
    after_id: int
    updated_after_us: int | None
    created_since_us: int | None
    ids: frozenset[int] | None


def _int(params: dict[str, str], name: str, low: int, high: int | None) -> int | None:
    if name not in params:
        return None
    try:
        value = int(params[name])
    except ValueError:
        raise ManageQueryError(f"{name} must be an integer") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ManageQueryError(f"{name} must be {bounds}")
    return value


def parse_list_params(
    resource: str, pairs: Sequence[tuple[str, str]], settings: ManageSettings, filters_hash: str
) -> ListParams:
    """Validate the query string of a list request; raise :class:`QueryError` (400) or 422."""
    reject_repeated(pairs)
    params = dict(pairs)
    limit = _int(params, "limit", 1, MAX_LIMIT) or MAX_LIMIT
    offset = _int(params, "offset", 0, None)
    if params.get("order", "id(asc)") not in _ORDERS:
        raise ManageQueryError(f"order {params['order']!r} is not supported by the emulator; use id(asc)")
    if offset is not None:
        if "page_token" in params:
            raise ManageQueryError("offset and page_token cannot be combined")
        if offset + limit > settings.offset_cap:
            raise ManageQueryError(
                f"offset paging is limited to {settings.offset_cap} records "
                f"(offset {offset} + limit {limit}); use cursor paging with order=id(asc)",
                status=422,
            )
    updated_after = None
    if "updated_since" in params:
        if resource in NO_UPDATED_SINCE:
            raise ManageQueryError(f"{resource} does not support updated_since; load it in full")
        since = parse_timestamp("updated_since", params["updated_since"])
        updated_after = since - 1 if settings.updated_since_inclusive else since
    created = parse_timestamp("created_since", params["created_since"]) if "created_since" in params else None
    ids = None
    raw_ids = [v for k, v in pairs if k == "ids[]"]
    if raw_ids:
        try:
            ids = frozenset(int(v) for v in raw_ids)
        except ValueError:
            raise ManageQueryError("ids[]: every id must be an integer") from None
    after_id = 0
    if "page_token" in params:
        after_id, token_hash = decode_page_token(params["page_token"])
        if token_hash != filters_hash:
            raise ManageQueryError("page_token does not belong to this query: send the next URL as returned")
    return ListParams(params.get("fields"), limit, offset, after_id, updated_after, created, ids)
