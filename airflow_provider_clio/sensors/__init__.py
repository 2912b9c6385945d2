# SPDX-License-Identifier: Apache-2.0
"""Clio sensors: :mod:`.clio` holds :class:`~airflow_provider_clio.sensors.clio.ClioRecordsSensor`."""

from __future__ import annotations

__all__: list[str] = []
