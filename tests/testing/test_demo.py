# SPDX-License-Identifier: Apache-2.0
"""Smoke test of ``make demo``: a small full refresh under the real scheduler, and the report that says so."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.scheduler, pytest.mark.timeout(300)]

# A page or two per task (200 records a page): the run is seconds, start-up and stop are most of the test.
RECORDS = {"contacts": 300, "matters": 200, "activities": 300}
REPO = Path(__file__).resolve().parents[2]


def test_demo_loads_every_record_without_a_429(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    records = ",".join(f"{resource}={n}" for resource, n in RECORDS.items())
    command = [sys.executable, "-m", "dev.demo", "--dir", str(work)]
    result = subprocess.run(
        [*command, "--records", records],
        cwd=REPO,  # as `make demo` runs it: `dev` is a folder of the repository, not of the package
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"

    assert f"Demo folder: {work}" in out
    assert 'Triggered clio_incremental_warehouse with {"full_refresh": true}' in out
    assert "DAG run demo_full_refresh: success" in out
    for resource, n in RECORDS.items():
        assert re.search(rf"clio_{resource}\s+{n}\s+emulator has\s+{n}\s+ok", out), resource
    requests = re.search(r"API requests\s+(\d+)", out)
    assert requests is not None
    # One request per page: 2 + 1 + 2.
    assert int(requests.group(1)) == sum(-(-n // 200) for n in RECORDS.values())
    assert re.search(r"429 responses\s+0\n", out)
    busiest = re.search(r"busiest 1 s window\s+(\d+)", out)
    assert busiest is not None
    assert 1 <= int(busiest.group(1)) <= 3
    at_once = re.search(r"max tasks at once\s+(\d+)\s+running in clio_us", out)
    assert at_once is not None
    assert 1 <= int(at_once.group(1)) <= 3
    assert re.search(r"3 tasks side by side .* req/s", out)
    assert re.search(r"whole DAG run .* req/s", out)
    assert re.search(r"Time: DAG run [\d.]+ s; start-up [\d.]+ s, stop [\d.]+ s, total [\d.]+ s", out)
    assert "no process left" in out
    assert out.rstrip().endswith("Demo OK")

    assert (work / "warehouse.db").is_file()
    for component in ("api-server", "scheduler", "dag-processor"):
        assert (work / "logs" / f"{component}.log").is_file(), component
