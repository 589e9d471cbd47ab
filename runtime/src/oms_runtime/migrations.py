"""What every service's Alembic env.py runs (migrations on the service's own database, over asyncpg), and the
migration steps of the messaging tables every service has, which each service's own revisions call.

A step here is history: once released it never changes; a later change of the messaging tables is a new step."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
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


def inbox_by_source_and_parked_messages_upgrade(op: Any) -> None:
    """The inbox keyed by the CloudEvent's (source, id), as CloudEvents define an event's identity: two producers
    may use the same id. Rows from before keep source '' — the key of records that never validated too — and the
    consumer treats a row with source '' as covering every source, so a redelivery of an event applied before the
    upgrade is still skipped. A BRIN index on received_at lets the inbox be pruned by age at almost no cost per
    insert (rows arrive in time order). And `parked_messages` (below)."""
    op.add_column("inbox", sa.Column("source", sa.Text(), server_default="", nullable=False))
    op.drop_constraint("inbox_pkey", "inbox", type_="primary")
    op.create_primary_key("inbox_pkey", "inbox", ["consumer", "source", "event_id"])
    op.create_index("inbox_received_at_idx", "inbox", ["received_at"], postgresql_using="brin")
    # Outbox rows the relay can never publish (too large, a topic that does not exist), moved aside so that they
    # never stall the rest of the service's output; `oms outbox` lists, retries and drops them.
    op.create_table(
        "parked_messages",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("payload", postgresql.BYTEA(), nullable=False),
        sa.Column(
            "headers", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error_class", sa.Text(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("parked_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def inbox_by_source_and_parked_messages_downgrade(op: Any) -> None:
    # Parked rows go back to the outbox rather than away: the relay of the older version tries them again.
    op.execute(
        "INSERT INTO outbox (topic, key, payload, headers, created_at) "
        "SELECT topic, key, payload, headers, created_at FROM parked_messages ORDER BY id"
    )
    op.drop_table("parked_messages")
    op.drop_index("inbox_received_at_idx", table_name="inbox")
    # One row per (consumer, event_id) again: the same id from two sources becomes one entry.
    op.execute(
        "DELETE FROM inbox a USING inbox b "
        "WHERE a.consumer = b.consumer AND a.event_id = b.event_id AND a.source > b.source"
    )
    op.drop_constraint("inbox_pkey", "inbox", type_="primary")
    op.create_primary_key("inbox_pkey", "inbox", ["consumer", "event_id"])
    op.drop_column("inbox", "source")
