# SPDX-License-Identifier: Apache-2.0
"""
The suite's time budget (tests/conftest.py): real-process tests skip on a laptop with a hint, run in CI,
and a missing service fails them in CI instead of skipping.

Each case runs pytest in a subprocess on a probe test file, with the repository's conftest loaded as a
plugin and its setup.cfg as the ini file, under the environment of a laptop or of CI.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import pytest


@pytest.mark.scheduler
def test_real_process():
    pass


@pytest.mark.packaging
@pytest.mark.slow
def test_other_group():
    pass


def test_needs_redis(redis_url):
    pass


def test_fast():
    pass
"""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pytest(tmp_path: Path, **env: str) -> str:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "CLIO_RUN_SLOW", "CLIO_TEST_REDIS_URL")}
    base["PYTHONPATH"] = str(REPO / "tests")
    base["CLIO_TEST_REDIS_URL"] = f"redis://127.0.0.1:{_closed_port()}/0"
    command = [sys.executable, "-m", "pytest", "-c", str(REPO / "setup.cfg"), "--rootdir", str(tmp_path)]
    result = subprocess.run(
        [*command, "-p", "conftest", "-q", "-rs", "-p", "no:randomly", str(probe)],
        cwd=tmp_path,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.stdout + result.stderr


def test_on_a_laptop_real_process_tests_skip_with_a_hint(tmp_path: Path) -> None:
    out = _pytest(tmp_path)
    assert "1 passed, 3 skipped" in out, out
    hint = "test (real processes, slow): run them with CLIO_RUN_SLOW=1 make test (CI=true always does)"
    assert f"scheduler {hint}" in out
    assert f"packaging {hint}" in out
    assert "is missing" in out  # Redis: skipped, not failed


@pytest.mark.parametrize("slow", ["1", "true"])
def test_clio_run_slow_runs_them_on_a_laptop(tmp_path: Path, slow: str) -> None:
    out = _pytest(tmp_path, CLIO_RUN_SLOW=slow)
    assert "3 passed, 1 skipped" in out, out


def test_in_ci_they_run_and_a_missing_service_fails(tmp_path: Path) -> None:
    out = _pytest(tmp_path, CI="true", CLIO_TEST_POSTGRES_DSN="postgresql://unused")
    assert "3 passed, 1 error" in out, out
    assert "CI=true but Redis at redis://127.0.0.1:" in out
    assert ".ci/run must provide it" in out
