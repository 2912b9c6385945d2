# SPDX-License-Identifier: Apache-2.0
"""The Clio Platform API (``grow/...`` endpoints): its hosts, tokens, error bodies, pacing and pools.

- Hosts: one API host and one OAuth host per region. The bearer token goes to the region's API host only
  (https, port 443): a ``next`` link naming another host (another region's, or the legacy ``grow.clio.com``
  of an example in Clio's spec) is refused, not followed (see :mod:`~airflow_provider_clio.urls`).
- Tokens: refresh tokens rotate: every refresh answers a new pair and revokes the old refresh token.
- Errors: ``{"error": {"status", "message"}}``, OAuth's ``{"error", "error_description"}``, a bare
  ``{"message"}`` on 429, or proxy pages (:func:`~airflow_provider_clio.exceptions.parse_error_body`).
- Rate limit: a fixed 3 requests per second per application and region, announced nowhere, so each process
  paces at its pool slots' rate with the GCRA :class:`~airflow_provider_clio.rate_limit.RateLimiter` shared by
  all hooks of that application and region; the pool ``clio_<region>`` shares the limit between processes.
"""

from __future__ import annotations

from types import MappingProxyType

from airflow_provider_clio.apis import ApiSpec
from airflow_provider_clio.exceptions import parse_error_body
from airflow_provider_clio.pools import POOL_PREFIX
from airflow_provider_clio.rate_limit import LimiterPacer, Pacer, PacerRequest, shared_limiter

API_HOSTS = MappingProxyType(
    {"us": "api.clio.com", "ca": "ca.api.clio.com", "eu": "eu.api.clio.com", "au": "au.api.clio.com"}
)
AUTH_HOSTS = MappingProxyType(
    {
        "us": "auth.api.clio.com",
        "ca": "ca.auth.api.clio.com",
        "eu": "eu.auth.api.clio.com",
        "au": "au.auth.api.clio.com",
    }
)


def platform_pacer(request: PacerRequest) -> Pacer:
    """Return the process-wide fixed-rate pacer of the request's application and region, set to its rate."""
    return LimiterPacer(shared_limiter(request.client_id, request.region, request.rate, clock=request.clock))


PLATFORM = ApiSpec(
    name="platform",
    api_hosts=API_HOSTS,
    auth_hosts=AUTH_HOSTS,
    base_path="",
    rotates_refresh_token=True,
    parse_error=parse_error_body,
    make_pacer=platform_pacer,
    pool_prefix=POOL_PREFIX,
    probe_endpoint="grow/users",
)
"""The Clio Platform API, the default of every connection."""

__all__ = ["API_HOSTS", "AUTH_HOSTS", "PLATFORM", "platform_pacer"]
