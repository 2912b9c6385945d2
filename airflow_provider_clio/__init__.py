# SPDX-License-Identifier: Apache-2.0
"""
Apache Airflow provider for Clio: rate-limit-safe extraction into files and SQL warehouses.

Public modules (stable names; import from these):

- :mod:`airflow_provider_clio.hooks.clio` -- ``ClioHook``
- :mod:`airflow_provider_clio.operators.extract` -- ``ClioExtractOperator``, ``read_extract``
- :mod:`airflow_provider_clio.operators.retry_policy` -- ``ClioRetryPolicy``
- :mod:`airflow_provider_clio.transfers.clio_to_sql` -- ``ClioToSqlOperator``
- :mod:`airflow_provider_clio.sensors.clio` -- ``ClioRecordsSensor``
- :mod:`airflow_provider_clio.triggers.clio` -- ``ClioRecordsTrigger``
- :mod:`airflow_provider_clio.exceptions` -- the typed errors
- :mod:`airflow_provider_clio.auth` -- the token stores a hook may be given
- :mod:`airflow_provider_clio.warehouse` -- the staged ``MERGE`` loader of committed extracts
- :mod:`airflow_provider_clio.testing` -- the Clio API emulator and its pytest plugin

Every other module (``apis``, ``connection``, ``urls``, ``responses``, ``retrying``, ``rate_limit``,
``pools``, ``pagination``, ``extraction``, ``checkpoint``, ``storage``, ...) is internal: its names may
change in any release. docs/architecture.md maps what each holds.
"""

from __future__ import annotations

from importlib import metadata

__version__ = "0.1.0"

__all__ = ["__version__"]

MIN_AIRFLOW_VERSION = (3, 3, 2)
"""The oldest Airflow the suite runs against (setup.cfg declares the same floor)."""


def _check_airflow_version(installed: str | None) -> None:
    """
    Refuse an Airflow older than :data:`MIN_AIRFLOW_VERSION`, naming the version needed.

    :param installed: The installed Airflow's version, ``None`` when no distribution says (nothing to check).
    :raises RuntimeError: ``installed`` is older than the minimum (pre-releases count as their release).
    """
    if installed is None:
        return
    from packaging.version import Version  # an Airflow dependency

    if Version(installed).release[:3] < MIN_AIRFLOW_VERSION:
        needed = ".".join(map(str, MIN_AIRFLOW_VERSION))
        raise RuntimeError(
            f"airflow-provider-clio {__version__} needs Apache Airflow {needed} or newer, found {installed}: "
            f'pip install "apache-airflow>={needed}"'
        )


def _installed_airflow() -> str | None:
    # Read from the distribution's metadata, not `import airflow`, which would load Airflow's configuration
    # in processes that never use it (the emulator's CLI). Airflow 3 ships its code in apache-airflow-core.
    for distribution in ("apache-airflow-core", "apache-airflow"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


_check_airflow_version(_installed_airflow())
