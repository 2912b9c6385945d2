# SPDX-License-Identifier: Apache-2.0
"""The Clio hook: a connection, one request path, and the pages and records it reads.

Every request goes through :meth:`ClioHook._send`: the API's pacer (API calls only) → bearer token (only to
the hosts :class:`~airflow_provider_clio.urls.UrlRules` allows) → ``requests.Session.request`` → the pacer
observes the response. :func:`~airflow_provider_clio.responses.classify` then turns it into a body or a typed
error of :mod:`airflow_provider_clio.exceptions`, and :class:`~airflow_provider_clio.retrying.RetrySettings`
retries the retryable ones. The OAuth token endpoint uses the same path (without the pacer) through the
``post`` callable handed to :class:`~airflow_provider_clio.auth.TokenManager`.

Over 400 lines: the public hook API's docstrings plus the one request path, kept together on purpose.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import requests
from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret
from airflow.sdk.observability import stats
from requests.adapters import HTTPAdapter

from airflow_provider_clio import __version__
from airflow_provider_clio.auth import TokenManager, TokenSet, VariableTokenStore
from airflow_provider_clio.connection import ClioConfig
from airflow_provider_clio.exceptions import (
    ClioAuthError,
    ClioConfigError,
    ClioError,
    ClioFatalError,
    ClioRetryableError,
    ClioTransientError,
    scrub,
    truncate,
)
from airflow_provider_clio.fields import normalize_fields
from airflow_provider_clio.lookups import RecordLookup
from airflow_provider_clio.pagination import CursorTracker, Page, page_records
from airflow_provider_clio.pools import current_task, resolve_pool_slots
from airflow_provider_clio.rate_limit import PacerRequest
from airflow_provider_clio.responses import Answer, classify
from airflow_provider_clio.retrying import RetrySettings, log_before_sleep
from airflow_provider_clio.urls import same_origin

if TYPE_CHECKING:
    from airflow_provider_clio.auth import TokenStore
    from airflow_provider_clio.rate_limit import Pacer

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a TCP/TLS connection (capped by the hook's ``timeout``)."""

_ID_SEGMENT = re.compile(r"^\d+$")


def _user_agent() -> str:
    try:
        from airflow import __version__ as airflow_version
    except ImportError:  # pragma: no cover - airflow is a hard dependency
        airflow_version = "unknown"
    return f"airflow-provider-clio/{__version__} (apache-airflow/{airflow_version})"


@dataclass
class HookStats:
    """
    Counters of one hook's traffic (also emitted as Airflow metrics).

    :param requests: API requests sent (every attempt counts, the token endpoint does not).
    :param rate_limited: 429 answers received.
    :param retries: In-request retries made after retryable errors.
    :param pages: List pages fetched.
    :param records: Records yielded by pagination.
    :param limiter_wait_seconds: Total time spent waiting for the pacer.
    :param token_requests: Calls to the OAuth token endpoint.
    """

    requests: int = 0
    rate_limited: int = 0
    retries: int = 0
    pages: int = 0
    records: int = 0
    limiter_wait_seconds: float = 0.0
    token_requests: int = 0


@dataclass(frozen=True)
class RecordResult:
    """
    The answer of :meth:`ClioHook.get_record`.

    :param data: The record, ``None`` when ``not_modified``.
    :param etag: The record's ``ETag`` (the one sent when not modified and the server echoed none).
    :param not_modified: The server answered 304: the caller's copy (``etag``) is current.
    :param last_modified: The ``Last-Modified`` header, if sent.
    """

    data: dict[str, Any] | None
    etag: str | None
    not_modified: bool = False
    last_modified: str | None = None


