# SPDX-License-Identifier: Apache-2.0
"""How a JSON value of a Clio record becomes a typed column: shared by the Parquet writer and the SQL load.

Both outputs type a column conservatively from the kinds of value seen (``bool``, ``int``, ``float``, ``str``,
``json``): a numeric or boolean type only when every value agrees, text otherwise, and nested objects and
lists are stored as compact JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["json_text", "kinds_of", "parquet_type", "sql_type", "to_cell", "value_kind"]


def value_kind(value: Any) -> str:
    """Classify a JSON value for column typing: ``bool``, ``int``, ``float``, ``str`` or ``json``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


def kinds_of(values: Iterable[Any]) -> set[str]:
    """Return the :func:`value_kind` of every non-null value."""
    return {value_kind(value) for value in values if value is not None}


def json_text(value: Any) -> str:
    """Return ``value`` as compact JSON text (non-ASCII kept), the form nested values are stored in."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def to_cell(value: Any) -> Any:
    """Return the value to bind in SQL: nested objects and lists become JSON text, scalars pass through."""
    return json_text(value) if isinstance(value, (dict, list)) else value


def parquet_type(name: str, kinds: set[str]) -> str | None:
    """
    Return the Parquet type of column ``name`` holding values of ``kinds``, ``None`` when it has no value yet.

    ``id`` is ``int64``; booleans are ``bool``; every other number is ``float64`` (a column whose first part
    holds only whole numbers may hold ``2500.75`` later); strings, nested values and mixed kinds are
    ``string``.
    """
    if name == "id" and kinds <= {"int"}:
        return "int64"
    if not kinds:
        return None
    if kinds == {"bool"}:
        return "bool"
    if kinds <= {"int", "float"}:
        return "float64"
    return "string"


def sql_type(values: Iterable[Any]) -> str:
    """
    Pick a SQL column type from sample values: a numeric or boolean type only when every value agrees.

    Every number is ``NUMERIC``, never ``BIGINT``: the sample is only the first batch, so a column whose first
    values happen to be whole (an amount of 5000) must still hold 2500.75 exactly later. ``NUMERIC`` is exact
    for integers and money on PostgreSQL and MySQL, and has NUMERIC affinity on SQLite.
    """
    kinds = kinds_of(values)
    if kinds == {"bool"}:
        return "BOOLEAN"
    if kinds and kinds <= {"int", "float"}:
        return "NUMERIC"
    # Strings (timestamps included), nested objects and lists (JSON text), mixed and all-null columns.
    return "TEXT"
