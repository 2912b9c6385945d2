# SPDX-License-Identifier: Apache-2.0
"""Clio Manage against the emulator's Manage mode: 20,000 activities across a peak -> off-peak switch.

The emulator's windows last ``WINDOW`` seconds (Clio: 60) and its limits are scaled down with them, so the
peak and off-peak budgets run out many times within the test.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.operators.extract import ClioExtractOperator, read_extract

pytestmark = pytest.mark.integration

WINDOW = 2.0
PEAK, OFF_PEAK = 10, 40
"""Requests per window and token, peak and off-peak (Clio: 50 and about 300 per 60-s window)."""
ACTIVITIES = 20_000


def test_20000_activities_across_a_peak_to_off_peak_switch_without_a_429(
    clio_emulator_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    switch_at = time.time() + 4 * WINDOW
    emu = clio_emulator_factory(
        manage={
            "records": {"activities": ACTIVITIES},
            "window": WINDOW,
            "peak_limit": PEAK,
            "off_peak_limit": OFF_PEAK,
            "peak": lambda region, at: at < switch_at,
        }
    )
    conn = emu.connection(api="manage", pool="clio_manage_emu", pool_size=1)  # this token's whole budget
    monkeypatch.setenv("AIRFLOW_CONN_CLIO_MANAGE_EMU", json.dumps(conn))

    summary = ClioExtractOperator(
        task_id="extract_activities",
        clio_conn_id="clio_manage_emu",
        endpoint="activities",
        fields=["id", "updated_at"],
        destination=f"file://{tmp_path}/activities",
        records_per_file=5000,
        token_store=MemoryTokenStore(),
    ).execute({})

    expected = [{"id": r["id"], "updated_at": r["updated_at"]} for r in emu.manage_records("activities")]
    assert len(expected) == ACTIVITIES
    assert list(read_extract(f"file://{tmp_path}/activities")) == expected
    assert summary["records"] == ACTIVITIES
    api = [r for r in emu.manage_requests() if r.path.startswith("/api/v4")]
    assert [r.status for r in api if r.status != 200] == []  # not one 429
    assert not any("offset" in r.query for r in api)
    assert all(r.query.get("order") == ["id(asc)"] for r in api)
    # The off-peak limit was used once the headers showed it: far more requests per window after the switch.
    per_window: dict[int, int] = {}
    for r in api:
        per_window[int(r.wall // WINDOW)] = per_window.get(int(r.wall // WINDOW), 0) + 1
    peak = [n for w, n in per_window.items() if (w + 1) * WINDOW <= switch_at]
    off_peak = [n for w, n in per_window.items() if w * WINDOW >= switch_at]
    assert max(peak) <= PEAK
    assert max(off_peak) > PEAK
    assert max(off_peak) <= OFF_PEAK


def _extract(emu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> dict[str, Any]:
    conn = emu.connection(api="manage", pool="clio_manage_emu", pool_size=1)
    monkeypatch.setenv("AIRFLOW_CONN_CLIO_MANAGE_EMU", json.dumps(conn))
    summary = ClioExtractOperator(
        task_id=name,
        clio_conn_id="clio_manage_emu",
        endpoint="activities",
        fields=["id"],
        destination=f"file://{tmp_path}/{name}",
        token_store=MemoryTokenStore(),
    ).execute({})
    expected = [{"id": r["id"]} for r in emu.manage_records("activities")]
    assert list(read_extract(f"file://{tmp_path}/{name}")) == expected
    return summary


def test_another_client_on_the_token_and_a_mid_window_drop_cost_waits_not_the_task(
    clio_emulator_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    emu = clio_emulator_factory(
        manage={"records": {"activities": 3000}, "window": WINDOW, "peak_limit": 12, "off_peak_limit": 12}
    )
    stop = threading.Event()

    def other_client() -> None:
        # 2 requests of every window spent by someone else on the same token, 4 s in a limit drop to 3.
        started = time.time()
        while not stop.wait(WINDOW / 2):
            emu.consume_manage_budget(1)
            if 4.0 <= time.time() - started < 4.0 + WINDOW / 2:
                emu.set_manage_limit(3)
            elif time.time() - started >= 4.0 + 2 * WINDOW:
                emu.set_manage_limit(12)

    thread = threading.Thread(target=other_client, daemon=True)
    thread.start()
    try:
        summary = _extract(emu, tmp_path, monkeypatch, "shared")
    finally:
        stop.set()
        thread.join()
    assert summary["records"] == 3000
    refused = emu.manage_requests(status=429)
    # Only the drop (and the other client racing the last request of a window) may cost a 429, never a task.
    assert len(refused) <= 3
    assert summary["rate_limited"] == len(refused)
