# SPDX-License-Identifier: Apache-2.0
"""
Shared test setup: an isolated AIRFLOW_HOME, the emulator fixtures, the Postgres switch, and the time budget.

The slow real-process tests carry a group marker (``scheduler``, ``celery``, ``browser``, ``packaging``,
``soak``). With ``CI=true`` they always run and a missing service fails them; elsewhere they are skipped
with a one-line hint unless ``CLIO_RUN_SLOW=1`` (``CLIO_RUN_SLOW=1 make test``).

``make test`` runs the suite in two phases (``--phase``): ``parallel`` on pytest-xdist workers, then
``serial`` alone, for the tests that measure real time or rates (marker ``serial``) and the real-process
tests that run Airflow components (all groups but ``packaging``), so no other worker shares their CPU.
Each xdist worker imports this file, so each has its own AIRFLOW_HOME and metadata database, and
``postgres_dsn`` gives each worker its own Postgres database.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

# Airflow reads its configuration at import time, so the isolated home must exist before any test module
# imports airflow. Never touch the developer's ~/airflow.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="clio-tests-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parents[1] / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
if "AIRFLOW__CORE__FERNET_KEY" not in os.environ:
    # One key for this process and every airflow subprocess a test starts, so Variables one writes the
    # other can read (otherwise the first subprocess writes airflow.cfg with a key this process never saw).
    from cryptography.fernet import Fernet

    os.environ["AIRFLOW__CORE__FERNET_KEY"] = Fernet.generate_key().decode()

import pytest  # noqa: E402

pytest_plugins = ["airflow_provider_clio.testing.pytest_plugin"]

POSTGRES_DSN_ENV = "CLIO_TEST_POSTGRES_DSN"
REDIS_URL_ENV = "CLIO_TEST_REDIS_URL"
RUN_SLOW_ENV = "CLIO_RUN_SLOW"
REAL_PROCESS_GROUPS = ("scheduler", "celery", "browser", "packaging", "soak")
"""Markers of the slow tests that start real processes (minutes each, see setup.cfg)."""
ALONE_GROUPS = ("scheduler", "celery", "browser", "soak")
"""The real-process groups that run in the serial phase: they time Airflow components or pace requests.
Packaging (build, install into a clean venv) only waits on pip, so it shares the parallel phase."""
RUN_SLOW_HINT = f"run them with {RUN_SLOW_ENV}=1 make test (CI=true always does)"
SERIAL_MARKER = "serial"
"""Marker of the tests that measure real time or rates: they run in the serial phase, with no other worker."""
PHASES = ("all", "parallel", "serial")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--phase",
        dest="clio_phase",
        choices=PHASES,
        default="all",
        help="all (default); parallel: leave out the serial and Airflow-process tests; serial: only those",
    )


def runs_alone(item: pytest.Item) -> bool:
    """Tell whether a test runs in the serial phase: it measures real time or rates, or runs Airflow."""
    return any(item.get_closest_marker(name) is not None for name in (SERIAL_MARKER, *ALONE_GROUPS))


def in_ci() -> bool:
    """Tell whether this is a CI run (``.ci/run`` exports ``CI=true``)."""
    return os.environ.get("CI", "").lower() == "true"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _select_phase(config, items)
    # The time budget: a laptop's `make test` stays fast; CI and an explicit CLIO_RUN_SLOW=1 run everything.
    if in_ci() or os.environ.get(RUN_SLOW_ENV, "").lower() in ("1", "true", "yes"):
        return
    for item in items:
        groups = [name for name in REAL_PROCESS_GROUPS if item.get_closest_marker(name) is not None]
        if groups:
            reason = f"{'/'.join(groups)} test (real processes, slow): {RUN_SLOW_HINT}"
            item.add_marker(pytest.mark.skip(reason=reason))


def _select_phase(config: pytest.Config, items: list[pytest.Item]) -> None:
    phase = config.getoption("clio_phase", "all")
    if phase == "all":
        return
    serial = phase == "serial"
    kept = [item for item in items if runs_alone(item) == serial]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if runs_alone(item) != serial])
        items[:] = kept


def pytest_configure(config: pytest.Config) -> None:
    # CI always configures Postgres; a missing DSN there is a broken pipeline, not a reason to skip.
    if in_ci() and not os.environ.get(POSTGRES_DSN_ENV):
        raise pytest.UsageError(
            f"CI=true but {POSTGRES_DSN_ENV} is not set: the Postgres tests must run in CI, not be skipped."
        )


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Create the Airflow metadata database once per session (dag.test() and Variables need it)."""
    from airflow.utils.db import initdb

    initdb()
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """
    The URL of a scratch Postgres database; skips locally when none is configured (never in CI).

    Under pytest-xdist each worker gets its own database (``<name>_<worker>_<run>``, created through the
    configured one), so tests that reuse a table name never meet on another worker or another run.
    """
    dsn = os.environ.get(POSTGRES_DSN_ENV)
    if not dsn:
        pytest.skip(f"set {POSTGRES_DSN_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test) to run")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        yield dsn
        return
    parts = urlsplit(dsn)
    # The run's id too: two suites at once (a developer's and a hook's) must not drop each other's database.
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")[:8]
    name = (
        f"{parts.path.lstrip('/') or 'postgres'}_{worker}_{run}"
        if run
        else f"{parts.path.lstrip('/')}_{worker}"
    )
    _recreate_database(dsn, name)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    _recreate_database(dsn, name, create=False)


def _recreate_database(dsn: str, name: str, create: bool = True) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            # FORCE: a connection pool a test left open must not keep the database of a later run alive.
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            if create:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()


@pytest.fixture(scope="session")
def require_service() -> Callable[[bool, str], None]:
    """
    Return ``require(available, what)``: a missing service or browser fails in CI, skips elsewhere.

    .. code-block:: python

        def test_ui(require_service):
            require_service(shutil.which("chromium") is not None, "Debian's chromium")
    """

    def require(available: bool, what: str) -> None:
        if available:
            return
        if in_ci():
            pytest.fail(f"CI=true but {what} is missing: .ci/run must provide it", pytrace=False)
        pytest.skip(f"{what} is missing")

    return require


@pytest.fixture(scope="session")
def redis_url(require_service: Callable[[bool, str], None]) -> str:
    """The URL of a Redis that answers PING (default ``redis://127.0.0.1:6379/0``, ``.ci/run`` starts it)."""
    url = os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/0")
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            alive = sock.recv(16).startswith(b"+PONG")
    except OSError:
        alive = False
    require_service(alive, f"Redis at {url} (set {REDIS_URL_ENV} or start redis-server)")
    return url


@pytest.fixture(scope="session")
def support() -> ModuleType:
    """The shared DAG-run helpers of tests/dagrun_support.py: connections, dag.test() runs, projections."""
    # Test folders are not packages under --import-mode=importlib, so the helpers are loaded once, by path.
    name = "clio_dagrun_support"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("dagrun_support.py"))
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
