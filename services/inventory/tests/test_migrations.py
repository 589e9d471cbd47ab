"""The migrations build exactly the schema store.py describes."""

from __future__ import annotations

from collections.abc import Callable

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from oms_inventory.store import metadata


async def test_migrations_create_exactly_the_tables_of_the_store(service_database: Callable[..., str]):
    url = service_database("inventory", label="schema")
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), metadata)
            )
            tables = await conn.run_sync(lambda sync: sync.dialect.get_table_names(sync))
    finally:
        await engine.dispose()
    assert differences == []
    assert {"sources", "stock", "reservations", "backorders", "outbox", "inbox"} <= set(tables)
