# SPDX-License-Identifier: Apache-2.0
"""Tests for ClioHook: connection parsing, and every request path against the real emulator on loopback.

Pacing and backoff use an injected fake clock and sleep, so the tests never wait; the emulator's own rate
limit is switched off where the fake sleep would otherwise make the hook faster than 3 req/s. The real-time
rate-limit scenarios live in ``test_clio_rate_limit.py``.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from airflow.sdk.execution_time.context import set_current_context

from airflow_provider_clio import __version__
from airflow_provider_clio.auth import MemoryTokenStore, TokenSet
from airflow_provider_clio.exceptions import (
    ClioAuthError,
    ClioBadRequestError,
    ClioConfigError,
    ClioNotFoundError,
    ClioPaginationError,
    ClioPermissionError,
    ClioRateLimitError,
    ClioTransientError,
)
from airflow_provider_clio.hooks.clio import ClioHook, RetrySettings
from airflow_provider_clio.rate_limit import reset_shared_limiters
from airflow_provider_clio.testing import ClioEmulator, Faults

CONN_ID = "clio_test"


class FakeTime:
    """A monotonic clock that moves only when the hook sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 5000.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


class RecordingStore(MemoryTokenStore):
    """A MemoryTokenStore that remembers every token it was given (to look for leaks)."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[TokenSet] = []

    def save(self, conn_id: str, tokens: TokenSet) -> None:
        self.history.append(tokens)
        super().save(conn_id, tokens)


@pytest.fixture(autouse=True)
def _fresh_limiters() -> Iterator[None]:
    reset_shared_limiters()
    yield
    reset_shared_limiters()


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def set_conn(monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any], conn_id: str = CONN_ID) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def emulator_hook(
    monkeypatch: pytest.MonkeyPatch,
    emu: ClioEmulator,
    fake_time: FakeTime,
    *,
    store: MemoryTokenStore | None = None,
    conn_id: str = CONN_ID,
    client_id: str | None = None,
    region: str = "us",
    **kwargs: Any,
) -> ClioHook:
    set_conn(monkeypatch, emu.connection(client_id=client_id, region=region), conn_id)
    hook = ClioHook(
        conn_id,
        token_store=store if store is not None else MemoryTokenStore(),
        clock=fake_time.clock,
        sleep=fake_time.sleep,
        **kwargs,
    )
    # Let the limiter's slot hand-over window pass (tested on its own below), so the recorded sleeps are
    # the pacing and backoff under test.
    assert hook.pacer is not None
    fake_time.now += 1.0
    return hook


def api_requests(emu: ClioEmulator) -> list[Any]:
    return [r for r in emu.requests if r.is_api]


def project(record: dict[str, Any], fields: dict[str, tuple[str, ...] | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, nested in fields.items():
        value = record[name]
        out[name] = value if nested is None or value is None else {k: value[k] for k in nested}
    return out


# -- connection parsing ------------------------------------------------------------------------------


def base_conn(**extra: Any) -> dict[str, Any]:
    return {"conn_type": "clio", "login": "app-key", "password": "app-secret-value", "extra": extra}


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, base_conn())
    hook = ClioHook(CONN_ID)
    assert (hook.region, hook.base_url, hook.pool_name) == ("us", "https://api.clio.com", "clio_us")
    assert hook.pool_slots == 1
    assert hook.rate == 1.0
    assert ClioHook.default_conn_name == "clio_default"
    assert (ClioHook.conn_type, ClioHook.conn_name_attr, ClioHook.hook_name) == (
        "clio",
        "clio_conn_id",
        "Clio",
    )


@pytest.mark.parametrize("region", ["eu", "AU "])
def test_region_pool_and_host_override_come_from_the_connection(
    monkeypatch: pytest.MonkeyPatch, region: str
) -> None:
    # The parsing itself is tested in tests/test_connection.py; this is what the hook exposes of it.
    set_conn(monkeypatch, {**base_conn(region=region), "host": "https://clio-proxy.example.com/clio/"})
    hook = ClioHook(CONN_ID)
    assert hook.region == region.strip().lower()
    assert hook.pool_name == f"clio_{hook.region}"
    assert hook.base_url == "https://clio-proxy.example.com/clio"
    assert hook.config.token_url == "https://clio-proxy.example.com/clio/oauth/token"


def test_rate_is_pool_slots_times_requests_per_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, base_conn(requests_per_slot="0.5", pool="clio_shared"))
    hook = ClioHook(CONN_ID, pool_slots=3)
    assert hook.pool_name == "clio_shared"
    assert hook.rate == 1.5


@pytest.mark.parametrize(
    ("conn", "field"),
    [
        (base_conn(region="uk"), "'region'"),
        ({**base_conn(), "host": "http://clio-proxy.example.com"}, "plain http"),
        (base_conn(api="grow"), "'api'"),
    ],
)
def test_invalid_connections_fail_before_any_request(
    monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any], field: str
) -> None:
    set_conn(monkeypatch, conn)
    hook = ClioHook(CONN_ID)
    with pytest.raises(ClioConfigError, match=field) as info:
        hook.get("grow/contacts")
    assert "app-secret-value" not in str(info.value)
    assert hook.stats.requests == 0


@pytest.mark.parametrize("kwargs", [{"pool_slots": 0}, {"pool_slots": 1.5}, {"timeout": 0}, {"timeout": "5"}])
def test_invalid_hook_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ClioConfigError):
        ClioHook(CONN_ID, **kwargs)


def test_pool_slots_default_to_the_running_task(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, base_conn(requests_per_slot=0.5))
    with set_current_context({"task": SimpleNamespace(pool_slots=3)}):  # type: ignore[arg-type]
        hook = ClioHook(CONN_ID)
        assert hook.pool_slots == 3
        assert hook.rate == 1.5
        assert ClioHook(CONN_ID, pool_slots=2).rate == 1.0


def test_session_identifies_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow

    set_conn(monkeypatch, base_conn())
    agent = ClioHook(CONN_ID).session.headers["User-Agent"]
    assert agent == f"airflow-provider-clio/{__version__} (apache-airflow/{airflow.__version__})"


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [("", "relative path"), ("/", "relative path"), ("https://evil.example/grow/contacts", "relative")],
)
def test_bad_endpoints(monkeypatch: pytest.MonkeyPatch, endpoint: str, reason: str) -> None:
    set_conn(monkeypatch, base_conn())
    with pytest.raises(ClioConfigError, match=reason):
        ClioHook(CONN_ID).get(endpoint)


def test_bad_fields_and_params_fail_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    # No host is reachable at api.clio.com from the tests: anything that sent a request would hang or fail
    # differently. ClioConfigError proves validation came first.
    set_conn(monkeypatch, base_conn())
    hook = ClioHook(CONN_ID)
    with pytest.raises(ClioConfigError, match="one level of braces"):
        next(hook.paginate("grow/matters", fields=["id", "client{account{id}}"]))
    with pytest.raises(ClioConfigError, match="not both"):
        next(hook.paginate("grow/matters", fields="id", params={"fields": "id"}))
    with pytest.raises(ClioConfigError, match="start_url"):
        next(hook.paginate("grow/matters", params={"page_token": "abc"}))
    with pytest.raises(ClioConfigError, match="empty item"):
        hook.get("grow/contacts", params={"fields": "id,"})
    assert hook.stats.requests == 0


# -- against the emulator ----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(("count", "pages"), [(0, 1), (1, 1), (50, 1), (200, 4), (201, 5), (237, 5)])
def test_pagination_returns_every_record_exactly_once(
    monkeypatch: pytest.MonkeyPatch,
    clio_emulator_factory: Any,
    fake_time: FakeTime,
    count: int,
    pages: int,
) -> None:
    emu = clio_emulator_factory(records={"contacts": count}, page_size=50, rate_limit=None)
    hook = emulator_hook(monkeypatch, emu, fake_time)
    records = list(hook.paginate("grow/contacts", fields=["id", "name", "updated_at"]))
    expected = [project(r, {"id": None, "name": None, "updated_at": None}) for r in emu.records("contacts")]
    assert records == expected
    assert len({r["id"] for r in records}) == count
    assert hook.stats.pages == pages
    assert len(api_requests(emu)) == pages == hook.stats.requests
    # Pacing: one emission interval between consecutive requests, on the injected clock.
    assert fake_time.sleeps == pytest.approx([1.05] * (pages - 1))


@pytest.mark.integration
def test_a_new_hook_waits_one_window_before_its_first_request(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    # The task that held this pool slot before may have sent a request just before this one started.
    emu = clio_emulator_factory(records={"contacts": 10}, rate_limit=None)
    set_conn(monkeypatch, emu.connection())
    hook = ClioHook(CONN_ID, token_store=MemoryTokenStore(), clock=fake_time.clock, sleep=fake_time.sleep)
    hook.get("grow/contacts", params={"fields": "id"})
    assert fake_time.sleeps == pytest.approx([1.0])


@pytest.mark.integration
def test_next_urls_are_followed_exactly(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory(records={"contacts": 120}, page_size=50, rate_limit=None)
    hook = emulator_hook(monkeypatch, emu, fake_time)
    since = "2026-03-01T00:00:00+00:00"
    pages = list(hook.iter_pages("grow/contacts", fields="id,updated_at", params={"updated_since": since}))
    expected = [
        project(r, {"id": None, "updated_at": None})
        for r in emu.records("contacts")
        if datetime.fromisoformat(r["updated_at"]) >= datetime.fromisoformat(since)
    ]
    assert [r for page in pages for r in page.records] == expected
    assert [page.number for page in pages] == list(range(1, len(pages) + 1))
    assert pages[-1].next_url is None
    for page, following in itertools.pairwise(pages):
        assert following.url == page.next_url
    # Each request after the first carried exactly the parameters of the server's next URL, once each.
    seen = api_requests(emu)
    assert len(seen) == len(pages) > 2
    for request, previous in zip(seen[1:], pages, strict=False):
        assert previous.next_url is not None
        assert request.query == parse_qs(urlsplit(previous.next_url).query)
        assert all(len(values) == 1 for values in request.query.values())


@pytest.mark.integration
def test_nested_fields_arrive(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory(records={"matters": 30, "activities": 25}, rate_limit=None)
    hook = emulator_hook(monkeypatch, emu, fake_time)
    matters = list(hook.paginate("grow/matters", fields=["id", "client{id,name}"]))
    assert matters == [project(r, {"id": None, "client": ("id", "name")}) for r in emu.records("matters")]
    activities = list(hook.paginate("grow/v2/activities", fields="id,matter{id,display_number},user{id}"))
    assert activities == [
        project(r, {"id": None, "matter": ("id", "display_number"), "user": ("id",)})
        for r in emu.records("activities")
    ]


@pytest.mark.integration
def test_bad_field_fails_with_the_server_message_without_retrying(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory(records={"contacts": 10}, rate_limit=None)
    hook = emulator_hook(monkeypatch, emu, fake_time)
    with pytest.raises(ClioBadRequestError) as info:
        list(hook.paginate("grow/contacts", fields=["id", "no_such_field"]))
    assert info.value.status_code == 400
    assert "no_such_field" in info.value.message
    assert info.value.endpoint == "grow/contacts"
    assert len(api_requests(emu)) == 1
    assert fake_time.sleeps == []


@pytest.mark.integration
def test_forbidden_resource_fails_without_retrying(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory()
    emu.register_app(
        client_id="clio-scoped", client_secret="scoped-secret-1", region="us", scopes=["contacts"]
    )
    hook = emulator_hook(monkeypatch, emu, fake_time, client_id="clio-scoped")
    with pytest.raises(ClioPermissionError) as info:
        list(hook.paginate("grow/matters", fields="id"))
    assert info.value.status_code == 403
    assert info.value.message
    assert len(api_requests(emu)) == 1


@pytest.mark.integration
def test_unknown_record_is_not_found(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory(records={"contacts": 5}, rate_limit=None)
    hook = emulator_hook(monkeypatch, emu, fake_time)
    with pytest.raises(ClioNotFoundError) as info:
        hook.get_record("grow/contacts", 999)
    assert info.value.endpoint == "grow/contacts/{id}"  # one metric series per endpoint, not per record
    assert len(api_requests(emu)) == 1


@pytest.mark.integration
def test_faults_do_not_change_the_records(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory(records={"contacts": 1000}, page_size=20, rate_limit=None)
    emu.set_faults(
        Faults(seed=3, error_rate=0.15, error_statuses=(429, 503), drop_rate=0.05, truncate_rate=0.05)
    )
    hook = emulator_hook(monkeypatch, emu, fake_time)
    records = list(hook.paginate("grow/contacts", fields="id,name,updated_at"))
    assert records == [
        project(r, {"id": None, "name": None, "updated_at": None}) for r in emu.records("contacts")
    ]
    seen = api_requests(emu)
    faults = {r.fault for r in seen}
    assert {"error", "drop", "truncate"} <= faults
    assert hook.stats.retries == len(seen) - 50 > 0
    assert hook.stats.rate_limited == sum(1 for r in seen if r.status == 429) > 0


@pytest.mark.integration
def test_retry_after_is_honoured_exactly(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory(records={"contacts": 10}, rate_limit=None)
    emu.set_faults(Faults(outage_requests=2, outage_status=429, retry_after=3))
    hook = emulator_hook(monkeypatch, emu, fake_time)
    assert len(list(hook.paginate("grow/contacts", fields="id"))) == 10
    # Two backoffs of exactly Retry-After (no jitter); the limiter did not need to wait on top of them.
    assert fake_time.sleeps == [3.0, 3.0]
    assert hook.stats.rate_limited == 2
    assert hook.stats.retries == 2


@pytest.mark.integration
def test_retry_after_beyond_the_budget_hands_over_to_airflow(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory(records={"contacts": 10}, rate_limit=None)
    emu.set_faults(Faults(outage_requests=5, outage_status=429, retry_after=120))
    hook = emulator_hook(monkeypatch, emu, fake_time)
    with pytest.raises(ClioRateLimitError) as info:
        hook.get("grow/contacts")
    assert info.value.retry_after == 120.0
    assert info.value.status_code == 429
    assert len(api_requests(emu)) == 1
    assert fake_time.sleeps == []


@pytest.mark.integration
def test_persistent_outage_spends_the_budget_then_raises_retryable(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory(records={"contacts": 10}, rate_limit=None)
    emu.set_faults(Faults(outage_requests=100, outage_status=503))
    hook = emulator_hook(monkeypatch, emu, fake_time, retry=RetrySettings(jitter=False))
    with pytest.raises(ClioTransientError) as info:
        hook.get("grow/contacts")
    assert info.value.status_code == 503
    assert len(api_requests(emu)) == 6
    # Backoffs 1, 2, 4, 8, 16 s; only the first is shorter than the 1.05 s pacing interval, so the limiter
    # adds the missing 0.05 s before the second attempt.
    assert fake_time.sleeps == pytest.approx([1.0, 0.05, 2.0, 4.0, 8.0, 16.0])


@pytest.mark.integration
def test_total_backoff_respects_the_budget(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory(records={"contacts": 10}, rate_limit=None)
    emu.set_faults(Faults(outage_requests=100, outage_status=502))
    retry = RetrySettings(max_attempts=10, jitter=False, max_total_wait=20)
    hook = emulator_hook(monkeypatch, emu, fake_time, retry=retry)
    with pytest.raises(ClioTransientError):
        hook.get("grow/contacts")
    backoffs = [s for s in fake_time.sleeps if s >= 1.0]
    assert backoffs == [1.0, 2.0, 4.0, 8.0, 5.0]  # the last one is cut to the budget left
    assert len(api_requests(emu)) == 6


@pytest.mark.integration
def test_read_timeouts_are_transient(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory(records={"contacts": 10}, rate_limit=None)
    emu.set_faults(Faults(slow_rate=1.0, slow_seconds=1.0))
    hook = emulator_hook(monkeypatch, emu, fake_time, timeout=0.2, retry=RetrySettings(max_attempts=2))
    with pytest.raises(ClioTransientError, match="Timeout"):
        hook.get("grow/contacts")
    assert hook.stats.retries == 1


@pytest.mark.integration
def test_expired_access_token_is_refreshed_once(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory(records={"contacts": 300}, page_size=100, rate_limit=None)
    store = MemoryTokenStore()
    hook = emulator_hook(monkeypatch, emu, fake_time, store=store)
    pages = hook.iter_pages("grow/contacts", fields="id")
    first = next(pages)
    emu.expire_access_tokens()
    rest = list(pages)
    assert [r["id"] for p in [first, *rest] for r in p.records] == list(range(1, 301))
    assert emu.count(status=401) == 1
    assert store.saves == 2  # the first refresh (no access token in the connection), then after the 401
    assert hook.token_manager.refreshes == 2


@pytest.mark.integration
def test_connection_access_token_is_used_until_rejected(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory(records={"contacts": 5}, rate_limit=None)
    token, expires_at = emu.issue_access_token("clio-emulator-us")
    conn = emu.connection(access_token=token, expires_at=expires_at)
    set_conn(monkeypatch, conn)
    store = MemoryTokenStore()
    hook = ClioHook(CONN_ID, token_store=store, clock=fake_time.clock, sleep=fake_time.sleep)
    assert len(hook.get("grow/contacts")["data"]) == 5
    assert store.saves == 0
    assert [r.path for r in emu.requests] == ["/grow/contacts"]


@pytest.mark.integration
def test_second_401_after_a_refresh_is_an_auth_error(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    # Every token expires the moment it is issued, so the resend after the refresh is rejected too.
    emu = clio_emulator_factory(records={"contacts": 5}, rate_limit=None, access_token_ttl=0)
    hook = emulator_hook(monkeypatch, emu, fake_time)
    with pytest.raises(ClioAuthError) as info:
        hook.get("grow/contacts")
    assert info.value.status_code == 401
    assert "even after a refresh" in info.value.message
    assert emu.count(status=401) == 2  # one resend, never more
    assert hook.token_manager.refreshes == 2


@pytest.mark.integration
def test_revoked_refresh_token_is_an_auth_error(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory()
    conn = emu.connection()
    # Spend the connection's refresh token elsewhere: Clio revokes it at once.
    form = {
        "grant_type": "refresh_token",
        "refresh_token": conn["extra"]["refresh_token"],
        "client_id": conn["login"],
        "client_secret": conn["password"],
    }
    assert requests.post(f"{emu.url}/oauth/token", data=form, timeout=5).status_code == 200
    set_conn(monkeypatch, conn)
    hook = ClioHook(CONN_ID, token_store=MemoryTokenStore(), clock=fake_time.clock, sleep=lambda s: None)
    with pytest.raises(ClioAuthError, match="invalid_grant"):
        hook.get("grow/contacts")
    assert not api_requests(emu)


@pytest.mark.integration
def test_a_missing_refresh_token_is_an_auth_error_not_a_config_error(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    # What docs/connection.md promises: the connection is valid, the first refresh names the fix.
    emu = clio_emulator_factory()
    conn = emu.connection()
    del conn["extra"]["refresh_token"]
    set_conn(monkeypatch, conn)
    hook = ClioHook(CONN_ID, token_store=MemoryTokenStore(), clock=fake_time.clock, sleep=lambda s: None)
    assert hook.config.refresh_token is None
    with pytest.raises(ClioAuthError, match="has no refresh token") as info:
        hook.get("grow/contacts")
    assert "airflow clio auth" in str(info.value)
    assert emu.requests == []


@pytest.mark.integration
@pytest.mark.parametrize("after_401", [False, True])
def test_a_lost_refresh_race_is_retried_and_adopts_the_winners_tokens(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime, after_401: bool
) -> None:
    # Another worker spends the stored refresh token first and stores the rotated pair only after this
    # hook's invalid_grant wait is over: the hook backs off and retries instead of failing the task.
    emu = clio_emulator_factory(records={"contacts": 5}, rate_limit=None)
    conn = emu.connection()
    set_conn(monkeypatch, conn)
    shared = emu.issue_refresh_token("clio-emulator-us")
    if after_401:
        access, _ = emu.issue_access_token("clio-emulator-us")
        emu.expire_access_tokens()  # the stored access token looks valid but answers 401
        stored = TokenSet(access, shared, datetime.now(timezone.utc).timestamp() + 3600)
    else:
        stored = TokenSet(None, shared, None)
    store = MemoryTokenStore({CONN_ID: stored})
    form = {"grant_type": "refresh_token", "refresh_token": shared, "client_id": conn["login"]}
    winner = requests.post(
        f"{emu.url}/oauth/token", data={**form, "client_secret": conn["password"]}, timeout=5
    )
    assert winner.status_code == 200
    body = winner.json()

    def sleep(seconds: float) -> None:
        fake_time.sleep(seconds)
        lost = emu.count(status=400) == 1
        if lost and seconds != hook.token_manager.poll_interval and store.saves == 0:
            # The hook's backoff after the lost race: the winner's save lands now.
            store.save(CONN_ID, TokenSet(body["access_token"], body["refresh_token"], None))

    hook = ClioHook(CONN_ID, token_store=store, clock=fake_time.clock, sleep=sleep)
    fake_time.now += 1.0  # past the limiter's hand-over window
    assert len(hook.get("grow/contacts")["data"]) == 5
    assert hook.stats.retries == 1
    assert hook.token_manager.refreshes == 0
    assert emu.count(status=400) == 1  # the shared token was presented once, never again
    # The connection's own token was not presented as a last resort: it still works.
    again = requests.post(
        f"{emu.url}/oauth/token",
        data={**form, "refresh_token": conn["extra"]["refresh_token"], "client_secret": conn["password"]},
        timeout=5,
    )
    assert again.status_code == 200


@pytest.mark.integration
def test_get_record_and_etags(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory(records={"contacts": 20}, rate_limit=None)
    hook = emulator_hook(monkeypatch, emu, fake_time)
    first = hook.get_record("grow/contacts", 7)
    assert first.data == emu.records("contacts")[6]
    assert first.etag
    assert first.last_modified
    assert not first.not_modified
    again = hook.get_record("grow/contacts", 7, etag=first.etag)
    assert again.not_modified
    assert again.data is None
    assert again.etag == first.etag
    emu.touch("contacts", [7])
    changed = hook.get_record("grow/contacts", "7", fields=["id", "updated_at"], etag=first.etag)
    assert not changed.not_modified
    assert changed.data == {"id": 7, "updated_at": emu.records("contacts")[6]["updated_at"]}
    assert changed.etag != first.etag
    assert [r.path for r in api_requests(emu)] == ["/grow/contacts/7"] * 3


@pytest.mark.integration
def test_resume_from_a_checkpointed_next_url(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory(records={"contacts": 130}, page_size=50, rate_limit=None)
    hook = emulator_hook(monkeypatch, emu, fake_time)
    first = next(hook.iter_pages("grow/contacts", fields="id"))
    assert first.next_url
    resumed = list(hook.iter_pages("grow/contacts", fields="id", start_url=first.next_url))
    ids = [r["id"] for r in first.records] + [r["id"] for p in resumed for r in p.records]
    assert ids == list(range(1, 131))
    assert [p.number for p in resumed] == [1, 2]
    assert resumed[0].url == first.next_url


@pytest.mark.integration
def test_foreign_start_url_is_refused_before_any_request(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory()
    hook = emulator_hook(monkeypatch, emu, fake_time)
    with pytest.raises(ClioPaginationError, match="start URL"):
        next(hook.iter_pages("grow/contacts", start_url="https://evil.example/grow/contacts?page_token=x"))
    assert emu.requests == []


def token_calls(emu: ClioEmulator) -> list[int]:
    return [r.status for r in emu.requests if r.path == "/oauth/token"]


@pytest.mark.integration
def test_test_connection_verifies_the_client_without_spending_the_refresh_token(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory()
    store = MemoryTokenStore()
    hook = emulator_hook(monkeypatch, emu, fake_time, region="eu", store=store)
    ok, message = hook.test_connection()
    assert ok, message
    assert "accepted the client credentials of application clio-emulator-eu" in message
    assert "the rotating refresh token is not spent by this test" in message
    assert "airflow clio check --conn-id" in message
    # One token-endpoint call, answered invalid_grant for the made-up token; no API call, nothing stored.
    assert token_calls(emu) == [400]
    assert api_requests(emu) == []
    assert store.saves == 0
    # The connection's refresh token still works: the full check spends it now, and only now.
    ok, message = hook.check_connection()
    assert ok, message
    assert "clio_eu" in message
    assert token_calls(emu) == [400, 200]
    assert [(r.path, r.query) for r in api_requests(emu)] == [("/grow/users", {"fields": ["id"]})]

    conn = emu.connection(region="eu")
    conn["password"] = "wrong-secret-value"
    set_conn(monkeypatch, conn, "clio_bad")
    for check in ("test_connection", "check_connection"):
        bad = ClioHook("clio_bad", token_store=MemoryTokenStore(), sleep=fake_time.sleep)
        ok, message = getattr(bad, check)()
        assert not ok
        assert "invalid_client" in message
        assert "wrong-secret-value" not in message
        assert conn["extra"]["refresh_token"] not in message


@pytest.mark.integration
def test_test_connection_uses_a_valid_access_token_and_never_refreshes_it(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory()
    token, expires_at = emu.issue_access_token("clio-emulator-us")
    set_conn(monkeypatch, emu.connection(access_token=token, expires_at=expires_at))
    store = MemoryTokenStore()
    hook = ClioHook(CONN_ID, token_store=store, clock=fake_time.clock, sleep=fake_time.sleep)
    ok, message = hook.test_connection()
    assert ok, message
    assert "with the current access token" in message
    assert [(r.path, r.status) for r in emu.requests] == [("/grow/users", 200)]

    emu.expire_access_tokens()
    emu.clear_requests()
    ok, message = ClioHook(CONN_ID, token_store=store, sleep=fake_time.sleep).test_connection()
    assert ok, message
    assert message.startswith("The known access token was rejected (HTTP 401")
    assert "accepted the client credentials" in message
    # A 401 does not make this test refresh: the API call once, then the client check, nothing stored.
    assert [(r.path, r.status) for r in emu.requests] == [("/grow/users", 401), ("/oauth/token", 400)]
    assert store.saves == 0


@pytest.mark.integration
def test_the_ui_test_button_leaves_the_real_connection_working(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime, airflow_db: Any
) -> None:
    # Airflow 3.3's POST /connections/test exports the form's connection under a random id
    # (AIRFLOW_CONN_<RANDOM>) and calls test_connection() there, with the default Variable store.
    from airflow.models import Variable

    emu = clio_emulator_factory()
    conn = emu.connection(region="us")
    set_conn(monkeypatch, conn, "clio_ui_real")
    transient = "Xq7bT2zK"
    set_conn(monkeypatch, conn, transient)
    ok, message = ClioHook(transient, pool_slots=1, sleep=fake_time.sleep).test_connection()
    assert ok, message
    monkeypatch.delenv(f"AIRFLOW_CONN_{transient.upper()}")
    assert Variable.get(f"clio_oauth_tokens__{transient}", default_var=None) is None
    assert Variable.get("clio_oauth_tokens__clio_ui_real", default_var=None) is None
    assert token_calls(emu) == [400]

    # The real connection's refresh token was not spent: a task (or airflow clio check) still works.
    ok, message = ClioHook("clio_ui_real", pool_slots=1, sleep=fake_time.sleep).check_connection()
    assert ok, message
    assert token_calls(emu) == [400, 200]
    assert Variable.get("clio_oauth_tokens__clio_ui_real", default_var=None) is not None
    Variable.delete("clio_oauth_tokens__clio_ui_real")


def test_test_connection_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, base_conn(region="mars"))
    ok, message = ClioHook(CONN_ID).test_connection()
    assert not ok
    assert "region" in message


@pytest.mark.integration
def test_post_form_only_reaches_the_token_endpoint(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory()
    hook = emulator_hook(monkeypatch, emu, fake_time)
    with pytest.raises(ClioConfigError, match="token endpoint"):
        hook.post_form("https://evil.example/oauth/token", {"client_secret": "x"})
    response = hook.post_form(hook.config.token_url, {"grant_type": "refresh_token", "refresh_token": "nope"})
    assert response.status_code in (400, 401)
    assert hook.stats.requests == 0  # token calls are not API requests
    assert hook.stats.token_requests == 1


@pytest.mark.integration
def test_no_secret_reaches_logs_or_output(
    monkeypatch: pytest.MonkeyPatch,
    clio_emulator_factory: Any,
    fake_time: FakeTime,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emu = clio_emulator_factory(records={"contacts": 120}, page_size=30, rate_limit=None)
    emu.set_faults(Faults(seed=5, error_rate=0.2, drop_rate=0.05, truncate_rate=0.05))
    emu.register_app(client_id="clio-leak-test", client_secret="very-secret-client-value", region="us")
    conn = emu.connection(client_id="clio-leak-test")
    set_conn(monkeypatch, conn)
    store = RecordingStore()
    with caplog.at_level(logging.DEBUG):
        hook = ClioHook(CONN_ID, token_store=store, clock=fake_time.clock, sleep=fake_time.sleep)
        pages = hook.iter_pages("grow/contacts", fields="id,name")
        list(next(pages).records)
        emu.expire_access_tokens()  # forces a 401 and a refresh mid-run
        assert sum(len(p.records) for p in pages) == 90
        with pytest.raises(ClioBadRequestError):
            hook.get("grow/contacts", params={"fields": "id,bogus"})
        bad = dict(conn, password="another-wrong-secret")
        set_conn(monkeypatch, bad, "clio_bad")
        ok, message = ClioHook("clio_bad", token_store=MemoryTokenStore()).test_connection()
        assert not ok
        hook.log.info("done: %s", message)
    captured = capsys.readouterr()
    text = caplog.text + captured.out + captured.err + message
    # The hook logs through structlog (captured by capsys), auth and urllib3 through stdlib logging (caplog):
    # make sure the capture really saw the hook's page lines.
    assert "page 4" in text
    secrets = {"very-secret-client-value", "another-wrong-secret", conn["extra"]["refresh_token"]}
    for tokens in store.history:
        secrets |= {tokens.access_token or "", tokens.refresh_token}
    secrets.discard("")
    assert len(secrets) >= 7  # client secrets, the first refresh token, two rotated pairs
    leaked = [s for s in secrets if s in text]
    assert leaked == []


@pytest.mark.integration
def test_stats_counts_match_the_emulator_log(
    monkeypatch: pytest.MonkeyPatch, clio_emulator_factory: Any, fake_time: FakeTime
) -> None:
    emu = clio_emulator_factory(records={"contacts": 90}, page_size=30, rate_limit=None)
    hook = emulator_hook(monkeypatch, emu, fake_time)
    assert sum(1 for _ in hook.paginate("grow/contacts", fields="id")) == 90
    assert len(api_requests(emu)) == 3
    assert (hook.stats.requests, hook.stats.pages, hook.stats.records) == (3, 3, 90)
    assert hook.stats.limiter_wait_seconds == pytest.approx(2.1)


class RecordingStatsBackend:
    """An Airflow metrics backend (the StatsLogger interface) that keeps what it is sent."""

    def __init__(self) -> None:
        self.counters: list[tuple[str, dict[str, Any]]] = []
        self.timings: list[tuple[str, dict[str, Any]]] = []
        self.gauges: list[tuple[str, float, dict[str, Any]]] = []

    def incr(self, stat: str, count: int = 1, rate: float = 1, *, tags: dict[str, Any] | None = None) -> None:
        self.counters.extend([(stat, dict(tags or {}))] * count)

    def timing(self, stat: str, dt: Any, *, tags: dict[str, Any] | None = None) -> None:
        self.timings.append((stat, dict(tags or {})))

    def gauge(
        self,
        stat: str,
        value: float,
        rate: float = 1,
        delta: bool = False,
        *,
        tags: dict[str, Any] | None = None,
    ) -> None:
        self.gauges.append((stat, value, dict(tags or {})))


@pytest.fixture
def metrics() -> Iterator[RecordingStatsBackend]:
    from airflow.sdk._shared.observability.metrics import stats as stats_module

    saved = (stats_module._factory, stats_module._export_legacy_names)
    backend = RecordingStatsBackend()
    stats_module.initialize(factory=lambda: backend, export_legacy_names=False)
    yield backend
    stats_module.initialize(factory=saved[0], export_legacy_names=saved[1])


@pytest.mark.integration
def test_requests_429s_and_limiter_waits_reach_airflow_metrics(
    monkeypatch: pytest.MonkeyPatch,
    clio_emulator_factory: Any,
    fake_time: FakeTime,
    metrics: RecordingStatsBackend,
) -> None:
    emu = clio_emulator_factory(records={"contacts": 120}, page_size=50, rate_limit=None)
    hook = emulator_hook(monkeypatch, emu, fake_time)
    emu.set_faults(Faults(outage_requests=2, outage_status=429))
    assert len(list(hook.paginate("grow/contacts", fields="id"))) == 120

    requests = [tags for stat, tags in metrics.counters if stat == "clio.requests"]
    assert len(requests) == len(api_requests(emu)) == 5
    assert {(t["region"], t["endpoint"]) for t in requests} == {("us", "grow/contacts")}
    assert sorted(t["status"] for t in requests) == ["200", "200", "200", "429", "429"]
    rate_limited = [tags for stat, tags in metrics.counters if stat == "clio.rate_limited"]
    assert rate_limited == [{"region": "us", "endpoint": "grow/contacts"}] * 2
    assert [stat for stat, _ in metrics.timings] == ["clio.limiter_wait"] * 5
    # The rate this hook paces at (1 slot x requests_per_slot), once per hook, tagged with region and pool.
    assert metrics.gauges == [("clio.paced_rate", hook.rate, {"region": "us", "pool": "clio_us"})]


# -- the budget pool ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_task_outside_the_connections_pool_is_refused_before_any_request(
    airflow_db: Any, clio_emulator_factory: Any, monkeypatch: pytest.MonkeyPatch, support: Any
) -> None:
    # Issue 8 finding 5: a plain @task in default_pool must not add its requests to a full clio_us pool.
    from airflow.sdk import task

    emu = clio_emulator_factory(rate_limit=1000, records={"contacts": 30}, page_size=10)
    conn_id = support.clio_connection(monkeypatch, emu)
    store = MemoryTokenStore()
    errors: list[str] = []
    before: list[int] = []

    with support.manual_dag("hook_pool") as dag:

        @task(pool="default_pool")
        def outside() -> None:
            try:
                list(ClioHook(conn_id, token_store=store).paginate("grow/contacts"))
            except ClioConfigError as err:
                errors.append(str(err))
                raise

        @task(pool="default_pool", trigger_rule="all_done")
        def opted_out() -> int:
            before.append(len(emu.requests))
            hook = ClioHook(conn_id, token_store=store, enforce_pool=False)
            return len(list(hook.paginate("grow/contacts")))

        @task(pool="clio_us")
        def inside() -> int:
            return len(list(ClioHook(conn_id, token_store=store).paginate("grow/contacts")))

        outside() >> opted_out() >> inside()

    dag_run = support.run_dag(dag)
    assert support.ti_state(dag_run, "outside") == "failed"
    assert len(errors) == 1
    assert "runs in pool 'default_pool'" in errors[0]
    assert "held by pool 'clio_us'" in errors[0]
    assert "enforce_pool=False" in errors[0]
    assert before == [0]  # refused before any request, the token endpoint included
    assert support.ti_state(dag_run, "opted_out") == "success"
    assert support.xcom_value(dag_run, "opted_out") == 30
    assert support.ti_state(dag_run, "inside") == "success"
    assert support.xcom_value(dag_run, "inside") == 30


def test_outside_a_task_the_pool_is_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # CLI, scripts and the triggerer have no task pool; a task object without a pool is not checked either.
    set_conn(monkeypatch, base_conn())
    hook = ClioHook(CONN_ID)
    hook._check_pool()
    with set_current_context({"task": SimpleNamespace(task_id="t", pool="default_pool")}):  # type: ignore[arg-type]
        with pytest.raises(ClioConfigError, match=r"'default_pool'.*'clio_us'"):
            ClioHook(CONN_ID)._check_pool()
        ClioHook(CONN_ID, enforce_pool=False)._check_pool()
        hook._check_pool()  # checked once, outside the task
