# SPDX-License-Identifier: Apache-2.0
"""Answer the emulator's endpoints: the Grow API, the OAuth server and the ``/_emulator`` admin surface.

Order of checks on an API request, mirroring a real gateway: injected faults (outage, drop, error), then
the bearer token (401), then the rate limiter (429; only admitted requests count), then routing (404),
scopes (403) and parameters (400).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.utils
import hashlib
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from airflow_provider_clio.testing.data import RESOURCES, SCHEMAS, RecordStore
from airflow_provider_clio.testing.faults import FaultInjector, Faults, Latency, LatencyInjector
from airflow_provider_clio.testing.limiter import SlidingWindowLimiter
from airflow_provider_clio.testing.oauth import AccessGrant, OAuthError, OAuthServer, scope_allows
from airflow_provider_clio.testing.query import (
    QueryError,
    encode_page_token,
    next_url,
    parse_fields,
    parse_list_query,
    project,
    reject_repeated,
)
from airflow_provider_clio.testing.recorder import RequestLog
from airflow_provider_clio.testing.server import Request, Response, json_response

__all__ = ["Router"]

_TOO_MANY = {"message": "Too Many Requests"}
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _platform_error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return json_response(status, {"error": {"status": str(status), "message": message}}, headers)


class Router:
    """Map requests to responses using the emulator's state.

    :param store: the records.
    :param oauth: apps and tokens.
    :param limiter: the per-(client_id, region) sliding-window limiter.
    :param faults: the fault injector.
    :param log: the request log (for the admin endpoints).
    :param page_size: default records per page.
    :param latency: the injected network latency, for the admin endpoints (the server applies it).
    """

    def __init__(
        self,
        store: RecordStore,
        oauth: OAuthServer,
        limiter: SlidingWindowLimiter,
        faults: FaultInjector,
        log: RequestLog,
        page_size: int,
        latency: LatencyInjector | None = None,
    ) -> None:
        self.latency = latency or LatencyInjector()
        self.store = store
        self.oauth = oauth
        self.limiter = limiter
        self.faults = faults
        self.log = log
        self.page_size = page_size

    # Set by ClioEmulator: answers Manage v4 requests (None lets this router answer).
    manage: Callable[[Request, str], Response | None] | None = None

    def __call__(self, request: Request) -> Response:
        """Answer one request."""
        path = request.path.rstrip("/") or "/"
        if self.manage is not None and (answer := self.manage(request, path)) is not None:
            return answer
        if path == "/grow" or path.startswith("/grow/"):
            return self._api(request, path)
        if path.startswith("/oauth/"):
            return self._oauth(request, path)
        if path.startswith("/_emulator/"):
            return self._admin(request, path)
        return _platform_error(404, f"no route for {request.path}")

    # -- API -----------------------------------------------------------------------------------

    def _api(self, request: Request, path: str) -> Response:
        resource, rest = _split_api_path(path)
        grant, reason = self._authenticate(request)
        app = self.oauth.app(grant.client_id) if grant is not None else None
        decision = self.faults.draw()
        if decision.drop:
            response = Response(0, drop=True)
        elif decision.status is not None:
            response = self._error(decision.status)
        else:
            if grant is None or app is None:
                response = _platform_error(
                    401,
                    reason or "The access token is invalid",
                    [("WWW-Authenticate", 'Bearer error="invalid_token"')],
                )
            elif not self.limiter.try_acquire((app.client_id, app.region), at=request.t):
                response = self._too_many()
            elif resource is None or rest is None:
                response = _platform_error(404, f"no such endpoint: {request.path}")
            else:
                response = self._resource(request, resource, rest, grant.scopes)
            response.slow_seconds = decision.slow_seconds
            response.truncate = decision.truncate
        # Faulted requests are attributed too (when their token is valid): the client did send them.
        response.fault, response.api = decision.kind, "platform"
        response.resource = resource
        response.page_token = next((v for k, v in request.pairs if k == "page_token"), None)
        if app is not None:
            response.client_id, response.region = app.client_id, app.region
        return response

    def _error(self, status: int) -> Response:
        if status == 429:
            return self._too_many()
        return _platform_error(status, _REASONS.get(status, "Error"))

    def _too_many(self) -> Response:
        retry_after = self.faults.faults.retry_after
        headers = [] if retry_after is None else [("Retry-After", f"{retry_after:g}")]
        return json_response(429, _TOO_MANY, headers)

    def _authenticate(self, request: Request) -> tuple[AccessGrant | None, str]:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, "Missing bearer access token"
        return self.oauth.check_access(token.strip())

    def _resource(
        self,
        request: Request,
        resource: str,
        rest: list[str],
        scopes: frozenset[str] | None,
    ) -> Response:
        if request.method != "GET":
            return _platform_error(405, f"{request.method} is not supported by the emulator")
        if not scope_allows(scopes, resource):
            return _platform_error(403, f"The access token's scopes do not allow reading {resource}")
        try:
            if not rest:
                return self._list(request, resource)
            return self._single(request, resource, rest[0])
        except QueryError as exc:
            return _platform_error(400, str(exc))

    def _list(self, request: Request, resource: str) -> Response:
        query = parse_list_query(resource, request.pairs, SCHEMAS[resource], self.page_size)
        ids = self.store.scan(
            resource,
            query.after_id,
            query.page_size + 1,
            updated_since_us=query.updated_since_us,
            created_since_us=query.created_since_us,
            ids=query.ids,
        )
        page, more = ids[: query.page_size], len(ids) > query.page_size
        data = [project(self.store.render(resource, i), query.selection) for i in page]
        paging: dict[str, str] = {}
        if more:
            token = encode_page_token(page[-1], query.filters_hash)
            paging["next"] = next_url(request.host, request.path, request.pairs, token)
        return json_response(200, {"data": data, "meta": {"paging": paging}})

    def _single(self, request: Request, resource: str, raw_id: str) -> Response:
        reject_repeated(request.pairs)
        params = dict(request.pairs)
        selection = parse_fields(params["fields"], SCHEMAS[resource]) if "fields" in params else None
        if resource == "users" and raw_id == "who_am_i":
            record_id = 1
        else:
            try:
                record_id = int(raw_id)
            except ValueError:
                record_id = 0
        if not self.store.exists(resource, record_id):
            return _platform_error(404, f"{resource} record {raw_id} not found")

        updated_us = self.store.updated_us(resource, record_id)
        etag_src = f"{self.store.seed}:{resource}:{record_id}:{updated_us}:{params.get('fields', '')}"
        etag = '"' + hashlib.sha256(etag_src.encode()).hexdigest()[:20] + '"'
        last_modified_s = updated_us // 1_000_000
        headers = [("ETag", etag), ("Last-Modified", email.utils.formatdate(last_modified_s, usegmt=True))]
        if _not_modified(request.headers, etag, last_modified_s):
            return Response(304, b"", headers)
        record = project(self.store.render(resource, record_id), selection)
        return json_response(200, {"data": record}, headers)

    # -- OAuth ---------------------------------------------------------------------------------

    def _oauth(self, request: Request, path: str) -> Response:
        try:
            if path == "/oauth/token" and request.method == "POST":
                form = self._form(request)
                response = json_response(200, self.oauth.token(form), [("Cache-Control", "no-store")])
                client_id = form.get("client_id")
            elif path == "/oauth/authorize" and request.method == "GET":
                return self._authorize(request)
            elif path == "/oauth/revoke" and request.method == "POST":
                form = self._form(request)
                self.oauth.revoke(form.get("token", ""))
                return json_response(200, {})
            else:
                return _platform_error(404, f"no route for {request.method} {request.path}")
        except OAuthError as exc:
            response = json_response(exc.status, exc.body())
            client_id = dict(parse_qsl(request.body.decode("utf-8", "replace"))).get("client_id")
        app = self.oauth.app(client_id) if client_id else None
        if app is not None:
            response.client_id, response.region = app.client_id, app.region
        return response

    @staticmethod
    def _form(request: Request) -> dict[str, str]:
        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        # RFC 6749 also allows HTTP Basic client authentication.
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic" and "client_id" not in form:
            try:
                client_id, _, secret = base64.b64decode(value).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise OAuthError(401, "invalid_client", "malformed Basic authorization") from None
            form["client_id"], form["client_secret"] = client_id, secret
        return form

    def _authorize(self, request: Request) -> Response:
        return Response(302, b"", [("Location", self.oauth.authorize_redirect(dict(request.pairs)))])

    # -- admin ---------------------------------------------------------------------------------

    def _admin(self, request: Request, path: str) -> Response:
        name = path.removeprefix("/_emulator/")
        handler = self._ADMIN.get((request.method, name))
        if handler is None:
            return _platform_error(404, f"no admin route {request.method} {request.path}")
        try:
            payload = json.loads(request.body) if request.body else {}
            if not isinstance(payload, dict):
                raise ValueError("the body must be a JSON object")
            return json_response(200, handler(self, payload))
        except (ValueError, TypeError, KeyError) as exc:
            return _platform_error(400, f"{type(exc).__name__}: {exc}")

    def _admin_requests(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"requests": [r.to_dict() for r in self.log.snapshot()]}

    def _admin_stats(self, _: dict[str, Any]) -> dict[str, Any]:
        records = self.log.snapshot()
        by_status: dict[str, int] = {}
        keys: set[tuple[str, str]] = set()
        for r in records:
            by_status[str(r.status)] = by_status.get(str(r.status), 0) + 1
            if r.is_api and r.client_id and r.region:
                keys.add((r.client_id, r.region))
        windows = [
            {
                "client_id": client_id,
                "region": region,
                "max_requests_in_window": self.log.max_in_window(region=region, client_id=client_id),
                "max_admitted_in_window": self.log.max_in_window(
                    region=region, client_id=client_id, statuses=_ADMITTED
                ),
            }
            for client_id, region in sorted(keys)
        ]
        return {
            "requests": len(records),
            "by_status": by_status,
            "rate_limit": self.limiter.limit,
            "windows": windows,
            "faults": self.faults.faults.to_dict(),
            "latency": self.latency.latency.to_dict(),
            "records": {res: self.store.count(res) for res in RESOURCES},
        }

    def _admin_get_faults(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"faults": self.faults.faults.to_dict()}

    def _admin_set_faults(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.faults.set(Faults.from_dict(payload))
        return {"faults": self.faults.faults.to_dict()}

    def _admin_get_latency(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"latency": self.latency.latency.to_dict()}

    def _admin_set_latency(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.latency.set(Latency.from_dict(payload))
        return {"latency": self.latency.latency.to_dict()}

    def _admin_reset_requests(self, _: dict[str, Any]) -> dict[str, Any]:
        self.log.clear()
        return {"ok": True}

    def _admin_apps(self, payload: dict[str, Any]) -> dict[str, Any]:
        app = self.oauth.register_app(
            payload["client_id"], payload["client_secret"], payload.get("region", "us"), payload.get("scopes")
        )
        return {**app.to_dict(), "refresh_token": self.oauth.issue_refresh_token(app.client_id)}

    def _admin_rate_limit(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.limiter.limit = payload["rate_limit"]
        return {"rate_limit": self.limiter.limit}

    def _admin_expire(self, _: dict[str, Any]) -> dict[str, Any]:
        self.oauth.expire_access_tokens()
        return {"ok": True}

    def _admin_touch(self, payload: dict[str, Any]) -> dict[str, Any]:
        at = payload.get("at")
        self.store.touch(
            payload["resource"], payload["ids"], datetime.datetime.fromisoformat(at) if at else None
        )
        return {"ok": True}

    def _admin_add(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"ids": self.store.add(payload["resource"], int(payload["n"]))}

    _ADMIN: dict[tuple[str, str], Callable[[Router, dict[str, Any]], dict[str, Any]]] = {
        ("GET", "health"): lambda self, _: {"ok": True},
        ("GET", "requests"): _admin_requests,
        ("GET", "stats"): _admin_stats,
        ("GET", "faults"): _admin_get_faults,
        ("POST", "faults"): _admin_set_faults,
        ("GET", "latency"): _admin_get_latency,
        ("POST", "latency"): _admin_set_latency,
        ("POST", "reset_requests"): _admin_reset_requests,
        ("POST", "apps"): _admin_apps,
        ("POST", "rate_limit"): _admin_rate_limit,
        ("POST", "expire_access_tokens"): _admin_expire,
        ("POST", "touch"): _admin_touch,
        ("POST", "records"): _admin_add,
    }


def _split_api_path(path: str) -> tuple[str | None, list[str] | None]:
    """Return ``(resource, rest)`` of ``/grow[/v2]/{resource}[/{id}]``; rest is None for unknown routes."""
    parts = path.split("/")[2:]
    if parts and parts[0] == "v2":
        parts = parts[1:]
    if not parts or parts[0] not in RESOURCES:
        return None, None
    return parts[0], (parts[1:] if len(parts) <= 2 else None)


# Statuses of requests that passed the limiter and were answered normally.
_ADMITTED = frozenset({200, 304, 400, 403, 404, 405})


def _not_modified(headers: dict[str, str], etag: str, last_modified_s: int) -> bool:
    inm = headers.get("if-none-match")
    if inm is not None:
        # Weak comparison, as RFC 9110 prescribes for If-None-Match.
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        return "*" in tags or etag in tags
    ims = headers.get("if-modified-since")
    if ims is not None:
        try:
            since = email.utils.parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
        return since.tzinfo is not None and last_modified_s <= int(since.timestamp())
    return False
