# SPDX-License-Identifier: Apache-2.0
"""Registers the ``browser`` marker so tests/ui runs under --strict-markers on its own."""

from __future__ import annotations

import pytest

__all__: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    # Registering a marker twice is harmless, so this stays correct if the root conftest adds it too.
    config.addinivalue_line("markers", "browser: drives headless Chromium against a real Airflow api-server")
