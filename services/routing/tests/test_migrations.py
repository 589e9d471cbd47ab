"""The hand-written migrations create exactly the tables the service's code describes."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from oms_routing.store import metadata


@pytest.fixture(scope="module")
def migrated_url(service_database) -> str:
    return service_database("routing", "migrations")


async def test_migrations_on_a_fresh_database_match_the_store_metadata(migrated_url):
    url = migrated_url
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), metadata)
            )
            tables = await conn.run_sync(lambda sync: sorted(sync.dialect.get_table_names(sync)))
    finally:
        await engine.dispose()
    assert differences == []
    assert tables == ["alembic_version", "availability", "inbox", "orders", "outbox", "plans", "shipments", "sources"]
