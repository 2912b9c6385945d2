# SPDX-License-Identifier: Apache-2.0
"""Where requests go: endpoint URLs, ``next`` links, and the hosts that may receive the bearer token.

Every API request carries the bearer token, so every URL the hook requests passes :class:`UrlRules`:

- a URL is read with urllib3's parser, the one requests connects with. A URL that parsers may read
  differently (a backslash, whitespace, control characters, userinfo such as ``user@``, or urllib3 and
  :func:`urllib.parse.urlsplit` disagreeing on its origin) is refused with ClioPaginationError: with
  ``https://evil.example\\@api.clio.com/`` one parser sees Clio and the other connects to ``evil.example``;
- without a ``host`` override, the token goes to the API host of the connection's API and region only
  (``https``, port 443, exact host: ``api.clio.com`` for the Platform API in ``us``). A ``next`` link on
  any other host, another region's API host or ``grow.clio.com`` included, is refused;
- with a ``host`` override (a proxy, an emulator), the token goes to the override's exact origin only. A
  ``next`` link on the API host of the connection's region (Clio names its own host, which this deployment
  must not or cannot reach directly) is rewritten onto the override, keeping its path and query byte for
  byte; one on the override's origin is followed as is; anything else is refused.

The hook checks the destination once more on the prepared request, right before sending it
(:meth:`UrlRules.check_destination`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from airflow_provider_clio.exceptions import ClioConfigError, ClioFatalError, ClioPaginationError

_DEFAULT_PORTS = {"http": 80, "https": 443}

# Characters parsers disagree on or that no server-sent URL needs: backslash, whitespace, C0/C1 controls.
_UNSAFE = re.compile(r"[\\\s\x00-\x1f\x7f-\x9f]")


def origin(url: str) -> tuple[str, str, int | None]:
    """
    Return ``(scheme, host, port)`` of ``url`` as urllib3 (and so requests) connects, lower-cased, with
    the scheme's default port filled in; ``("", "", None)`` when urllib3 cannot parse it.
    """
    try:
        parts = parse_url(url)
    except LocationParseError:
        return "", "", None
    scheme = (parts.scheme or "").lower()
    port = parts.port if parts.port is not None else _DEFAULT_PORTS.get(scheme)
    host = (parts.host or "").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # an IPv6 literal, as urlsplit reads it
    return scheme, host, port


def same_origin(url: str, base_url: str) -> bool:
    """Tell whether ``url`` is on the same scheme, host and port as ``base_url`` (urllib3's reading)."""
    return origin(url) == origin(base_url) and bool(origin(url)[1])


def url_problem(url: object) -> str | None:
    """Return why ``url`` may not be requested whatever its host (see the module docstring), or ``None``."""
    if not isinstance(url, str) or not url:
        return f"it is not a URL but {type(url).__name__}"
    unsafe = _UNSAFE.search(url)
    if unsafe:
        char = unsafe.group()
        what = "a backslash" if char == "\\" else "whitespace" if char.isspace() else "a control character"
        return f"it contains {what} (U+{ord(char):04X}), which URL parsers read differently"
    try:
        parts = parse_url(url)
    except LocationParseError:
        return "it cannot be parsed"
    if parts.auth is not None or "@" in (urlsplit(url).netloc or ""):
        return "it carries userinfo (user@host), which is never part of an API URL"
    split = urlsplit(url)
    try:
        port = split.port
    except ValueError:
        return "its port is invalid"
    scheme = split.scheme.lower()
    if (scheme, split.hostname or "", _DEFAULT_PORTS.get(scheme) if port is None else port) != origin(url):
        return "URL parsers disagree on its host"
    return None


@dataclass(frozen=True)
class UrlRules:
    """
    The URL rules of one connection.

    :param root_url: Scheme and host of the API (or the ``host`` override, with its path prefix), no
        trailing slash; ``next`` links rewritten onto an override keep their path under it.
    :param base_path: Path under ``root_url`` that endpoints are relative to (``""`` for the Platform API).
    :param token_hosts: The exact hosts of the connection's API and region that may receive the token over
        https on port 443 (see :meth:`ApiSpec.token_hosts <airflow_provider_clio.apis.ApiSpec.token_hosts>`);
        with a ``host`` override, the hosts whose ``next`` links are rewritten onto it.
    :param host_override: ``root_url`` is the connection's ``host`` override, not the API's own host.
    """

    root_url: str
    base_path: str = ""
    token_hosts: frozenset[str] = frozenset()
    host_override: bool = False

    def __post_init__(self) -> None:
        problem = url_problem(self.root_url)
        if problem is None and urlsplit(self.root_url).query + urlsplit(self.root_url).fragment:
            problem = "it has a query or fragment"
        if problem is not None or origin(self.root_url)[0] not in _DEFAULT_PORTS:
            raise ClioConfigError(f"the API base URL must be a plain http(s) URL: {problem or 'no http(s)'}")

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
        """Tell whether ``url`` is ``https`` on port 443 on one of the API's token hosts (exact match)."""
        scheme, host, port = origin(url)
        return url_problem(url) is None and scheme == "https" and port == 443 and host in self.token_hosts

    def may_carry_token(self, url: str) -> bool:
        """
        Tell whether a request to ``url`` may carry the bearer token.

        On the override's origin when there is one, else on the API's token hosts (https, port 443).
        """
        if url_problem(url) is not None:
            return False
        return same_origin(url, self.root_url) if self.host_override else self.on_token_host(url)

    def check_destination(self, url: str) -> None:
        """
        Raise ClioFatalError unless the token may go to ``url``: the prepared request's URL, just before
        it is sent (the last line of defence after :meth:`resolve`).
        """
        if not self.may_carry_token(url):
            scheme, host, port = origin(url)
            raise ClioFatalError(
                f"refusing to send the access token to {scheme}://{host}:{port}: it is not {self._allowed()}"
            )

    def resolve(self, url: str, *, what: str = "next URL") -> str:
        """Return the URL to request for ``url`` (see the module docstring), or raise ClioPaginationError."""
        problem = url_problem(url)
        if problem is not None:
            raise ClioPaginationError(f"refusing to follow a {what}: {problem}")
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
        raise ClioPaginationError(
            f"refusing to follow a {what} on {scheme}://{host}:{port}: it is not {self._allowed()}, and "
            "the request would carry the access token there"
        )

    def _allowed(self) -> str:
        hosts = ", ".join(f"https://{h}" for h in sorted(self.token_hosts)) or "none"
        if self.host_override:
            return f"the connection's host {self.root_url} (nor the API host {hosts}, rewritten onto it)"
        return f"the API host of the connection's region ({hosts})"


__all__ = ["UrlRules", "origin", "same_origin", "url_problem"]
