# SPDX-License-Identifier: Apache-2.0
"""Clio's regions; dependency-free so provider metadata and the CLI can import it cheaply.

The hosts of each region live in the API specs (:mod:`airflow_provider_clio.apis`).
"""

from __future__ import annotations

REGIONS: tuple[str, ...] = ("us", "ca", "eu", "au")
"""Each region is a separate Clio instance with its own applications, tokens and rate-limit budget."""

DEFAULT_REGION = "us"

__all__ = ["DEFAULT_REGION", "REGIONS"]
