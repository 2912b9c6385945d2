# SPDX-License-Identifier: Apache-2.0
"""The short soak (issue 8): both operators under a real scheduler, faults, an outage, SIGKILLed tasks.

See ``dev/soak.py``: 20 % random 429/5xx, dropped connections, a total outage, access tokens expiring every
6 s, and each task's process killed with SIGKILL after its first committed unit. The DAG run must succeed
with both outputs exactly the emulator's records (nothing lost, nothing twice), each killed task resumed
from its checkpoint, and no secret in any log, XCom, rendered template or output file. ``make soak`` runs
the full form (a 60 s outage, more records).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dev.soak import FORMS, TASKS, check, run_soak

pytestmark = [pytest.mark.soak, pytest.mark.slow, pytest.mark.timeout(600)]


def test_short_soak_loses_and_duplicates_nothing_and_leaks_no_secret(tmp_path: Path) -> None:
    if not (Path(sys.executable).parent / "airflow").exists():
        pytest.skip(f"no airflow executable beside {sys.executable}")
    result = run_soak(FORMS["short"], tmp_path)
    print(result.report())
    problems = check(result)
    if problems:
        print(result.logs)
    assert problems == []
    for task in TASKS:
        assert result.outputs[task] == {"rows": 1500, "lost": 0, "duplicated": 0, "differing": 0}
        assert result.tries[task] >= 2
        summary = result.summaries[task]
        assert summary["resumed"] is True
        assert summary.get("resumed_parts", summary.get("resumed_batches")) >= 1
    assert result.leaks == []
    assert result.figures["429"] > 0
    assert result.figures["5xx"] > result.figures["outage"] > 0
    assert result.figures["refreshes"] >= 2
