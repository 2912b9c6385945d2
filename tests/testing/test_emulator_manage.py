# SPDX-License-Identifier: Apache-2.0
"""The emulator's Manage API v4 mode over real HTTP: paging, fields, offset cap, per-token windows,
peak/off-peak, non-rotating refresh tokens, X-API-VERSION, recording and determinism."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_clio.testing import ClioEmulator, Faults
from airflow_provider_clio.testing.emulator import _parser
from airflow_provider_clio.testing.manage import ManageSettings
from airflow_provider_clio.testing.manage.limiter import TokenWindowLimiter, is_clio_peak
from airflow_provider_clio.testing.manage.settings import manage_settings_from_args

US = "clio-manage-us"
SECRET = "emulator-secret"
FAST = {"peak_limit": 100_000, "off_peak_limit": 100_000}

Make = Callable[..., ClioEmulator]


@pytest.fixture
def sessions() -> Iterator[Callable[[ClioEmulator], requests.Session]]:
    """Return ``make(emu, client_id=US) -> Session`` carrying a fresh Manage access token."""
    made: list[requests.Session] = []

    def make(emu: ClioEmulator, client_id: str = US) -> requests.Session:
        token, _ = emu.issue_manage_access_token(client_id)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


@pytest.fixture
def emu(clio_emulator_factory: Make) -> ClioEmulator:
    return clio_emulator_factory(manage={"records": {"matters": 300, "activities": 450}, **FAST})


@pytest.fixture
def api(emu: ClioEmulator, sessions: Callable[[ClioEmulator], requests.Session]) -> requests.Session:
    return sessions(emu)


def get(address: str, **kwargs: Any) -> requests.Response:
    return requests.get(address, timeout=10, **kwargs)


def post(address: str, **kwargs: Any) -> requests.Response:
    return requests.post(address, timeout=10, **kwargs)


def url(emu: ClioEmulator, resource: str) -> str:
    return f"{emu.url}/api/v4/{resource}.json"


def crawl(session: requests.Session, first: str, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Follow ``meta.paging.next`` exactly as returned; return (records, pages)."""
    records: list[dict[str, Any]] = []
    response = session.get(first, params=params)
    pages = 0
    while True:
        assert response.status_code == 200, response.text
        pages += 1
        body = response.json()
        records.extend(body["data"])
        nxt = body["meta"]["paging"].get("next")
        if not nxt:
            return records, pages
        response = session.get(nxt)


