# SPDX-License-Identifier: Apache-2.0
"""Where requests go: endpoint URLs, ``next`` links, and the hosts that may receive the bearer token.

Every API request carries the bearer token, so every URL the hook requests passes :class:`UrlRules`:

- without a ``host`` override, a URL on the API origin, or ``https`` on port 443 on one of the API's token
  hosts (Clio: ``clio.com`` and ``*.clio.com``), is requested as is. Clio's own spec shows ``next`` links
  such as ``https://grow.clio.com/api/v2/contacts?page_token=…`` for an API at ``api.clio.com``;
- with a ``host`` override (a proxy, an emulator), the API's ``next`` links still name the API's hosts, which
  this deployment must not (or cannot) reach directly: a URL on a token host or on the override's own origin
  is rewritten onto the override, keeping its path and query byte for byte, and the token goes to the
  override only;
- anything else (plain http, a foreign host, another port) is refused with ClioPaginationError.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from airflow_provider_clio.exceptions import ClioConfigError, ClioPaginationError

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int | None]:
    """Return ``(scheme, host, port)`` of ``url``, lower-cased, with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)


def same_origin(url: str, base_url: str) -> bool:
    """Tell whether ``url`` is on the same scheme, host and port as ``base_url``."""
    return origin(url) == origin(base_url) and bool(origin(url)[1])


def host_matches(host: str, hosts: frozenset[str]) -> bool:
    """Tell whether ``host`` is one of ``hosts``, where ``.example.com`` stands for every subdomain."""
    host = host.lower()
    return host in hosts or any(h.startswith(".") and host.endswith(h) for h in hosts)


@dataclass(frozen=True)
class UrlRules:
    """
    The URL rules of one connection.

    :param root_url: Scheme and host of the API (or the ``host`` override, with its path prefix), no
        trailing slash; ``next`` links rewritten onto an override keep their path under it.
    :param base_path: Path under ``root_url`` that endpoints are relative to (``""`` for the Platform API).
    :param token_hosts: Hosts that may receive the token over https on port 443 (see
        :meth:`ApiSpec.token_hosts <airflow_provider_clio.apis.ApiSpec.token_hosts>`).
    :param host_override: ``root_url`` is the connection's ``host`` override, not the API's own host.
    """

    root_url: str
    base_path: str = ""
    token_hosts: frozenset[str] = frozenset()
    host_override: bool = False

    @property
    def base_url(self) -> str:
        """The URL endpoints are relative to: ``root_url`` plus ``base_path``, without trailing slash."""
        path = self.base_path.strip("/")
        return f"{self.root_url}/{path}" if path else self.root_url

    def endpoint(self, endpoint: str) -> str:
        """Return the URL of ``endpoint``, a path relative to :attr:`base_url` such as ``grow/contacts``."""
        if not isinstance(endpoint, str) or not endpoint.strip().strip("/"):
            raise ClioConfigError(
                f"endpoint must be a relative path such as 'grow/contacts', got {endpoint!r}"
            )
        path = endpoint.strip().lstrip("/")
        if "://" in path:
            raise ClioConfigError(
                f"endpoint must be relative to the API base URL (e.g. 'grow/contacts'), got {endpoint!r}"
            )
        return f"{self.base_url}/{path}"

    def on_token_host(self, url: str) -> bool:
        """Tell whether ``url`` is ``https`` on port 443 on one of the API's token hosts."""
        scheme, host, port = origin(url)
        return scheme == "https" and port == 443 and bool(host) and host_matches(host, self.token_hosts)

    def may_carry_token(self, url: str) -> bool:
        """
        Tell whether a request to ``url`` may carry the bearer token.

        Always on the API origin; without a ``host`` override also on the API's token hosts.
        """
        return same_origin(url, self.root_url) or (not self.host_override and self.on_token_host(url))

    def resolve(self, url: str, *, what: str = "next URL") -> str:
        """Return the URL to request for ``url`` (see the module docstring), or raise ClioPaginationError."""
        if self.host_override:
            if same_origin(url, self.root_url):
                return url
            if self.on_token_host(url):
                # The proxy fronts the API: keep its path and query exactly, swap only scheme and host.
                parts = urlsplit(url)
                return f"{self.root_url}{parts.path}" + (f"?{parts.query}" if parts.query else "")
        elif self.may_carry_token(url):
            return url
        scheme, host, port = origin(url)
        hosts = ", ".join(sorted(f"*{h}" if h.startswith(".") else h for h in self.token_hosts)) or "none"
        api = f"an https URL on {hosts}" + (" to rewrite onto it" if self.host_override else "")
        raise ClioPaginationError(
            f"refusing to follow a {what} on {scheme}://{host}:{port}: it is neither the API host "
            f"{self.root_url} nor {api}, and the request would carry the access token there"
        )


__all__ = ["UrlRules", "host_matches", "origin", "same_origin"]
