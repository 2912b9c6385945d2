# SPDX-License-Identifier: Apache-2.0
"""Local mode of ``airflow clio auth`` for managed Airflow (MWAA, Astronomer, Cloud Composer).

There the CLI cannot reach the deployment's metadata database, so the token pair is exchanged on a local
machine and handed over: written to a file only its owner can read (``--token-file``), or printed to stdout
when explicitly asked (``--print-only``). Nothing is logged, and nothing is written to the local Airflow.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TextIO

from airflow_provider_clio.storage import replace_local

if TYPE_CHECKING:
    from airflow_provider_clio.auth import TokenSet

__all__ = ["TOKEN_EXTRAS", "handover_document", "instructions", "reserve_stdout", "write_token_file"]

TOKEN_EXTRAS = ("refresh_token", "access_token", "expires_at")
"""The connection extras that hold tokens (replaced by the handed-over pair)."""


def reserve_stdout() -> TextIO:
    """
    Keep stdout for the JSON alone: return a stream on the real stdout and send file descriptor 1 to stderr.

    Airflow's log handlers write to stdout through stream objects captured at start-up, so redirecting
    ``sys.stdout`` would not stop an info line from landing in the middle of the JSON; moving the file
    descriptor does.
    """
    sys.stdout.flush()
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return json_out


def handover_document(
    conn_id: str, extra: dict[str, Any], tokens: TokenSet, variable_key: str
) -> dict[str, Any]:
    """
    Return what the deployment needs: the connection extra with the new pair, and the token Variable.

    :param conn_id: The connection id the tokens belong to.
    :param extra: The connection's current extra (its token entries are replaced).
    :param tokens: The freshly exchanged pair.
    :param variable_key: The token store Variable tasks read first.
    """
    new_extra = {key: value for key, value in extra.items() if key not in TOKEN_EXTRAS}
    new_extra["refresh_token"] = tokens.refresh_token
    if tokens.access_token:
        new_extra["access_token"] = tokens.access_token
    if tokens.expires_at is not None:
        moment = datetime.fromtimestamp(tokens.expires_at, tz=timezone.utc)
        new_extra["expires_at"] = moment.isoformat(timespec="seconds")
    return {
        "conn_id": conn_id,
        "connection_extra": new_extra,
        "token_variable": {"key": variable_key, "value": tokens.to_json()},
    }


def write_token_file(path: str, document: dict[str, Any]) -> None:
    """Write ``document`` as JSON to ``path``, readable by its owner only (mode 0600), atomically."""
    data = (json.dumps(document, indent=2) + "\n").encode()
    # replace_local writes through mkstemp, which creates the file 0600 before any byte is written.
    replace_local(path, lambda handle: handle.write(data))
    os.chmod(path, 0o600)


def instructions(conn_id: str, variable_key: str, source: str) -> str:
    """Return how to hand ``source`` (the printed JSON or the file) to the deployment; holds no secret."""
    return (
        f"Hand the new token pair of connection {conn_id!r} to the deployment ({source}); nothing was "
        "written to this machine's Airflow:\n"
        f'  - set the connection\'s extra to its "connection_extra" (UI: Admin > Connections > {conn_id} > '
        'Extra; a secrets backend: the "extra" of the connection\'s JSON);\n'
        f"  - if the deployment already has the Variable {variable_key!r} (an earlier authorization), tasks "
        'read it first: set it to "token_variable" > "value" (UI: Admin > Variables), or delete it.\n'
        "  Keep that Variable in the metadata database, not in a secrets backend: tasks rotate the pair and "
        "must read back what they write.\n"
        "  The refresh token is single-use and rotates: hand it to this one deployment only, then delete "
        "the file or the output."
    )
