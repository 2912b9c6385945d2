# SPDX-License-Identifier: Apache-2.0
"""Extract one Clio endpoint into JSONL or Parquet part files under any ``ObjectStoragePath`` destination.

Layout of a destination after a successful run::

    <destination>/_manifest.json                 the commit point: lists the files of the current run
    <destination>/run=<token>/part-00000.jsonl   part files of whole pages, about records_per_file records

Readers take the manifest, never a directory listing (:func:`read_extract` does). A rerun of the same
interval writes a new ``run=`` folder, replaces the manifest, then deletes the one folder the replaced
manifest referenced (and the folders of this task's own abandoned tries), so the destination never holds the
same interval twice while a concurrent run's in-progress ``run=`` folder is left alone.

A destination belongs to one extraction (endpoint, fields, query parameters, interval). A run refuses, before
any request and again just before committing, to replace a manifest committed for another extraction: with a
static destination the next interval would otherwise delete the previous interval's data. Use one destination
per interval, or pass ``overwrite=True`` when replacing is intended.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, ObjectStoragePath

from airflow_provider_clio.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    Checkpointer,
    FileCheckpointStore,
    store_for_context,
)
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.extraction import Extraction, ExtractionPlan, ExtractionResult
from airflow_provider_clio.fencing import attempt_of
from airflow_provider_clio.fields import top_level_names
from airflow_provider_clio.modes import SINCE_LAST_SUCCESS, effective_mode
from airflow_provider_clio.operators.base import ClioBaseOperator
from airflow_provider_clio.operators.writers import FILE_FORMATS, PartWriter
from airflow_provider_clio.storage import write_json_atomic

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_clio.hooks.clio import ClioHook

__all__ = ["MANIFEST_FILE", "ClioExtractOperator", "read_extract", "remove_superseded_runs"]

MANIFEST_FILE = "_manifest.json"
MANIFEST_VERSION = 1


class ClioExtractOperator(ClioBaseOperator):
    """
    Extract the records of one Clio endpoint into part files under ``destination``; return a small summary.

    Records stream page by page into local part files that are uploaded as they fill up, so memory does not
    grow with the number of records. The run is committed by writing ``<destination>/_manifest.json``; the
    ``run=*`` folder of the manifest it replaced is deleted afterwards. A destination whose manifest belongs
    to another extraction (endpoint, fields, query, interval) is refused unless ``overwrite=True``. A failed
    try resumes from its last uploaded part on retry.

    The returned XCom (never the records) holds ``records``, ``pages``, ``files``, ``rate_limited`` (429s
    seen), ``seconds``, ``manifest``, ``run``, ``interval``, ``mode`` and ``resumed``.

    .. code-block:: python

        ClioExtractOperator(
            task_id="export_contacts",
            endpoint="grow/contacts",
            fields=["id", "name", "updated_at"],
            mode="since_last_success",
            destination="s3://lake/clio/contacts/{{ data_interval_start | ts_nodash }}",
        )

    :param destination: Folder URL understood by ``ObjectStoragePath`` (``file://``, ``s3://``, ``gs://``,
        ...; templated). Use one folder per interval.
    :param file_format: ``jsonl`` (default) or ``parquet`` (needs the ``parquet`` extra; nested values are
        stored as JSON strings).
    :param records_per_file: Target records per part file (default 5000). Parts hold whole pages: a part is
        closed before a page that would take it past this number.
    :param overwrite: Replace a manifest committed at ``destination`` for a different extraction (another
        endpoint, field selection, query or interval). Default ``False``: such a run fails with
        ``ClioConfigError`` before any request, because the destination would lose the other interval's data.
    :param endpoint: List endpoint, e.g. ``grow/contacts`` (templated).
    :param fields: Fields to select, list or string form (templated).
    :param kwargs: ``query_params``, ``mode``, ``updated_since``, ``updated_until``, ``overlap``,
        ``clio_conn_id``, ``region``, ``token_store``, ``request_retry`` as documented on
        :class:`ClioBaseOperator`, and ``BaseOperator``'s.
    """

    template_fields: Sequence[str] = (*ClioBaseOperator.template_fields, "destination")

    def __init__(
        self,
        *,
        destination: str,
        file_format: str = "jsonl",
        records_per_file: int = 5000,
        overwrite: bool = False,
        **kwargs: Any,
    ) -> None:
        if file_format not in FILE_FORMATS:
            raise ClioConfigError(f"file_format must be one of {sorted(FILE_FORMATS)}, got {file_format!r}")
        if records_per_file < 1:
            raise ClioConfigError(f"records_per_file must be at least 1, got {records_per_file}")
        static = str(destination or "").strip().rstrip("/")
        if "outlets" not in kwargs and static and "{{" not in static:
            kwargs["outlets"] = [Asset(static if "://" in static else f"file://{static}")]
        super().__init__(**kwargs)
        self.destination = destination
        self.file_format = file_format
        self.records_per_file = records_per_file
        self.overwrite = overwrite

    def _destination(self) -> ObjectStoragePath:
        text = str(self.destination or "").strip().rstrip("/")
        if not text:
            raise ClioConfigError("destination must be a folder URL such as file:///data/clio/contacts")
        return ObjectStoragePath(text)

    def execute(self, context: Context) -> dict[str, Any]:
        """Extract, upload the parts, commit the manifest, remove superseded runs; return the summary."""
        started = datetime.now(timezone.utc)
        plan = self.build_plan(context)
        destination = self._destination()
        manifest_path = destination / MANIFEST_FILE
        identity = _identity(plan.endpoint, plan.fields, plan.params, plan.interval.to_dict(), self._mode())
        self._check_owner(manifest_path, identity)
        hook = self.get_hook()
        key = plan.key(api=hook.base_url, target=str(destination), file_format=self.file_format)
        checkpointer = Checkpointer(
            store_for_context(context, lambda: FileCheckpointStore(destination / CHECKPOINT_FILE)),
            key,
            owner=attempt_of(context),
        )
        self.log.info(
            "Extracting %s (fields=%s, interval=%s) into %s",
            plan.endpoint,
            plan.fields or "<default>",
            plan.interval.to_dict(),
            destination,
        )
        result, writer = self._extract(hook, plan, checkpointer, destination)
        state = result.state
        files = writer.files(state.token)
        # Again just before the commit: another run may have committed here while this one was extracting.
        replaced = self._check_owner(manifest_path, identity)
        checkpointer.check()  # fence: a newer try of this task instance owns the destination now
        # The commit point: before this write readers see the previous run (or nothing), after it this run.
        write_json_atomic(manifest_path, self._manifest(context, plan, state, writer.schema, files))
        self.log.info("Committed %s: %d record(s) in %d file(s)", manifest_path, state.records, len(files))
        superseded = {f"run={token}" for token in checkpointer.abandoned}
        if replaced is not None and replaced.get("run"):
            superseded.add(f"run={replaced['run']}")
        superseded.discard(f"run={state.token}")
        removed = remove_superseded_runs(destination, superseded)
        if removed:
            self.log.info("Removed superseded run folder(s): %s", ", ".join(removed))
        checkpointer.clear()
        summary = {
            "records": state.records,
            "pages": state.pages,
            "files": len(files),
            "rate_limited": state.rate_limited,
            "seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 3),
            "manifest": str(manifest_path),
            "run": state.token,
            "interval": plan.interval.to_dict(),
            "mode": self._mode(),
            "resumed": result.resumed,
            "resumed_parts": result.resumed_units,
        }
        self._summary = summary
        return summary

    def _extract(
        self, hook: ClioHook, plan: ExtractionPlan, checkpointer: Checkpointer, destination: ObjectStoragePath
    ) -> tuple[ExtractionResult, PartWriter]:
        """Run the extraction into part files, through a local working folder removed afterwards."""
        columns = top_level_names(plan.fields) or None
        with tempfile.TemporaryDirectory(prefix="clio-extract-") as workdir:
            writer = PartWriter(destination, self.file_format, workdir, columns)
            try:
                result = Extraction(
                    hook=hook,
                    plan=plan,
                    checkpointer=checkpointer,
                    sink=writer,
                    unit_size=self.records_per_file,
                ).run()
            finally:
                writer.close()
        return result, writer

    def _manifest(
        self,
        context: Context,
        plan: ExtractionPlan,
        state: Checkpoint,
        schema: dict[str, str],
        files: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """Return the manifest committing run ``state.token``."""
        return {
            "version": MANIFEST_VERSION,
            "run": state.token,
            "endpoint": plan.endpoint,
            "fields": plan.fields,
            "params": plan.params,
            "interval": plan.interval.to_dict(),
            "mode": self._mode(),
            "format": self.file_format,
            **({"schema": schema} if self.file_format == "parquet" else {}),
            "files": files,
            "records": state.records,
            "pages": state.pages,
            "committed_at": datetime.now(timezone.utc).isoformat(),
            "task": _task_identity(context),
        }

    def _mode(self) -> str:
        """The effective mode, recorded in the manifest."""
        return effective_mode(self.mode or None, self.updated_since, self.updated_until)

    def _check_owner(
        self, manifest_path: ObjectStoragePath, identity: dict[str, Any]
    ) -> dict[str, Any] | None:
        """
        Return the manifest committed at the destination (``None`` if none); fail if another extraction's.

        Replacing it would delete that extraction's data (e.g. another interval's, at a static destination).
        """
        committed = _load_manifest(manifest_path)
        if committed is None:
            return None
        theirs = _identity(
            committed.get("endpoint"),
            committed.get("fields"),
            committed.get("params"),
            committed.get("interval"),
            committed.get("mode"),
        )
        if theirs != identity and not self.overwrite:
            differing = ", ".join(
                f"{name} {theirs[name]!r} (this run: {identity[name]!r})"
                for name in identity
                if theirs[name] != identity[name]
            )
            raise ClioConfigError(
                f"{manifest_path} holds a committed extraction with a different {differing}. Committing here "
                "would delete its data: use one destination per interval, e.g. "
                "'.../{{ data_interval_start | ts_nodash }}', or pass overwrite=True to replace it"
            )
        return committed

    def _ol_outputs(self, summary: Mapping[str, Any] | None) -> list[Any]:
        from airflow.providers.common.compat.openlineage.facet import (
            OutputDataset,
            OutputStatisticsOutputDatasetFacet,
        )

        text = str(self.destination or "").rstrip("/")
        if not text or "{{" in text:
            return []
        path = ObjectStoragePath(text)
        protocol = path.protocol or "file"
        namespace = f"{protocol}://{path.bucket}" if path.bucket else protocol
        name = path.path if protocol in ("file", "local") else path.key
        facets: dict[str, Any] = {}
        if summary:
            facets["outputStatistics"] = OutputStatisticsOutputDatasetFacet(
                rowCount=summary.get("records"), fileCount=summary.get("files")
            )
        return [OutputDataset(namespace=namespace, name=name, outputFacets=facets)]


def read_extract(destination: str | ObjectStoragePath) -> Iterator[dict[str, Any]]:
    """
    Yield the records of the run committed at ``destination``, reading exactly the files its manifest lists.

    This is how a downstream task should consume an extraction: it never sees a half-written run, nor the
    folder of a superseded one that has not been deleted yet. Records stream part by part (constant memory).
    Parquet parts yield nested values as the JSON strings they are stored as.

    :param destination: The operator's rendered ``destination`` URL, or an ``ObjectStoragePath``.
    :raise FileNotFoundError: when nothing has been committed at ``destination``.
    :raise ClioConfigError: when the manifest lists a file outside ``destination`` (it was tampered with).
    """
    root = destination if isinstance(destination, ObjectStoragePath) else ObjectStoragePath(destination)
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.exists():
        raise FileNotFoundError(f"no committed Clio extraction at {root}: {MANIFEST_FILE} is missing")
    manifest = json.loads(manifest_path.read_text())
    # Check every path before yielding a record: a consumer must not half-read a tampered manifest.
    parts = [root / _part_path(manifest_path, entry) for entry in manifest["files"]]
    for part in parts:
        if manifest.get("format") == "parquet":
            import pyarrow.parquet as pq

            with part.open("rb") as handle:
                for batch in pq.ParquetFile(handle).iter_batches():
                    yield from batch.to_pylist()
        else:
            with part.open("r", encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        yield json.loads(line)


_SAFE_PART = re.compile(r"run=[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


def _part_path(manifest_path: ObjectStoragePath, entry: Any) -> str:
    """Return a manifest entry's path if it names a file in a ``run=`` folder of the destination, or raise."""
    path = entry.get("path") if isinstance(entry, Mapping) else None
    # Only "run=<token>/<file>" of plain characters: no "..", no absolute path, no URL, no backslash.
    if not isinstance(path, str) or not _SAFE_PART.fullmatch(path) or {".", ".."} & set(path.split("/")):
        raise ClioConfigError(
            f"{manifest_path} lists {path!r}, which is not a part file inside the destination; refusing to "
            "read it (the manifest was not written by ClioExtractOperator)"
        )
    return path


