import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from oms_order.store import metadata


async def test_the_migrations_create_exactly_the_tables_of_the_store(service_database):
    engine = create_async_engine(service_database("order", "migrations"))
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
            version = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
    finally:
        await engine.dispose()
    assert diff == []
    assert version == "0001"
