# SPDX-License-Identifier: Apache-2.0
"""Apache Airflow provider for Clio: rate-limit-safe extraction into files and SQL warehouses."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
