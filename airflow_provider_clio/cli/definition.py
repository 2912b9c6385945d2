# SPDX-License-Identifier: Apache-2.0
"""Declare the ``airflow clio`` command group; Airflow's CLI parser loads it through provider info ``cli``.

Only argument definitions live here. The implementations in :mod:`airflow_provider_clio.cli.commands` are
imported when a command runs, so ``airflow --help`` does not pay for the hook and its dependencies.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand, lazy_load_command

from airflow_provider_clio.regions import REGIONS

if TYPE_CHECKING:
    from airflow.cli.cli_config import CLICommand

__all__ = [
    "CLIO_COMMANDS",
    "DEFAULT_REDIRECT_URI",
    "get_clio_cli_commands",
    "positive_number",
    "regions_argument",
    "slots_argument",
]

DEFAULT_REDIRECT_URI = "http://localhost:8910/callback"
"""The redirect URI the docs tell users to register with their Clio application (``auth`` listens there)."""


def regions_argument(value: str) -> list[str]:
    """Parse ``--region``: ``all`` or a comma list of ``us``, ``ca``, ``eu``, ``au``."""
    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    if names == ["all"]:
        return list(REGIONS)
    unknown = [name for name in names if name not in REGIONS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected 'all' or a comma list of {', '.join(REGIONS)}, got {value!r}"
        )
    return list(dict.fromkeys(names))


def slots_argument(value: str) -> int:
    """Parse ``--slots``: a positive integer (a pool of 0 slots would stop every Clio task)."""
    try:
        slots = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if slots < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return slots


def positive_number(value: str) -> float:
    """Parse a positive, finite number (``--limit``, ``--timeout``)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}") from None
    if not 0 < number < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


ARG_CONN_ID = Arg(
    ("--conn-id",), default="clio_default", help="The Clio connection id (default: clio_default)."
)
ARG_POOLS_CONN_ID = Arg(
    ("--conn-id",),
    help=(
        "Size and name the pool from this connection: its pool, region and requests_per_slot "
        "(default: the four region pools at requests_per_slot 1)."
    ),
)
ARG_REDIRECT_URI = Arg(
    ("--redirect-uri",),
    default=DEFAULT_REDIRECT_URI,
    help=(
        "Redirect URI registered with the Clio application; must match exactly "
        f"(default: {DEFAULT_REDIRECT_URI}, which this command listens on)."
    ),
)
ARG_CODE = Arg(
    ("--code",),
    help=(
        "The authorization code Clio redirected back with (or the whole redirect URL). "
        "Prompted for on stdin when omitted."
    ),
)
ARG_SCOPE = Arg(
    ("--scope",),
    help="Scopes to request, space- or comma-separated (default: the application's permissions).",
)
ARG_SLOTS = Arg(
    ("--slots",),
    type=slots_argument,
    help="Slots per pool, as given (default: floor(limit / requests_per_slot)).",
)
ARG_LIMIT = Arg(
    ("--limit",),
    type=positive_number,
    default=3.0,
    help="The application's rate limit per region in requests per second (default: 3, Clio's).",
)
ARG_LISTEN = Arg(
    ("--listen",),
    action=argparse.BooleanOptionalAction,
    default=True,
    help=(
        "Receive the code on the redirect URI when it is http://127.0.0.1:PORT/..., "
        "http://localhost:PORT/... or http://[::1]:PORT/... (default: on); a paste always works too."
    ),
)
ARG_TIMEOUT = Arg(
    ("--timeout",),
    type=positive_number,
    default=300.0,
    help="Seconds to wait for the redirect or the paste (default: 300).",
)
ARG_PRINT_ONLY = Arg(
    ("--print-only",),
    action="store_true",
    help=(
        "Local mode for managed Airflow: print the new token pair as JSON on stdout (the connection "
        "extra and the token Variable to set in the deployment) instead of storing it here."
    ),
)
ARG_TOKEN_FILE = Arg(
    ("--token-file",),
    metavar="PATH",
    help="Local mode for managed Airflow: write that JSON to PATH (mode 0600) instead of storing it here.",
)
ARG_REGION = Arg(
    ("--region",),
    type=regions_argument,
    metavar="REGIONS",
    help="'all' (default) or a comma list of us, ca, eu, au.",
)
ARG_INCLUDE_DEFERRED = Arg(
    ("--include-deferred",),
    action=argparse.BooleanOptionalAction,
    default=True,
    help="Count deferred tasks against the pool so deferred sensors keep their slot (default: on).",
)

CLIO_COMMANDS = (
    ActionCommand(
        name="auth",
        help="Authorize the Clio application once and store the OAuth tokens",
        description=(
            "Print the authorize URL of the connection's region, receive the code Clio redirects back with "
            "(on the loopback redirect URI, or pasted), exchange it for tokens and store them in the token "
            "store (Airflow Variable clio_oauth_tokens__<conn_id>); never prints a secret. With "
            "--print-only or --token-file (managed Airflow) the pair is handed over instead of stored."
        ),
        func=lazy_load_command("airflow_provider_clio.cli.commands.auth"),
        args=(
            ARG_CONN_ID,
            ARG_REDIRECT_URI,
            ARG_CODE,
            ARG_SCOPE,
            ARG_LISTEN,
            ARG_TIMEOUT,
            ARG_PRINT_ONLY,
            ARG_TOKEN_FILE,
        ),
    ),
    ActionCommand(
        name="pools",
        help="Create or update the per-region Clio pools",
        description=(
            "Create or update the pools clio_us, clio_ca, clio_eu and clio_au (or, with --conn-id, the "
            "connection's pool) with floor(limit / requests_per_slot) slots, so the pool's tasks together "
            "stay within the application's rate limit."
        ),
        func=lazy_load_command("airflow_provider_clio.cli.commands.pools"),
        args=(ARG_POOLS_CONN_ID, ARG_LIMIT, ARG_SLOTS, ARG_REGION, ARG_INCLUDE_DEFERRED),
    ),
    ActionCommand(
        name="check",
        help="Test a Clio connection, its token store and its pool's rate budget",
        description=(
            "Make one authenticated API call, write and read back the token store, and check that the "
            "pool exists with slots x requests_per_slot within the limit. Exits 1 on any failure."
        ),
        func=lazy_load_command("airflow_provider_clio.cli.commands.check"),
        args=(ARG_CONN_ID, ARG_LIMIT),
    ),
)


def get_clio_cli_commands() -> list[CLICommand]:
    """Return the ``airflow clio`` command group (provider info ``cli`` entry)."""
    return [
        GroupCommand(
            name="clio",
            help="Clio provider: authorize the application, create the pools, check a connection",
            subcommands=CLIO_COMMANDS,
        )
    ]
