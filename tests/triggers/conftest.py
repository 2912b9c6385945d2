# SPDX-License-Identifier: Apache-2.0
"""Expose the shared operator-test helpers (tests/operators/support.py) to this folder as ``support``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

_NAME = "clio_operator_test_support"


def _load_support() -> ModuleType:
    # Test folders are not packages under --import-mode=importlib; load the helpers once, by path.
    if _NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            _NAME, Path(__file__).resolve().parents[1] / "operators" / "support.py"
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[_NAME]


@pytest.fixture(scope="session")
def support() -> ModuleType:
    """The shared helpers: connections, dag.test() runs, projections, outage injection."""
    return _load_support()
