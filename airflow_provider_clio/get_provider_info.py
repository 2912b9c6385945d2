# SPDX-License-Identifier: Apache-2.0
"""Provider metadata for Airflow's ProvidersManager (``apache_airflow_provider`` entry point)."""

from __future__ import annotations

from typing import Any

from airflow_provider_clio import __version__
from airflow_provider_clio.regions import DEFAULT_REGION, REGIONS

__all__ = ["API_LABELS", "REGION_LABELS", "get_provider_info"]

API_LABELS: dict[str, str] = {"platform": "Clio Platform API (Grow)", "manage": "Clio Manage API v4"}
"""The built-in APIs a connection may select, with the labels the connection form shows."""

REGION_LABELS: dict[str, str] = {
    "us": "United States (us)",
    "ca": "Canada (ca)",
    "eu": "Europe (eu)",
    "au": "Australia (au)",
}
"""What the connection form's region select shows for each region code (the code is what is saved)."""


def get_provider_info() -> dict[str, Any]:
    """Return the provider description Airflow validates against ``provider_info.schema.json``."""
    return {
        "package-name": "airflow-provider-clio",
        "name": "Clio",
        "description": (
            "Extract data from Clio (legal practice management) into object storage and SQL "
            "warehouses without tripping Clio's per-application rate limit."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Clio",
                "external-doc-url": "https://docs.developers.clio.com/",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": "Clio", "python-modules": ["airflow_provider_clio.hooks.clio"]}],
        "operators": [
            {"integration-name": "Clio", "python-modules": ["airflow_provider_clio.operators.extract"]}
        ],
        "sensors": [{"integration-name": "Clio", "python-modules": ["airflow_provider_clio.sensors.clio"]}],
        "triggers": [{"integration-name": "Clio", "python-modules": ["airflow_provider_clio.triggers.clio"]}],
        "transfers": [
            {
                "source-integration-name": "Clio",
                "target-integration-name": "Common SQL",
                "python-module": "airflow_provider_clio.transfers.clio_to_sql",
            }
        ],
        "connection-types": [
            {
                "connection-type": "clio",
                "hook-class-name": "airflow_provider_clio.hooks.clio.ClioHook",
                "hook-name": "Clio",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {
                        "login": "OAuth client id (App Key)",
                        "password": "OAuth client secret",
                        "host": "Base URL override (optional)",
                    },
                    "placeholders": {
                        "login": "Client id from the Clio developer portal",
                        "password": "Client secret",
                        "host": "Leave empty for Clio; e.g. http://127.0.0.1:8765 for the emulator",
                    },
                },
                "conn-fields": {
                    "api": {
                        "label": "API",
                        "description": (
                            "Which Clio API this connection's application and tokens belong to; each has "
                            "its own developer application per region."
                        ),
                        "schema": {
                            "type": "string",
                            "enum": list(API_LABELS),
                            "values_display": API_LABELS,
                            "default": "platform",
                        },
                    },
                    "region": {
                        "label": "Region",
                        "description": (
                            "Clio instance the application is registered in. Picks the API and OAuth "
                            "hosts and the Airflow pool clio_<region> (Manage: clio_manage_<region>)."
                        ),
                        # values_display is how Airflow 3's form (the DAG-params FlexibleForm) labels enum
                        # choices; provider.yaml's schema allows extra keys inside "schema".
                        "schema": {
                            "type": "string",
                            "enum": list(REGIONS),
                            "values_display": {code: REGION_LABELS[code] for code in REGIONS},
                            "default": DEFAULT_REGION,
                        },
                    },
                    "refresh_token": {
                        "label": "Refresh token",
                        "description": (
                            # The form shows descriptions as plain text: no Markdown backticks.
                            "OAuth refresh token from the command airflow clio auth. On the Platform API it "
                            "rotates on every use (Manage's does not); the hook stores the newest one in an "
                            "Airflow Variable."
                        ),
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "requests_per_slot": {
                        "label": "Requests per second per pool slot",
                        "description": "Request rate one slot of the region pool is worth (default 1.0).",
                        "schema": {"type": ["number", "null"], "minimum": 0.01, "default": 1.0},
                    },
                    "pool": {
                        "label": "Pool name",
                        # The form saves an empty field as "pool": null; the hook reads null as the default.
                        "description": (
                            "Airflow pool for this connection's tasks. Leave empty for clio_<region> "
                            "(Manage: clio_manage_<region>). Manage counts its limit per token: give every "
                            "further Manage connection its own pool."
                        ),
                        "schema": {"type": ["string", "null"]},
                    },
                    "pool_size": {
                        "label": "Pool slots (Manage)",
                        "description": (
                            "Manage only: the slots of this connection's pool. A task holding k slots paces "
                            "at k/pool_size of the token's rate-limit budget (default 5)."
                        ),
                        "schema": {"type": ["integer", "null"], "minimum": 1},
                    },
                },
            }
        ],
        "cli": ["airflow_provider_clio.cli.definition.get_clio_cli_commands"],
    }
