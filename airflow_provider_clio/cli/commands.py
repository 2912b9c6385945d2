# SPDX-License-Identifier: Apache-2.0
"""Implement ``airflow clio auth|pools|check``; imported only when one of them runs.

None of these commands prints a token, a code or the client secret, except ``auth --print-only``, which
prints the new token pair to stdout because it was asked to. Each runs in the server process context
(:func:`airflow_provider_clio.cli.context.server_context`), so connections and Variables in the metadata
database are found like those in ``AIRFLOW_CONN_*`` variables and secrets backends.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TextIO

from airflow.utils import cli as cli_utils
from airflow.utils.providers_configuration_loader import providers_configuration_loaded

from airflow_provider_clio.cli.authorize import CodeReceiver, authorize_url, code_from
from airflow_provider_clio.cli.checks import (
    budget_problem,
    read_pool,
    share_problem,
    slots_for,
    token_store_problem,
)
from airflow_provider_clio.cli.context import connection_extra, open_hook, pool_name_for, server_context
from airflow_provider_clio.cli.handover import (
    handover_document,
    instructions,
    reserve_stdout,
    write_token_file,
)
from airflow_provider_clio.token_budget import PEAK_LIMIT

if TYPE_CHECKING:
    from airflow_provider_clio.auth import TokenSet
    from airflow_provider_clio.connection import ClioConfig

__all__ = ["POOL_DESCRIPTION", "auth", "check", "pools"]

POOL_DESCRIPTION = (
    "Clio {region} API (airflow-provider-clio): {slots} slots x {per_slot:g} req/s per slot within the "
    "application's limit of {limit:g} req/s."
)
SHARE_POOL_DESCRIPTION = (
    "Clio {api} {region}, one access token (airflow-provider-clio): a task holding k of the {slots} slots "
    "paces at k/{slots} of the token's rate-limit budget, as its X-RateLimit headers announce it."
)


@providers_configuration_loaded
def auth(args: argparse.Namespace) -> None:
    """Authorize the application and store (or hand over) the token pair (``airflow clio auth``)."""
    from airflow_provider_clio.auth import MemoryTokenStore, VariableTokenStore
    from airflow_provider_clio.exceptions import ClioError

    if args.print_only and args.token_file:
        raise SystemExit("error: --print-only and --token-file exclude each other: pick where the pair goes")
    local = bool(args.print_only or args.token_file)
    # In local mode the pair goes to the deployment, never into this machine's Airflow.
    store = MemoryTokenStore() if local else VariableTokenStore()
    # --print-only keeps stdout for the JSON alone: everything else (logs included) goes to stderr.
    json_out = reserve_stdout() if args.print_only else sys.stdout
    say = sys.stderr if args.print_only else sys.stdout
    hook = open_hook(args.conn_id, store)
    config = hook.config
    if args.scope and not config.api.authorize_scope:
        hook.close()
        raise SystemExit(
            f"error: --scope does not apply to the {config.api.name} API: its application's permissions are "
            "set when the application is registered; drop --scope"
        )
    state = secrets.token_urlsafe(16)
    url = authorize_url(
        config.authorize_url,
        client_id=config.client_id,
        redirect_uri=args.redirect_uri,
        state=state,
        scope=args.scope if config.api.authorize_scope else None,
    )
    listen = args.listen and not args.code
    with CodeReceiver(args.redirect_uri, state, listen=listen, timeout=args.timeout) as receiver:
        _print_authorize_prompt(say, config.conn_id, config.client_id, config.region, url, receiver)
        code = code_from(args.code, state=None) if args.code else receiver.wait()
    try:
        tokens = hook.token_manager.exchange_code(code, args.redirect_uri)
        extra = connection_extra(hook) if local else {}
    except ClioError as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        hook.close()
    key = VariableTokenStore().key(config.conn_id)
    if local:
        _hand_over(args, config.conn_id, extra, tokens, key, json_out)
        return
    print(f"Stored the OAuth tokens of connection {config.conn_id!r} in the Airflow Variable {key!r}.")
    _print_expiry(say, tokens, rotates=config.api.rotates_refresh_token)


def _print_authorize_prompt(
    say: TextIO, conn_id: str, client_id: str, region: str, url: str, receiver: CodeReceiver
) -> None:
    print(f"Clio connection {conn_id!r}: application {client_id}, region {region}.", file=say)
    print("Open this URL, sign in as a Clio user who can see the data to extract, and approve:", file=say)
    print(f"\n    {url}\n", file=say)
    if receiver.listening:
        print(f"Clio then redirects to {receiver.redirect_uri}, where this command is listening.", file=say)
    else:
        print(f"Clio then redirects to {receiver.redirect_uri}?code=...", file=say)
        for reason in receiver.bind_errors:
            print(f"(cannot listen on {reason}; paste the redirect URL instead)", file=say)
    # Flush before the prompt so a person (or a script) reading a pipe has the URL before the wait starts.
    say.flush()


def _print_expiry(say: TextIO, tokens: TokenSet, *, rotates: bool) -> None:
    if tokens.expires_at is not None:
        expires = datetime.fromtimestamp(tokens.expires_at, tz=timezone.utc).isoformat(timespec="seconds")
        how = "(and rotate the pair)" if rotates else "(the refresh token does not rotate)"
        print(f"The access token expires at {expires}; tasks refresh it {how} from now on.", file=say)


def _hand_over(
    args: argparse.Namespace, conn_id: str, extra: dict, tokens: TokenSet, key: str, json_out: TextIO
) -> None:
    document = handover_document(conn_id, extra, tokens, key)
    if args.token_file:
        write_token_file(args.token_file, document)
        print(instructions(conn_id, key, f"the file {args.token_file}, mode 0600"))
        return
    print(instructions(conn_id, key, "the JSON printed on stdout"), file=sys.stderr)
    print(json.dumps(document, indent=2), file=json_out, flush=True)


@cli_utils.action_cli
@providers_configuration_loaded
def pools(args: argparse.Namespace) -> None:
    """Create or update the Clio pools, sized to the rate limit (``airflow clio pools``)."""
    from airflow.api.client import get_current_api_client

    from airflow_provider_clio.regions import REGIONS

    server_context()
    per_slot = 1.0
    targets = [(pool_name_for(region), region) for region in (args.region or REGIONS)]
    if args.conn_id:
        if args.region:
            raise SystemExit("error: --region and --conn-id exclude each other (the connection has a region)")
        config = open_hook(args.conn_id).config
        if config.pool_size is not None:
            _share_pool(args, config)
            return
        per_slot, targets = config.requests_per_slot, [(config.pool, config.region)]
    slots = args.slots or slots_for(args.limit, per_slot)
    if slots < 1:
        raise SystemExit(
            f"error: requests_per_slot {per_slot:g} exceeds the limit of {args.limit:g} req/s: "
            "not even one slot fits; lower the connection's requests_per_slot"
        )
    problem = budget_problem(slots, per_slot, args.limit)
    if problem:
        print(f"warning: {problem}; `airflow clio check` will fail", file=sys.stderr)
    how = "as given" if args.slots else f"limit {args.limit:g} req/s / {per_slot:g} req/s per slot"
    client = get_current_api_client()
    for name, region in targets:
        action = "updated" if read_pool(name) is not None else "created"
        description = POOL_DESCRIPTION.format(
            region=region.upper(), slots=slots, per_slot=per_slot, limit=args.limit
        )
        client.create_pool(
            name=name, slots=slots, description=description, include_deferred=args.include_deferred
        )
        print(f"Pool {name} {action}: {slots} slots, include_deferred={args.include_deferred} ({how})")


def _share_pool(args: argparse.Namespace, config: ClioConfig) -> None:
    """Create or update the pool of a connection whose slots are shares of one token's budget."""
    from airflow.api.client import get_current_api_client

    assert config.pool_size is not None
    slots = args.slots or config.pool_size
    problem = share_problem(slots, config.pool_size)
    if problem:
        print(f"warning: {problem}; `airflow clio check` will fail", file=sys.stderr)
    action = "updated" if read_pool(config.pool) is not None else "created"
    description = SHARE_POOL_DESCRIPTION.format(
        api=config.api.name.capitalize(), region=config.region.upper(), slots=slots
    )
    get_current_api_client().create_pool(
        name=config.pool, slots=slots, description=description, include_deferred=args.include_deferred
    )
    print(
        f"Pool {config.pool} {action}: {slots} slots, include_deferred={args.include_deferred} "
        f"(a slot is 1/{config.pool_size} of the token's budget: the connection's pool_size)"
    )


