# SPDX-License-Identifier: Apache-2.0
"""
Run Airflow with the CeleryExecutor: a Postgres metadata database, a Redis broker and named Celery workers.

:class:`CeleryDeployment` is :class:`~dev.deployment.AirflowDeployment` with the settings of a distributed
deployment on one machine: every component talks to a metadata database given by URL, tasks go through a
Redis broker to ``airflow celery worker`` processes started with :meth:`CeleryDeployment.start_worker`, each
under its own name. A worker's name is also the hostname its task instances record
(``[core] hostname_callable`` = :func:`worker_hostname`), as if each worker ran on its own machine.

.. code-block:: python

    with scratch_postgres_database("postgresql://postgres@127.0.0.1:5432/postgres") as db_url:
        flush_redis("redis://127.0.0.1:6379/7")
        af = CeleryDeployment(home, dags, database_url=db_url, broker_url="redis://127.0.0.1:6379/7")
        af.run(("db", "migrate"))
        af.start_components(extra=[TRIGGERER])
        workers = [af.start_worker("worker-a"), af.start_worker("worker-b")]
        ...
        af.stop()
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from dev.deployment import AirflowDeployment, Component

__all__ = [
    "WORKER_HOSTNAME_ENV",
    "CeleryDeployment",
    "flush_redis",
    "redis_db_url",
    "scratch_postgres_database",
    "worker_hostname",
]

WORKER_HOSTNAME_ENV = "CLIO_WORKER_HOSTNAME"
"""Environment variable holding the name :func:`worker_hostname` returns in a worker."""

REPOSITORY = Path(__file__).resolve().parents[1]


def worker_hostname() -> str:
    """Return the worker's name (``[core] hostname_callable`` of :meth:`CeleryDeployment.start_worker`)."""
    return os.environ.get(WORKER_HOSTNAME_ENV) or socket.getfqdn()


@contextlib.contextmanager
def scratch_postgres_database(admin_url: str, prefix: str = "clio_celery_") -> Iterator[str]:
    """
    Create an empty Postgres database with a random name, yield its SQLAlchemy URL, then drop it.

    :param admin_url: URL of a database to connect to for ``CREATE``/``DROP DATABASE``, e.g.
        ``postgresql://postgres@127.0.0.1:5432/postgres``.
    :param prefix: Start of the database's name.
    """
    import psycopg2

    name = f"{prefix}{secrets.token_hex(4)}"
    admin = make_url(admin_url)

    def execute(sql: str) -> None:
        connection = psycopg2.connect(
            host=admin.host,
            port=admin.port or 5432,
            user=admin.username,
            password=admin.password,
            dbname=admin.database or "postgres",
            connect_timeout=10,
        )
        try:
            connection.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
            with connection.cursor() as cursor:
                cursor.execute(sql)
        finally:
            connection.close()

    execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(drivername="postgresql+psycopg2", database=name).render_as_string(hide_password=False)
    finally:
        # FORCE (Postgres 13+) ends the sessions of processes a failed test left behind.
        execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_db_url(url: str, db: int) -> str:
    """Return ``url`` pointing at Redis database number ``db``."""
    parsed = make_url(url)
    return f"redis://{parsed.host or '127.0.0.1'}:{parsed.port or 6379}/{db}"


def flush_redis(url: str) -> None:
    """Empty the Redis database of ``url``: no message of an earlier run may reach this run's workers."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()


class CeleryDeployment(AirflowDeployment):
    """
    Run Airflow with the CeleryExecutor on one machine (see the module docstring).

    The Celery queue has a random name per deployment, so two runs sharing a broker never take each other's
    tasks. The heartbeat settings let the scheduler notice a dead worker in seconds instead of minutes.

    :param home: The ``AIRFLOW_HOME``.
    :param dags: The dags folder.
    :param env_extra: Extra environment for every Airflow process (goes on top, last).
    :param database_url: SQLAlchemy URL of the metadata database (also the Celery result backend).
    :param broker_url: Celery broker, e.g. ``redis://127.0.0.1:6379/7``.
    :param heartbeat_timeout: ``[scheduler] task_instance_heartbeat_timeout``: seconds without a heartbeat
        after which a running task instance is failed (and retried when it has tries left).
    :param kwargs: Passed to :class:`~dev.deployment.AirflowDeployment`.
    """

    def __init__(
        self,
        home: Path,
        dags: Path,
        env_extra: Mapping[str, str] | None = None,
        *,
        database_url: str,
        broker_url: str,
        heartbeat_timeout: int = 15,
        **kwargs: Any,
    ) -> None:
        super().__init__(home, dags, env_extra, database_url=database_url, **kwargs)
        self.broker_url = broker_url
        self.queue = f"clio_{secrets.token_hex(4)}"
        self.heartbeat_timeout = heartbeat_timeout
        self.workers: dict[str, Component] = {}

    @property
    def env(self) -> dict[str, str]:
        """Return the base environment plus the CeleryExecutor's settings (``env_extra`` still wins)."""
        env = super().env
        celery = {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{self.database_url}",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
            # Publishing a task gets more than the default 1 s on a loaded machine.
            "AIRFLOW__CELERY__OPERATION_TIMEOUT": "10",
            "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
            # With acks_late (the default) a dead worker's message returns to the queue only after this; the
            # retry comes from the heartbeat timeout instead, so the stale message must not come back first.
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "3600",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.heartbeat_timeout),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
        }
        return {**env, **celery, **self.env_extra}

    def start_worker(self, name: str, concurrency: int = 3) -> Component:
        """
        Start ``airflow celery worker`` named ``name`` in its own process group; return it.

        Its task instances record ``name`` as their hostname. It serves no logs (two workers on one machine
        would contend for the log server's port); task logs are files under ``<home>/logs``.

        :param name: Worker name (Celery node ``<name>@<host>``, task instance hostname, log file name).
        :param concurrency: Celery pool processes, i.e. tasks the worker runs at once.
        """
        python_path = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
        worker = self.start(
            name,
            "celery",
            "worker",
            "--celery-hostname",
            f"{name}@%h",
            "--concurrency",
            str(concurrency),
            "--queues",
            self.queue,
            "--skip-serve-logs",
            "--without-mingle",
            "--without-gossip",
            env={
                WORKER_HOSTNAME_ENV: name,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "dev.celery_deployment.worker_hostname",
                "PYTHONPATH": python_path,
            },
        )
        self.workers[name] = worker
        return worker

    def other_worker(self, name: str) -> str:
        """Return the name of the one worker that is not ``name`` (the test runs two)."""
        (other,) = [worker for worker in self.workers if worker != name]
        return other
