"""Real infrastructure for every test that needs it: one Kafka broker and one PostgreSQL server per session.

Addresses come from the environment (`make test` and CI set them after starting the project's own broker and
database):
  OMS_TEST_KAFKA_BOOTSTRAP   e.g. 127.0.0.1:19092
  OMS_TEST_POSTGRES_URL      e.g. postgresql://oms:oms@127.0.0.1:15432/postgres (a role that may create databases)
Without them, testcontainers starts Kafka and PostgreSQL when a Docker engine answers; with neither, the tests that
need them fail and say how to start the infrastructure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
RUN_ID = uuid.uuid4().hex[:8]

_HOW = (
    "No Kafka/PostgreSQL for the tests. Run `make test` (it starts the project's own broker and database), or "
    "start them with `make test-infra` and export OMS_TEST_KAFKA_BOOTSTRAP=127.0.0.1:19092 "
    "OMS_TEST_POSTGRES_URL=postgresql://oms:oms@127.0.0.1:15432/postgres, or run where a Docker engine answers."
)


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    address = os.environ.get("OMS_TEST_KAFKA_BOOTSTRAP")
    if address:
        yield address
        return
    if not _docker_available():
        pytest.fail(_HOW, pytrace=False)
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer().with_kraft() as kafka:
        yield kafka.get_bootstrap_server()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A libpq-style URL (postgresql://...) of a role allowed to create databases."""
    address = os.environ.get("OMS_TEST_POSTGRES_URL")
    if address:
        yield address
        return
    if not _docker_available():
        pytest.fail(_HOW, pytrace=False)
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:15", username="oms", password="oms", driver=None) as pg:
        yield pg.get_connection_url()


@pytest.fixture(scope="session")
def oms_topics(kafka_bootstrap: str) -> str:
    """The fixed topics exist (created the way `oms topics create` does). Returns the bootstrap address."""
    from oms_contracts import FIXED_TOPICS
    from oms_runtime.topics import ensure_topics

    _run(ensure_topics(kafka_bootstrap, FIXED_TOPICS, partitions=3))
    return kafka_bootstrap


def _run(coroutine) -> None:
    """Run a coroutine to completion from sync code, even when called inside a test's running event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coroutine).result()


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


def asyncpg_url(url: str) -> str:
    """The SQLAlchemy URL of a libpq-style one."""
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


def migrate(service: str, database_url: str) -> None:
    """Apply a service's Alembic migrations to a database, as `make migrate` does."""
    env = {**os.environ, f"OMS_{service.upper()}_DATABASE_URL": asyncpg_url(database_url)}
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "services" / service / "alembic.ini"), "upgrade", "head"],
        check=True,
        env=env,
        cwd=ROOT,
        capture_output=True,
    )


@pytest.fixture(scope="session")
def create_database(postgres_url: str) -> Callable[[str], str]:
    """Create a fresh, empty database for this session; returns its libpq URL."""
    import asyncpg

    async def create(name: str) -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    def factory(label: str) -> str:
        name = f"oms_test_{label}_{RUN_ID}"
        _run(create(name))
        return _with_database(postgres_url, name)

    return factory


@pytest.fixture(scope="session")
def service_database(create_database: Callable[[str], str]) -> Callable[[str], str]:
    """A fresh database with one service's migrations applied; returns its SQLAlchemy (asyncpg) URL.

    One database per (service, label) per session: `service_database("order")`."""
    made: dict[tuple[str, str], str] = {}

    def factory(service: str, label: str = "") -> str:
        key = (service, label)
        if key not in made:
            url = create_database(f"{service}{'_' + label if label else ''}")
            migrate(service, url)
            made[key] = asyncpg_url(url)
        return made[key]

    return factory


@pytest.fixture(scope="session", autouse=True)
def tracing() -> None:
    """Record spans as the services do, so trace context is real in tests (nothing is exported)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
