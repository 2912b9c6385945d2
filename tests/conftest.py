# SPDX-License-Identifier: Apache-2.0
"""Shared test setup: an isolated AIRFLOW_HOME, the emulator fixtures, and the Postgres switch."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

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


def pytest_configure(config: pytest.Config) -> None:
    # CI always configures Postgres; a missing DSN there is a broken pipeline, not a reason to skip.
    if os.environ.get("CI", "").lower() == "true" and not os.environ.get(POSTGRES_DSN_ENV):
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
def postgres_dsn() -> str:
    """The DSN of a scratch Postgres database; skips locally when none is configured (never in CI)."""
    dsn = os.environ.get(POSTGRES_DSN_ENV)
    if not dsn:
        pytest.skip(f"set {POSTGRES_DSN_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test) to run")
    return dsn


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
