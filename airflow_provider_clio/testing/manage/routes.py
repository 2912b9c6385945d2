# SPDX-License-Identifier: Apache-2.0
"""Answer Clio Manage API v4 requests (``/api/v4/...``) and the OAuth requests of Manage applications.

Order of checks on an API request: injected faults, the bearer token (401, OAuth-style body), the
``X-API-VERSION`` header (410), the per-token rate limit (429), then routing (404/405) and parameters
(400, or 422 for offset paging past the cap). Every answer to an authenticated request carries the
``X-RateLimit-*`` headers of the token's window, and every valid-version answer echoes ``X-API-VERSION``.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
from collections.abc import Sequence
from urllib.parse import urlencode

from airflow_provider_clio.testing.faults import FaultInjector
from airflow_provider_clio.testing.manage.data import MANAGE_RESOURCES, MANAGE_SCHEMAS, ManageStore
from airflow_provider_clio.testing.manage.limiter import Admission, TokenWindowLimiter
from airflow_provider_clio.testing.manage.listing import ListParams, ManageQueryError, parse_list_params
from airflow_provider_clio.testing.manage.oauth import INVALID_TOKEN, ManageOAuthServer
from airflow_provider_clio.testing.manage.settings import ManageSettings
from airflow_provider_clio.testing.oauth import AccessGrant, OAuthError
from airflow_provider_clio.testing.query import (
    QueryError,
    Selection,
    encode_page_token,
    parse_fields,
    project,
)
from airflow_provider_clio.testing.routes import Router
from airflow_provider_clio.testing.server import Request, Response, json_response

__all__ = ["API_ROOT", "ManageRouter", "manage_error", "token_id"]

API_ROOT = "/api/v4"
_VERSION = re.compile(r"4\.0\.(\d+)")
_TYPES = {400: "BadRequest", 403: "Forbidden", 404: "RecordNotFound", 405: "MethodNotAllowed", 410: "Gone"}
_TYPES |= {422: "ArgumentError", 429: "RateLimited", 500: "InternalServerError", 503: "ServiceUnavailable"}


def manage_error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """Build a Manage error answer ``{"error": {"type", "message"}}``."""
    body = {"error": {"type": _TYPES.get(status, "Error"), "message": message}}
    return json_response(status, body, headers)


def token_id(token: str) -> str:
    """Return the recorded id of an access token: a short digest, never the secret itself."""
    return "at-" + hashlib.sha256(token.encode()).hexdigest()[:12]


class ManageRouter:
    """Map Manage requests to responses; answer None for requests that are not Manage's.

    :param settings: the mode's settings (version rules, offset cap, ``updated_since`` strictness).
    :param store: the Manage records.
    :param oauth: Manage applications and tokens.
    :param limiter: the per-token window limiter.
    :param faults: the emulator's fault injector (shared with the Platform API).
    """

    def __init__(
        self,
        settings: ManageSettings,
        store: ManageStore,
        oauth: ManageOAuthServer,
        limiter: TokenWindowLimiter,
        faults: FaultInjector,
    ) -> None:
        self.settings = settings
        self.store = store
        self.oauth = oauth
        self.limiter = limiter
        self.faults = faults

    def __call__(self, request: Request, path: str) -> Response | None:
        """Answer a Manage request, or return None to let the Platform router answer it."""
        if path == API_ROOT or path.startswith(API_ROOT + "/"):
            response = self._api(request, path)
        elif path in ("/oauth/token", "/oauth/authorize", "/oauth/deauthorize"):
            found = self._oauth(request, path)
            if found is None:
                return None
            response = found
        else:
            return None
        response.api = "manage"
        return response

    # -- API -----------------------------------------------------------------------------------

    def _api(self, request: Request, path: str) -> Response:
        resource, record = _split(path)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        grant = self.oauth.grant_of(token) if token else None
        app = self.oauth.app(grant.client_id) if grant is not None else None
        decision = self.faults.draw()
        if decision.drop:
            response = Response(0, drop=True)
        elif decision.status is not None and (grant is None or app is None):
            response = self._fault(decision.status, None)
        elif grant is None or app is None:
            response = json_response(
                401, INVALID_TOKEN, [("WWW-Authenticate", 'Bearer error="invalid_token"')]
            )
        else:
            response = self._authorized(request, resource, record, token, app.region, decision.status)
            response.slow_seconds, response.truncate = decision.slow_seconds, decision.truncate
        response.fault, response.resource = decision.kind, resource
        response.page_token = next((v for k, v in request.pairs if k == "page_token"), None)
        if app is not None:
            response.client_id, response.region, response.token_id = (
                app.client_id,
                app.region,
                token_id(token),
            )
        return response

    def _authorized(
        self,
        request: Request,
        resource: str | None,
        record: str | None,
        token: str,
        region: str,
        fault_status: int | None,
    ) -> Response:
        version = request.headers.get("x-api-version", self.settings.api_version).strip()
        tid = token_id(token)
        if not self._version_ok(version):
            current = self.settings.api_version
            response = manage_error(
                410, f"X-API-VERSION {version!r} is invalid or retired (current: {current})"
            )
            response.headers += self.limiter.peek(tid, region, resource, request.wall).headers()
            return response
        if fault_status is not None:
            admission = self.limiter.peek(tid, region, resource, request.wall)
            response = self._fault(fault_status, admission)
        else:
            admission = self.limiter.acquire(tid, region, resource, request.wall)
            if not admission.admitted:
                response = manage_error(
                    429, f"Rate limit of {admission.limit} requests per window exceeded for this token"
                )
            else:
                response = self._route(request, resource, record, version)
        response.headers += [*admission.headers(), ("X-API-VERSION", version)]
        return response

    def _fault(self, status: int, admission: Admission | None) -> Response:
        response = manage_error(status, "Injected fault")
        retry_after = self.faults.faults.retry_after
        if status == 429:
            window_left = admission.retry_after if admission is not None else 1
            seconds = window_left if retry_after is None else retry_after
            response.headers.append(("Retry-After", f"{seconds:g}"))
        return response

    def _version_ok(self, version: str) -> bool:
        match, current = _VERSION.fullmatch(version), _VERSION.fullmatch(self.settings.api_version)
        if match is None or current is None or version in self.settings.retired_versions:
            return False
        return int(match.group(1)) <= int(current.group(1))

    def _route(self, request: Request, resource: str | None, record: str | None, version: str) -> Response:
        if resource is None:
            return manage_error(404, f"No route matches {request.path}")
        if request.method != "GET":
            return manage_error(405, f"{request.method} is not supported by the emulator")
        try:
            if record is None:
                return self._list(request, resource, version)
            return self._single(request, resource, record, version)
        except ManageQueryError as exc:
            return manage_error(exc.status, str(exc))
        except QueryError as exc:
            return manage_error(400, str(exc))

    def _list(self, request: Request, resource: str, version: str) -> Response:
        params = parse_list_params(resource, request.pairs, self.settings, _filters_hash(resource, request))
        ids = self.store.scan(
            resource,
            params.after_id,
            params.limit + 1,
            skip=params.offset or 0,
            updated_after_us=params.updated_after_us,
            created_since_us=params.created_since_us,
            ids=params.ids,
        )
        page, more = ids[: params.limit], len(ids) > params.limit
        data = [self._render(resource, i, params.fields, version) for i in page]
        paging: dict[str, str] = {}
        if more:
            paging["next"] = _next_url(request, params, page[-1], _filters_hash(resource, request))
        return json_response(200, {"data": data, "meta": {"paging": paging}})

    def _single(self, request: Request, resource: str, raw_id: str, version: str) -> Response:
        params = dict(request.pairs)
        record_id = int(raw_id) if raw_id.isdigit() else 0
        if not self.store.exists(resource, record_id):
            return manage_error(404, f"{resource.rstrip('s').capitalize()} not found")
        etag = self.store.etag(resource, record_id)
        modified = email.utils.formatdate(
            self.store.updated_us(resource, record_id) // 1_000_000, usegmt=True
        )
        headers = [("ETag", etag), ("Last-Modified", modified)]
        tags = {t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")}
        if etag in tags or "*" in tags:
            return Response(304, b"", headers)
        data = self._render(resource, record_id, params.get("fields"), version)
        return json_response(200, {"data": data}, headers)

    def _render(self, resource: str, record_id: int, fields: str | None, version: str) -> dict[str, object]:
        schema = MANAGE_SCHEMAS[resource]
        if fields is None:
            selection: Selection = (("id", None), ("etag", None))
        else:
            # A nested record named without braces answers its defaults: its id.
            selection = tuple(
                (name, ("id",) if sub is None and schema[name] is not None else sub)
                for name, sub in parse_fields(fields, schema)
            )
        out = project(self.store.render(resource, record_id), selection)
        if resource == "activities" and isinstance(out.get("quantity"), int):
            match = _VERSION.fullmatch(version)
            if match is not None and int(match.group(1)) < 4:
                out["quantity"] = round(out["quantity"] / 3600, 4)  # hours before 4.0.4
        return out

    # -- OAuth ---------------------------------------------------------------------------------

    def _oauth(self, request: Request, path: str) -> Response | None:
        if path == "/oauth/authorize":
            params = dict(request.pairs)
            if self.oauth.app(params.get("client_id", "")) is None:
                return None
            return self._authorize(params)
        if path == "/oauth/deauthorize":
            return self._deauthorize(request)
        try:
            form = Router._form(request)
        except OAuthError:
            return None
        app = self.oauth.app(form.get("client_id", ""))
        if app is None:
            return None
        try:
            response = json_response(200, self.oauth.token(form), [("Cache-Control", "no-store")])
        except OAuthError as exc:
            response = json_response(exc.status, exc.body())
        response.client_id, response.region = app.client_id, app.region
        return response

    def _authorize(self, params: dict[str, str]) -> Response:
        # Manage has no scope parameter: the app's permissions are fixed at registration.
        try:
            location = self.oauth.authorize_redirect({k: v for k, v in params.items() if k != "scope"})
        except OAuthError as exc:
            return json_response(exc.status, exc.body())
        return Response(302, b"", [("Location", location)])

    def _deauthorize(self, request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        grant: AccessGrant | None = self.oauth.grant_of(token.strip()) if scheme.lower() == "bearer" else None
        if grant is None:
            return json_response(401, INVALID_TOKEN)
        form = dict(Router._form(request))
        self.oauth.revoke(form.get("token", token.strip()))
        return json_response(200, {})


def _split(path: str) -> tuple[str | None, str | None]:
    """Return ``(resource, record id or None)`` of ``/api/v4/{resource}[/{id}][.json]``."""
    parts = path.removesuffix(".json").split("/")[3:]
    if not parts or parts[0] not in MANAGE_RESOURCES or len(parts) > 2:
        return None, None
    return parts[0], (parts[1] if len(parts) == 2 else None)


def _filters_hash(resource: str, request: Request) -> str:
    # Every parameter but the cursor: a page token is only valid with the query that produced it.
    canonical = sorted((k, v) for k, v in request.pairs if k not in ("page_token", "offset"))
    return hashlib.sha256(json.dumps([resource, canonical]).encode()).hexdigest()[:16]


def _next_url(request: Request, params: ListParams, last_id: int, filters_hash: str) -> str:
    key, value = (
        ("offset", str((params.offset or 0) + params.limit))
        if params.offset is not None
        else ("page_token", encode_page_token(last_id, filters_hash))
    )
    kept: Sequence[tuple[str, str]] = [(k, v) for k, v in request.pairs if k != key]
    return f"http://{request.host}{request.path}?{urlencode([*kept, (key, value)])}"
