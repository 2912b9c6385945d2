# SPDX-License-Identifier: Apache-2.0
"""The ``airflow clio`` command group (internal): declared in :mod:`.definition`, run in :mod:`.commands`."""

from __future__ import annotations

__all__: list[str] = []
