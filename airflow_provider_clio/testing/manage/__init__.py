# SPDX-License-Identifier: Apache-2.0
"""The emulator's Clio Manage API v4 mode: ``/api/v4/...`` next to the Platform's ``/grow/...`` on one host.

.. code-block:: python

    from airflow_provider_clio.testing import ClioEmulator
    from airflow_provider_clio.testing.manage import ManageSettings

    with ClioEmulator(manage=ManageSettings(records={"activities": 20000}, peak_limit=50)) as emu:
        conn = emu.connection(api="manage", region="us")  # extra {"api": "manage", ...}
        emu.set_peak(False)  # off-peak: 300 requests per 60 s window and token
"""

from __future__ import annotations

from airflow_provider_clio.testing.manage.data import MANAGE_RESOURCES, NO_UPDATED_SINCE
from airflow_provider_clio.testing.manage.limiter import Admission, TokenWindowLimiter
from airflow_provider_clio.testing.manage.mode import ManageEmulatorMixin, ManageMode
from airflow_provider_clio.testing.manage.settings import CLIO_SCHEDULE, DEFAULT_API_VERSION, ManageSettings

__all__ = [
    "CLIO_SCHEDULE",
    "DEFAULT_API_VERSION",
    "MANAGE_RESOURCES",
    "NO_UPDATED_SINCE",
    "Admission",
    "ManageEmulatorMixin",
    "ManageMode",
    "ManageSettings",
    "TokenWindowLimiter",
]
