# SPDX-License-Identifier: Apache-2.0
"""The emulator's command line: one JSON ready line, serving until SIGTERM/SIGINT, flags applied."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from airflow_provider_clio.testing.emulator import main

MODULE = "airflow_provider_clio.testing.emulator"


def launch(*args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", MODULE, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        raise AssertionError(f"no ready line; stderr: {proc.stderr.read() if proc.stderr else ''}")
    return proc, json.loads(line)


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def refresh(url: str, app: str, info: dict[str, Any]) -> dict[str, Any]:
    form = {
        "grant_type": "refresh_token",
        "refresh_token": info["refresh_token"],
        "client_id": app,
        "client_secret": info["client_secret"],
    }
    response = requests.post(f"{url}/oauth/token", data=form, timeout=10)
    assert response.status_code == 200
    return response.json()


def test_ready_line_then_serves_until_sigterm(running: list[subprocess.Popen[str]]) -> None:
    proc, ready = launch("--records", "contacts=100000,matters=50000,activities=50000", "--rate-limit", "50")
    running.append(proc)
    assert set(ready) == {"url", "apps", "manage_apps"}
    assert ready["url"].startswith("http://127.0.0.1:")
    assert {app: info["region"] for app, info in ready["apps"].items()} == {
        "clio-emulator-us": "us",
        "clio-emulator-ca": "ca",
        "clio-emulator-eu": "eu",
        "clio-emulator-au": "au",
    }
    tokens = refresh(ready["url"], "clio-emulator-eu", ready["apps"]["clio-emulator-eu"])
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    last = requests.get(f"{ready['url']}/grow/contacts/100000", headers=headers, timeout=10)
    assert last.status_code == 200
    assert (
        requests.get(f"{ready['url']}/grow/contacts/100001", headers=headers, timeout=10).status_code == 404
    )
    stats = requests.get(f"{ready['url']}/_emulator/stats", timeout=10).json()
    assert stats["records"] == {
        "contacts": 100000,
        "matters": 50000,
        "activities": 50000,
        "users": 25,
        "sources": 10,
    }
    assert stats["rate_limit"] == 50

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert proc.stdout is not None
    assert proc.stdout.read() == ""  # exactly one line on stdout


def test_sigint_stops_it_too(running: list[subprocess.Popen[str]]) -> None:
    proc, ready = launch()
    running.append(proc)
    assert requests.get(f"{ready['url']}/_emulator/health", timeout=10).json() == {"ok": True}
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0


def test_fault_and_app_flags(running: list[subprocess.Popen[str]]) -> None:
    proc, ready = launch(
        "--outage-requests", "2", "--outage-status", "502", "--retry-after", "3", "--error-statuses", "429",
        "--app", "my-app:pw:au", "--page-size", "5", "--records", "sources=7", "--no-rate-limit",
    )  # fmt: skip
    running.append(proc)
    assert ready["apps"]["my-app"]["region"] == "au"
    assert ready["apps"]["my-app"]["client_secret"] == "pw"
    tokens = refresh(ready["url"], "my-app", ready["apps"]["my-app"])
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {tokens['access_token']}"
    url = f"{ready['url']}/grow/sources"
    assert [session.get(url, timeout=10).status_code for _ in range(2)] == [502, 502]
    page = session.get(url, timeout=10).json()
    assert [r["id"] for r in page["data"]] == [1, 2, 3, 4, 5]
    faults = requests.get(f"{ready['url']}/_emulator/faults", timeout=10).json()["faults"]
    assert faults["retry_after"] == 3
    assert faults["error_statuses"] == [429]


@pytest.mark.parametrize(
    "argv",
    [["--records", "invoices=3"], ["--records", "contacts"], ["--app", "x:y:mars"], ["--error-rate", "2"]],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(["--port", "0", *argv]))
    assert exc.value.code == 2
    assert capsys.readouterr().out == ""


def test_cli_flags_set_latency(running: list[subprocess.Popen[str]]) -> None:
    proc, ready = launch("--inbound-delay", "0.05", "--inbound-jitter", "0.01", "--response-delay", "0.07")
    running.append(proc)
    latency = requests.get(f"{ready['url']}/_emulator/latency", timeout=10).json()["latency"]
    assert latency == {"inbound_delay": 0.05, "inbound_jitter": 0.01, "response_delay": 0.07, "seed": 0}
    started = time.monotonic()
    assert requests.get(f"{ready['url']}/grow/users", timeout=10).status_code == 401
    assert time.monotonic() - started >= 0.04 + 0.07 - 0.003
    posted = requests.post(f"{ready['url']}/_emulator/latency", json={"response_delay": 0.0}, timeout=10)
    assert posted.json()["latency"]["inbound_delay"] == 0.0
