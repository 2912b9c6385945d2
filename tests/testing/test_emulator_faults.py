# SPDX-License-Identifier: Apache-2.0
"""The emulator's injected faults: seeded error rates, outages, dropped, truncated and slow answers."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
import requests

from airflow_provider_clio.testing import ClioEmulator, Faults

US = "clio-emulator-us"


def outcomes(session: requests.Session, url: str, n: int) -> list[str]:
    """Send ``n`` GETs; return each outcome: the status, ``"drop"`` or ``"truncated"``."""
    out: list[str] = []
    for _ in range(n):
        try:
            out.append(str(session.get(url, timeout=10).status_code))
        except requests.exceptions.ChunkedEncodingError:
            out.append("truncated")
        except requests.ConnectionError:
            out.append("drop")
    return out


def fast_emulator(factory: Callable[..., ClioEmulator], faults: Faults) -> ClioEmulator:
    return factory(rate_limit=None, records={"contacts": 30}, faults=faults)


class TestRates:
    def test_error_rate_is_honoured_and_seeded(
        self, clio_emulator_factory: Callable[..., ClioEmulator], api_session: Callable[..., requests.Session]
    ) -> None:
        faults = Faults(seed=3, error_rate=0.3, error_statuses=(429, 503))
        runs = []
        for _ in range(2):
            emu = fast_emulator(clio_emulator_factory, faults)
            runs.append(outcomes(api_session(emu), f"{emu.url}/grow/contacts?fields=id", 300))
        counts = Counter(runs[0])
        errors = counts["429"] + counts["503"]
        # Binomial(300, 0.3): mean 90, sd 7.9; the band is ~4 sd wide on each side.
        assert 58 <= errors <= 122
        assert counts["429"] > 0
        assert counts["503"] > 0
        assert counts["200"] == 300 - errors
        # Same seed, same sequence of requests: the very same faults.
        assert runs[0] == runs[1]

    def test_different_seeds_give_different_sequences(
        self, clio_emulator_factory: Callable[..., ClioEmulator], api_session: Callable[..., requests.Session]
    ) -> None:
        runs = []
        for seed in (1, 2):
            emu = fast_emulator(clio_emulator_factory, Faults(seed=seed, error_rate=0.5))
            runs.append(outcomes(api_session(emu), f"{emu.url}/grow/contacts", 40))
        assert runs[0] != runs[1]

    def test_drop_and_truncate_rates(
        self, clio_emulator_factory: Callable[..., ClioEmulator], api_session: Callable[..., requests.Session]
    ) -> None:
        emu = fast_emulator(clio_emulator_factory, Faults(seed=11, drop_rate=0.2, truncate_rate=0.2))
        counts = Counter(outcomes(api_session(emu), f"{emu.url}/grow/contacts", 200))
        # drop: Binomial(200, 0.2) (mean 40, sd 5.7); truncate applies to the rest (mean 32, sd 5.1).
        assert 17 <= counts["drop"] <= 63
        assert 12 <= counts["truncated"] <= 52
        assert counts["200"] == 200 - counts["drop"] - counts["truncated"]
        recorded = Counter(r.fault for r in emu.requests)
        assert recorded["drop"] == counts["drop"]
        assert recorded["truncate"] == counts["truncated"]
        assert emu.count(status=0) == counts["drop"]


class TestOutage:
    def test_outage_fails_exactly_k_requests(
        self, clio_emulator_factory: Callable[..., ClioEmulator], api_session: Callable[..., requests.Session]
    ) -> None:
        emu = fast_emulator(clio_emulator_factory, Faults(outage_requests=5, outage_status=502))
        session = api_session(emu)
        http = requests.Session()
        statuses = []
        for i in range(8):
            # OAuth and admin calls in between neither fail nor use up the outage.
            token = emu.issue_refresh_token(US)
            form = {"grant_type": "refresh_token", "refresh_token": token, "client_id": US}
            form["client_secret"] = "emulator-secret"
            assert http.post(f"{emu.url}/oauth/token", data=form).status_code == 200
            assert http.get(f"{emu.url}/_emulator/stats").status_code == 200
            response = session.get(f"{emu.url}/grow/contacts/{i + 1}")
            statuses.append(response.status_code)
        assert statuses == [502] * 5 + [200] * 3
        assert response.json()["data"]["id"] == 8
        assert [r.fault for r in emu.requests if r.is_api] == ["outage"] * 5 + [None] * 3

    def test_outage_answers_before_authentication(
        self, clio_emulator_factory: Callable[..., ClioEmulator]
    ) -> None:
        emu = fast_emulator(clio_emulator_factory, Faults(outage_requests=1))
        response = requests.get(f"{emu.url}/grow/contacts", timeout=10)
        assert response.status_code == 503
        assert response.json() == {"error": {"status": "503", "message": "Service Unavailable"}}
        assert requests.get(f"{emu.url}/grow/contacts", timeout=10).status_code == 401

    def test_outage_set_at_run_time_over_http(self, emu: ClioEmulator, api: requests.Session) -> None:
        assert api.get(f"{emu.url}/grow/contacts").status_code == 200
        response = requests.post(f"{emu.url}/_emulator/faults", json={"outage_requests": 2}, timeout=10)
        assert response.status_code == 200
        assert response.json()["faults"]["outage_requests"] == 2
        assert emu.faults == Faults(outage_requests=2)
        assert [api.get(f"{emu.url}/grow/contacts").status_code for _ in range(3)] == [503, 503, 200]

    @pytest.mark.parametrize("payload", [{"error_rate": 2}, {"nope": 1}, [1, 2]])
    def test_bad_faults_over_http_are_400(self, emu: ClioEmulator, payload: object) -> None:
        assert requests.post(f"{emu.url}/_emulator/faults", json=payload, timeout=10).status_code == 400
        assert emu.faults == Faults()


class TestConnectionFaults:
    def test_dropped_connection_raises_connection_error(
        self, emu: ClioEmulator, api: requests.Session
    ) -> None:
        emu.set_faults(Faults(drop_rate=1.0))
        with pytest.raises(requests.ConnectionError):
            api.get(f"{emu.url}/grow/contacts")
        record = emu.requests[-1]
        # Faulted requests are attributed to the token's app, so per-region counts include them.
        assert (record.status, record.fault, record.client_id, record.resource) == (0, "drop", US, "contacts")
        emu.set_faults(Faults())
        assert api.get(f"{emu.url}/grow/contacts").status_code == 200

    def test_truncated_body_fails_to_decode(self, emu: ClioEmulator, api: requests.Session) -> None:
        emu.faults = Faults(truncate_rate=1.0)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            api.get(f"{emu.url}/grow/contacts")
        assert emu.requests[-1].fault == "truncate"
        assert emu.requests[-1].status == 200

    def test_truncated_body_announces_the_full_length(self, emu: ClioEmulator) -> None:
        emu.set_faults(Faults(truncate_rate=1.0))
        token, _ = emu.issue_access_token(US)
        url = urlsplit(emu.url)
        assert url.hostname is not None
        assert url.port is not None
        with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
            request = (
                f"GET /grow/contacts HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n\r\n"
            )
            sock.sendall(request.encode())
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
        assert int(headers["Content-Length"]) > len(body) > 0
        with pytest.raises(json.JSONDecodeError):
            json.loads(body)

    def test_slow_answers_arrive_late_but_are_stamped_on_arrival(
        self, emu: ClioEmulator, api: requests.Session
    ) -> None:
        emu.set_faults(Faults(slow_rate=1.0, slow_seconds=0.3))
        response = api.get(f"{emu.url}/grow/contacts")
        answered = time.monotonic()
        assert response.status_code == 200
        assert response.elapsed.total_seconds() >= 0.3
        record = emu.requests[-1]
        assert record.fault == "slow"
        assert record.t <= answered - 0.3


class TestRetryAfterAndScope:
    def test_injected_429_carries_retry_after(self, emu: ClioEmulator, api: requests.Session) -> None:
        emu.set_faults(Faults(error_rate=1.0, error_statuses=(429,), retry_after=7))
        response = api.get(f"{emu.url}/grow/contacts")
        assert response.status_code == 429
        assert response.json() == {"message": "Too Many Requests"}
        assert response.headers["Retry-After"] == "7"

    def test_limiter_429_carries_retry_after(
        self, clio_emulator_factory: Callable[..., ClioEmulator], api_session: Callable[..., requests.Session]
    ) -> None:
        emu = clio_emulator_factory(rate_limit=1, faults=Faults(retry_after=2))
        session = api_session(emu)
        assert session.get(f"{emu.url}/grow/sources").status_code == 200
        response = session.get(f"{emu.url}/grow/sources")
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "2"

    def test_no_retry_after_by_default(self, emu: ClioEmulator, api: requests.Session) -> None:
        emu.set_faults(Faults(error_rate=1.0, error_statuses=(429,)))
        assert "Retry-After" not in api.get(f"{emu.url}/grow/contacts").headers

    def test_oauth_and_admin_are_never_faulted(self, emu: ClioEmulator) -> None:
        emu.set_faults(Faults(error_rate=1.0, drop_rate=1.0, truncate_rate=1.0))
        http = requests.Session()
        form = {
            "grant_type": "refresh_token",
            "refresh_token": emu.issue_refresh_token(US),
            "client_id": US,
            "client_secret": "emulator-secret",
        }
        assert http.post(f"{emu.url}/oauth/token", data=form).status_code == 200
        assert http.get(f"{emu.url}/_emulator/stats").status_code == 200


class TestFaultsValue:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"error_rate": 1.5},
            {"drop_rate": -0.1},
            {"outage_requests": -1},
            {"slow_seconds": -1},
            {"error_rate": 0.5, "error_statuses": ()},
        ],
    )
    def test_invalid_values(self, kwargs: dict[str, object]) -> None:
        with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
            Faults(**kwargs)  # type: ignore[arg-type]

    def test_dict_round_trip(self) -> None:
        faults = Faults(seed=5, error_rate=0.1, error_statuses=(500,), retry_after=1.5)
        assert Faults.from_dict(json.loads(json.dumps(faults.to_dict()))) == faults
        with pytest.raises(ValueError, match="unknown fault fields"):
            Faults.from_dict({"bogus": 1})

    def test_constructor_faults_apply_from_the_start(
        self, clio_emulator_factory: Callable[..., ClioEmulator], api_session: Callable[..., requests.Session]
    ) -> None:
        emu = clio_emulator_factory(rate_limit=None, faults=Faults(outage_requests=1, outage_status=500))
        session = api_session(emu)
        assert [session.get(f"{emu.url}/grow/users").status_code for _ in range(2)] == [500, 200]
