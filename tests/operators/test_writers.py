# SPDX-License-Identifier: Apache-2.0
"""Parquet part writing: one schema per run, so pyarrow.dataset reads every part of a run together."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.operators.writers import write_parquet


def _write_run(tmp_path: Path, parts: list[list[dict[str, Any]]], columns: list[str] | None) -> list[str]:
    """Write ``parts`` as consecutive parts of one run, carrying the run's schema like PartWriter does."""
    schema: dict[str, str] = {}
    paths = []
    for index, rows in enumerate(parts):
        source = tmp_path / f"part-{index}.jsonl"
        source.write_text("".join(json.dumps(row) + "\n" for row in rows))
        target = str(tmp_path / f"part-{index:05d}.parquet")
        schema = write_parquet(str(source), target, columns, schema)
        paths.append(target)
    return paths


@pytest.mark.parametrize("columns", [["id", "value", "status", "later", "flag", "client"], None])
def test_parts_of_a_run_share_one_schema(tmp_path: Path, columns: list[str] | None) -> None:
    parts = [
        # Whole numbers only, and columns with no value yet.
        [
            {"id": 1, "value": 5000, "status": None, "later": None, "flag": True, "client": {"id": 7}},
            {"id": 2, "value": 12, "status": None, "later": None, "flag": None, "client": None},
        ],
        # Amounts with cents, and values in the columns that were all null.
        [{"id": 3, "value": 2500.75, "status": "Open", "later": 42, "flag": False, "client": {"id": 8}}],
        # All null again.
        [{"id": 4, "value": None, "status": None, "later": None, "flag": None, "client": None}],
    ]
    paths = _write_run(tmp_path, parts, columns)
    schemas = [pq.read_schema(path) for path in paths]
    assert all(schema == schemas[0] for schema in schemas)
    assert {f.name: str(f.type) for f in schemas[0]} == {
        "id": "int64",
        "value": "double",
        "status": "string",
        "later": "string",  # no value in the first part: text, which holds any later value
        "flag": "bool",
        "client": "string",
    }
    rows = ds.dataset(paths, format="parquet").to_table().to_pylist()
    assert rows == [
        {"id": 1, "value": 5000.0, "status": None, "later": None, "flag": True, "client": '{"id":7}'},
        {"id": 2, "value": 12.0, "status": None, "later": None, "flag": None, "client": None},
        {"id": 3, "value": 2500.75, "status": "Open", "later": "42", "flag": False, "client": '{"id":8}'},
        {"id": 4, "value": None, "status": None, "later": None, "flag": None, "client": None},
    ]


@pytest.mark.parametrize(
    ("later", "message"),
    [
        ({"id": 2, "value": "n/a"}, r"'value' was written as float64 .* holds str values"),
        ({"id": 2, "value": True}, r"'value' was written as float64 .* holds bool values"),
        ({"id": 2, "value": 1, "extra": 1}, r"'extra' first appears after the first part.*Pass `fields`"),
    ],
    ids=["text-after-numbers", "bool-after-numbers", "new-column"],
)
def test_a_part_that_cannot_keep_the_run_schema_fails_clearly(
    tmp_path: Path, later: dict[str, Any], message: str
) -> None:
    with pytest.raises(ClioConfigError, match=message):
        _write_run(tmp_path, [[{"id": 1, "value": 5}], [later]], None)
