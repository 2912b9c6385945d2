# SPDX-License-Identifier: Apache-2.0
"""The Clio connection form in a real browser: Airflow's api-server, headless Chromium, Playwright.

Starts ``airflow api-server`` on a free loopback port in its own AIRFLOW_HOME (SimpleAuthManager with
everyone admin), opens Admin -> Connections -> Add Connection, checks what the form shows for the Clio
connection type, saves one and reads it back with ``airflow connections get``.

Needs Debian's ``chromium`` (``/usr/bin/chromium``; never a downloaded browser build) and the ``playwright``
package. Without them the tests skip on a laptop and fail when ``CI=true``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import requests

from airflow_provider_clio.get_provider_info import REGION_LABELS, get_provider_info
from airflow_provider_clio.hooks.clio import ClioHook
from airflow_provider_clio.operators.extract import ClioExtractOperator

__all__: list[str] = []

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(300)]

# Without the networking flags Chromium keeps dialling Google's hosts, which this closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CONN_ID = "clio_ui"
SERVER_START_TIMEOUT = 120.0


def _missing_browser_parts() -> str | None:
    """Name what is missing to drive the system Chromium, or None when everything is there."""
    if shutil.which("chromium") is None:
        return "chromium is not installed"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed"
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of Debian's Chromium; skips when absent, except in CI where a missing browser is a failure."""
    missing = _missing_browser_parts()
    if missing:
        hint = "as root: apt-get install -y chromium chromium-driver; make venv installs playwright"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {missing}: the browser tests must run in CI ({hint})", pytrace=False)
        pytest.skip(f"{missing} (to run: {hint})")
    return str(shutil.which("chromium"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__AUTH_MANAGER="airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
    )
    # The api-server encrypts what the UI saves; the CLI that reads it back must share the key.
    env.setdefault("AIRFLOW__CORE__FERNET_KEY", "")
    if not env["AIRFLOW__CORE__FERNET_KEY"]:
        from cryptography.fernet import Fernet

        env["AIRFLOW__CORE__FERNET_KEY"] = Fernet.generate_key().decode()
    return env


def _wait_until_serving(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"airflow api-server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    pytest.fail(f"airflow api-server not up after {SERVER_START_TIMEOUT:.0f}s:\n{log.read_text()[-3000:]}")


class ApiServer(NamedTuple):
    url: str
    env: dict[str, str]
    """The environment of the server's AIRFLOW_HOME, for CLI calls against the same database."""


@pytest.fixture(scope="module")
def api_server(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A migrated AIRFLOW_HOME and an api-server on a free loopback port."""
    home = tmp_path_factory.mktemp("airflow-ui-home")
    (home / "dags").mkdir()
    env = _server_env(home)
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = home / "api-server.log"
    with log.open("wb") as out:
        # Own process group: the server's uvicorn workers go down with it.
        proc = subprocess.Popen(
            [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_serving(url, proc, log)
        yield ApiServer(url, env)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture
def page(chromium: str, api_server: ApiServer) -> Iterator[Any]:
    """A page in a fresh headless Chromium profile, at the server's Connections list."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="clio-ui-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1800},
        )
        context.set_default_timeout(30_000)
        try:
            browser_page = context.new_page()
            browser_page.goto(f"{api_server.url}/connections", wait_until="networkidle")
            yield browser_page
        finally:
            context.close()


def _open_clio_form(page: Any) -> Any:
    """Admin -> Connections -> Add Connection, type Clio, Extra Fields expanded; returns the dialog."""
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Connection Type").fill("Clio")
    page.get_by_role("option", name="Clio", exact=True).click()
    dialog.get_by_role("button", name="Extra Fields", exact=True).click()
    dialog.get_by_role("combobox", name="Region").wait_for()
    return dialog


def test_clio_form_shows_relabelled_fields_and_region_choices(page: Any, tmp_path: Path) -> None:
    dialog = _open_clio_form(page)
    (conn_type,) = get_provider_info()["connection-types"]
    relabel = conn_type["ui-field-behaviour"]["relabeling"]

    for field in ("host", "login", "password"):
        assert dialog.get_by_label(relabel[field], exact=True).get_attribute("name") == field
    assert dialog.get_by_label(relabel["password"], exact=True).get_attribute("type") == "password"
    for hidden in ("schema", "port"):
        assert dialog.locator(f"input[name={hidden}]").count() == 0

    text = dialog.inner_text()
    for spec in conn_type["conn-fields"].values():
        assert spec["label"] in text
        assert spec.get("description", "") in text
    assert "`" not in text
    assert dialog.locator("#element_refresh_token").get_attribute("type") == "password"

    region = dialog.get_by_role("combobox", name="Region")
    assert "United States (us)" in dialog.inner_text()  # the default, shown by its label
    region.click()
    options = [option.inner_text() for option in page.get_by_role("option").all()]
    assert options == list(REGION_LABELS.values())
    page.screenshot(path=str(tmp_path / "clio-connection-form.png"), full_page=True)


def _stored_uri(env: dict[str, str], conn_id: str) -> str:
    """The connection as the metadata database holds it, through ``airflow connections get``."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "connections", "get", conn_id, "-o", "json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    (conn,) = json.loads(result.stdout)
    # The URI, not "extra_dejson": the CLI's table output turns every nested value into a string.
    return str(conn["get_uri"])


def test_saved_connection_reads_back_with_its_extras(
    page: Any, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dialog = _open_clio_form(page)
    dialog.get_by_label("Connection ID").fill(CONN_ID)
    dialog.get_by_role("combobox", name="Region").click()
    page.get_by_role("option", name=REGION_LABELS["eu"], exact=True).click()
    dialog.locator("#element_refresh_token").fill("rt-from-the-form")
    dialog.get_by_role("button", name="Standard Fields").click()
    dialog.get_by_label("OAuth client id (App Key)", exact=True).fill("client-from-the-form")
    dialog.get_by_label("OAuth client secret", exact=True).fill("secret-from-the-form")
    dialog.get_by_role("button", name="Save").click()
    dialog.wait_for(state="hidden")
    page.get_by_text(CONN_ID, exact=True).wait_for()

    # Read back through the hook, as a task would: the stored URI served from an environment variable.
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", _stored_uri(api_server.env, CONN_ID))
    hook = ClioHook(CONN_ID)
    conn = hook.get_connection(CONN_ID)
    assert conn.conn_type == "clio"
    assert (conn.login, conn.password) == ("client-from-the-form", "secret-from-the-form")
    assert (conn.host, conn.port, conn.schema) in {(None, None, None), ("", None, "")}
    extra = conn.extra_dejson
    assert extra["region"] == "eu"
    assert extra["refresh_token"] == "rt-from-the-form"
    assert extra["requests_per_slot"] == 1
    # Airflow 3.3.2's form saves every empty extra field as null (its FlexibleForm turns "" into null and
    # sends all values); the hook reads null as "not set", so the pool falls back to clio_<region>.
    assert "pool" in extra
    assert extra["pool"] is None
    config = hook.config
    assert (config.region, config.pool, config.refresh_token) == ("eu", "clio_eu", "rt-from-the-form")
    assert config.requests_per_slot == 1.0
    # A task built on it at parse time lands in the pool the hook paces for.
    task = ClioExtractOperator(
        task_id="contacts", clio_conn_id=CONN_ID, endpoint="grow/contacts", destination="file:///tmp/unused"
    )
    assert (task.region, task.pool) == ("eu", "clio_eu")