def remove_superseded_runs(destination: ObjectStoragePath, runs: Iterable[str]) -> list[str]:
    """
    Delete the ``run=*`` folders named in ``runs`` and stray temporary manifests; return the names removed.

    Only folders known to be superseded are deleted: another ``run=*`` folder may be a concurrent run's parts.
    """
    wanted = set(runs)
    removed: list[str] = []
    try:
        children = list(destination.iterdir())
    except FileNotFoundError:
        return removed
    for child in children:
        name = child.name
        stale_run = name.startswith("run=") and name in wanted
        # Left by a crash mid-write: storage.write_atomic's temporary name, or the older ``.tmp-`` one.
        stale_tmp = name.startswith(f"{MANIFEST_FILE}.tmp") or (
            name.startswith(f".{MANIFEST_FILE}.") and name.endswith(".tmp")
        )
        if not (stale_run or stale_tmp):
            continue
        # A leftover folder only costs space; never fail a committed run over it.
        with contextlib.suppress(FileNotFoundError, OSError):
            child.fs.rm(child.path, recursive=stale_run)
            removed.append(name)
    return removed


def _load_manifest(path: ObjectStoragePath) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise ClioConfigError(
            f"{path} is not a readable manifest; remove it or choose another destination"
        ) from None
    return value if isinstance(value, dict) else None


def _identity(endpoint: Any, fields: Any, params: Any, interval: Any, mode: Any = None) -> dict[str, Any]:
    """What a destination's manifest must match for a run to replace it."""
    if mode == SINCE_LAST_SUCCESS and isinstance(interval, Mapping):
        # A rerun of the same run ends at the same data_interval_end, but its lower bound moves when an
        # earlier interval succeeded meanwhile (e.g. a backfill): still the same run's output to replace.
        interval = {"mode": mode, "until": interval.get("until")}
    # updated_since follows from the interval (sent a little early since 2026-11): compare the interval only,
    # so manifests committed before that change still match their reruns.
    query = {k: v for k, v in (params or {}).items() if k != "updated_since"}
    return {"endpoint": endpoint, "fields": fields, "params": query, "interval": interval}


def _task_identity(context: Mapping[str, Any]) -> dict[str, Any]:
    ti = context.get("ti")
    if ti is None:
        return {}
    return {
        "dag_id": getattr(ti, "dag_id", None),
        "run_id": getattr(ti, "run_id", None),
        "task_id": getattr(ti, "task_id", None),
        "map_index": getattr(ti, "map_index", -1),
        "try_number": getattr(ti, "try_number", None),
    }
