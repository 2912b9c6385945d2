# SPDX-License-Identifier: Apache-2.0
"""
What a user installs: the sdist and the wheel ``python -m build`` makes, and the wheel in a clean virtualenv.

Builds both distributions (the wheel from the sdist, as ``make dist`` does), checks what each holds (the
package, LICENSE and NOTICE; no tests, no ``dev/``), installs the wheel with ``-c constraints.txt`` into a
new virtualenv, and runs ``airflow providers list`` and ``airflow clio --help`` there, on an empty
``AIRFLOW_HOME`` that shares nothing with this process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from email.parser import HeaderParser
from pathlib import Path

import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 900
CLI_TIMEOUT = 180
SCRATCH = (".git", ".venv", ".demo", "dist", "build", "*.egg-info", "__pycache__", ".*_cache", "node_modules")
"""Local state never part of a clone: left out of the source copy the distributions are built from."""


def _run(command: Sequence[str | Path], timeout: float, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build the sdist and the wheel; return them by kind (``sdist``, ``wheel``)."""
    out = tmp_path_factory.mktemp("dist")
    # From a copy: setuptools writes *.egg-info into the source tree, and one in the repository root would be
    # a second, possibly stale, airflow-provider-clio distribution on the tests' sys.path.
    source = tmp_path_factory.mktemp("source") / "airflow-provider-clio"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*SCRATCH))
    # --no-isolation: this venv's setuptools builds, so the test needs no index for the build backend.
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source], timeout=300)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_the_wheel_holds_the_package_and_the_license_files_only(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = wheel.namelist()
        (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        licence = wheel.read(f"{info}/licenses/LICENSE").decode()
        notice = wheel.read(f"{info}/licenses/NOTICE").decode()
        metadata = HeaderParser().parsestr(wheel.read(f"{info}/METADATA").decode())

    assert {n.split("/")[0] for n in names} == {"airflow_provider_clio", info}
    assert not [n for n in names if "/tests/" in n or n.startswith(("tests/", "dev/"))]
    for harness in ("deployment.py", "demo.py"):
        assert f"airflow_provider_clio/testing/{harness}" not in names
    assert "airflow_provider_clio/testing/emulator.py" in names  # users test their DAGs with it
    assert "airflow_provider_clio/py.typed" in names
    assert "Apache License" in licence
    assert "Version 2.0, January 2004" in licence
    assert "airflow-provider-clio" in notice

    assert metadata["License-Expression"] == "Apache-2.0"
    assert sorted(metadata.get_all("License-File") or []) == ["LICENSE", "NOTICE"]
    assert not [c for c in metadata.get_all("Classifier") or [] if c.startswith("License ::")]
    requires = metadata.get_all("Requires-Dist") or []
    assert "apache-airflow>=3.3.2" in requires
    published = " ".join(r for r in requires if "extra ==" in r)
    for tool in ("ruff", "mypy", "types-requests", "psutil", "build", "twine"):
        assert f"{tool}>" not in published, tool


def test_the_sdist_leaves_the_tests_and_the_repository_harnesses_out(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as sdist:
        names = [n.split("/", 1)[1] for n in sdist.getnames() if "/" in n]
    for kept in ("LICENSE", "NOTICE", "README.md", "CHANGELOG.md", "setup.cfg", "pyproject.toml"):
        assert kept in names, kept
    assert "airflow_provider_clio/hooks/clio.py" in names
    for left_out in ("tests", "dev", "dags", "docs", "benchmarks", ".ci"):
        assert not [n for n in names if n == left_out or n.startswith(f"{left_out}/")], left_out


def test_the_wheel_installs_into_a_clean_venv_and_registers_with_airflow(
    dists: dict[str, Path], tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], timeout=120)
    # --no-compile: byte-compiling all of Airflow's dependencies is most of the install's time on 2 cores;
    # Python compiles what the commands below import, as it would for any user.
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-compile"]
    _run([*pip, "-c", REPO / "constraints.txt", dists["wheel"]], timeout=INSTALL_TIMEOUT)

    # Nothing from this process's Airflow: a fresh, empty home and no AIRFLOW__* settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    airflow = venv / "bin" / "airflow"

    providers = _run([airflow, "providers", "list", "--output", "plain"], timeout=CLI_TIMEOUT, env=env)
    (line,) = [row for row in providers.splitlines() if row.split()[:1] == ["airflow-provider-clio"]]
    assert "0.1.0" in line.split()

    help_text = _run([airflow, "clio", "--help"], timeout=CLI_TIMEOUT, env=env)
    for command in ("auth", "pools", "check"):
        assert command in help_text, command

    # The repository-only harnesses are not importable from the installed package.
    probe = "import importlib.util as u; print(u.find_spec('airflow_provider_clio.testing.deployment'))"
    assert _run([venv / "bin" / "python", "-c", probe], timeout=60, env=env).strip() == "None"
