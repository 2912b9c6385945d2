# SPDX-License-Identifier: Apache-2.0
"""Clio Manage's per-token budget end to end: ClioExtractOperator in dag.test() against the emulator.

The emulator counts requests per access token in fixed windows and announces the limit in force in
``X-RateLimit-*`` headers; the provider paces each task at its share of that budget (one task here, holding
the whole pool: ``pool_size`` 1). Windows are shortened from 60 s (Clio) so a test takes about a minute; the
limits keep Clio's peak : off-peak ratio (50 : 300 a minute). The emulator's limiter is wrapped by an
:class:`~dev.manage_ledger.AdmissionLedger`, which names the window of every request exactly and switches
limits at an exact request, so the scenarios do not depend on the machine's speed.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import DAG

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.operators.extract import ClioExtractOperator, read_extract
from airflow_provider_clio.testing import ClioEmulator
from dev.manage_ledger import AdmissionLedger, Decision, Window

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

UTC = datetime.timezone.utc


def extract_activities(
    support: ModuleType, manage: SimpleNamespace, conn_id: str, tmp_path: Path, **kwargs: Any
) -> tuple[Any, dict[str, Any], float]:
    """Run a one-task DAG extracting every activity; return ``(dag_run, summary, seconds)``."""
    with DAG(support.unique_dag_id("manage_activities"), schedule=None) as dag:
        ClioExtractOperator(
            task_id="extract",
            clio_conn_id=conn_id,
            endpoint="activities",
            fields=manage.fields,
            destination=f"file://{tmp_path}/activities",
            records_per_file=5000,
            token_store=MemoryTokenStore(),
            retries=2,
            retry_delay=datetime.timedelta(seconds=1),
            **kwargs,
        )
    started = time.monotonic()
    dag_run = support.run_dag(dag, logical_date=datetime.datetime(2026, 7, 1, tzinfo=UTC))
    seconds = time.monotonic() - started
    return dag_run, support.xcom_value(dag_run, "extract") or {}, seconds


def assert_exact(
    emu: ClioEmulator, support: ModuleType, manage: SimpleNamespace, tmp_path: Path, dag_run: Any, count: int
) -> None:
    """The task succeeded on its first try; its output holds every activity once, as the emulator has it."""
    assert support.ti_state(dag_run, "extract") == "success"
    assert support.try_number(dag_run, "extract") == 1
    rows = list(read_extract(f"file://{tmp_path}/activities"))
    assert [row["id"] for row in rows] == list(range(1, count + 1))
    assert rows == support.project(emu.manage_records("activities"), manage.fields)
    manage.assert_cursor_paging_only(emu)


def describe(windows: list[Window]) -> str:
    """One line per window: own admitted / refused requests and the limits in force."""
    origin = windows[0].reset if windows else 0
    return "\n".join(
        f"  window ending +{w.reset - origin:>3d} s: {w.admitted:>3d} admitted, {w.refused} refused, "
        f"used {w.used}, limit {sorted(w.limits, key=str)}"
        for w in windows
    )


def nth_admitted(n: int) -> Callable[[Decision, list[Decision]], bool]:
    """Condition: the ``n``-th admitted request (counted over the whole run)."""
    return lambda decision, decisions: decision.admitted and sum(d.admitted for d in decisions) == n


def test_20000_activities_across_a_peak_to_off_peak_change_without_a_429(
    airflow_db: Path,
    clio_emulator_factory: Callable[..., ClioEmulator],
    manage_conn: Callable[..., str],
    ledger: Callable[[ClioEmulator], AdmissionLedger],
    support: ModuleType,
    manage: SimpleNamespace,
    tmp_path: Path,
) -> None:
    peak, off_peak, window, switch_at = 10, 60, 6.0, 24
    emu = clio_emulator_factory(
        manage={
            "records": {"activities": 20_000},
            "window": window,
            "peak_limit": peak,
            "off_peak_limit": off_peak,
            "peak": True,
        }
    )
    watch = ledger(emu)
    watch.when(nth_admitted(switch_at), lambda: emu.set_peak(False))
    conn_id = manage_conn(emu, pool_size=1)

    dag_run, summary, seconds = extract_activities(support, manage, conn_id, tmp_path)

    windows = watch.windows()
    at_peak = [w for w in windows if w.limits == {peak}]
    off = [w for w in windows if w.limits == {off_peak}]
    requests = [r for r in emu.manage_requests() if r.path.startswith("/api/v4/")]
    print(
        f"\n20,000 activities: {len(requests)} requests, {len(emu.manage_requests(status=429))} x 429, "
        f"{seconds:.1f} s in dag.test; peak {peak} / off-peak {off_peak} per {window:g} s window, "
        f"off-peak from request {switch_at}; max in a sliding window {emu.manage_max_in_window()}\n"
        + describe(windows)
    )
    assert_exact(emu, support, manage, tmp_path, dag_run, 20_000)
    assert summary["records"] == 20_000
    assert summary["pages"] == len(requests) == 100
    # Not one 429 from the deployment's own traffic, before or after the change.
    assert emu.manage_requests(status=429) == []
    assert summary["rate_limited"] == 0
    assert [w for w in windows if w.refused or w.admitted > max(w.limits, key=lambda x: x or 0)] == []
    # The change happened mid-run: windows at the peak limit, then windows at the off-peak one...
    assert len(watch.fired) == 1
    assert len(at_peak) >= 2
    assert off
    # ...and the provider used the higher limit once Clio granted it: more requests per window than peak
    # allows (a pacer stuck at the peak limit could not do that).
    assert max(w.admitted for w in at_peak) <= peak
    assert max(w.admitted for w in off) > peak


def test_a_limit_dropped_mid_window_costs_a_wait_not_a_failed_task(
    airflow_db: Path,
    clio_emulator_factory: Callable[..., ClioEmulator],
    manage_conn: Callable[..., str],
    ledger: Callable[[ClioEmulator], AdmissionLedger],
    support: ModuleType,
    manage: SimpleNamespace,
    tmp_path: Path,
) -> None:
    # Off-peak ends in the middle of a window that already used more than the peak limit: Clio then refuses
    # every request until the window's end. 10 s windows so the request after the drop surely falls in it.
    peak, off_peak, window, drop_at = 6, 36, 10.0, 8
    emu = clio_emulator_factory(
        manage={
            "records": {"activities": 2_400},
            "window": window,
            "peak_limit": peak,
            "off_peak_limit": off_peak,
            "peak": False,
        }
    )
    watch = ledger(emu)
    watch.when(lambda d, _: d.admitted and d.used >= drop_at, lambda: emu.set_peak(True))
    conn_id = manage_conn(emu, pool_size=1)

    dag_run, summary, seconds = extract_activities(support, manage, conn_id, tmp_path)

    decisions = watch.decisions
    refused = [d for d in decisions if not d.admitted]
    print(
        f"\nlimit drop {off_peak} -> {peak} at request {drop_at} of a {window:g} s window: "
        f"{len(decisions)} requests, {len(refused)} x 429, {seconds:.1f} s in dag.test\n"
        + describe(watch.windows())
    )
    assert_exact(emu, support, manage, tmp_path, dag_run, 2_400)
    assert len(watch.fired) == 1
    # The drop cost exactly one 429 (the request that found it), counted in the task's summary...
    assert len(refused) == 1
    assert summary["rate_limited"] == 1
    assert len(emu.manage_requests(status=429)) == 1
    # ...which was waited out: the next request went to the next window (Retry-After and the window's end
    # were honoured), and every later one was admitted.
    (rejected,) = refused
    after = [d for d in decisions if d.index > rejected.index]
    assert after
    assert after[0].reset > rejected.reset
    assert after[0].at >= rejected.at + 1.0
    assert all(d.admitted for d in after)
    assert max(w.admitted for w in watch.windows() if w.limits == {peak}) <= peak


class OtherClient:
    """Spend one request of the token's window every ``every`` seconds, as another client would."""

    def __init__(self, emu: ClioEmulator, every: float) -> None:
        self.emu, self.every = emu, every
        self.started = threading.Event()
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="other-client", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        self.started.set()
        while not self._stop.wait(self.every):
            self.emu.consume_manage_budget(1)
            self.sent += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


