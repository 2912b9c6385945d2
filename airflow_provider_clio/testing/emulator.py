# SPDX-License-Identifier: Apache-2.0
"""Run a local Clio Platform API emulator, from Python (:class:`ClioEmulator`) or the command line.

Command line::

    python -m airflow_provider_clio.testing.emulator --port 8765 --records contacts=20000,matters=10000
    # ~200 ms round trips: arrival stamped 5-35 ms after the send, the answer 180 ms after that
    python -m airflow_provider_clio.testing.emulator --inbound-delay 0.02 --inbound-jitter 0.015 \
        --response-delay 0.18

prints one JSON line when ready, ``{"url": ..., "apps": {client_id: {"client_secret", "region",
"refresh_token"}}}``, and serves until SIGINT or SIGTERM.

(Just over 400 lines: the Python API and the command line that mirrors its knobs stay side by side.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import signal
import sys
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any

from airflow_provider_clio.testing.data import RESOURCES, RecordStore
from airflow_provider_clio.testing.faults import FaultInjector, Faults, Latency, LatencyInjector
from airflow_provider_clio.testing.limiter import SlidingWindowLimiter
from airflow_provider_clio.testing.manage.mode import ManageEmulatorMixin, ManageMode
from airflow_provider_clio.testing.manage.settings import (
    ManageSettings,
    add_manage_arguments,
    manage_settings_from_args,
)
from airflow_provider_clio.testing.oauth import DEFAULT_SECRET, REGIONS, EmulatorApp, OAuthServer
from airflow_provider_clio.testing.recorder import RequestLog, RequestRecord
from airflow_provider_clio.testing.routes import Router
from airflow_provider_clio.testing.server import EmulatorHTTPServer

__all__ = ["ClioEmulator", "main"]


class ClioEmulator(ManageEmulatorMixin):
    """A real HTTP server behaving like Clio's Platform API, for tests and demos.

    Apps ``clio-emulator-{us,ca,eu,au}`` (secret ``emulator-secret``) are registered from the start.

    .. code-block:: python

        with ClioEmulator(rate_limit=1000, records={"contacts": 50}) as emu:
            conn = emu.connection(region="eu")

    :param seed: seed of every generated record.
    :param rate_limit: API requests admitted per sliding 1 s window per (client_id, region); None = unlimited.
    :param records: records per resource (``contacts``, ``matters``, ``activities``, ``users``, ``sources``);
        resources not named keep their defaults.
    :param page_size: records per list page (a ``limit`` parameter up to 200 overrides it per request).
    :param access_token_ttl: lifetime of issued access tokens in seconds.
    :param faults: initial fault knobs.
    :param updated_since_inclusive: ``updated_since`` keeps records stamped exactly on it (Platform spec);
        ``False``: only later ones (Manage spec).
    :param manage: the Manage API v4 mode's knobs (settings or a mapping of their names; see ``manage_*``).
    :param latency: initial network latency (inbound delay with jitter, response delay); default none.
    """

    def __init__(
        self,
        seed: int = 42,
        rate_limit: int | None = 3,
        records: Mapping[str, int] | None = None,
        page_size: int = 200,
        access_token_ttl: float = 86400,
        faults: Faults | None = None,
        updated_since_inclusive: bool = True,
        manage: ManageSettings | Mapping[str, Any] | None = None,
        latency: Latency | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.seed = seed
        self._store = RecordStore(seed, records, updated_since_inclusive)
        self._oauth = OAuthServer(access_token_ttl=access_token_ttl)
        self._limiter = SlidingWindowLimiter(rate_limit)
        self._faults = FaultInjector(faults)
        self._latency = LatencyInjector(latency)
        self._log = RequestLog()
        self._router = Router(
            self._store, self._oauth, self._limiter, self._faults, self._log, page_size, self._latency
        )
        self._manage = ManageMode(ManageSettings.coerce(manage), seed, self._faults)
        self._router.manage = self._manage.route
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for region in REGIONS:
            self._oauth.register_app(f"clio-emulator-{region}", DEFAULT_SECRET, region)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> ClioEmulator:
        """Start serving in a daemon thread (port 0 picks a free port); return self."""
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        self._server = EmulatorHTTPServer((host, port), self._router, self._log, self._latency)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="clio-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ClioEmulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8765`` (API under ``/grow``, OAuth under ``/oauth``)."""
        if self._server is None:
            raise RuntimeError("the emulator is not running: call start() first")
        host, port = str(self._server.server_address[0]), self._server.server_address[1]
        if host in ("0.0.0.0", ""):  # noqa: S104 - only to print a reachable address
            host = "127.0.0.1"
        return f"http://{host}:{port}"

    # -- apps and tokens -----------------------------------------------------------------------

    def register_app(
        self,
        client_id: str,
        client_secret: str = DEFAULT_SECRET,
        region: str = "us",
        scopes: Iterable[str] | None = None,
    ) -> EmulatorApp:
        """Register (or replace) an OAuth app in one region; ``scopes=None`` grants every resource."""
        return self._oauth.register_app(client_id, client_secret, region, scopes)

    def apps(self) -> list[EmulatorApp]:
        """Return every registered app."""
        return self._oauth.apps()

    def issue_refresh_token(self, client_id: str) -> str:
        """Mint a fresh, valid refresh token for a registered app."""
        return self._oauth.issue_refresh_token(client_id)

    def issue_access_token(self, client_id: str, ttl: float | None = None) -> tuple[str, float]:
        """Mint an access token; return ``(token, expires_at)`` in epoch seconds."""
        return self._oauth.issue_access_token(client_id, ttl)

    def issued_tokens(self, client_id: str | None = None) -> set[str]:
        """Return every token ever issued (to ``client_id``), rotated and expired ones included.

        For tests that check no token leaks into logs or output files.
        """
        return self._oauth.issued_tokens(client_id) | self._manage.oauth.issued_tokens(client_id)

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far answer 401."""
        self._oauth.expire_access_tokens()

    def connection(self, client_id: str | None = None, region: str = "us", **extra: Any) -> dict[str, Any]:
        """Return an Airflow connection dict for an app, with a fresh refresh token.

        ``client_id`` defaults to ``clio-emulator-{region}``; an unknown one is registered in ``region``
        with secret ``emulator-secret``. The extra's region is always the app's.
        """
        if extra.get("api") == "manage":
            return self.manage_connection(client_id, region, **extra)
        client_id = client_id or f"clio-emulator-{region}"
        app = self._oauth.app(client_id) or self.register_app(client_id, DEFAULT_SECRET, region)
        return {
            "conn_type": "clio",
            "host": self.url,
            "login": app.client_id,
            "password": app.client_secret,
            "extra": {
                "region": app.region,
                "refresh_token": self.issue_refresh_token(app.client_id),
                **extra,
            },
        }

    def connection_env(self, conn_id: str = "clio_default", **kw: Any) -> tuple[str, str]:
        """Return ``("AIRFLOW_CONN_<CONN_ID>", json)`` of :meth:`connection` for ``monkeypatch.setenv``."""
        return f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(self.connection(**kw))

    # -- request log ---------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request received so far (a copy), ordered by arrival."""
        return self._log.snapshot()

    def clear_requests(self) -> None:
        """Forget the recorded requests (the limiter's memory is kept)."""
        self._log.clear()

    def max_requests_in_window(
        self,
        region: str | None = None,
        client_id: str | None = None,
        window: float = 1.0,
        statuses: Collection[int] | None = None,
    ) -> int:
        """Return the most API requests one ``(client_id, region)`` budget got in any sliding ``window``.

        Compare it with the rate limit: arrivals of every status count unless ``statuses`` narrows them,
        and ``region`` / ``client_id`` narrow the budgets looked at (two apps never add up).
        """
        return self._log.max_in_window(region=region, client_id=client_id, window=window, statuses=statuses)

    def count(
        self, status: int | None = None, region: str | None = None, path_prefix: str | None = None
    ) -> int:
        """Return how many recorded requests match every given filter."""
        return self._log.count(status=status, region=region, path_prefix=path_prefix)

    # -- knobs ---------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """The current fault knobs."""
        return self._faults.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self.set_faults(faults)

    def set_faults(self, faults: Faults) -> None:
        """Replace the fault knobs (reseeds the fault RNG, restarts the outage count)."""
        self._faults.set(faults)

    @property
    def latency(self) -> Latency:
        """The current network latency knobs."""
        return self._latency.latency

    @latency.setter
    def latency(self, latency: Latency) -> None:
        self.set_latency(latency)

    def set_latency(self, latency: Latency) -> None:
        """Replace the latency knobs at run time (reseeds the jitter RNG); requests in flight keep theirs."""
        self._latency.set(latency)

    @property
    def rate_limit(self) -> int | None:
        """API requests admitted per sliding second per (client_id, region)."""
        return self._limiter.limit

    def set_rate_limit(self, n: int | None) -> None:
        """Change the rate limit at run time (None = unlimited)."""
        self._limiter.limit = n

    # -- records -------------------------------------------------------------------------------

    def records(self, resource: str) -> list[dict[str, Any]]:
        """Return every current record of ``resource`` with all fields, id ascending (ground truth)."""
        self._check_resource(resource)
        ids = range(1, self._store.count(resource) + 1)
        return [self._store.render(resource, i) for i in ids if self._store.exists(resource, i)]

    def touch(self, resource: str, ids: Iterable[int], at: datetime.datetime | None = None) -> None:
        """Bump ``updated_at`` (and so the ETag) of records to ``at`` (aware; default now)."""
        self._check_resource(resource)
        self._store.touch(resource, ids, at)

    def delete_records(self, resource: str, ids: Iterable[int]) -> None:
        """Delete records (lists and reads stop returning them), as a user deleting them in Clio would."""
        self._check_resource(resource)
        self._store.delete(resource, ids)

    def add_records(self, resource: str, n: int, at: datetime.datetime | None = None) -> list[int]:
        """Create ``n`` records, created and updated at ``at`` (aware; default now); return their ids."""
        self._check_resource(resource)
        return self._store.add(resource, n, at)

    @staticmethod
    def _check_resource(resource: str) -> None:
        if resource not in RESOURCES:
            raise ValueError(f"unknown resource {resource!r}; known: {list(RESOURCES)}")


