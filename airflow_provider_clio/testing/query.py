# SPDX-License-Identifier: Apache-2.0
"""Validate list and record query strings: ``fields``, time filters, ``ids[]`` and opaque page tokens.

Everything a client can get wrong answers 400 through :class:`QueryError`, so client bugs (a repeated
parameter, a page token replayed with other filters, a ``+`` left unencoded in a timestamp) surface in
tests instead of silently returning the wrong records.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from airflow_provider_clio.testing.data import to_microseconds

__all__ = [
    "MAX_IDS",
    "MAX_PAGE_SIZE",
    "REPEATABLE",
    "ListQuery",
    "QueryError",
    "Selection",
    "decode_page_token",
    "encode_page_token",
    "next_url",
    "parse_fields",
    "parse_list_query",
    "parse_timestamp",
    "project",
    "reject_repeated",
]

MAX_PAGE_SIZE = 200
MAX_IDS = 50
# Array parameters are the only ones a client may legitimately send several times.
REPEATABLE = frozenset({"ids[]"})

# (field, sub-fields): sub-fields None = the whole value (a scalar, or a nested record's defaults).
Selection = tuple[tuple[str, tuple[str, ...] | None], ...]


class QueryError(ValueError):
    """A request parameter is invalid; answer 400 with this message."""


def reject_repeated(pairs: Sequence[tuple[str, str]]) -> None:
    """Raise when a non-array parameter appears more than once."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen and key not in REPEATABLE:
            raise QueryError(f"parameter '{key}' is given more than once")
        seen.add(key)


def parse_fields(raw: str, schema: Mapping[str, tuple[str, ...] | None]) -> Selection:
    """Parse ``id,name,client{id,name}`` against a resource schema (one nesting level)."""
    items: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in raw:
        if ch == "{":
            depth += 1
            if depth > 1:
                raise QueryError(f"fields: nesting deeper than one level is not supported: {raw!r}")
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise QueryError(f"fields: unbalanced braces in {raw!r}")
        if ch == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise QueryError(f"fields: unbalanced braces in {raw!r}")
    items.append("".join(current))

    selection: dict[str, tuple[str, ...] | None] = {}
    for item in (i.strip() for i in items):
        if not item:
            raise QueryError(f"fields: empty field name in {raw!r}")
        name, sub = item, None
        if "{" in item:
            name, _, rest = item.partition("{")
            if not rest.endswith("}"):
                raise QueryError(f"fields: unexpected text after '}}' in {item!r}")
            name = name.strip()
            sub = tuple(s.strip() for s in rest[:-1].split(","))
            if not all(sub):
                raise QueryError(f"fields: empty nested field name in {item!r}")
        if name not in schema:
            raise QueryError(f"fields: unknown field '{name}'")
        nested = schema[name]
        if sub is not None:
            if nested is None:
                raise QueryError(f"fields: '{name}' is not a nested record")
            unknown = [s for s in sub if s not in nested]
            if unknown:
                raise QueryError(f"fields: unknown field '{unknown[0]}' in '{name}'")
            # Keep the first occurrence order, drop duplicates.
            sub = tuple(dict.fromkeys(sub))
        selection.setdefault(name, sub)
    return tuple(selection.items())


def project(record: Mapping[str, Any], selection: Selection | None) -> dict[str, Any]:
    """Return the record reduced to the selected fields (all fields when ``selection`` is None)."""
    if selection is None:
        return dict(record)
    out: dict[str, Any] = {}
    for name, sub in selection:
        value = record.get(name)
        if sub is not None and isinstance(value, Mapping):
            value = {key: value.get(key) for key in sub}
        out[name] = value
    return out


