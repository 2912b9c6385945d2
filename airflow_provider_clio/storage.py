# SPDX-License-Identifier: Apache-2.0
"""Durable writes: one atomic write for local files and object stores, and the local/remote test.

Every file the provider commits (parts, manifests, checkpoints beside the output, the file token store)
goes through :func:`write_atomic` or :func:`upload_atomic`, so a reader sees the old content or the new,
never a partial file, and a crash right after the call cannot bring the old content back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

LOCAL_PROTOCOLS = frozenset({"", "file", "local"})


def is_local(path: ObjectStoragePath) -> bool:
    """Whether ``path`` is on the local filesystem (where a rename is atomic)."""
    return (path.protocol or "") in LOCAL_PROTOCOLS


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make the entries of ``directory`` (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_local(target: str | os.PathLike[str], write: Any) -> None:
    """
    Atomically replace the local file ``target`` with what ``write(handle)`` writes to a binary handle.

    A temporary file in the same folder is written, flushed and fsynced, renamed over ``target`` and the
    folder fsynced, so neither a reader nor a crash can observe a partial or a reverted file.
    """
    target = os.fspath(target)
    folder = os.path.dirname(target) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def write_atomic(path: ObjectStoragePath, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (object stores: one ``put``, atomic by itself)."""
    if is_local(path):
        replace_local(path.path, lambda handle: handle.write(data))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_json_atomic(path: ObjectStoragePath, value: Any) -> None:
    """Write ``value`` as indented, key-sorted JSON with :func:`write_atomic`."""
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=str).encode())


def upload_atomic(local_path: str, target: ObjectStoragePath) -> None:
    """Copy the finished local file ``local_path`` to ``target`` atomically and durably."""
    if is_local(target):

        def copy(handle: Any) -> None:
            with open(local_path, "rb") as src:
                shutil.copyfileobj(src, handle, 1024 * 1024)

        replace_local(target.path, copy)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    # An object becomes visible only once its upload completes.
    target.fs.put_file(local_path, target.path)


__all__ = ["fsync_dir", "is_local", "replace_local", "upload_atomic", "write_atomic", "write_json_atomic"]
