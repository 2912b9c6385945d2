# SPDX-License-Identifier: Apache-2.0
"""A Clio Platform API emulator for tests and demos: real HTTP, seeded data, OAuth, the rate limit, faults.

.. code-block:: python

    from airflow_provider_clio.testing import ClioEmulator, Faults

    with ClioEmulator(records={"contacts": 500}, faults=Faults(error_rate=0.1)) as emu:
        print(emu.url, emu.connection(region="eu"))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_clio.testing.emulator import ClioEmulator
    from airflow_provider_clio.testing.faults import Faults, Latency
    from airflow_provider_clio.testing.limiter import SlidingWindowLimiter
    from airflow_provider_clio.testing.oauth import EmulatorApp
    from airflow_provider_clio.testing.recorder import RequestRecord

__all__ = ["ClioEmulator", "EmulatorApp", "Faults", "Latency", "RequestRecord", "SlidingWindowLimiter"]

# Resolved lazily: importing emulator.py here would make `python -m airflow_provider_clio.testing.emulator`
# load that module twice (runpy warns about it).
_EXPORTS = {
    "ClioEmulator": "airflow_provider_clio.testing.emulator",
    "EmulatorApp": "airflow_provider_clio.testing.oauth",
    "Faults": "airflow_provider_clio.testing.faults",
    "Latency": "airflow_provider_clio.testing.faults",
    "RequestRecord": "airflow_provider_clio.testing.recorder",
    "SlidingWindowLimiter": "airflow_provider_clio.testing.limiter",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
