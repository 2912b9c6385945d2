# SPDX-License-Identifier: Apache-2.0
"""storage.py: one atomic, durable write for local files and the local/remote test."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_clio.storage import (
    is_local,
    replace_local,
    upload_atomic,
    write_atomic,
    write_json_atomic,
)


def test_write_json_atomic_replaces_content(tmp_path: Path) -> None:
    path = ObjectStoragePath(f"file://{tmp_path}/deep/er/_manifest.json")
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads((tmp_path / "deep/er/_manifest.json").read_text()) == {"a": 2}
    # Only the final file: the temporary name was renamed over it.
    assert [p.name for p in (tmp_path / "deep/er").iterdir()] == ["_manifest.json"]


def test_a_failure_mid_write_leaves_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old content")

    def half_then_fail(handle: Any) -> None:
        handle.write(b"new con")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_local(target, half_then_fail)
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left behind


def test_the_file_and_its_folder_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A rename is durable only once the folder is synced: a crash must not bring the old content back.
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_atomic(ObjectStoragePath(f"file://{tmp_path}/out/part.jsonl"), b'{"id": 1}\n')
    assert synced == ["file", "dir"]
    assert (tmp_path / "out/part.jsonl").read_bytes() == b'{"id": 1}\n'


def test_upload_atomic_copies_a_local_file(tmp_path: Path) -> None:
    source = tmp_path / "local.parquet"
    source.write_bytes(b"x" * (3 * 1024 * 1024 + 5))  # more than one copy buffer
    target = ObjectStoragePath(f"file://{tmp_path}/dest/run=t/part-00000.parquet")
    upload_atomic(str(source), target)
    assert (tmp_path / "dest/run=t/part-00000.parquet").read_bytes() == source.read_bytes()
    assert [p.name for p in (tmp_path / "dest/run=t").iterdir()] == ["part-00000.parquet"]


@pytest.mark.parametrize(
    ("url", "local"),
    [("file:///data/x", True), ("/data/x", True), ("s3://bucket/x", False), ("memory://x", False)],
)
def test_is_local(url: str, local: bool) -> None:
    assert is_local(ObjectStoragePath(url)) is local
