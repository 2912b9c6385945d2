# SPDX-License-Identifier: Apache-2.0
"""Wire the Manage mode (records, OAuth, limiter, routes, admin endpoints) and expose it on ClioEmulator.

:class:`ManageEmulatorMixin` holds the Manage methods of :class:`~airflow_provider_clio.testing.ClioEmulator`,
so the Platform emulator module only constructs a :class:`ManageMode` and hooks its router in.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Collection
from typing import Any

from airflow_provider_clio.testing.faults import FaultInjector
from airflow_provider_clio.testing.manage.data import MANAGE_RESOURCES, ManageStore
from airflow_provider_clio.testing.manage.limiter import TokenWindowLimiter
from airflow_provider_clio.testing.manage.oauth import ManageOAuthServer
from airflow_provider_clio.testing.manage.routes import ManageRouter, manage_error, token_id
from airflow_provider_clio.testing.manage.settings import ManageSettings, PeakSetting
from airflow_provider_clio.testing.oauth import DEFAULT_SECRET, REGIONS, EmulatorApp, describe_apps
from airflow_provider_clio.testing.recorder import RequestLog, RequestRecord
from airflow_provider_clio.testing.server import Request, Response, answer_admin

__all__ = ["ManageEmulatorMixin", "ManageMode"]

_ADMIN = "/_emulator/manage/"


class ManageMode:
    """Everything the emulator needs to speak Manage v4 next to the Platform API.

    Apps ``clio-manage-{us,ca,eu,au}`` (secret ``emulator-secret``) are registered from the start.

    :param settings: the knobs.
    :param seed: seed of the generated records.
    :param faults: the emulator's fault injector (its knobs apply to Manage requests too).
    """

    def __init__(self, settings: ManageSettings, seed: int, faults: FaultInjector) -> None:
        self.settings = settings
        self.store = ManageStore(seed, settings.records)
        self.oauth = ManageOAuthServer(settings.access_token_ttl, settings.refresh_returns_token)
        self.limiter = TokenWindowLimiter(
            settings.peak_limit,
            settings.off_peak_limit,
            settings.peak,
            settings.endpoint_limits,
            settings.window,
        )
        self.router = ManageRouter(settings, self.store, self.oauth, self.limiter, faults)
        for region in REGIONS:
            self.oauth.register_app(f"clio-manage-{region}", DEFAULT_SECRET, region)

    def route(self, request: Request, path: str) -> Response | None:
        """Answer Manage API, Manage OAuth and ``/_emulator/manage/`` requests; None for the others."""
        if path.startswith(_ADMIN):
            return self._admin(request, path.removeprefix(_ADMIN))
        return self.router(request, path)

    def _admin(self, request: Request, name: str) -> Response:
        handler = _ADMIN_ROUTES.get((request.method, name))
        bound = None if handler is None else functools.partial(handler, self)
        return answer_admin(request, bound, manage_error)

    def _admin_limit(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.limiter.set_limit(payload["limit"], payload.get("endpoint"), payload.get("peak"))
        return self.limiter.limits()

    def _admin_peak(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.limiter.set_peak(payload["peak"])
        return self.limiter.limits()

    def _admin_app(self, payload: dict[str, Any]) -> dict[str, Any]:
        app = self.oauth.register_app(
            payload["client_id"], payload.get("client_secret", DEFAULT_SECRET), payload.get("region", "us")
        )
        return {**app.to_dict(), "refresh_token": self.oauth.issue_refresh_token(app.client_id)}

    def _admin_stats(self, _: dict[str, Any]) -> dict[str, Any]:
        counts = {res: self.store.count(res) for res in MANAGE_RESOURCES}
        return {"limits": self.limiter.limits(), "records": counts}


_ADMIN_ROUTES: dict[tuple[str, str], Callable[[ManageMode, dict[str, Any]], dict[str, Any]]] = {
    ("GET", "stats"): ManageMode._admin_stats,
    ("POST", "limit"): ManageMode._admin_limit,
    ("POST", "peak"): ManageMode._admin_peak,
    ("POST", "apps"): ManageMode._admin_app,
}


class ManageEmulatorMixin:
    """The Manage methods of ``ClioEmulator`` (it sets ``_manage`` and ``_log``)."""

    _manage: ManageMode
    _log: RequestLog

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def manage(self) -> ManageMode:
        """The Manage mode: ``.store`` (``touch``, ``add``), ``.oauth``, ``.limiter``, ``.settings``."""
        return self._manage

    def manage_app(
        self, client_id: str | None = None, client_secret: str = DEFAULT_SECRET, region: str = "us"
    ) -> EmulatorApp:
        """Register (or return) a Manage application; ``client_id`` defaults to ``clio-manage-{region}``."""
        client_id = client_id or f"clio-manage-{region}"
        app = self._manage.oauth.app(client_id)
        if app is None or (app.client_secret, app.region) != (client_secret, region):
            app = self._manage.oauth.register_app(client_id, client_secret, region)
        return app

    def manage_connection(
        self, client_id: str | None = None, region: str = "us", **extra: Any
    ) -> dict[str, Any]:
        """Return an Airflow connection dict for a Manage app (extra ``api: manage``), fresh refresh token.

        The host is the emulator's URL: the override that points the Manage API (and its OAuth) here.
        """
        app = self._manage.oauth.app(client_id or f"clio-manage-{region}") or self.manage_app(
            client_id, region=region
        )
        refresh_token = self._manage.oauth.issue_refresh_token(app.client_id)
        return app.connection(
            self.url, {**extra, "api": "manage", "region": app.region, "refresh_token": refresh_token}
        )

    def manage_apps(self) -> dict[str, dict[str, str]]:
        """Return ``{client_id: {"client_secret", "region", "refresh_token"}}`` of every Manage app."""
        oauth = self._manage.oauth
        return describe_apps(oauth.apps(), oauth.issue_refresh_token)

    def issue_manage_access_token(
        self, client_id: str = "clio-manage-us", ttl: float | None = None
    ) -> tuple[str, float]:
        """Mint a Manage access token; return ``(token, expires_at)`` in epoch seconds."""
        return self._manage.oauth.issue_access_token(client_id, ttl)

    def issue_manage_refresh_token(self, client_id: str = "clio-manage-us") -> str:
        """Mint a valid (never rotating) Manage refresh token."""
        return self._manage.oauth.issue_refresh_token(client_id)

    def expire_manage_access_tokens(self) -> None:
        """Make every Manage access token issued so far answer 401 ``invalid_token``."""
        self._manage.oauth.expire_access_tokens()

    def set_manage_limit(
        self, limit: int | None, endpoint: str | None = None, peak: bool | None = None
    ) -> None:
        """Change a Manage limit at run time (see ``TokenWindowLimiter.set_limit``); a drop bites at once."""
        self._manage.limiter.set_limit(limit, endpoint, peak)

    def set_peak(self, peak: PeakSetting) -> None:
        """Switch Manage to peak (True), off-peak (False), Clio's schedule (``"clio"``) or a callable."""
        self._manage.limiter.set_peak(peak)

    def consume_manage_budget(self, n: int, token_id: str | None = None) -> None:
        """Use ``n`` requests of a token's current window (default: every token seen), like another client."""
        self._manage.limiter.consume(n, token_id)

    @staticmethod
    def manage_token_id(token: str) -> str:
        """Return the id recorded for an access token (``RequestRecord.token_id``)."""
        return token_id(token)

    def manage_records(self, resource: str) -> list[dict[str, Any]]:
        """Return every current record of a Manage resource with all fields, id ascending (ground truth)."""
        store = self._manage.store
        return [store.render(resource, i) for i in range(1, store.count(resource) + 1)]

    def manage_requests(self, token_id: str | None = None, status: int | None = None) -> list[RequestRecord]:
        """Return the recorded Manage requests (API and OAuth), optionally of one token or status."""
        return [
            r
            for r in self._log.snapshot()
            if r.api == "manage"
            and (token_id is None or r.token_id == token_id)
            and (status is None or r.status == status)
        ]

    def manage_max_in_window(
        self, window: float | None = None, statuses: Collection[int] | None = None
    ) -> int:
        """Return the most Manage API requests one access token sent within any sliding ``window``.

        The limiter's windows are fixed, so this may reach twice the limit across a window boundary.
        """
        window = self._manage.limiter.window if window is None else window
        groups: dict[str, list[float]] = {}
        for r in self.manage_requests():
            if r.token_id is not None and (statuses is None or r.status in statuses):
                groups.setdefault(r.token_id, []).append(r.wall)
        for times in groups.values():
            times.sort()
        return max(
            (
                bisect.bisect_right(ts, u) - bisect.bisect_right(ts, u - window)
                for ts in groups.values()
                for u in ts
            ),
            default=0,
        )
