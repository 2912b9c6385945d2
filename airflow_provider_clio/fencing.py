# SPDX-License-Identifier: Apache-2.0
"""Fence the commits of an extraction with the try number, so a stale attempt cannot commit over a newer one.

Airflow starts try N+1 when try N timed out or its worker stopped heartbeating, but a timed-out or zombie
attempt may keep running. Exactly-once output assumes only one attempt commits, so the checkpoint records
the try that owns it (``owner``):

- A try claims the checkpoint before its first request: it writes its try number into the saved checkpoint
  (or, with none saved, a claim record ``{"version": 2, "owner": N}``) — unless a newer try already owns it.
- Before every commit (a part upload or SQL batch, the checkpoint save after it, the manifest write, the
  final clear; for SQL again inside the batch's transaction, right before ``COMMIT``) the attempt reads the
  stored owner and raises :class:`~airflow_provider_clio.exceptions.ClioAttemptSupersededError` when a newer
  try owns it, or when the checkpoint it claimed is gone (the newer try finished and cleared it).

Limits, stated plainly: the stores have no compare-and-set, so the check and the write are two steps. An
attempt that passed its check a moment before the newer try claimed can still complete that one commit (one
part upload, SQL batch or manifest write — never a second one); the newer try then rewrites what it owns
(parts and manifests are rewritten whole, SQL rows are upserts on ``id``). Outside an Airflow task (no
``ti`` in the context) there is no try number and nothing is fenced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_provider_clio.exceptions import ClioAttemptSupersededError

__all__ = ["attempt_of", "claim_record", "is_claim", "owner_of", "refuse_if_superseded"]


def attempt_of(context: Mapping[str, Any]) -> int | None:
    """Return the running try's number (``context["ti"].try_number``), ``None`` outside a task."""
    number = getattr(context.get("ti"), "try_number", None)
    return number if isinstance(number, int) and not isinstance(number, bool) and number > 0 else None


def owner_of(raw: Any) -> int | None:
    """Return the try number a saved checkpoint (or claim record) names as its owner, if any."""
    owner = raw.get("owner") if isinstance(raw, Mapping) else None
    return owner if isinstance(owner, int) and not isinstance(owner, bool) else None


def claim_record(owner: int, version: int) -> dict[str, Any]:
    """Return what a try saves to own a checkpoint store that holds no resumable checkpoint."""
    return {"version": version, "owner": owner}


def is_claim(raw: Any) -> bool:
    """Tell whether ``raw`` is a claim record (an owner and nothing to resume)."""
    return isinstance(raw, Mapping) and owner_of(raw) is not None and "token" not in raw


def refuse_if_superseded(raw: Any, owner: int, claimed: bool, where: str) -> None:
    """
    Raise when the stored value shows that a newer try owns the checkpoint.

    :param raw: The value just read from the checkpoint store.
    :param owner: This attempt's try number.
    :param claimed: Whether this attempt has claimed the store (then a missing value means it was taken over
        and cleared: only the owner clears, after its final commit).
    :param where: The store's description, for the message.
    """
    stored = owner_of(raw)
    if stored is not None and stored > owner:
        reason = f"try {stored} owns the checkpoint in {where}"
    elif raw is None and claimed:
        reason = f"the checkpoint try {owner} claimed in {where} is gone (a newer try finished, clearing it)"
    else:
        return
    raise ClioAttemptSupersededError(
        f"Try {owner} of this task instance was superseded: {reason}. This attempt stops without "
        "committing; the newer try carries the extraction on (nothing to fix, do not clear the task for it)"
    )
