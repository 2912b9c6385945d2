# SPDX-License-Identifier: Apache-2.0
"""Tests for the pool helpers: pool names and the slots the running task holds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow.sdk.execution_time.context import set_current_context

from airflow_provider_clio.exceptions import ClioConfigError
from airflow_provider_clio.pools import current_task_pool_slots, pool_name_for, resolve_pool_slots


def test_pool_name_for() -> None:
    assert pool_name_for("us") == "clio_us"
    assert pool_name_for("eu") == "clio_eu"
    assert pool_name_for("au") == "clio_au"
    assert pool_name_for("eu", "clio_shared") == "clio_shared"
    assert pool_name_for("eu", None, prefix="manage_") == "manage_eu"


def test_pool_slots_outside_a_task_default_to_one() -> None:
    assert current_task_pool_slots() is None
    assert resolve_pool_slots(None) == 1
    assert resolve_pool_slots(3) == 3


def test_pool_slots_come_from_the_running_task() -> None:
    with set_current_context({"task": SimpleNamespace(pool_slots=3)}):  # type: ignore[arg-type]
        assert current_task_pool_slots() == 3
        assert resolve_pool_slots(None) == 3
        assert resolve_pool_slots(2) == 2  # an explicit argument wins


@pytest.mark.parametrize("slots", [0, -1, 1.5, True, "2"])
def test_invalid_pool_slots(slots: object) -> None:
    with pytest.raises(ClioConfigError, match="pool_slots"):
        resolve_pool_slots(slots)  # type: ignore[arg-type]
