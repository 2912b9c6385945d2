# SPDX-License-Identifier: Apache-2.0
"""What every ``airflow clio`` command needs first: the server process context and a validated hook.

In a plain CLI process the Task SDK looks connections (and Variables) up in environment variables and
secrets backends only, so a connection created with ``airflow connections add`` or in the UI — stored in
the metadata database — stays invisible. ``airflow connections test`` declares the process a server first
(``_AIRFLOW_PROCESS_CONTEXT=server``), which puts the metastore into the SDK's search path; so do these
commands. This module is also the one place the CLI reaches into the provider's internals.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from airflow_provider_clio.pools import pool_name_for

if TYPE_CHECKING:
    from airflow_provider_clio.auth import TokenStore
    from airflow_provider_clio.hooks.clio import ClioHook

__all__ = ["connection_extra", "open_hook", "pool_name_for", "server_context"]


def server_context() -> None:
    """Let the SDK's connection and Variable lookups search the metadata database, as the server does."""
    # Same switch as airflow/cli/commands/connection_command.py (connections_test) in Airflow 3.3.
    os.environ["_AIRFLOW_PROCESS_CONTEXT"] = "server"
    # The metastore's Connection masks every extra value, and warns once about short ones such as the
    # region "us": noise on the first line a newcomer reads, and nothing the command can act on.
    for masker in ("airflow._shared.secrets_masker", "airflow.sdk._shared.secrets_masker"):
        logging.getLogger(f"{masker}.secrets_masker").setLevel(logging.ERROR)


def open_hook(conn_id: str, store: TokenStore | None = None) -> ClioHook:
    """Return a hook on ``conn_id`` whose connection is read and validated now; exit with a reason if not."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    from airflow_provider_clio.exceptions import ClioError
    from airflow_provider_clio.hooks.clio import ClioHook

    server_context()
    hook = ClioHook(conn_id, pool_slots=1, token_store=store)
    try:
        hook.config  # noqa: B018  # validate the connection now, with an error that names the field
    except AirflowNotFoundException:
        raise SystemExit(
            f"error: connection {conn_id!r} is not defined (looked in the metadata database, AIRFLOW_CONN_* "
            "variables and secrets backends). Create it with conn type 'clio', the application's client id "
            "as login and its secret as password, or pass --conn-id."
        ) from None
    except ClioError as exc:
        raise SystemExit(f"error: {exc}") from None
    return hook


def connection_extra(hook: ClioHook) -> dict[str, Any]:
    """Return the hook's connection extra as a dict (already validated by :func:`open_hook`)."""
    return dict(hook.get_connection(hook.clio_conn_id).extra_dejson)
