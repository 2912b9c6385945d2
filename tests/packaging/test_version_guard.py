# SPDX-License-Identifier: Apache-2.0
"""The import-time guard for the oldest Airflow the suite runs against (3.3.2, as setup.cfg declares)."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

import airflow_provider_clio
from airflow_provider_clio import MIN_AIRFLOW_VERSION, _check_airflow_version

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("version", ["3.3.2", "3.3.2rc1", "3.3.10", "3.4.0", "4.0", "3.3.2.post1"])
def test_tested_and_newer_airflow_versions_pass(version: str) -> None:
    _check_airflow_version(version)


@pytest.mark.parametrize("version", ["3.3.1", "3.3", "3.2.0", "2.10.5"])
def test_older_airflow_versions_are_refused_naming_the_version_needed(version: str) -> None:
    with pytest.raises(RuntimeError) as excinfo:
        _check_airflow_version(version)
    message = str(excinfo.value)
    assert f"needs Apache Airflow 3.3.2 or newer, found {version}" in message
    assert 'pip install "apache-airflow>=3.3.2"' in message


def test_no_airflow_distribution_means_nothing_to_check() -> None:
    _check_airflow_version(None)


def test_the_guard_and_setup_cfg_declare_the_same_floor() -> None:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    requirements = config["options"]["install_requires"].split()
    floor = ".".join(map(str, MIN_AIRFLOW_VERSION))
    assert f"apache-airflow>={floor}" in requirements


def test_importing_under_an_older_airflow_fails_with_the_message(tmp_path: Path) -> None:
    # A fake apache-airflow-core 3.2.0 distribution first on sys.path: the metadata the guard reads.
    info = tmp_path / "apache_airflow_core-3.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: apache-airflow-core\nVersion: 3.2.0\n")
    package_root = Path(airflow_provider_clio.__file__).resolve().parents[1]
    path = [str(tmp_path), str(package_root)]
    code = f"import sys; sys.path[:0] = {path!r}; import airflow_provider_clio"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("RuntimeError: airflow-provider-clio ")
    assert "needs Apache Airflow 3.3.2 or newer, found 3.2.0" in last_line