class _CallState:
    """
    Per-call memory across retries: a 401 buys one token refresh per call, not one per attempt.

    :param token: Send exactly this access token and never refresh it (``test_connection``).
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.refreshed = False


class ClioHook(BaseHook):
    """
    Talk to a Clio API within its rate limit.

    Reads the OAuth client and tokens from an Airflow connection (whose ``api`` extra picks the API, default
    the Platform API), paces every request with the API's pacer (for the Platform API a limiter shared by all
    hooks of the same application and region in the process, ``pool_slots * requests_per_slot`` req/s),
    refreshes the access token, retries 429/5xx/transport errors with backoff, and raises typed errors
    (:mod:`airflow_provider_clio.exceptions`) for everything else.

    .. code-block:: python

        hook = ClioHook("clio_default")
        for contact in hook.paginate("grow/contacts", fields=["id", "name", "updated_at"]):
            ...

    :param clio_conn_id: The Airflow connection id (conn type ``clio``).
    :param pool_slots: Pool slots this work holds; the request rate is ``pool_slots * requests_per_slot``.
        Default: the running task's ``pool_slots``, or 1 outside a task.
    :param token_store: Where rotated tokens are persisted; default :class:`VariableTokenStore`.
    :param retry: In-request retry policy; default :class:`RetrySettings()`.
    :param timeout: Read timeout of one request in seconds (the connect timeout is at most 10 s).
    :param enforce_pool: Inside an Airflow task, refuse (ClioConfigError, before any request) when the task
        runs in another pool than the one holding the connection's rate budget (:attr:`pool_name`): its
        requests would not be counted there. Pass ``False`` only when you account for the budget yourself.
    :param clock: Monotonic clock for pacing and progress logs (injected by tests).
    :param sleep: Sleep function for pacing and backoff (injected by tests).
    """

    conn_name_attr = "clio_conn_id"
    default_conn_name = "clio_default"
    conn_type = "clio"
    hook_name = "Clio"

    def __init__(
        self,
        clio_conn_id: str = default_conn_name,
        *,
        pool_slots: int | None = None,
        token_store: TokenStore | None = None,
        retry: RetrySettings | None = None,
        timeout: float = 60.0,
        enforce_pool: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        self.clio_conn_id = clio_conn_id
        if pool_slots is not None:
            resolve_pool_slots(pool_slots)  # validate now, before any request
        self._pool_slots_arg = pool_slots
        self._token_store = token_store
        self.retry_settings = retry if retry is not None else RetrySettings()
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ClioConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self._clock = clock
        self._sleep = sleep
        self.stats = HookStats()
        self._seen_tokens: set[str] = set()
        self._pool_checked = not enforce_pool

    # -- the connection --------------------------------------------------------------------------------

    @cached_property
    def config(self) -> ClioConfig:
        """The validated connection settings (read on first use)."""
        return ClioConfig.from_connection(self.get_connection(self.clio_conn_id))

    @property
    def region(self) -> str:
        """The connection's region: ``us``, ``ca``, ``eu`` or ``au``."""
        return self.config.region

    @property
    def base_url(self) -> str:
        """The API base URL endpoints are relative to."""
        return self.config.base_url

    @property
    def pool_name(self) -> str:
        """The Airflow pool this connection's tasks should run in (``clio_<region>`` by default)."""
        return self.config.pool

    @cached_property
    def pool_slots(self) -> int:
        """The pool slots this hook's rate is based on."""
        return resolve_pool_slots(self._pool_slots_arg)

    @property
    def rate(self) -> float:
        """Requests per second this hook paces at: ``pool_slots * requests_per_slot``."""
        return self.pool_slots * self.config.requests_per_slot

    @cached_property
    def pacer(self) -> Pacer:
        """The API's pacer for this application, region and rate (shared within the process)."""
        config = self.config
        request = PacerRequest(
            config.client_id,
            config.region,
            self.rate,
            clock=self._clock,
            pool_slots=self.pool_slots,
            pool_size=config.pool_size,
            pool=config.pool,
        )
        # The rate this task may send at; summed over a region's tasks it is the share of the limit in use.
        # Achieved utilisation is rate(clio.requests) / limit (docs/priority-and-alerts.md), not a gauge:
        # a per-process gauge would be overwritten by whichever worker reported last.
        stats.gauge("clio.paced_rate", self.rate, tags={"region": config.region, "pool": config.pool})
        return config.api.make_pacer(request)

    @cached_property
    def session(self) -> requests.Session:
        """The HTTP session every request goes through."""
        session = requests.Session()
        session.headers.update({"User-Agent": _user_agent(), "Accept": "application/json"})
        # Retries are ours (they must pass the pacer again), so urllib3 must not retry behind our back.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=8, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    @cached_property
    def token_manager(self) -> TokenManager:
        """The token manager of this connection (refreshes through :meth:`post_form`)."""
        config = self.config
        return TokenManager(
            conn_id=config.conn_id,
            client_id=config.client_id,
            client_secret=config.client_secret,
            token_url=config.token_url,
            initial=TokenSet(
                access_token=config.access_token,
                refresh_token=config.refresh_token or "",
                expires_at=config.expires_at,
            ),
            store=self._token_store if self._token_store is not None else VariableTokenStore(),
            post=self.post_form,
            sleep=self._sleep,
            rotates_refresh_token=config.api.rotates_refresh_token,
            parse_error=config.api.parse_error,
        )

    def close(self) -> None:
        """Close the HTTP session."""
        if "session" in self.__dict__:
            self.session.close()

    def __enter__(self) -> ClioHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public API ------------------------------------------------------------------------------------

    def get(self, endpoint: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """
        Send one GET to ``endpoint`` (relative to the API base) and return the JSON object it answers.

        A ``fields`` entry in ``params`` is validated and normalised like the ``fields`` argument of
        :meth:`paginate`.
        """
        query = self._query(None, params)
        answer = self._call("GET", self.config.urls.endpoint(endpoint), label=_label(endpoint), params=query)
        if not isinstance(answer.body, dict):
            raise ClioFatalError(
                f"expected a JSON object, got {type(answer.body).__name__}", endpoint=_label(endpoint)
            )
        return answer.body

    def get_record(
        self,
        endpoint: str,
        record_id: int | str,
        fields: str | Sequence[str] | None = None,
        etag: str | None = None,
    ) -> RecordResult:
        """
        Fetch one record, ``GET {endpoint}/{record_id}``; with ``etag``, a 304 gives ``not_modified=True``.

        :param endpoint: The list endpoint, e.g. ``grow/contacts``.
        :param record_id: The record's id.
        :param fields: Fields to select (list or string form).
        :param etag: The ``ETag`` of the caller's copy, sent as ``If-None-Match``.
        """
        query = self._query(fields, None)
        if (
            isinstance(record_id, bool)
            or not isinstance(record_id, int | str)
            or str(record_id).strip() == ""
        ):
            raise ClioConfigError(f"record_id must be an int or a non-empty string, got {record_id!r}")
        url = f"{self.config.urls.endpoint(endpoint).rstrip('/')}/{quote(str(record_id).strip(), safe='')}"
        label = f"{_label(endpoint)}/{{id}}"  # one metric series per endpoint, not per record
        headers = {"If-None-Match": etag} if etag else None
        answer = self._call("GET", url, label=label, params=query, headers=headers, allow_not_modified=True)
        response = answer.response
        last_modified = response.headers.get("Last-Modified")
        if response.status_code == 304:
            return RecordResult(None, response.headers.get("ETag") or etag, True, last_modified)
        data = answer.body.get("data") if isinstance(answer.body, dict) else None
        if not isinstance(data, dict):
            raise ClioFatalError("expected a single-record response with a 'data' object", endpoint=label)
        return RecordResult(data, response.headers.get("ETag"), False, last_modified)

    def get_records(
        self,
        endpoint: str,
        ids: Any,
        fields: str | Sequence[str] | None = None,
        *,
        params: Mapping[str, Any] | None = None,
    ) -> RecordLookup:
        """
        Look up known records by id, at most 50 per list request (``ids[]``), instead of one GET each.

        The ids are validated now (ClioConfigError names a bad one); nothing is sent until the result is
        read. Read ``lookup.records()`` (or ``lookup.pages()``) once, then ``lookup.missing`` lists the ids
        Clio did not return (deleted or not visible)::

            lookup = hook.get_records("grow/contacts", [7, 9, 12], fields=["id", "name"])
            for contact in lookup.records():
                ...
            gone = lookup.missing

        :param endpoint: The list endpoint, e.g. ``grow/contacts``.
        :param ids: Ints or digit strings (repeats are looked up once), or their text form ``"[1, 2]"``.
        :param fields: Fields to select; ``id`` is added when missing (records are matched on it).
        :param params: Other list parameters, e.g. ``include`` (see
            :class:`~airflow_provider_clio.lookups.RecordLookup`).
        """
        return RecordLookup(self, endpoint, ids, fields, params)

    def iter_pages(
        self,
        endpoint: str,
        fields: str | Sequence[str] | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        start_url: str | None = None,
    ) -> Iterator[Page]:
        """
        Yield the pages of a list endpoint, following ``meta.paging.next`` exactly as the server sends it.

        ``fields`` and ``params`` go into the first request only; later pages use the ``next`` URL's path
        and query as is (they carry them). A ``next`` URL must name the API host of the connection's region
        (with a ``host`` override it is rewritten onto the override) or the override itself (see
        :mod:`~airflow_provider_clio.urls`). The iteration stops when ``next`` is absent or null, and raises
        ClioPaginationError on a loop, on 20 empty pages in a row, or on a ``next`` or ``start_url`` that
        names any other host or that parsers could read differently (backslash, userinfo, whitespace).

        :param endpoint: The list endpoint, e.g. ``grow/contacts``.
        :param fields: Fields to select, ``["id", "client{id,name}"]`` or ``"id,client{id,name}"``.
        :param params: Filters such as ``updated_since`` or ``ids[]``.
        :param start_url: Resume from this checkpointed ``next`` URL instead of the first page (``fields``
            and ``params`` are then only validated: the URL already carries them).
        """
        query = self._query(fields, params)
        label = _label(endpoint)
        tracker = CursorTracker(self.config.urls)
        first_params: dict[str, Any] | None = None
        if start_url is not None:
            url: str | None = tracker.resolve(start_url, what="start URL")
        else:
            url, first_params = self.config.urls.endpoint(endpoint), self.config.api.list_query(query)
        progress = _Progress(self, label)
        while url is not None:
            if first_params is None:
                tracker.visit(url)
            answer = self._call("GET", url, label=label, params=first_params)
            page_url = answer.response.url or url
            if first_params is not None:
                tracker.visit(page_url)
                first_params = None
            records = page_records(answer.body, page_url)
            url = tracker.follow(answer.body, page_url)
            yield Page(records=records, next_url=url, number=progress.page(len(records), url), url=page_url)

    def paginate(
        self,
        endpoint: str,
        fields: str | Sequence[str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield every record of a list endpoint, one page in memory at a time (see :meth:`iter_pages`)."""
        for page in self.iter_pages(endpoint, fields, params):
            yield from page.records

    def test_connection(self) -> tuple[bool, str]:
        """
        Check the connection without spending its refresh token and report ``(ok, message)``; never raises.

        Airflow's connection "Test" button runs this under a random, temporary connection id, under which no
        stored tokens exist. Refreshing there would spend the connection's single-use refresh token and
        store the rotated pair under the temporary id, leaving the real connection with a revoked token. So
        this makes one API call only with an access token that is still valid (token store or connection
        extras), never refreshing it; without one, the token manager verifies the client credentials at the
        token endpoint with a deliberately invalid refresh token (Clio authenticates the client first:
        ``invalid_grant`` means the id and secret were accepted, ``invalid_client`` that they were not).
        :meth:`check_connection` (``airflow clio check``) does the full authenticated check.
        """
        return self._report(self._test_without_refresh)

    def check_connection(self) -> tuple[bool, str]:
        """
        Make one authenticated API call, refreshing the access token if needed; report ``(ok, message)``.

        Never raises. Unlike :meth:`test_connection` this may spend (rotate) the refresh token and store the
        new pair under this hook's connection id, so call it with the real connection id only (it is what
        ``airflow clio check`` runs).
        """

        def check() -> tuple[bool, str]:
            config = self.config
            self.get(config.api.probe_endpoint, params={"fields": "id"})
            return True, f"{self._connected()}; {self._pacing()}"

        return self._report(check)

    def post_form(self, url: str, form: dict[str, str]) -> requests.Response:
        """
        POST a form to the OAuth token endpoint and return the raw response (TokenManager's ``post``).

        Same session, timeouts and transport-error classification as API calls; no pacer (Clio does not
        count token calls), no bearer token, no retry (a retried refresh would spend a rotated token twice).
        """
        if not same_origin(url, self.config.token_url):
            raise ClioConfigError("the OAuth form may only be posted to the connection's token endpoint")
        self.stats.token_requests += 1
        return self._send("POST", url, label="oauth/token", data=form, api=False)

    # -- connection test -------------------------------------------------------------------------------

    def _report(self, check: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
        try:
            return check()
        except ClioError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            return False, truncate(scrub(f"{type(exc).__name__}: {exc}", self._secrets()))

    def _test_without_refresh(self) -> tuple[bool, str]:
        config = self.config
        spent = "the rotating refresh token" if config.api.rotates_refresh_token else "the refresh token"
        untouched = (
            f"; {spent} is not spent by this test: run "
            "`airflow clio check --conn-id <connection id>` for a full check"
        )
        rejected = ""
        token = self.token_manager.usable_access_token()
        if token is not None:
            probe = config.api.probe_endpoint
            try:
                url = config.urls.endpoint(probe)
                self._call("GET", url, label=probe, params={"fields": "id"}, token=self._remember(token))
            except ClioAuthError as exc:
                if exc.status_code != 401:
                    raise
                rejected = "The known access token was rejected (HTTP 401; it may have expired). "
            else:
                return True, f"{self._connected()} with the current access token; {self._pacing()}{untouched}"
        self.token_manager.verify_client_credentials()
        return True, (
            f"{rejected}Clio's token endpoint {config.token_url} accepted the client credentials of "
            f"application {config.client_id} (region {config.region}); no API call was made{untouched}"
        )

    def _connected(self) -> str:
        config = self.config
        return f"Connected to Clio ({config.region}) at {config.base_url} as application {config.client_id}"

    def _pacing(self) -> str:
        config = self.config
        if config.api.rotates_refresh_token:  # Platform: a fixed rate per pool slot
            return f"pool {config.pool}, {self.rate:g} req/s"
        # Manage: the rate follows the token's X-RateLimit-* budget; a slot is a share of it.
        return f"pool {config.pool}, {self.pool_slots} of {config.pool_size} slots of the token's budget"

    # -- the one request path --------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        *,
        label: str,
        api: bool = True,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        token: str | None = None,
    ) -> requests.Response:
        """Pool check → prepare (bearer token) → pacer (API calls) → send → pacer observes the response."""
        self._check_pool()
        # The API's own headers (a pinned version) go to the API only, not to the OAuth token endpoint.
        headers = {**(self.config.api.headers if api else {}), **(headers or {})}
        prepared = self._prepare(
            method, url, label=label, params=params, data=data, headers=headers, token=token
        )
        if not api:
            return self._transmit(prepared, label=label)
        waited = self.pacer.acquire(self._sleep)
        self.stats.limiter_wait_seconds += waited
        stats.timing("clio.limiter_wait", timedelta(seconds=waited), tags={"region": self.region})
        tags = {"region": self.region, "endpoint": label}
        status = "error"
        try:
            response = self._transmit(prepared, label=label)
            status = str(response.status_code)
        finally:
            # The server stamped the request before this moment: the limiter's window guard needs it.
            self.pacer.release()
            self.stats.requests += 1
            stats.incr("clio.requests", tags={**tags, "status": status})
        self.pacer.observe(response)
        if response.status_code == 429:
            self.stats.rate_limited += 1
            stats.incr("clio.rate_limited", tags=tags)
        return response

    def _prepare(
        self,
        method: str,
        url: str,
        *,
        label: str,
        params: Mapping[str, Any] | None,
        data: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        token: str | None,
    ) -> requests.PreparedRequest:
        """Build the request exactly as it will be sent; the token only after its URL passed the check."""
        request = requests.Request(method, url, params=params, data=data, headers=dict(headers or {}))
        try:
            prepared = self.session.prepare_request(request)
        except requests.RequestException as exc:
            raise ClioConfigError(
                truncate(scrub(f"cannot send the request: {type(exc).__name__}: {exc}", self._secrets())),
                endpoint=label,
            ) from exc
        if token is not None:
            # The prepared URL, read by urllib3's parser: the host and port the connection will really go to.
            self.config.urls.check_destination(prepared.url or "")
            prepared.headers["Authorization"] = f"Bearer {token}"
        return prepared

    def _transmit(self, prepared: requests.PreparedRequest, *, label: str) -> requests.Response:
        session = self.session
        try:
            # What Session.request does after preparing: proxies and TLS settings from the environment.
            settings = session.merge_environment_settings(prepared.url, {}, None, None, None)
            return session.send(
                prepared,
                timeout=(min(CONNECT_TIMEOUT, self.timeout), self.timeout),
                allow_redirects=False,
                **settings,
            )
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ) as exc:
            raise ClioTransientError(
                truncate(scrub(f"{type(exc).__name__}: {exc}", self._secrets())), endpoint=label
            ) from exc
        except requests.RequestException as exc:
            raise ClioConfigError(
                truncate(scrub(f"cannot send the request: {type(exc).__name__}: {exc}", self._secrets())),
                endpoint=label,
            ) from exc

    def _attempt(
        self,
        method: str,
        url: str,
        *,
        label: str,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        allow_not_modified: bool,
        state: _CallState,
    ) -> Answer:
        token = state.token if state.token is not None else self._access_token()
        response = self._send(method, url, label=label, params=params, headers=headers, token=token)
        if response.status_code == 401 and state.token is None and not state.refreshed:
            self.log.info("Clio %s answered 401; refreshing the access token once and resending", label)
            token = self._remember(self.token_manager.refresh_after_401(token))
            # Only a refresh that happened counts: after a retryable failure (a lost refresh race) the next
            # attempt must be allowed to refresh again, or its 401 would read as "rejected after a refresh".
            state.refreshed = True
            response = self._send(method, url, label=label, params=params, headers=headers, token=token)
        return classify(
            response,
            label=label,
            parse_error=self.config.api.error_parser(response.status_code),
            secrets=self._secrets(),
            allow_not_modified=allow_not_modified,
        )

    def _call(
        self,
        method: str,
        url: str,
        *,
        label: str,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        allow_not_modified: bool = False,
        token: str | None = None,
    ) -> Answer:
        """Run one logical request with the in-request retry policy (with ``token``: no refresh on 401)."""
        warn = log_before_sleep(self.log.warning, label, self.retry_settings.max_attempts)

        def before_sleep(retry_state: Any) -> None:
            self.stats.retries += 1
            warn(retry_state)

        retrying = self.retry_settings.retrying(sleep=self._sleep, before_sleep=before_sleep)
        state = _CallState(token)
        try:
            return retrying(
                self._attempt,
                method,
                url,
                label=label,
                params=params,
                headers=headers,
                allow_not_modified=allow_not_modified,
                state=state,
            )
        except ClioRetryableError as exc:
            self.log.warning(
                "Clio %s: giving up after %d attempt(s) and %.1f s of backoff: %s. Airflow's task retry "
                "takes over.",
                label,
                retrying.statistics.get("attempt_number", 1),
                retrying.statistics.get("idle_for", 0.0),
                exc,
            )
            raise

    # -- helpers ---------------------------------------------------------------------------------------

    def _check_pool(self) -> None:
        """Inside a task, fail unless it runs in the pool holding this connection's budget (checked once)."""
        if self._pool_checked:
            return
        task = current_task()
        pool = getattr(task, "pool", None)
        # Outside a task (CLI, triggerer, scripts) there is no pool to check: a deferred sensor's trigger
        # polls on the slot its deferred task keeps (pools with include_deferred).
        if task is not None and isinstance(pool, str) and pool != self.pool_name:
            raise ClioConfigError(
                f"Task {getattr(task, 'task_id', '?')!r} runs in pool {pool!r}, but the rate budget of "
                f"connection {self.clio_conn_id!r} is held by pool {self.pool_name!r}: requests sent from "
                f"{pool!r} are not counted against it. Run the task with pool={self.pool_name!r}, or pass "
                "ClioHook(..., enforce_pool=False) if you account for the budget yourself"
            )
        self._pool_checked = True

    def _access_token(self) -> str:
        return self._remember(self.token_manager.access_token())

    def _remember(self, token: str) -> str:
        if token not in self._seen_tokens:
            mask_secret(token)
            self._seen_tokens.add(token)
        return token

    def _secrets(self) -> list[str | None]:
        secrets: list[str | None] = list(self._seen_tokens)
        config = self.__dict__.get("config")
        if config is not None:
            secrets += [config.client_secret, config.refresh_token, config.access_token]
        manager = self.__dict__.get("token_manager")
        if manager is not None:
            # Includes refresh tokens rotated away in this process, which an error body may still echo.
            secrets += manager.secrets()
        return secrets

    @staticmethod
    def _query(fields: str | Sequence[str] | None, params: Mapping[str, Any] | None) -> dict[str, Any]:
        query = dict(params or {})
        selection = normalize_fields(fields)
        if "fields" in query:
            if selection is not None:
                raise ClioConfigError(
                    "fields: pass them either as the fields argument or in params, not both"
                )
            selection = normalize_fields(query.pop("fields"))
        if "page_token" in query:
            raise ClioConfigError("params: page_token is managed by pagination; pass start_url to resume")
        if selection is not None:
            query["fields"] = selection
        return query


class _Progress:
    """Count one ``iter_pages`` run's pages and records, and log a progress line per page."""

    def __init__(self, hook: ClioHook, label: str) -> None:
        self.hook = hook
        self.label = label
        self.number = 0
        self.records = 0
        self.started = hook._clock()
        self.requests_before = hook.stats.requests

    def page(self, records: int, next_url: str | None) -> int:
        """Count a page of ``records`` records and log it; return its 1-based number."""
        hook = self.hook
        self.number += 1
        self.records += records
        hook.stats.pages += 1
        hook.stats.records += records
        elapsed = hook._clock() - self.started
        sent = hook.stats.requests - self.requests_before
        hook.log.info(
            "Clio %s: page %d, %d records (%d so far), %d requests in %.1f s (%s)%s",
            self.label,
            self.number,
            records,
            self.records,
            sent,
            elapsed,
            # A rate over less than a second is noise (the first page always looks "fast").
            f"{sent / elapsed:.2f} req/s" if elapsed >= 1.0 else "rate after 1 s",
            "" if next_url else ", last page",
        )
        return self.number


def _label(endpoint: str) -> str:
    """Return the metric/log label of an endpoint: its path with record ids replaced by ``{id}``."""
    path = urlsplit(endpoint).path if "://" in endpoint else endpoint.split("?", 1)[0]
    segments = [s for s in path.strip().strip("/").split("/") if s]
    return "/".join("{id}" if _ID_SEGMENT.match(s) else s for s in segments) or "/"


__all__ = ["ClioConfig", "ClioHook", "HookStats", "RecordResult", "RetrySettings"]
