# SPDX-License-Identifier: Apache-2.0
"""Trigger that waits in the triggerer until a Clio endpoint has records matching a filter.

Each poll is one ``GET`` of the first page with ``fields=id``, made by the same synchronous ``ClioHook`` the
operators use (in a worker thread through ``asyncio.to_thread``), so the request goes through the same
in-process pacer and the same token refresh and rotation as every other Clio call of the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_clio.exceptions import ClioFatalError, ClioRetryableError

__all__ = ["ClioRecordsTrigger"]

log = logging.getLogger(__name__)


class ClioRecordsTrigger(BaseTrigger):
    """
    Poll a Clio list endpoint every ``poke_interval`` seconds until it returns at least one record.

    Yields ``TriggerEvent({"status": "success", "endpoint": ..., "records": n, "polls": k})`` when records
    are found, or ``{"status": "error", "fatal": bool, "error_type": ..., "message": ...}`` when a request
    fails with an error retrying cannot fix (or an unexpected one). Retryable errors (429, 5xx after the
    hook's own retries) are logged and the polling continues; the task's ``timeout`` bounds the wait.

    :param endpoint: List endpoint, e.g. ``grow/matters``.
    :param params: Query parameters of the poll, normally ``{"fields": "id", "updated_since": ...}``.
    :param clio_conn_id: The Clio connection.
    :param poke_interval: Seconds between polls.
    :param pool_slots: Pool slots of the deferring task; the hook paces at this share of the rate limit.
    :param first_poll_delay: Seconds to wait before the first poll. The deferring sensor has just checked once
        in the worker, so it passes ``poke_interval``: polling at once would send a second request within a
        moment of the first on the same pool slot. Default 0 (poll at once).
    """

    def __init__(
        self,
        *,
        endpoint: str,
        params: Mapping[str, Any] | None = None,
        clio_conn_id: str = "clio_default",
        poke_interval: float = 60.0,
        pool_slots: int = 1,
        first_poll_delay: float = 0.0,
    ) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.params = dict(params or {})
        self.clio_conn_id = clio_conn_id
        self.poke_interval = float(poke_interval)
        self.pool_slots = int(pool_slots)
        self.first_poll_delay = max(float(first_poll_delay), 0.0)
        # Injectable for tests; not serialized.
        self._sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and keyword arguments the triggerer rebuilds this trigger from."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "endpoint": self.endpoint,
                "params": self.params,
                "clio_conn_id": self.clio_conn_id,
                "poke_interval": self.poke_interval,
                "pool_slots": self.pool_slots,
                "first_poll_delay": self.first_poll_delay,
            },
        )

    def _make_hook(self) -> Any:
        from airflow_provider_clio.hooks.clio import ClioHook

        # The triggerer runs no task, so there is no pool to check: the polls are counted on the slot the
        # deferred task keeps, which needs a pool with include_deferred (`airflow clio check` verifies it).
        return ClioHook(self.clio_conn_id, pool_slots=self.pool_slots, enforce_pool=False)

    def _poll(self, hook: Any) -> int:
        response = hook.get(self.endpoint, params=self.params)
        data = response.get("data") if isinstance(response, Mapping) else None
        return len(data) if isinstance(data, list) else 0

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until records exist (success event) or a poll fails for good (error event)."""
        polls = 0
        if self.first_poll_delay:
            await self._sleep(self.first_poll_delay)
        try:
            # Reading the connection and the token store is blocking I/O: keep it off the event loop.
            hook = await asyncio.to_thread(self._make_hook)
        except Exception as err:
            yield self._error(err)
            return
        while True:
            polls += 1
            try:
                found = await asyncio.to_thread(self._poll, hook)
            except ClioRetryableError as err:
                self.log.warning("Poll %d of %s failed, will poll again: %s", polls, self.endpoint, err)
            except Exception as err:
                yield self._error(err)
                return
            else:
                if found:
                    self.log.info("Found records in %s after %d poll(s)", self.endpoint, polls)
                    yield TriggerEvent(
                        {"status": "success", "endpoint": self.endpoint, "records": found, "polls": polls}
                    )
                    return
                self.log.info("No records in %s yet (poll %d)", self.endpoint, polls)
            await self._sleep(self.poke_interval)

    def _error(self, err: BaseException) -> TriggerEvent:
        # Clio errors carry messages already scrubbed of tokens; others are reported by type and text.
        return TriggerEvent(
            {
                "status": "error",
                "fatal": isinstance(err, ClioFatalError),
                "error_type": type(err).__name__,
                "endpoint": self.endpoint,
                "message": str(err),
            }
        )
