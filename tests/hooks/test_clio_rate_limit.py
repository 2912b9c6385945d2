# SPDX-License-Identifier: Apache-2.0
"""Real-time, multi-process checks that ClioHook holds Clio's per-application rate limit and still uses it.

Each test runs OS processes (see ``rate_scenario.py``) against one emulator with the default limit of
3 requests per sliding second per application and region.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# serial: utilisation and wall-time thresholds under the real clock, so no other xdist worker shares the CPU.
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.serial]

LEAK_SECRET = "rate-test-client-secret-value"


def _load_scenario() -> ModuleType:
    path = Path(__file__).with_name("rate_scenario.py")
    spec = importlib.util.spec_from_file_location("clio_rate_scenario", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


scenario = _load_scenario()


def test_three_processes_share_one_region_without_429(
    clio_emulator_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emu = clio_emulator_factory(records={"contacts": 5000})
    emu.register_app(client_id="clio-busy-us", client_secret=LEAK_SECRET, region="us")
    emu.register_app(client_id="clio-quiet-eu", client_secret=LEAK_SECRET, region="eu")
    workers = [
        scenario.Worker("us-1", "us", "clio-busy-us"),
        scenario.Worker("us-2", "us", "clio-busy-us"),
        scenario.Worker("us-3", "us", "clio-busy-us"),
        scenario.Worker("eu-1", "eu", "clio-quiet-eu"),
    ]
    result = scenario.run_scenario(emu, workers, duration=15.0, workdir=tmp_path)
    print(scenario.format_result(result, "3 processes on us + 1 on eu"))

    us, eu = result.regions["us"], result.regions["eu"]
    assert us.rate_limited == 0
    assert eu.rate_limited == 0
    assert emu.count(status=429) == 0
    assert us.max_in_any_1s_window <= 3
    assert eu.max_in_any_1s_window <= 1
    assert us.window_seconds > 12
    assert us.utilisation >= 0.9, scenario.format_result(result, "us below 90 %")
    assert all(w.retries == 0 and w.error is None for w in result.workers)
    assert result.wall_seconds < 25

    captured = capsys.readouterr()
    output = result.output + captured.out + captured.err
    assert "page" in result.output  # the workers' logs were captured
    assert len(result.secrets) == 6  # two applications: client secret, refresh and access token each
    assert [s for s in result.secrets if s in output] == []


def test_one_process_with_three_slots_uses_the_whole_limit(
    clio_emulator_factory: Any, tmp_path: Path
) -> None:
    emu = clio_emulator_factory(records={"contacts": 5000})
    emu.register_app(client_id="clio-solo-us", client_secret=LEAK_SECRET, region="us")
    workers = [scenario.Worker("solo", "us", "clio-solo-us", pool_slots=3)]
    result = scenario.run_scenario(emu, workers, duration=12.0, workdir=tmp_path)
    print(scenario.format_result(result, "1 process with pool_slots=3"))

    us = result.regions["us"]
    assert us.rate_limited == 0
    assert us.max_in_any_1s_window <= 3
    assert us.utilisation >= 0.9, scenario.format_result(result, "below 90 %")
    assert result.workers[0].retries == 0
    assert [s for s in result.secrets if s in result.output] == []
