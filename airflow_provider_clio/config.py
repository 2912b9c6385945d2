# SPDX-License-Identifier: Apache-2.0
"""The settings of a ``clio`` connection, validated before any request is sent."""

from __future__ import annotations

import ipaddress
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk.log import mask_secret

from airflow_provider_clio.auth import parse_expires_at
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.rate_limit import pool_name_for
from airflow_provider_clio.regions import API_HOSTS, AUTH_HOSTS, DEFAULT_REGION, REGIONS

if TYPE_CHECKING:
    from airflow.sdk import Connection

EXTRA_PREFIX = "extra__clio__"
KNOWN_EXTRAS = ("region", "refresh_token", "access_token", "expires_at", "requests_per_slot", "pool")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClioConfig:
    """
    The validated settings of a Clio connection; ``repr`` never shows the secrets.

    :param conn_id: The Airflow connection id.
    :param client_id: OAuth client id (connection login).
    :param client_secret: OAuth client secret (connection password).
    :param region: ``us``, ``ca``, ``eu`` or ``au``.
    :param base_url: API base URL (scheme and host, or the ``host`` override), without trailing slash.
    :param token_url: OAuth token endpoint.
    :param authorize_url: OAuth authorization endpoint (for the CLI's onboarding flow).
    :param refresh_token: Refresh token from the connection extra, if any.
    :param access_token: Access token from the connection extra, if any.
    :param expires_at: Expiry of ``access_token``, epoch seconds.
    :param requests_per_slot: Request rate one pool slot is worth.
    :param pool: The Airflow pool of this connection's tasks.
    :param host_override: ``base_url`` comes from the connection's ``host`` (a proxy or an emulator), so
        ``next`` URLs naming Clio's hosts are rewritten onto it.
    """

    conn_id: str
    client_id: str
    client_secret: str = field(repr=False)
    region: str
    base_url: str
    token_url: str
    authorize_url: str
    refresh_token: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    requests_per_slot: float = 1.0
    pool: str = ""
    host_override: bool = False

    @classmethod
    def from_connection(cls, conn: Connection) -> ClioConfig:
        """Validate a connection and build the config; raise ClioConfigError naming the bad field."""
        conn_id = conn.conn_id or "<unnamed>"
        # Never mutate the connection's parsed extras: Airflow may cache and reuse the object.
        extra = dict(conn.extra_dejson or {})

        client_id = (conn.login or "").strip()
        if not client_id:
            raise ClioConfigError(f"Clio connection {conn_id!r}: login (the OAuth client id) is empty")
        client_secret = conn.password or ""
        if not client_secret:
            raise ClioConfigError(f"Clio connection {conn_id!r}: password (the OAuth client secret) is empty")
        mask_secret(client_secret)

        def get(name: str) -> Any:
            value = extra.get(name)
            if value is None or value == "":
                value = extra.get(EXTRA_PREFIX + name)
            return None if value == "" else value

        region_value = get("region")
        if region_value is None:
            region = DEFAULT_REGION
        elif isinstance(region_value, str) and region_value.strip().lower() in REGIONS:
            region = region_value.strip().lower()
        else:
            raise ClioConfigError(
                f"Clio connection {conn_id!r}: extra 'region' must be one of {', '.join(REGIONS)}, "
                f"got {region_value!r}"
            )

        refresh_token = _optional_str(conn_id, "refresh_token", get("refresh_token"))
        access_token = _optional_str(conn_id, "access_token", get("access_token"))
        for secret in (refresh_token, access_token):
            if secret:
                mask_secret(secret)
        try:
            expires_at = parse_expires_at(get("expires_at"))
        except ClioConfigError as exc:
            raise ClioConfigError(f"Clio connection {conn_id!r}: {exc.message}") from None

        rps = get("requests_per_slot")
        if rps is None:
            requests_per_slot = 1.0
        else:
            try:
                if isinstance(rps, bool):
                    raise ValueError
                requests_per_slot = float(rps)
            except (TypeError, ValueError):
                requests_per_slot = math.nan
            if not 0 < requests_per_slot < math.inf:
                raise ClioConfigError(
                    f"Clio connection {conn_id!r}: extra 'requests_per_slot' must be a positive number, "
                    f"got {rps!r}"
                )

        pool_value = get("pool")
        if pool_value is not None and (not isinstance(pool_value, str) or not pool_value.strip()):
            raise ClioConfigError(f"Clio connection {conn_id!r}: extra 'pool' must be a non-empty string")
        pool = pool_name_for(region, pool_value.strip() if isinstance(pool_value, str) else None)

        unknown = sorted(name for name in extra if name.removeprefix(EXTRA_PREFIX) not in KNOWN_EXTRAS)
        if unknown:
            # Names only: a misspelt key may still hold a secret value.
            log.warning("Clio connection %s: ignoring unknown extras %s", conn_id, ", ".join(unknown))

        if conn.host:
            base_url = _base_url_override(conn_id, conn.host, conn.port)
            token_url = f"{base_url}/oauth/token"
            authorize_url = f"{base_url}/oauth/authorize"
        else:
            base_url = f"https://{API_HOSTS[region]}"
            token_url = f"https://{AUTH_HOSTS[region]}/oauth/token"
            authorize_url = f"https://{AUTH_HOSTS[region]}/oauth/authorize"

        return cls(
            conn_id=conn_id,
            client_id=client_id,
            client_secret=client_secret,
            region=region,
            base_url=base_url,
            token_url=token_url,
            authorize_url=authorize_url,
            refresh_token=refresh_token,
            access_token=access_token,
            expires_at=expires_at,
            requests_per_slot=requests_per_slot,
            pool=pool,
            host_override=bool(conn.host),
        )


def _optional_str(conn_id: str, name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ClioConfigError(f"Clio connection {conn_id!r}: extra {name!r} must be a string")
    return value.strip() or None


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _base_url_override(conn_id: str, host: str, port: int | None) -> str:
    text = host.strip()
    parts = urlsplit(text)
    example = "e.g. https://clio-proxy.example.com or http://127.0.0.1:8765"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ClioConfigError(f"Clio connection {conn_id!r}: host must be a URL with its scheme, {example}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ClioConfigError(
            f"Clio connection {conn_id!r}: host must be a plain base URL "
            "without credentials, query or fragment"
        )
    if parts.scheme.lower() == "http" and not _is_loopback(parts.hostname):
        # Plain http would put the bearer token and the client secret on the network in clear text.
        raise ClioConfigError(
            f"Clio connection {conn_id!r}: host uses plain http on {parts.hostname}; use https "
            "(http is only accepted for loopback addresses such as a local emulator)"
        )
    try:
        url_port = parts.port
    except ValueError:
        raise ClioConfigError(f"Clio connection {conn_id!r}: host has an invalid port") from None
    netloc = parts.netloc
    if url_port is None and port:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"
