# SPDX-License-Identifier: Apache-2.0
"""Clio triggers: :mod:`.clio` holds :class:`~airflow_provider_clio.triggers.clio.ClioRecordsTrigger`."""

from __future__ import annotations

__all__: list[str] = []
