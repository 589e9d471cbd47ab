"""What every service's Alembic env.py runs: migrations on the service's own database, over asyncpg."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool


def run(context: Any, metadata: sa.MetaData, database_url: str) -> None:
    if context.is_offline_mode():
        context.configure(url=database_url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_online(context, metadata, database_url))


async def _online(context: Any, metadata: sa.MetaData, database_url: str) -> None:
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_migrate, context, metadata)
            await conn.commit()
    finally:
        await engine.dispose()


def _migrate(connection: sa.Connection, context: Any, metadata: sa.MetaData) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
