# SPDX-License-Identifier: Apache-2.0
"""task_policy.py: the pool, region and retry defaults every Clio task gets, and the checked hook."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import ModuleType

import pytest
from airflow.sdk import DAG, BaseOperator

from airflow_provider_clio.auth import MemoryTokenStore
from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.operators.retry_policy import ClioRetryPolicy
from airflow_provider_clio.task_policy import (
    apply_task_defaults,
    connection_region_and_pool,
    default_retry_policy,
    task_hook,
)
from airflow_provider_clio.testing import ClioEmulator


@pytest.fixture
def emu(clio_emulator_factory: Callable[..., ClioEmulator]) -> ClioEmulator:
    return clio_emulator_factory(rate_limit=1000, records={"matters": 1})


def test_defaults_never_override_the_caller_or_default_args() -> None:
    kwargs = {"pool": "mine", "default_args": {"retries": 1}}
    apply_task_defaults(kwargs, {"pool": "clio_us", "retries": 5, "mode": "reschedule"})
    assert kwargs == {"pool": "mine", "default_args": {"retries": 1}, "mode": "reschedule"}


def test_the_default_retry_policy_is_the_clio_one() -> None:
    assert default_retry_policy() == ClioRetryPolicy()


def test_region_and_pool_come_from_the_connection(
    emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    ca = support.clio_connection(monkeypatch, emu, region="ca")
    assert connection_region_and_pool(ca) == ("ca", "clio_ca")
    assert connection_region_and_pool(ca, " EU ") == ("eu", "clio_eu")
    custom = support.clio_connection(monkeypatch, emu, region="au", pool="clio_au_team")
    assert connection_region_and_pool(custom) == ("au", "clio_au_team")
    # The prefixed form of the extras is read as the hook reads it.
    prefixed = "clio_policy_prefixed"
    conn = emu.connection(region="eu")
    conn["extra"] = {"extra__clio__region": "eu", "extra__clio__pool": "clio_eu_team"}
    monkeypatch.setenv(f"AIRFLOW_CONN_{prefixed.upper()}", json.dumps(conn))
    assert connection_region_and_pool(prefixed) == ("eu", "clio_eu_team")


def test_an_unreadable_connection_does_not_fail_parsing() -> None:
    # No connection at parse time: the us pool; the checked hook fails the task at run time if wrong.
    assert connection_region_and_pool("clio_policy_missing") == ("us", "clio_us")
    with pytest.raises(ClioConfigError, match="region must be one of"):
        connection_region_and_pool("clio_policy_missing", "mars")


def test_the_hook_is_refused_outside_its_pool_or_region(
    emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu, region="ca")
    store = MemoryTokenStore()
    with DAG("task_policy_hooks", schedule=None):
        right = BaseOperator(task_id="right", pool="clio_ca", pool_slots=2)
        wrong_pool = BaseOperator(task_id="wrong_pool", pool="default_pool")
        wrong_region = BaseOperator(task_id="wrong_region", pool="clio_ca")
    hook = task_hook(right, conn_id, None, token_store=store)
    assert (hook.region, hook.pool_name) == ("ca", "clio_ca")
    with pytest.raises(ClioConfigError, match=r"runs in pool 'default_pool' but .* paces for pool 'clio_ca'"):
        task_hook(wrong_pool, conn_id, None, token_store=store)
    with pytest.raises(ClioConfigError, match=r"names region 'us' but connection .* is in region 'ca'"):
        task_hook(wrong_region, conn_id, "us", token_store=store)
    assert emu.count(path_prefix="/grow") == 0
