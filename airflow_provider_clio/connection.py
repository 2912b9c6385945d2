# SPDX-License-Identifier: Apache-2.0
"""The settings of a ``clio`` connection, validated before any request is sent.

The connection's ``api`` extra (default ``platform``) picks the :class:`~airflow_provider_clio.apis.ApiSpec`
whose hosts, pool naming and URL rules the settings are computed from.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk.log import mask_secret

from airflow_provider_clio.apis import DEFAULT_API, ApiSpec, api_names, get_api
from airflow_provider_clio.dates import parse_timestamp
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.pools import pool_name_for
from airflow_provider_clio.regions import DEFAULT_REGION
from airflow_provider_clio.urls import UrlRules

if TYPE_CHECKING:
    from airflow.sdk import Connection

EXTRA_PREFIX = "extra__clio__"
KNOWN_EXTRAS = (
    "api",
    "region",
    "refresh_token",
    "access_token",
    "expires_at",
    "requests_per_slot",
    "pool",
    "pool_size",
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClioConfig:
    """
    The validated settings of a Clio connection; ``repr`` never shows the secrets.

    :param conn_id: The Airflow connection id.
    :param client_id: OAuth client id (connection login).
    :param client_secret: OAuth client secret (connection password).
    :param api: The API the connection talks to (extra ``api``, default ``platform``).
    :param region: ``us``, ``ca``, ``eu`` or ``au`` (the regions ``api`` serves).
    :param urls: Where requests go and where the token may go (the ``host`` override, or the API's hosts).
    :param token_url: OAuth token endpoint.
    :param authorize_url: OAuth authorization endpoint (for the CLI's onboarding flow).
    :param refresh_token: Refresh token from the connection extra, if any.
    :param access_token: Access token from the connection extra, if any.
    :param expires_at: Expiry of ``access_token``, epoch seconds.
    :param requests_per_slot: Request rate one pool slot is worth.
    :param pool: The Airflow pool of this connection's tasks.
    :param pool_size: Slots of that pool when the API sizes pools in shares of a token's budget (extra
        ``pool_size``, default the API's); ``None`` when a slot is a request rate (``requests_per_slot``).
    """

    conn_id: str
    client_id: str
    client_secret: str = field(repr=False)
    api: ApiSpec
    region: str
    urls: UrlRules
    token_url: str
    authorize_url: str
    refresh_token: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    requests_per_slot: float = 1.0
    pool: str = ""
    pool_size: int | None = None

    @property
    def base_url(self) -> str:
        """API base URL endpoints are relative to (the API's host, or the ``host`` override)."""
        return self.urls.base_url

    @property
    def host_override(self) -> bool:
        """``base_url`` comes from the connection's ``host`` (a proxy or an emulator)."""
        return self.urls.host_override

    @classmethod
    def from_connection(cls, conn: Connection) -> ClioConfig:
        """Validate a connection and build the config; raise ClioConfigError naming the bad field."""
        conn_id = conn.conn_id or "<unnamed>"
        # Never mutate the connection's parsed extras: Airflow may cache and reuse the object.
        extras = _Extras(conn_id, dict(conn.extra_dejson or {}))
        client_id = (conn.login or "").strip()
        if not client_id:
            raise ClioConfigError(f"Clio connection {conn_id!r}: login (the OAuth client id) is empty")
        client_secret = conn.password or ""
        if not client_secret:
            raise ClioConfigError(f"Clio connection {conn_id!r}: password (the OAuth client secret) is empty")
        mask_secret(client_secret)
        api = extras.api()
        region = extras.region(api)
        refresh_token = extras.optional_str("refresh_token")
        access_token = extras.optional_str("access_token")
        for secret in (refresh_token, access_token):
            if secret:
                mask_secret(secret)
        expires_at = extras.expires_at()
        requests_per_slot = extras.requests_per_slot()
        pool = pool_name_for(region, extras.pool(), prefix=api.pool_prefix)
        pool_size = extras.pool_size(api)
        extras.warn_unknown()
        urls, oauth = _endpoints(conn_id, conn, api, region)
        return cls(
            conn_id=conn_id,
            client_id=client_id,
            client_secret=client_secret,
            api=api,
            region=region,
            urls=urls,
            token_url=f"{oauth}/oauth/token",
            authorize_url=f"{oauth}/oauth/authorize",
            refresh_token=refresh_token,
            access_token=access_token,
            expires_at=expires_at,
            requests_per_slot=requests_per_slot,
            pool=pool,
            pool_size=pool_size,
        )


class _Extras:
    """Read and validate one connection's extras; every error names the connection and the extra."""

    def __init__(self, conn_id: str, extra: dict[str, Any]) -> None:
        self.conn_id = conn_id
        self.extra = extra

    def get(self, name: str) -> Any:
        """Return extra ``name``, else ``extra__clio__<name>``; an empty string is unset."""
        value = self.extra.get(name)
        if value is None or value == "":
            value = self.extra.get(EXTRA_PREFIX + name)
        return None if value == "" else value

    def fail(self, message: str) -> ClioConfigError:
        return ClioConfigError(f"Clio connection {self.conn_id!r}: {message}")

    def api(self) -> ApiSpec:
        value = self.get("api")
        if value is None:
            return get_api(DEFAULT_API)
        names = api_names()
        if not isinstance(value, str) or value.strip().lower() not in names:
            raise self.fail(f"extra 'api' must be one of {', '.join(names)}, got {value!r}")
        return get_api(value.strip().lower())

    def region(self, api: ApiSpec) -> str:
        value = self.get("region")
        if value is None:
            return DEFAULT_REGION if DEFAULT_REGION in api.regions else api.regions[0]
        if isinstance(value, str) and value.strip().lower() in api.regions:
            return value.strip().lower()
        raise self.fail(f"extra 'region' must be one of {', '.join(api.regions)}, got {value!r}")

    def optional_str(self, name: str) -> str | None:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(f"extra {name!r} must be a string")
        return value.strip() or None

    def expires_at(self) -> float | None:
        value = self.get("expires_at")
        if value is None:
            return None
        parsed = parse_timestamp(value)
        if parsed is None:
            raise self.fail(
                "Connection extra 'expires_at' must be epoch seconds or an ISO 8601 timestamp, "
                f"got {value!r}."
            )
        return parsed.timestamp()

    def requests_per_slot(self) -> float:
        value = self.get("requests_per_slot")
        if value is None:
            return 1.0
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not 0 < number < math.inf:
            raise self.fail(f"extra 'requests_per_slot' must be a positive number, got {value!r}")
        return number

    def pool(self) -> str | None:
        """Return the pool override; unset (missing, null or empty) means the API's default pool."""
        value = self.get("pool")
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise self.fail("extra 'pool' must be a non-empty string")
        return value.strip() if isinstance(value, str) else None

    def pool_size(self, api: ApiSpec) -> int | None:
        """Return the pool's slots for an API sized in shares (default the API's); ``None`` otherwise."""
        value = self.get("pool_size")
        if api.pool_size is None:
            if value is not None:
                log.warning(
                    "Clio connection %s: extra 'pool_size' is unused by API %s", self.conn_id, api.name
                )
            return None
        if value is None:
            return api.pool_size
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
            raise self.fail(f"extra 'pool_size' must be a positive integer, got {value!r}")
        if int(value) < 1:
            raise self.fail(f"extra 'pool_size' must be a positive integer, got {value!r}")
        return int(value)

    def warn_unknown(self) -> None:
        unknown = sorted(n for n in self.extra if n.removeprefix(EXTRA_PREFIX) not in KNOWN_EXTRAS)
        if unknown:
            # Names only: a misspelt key may still hold a secret value.
            log.warning("Clio connection %s: ignoring unknown extras %s", self.conn_id, ", ".join(unknown))


def _endpoints(conn_id: str, conn: Connection, api: ApiSpec, region: str) -> tuple[UrlRules, str]:
    """Return the URL rules and the OAuth root (``/oauth/...`` lives under it) of the connection."""
    if conn.host:
        root = _base_url_override(conn_id, conn.host, conn.port)
        urls = UrlRules(root, api.base_path, api.token_hosts(region), host_override=True)
        return urls, root
    urls = UrlRules(f"https://{api.api_hosts[region]}", api.base_path, api.token_hosts(region))
    return urls, f"https://{api.auth_hosts[region]}"


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


__all__ = ["EXTRA_PREFIX", "KNOWN_EXTRAS", "ClioConfig"]
