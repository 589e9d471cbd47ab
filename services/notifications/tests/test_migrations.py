from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from oms_notifications.store import metadata


@pytest.fixture
def migrated(service_database) -> str:
    """A fresh database of its own with the migrations applied (a sync fixture: the factory runs its own loop)."""
    return service_database("notifications", label="migrations")


async def test_migrations_create_exactly_the_tables_the_service_uses(migrated):
    engine = create_async_engine(migrated)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), metadata)
            )
            tables = await conn.run_sync(lambda sync: set(sa.inspect(sync).get_table_names()))
    finally:
        await engine.dispose()

    assert differences == []
    assert tables == {
        "alembic_version",
        "order_contacts",
        "notifications",
        "notices_awaiting_contact",
        "outbox",
        "inbox",
        "parked_messages",
    }