@pytest.fixture
def other_client() -> Iterator[Callable[[ClioEmulator, float], OtherClient]]:
    made: list[OtherClient] = []

    def make(emu: ClioEmulator, every: float) -> OtherClient:
        made.append(OtherClient(emu, every))
        return made[-1]

    yield make
    for client in made:
        client.stop()


def test_another_client_on_the_same_token_slows_the_task_without_a_429(
    airflow_db: Path,
    clio_emulator_factory: Callable[..., ClioEmulator],
    manage_conn: Callable[..., str],
    ledger: Callable[[ClioEmulator], AdmissionLedger],
    other_client: Callable[[ClioEmulator, float], OtherClient],
    support: ModuleType,
    manage: SimpleNamespace,
    tmp_path: Path,
) -> None:
    # The design's promise (apis/manage.py, token_budget.py): a steady other client shows as Remaining
    # dropping faster than the task's own requests explain; the task slows down early, before the budget runs
    # out, so neither earns a 429. The other client starts after `alone` requests and takes half the budget.
    limit, window, alone, every = 24, 12.0, 40, 1.0
    emu = clio_emulator_factory(
        manage={"records": {"activities": 16_000}, "window": window, "peak_limit": limit, "peak": True}
    )
    watch = ledger(emu)
    other = other_client(emu, every)
    watch.when(nth_admitted(alone), other.start)
    conn_id = manage_conn(emu, pool_size=1)

    dag_run, summary, seconds = extract_activities(support, manage, conn_id, tmp_path)
    other.stop()

    windows = watch.windows()
    (start,) = watch.fired
    before = [w for w in windows if w.reset < start.reset]  # the task alone
    shared = [w for w in windows[:-1] if w.reset > start.reset]  # whole windows with the other client
    print(
        f"\nanother client ({every:g} s apart, {other.sent} requests) from request {alone}: "
        f"{len(watch.decisions)} own requests, {len(emu.manage_requests(status=429))} x 429, "
        f"{seconds:.1f} s in dag.test; limit {limit} per {window:g} s window\n" + describe(windows)
    )
    assert_exact(emu, support, manage, tmp_path, dag_run, 16_000)
    assert emu.manage_requests(status=429) == []
    assert summary["rate_limited"] == 0
    assert before
    assert shared
    # The task slowed down: in every window it shared with the other client it sent fewer requests than in
    # any window it had alone, and the window's whole budget (the other client's part included) held.
    assert max(w.admitted for w in shared) < min(w.admitted for w in before)
    assert all(w.used <= limit for w in windows)