# -- command line ------------------------------------------------------------------------------


def _parse_records(raw: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in RESOURCES:
            raise argparse.ArgumentTypeError(
                f"expected RESOURCE=N with RESOURCE in {list(RESOURCES)}: {item!r}"
            )
        try:
            out[name] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {item!r}") from None
    return out


def _parse_app(raw: str) -> tuple[str, str, str]:
    parts = raw.split(":")
    if len(parts) != 3 or parts[2] not in REGIONS:
        raise argparse.ArgumentTypeError(f"expected CLIENT_ID:SECRET:REGION with REGION in {list(REGIONS)}")
    return parts[0], parts[1], parts[2]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m airflow_provider_clio.testing.emulator", description="Run a local Clio API emulator."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--records", type=_parse_records, default={}, help="e.g. contacts=20000,matters=10000")
    p.add_argument("--rate-limit", type=int, default=3, help="requests per sliding second per app and region")
    p.add_argument("--no-rate-limit", action="store_true", help="admit every request")
    p.add_argument("--page-size", type=int, default=200)
    p.add_argument("--access-token-ttl", type=float, default=86400)
    p.add_argument(
        "--app", type=_parse_app, action="append", default=[], help="extra app CLIENT_ID:SECRET:REGION"
    )
    f = p.add_argument_group("faults (API requests only)")
    f.add_argument("--fault-seed", type=int, default=0)
    f.add_argument("--error-rate", type=float, default=0.0)
    f.add_argument("--error-statuses", default="429,503", help="comma-separated statuses")
    f.add_argument("--outage-requests", type=int, default=0)
    f.add_argument("--outage-status", type=int, default=503)
    f.add_argument("--drop-rate", type=float, default=0.0)
    f.add_argument("--slow-rate", type=float, default=0.0)
    f.add_argument("--slow-seconds", type=float, default=0.0)
    f.add_argument("--truncate-rate", type=float, default=0.0)
    f.add_argument("--retry-after", type=float, default=None)
    add_manage_arguments(p)
    n = p.add_argument_group("latency (every request but /_emulator; seconds)")
    n.add_argument("--inbound-delay", type=float, default=0.0, help="send -> arrival stamp and rate limit")
    n.add_argument(
        "--inbound-jitter", type=float, default=0.0, help="uniform +/- spread of the inbound delay"
    )
    n.add_argument("--response-delay", type=float, default=0.0, help="handling -> answer received")
    n.add_argument("--latency-seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM; print one JSON line on stdout when ready."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    try:
        faults = Faults(
            seed=args.fault_seed,
            error_rate=args.error_rate,
            error_statuses=tuple(int(s) for s in args.error_statuses.split(",") if s.strip()),
            outage_requests=args.outage_requests,
            outage_status=args.outage_status,
            drop_rate=args.drop_rate,
            slow_rate=args.slow_rate,
            slow_seconds=args.slow_seconds,
            truncate_rate=args.truncate_rate,
            retry_after=args.retry_after,
        )
        emu = ClioEmulator(
            seed=args.seed,
            rate_limit=None if args.no_rate_limit else args.rate_limit,
            records=args.records,
            page_size=args.page_size,
            access_token_ttl=args.access_token_ttl,
            faults=faults,
            manage=manage_settings_from_args(args),
            latency=Latency(
                inbound_delay=args.inbound_delay,
                inbound_jitter=args.inbound_jitter,
                response_delay=args.response_delay,
                seed=args.latency_seed,
            ),
        )
        for client_id, secret, region in map(_parse_app, args.manage_app):
            emu.manage_app(client_id, secret, region)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for client_id, secret, region in args.app:
        emu.register_app(client_id, secret, region)

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    emu.start(args.host, args.port)
    apps = {
        app.client_id: {
            "client_secret": app.client_secret,
            "region": app.region,
            "refresh_token": emu.issue_refresh_token(app.client_id),
        }
        for app in emu.apps()
    }
    print(json.dumps({"url": emu.url, "apps": apps, "manage_apps": emu.manage_apps()}), flush=True)
    try:
        # A timed wait lets the signal handler run promptly in the main thread.
        while not stop.wait(0.2):
            pass
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