def parse_timestamp(name: str, raw: str) -> int:
    """Parse an ISO-8601 timestamp (naive = UTC) into microseconds since the epoch."""
    text = raw.strip()
    if text[-1:] in ("Z", "z"):
        # Python 3.10's fromisoformat does not read the Z suffix.
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        hint = " (a '+' in the offset must be sent as %2B)" if " " in raw else ""
        raise QueryError(f"{name}: invalid ISO-8601 timestamp {raw!r}{hint}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return to_microseconds(parsed)


def encode_page_token(last_id: int, filters_hash: str) -> str:
    """Return the opaque cursor for the page after ``last_id``."""
    payload = json.dumps({"last_id": last_id, "filters": filters_hash}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[int, str]:
    """Return ``(last_id, filters_hash)`` from a cursor, or raise :class:`QueryError`."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
        last_id, filters_hash = payload["last_id"], payload["filters"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise QueryError("page_token is malformed") from None
    if not isinstance(last_id, int) or isinstance(last_id, bool) or not isinstance(filters_hash, str):
        raise QueryError("page_token is malformed")
    return last_id, filters_hash


def _filters_hash(resource: str, pairs: Sequence[tuple[str, str]]) -> str:
    # Every parameter but the cursor is part of the filter: a token is only valid with the same query.
    canonical = sorted((k, v) for k, v in pairs if k != "page_token")
    digest = hashlib.sha256(json.dumps([resource, canonical]).encode()).hexdigest()
    return digest[:16]


@dataclass(frozen=True)
class ListQuery:
    """A validated list request.

    :param selection: selected fields, None for every field.
    :param updated_since_us: lower bound on ``updated_at`` (microseconds; inclusive unless the store
        says otherwise), or None.
    :param created_since_us: inclusive lower bound on ``created_at`` (microseconds), or None.
    :param ids: only these ids, or None.
    :param page_size: records per page.
    :param after_id: the cursor: return ids greater than this.
    :param filters_hash: fingerprint of every parameter except ``page_token``.
    :param page_token: the cursor as sent, or None on the first page.
    """

    selection: Selection | None
    updated_since_us: int | None
    created_since_us: int | None
    ids: frozenset[int] | None
    page_size: int
    after_id: int
    filters_hash: str
    page_token: str | None


def parse_list_query(
    resource: str,
    pairs: Sequence[tuple[str, str]],
    schema: Mapping[str, tuple[str, ...] | None],
    default_page_size: int,
) -> ListQuery:
    """Validate the query string of a list request."""
    reject_repeated(pairs)
    params = dict(pairs)
    selection = parse_fields(params["fields"], schema) if "fields" in params else None
    updated = parse_timestamp("updated_since", params["updated_since"]) if "updated_since" in params else None
    created = parse_timestamp("created_since", params["created_since"]) if "created_since" in params else None

    ids: frozenset[int] | None = None
    raw_ids = [v for k, v in pairs if k == "ids[]"]
    if raw_ids:
        if len(raw_ids) > MAX_IDS:
            raise QueryError(f"ids[]: at most {MAX_IDS} ids per request")
        try:
            ids = frozenset(int(v) for v in raw_ids)
        except ValueError:
            raise QueryError("ids[]: every id must be an integer") from None

    page_size = default_page_size
    if "limit" in params:
        try:
            page_size = int(params["limit"])
        except ValueError:
            raise QueryError("limit must be an integer") from None
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise QueryError(f"limit must be between 1 and {MAX_PAGE_SIZE}")

    filters_hash = _filters_hash(resource, pairs)
    after_id = 0
    token = params.get("page_token")
    if token is not None:
        after_id, token_hash = decode_page_token(token)
        if token_hash != filters_hash:
            raise QueryError(
                "page_token does not belong to this query: send the next URL exactly as returned"
            )
    return ListQuery(
        selection=selection,
        updated_since_us=updated,
        created_since_us=created,
        ids=ids,
        page_size=page_size,
        after_id=after_id,
        filters_hash=filters_hash,
        page_token=token,
    )


def next_url(host: str, path: str, pairs: Sequence[tuple[str, str]], token: str) -> str:
    """Return the absolute next-page URL: the original parameters plus the new ``page_token``."""
    kept = [(k, v) for k, v in pairs if k != "page_token"]
    kept.append(("page_token", token))
    return f"http://{host}{path}?{urlencode(kept)}"