@providers_configuration_loaded
def check(args: argparse.Namespace) -> None:
    """Check the connection, the token store and the pool's rate budget (``airflow clio check``)."""
    from airflow_provider_clio.auth import VariableTokenStore

    store = VariableTokenStore()
    hook = open_hook(args.conn_id, store)
    config = hook.config
    try:
        # The full check: Airflow's UI "Test" (test_connection) deliberately spends no refresh token.
        ok, message = hook.check_connection()
    finally:
        hook.close()
    print(f"{'OK' if ok else 'FAILED'}: {message}")
    failed = not ok
    if ok:
        problem = token_store_problem(store, config.conn_id, hook.token_manager.tokens)
        failed |= problem is not None
        stored = f"OK: Token store: {store.key(config.conn_id)!r} reads back what was written."
        print(f"FAILED: Token store: {problem}." if problem else stored)
    if config.pool_size is not None:
        failed |= not _report_share_pool(config.pool, config.pool_size, args.conn_id)
    else:
        failed |= not _report_pool(config.pool, config.requests_per_slot, args.limit, args.conn_id)
        per_slot = config.requests_per_slot
        print(
            f"Rate: {per_slot:g} req/s per pool slot; a task with pool_slots=1 paces at {per_slot:g} req/s, "
            f"pool_slots=k at k x {per_slot:g} req/s."
        )
    if failed:
        raise SystemExit(1)


