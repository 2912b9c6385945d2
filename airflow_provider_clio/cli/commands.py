# SPDX-License-Identifier: Apache-2.0
"""Implement ``airflow clio auth|pools|check``; imported only when one of them runs.

None of these commands prints a token, a code or the client secret. They run in a plain CLI process, so
the token store reaches Airflow Variables through the metadata database.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode, urlsplit

from airflow.utils import cli as cli_utils
from airflow.utils.providers_configuration_loader import providers_configuration_loaded

if TYPE_CHECKING:
    from airflow_provider_clio.auth import TokenStore
    from airflow_provider_clio.hooks.clio import ClioHook

POOL_DESCRIPTION = (
    "Clio {region} API (airflow-provider-clio): one slot = one request per second of the application's "
    "rate limit."
)


def _hook(conn_id: str, store: TokenStore | None = None) -> ClioHook:
    from airflow.sdk.exceptions import AirflowNotFoundException

    from airflow_provider_clio.exceptions import ClioError
    from airflow_provider_clio.hooks.clio import ClioHook

    hook = ClioHook(conn_id, pool_slots=1, token_store=store)
    try:
        hook.config  # noqa: B018  # validate the connection now, with an error that names the field
    except AirflowNotFoundException:
        raise SystemExit(
            f"error: connection {conn_id!r} is not defined. Create it (conn type 'clio') with the "
            "application's client id as login and its secret as password, or pass --conn-id."
        ) from None
    except ClioError as exc:
        raise SystemExit(f"error: {exc}") from None
    return hook


def authorize_url(endpoint: str, *, client_id: str, redirect_uri: str, state: str, scope: str | None) -> str:
    """Return the URL a person opens to approve the application."""
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": state}
    if scope:
        params["scope"] = " ".join(scope.replace(",", " ").split())
    return f"{endpoint}?{urlencode(params)}"


def code_from(value: str, *, state: str | None) -> str:
    """
    Return the authorization code in ``value``: the bare code, or the whole URL Clio redirected to.

    A pasted URL is checked for Clio's ``error`` answer and, when ``state`` is given, for the state this
    command generated (so a code from another authorization attempt is not used by mistake).
    """
    value = value.strip()
    if "://" in value or value.startswith("?") or "code=" in value or "error=" in value:
        query = parse_qs(urlsplit(value).query if "://" in value else value.lstrip("?"))
        if "error" in query:
            description = query.get("error_description", [""])[0]
            raise SystemExit(f"error: Clio answered {query['error'][0]}: {description}".rstrip(": "))
        codes = query.get("code")
        if not codes or not codes[0]:
            raise SystemExit("error: the pasted URL has no 'code' parameter")
        returned_state = query.get("state", [None])[0]
        if state and returned_state and returned_state != state:
            raise SystemExit(
                "error: the pasted URL belongs to another authorization attempt (state mismatch); "
                "open the URL printed above and paste the URL it redirects to"
            )
        return codes[0]
    if not value:
        raise SystemExit("error: no authorization code given")
    return value


@providers_configuration_loaded
def auth(args: argparse.Namespace) -> None:
    """Authorize the application and store the token pair (``airflow clio auth``)."""
    from airflow_provider_clio.auth import VariableTokenStore
    from airflow_provider_clio.exceptions import ClioError

    store = VariableTokenStore()
    hook = _hook(args.conn_id, store)
    config = hook.config
    state = secrets.token_urlsafe(16)
    url = authorize_url(
        config.authorize_url,
        client_id=config.client_id,
        redirect_uri=args.redirect_uri,
        state=state,
        scope=args.scope,
    )
    print(f"Clio connection {config.conn_id!r}: application {config.client_id}, region {config.region}.")
    print("Open this URL, sign in as a Clio user who can see the data to extract, and approve:")
    print()
    print(f"    {url}")
    print()
    print(f"Clio then redirects to {args.redirect_uri}?code=...")
    if args.code:
        code = code_from(args.code, state=None)
    else:
        # The prompt goes to stderr so stdout stays parseable when the code is piped in; flush stdout first
        # so a person (or a wrapper script) reading a pipe has the URL before the prompt waits.
        sys.stdout.flush()
        print("Paste the code (or the whole redirect URL): ", end="", file=sys.stderr, flush=True)
        code = code_from(sys.stdin.readline(), state=state)

    try:
        tokens = hook.token_manager.exchange_code(code, args.redirect_uri)
    except ClioError as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        hook.close()
    key = store.key(config.conn_id)
    print(f"Stored the OAuth tokens of connection {config.conn_id!r} in the Airflow Variable {key!r}.")
    if tokens.expires_at is not None:
        expires = datetime.fromtimestamp(tokens.expires_at, tz=timezone.utc).isoformat(timespec="seconds")
        print(f"The access token expires at {expires}; tasks refresh it (and rotate the pair) from now on.")


@cli_utils.action_cli
@providers_configuration_loaded
def pools(args: argparse.Namespace) -> None:
    """Create or update the per-region pools (``airflow clio pools``)."""
    from airflow.api.client import get_current_api_client
    from airflow.exceptions import PoolNotFound

    from airflow_provider_clio.pools import pool_name_for

    client = get_current_api_client()
    for region in args.region:
        name = pool_name_for(region)
        try:
            client.get_pool(name=name)
            action = "updated"
        except PoolNotFound:
            action = "created"
        client.create_pool(
            name=name,
            slots=args.slots,
            description=POOL_DESCRIPTION.format(region=region.upper()),
            include_deferred=args.include_deferred,
        )
        print(f"Pool {name} {action}: {args.slots} slots, include_deferred={args.include_deferred}")


@providers_configuration_loaded
def check(args: argparse.Namespace) -> None:
    """Test a connection and show the pool and per-task rate its tasks get (``airflow clio check``)."""
    from airflow.api.client import get_current_api_client
    from airflow.exceptions import PoolNotFound

    hook = _hook(args.conn_id)
    config = hook.config
    try:
        # The full check: Airflow's UI "Test" (test_connection) deliberately spends no refresh token.
        ok, message = hook.check_connection()
    finally:
        hook.close()
    print(f"{'OK' if ok else 'FAILED'}: {message}")
    try:
        _, slots, _, include_deferred, _ = get_current_api_client().get_pool(name=config.pool)
    except PoolNotFound:
        print(
            f"Pool: {config.pool} does not exist; run `airflow clio pools` "
            "(tasks in a missing pool are never scheduled)."
        )
    else:
        deferred = (
            "deferred tasks keep their slot" if include_deferred else "deferred tasks release their slot"
        )
        print(f"Pool: {config.pool} ({slots} slots, {deferred}).")
    per_slot = config.requests_per_slot
    print(
        f"Rate: {per_slot:g} req/s per pool slot; a task with pool_slots=1 paces at {per_slot:g} req/s, "
        f"pool_slots=k at k x {per_slot:g} req/s."
    )
    if not ok:
        raise SystemExit(1)
