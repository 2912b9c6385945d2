# SPDX-License-Identifier: Apache-2.0
"""ClioRecordsTrigger on the real emulator: serialization, success, polling, errors, a free event loop."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from airflow.sdk.module_loading import import_string
from airflow.triggers.base import TriggerEvent

from airflow_provider_clio.testing import ClioEmulator
from airflow_provider_clio.triggers.clio import ClioRecordsTrigger

UTC = datetime.timezone.utc
FUTURE = datetime.datetime(2026, 7, 1, tzinfo=UTC)


@pytest.fixture
def emu(clio_emulator_factory: Callable[..., ClioEmulator]) -> ClioEmulator:
    return clio_emulator_factory(rate_limit=1000, records={"matters": 60}, page_size=50)


def _trigger(conn_id: str, **kwargs: Any) -> ClioRecordsTrigger:
    values: dict[str, Any] = {
        "endpoint": "grow/matters",
        "params": {"fields": "id", "updated_since": FUTURE.isoformat()},
        "clio_conn_id": conn_id,
        "poke_interval": 0.01,
    }
    values.update(kwargs)
    return ClioRecordsTrigger(**values)


async def _first_event(trigger: ClioRecordsTrigger, timeout: float = 20) -> TriggerEvent:
    return await asyncio.wait_for(anext(aiter(trigger.run())), timeout)


def test_serialize_round_trip() -> None:
    trigger = _trigger("clio_x", pool_slots=2, poke_interval=45)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_clio.triggers.clio.ClioRecordsTrigger"
    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs == {
        "endpoint": "grow/matters",
        "params": {"fields": "id", "updated_since": FUTURE.isoformat()},
        "clio_conn_id": "clio_x",
        "poke_interval": 45.0,
        "pool_slots": 2,
        "first_poll_delay": 0.0,
    }
    assert _trigger("clio_x", first_poll_delay=45).serialize()[1]["first_poll_delay"] == 45.0


async def test_success_when_records_exist(
    airflow_db: Path, emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu)
    event = await _first_event(_trigger(conn_id, params={"fields": "id"}))
    assert event.payload == {"status": "success", "endpoint": "grow/matters", "records": 50, "polls": 1}


async def test_polls_in_a_thread_until_records_appear(
    airflow_db: Path, emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    # Two requests per second: the second poll waits ~0.5 s in the hook's pacer, off the event loop.
    conn_id = support.clio_connection(monkeypatch, emu, requests_per_slot=2)
    ticks = 0
    finished = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not finished.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    async def change_after_first_poll() -> None:
        while emu.count(status=200, path_prefix="/grow") < 1:
            await asyncio.sleep(0.005)
        emu.touch("matters", [9], at=FUTURE)

    ticking = asyncio.create_task(ticker())
    changing = asyncio.create_task(change_after_first_poll())
    event = await _first_event(_trigger(conn_id, poke_interval=0))
    finished.set()
    await asyncio.gather(ticking, changing)
    assert event.payload["status"] == "success"
    assert event.payload["polls"] == 2
    assert event.payload["records"] == 1
    assert ticks >= 20  # the loop kept running while a poll waited for its turn
    assert emu.count(path_prefix="/grow") == 2


async def test_first_poll_waits_the_first_poll_delay(
    airflow_db: Path, emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    # The deferring sensor has just checked once: an immediate poll would be a second request on its slot.
    conn_id = support.clio_connection(monkeypatch, emu)
    trigger = _trigger(conn_id, poke_interval=30, first_poll_delay=30)
    sleeps: list[tuple[float, int]] = []

    async def recording_sleep(seconds: float) -> None:
        sleeps.append((seconds, emu.count(path_prefix="/grow")))
        if len(sleeps) == 2:
            emu.touch("matters", [9], at=FUTURE)

    trigger._sleep = recording_sleep
    event = await _first_event(trigger)
    assert event.payload["status"] == "success"
    assert event.payload["polls"] == 2
    # Waited a full interval before the first request, and between the two polls.
    assert sleeps == [(30.0, 0), (30.0, 1)]
    assert emu.count(path_prefix="/grow") == 2


async def test_fatal_error_ends_with_an_error_event(
    airflow_db: Path, emu: ClioEmulator, monkeypatch: pytest.MonkeyPatch, support: ModuleType
) -> None:
    conn_id = support.clio_connection(monkeypatch, emu)
    event = await _first_event(_trigger(conn_id, endpoint="grow/no_such_resource"))
    assert event.payload["status"] == "error"
    assert event.payload["fatal"] is True
    assert event.payload["error_type"] == "ClioNotFoundError"
    assert "404" in event.payload["message"]


async def test_bad_connection_ends_with_an_error_event(airflow_db: Path) -> None:
    event = await _first_event(_trigger("clio_conn_that_does_not_exist"))
    assert event.payload["status"] == "error"
    assert event.payload["fatal"] is False
