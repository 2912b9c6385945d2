# SPDX-License-Identifier: Apache-2.0
"""What differs between Clio's APIs, as data: one :class:`ApiSpec` per API, picked by the ``api`` extra.

Clio runs more than one API (the Platform API and Manage v4, :mod:`~airflow_provider_clio.apis.manage`),
each with its own OAuth applications per region. They differ in hosts, in whether refresh tokens rotate,
in the shape of error bodies and in how their rate limit is announced and counted. The hook, the token
manager and the operators read those rules from the spec of the connection's API and never name an API
themselves, so supporting another API means describing it in one module (see
:mod:`airflow_provider_clio.apis.platform`) and registering it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from airflow_provider_clio.exceptions import ClioConfigError

if TYPE_CHECKING:
    from airflow_provider_clio.rate_limit import Pacer, PacerRequest

DEFAULT_API = "platform"
"""The API a connection without an ``api`` extra talks to."""

API_NAMES: tuple[str, ...] = ("platform", "manage")
"""The APIs this package describes itself; :func:`api_names` also lists those registered at run time."""


@dataclass(frozen=True, repr=False, eq=False)  # one object per API: compared and hashed by identity
class ApiSpec:
    """
    The rules of one Clio API that the request path depends on.

    :param name: The value of the connection's ``api`` extra that selects this API, e.g. ``platform``.
    :param api_hosts: Region -> API host (https, port 443). Its keys are the regions the API serves.
    :param auth_hosts: Region -> OAuth host (``/oauth/token`` and ``/oauth/authorize`` live there).
    :param base_path: Path under the API host that endpoints are relative to: ``""`` for the Platform API
        (endpoints carry ``grow/...``), ``"api/v4"`` for Manage.
    :param rotates_refresh_token: Every refresh answers a new refresh token and revokes the old one.
        ``False`` means a token response may omit ``refresh_token`` and the old one stays valid.
    :param parse_error: Error body -> ``(error_code, message)``; neither scrubbed nor truncated.
    :param make_pacer: Build (or share) the in-process pacer of one application, region and rate.
    :param pool_prefix: Default Airflow pool of a region: ``f"{pool_prefix}{region}"``.
    :param probe_endpoint: A cheap authenticated list endpoint for connection tests.
    :param headers: Headers every API request carries (not the OAuth token endpoint's), e.g. a pinned
        ``X-API-VERSION``.
    :param list_query: The query of a list's first page -> the query to send: adds the API's paging
        parameters, refuses those that break cursor paging (default: sent as given). Later pages follow the
        server's ``next`` links as they are.
    :param error_hints: HTTP status -> a sentence appended to the message of an error with that status.
    :param pool_size: Pools of this API are sized in shares of a token's budget: a task's share is its
        ``pool_slots`` over the pool's slots, which the connection's ``pool_size`` extra states (default
        this). ``None``: slots are a request rate each (``requests_per_slot``), as on the Platform API.
    :param authorize_scope: The OAuth authorize request takes a ``scope`` parameter.
    """

    name: str
    api_hosts: Mapping[str, str]
    auth_hosts: Mapping[str, str]
    base_path: str
    rotates_refresh_token: bool
    parse_error: Callable[[bytes | str | None], tuple[str | None, str]]
    make_pacer: Callable[[PacerRequest], Pacer]
    pool_prefix: str = "clio_"
    probe_endpoint: str = "grow/users"
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    list_query: Callable[[Mapping[str, Any]], dict[str, Any]] = dict
    error_hints: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    pool_size: int | None = None
    authorize_scope: bool = True

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip().lower():
            raise ClioConfigError(f"API name must be a non-empty lower-case word, got {self.name!r}")
        if not self.api_hosts or set(self.api_hosts) != set(self.auth_hosts):
            raise ClioConfigError(f"API {self.name!r}: api_hosts and auth_hosts must name the same regions")

    @property
    def regions(self) -> tuple[str, ...]:
        """The regions this API serves, in declaration order."""
        return tuple(self.api_hosts)

    def token_hosts(self, region: str) -> frozenset[str]:
        """
        Return the exact hosts a request of ``region`` may carry the bearer token to (https, port 443).

        Only the region's API host: no wildcard, no other region, no other host of the same company, since
        every host on that list is trusted with a token that reads the whole account.
        """
        return frozenset({self.api_hosts[region]})

    def error_parser(self, status: int) -> Callable[[bytes | str | None], tuple[str | None, str]]:
        """Return :attr:`parse_error`, adding the API's hint for ``status`` (if any) to the message."""
        hint = self.error_hints.get(status)
        if hint is None:
            return self.parse_error

        def parse(body: bytes | str | None) -> tuple[str | None, str]:
            code, message = self.parse_error(body)
            return code, f"{message.rstrip('. ')}. {hint}" if message else hint

        return parse

    def __repr__(self) -> str:
        return f"ApiSpec(name={self.name!r})"


_LOCK = threading.Lock()
_REGISTRY: dict[str, ApiSpec] = {}


def register_api(spec: ApiSpec, *, replace: bool = False) -> ApiSpec:
    """
    Make ``spec`` selectable with the connection extra ``api = spec.name``; return it.

    :param replace: Replace a spec already registered under that name (tests); otherwise that is an error.
    """
    with _LOCK:
        known = _REGISTRY.get(spec.name)
        if known is not None and known is not spec and not replace:
            raise ClioConfigError(f"an API named {spec.name!r} is already registered")
        _REGISTRY[spec.name] = spec
    return spec


def unregister_api(name: str) -> None:
    """Forget the API registered as ``name`` (tests); the built-in APIs come back on the next lookup."""
    with _LOCK:
        _REGISTRY.pop(name, None)


def get_api(name: str | None = None) -> ApiSpec:
    """Return the spec registered as ``name`` (default ``platform``); ClioConfigError names the choices."""
    _load_builtins()
    key = DEFAULT_API if name is None else name
    with _LOCK:
        spec = _REGISTRY.get(key)
    if spec is None:
        raise ClioConfigError(f"unknown Clio API {name!r}; choose one of {', '.join(api_names())}")
    return spec


def api_names() -> tuple[str, ...]:
    """Return the names of every selectable API, built-in ones first (in :data:`API_NAMES` order)."""
    _load_builtins()
    with _LOCK:
        builtin = [n for n in API_NAMES if n in _REGISTRY]
        return (*builtin, *sorted(set(_REGISTRY) - set(builtin)))


def _load_builtins() -> None:
    # Imported on first use, not at the top: the built-in modules import ApiSpec from here.
    from airflow_provider_clio.apis import manage, platform

    with _LOCK:
        for spec in (platform.PLATFORM, manage.MANAGE):
            _REGISTRY.setdefault(spec.name, spec)


__all__ = ["API_NAMES", "DEFAULT_API", "ApiSpec", "api_names", "get_api", "register_api", "unregister_api"]
