# SPDX-License-Identifier: Apache-2.0
"""Clio Manage API v4 (``matters``, ``activities``, ``bills``, ...): hosts, tokens, errors, paging and pacing.

Selected by the connection extra ``{"api": "manage"}``; endpoints are relative to ``api/v4``.

- Hosts: ``{,eu.,ca.,au.}app.clio.com`` for the API (under ``api/v4``) and for OAuth alike; the bearer token
  goes to the region's app host only.
- Tokens: refresh tokens do not rotate: a refresh may answer no ``refresh_token`` and the old one stays
  valid; access tokens live ~30 days (``expires_in`` is always read). The authorize request takes no
  ``scope``: an application's permissions are fixed when it is registered.
- Errors: ``{"error": {"type", "message"}}``, OAuth's ``{"error", "error_description"}``, or no JSON at all
  (:func:`~airflow_provider_clio.exceptions.parse_error_body` reads them all). A 410 means the pinned
  ``X-API-VERSION`` is invalid or retired, a 422 a rejected request (such as offset paging past 10,000
  records): both fail the task at once, with a sentence saying so.
- Requests: every one carries ``X-API-VERSION: 4.0.13`` (4.0.4 changed activity ``quantity`` from hours to
  seconds: a pinned version keeps the columns' meaning). A list's first page always asks for cursor paging,
  ``order=id(asc)`` (some lists default to ``date(asc)``), never ``offset``, and ``fields=id,etag`` when the
  caller selected none (Manage answers only those two without ``fields``).
- ``updated_since`` means "after" on Manage, "on or after" on the Platform: the operators ask one second early
  for both (:data:`~airflow_provider_clio.extraction.REQUEST_SLACK`) and drop what falls before the interval.
- Rate limit: per access token, in 60-second windows, announced in ``X-RateLimit-*`` headers and varying with
  the time of day: :class:`~airflow_provider_clio.token_budget.TokenBudgetPacer` paces each task at its share
  ``pool_slots / pool_size`` of the token's budget. One pool per token: ``clio_manage_<region>`` by default;
  give every further connection (another token) its own pool with the ``pool`` extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from airflow_provider_clio.apis import ApiSpec
from airflow_provider_clio.exceptions import ClioConfigError, parse_error_body
from airflow_provider_clio.rate_limit import Pacer, PacerRequest
from airflow_provider_clio.token_budget import TokenBudgetPacer

HOSTS = MappingProxyType(
    {"us": "app.clio.com", "ca": "ca.app.clio.com", "eu": "eu.app.clio.com", "au": "au.app.clio.com"}
)
"""Region -> host of both the API (under ``api/v4``) and its OAuth endpoints."""

API_VERSION = "4.0.13"
"""The ``X-API-VERSION`` every request pins."""

POOL_PREFIX = "clio_manage_"
"""Default pool of a region's Manage connection: ``clio_manage_<region>``."""

DEFAULT_POOL_SIZE = 5
"""Slots of a Manage pool unless the connection's ``pool_size`` extra says otherwise: one slot is a fifth of
the token's budget, 10 requests a minute at the peak limit of 50."""

LIST_DEFAULTS = MappingProxyType({"order": "id(asc)", "fields": "id,etag"})
"""What a list's first page asks for unless the caller says otherwise."""


def manage_list_query(query: Mapping[str, Any]) -> dict[str, Any]:
    """Return a list's first query: cursor paging by id (never ``offset``) and default fields."""
    if "offset" in query:
        raise ClioConfigError(
            "query parameter 'offset' is not supported: Clio Manage stops offset paging at 10,000 records "
            "(HTTP 422), so the provider pages by cursor (order=id(asc)) through every record"
        )
    return {**LIST_DEFAULTS, **query}


def manage_pacer(request: PacerRequest) -> Pacer:
    """Return a pacer for one hook: its ``pool_slots / pool_size`` share of the token's budget."""
    size = request.pool_size or DEFAULT_POOL_SIZE
    share = min(1.0, request.pool_slots / size)
    return TokenBudgetPacer(share, clock=request.clock, name=request.pool or f"{POOL_PREFIX}{request.region}")


MANAGE = ApiSpec(
    name="manage",
    api_hosts=HOSTS,
    auth_hosts=HOSTS,
    base_path="api/v4",
    rotates_refresh_token=False,
    parse_error=parse_error_body,
    make_pacer=manage_pacer,
    pool_prefix=POOL_PREFIX,
    probe_endpoint="users/who_am_i",
    headers=MappingProxyType({"X-API-VERSION": API_VERSION}),
    list_query=manage_list_query,
    error_hints=MappingProxyType(
        {
            410: (
                f"Clio Manage refused the API version this provider pins (X-API-VERSION {API_VERSION}) as "
                "invalid or retired (HTTP 410); upgrade airflow-provider-clio to a release pinning a "
                "version Clio still serves. Not retried"
            ),
            422: (
                "Clio Manage rejected the request as invalid (HTTP 422), e.g. offset paging past 10,000 "
                "records; the provider pages by cursor, so check the endpoint's query parameters. Not "
                "retried"
            ),
        }
    ),
    pool_size=DEFAULT_POOL_SIZE,
    authorize_scope=False,
)
"""Clio Manage API v4, selected by the connection extra ``{"api": "manage"}``."""

__all__ = [
    "API_VERSION",
    "DEFAULT_POOL_SIZE",
    "HOSTS",
    "LIST_DEFAULTS",
    "MANAGE",
    "POOL_PREFIX",
    "manage_list_query",
    "manage_pacer",
]