def _report_share_pool(name: str, size: int, conn_id: str) -> bool:
    """Print the state of a pool whose slots are shares of one token's budget; return whether it is usable."""
    pool = read_pool(name)
    if pool is None:
        print(
            f"FAILED: Pool: {name} does not exist; run `airflow clio pools --conn-id {conn_id}` "
            "(tasks in a missing pool are never scheduled)."
        )
        return False
    problem = share_problem(pool.slots, size)
    if problem:
        print(f"FAILED: Pool: {name}: {problem}.")
        return False
    print(
        f"OK: Pool: {name} ({pool.slots} slots; a task holding k slots paces at k/{size} of the token's "
        f"budget, e.g. k x {PEAK_LIMIT / size:g} requests a minute at a limit of {PEAK_LIMIT} a minute). "
        "Give every other connection (token) its own pool."
    )
    return True


def _report_pool(name: str, per_slot: float, limit: float, conn_id: str) -> bool:
    """Print the pool's state and budget; return whether it is usable and within the limit."""
    pool = read_pool(name)
    if pool is None:
        print(
            f"FAILED: Pool: {name} does not exist; run `airflow clio pools --conn-id {conn_id}` "
            "(tasks in a missing pool are never scheduled)."
        )
        return False
    problem = budget_problem(pool.slots, per_slot, limit)
    if problem:
        print(
            f"FAILED: Pool: {name}: {problem}. Run `airflow clio pools --conn-id {conn_id}` (sets "
            f"{slots_for(limit, per_slot)} slots) or lower the connection's requests_per_slot."
        )
        return False
    if not pool.include_deferred:
        # Checked here, not by the sensor: a task cannot read its pool on Airflow 3 (no Task SDK route).
        print(
            f"FAILED: Pool: {name} has include_deferred off: a deferrable ClioRecordsSensor would give its "
            "slot back while its trigger keeps polling, so the pool's tasks could exceed the limit. Run "
            f"`airflow clio pools --conn-id {conn_id} --include-deferred`."
        )
        return False
    print(
        f"OK: Pool: {name} ({pool.slots} slots x {per_slot:g} req/s per slot = {pool.slots * per_slot:g} "
        f"req/s within the limit of {limit:g} req/s; deferred tasks keep their slot)."
    )
    return True
