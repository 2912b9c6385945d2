# SPDX-License-Identifier: Apache-2.0
"""Apache Airflow provider for Clio: rate-limit-safe extraction into files and SQL warehouses."""

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
