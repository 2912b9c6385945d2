# SPDX-License-Identifier: Apache-2.0
"""The emulator's Grow API over real loopback HTTP: pagination, fields, time filters, ETags, errors."""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_clio.testing import ClioEmulator

UTC = datetime.timezone.utc


def fetch_all(
    session: requests.Session, url: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Follow ``meta.paging.next`` exactly as returned; fail on a repeated page URL."""
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    response = session.get(url, params=params)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        records.extend(body["data"])
        next_url = body["meta"]["paging"].get("next")
        if next_url is None:
            return records
        assert next_url not in seen
        seen.add(next_url)
        response = session.get(next_url)


def error_message(response: requests.Response) -> str:
    body = response.json()
    assert body["error"]["status"] == str(response.status_code)
    return body["error"]["message"]


class TestPagination:
    @pytest.mark.parametrize(
        ("count", "page_size"),
        [
            (0, 200),
            (1, 200),
            (199, 200),
            (200, 200),
            (201, 200),
            (1000, 200),
            (10, 1),
            (23, 7),
            (21, 7),
            (6, 7),
        ],
    )
    def test_every_record_exactly_once(
        self,
        clio_emulator_factory: Callable[..., ClioEmulator],
        api_session: Callable[..., requests.Session],
        count: int,
        page_size: int,
    ) -> None:
        emu = clio_emulator_factory(rate_limit=None, records={"contacts": count}, page_size=page_size)
        session = api_session(emu)
        records = fetch_all(session, f"{emu.url}/grow/contacts")
        ids = [r["id"] for r in records]
        assert ids == sorted(ids)
        assert len(ids) == len(set(ids)) == count
        assert records == emu.records("contacts")
        pages = emu.count(path_prefix="/grow/contacts")
        assert pages == max(1, -(-count // page_size))

    def test_last_full_page_has_no_next(self, emu: ClioEmulator, api: requests.Session) -> None:
        emu.add_records("sources", 190)  # 10 + 190 = exactly one page of 200
        body = api.get(f"{emu.url}/grow/sources").json()
        assert len(body["data"]) == 200
        assert "next" not in body["meta"]["paging"]

    def test_next_is_absolute_and_uses_the_clients_host(
        self, emu: ClioEmulator, api: requests.Session
    ) -> None:
        port = urlsplit(emu.url).port
        body = api.get(f"http://localhost:{port}/grow/contacts", params={"fields": "id,name"}).json()
        nxt = urlsplit(body["meta"]["paging"]["next"])
        assert (nxt.scheme, nxt.netloc, nxt.path) == ("http", f"localhost:{port}", "/grow/contacts")
        query = parse_qs(nxt.query)
        assert query["fields"] == ["id,name"]
        assert len(query["page_token"]) == 1

    def test_v2_path_is_the_same_resource(self, emu: ClioEmulator, api: requests.Session) -> None:
        records = fetch_all(api, f"{emu.url}/grow/v2/matters")
        assert records == emu.records("matters")

    def test_limit_parameter_sets_the_page_size(self, emu: ClioEmulator, api: requests.Session) -> None:
        body = api.get(f"{emu.url}/grow/contacts", params={"limit": 50}).json()
        assert [r["id"] for r in body["data"]] == list(range(1, 51))
        assert "limit=50" in body["meta"]["paging"]["next"]
        assert len(fetch_all(api, f"{emu.url}/grow/contacts", {"limit": 50})) == 450

    @pytest.mark.parametrize("limit", ["0", "201", "ten"])
    def test_bad_limit_is_400(self, emu: ClioEmulator, api: requests.Session, limit: str) -> None:
        assert api.get(f"{emu.url}/grow/contacts", params={"limit": limit}).status_code == 400

    def test_records_added_during_pagination_are_reached(
        self, emu: ClioEmulator, api: requests.Session
    ) -> None:
        first = api.get(f"{emu.url}/grow/contacts").json()
        new_ids = emu.add_records("contacts", 3)
        assert new_ids == [451, 452, 453]
        rest = fetch_all(api, first["meta"]["paging"]["next"])
        ids = [r["id"] for r in first["data"] + rest]
        assert ids == list(range(1, 454))

    def test_repeated_parameter_is_400(self, emu: ClioEmulator, api: requests.Session) -> None:
        response = api.get(f"{emu.url}/grow/contacts?fields=id&fields=id")
        assert response.status_code == 400
        assert "more than once" in error_message(response)

    def test_client_that_re_adds_params_to_next_is_caught(
        self, emu: ClioEmulator, api: requests.Session
    ) -> None:
        first = api.get(f"{emu.url}/grow/contacts", params={"fields": "id"}).json()
        response = api.get(first["meta"]["paging"]["next"], params={"fields": "id"})
        assert response.status_code == 400

    def test_page_token_with_other_filters_is_400(self, emu: ClioEmulator, api: requests.Session) -> None:
        nxt = api.get(f"{emu.url}/grow/contacts", params={"fields": "id"}).json()["meta"]["paging"]["next"]
        token = parse_qs(urlsplit(nxt).query)["page_token"][0]
        response = api.get(f"{emu.url}/grow/contacts", params={"fields": "id,name", "page_token": token})
        assert response.status_code == 400
        assert "page_token" in error_message(response)
        # The same token on another resource is foreign too.
        assert (
            api.get(f"{emu.url}/grow/matters", params={"fields": "id", "page_token": token}).status_code
            == 400
        )

    @pytest.mark.parametrize("token", ["garbage!", "e30", "eyJsYXN0X2lkIjoiYSIsImZpbHRlcnMiOiJ4In0"])
    def test_malformed_page_token_is_400(self, emu: ClioEmulator, api: requests.Session, token: str) -> None:
        assert api.get(f"{emu.url}/grow/contacts", params={"page_token": token}).status_code == 400

    def test_ids_filter(self, emu: ClioEmulator, api: requests.Session) -> None:
        records = fetch_all(api, f"{emu.url}/grow/contacts", {"ids[]": [7, 3, 999, 3, 450]})
        assert [r["id"] for r in records] == [3, 7, 450]
        too_many = api.get(f"{emu.url}/grow/contacts", params={"ids[]": list(range(1, 52))})
        assert too_many.status_code == 400

    def test_ids_filter_paginates(self, emu: ClioEmulator, api: requests.Session) -> None:
        records = fetch_all(api, f"{emu.url}/grow/contacts", {"ids[]": list(range(10, 60)), "limit": 20})
        assert [r["id"] for r in records] == list(range(10, 60))
        assert emu.count(path_prefix="/grow/contacts") == 3


class TestFields:
    def test_scalar_and_nested_selection(self, emu: ClioEmulator, api: requests.Session) -> None:
        body = api.get(f"{emu.url}/grow/matters", params={"fields": "id,display_number,client{name}"}).json()
        truth = {r["id"]: r for r in emu.records("matters")}
        for record in body["data"]:
            assert list(record) == ["id", "display_number", "client"]
            assert record["client"] == {"name": truth[record["id"]]["client"]["name"]}
            assert record["display_number"] == truth[record["id"]]["display_number"]

    def test_nested_without_braces_returns_the_whole_nested_record(
        self, emu: ClioEmulator, api: requests.Session
    ) -> None:
        record = api.get(f"{emu.url}/grow/activities", params={"fields": "id,matter,user{id}"}).json()[
            "data"
        ][0]
        assert set(record["matter"]) == {"id", "display_number"}
        assert set(record["user"]) == {"id"}

    def test_nested_references_are_consistent(self, emu: ClioEmulator) -> None:
        contacts = {r["id"]: r for r in emu.records("contacts")}
        for matter in emu.records("matters"):
            assert matter["client"]["name"] == contacts[matter["client"]["id"]]["name"]

    def test_no_fields_returns_every_field(self, emu: ClioEmulator, api: requests.Session) -> None:
        record = api.get(f"{emu.url}/grow/contacts").json()["data"][0]
        assert {"id", "name", "email", "status", "created_at", "updated_at", "source"} <= set(record)

    @pytest.mark.parametrize(
        ("fields", "fragment"),
        [
            ("id,nope", "unknown field 'nope'"),
            ("id,client{nope}", "unknown field 'nope'"),
            ("client{client{name}}", "nesting"),
            ("status{first}", "not a nested record"),
            ("id,,name", "empty"),
            ("", "empty"),
            ("client{id", "unbalanced"),
        ],
    )
    def test_invalid_fields_are_400(
        self, emu: ClioEmulator, api: requests.Session, fields: str, fragment: str
    ) -> None:
        response = api.get(f"{emu.url}/grow/matters", params={"fields": fields})
        assert response.status_code == 400
        assert fragment in error_message(response)

    def test_fields_on_single_record(self, emu: ClioEmulator, api: requests.Session) -> None:
        response = api.get(f"{emu.url}/grow/matters/5", params={"fields": "id,client{id}"})
        assert response.json()["data"] == {
            "id": 5,
            "client": {"id": emu.records("matters")[4]["client"]["id"]},
        }
        assert api.get(f"{emu.url}/grow/matters/5", params={"fields": "bogus"}).status_code == 400


class TestTimeFilters:
    def test_updated_since_is_inclusive(self, emu: ClioEmulator, api: requests.Session) -> None:
        truth = emu.records("contacts")
        boundary = sorted(r["updated_at"] for r in truth)[300]
        got = fetch_all(
            api, f"{emu.url}/grow/contacts", {"updated_since": boundary, "fields": "id,updated_at"}
        )
        expected = [r["id"] for r in truth if r["updated_at"] >= boundary]
        assert [r["id"] for r in got] == expected
        assert any(r["updated_at"] == boundary for r in got)
        just_after = (
            datetime.datetime.fromisoformat(boundary) + datetime.timedelta(microseconds=1)
        ).isoformat()
        later = fetch_all(api, f"{emu.url}/grow/contacts", {"updated_since": just_after})
        assert all(r["updated_at"] != boundary for r in later)
        assert len(later) < len(got)

    def test_updated_since_can_be_exclusive_like_the_manage_spec(
        self, clio_emulator_factory: Callable[..., ClioEmulator], api_session: Callable[..., requests.Session]
    ) -> None:
        emu = clio_emulator_factory(rate_limit=1000, records={"contacts": 120}, updated_since_inclusive=False)
        api = api_session(emu)
        truth = emu.records("contacts")
        boundary = sorted(r["updated_at"] for r in truth)[60]
        got = fetch_all(
            api, f"{emu.url}/grow/contacts", {"updated_since": boundary, "fields": "id,updated_at"}
        )
        assert [r["id"] for r in got] == [r["id"] for r in truth if r["updated_at"] > boundary]
        assert all(r["updated_at"] != boundary for r in got)

    def test_deleted_records_leave_lists_and_reads(self, emu: ClioEmulator, api: requests.Session) -> None:
        emu.delete_records("contacts", [2, 300])
        ids = [r["id"] for r in fetch_all(api, f"{emu.url}/grow/contacts", {"fields": "id"})]
        assert ids == [r["id"] for r in emu.records("contacts")]
        assert not {2, 300} & set(ids)
        assert len(ids) == 448
        assert api.get(f"{emu.url}/grow/contacts/2").status_code == 404
        with pytest.raises(KeyError):
            emu.touch("contacts", [2])

    def test_created_since_and_timezones(self, emu: ClioEmulator, api: requests.Session) -> None:
        truth = emu.records("contacts")
        boundary = datetime.datetime.fromisoformat(truth[100]["created_at"])
        # The same instant in another offset and with the Z suffix select the same records.
        for value in (
            boundary.isoformat(),
            boundary.astimezone(datetime.timezone(datetime.timedelta(hours=-5))).isoformat(),
            boundary.strftime("%Y-%m-%dT%H:%M:%SZ"),
        ):
            got = fetch_all(api, f"{emu.url}/grow/contacts", {"created_since": value, "fields": "id"})
            assert [r["id"] for r in got] == list(range(101, 451))

    def test_combined_filters_paginate_exactly(self, emu: ClioEmulator, api: requests.Session) -> None:
        params = {"updated_since": "2026-03-01T00:00:00+00:00", "created_since": "2026-02-01T00:00:00+00:00"}
        got = fetch_all(api, f"{emu.url}/grow/contacts", {**params, "limit": 13})
        expected = [
            r["id"]
            for r in emu.records("contacts")
            if r["updated_at"] >= params["updated_since"] and r["created_at"] >= params["created_since"]
        ]
        assert expected
        assert [r["id"] for r in got] == expected

    @pytest.mark.parametrize("value", ["yesterday", "2026-13-01T00:00:00+00:00", "2026-03-01T00:00:00 00:00"])
    def test_bad_timestamp_is_400(self, emu: ClioEmulator, api: requests.Session, value: str) -> None:
        response = api.get(f"{emu.url}/grow/contacts", params={"updated_since": value})
        assert response.status_code == 400
        assert "updated_since" in error_message(response)

    def test_unencoded_plus_is_explained(self, emu: ClioEmulator, api: requests.Session) -> None:
        response = api.get(f"{emu.url}/grow/contacts?updated_since=2026-03-01T00:00:00+00:00")
        assert response.status_code == 400
        assert "%2B" in error_message(response)

    def test_touch_moves_a_record_into_the_window(self, emu: ClioEmulator, api: requests.Session) -> None:
        since = datetime.datetime(2026, 7, 1, tzinfo=UTC)
        params = {"updated_since": since.isoformat(), "fields": "id,updated_at"}
        assert fetch_all(api, f"{emu.url}/grow/matters", params) == []
        emu.touch("matters", [4, 9], at=since)
        got = fetch_all(api, f"{emu.url}/grow/matters", params)
        assert got == [{"id": 4, "updated_at": since.isoformat()}, {"id": 9, "updated_at": since.isoformat()}]

    def test_added_records_carry_their_timestamp(self, emu: ClioEmulator, api: requests.Session) -> None:
        at = datetime.datetime(2026, 7, 2, 12, 30, tzinfo=UTC)
        ids = emu.add_records("sources", 2, at=at)
        got = fetch_all(api, f"{emu.url}/grow/sources", {"created_since": "2026-07-01T00:00:00Z"})
        assert [r["id"] for r in got] == ids == [11, 12]
        assert {(r["created_at"], r["updated_at"]) for r in got} == {(at.isoformat(), at.isoformat())}


class TestSingleRecord:
    def test_etag_and_304(self, emu: ClioEmulator, api: requests.Session) -> None:
        first = api.get(f"{emu.url}/grow/contacts/17")
        assert first.status_code == 200
        assert first.json()["data"] == emu.records("contacts")[16]
        etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]
        assert etag.startswith('"')
        assert api.get(f"{emu.url}/grow/contacts/17", headers={"If-None-Match": etag}).status_code == 304
        assert (
            api.get(f"{emu.url}/grow/contacts/17", headers={"If-None-Match": f"W/{etag}"}).status_code == 304
        )
        assert (
            api.get(f"{emu.url}/grow/contacts/17", headers={"If-Modified-Since": last_modified}).status_code
            == 304
        )
        assert api.get(f"{emu.url}/grow/contacts/17", headers={"If-None-Match": '"other"'}).status_code == 200

    def test_touch_changes_the_etag(self, emu: ClioEmulator, api: requests.Session) -> None:
        etag = api.get(f"{emu.url}/grow/contacts/17").headers["ETag"]
        emu.touch("contacts", [17])
        second = api.get(f"{emu.url}/grow/contacts/17", headers={"If-None-Match": etag})
        assert second.status_code == 200
        assert second.headers["ETag"] != etag
        # A second touch in the same second still moves updated_at forward.
        emu.touch("contacts", [17])
        third = api.get(f"{emu.url}/grow/contacts/17", headers={"If-None-Match": second.headers["ETag"]})
        assert third.status_code == 200
        assert third.json()["data"]["updated_at"] > second.json()["data"]["updated_at"]

    def test_who_am_i(self, emu: ClioEmulator, api: requests.Session) -> None:
        data = api.get(f"{emu.url}/grow/users/who_am_i").json()["data"]
        assert data == emu.records("users")[0]

    @pytest.mark.parametrize(
        "path", ["/grow/contacts/0", "/grow/contacts/451", "/grow/contacts/abc", "/grow/nope"]
    )
    def test_not_found(self, emu: ClioEmulator, api: requests.Session, path: str) -> None:
        response = api.get(emu.url + path)
        assert response.status_code == 404
        error_message(response)

    def test_write_methods_are_405(self, emu: ClioEmulator, api: requests.Session) -> None:
        assert api.post(f"{emu.url}/grow/contacts", json={"data": {}}).status_code == 405


class TestDataAndRecording:
    def test_same_seed_same_data(self) -> None:
        a = ClioEmulator(seed=7, records={"activities": 50})
        b = ClioEmulator(seed=7, records={"activities": 50})
        c = ClioEmulator(seed=8, records={"activities": 50})
        assert a.records("activities") == b.records("activities")
        assert a.records("activities") != c.records("activities")

    def test_timestamps_are_spread_over_the_first_half_of_2026(self) -> None:
        records = ClioEmulator(records={"contacts": 2000}).records("contacts")
        for r in records:
            assert (
                "2026-01-01T00:00:00+00:00"
                <= r["created_at"]
                <= r["updated_at"]
                <= "2026-06-30T23:59:59+00:00"
            )
        created = [r["created_at"] for r in records]
        assert created == sorted(created)
        assert records[0]["created_at"] < "2026-01-02"
        assert records[-1]["created_at"] > "2026-06-29"

    def test_unknown_resource_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="unknown resources"):
            ClioEmulator(records={"invoices": 3})
        with pytest.raises(ValueError, match="unknown resource"):
            ClioEmulator().records("invoices")

    def test_requests_are_recorded(self, emu: ClioEmulator, api: requests.Session) -> None:
        nxt = api.get(f"{emu.url}/grow/contacts", params={"fields": "id"}).json()["meta"]["paging"]["next"]
        api.get(nxt)
        api.get(f"{emu.url}/grow/contacts/1")
        requests.get(f"{emu.url}/grow/contacts", timeout=10)
        records = emu.requests
        assert [r.status for r in records] == [200, 200, 200, 401]
        first, second = records[0], records[1]
        assert (first.method, first.path, first.query) == ("GET", "/grow/contacts", {"fields": ["id"]})
        assert (first.client_id, first.region, first.resource, first.page_token) == (
            "clio-emulator-us",
            "us",
            "contacts",
            None,
        )
        assert second.page_token == parse_qs(urlsplit(nxt).query)["page_token"][0]
        assert records[3].client_id is None
        assert all(a.t <= b.t for a, b in itertools.pairwise(records))
        assert emu.count(status=200) == 3
        assert emu.count(region="us") == 3
        assert emu.count(path_prefix="/grow/contacts/") == 1
        emu.clear_requests()
        assert emu.requests == []

    def test_admin_endpoints(self, emu: ClioEmulator, api: requests.Session) -> None:
        admin = requests.Session()  # no token: the admin surface needs none
        api.get(f"{emu.url}/grow/contacts")
        listed = admin.get(f"{emu.url}/_emulator/requests").json()["requests"]
        assert listed[0]["path"] == "/grow/contacts"
        assert listed[0]["status"] == 200
        stats = admin.get(f"{emu.url}/_emulator/stats").json()
        assert stats["by_status"]["200"] == 2  # the API request and the admin listing
        assert stats["records"]["contacts"] == 450
        assert stats["windows"] == [
            {
                "client_id": "clio-emulator-us",
                "region": "us",
                "max_requests_in_window": 1,
                "max_admitted_in_window": 1,
            }
        ]
        assert admin.post(f"{emu.url}/_emulator/records", json={"resource": "users", "n": 2}).json() == {
            "ids": [26, 27]
        }
        touched = admin.post(
            f"{emu.url}/_emulator/touch",
            json={"resource": "users", "ids": [1], "at": "2026-08-01T00:00:00+00:00"},
        )
        assert touched.status_code == 200
        assert emu.records("users")[0]["updated_at"] == "2026-08-01T00:00:00+00:00"
        assert admin.post(f"{emu.url}/_emulator/reset_requests").status_code == 200
        assert admin.get(f"{emu.url}/_emulator/requests").json()["requests"] == [
            {
                "t": pytest.approx(emu.requests[0].t),
                "wall": pytest.approx(emu.requests[0].wall),
                "method": "POST",
                "path": "/_emulator/reset_requests",
                "query": {},
                "status": 200,
                "client_id": None,
                "region": None,
                "resource": None,
                "page_token": None,
                "fault": None,
                "api": None,
                "token_id": None,
            }
        ]
        assert admin.post(f"{emu.url}/_emulator/touch", json={"resource": "users"}).status_code == 400
        assert admin.get(f"{emu.url}/_emulator/nope").status_code == 404

    def test_concurrent_clients_are_served(
        self, emu: ClioEmulator, api_session: Callable[..., requests.Session]
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        def run(client_id: str) -> list[int]:
            session = api_session(emu, client_id)
            return [r["id"] for r in fetch_all(session, f"{emu.url}/grow/contacts", {"limit": 25})]

        apps = [f"clio-emulator-{region}" for region in ("us", "ca", "eu", "au")] * 2
        with ThreadPoolExecutor(len(apps)) as pool:
            results = list(pool.map(run, apps))
        assert all(ids == list(range(1, 451)) for ids in results)
