# SPDX-License-Identifier: Apache-2.0
"""Validate and normalise Clio ``fields`` selections before any request is sent.

Clio accepts a comma-separated list of names with one level of nested braces, e.g.
``id,name,client{id,name}``; deeper nesting or an unknown name answers 400. Syntax errors are caught here so
a typo fails the task at once with a clear message instead of costing a request (and a rate-limit slot).
Whether a name exists is only known to the server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from airflow_provider_clio.exceptions import ClioConfigError

__all__ = ["Field", "normalize_fields", "parse_fields", "project", "top_level_names"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Field:
    """
    One top-level item of a ``fields`` selection.

    :param name: The field name.
    :param nested: The names selected inside braces, ``None`` when the item has no braces.
    """

    name: str
    nested: tuple[str, ...] | None = None

    def __str__(self) -> str:
        return self.name if self.nested is None else f"{self.name}{{{','.join(self.nested)}}}"


def parse_fields(fields: str | Sequence[str] | None) -> list[Field]:
    """
    Parse a ``fields`` selection into its top-level items, raising ClioConfigError on bad syntax.

    ``fields`` is a string (``"id,name,client{id,name}"``) or a sequence of items (``["id", "client{id}"]``;
    an item may itself hold several comma-separated names). ``None``, an empty string and an empty sequence
    mean "no selection" (the server's default fields) and give an empty list.
    """
    if fields is None:
        return []
    if isinstance(fields, str):
        text = fields
    elif isinstance(fields, Sequence):
        items = list(fields)
        for item in items:
            if not isinstance(item, str):
                raise ClioConfigError(f"fields: every item must be a string, got {type(item).__name__}")
            if not item.strip():
                raise ClioConfigError("fields: empty item in the field list")
        text = ",".join(items)
    else:
        raise ClioConfigError(f"fields: expected a string or a list of strings, got {type(fields).__name__}")
    if not text.strip():
        return []
    return _Parser(text).parse()


def normalize_fields(fields: str | Sequence[str] | None) -> str | None:
    """Return the canonical ``fields`` query value (no spaces), or ``None`` for no selection."""
    parsed = parse_fields(fields)
    return ",".join(str(field) for field in parsed) if parsed else None


def top_level_names(fields: str | Sequence[str] | None) -> list[str]:
    """Return the top-level field names in order, e.g. ``["id", "name", "client"]``."""
    return [field.name for field in parse_fields(fields)]


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


class _Parser:
    """A small recursive-descent parser; error messages point at the character that is wrong."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> list[Field]:
        result: list[Field] = []
        seen: set[str] = set()
        while True:
            field = self._item()
            if field.name in seen:
                self._fail(f"field {field.name!r} is listed twice")
            seen.add(field.name)
            result.append(field)
            self._skip_spaces()
            if self.pos == len(self.text):
                return result
            char = self.text[self.pos]
            if char == ",":
                self.pos += 1
                continue
            if char == "}":
                self._fail("unbalanced '}'")
            self._fail(f"unexpected {char!r}")

    def _item(self) -> Field:
        name = self._name()
        self._skip_spaces()
        if self.pos < len(self.text) and self.text[self.pos] == "{":
            self.pos += 1
            nested: list[str] = []
            while True:
                inner = self._name()
                if inner in nested:
                    self._fail(f"field {name}{{{inner}}} is listed twice")
                nested.append(inner)
                self._skip_spaces()
                if self.pos == len(self.text):
                    self._fail(f"unbalanced '{{' after {name!r}")
                char = self.text[self.pos]
                self.pos += 1
                if char == "}":
                    return Field(name, tuple(nested))
                if char == "{":
                    self._fail(f"nested selection inside {name!r}: Clio allows one level of braces")
                if char != ",":
                    self._fail(f"unexpected {char!r} inside {name!r}")
        return Field(name)

    def _name(self) -> str:
        self._skip_spaces()
        match = _NAME.match(self.text, self.pos)
        if not match:
            if self.pos == len(self.text) or self.text[self.pos] in ",}":
                self._fail("empty item in the field list")
            self._fail(f"invalid field name starting at {self.text[self.pos :][:20]!r}")
        self.pos = match.end()
        return match.group()

    def _skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _fail(self, reason: str) -> NoReturn:
        raise ClioConfigError(f"fields: {reason} (at character {self.pos + 1} of {self.text!r})")