def error(response: requests.Response, status: int) -> dict[str, str]:
    """Assert a Manage error answer and return its ``error`` object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message"}
    return body["error"]


class TestPaging:
    @pytest.mark.parametrize(("n", "pages"), [(0, 1), (1, 1), (200, 1), (201, 2), (1000, 5), (20_000, 100)])
    def test_cursor_paging_is_exact(
        self, clio_emulator_factory: Make, sessions: Callable[..., requests.Session], n: int, pages: int
    ) -> None:
        emu = clio_emulator_factory(manage={"records": {"activities": n}, **FAST})
        got, count = crawl(sessions(emu), url(emu, "activities"), fields="id,etag", order="id(asc)")
        assert [r["id"] for r in got] == list(range(1, n + 1))
        assert count == pages
        truth = emu.manage_records("activities")
        assert [r["etag"] for r in got] == [r["etag"] for r in truth]
        assert all("offset" not in r.query for r in emu.manage_requests())

    def test_next_is_absolute_with_an_opaque_page_token_and_default_limit_200(
        self, emu: ClioEmulator, api: requests.Session
    ) -> None:
        body = api.get(url(emu, "activities"), params={"fields": "id", "order": "id(asc)"}).json()
        assert len(body["data"]) == 200
        nxt = urlsplit(body["meta"]["paging"]["next"])
        assert f"{nxt.scheme}://{nxt.netloc}" == emu.url
        assert nxt.path == "/api/v4/activities.json"
        assert parse_qs(nxt.query)["order"] == ["id(asc)"]
        assert parse_qs(nxt.query)["page_token"]

    def test_small_limit_pages_and_json_suffix_is_optional(
        self, emu: ClioEmulator, api: requests.Session
    ) -> None:
        got, pages = crawl(api, f"{emu.url}/api/v4/matters", fields="id", limit="7")
        assert [r["id"] for r in got] == list(range(1, 301))
        assert pages == 43
        a = api.get(f"{emu.url}/api/v4/matters", params={"fields": "id,display_number"}).json()
        b = api.get(f"{emu.url}/api/v4/matters.json", params={"fields": "id,display_number"}).json()
        assert a["data"] == b["data"]

    @pytest.mark.parametrize("limit", ["0", "201", "x"])
    def test_limit_outside_1_to_200_is_400(
        self, emu: ClioEmulator, api: requests.Session, limit: str
    ) -> None:
        assert "limit" in error(api.get(url(emu, "matters"), params={"limit": limit}), 400)["message"]

    def test_a_page_token_replayed_with_other_filters_is_400(
        self, emu: ClioEmulator, api: requests.Session
    ) -> None:
        nxt = api.get(url(emu, "matters"), params={"fields": "id"}).json()["meta"]["paging"]["next"]
        token = parse_qs(urlsplit(nxt).query)["page_token"][0]
        response = api.get(url(emu, "matters"), params={"fields": "id,etag", "page_token": token})
        assert "page_token" in error(response, 400)["message"]


class TestOffset:
    def test_offset_paging_works_below_the_cap_and_is_recorded(
        self, clio_emulator_factory: Make, sessions: Callable[..., requests.Session]
    ) -> None:
        emu = clio_emulator_factory(manage={"records": {"activities": 10_050}, **FAST})
        api = sessions(emu)
        body = api.get(url(emu, "activities"), params={"fields": "id", "offset": "9800"}).json()
        assert [r["id"] for r in body["data"]] == list(range(9801, 10001))
        assert parse_qs(urlsplit(body["meta"]["paging"]["next"]).query)["offset"] == ["10000"]
        assert [r.query.get("offset") for r in emu.manage_requests()] == [["9800"]]

    @pytest.mark.parametrize(("offset", "limit"), [("10000", "200"), ("9900", "200"), ("9999", "2")])
    def test_offset_past_10000_records_is_422_argument_error(
        self, emu: ClioEmulator, api: requests.Session, offset: str, limit: str
    ) -> None:
        err = error(api.get(url(emu, "activities"), params={"offset": offset, "limit": limit}), 422)
        assert err["type"] == "ArgumentError"
        assert "10000" in err["message"]


class TestFields:
    def test_without_fields_only_id_and_etag(self, emu: ClioEmulator, api: requests.Session) -> None:
        for resource in (
            "matters",
            "activities",
            "bills",
            "contacts",
            "tasks",
            "outstanding_client_balances",
        ):
            record = api.get(url(emu, resource), params={"limit": "1"}).json()["data"][0]
            assert set(record) == {"id", "etag"}
            assert record["etag"].startswith('"')
            assert record["etag"].endswith('"')

    def test_one_level_of_braces_and_nested_defaults(self, emu: ClioEmulator, api: requests.Session) -> None:
        fields = "id,quantity,type,matter{id,display_number},user"
        record = api.get(url(emu, "activities"), params={"fields": fields, "limit": "1"}).json()["data"][0]
        truth = emu.manage_records("activities")[0]
        assert record == {
            "id": 1,
            "quantity": truth["quantity"],
            "type": truth["type"],
            "matter": truth["matter"],
            "user": {"id": truth["user"]["id"]},
        }
        # quantity is in seconds (whole minutes of time entries).
        assert isinstance(record["quantity"], int)

    @pytest.mark.parametrize(
        ("fields", "needle"),
        [
            ("id,matter{client{name}}", "nesting"),
            ("id,nonsense", "nonsense"),
            ("id,matter{nonsense}", "nonsense"),
            ("id,quantity{id}", "not a nested record"),
            ("id,matter{id", "unbalanced"),
        ],
    )
    def test_bad_fields_are_400_with_a_manage_body(
        self, emu: ClioEmulator, api: requests.Session, fields: str, needle: str
    ) -> None:
        err = error(api.get(url(emu, "activities"), params={"fields": fields}), 400)
        assert err["type"] == "BadRequest"
        assert needle in err["message"]


class TestFilters:
    def test_updated_since_is_exclusive_by_default(self, emu: ClioEmulator, api: requests.Session) -> None:
        at = datetime.datetime(2027, 1, 1, tzinfo=datetime.timezone.utc)
        emu.manage.store.touch("matters", [5, 9], at)
        params = {"fields": "id,updated_at"}
        same = api.get(url(emu, "matters"), params={**params, "updated_since": at.isoformat()}).json()
        assert same["data"] == []
        before = (at - datetime.timedelta(seconds=1)).isoformat()
        got = api.get(url(emu, "matters"), params={**params, "updated_since": before}).json()["data"]
        assert [r["id"] for r in got] == [5, 9]
        assert got[0]["updated_at"] == at.isoformat()

    def test_updated_since_inclusive_knob(
        self, clio_emulator_factory: Make, sessions: Callable[..., requests.Session]
    ) -> None:
        emu = clio_emulator_factory(manage={"updated_since_inclusive": True, **FAST})
        at = datetime.datetime(2027, 1, 1, tzinfo=datetime.timezone.utc)
        emu.manage.store.touch("bills", [3], at)
        got = sessions(emu).get(url(emu, "bills"), params={"updated_since": at.isoformat()}).json()
        assert [r["id"] for r in got["data"]] == [3]

    def test_lists_without_updated_since_answer_400(self, emu: ClioEmulator, api: requests.Session) -> None:
        response = api.get(
            url(emu, "outstanding_client_balances"), params={"updated_since": "2026-01-01T00:00:00Z"}
        )
        assert "updated_since" in error(response, 400)["message"]
        assert api.get(url(emu, "outstanding_client_balances"), params={"fields": "id"}).status_code == 200

    def test_repeated_parameter_is_400(self, emu: ClioEmulator, api: requests.Session) -> None:
        error(api.get(f"{url(emu, 'matters')}?fields=id&fields=etag"), 400)


class TestSingleRecord:
    def test_etag_and_304(self, emu: ClioEmulator, api: requests.Session) -> None:
        first = api.get(f"{emu.url}/api/v4/bills/7.json", params={"fields": "id,etag,total"})
        assert first.status_code == 200
        etag = first.headers["ETag"]
        assert first.json()["data"]["etag"] == etag
        assert "Last-Modified" in first.headers
        again = api.get(f"{emu.url}/api/v4/bills/7", headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        emu.manage.store.touch("bills", [7])
        changed = api.get(f"{emu.url}/api/v4/bills/7", headers={"If-None-Match": etag})
        assert changed.status_code == 200
        assert changed.headers["ETag"] != etag

    def test_missing_record_and_unknown_resource_are_404(
        self, emu: ClioEmulator, api: requests.Session
    ) -> None:
        assert error(api.get(f"{emu.url}/api/v4/matters/999999"), 404)["type"] == "RecordNotFound"
        error(api.get(f"{emu.url}/api/v4/nonsense"), 404)


def _limited(make: Make, faults: Faults | None = None, **settings: Any) -> ClioEmulator:
    return make(manage={"peak_limit": 5, "off_peak_limit": 8, **settings}, faults=faults)


class TestRateLimit:
    def test_headers_on_every_answer_counted_per_token(
        self, clio_emulator_factory: Make, sessions: Callable[..., requests.Session]
    ) -> None:
        emu = _limited(clio_emulator_factory)
        a, b = sessions(emu), sessions(emu)
        before = time.time()
        seen = [a.get(url(emu, "matters")).headers for _ in range(3)]
        assert [h["X-RateLimit-Remaining"] for h in seen] == ["4", "3", "2"]
        assert {h["X-RateLimit-Limit"] for h in seen} == {"5"}
        reset = int(seen[0]["X-RateLimit-Reset"])
        assert before + 60 <= reset <= time.time() + 61
        assert {h["X-RateLimit-Reset"] for h in seen} == {str(reset)}
        # Another token has its own window; errors answered after the limiter count and carry headers.
        assert b.get(url(emu, "matters")).headers["X-RateLimit-Remaining"] == "4"
        bad = b.get(url(emu, "matters"), params={"fields": "nonsense"})
        assert bad.status_code == 400
        assert bad.headers["X-RateLimit-Remaining"] == "3"

    def test_429_with_retry_after_and_a_manage_body(
        self, clio_emulator_factory: Make, sessions: Callable[..., requests.Session]
    ) -> None:
        emu = _limited(clio_emulator_factory)
        a, b = sessions(emu), sessions(emu)
        assert [a.get(url(emu, "tasks")).status_code for _ in range(6)] == [200] * 5 + [429]
        refused = a.get(url(emu, "tasks"))
        assert error(refused, 429)["type"] == "RateLimited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        assert b.get(url(emu, "tasks")).status_code == 200
        token_a = emu.manage_requests(status=429)[0].token_id
        assert {r.token_id for r in emu.manage_requests(status=429)} == {token_a}
        assert emu.manage_max_in_window(statuses={200}) == 5

    @pytest.mark.serial  # six requests inside one real 1 s window: no other xdist worker on the CPU
    def test_the_window_resets_at_x_ratelimit_reset(
        self, clio_emulator_factory: Make, sessions: Callable[..., requests.Session]
    ) -> None:
        emu = _limited(clio_emulator_factory, window=1.0)
        api = sessions(emu)
        statuses = [api.get(url(emu, "matters")).status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        time.sleep(float(api.get(url(emu, "matters")).headers["Retry-After"]) + 0.05)
        assert api.get(url(emu, "matters")).headers["X-RateLimit-Remaining"] == "4"

    def test_peak_to_off_peak_switch_raises_the_limit_mid_window(
        self, clio_emulator_factory: Make, sessions: Callable[..., requests.Session]
    ) -> None:
        emu = _limited(clio_emulator_factory)
        api = sessions(emu)
        assert [api.get(url(emu, "bills")).status_code for _ in range(6)][-1] == 429
        emu.set_peak(False)
        off = api.get(url(emu, "bills"))
        assert off.status_code == 200
        assert (off.headers["X-RateLimit-Limit"], off.headers["X-RateLimit-Remaining"]) == ("8", "2")
        emu.set_peak(True)
        assert api.get(url(emu, "bills")).status_code == 429

    def test_a_limit_dropped_mid_window_refuses_at_once(
        self, clio_emulator_factory: Make, sessions: Callable[..., requests.Session]
    ) -> None:
        emu = _limited(clio_emulator_factory, peak_limit=10)
        api = sessions(emu)
        for _ in range(4):
            assert api.get(url(emu, "contacts")).status_code == 200
        emu.set_manage_limit(3)
        refused = api.get(url(emu, "contacts"))
        assert refused.status_code == 429
        assert refused.headers["X-RateLimit-Limit"] == "3"
        assert int(refused.headers["Retry-After"]) >= 1
        # A fresh token starts a fresh window under the new limit.
        fresh = sessions(emu)
        assert [fresh.get(url(emu, "contacts")).status_code for _ in range(4)] == [200] * 3 + [429]

    def test_endpoint_limits_have_their_own_window(
        self, clio_emulator_factory: Make, sessions: Callable[..., requests.Session]
    ) -> None:
        emu = _limited(clio_emulator_factory, endpoint_limits={"bills": 2})
        api = sessions(emu)
        assert [api.get(url(emu, "bills")).status_code for _ in range(3)] == [200, 200, 429]
        matters = api.get(url(emu, "matters"))
        assert matters.status_code == 200
        assert matters.headers["X-RateLimit-Remaining"] == "4"
        emu.set_manage_limit(None, endpoint="bills")
        assert api.get(url(emu, "bills")).headers["X-RateLimit-Limit"] == "5"

    def test_another_client_on_the_same_token_uses_the_budget(
        self, clio_emulator_factory: Make, sessions: Callable[..., requests.Session]
    ) -> None:
        emu = _limited(clio_emulator_factory)
        api = sessions(emu)
        assert api.get(url(emu, "matters")).headers["X-RateLimit-Remaining"] == "4"
        emu.consume_manage_budget(3)
        assert api.get(url(emu, "matters")).headers["X-RateLimit-Remaining"] == "0"
        assert api.get(url(emu, "matters")).status_code == 429

    def test_a_scripted_schedule_switches_by_time(
        self, clio_emulator_factory: Make, sessions: Callable[..., requests.Session]
    ) -> None:
        switch_at = time.time() + 0.3
        emu = _limited(clio_emulator_factory, peak=lambda region, at: at < switch_at)
        api = sessions(emu)
        assert api.get(url(emu, "matters")).headers["X-RateLimit-Limit"] == "5"
        time.sleep(max(0.0, switch_at - time.time()) + 0.05)
        assert api.get(url(emu, "matters")).headers["X-RateLimit-Limit"] == "8"

    def test_injected_faults_answer_manage_bodies_with_the_window_headers(
        self, clio_emulator_factory: Make, sessions: Callable[..., requests.Session]
    ) -> None:
        emu = _limited(clio_emulator_factory, faults=None)
        emu.set_faults(Faults(outage_requests=2, outage_status=429))
        api = sessions(emu)
        first = api.get(url(emu, "matters"))
        assert error(first, 429)["type"] == "RateLimited"
        assert first.headers["X-RateLimit-Remaining"] == "5"
        assert 1 <= int(first.headers["Retry-After"]) <= 60
        emu.set_faults(Faults(outage_requests=1, outage_status=503))
        assert error(api.get(url(emu, "matters")), 503)["type"] == "ServiceUnavailable"
        assert api.get(url(emu, "matters")).headers["X-RateLimit-Remaining"] == "4"
        assert [r.fault for r in emu.manage_requests()] == ["outage", "outage", None]

    def test_clio_schedule_follows_each_regions_weekday_hours(self) -> None:
        # Wed 2026-03-04 18:00 UTC = 10:00 Pacific (US peak), 18:00 GMT (EU peak), 05:00 AEDT next day.
        wed = datetime.datetime(2026, 3, 4, 18, tzinfo=datetime.timezone.utc).timestamp()
        assert is_clio_peak("us", wed)
        assert is_clio_peak("eu", wed)
        assert not is_clio_peak("au", wed)
        sat = datetime.datetime(2026, 3, 7, 18, tzinfo=datetime.timezone.utc).timestamp()
        assert not is_clio_peak("us", sat)
        limiter = TokenWindowLimiter(1, 2, peak="clio")
        assert limiter.acquire("t", "us", None, wed).limit == 1
        assert limiter.acquire("t", "au", None, wed + 61).limit == 2


class TestOAuth:
    def refresh(self, emu: ClioEmulator, token: str, secret: str = SECRET) -> requests.Response:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": token,
            "client_id": US,
            "client_secret": secret,
        }
        return post(f"{emu.url}/oauth/token", data=form)

    def test_refresh_tokens_do_not_rotate_and_responses_omit_them(self, emu: ClioEmulator) -> None:
        token = emu.issue_manage_refresh_token()
        first, second = self.refresh(emu, token), self.refresh(emu, token)
        assert first.status_code == second.status_code == 200
        body = first.json()
        assert set(body) == {"token_type", "access_token", "expires_in"}
        assert (body["token_type"], body["expires_in"]) == ("bearer", 2_592_000)
        assert body["access_token"] != second.json()["access_token"]
        for access in (body["access_token"], second.json()["access_token"]):
            ok = get(url(emu, "matters"), headers={"Authorization": f"Bearer {access}"})
            assert ok.status_code == 200
        assert {token, body["access_token"]} <= emu.issued_tokens(US)

    def test_refresh_returns_token_knob_and_short_ttl(self, clio_emulator_factory: Make) -> None:
        emu = clio_emulator_factory(manage={"refresh_returns_token": True, "access_token_ttl": 0.5, **FAST})
        token = emu.issue_manage_refresh_token()
        body = self.refresh(emu, token).json()
        assert body["refresh_token"] == token
        assert body["expires_in"] in (0, 1)
        time.sleep(0.6)
        expired = get(url(emu, "matters"), headers={"Authorization": f"Bearer {body['access_token']}"})
        assert expired.status_code == 401
        assert expired.json()["error"] == "invalid_token"
        assert "error_description" in expired.json()
        assert self.refresh(emu, token).status_code == 200

    def test_oauth_errors(self, emu: ClioEmulator) -> None:
        assert self.refresh(emu, "emu-rt-unknown").json()["error"] == "invalid_grant"
        bad_client = self.refresh(emu, emu.issue_manage_refresh_token(), secret="wrong")
        assert (bad_client.status_code, bad_client.json()["error"]) == (401, "invalid_client")
        missing = get(url(emu, "matters"))
        assert missing.status_code == 401
        assert missing.json()["error"] == "invalid_token"
        # A Platform app's refresh still rotates: the two kinds of app are separate.
        platform = emu.issue_refresh_token("clio-emulator-us")
        form = {"grant_type": "refresh_token", "refresh_token": platform}
        form |= {"client_id": "clio-emulator-us", "client_secret": SECRET}
        assert "refresh_token" in post(f"{emu.url}/oauth/token", data=form).json()
        # A Platform token is not a Manage token.
        access, _ = emu.issue_access_token("clio-emulator-us")
        assert get(url(emu, "matters"), headers={"Authorization": f"Bearer {access}"}).status_code == 401

    def test_authorization_code_flow_and_deauthorize(self, emu: ClioEmulator) -> None:
        redirect = "http://localhost:8080/cb"
        auth = get(
            f"{emu.url}/oauth/authorize",
            params={"client_id": US, "response_type": "code", "redirect_uri": redirect, "state": "s1"},
            allow_redirects=False,
        )
        assert auth.status_code == 302
        query = parse_qs(urlsplit(auth.headers["Location"]).query)
        assert query["state"] == ["s1"]
        form = {"grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": redirect}
        body = post(f"{emu.url}/oauth/token", data={**form, "client_id": US, "client_secret": SECRET})
        tokens = body.json()
        assert tokens["token_type"] == "bearer"
        assert tokens["refresh_token"].startswith("emu-rt-")
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert post(f"{emu.url}/oauth/deauthorize", headers=bearer).status_code == 200
        assert get(url(emu, "matters"), headers=bearer).status_code == 401

    def test_connection_dict_for_manage(self, emu: ClioEmulator) -> None:
        conn = emu.connection(api="manage", region="eu", page_size=50)
        assert conn["host"] == emu.url
        assert conn["login"] == "clio-manage-eu"
        assert conn["extra"]["api"] == "manage"
        assert conn["extra"]["region"] == "eu"
        assert conn["extra"]["page_size"] == 50
        assert self_refresh_ok(emu, conn)
        custom = emu.manage_app("my-manage", "s3cret", "au")
        assert emu.connection("my-manage", api="manage")["extra"]["region"] == custom.region
        assert "api" not in emu.connection(region="eu")["extra"]


def self_refresh_ok(emu: ClioEmulator, conn: dict[str, Any]) -> bool:
    form = {"grant_type": "refresh_token", "refresh_token": conn["extra"]["refresh_token"]}
    form |= {"client_id": conn["login"], "client_secret": conn["password"]}
    return post(f"{emu.url}/oauth/token", data=form).status_code == 200


class TestVersion:
    def test_absent_version_gets_the_default_echoed_and_valid_ones_are_echoed(
        self, emu: ClioEmulator, api: requests.Session
    ) -> None:
        assert api.get(url(emu, "matters")).headers["X-API-VERSION"] == "4.0.13"
        assert (
            api.get(url(emu, "matters"), headers={"X-API-VERSION": "4.0.9"}).headers["X-API-VERSION"]
            == "4.0.9"
        )

    @pytest.mark.parametrize("version", ["3.0.0", "garbage", "4.0.14", "4.1.0", "4.0.2"])
    def test_invalid_or_retired_version_is_410(
        self, clio_emulator_factory: Make, sessions: Callable[..., requests.Session], version: str
    ) -> None:
        emu = clio_emulator_factory(manage={"retired_versions": ("4.0.2",), **FAST})
        err = error(sessions(emu).get(url(emu, "matters"), headers={"X-API-VERSION": version}), 410)
        assert version in err["message"]

    def test_versions_before_4_0_4_report_quantity_in_hours(
        self, emu: ClioEmulator, api: requests.Session
    ) -> None:
        params = {"fields": "quantity", "limit": "1"}
        seconds = api.get(url(emu, "activities"), params=params).json()["data"][0]["quantity"]
        old = api.get(url(emu, "activities"), params=params, headers={"X-API-VERSION": "4.0.3"})
        assert old.json()["data"][0]["quantity"] == round(seconds / 3600, 4)


class TestRecordingAndData:
    def test_requests_are_recorded_with_api_and_token_id_never_the_token(
        self, emu: ClioEmulator, sessions: Callable[..., requests.Session]
    ) -> None:
        token, _ = emu.issue_manage_access_token()
        get(url(emu, "matters"), headers={"Authorization": f"Bearer {token}"})
        platform = sessions(emu)  # a Manage session used on a Platform path: not Manage traffic
        platform.get(f"{emu.url}/grow/contacts")
        record = emu.manage_requests()[0]
        assert (record.api, record.client_id, record.region, record.resource, record.status) == (
            "manage",
            US,
            "us",
            "matters",
            200,
        )
        assert record.token_id == emu.manage_token_id(token)
        assert token not in json.dumps(record.to_dict())
        assert len(emu.manage_requests()) == 1
        assert emu.requests[-1].api == "platform"

    def test_records_are_deterministic_per_seed(self, clio_emulator_factory: Make) -> None:
        a = clio_emulator_factory(seed=7, manage={"records": {"bills": 50}})
        b = clio_emulator_factory(seed=7, manage={"records": {"bills": 50}})
        c = clio_emulator_factory(seed=8, manage={"records": {"bills": 50}})
        assert a.manage_records("bills") == b.manage_records("bills") != c.manage_records("bills")
        bill = a.manage_records("bills")[0]
        assert set(bill) >= {
            "id",
            "etag",
            "state",
            "issued_at",
            "due_at",
            "total",
            "balance",
            "matter",
            "client",
        }

    @pytest.mark.clio_emulator(manage={"records": {"tasks": 3}, "peak_limit": 2})
    def test_the_pytest_marker_takes_manage_settings(
        self, clio_emulator: ClioEmulator, sessions: Callable[..., requests.Session]
    ) -> None:
        api = sessions(clio_emulator)
        first = api.get(url(clio_emulator, "tasks"), params={"fields": "id"})
        assert first.json()["data"] == [{"id": 1}, {"id": 2}, {"id": 3}]
        assert first.headers["X-RateLimit-Limit"] == "2"

    def test_settings_validation(self) -> None:
        with pytest.raises(ValueError, match="unknown Manage settings"):
            ManageSettings.coerce({"nope": 1})
        with pytest.raises(ValueError, match="peak"):
            ManageSettings(peak="sometimes")
        with pytest.raises(ValueError, match="unknown Manage resources"):
            ClioEmulator(manage={"records": {"nonsense": 1}})


class TestCliAndAdmin:
    def test_manage_flags(self) -> None:
        args = _parser().parse_args(
            [
                "--manage-records",
                "activities=20000",
                "--manage-peak-limit",
                "40",
                "--manage-peak",
                "clio",
                "--manage-endpoint-limits",
                "bills=10",
                "--manage-window",
                "5",
                "--manage-refresh-returns-token",
                "--manage-retired-versions",
                "4.0.1,4.0.2",
            ]
        )
        settings = manage_settings_from_args(args)
        assert settings.records == {"activities": 20000}
        assert settings.peak_limit == 40
        assert settings.peak == "clio"
        assert settings.endpoint_limits == {"bills": 10}
        assert settings.window == 5
        assert settings.refresh_returns_token
        assert settings.retired_versions == ("4.0.1", "4.0.2")
        unlimited = manage_settings_from_args(_parser().parse_args(["--manage-no-rate-limit"]))
        assert unlimited.peak_limit is None
        assert unlimited.off_peak_limit is None

    def test_command_line_serves_manage_with_its_flags(self) -> None:
        argv = [sys.executable, "-m", "airflow_provider_clio.testing.emulator", "--port", "0"]
        argv += ["--manage-records", "bills=30", "--manage-peak-limit", "7", "--manage-app", "mine:pw:eu"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            apps = ready["manage_apps"]
            assert {apps[a]["region"] for a in ("clio-manage-us", "mine")} == {"us", "eu"}
            form = {"grant_type": "refresh_token", "refresh_token": apps["mine"]["refresh_token"]}
            form |= {"client_id": "mine", "client_secret": "pw"}
            token = post(f"{ready['url']}/oauth/token", data=form).json()["access_token"]
            bills = get(f"{ready['url']}/api/v4/bills", headers={"Authorization": f"Bearer {token}"})
            assert bills.headers["X-RateLimit-Limit"] == "7"
            assert len(bills.json()["data"]) == 30
        finally:
            proc.kill()
            proc.wait(timeout=10)

    def test_admin_switches_peak_and_limits_over_http(
        self, clio_emulator_factory: Make, sessions: Callable[..., requests.Session]
    ) -> None:
        emu = _limited(clio_emulator_factory)
        assert post(f"{emu.url}/_emulator/manage/peak", json={"peak": False}).json()["peak"] is False
        limits = post(f"{emu.url}/_emulator/manage/limit", json={"limit": 2}).json()
        assert limits["off_peak_limit"] == 2
        api = sessions(emu)
        assert [api.get(url(emu, "matters")).status_code for _ in range(3)] == [200, 200, 429]
        app = post(f"{emu.url}/_emulator/manage/apps", json={"client_id": "x", "region": "ca"}).json()
        assert app["region"] == "ca"
        assert app["refresh_token"].startswith("emu-rt-")
