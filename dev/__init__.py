# SPDX-License-Identifier: Apache-2.0
"""
Repository-only harnesses, never shipped in the wheel or the sdist.

``dev.deployment`` supervises real Airflow processes for the scheduler tests and ``make demo``;
``dev.demo`` is ``make demo`` (``python -m dev.demo`` from the repository root). Tests import them
because ``[tool:pytest] pythonpath`` puts the repository root on ``sys.path``.
"""

from __future__ import annotations

__all__: list[str] = []
