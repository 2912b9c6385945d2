# SPDX-License-Identifier: Apache-2.0
"""Clio's regions and their hosts; dependency-free so provider metadata and the CLI can import it cheaply."""

from __future__ import annotations

REGIONS: tuple[str, ...] = ("us", "ca", "eu", "au")
"""Each region is a separate Clio instance with its own applications, tokens and rate-limit budget."""

DEFAULT_REGION = "us"

API_HOSTS = {"us": "api.clio.com", "ca": "ca.api.clio.com", "eu": "eu.api.clio.com", "au": "au.api.clio.com"}
AUTH_HOSTS = {
    "us": "auth.api.clio.com",
    "ca": "ca.auth.api.clio.com",
    "eu": "eu.auth.api.clio.com",
    "au": "au.auth.api.clio.com",
}
