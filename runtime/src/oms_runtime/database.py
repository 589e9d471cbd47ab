"""Async SQLAlchemy on asyncpg, plus the two tables every service has: the outbox and the inbox."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


def add_messaging_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """The outbox (events waiting for the relay) and inbox (events already applied) of one service's database."""
    outbox = sa.Table(
        "outbox",
        metadata,
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=True),
        sa.Column("payload", BYTEA, nullable=False),
        # [[name, value], ...]; carries traceparent so the relay continues the trace.
        sa.Column("headers", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    inbox = sa.Table(
        "inbox",
        metadata,
        sa.Column("consumer", sa.Text, primary_key=True),
        sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    return outbox, inbox


class Database:
    # No pre-ping: it costs three round trips per checkout; a dead connection fails its first statement, which is
    # a transient error the consumers retry, and SQLAlchemy replaces the connection.
    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.engine: AsyncEngine = create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800
        )

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


async def driver(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under a SQLAlchemy one, in the same transaction: set-based statements
    (INSERT ... SELECT FROM unnest) go through it without SQLAlchemy's per-statement overhead."""
    raw = await conn.get_raw_connection()
    if conn.in_transaction() and getattr(raw.dbapi_connection, "_transaction", None) is None:
        # SQLAlchemy's asyncpg adapter sends BEGIN lazily, with its own first statement; without one, statements
        # on the bare connection would run in autocommit. (runtime/tests pin this.)
        await conn.exec_driver_sql("SELECT 1")
    return raw.driver_connection


_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300", "08000", "08003", "08006"}


def is_transient(error: BaseException) -> bool:
    """True for failures that a retry can cure: the database or broker unreachable, a deadlock, a restart."""
    if isinstance(error, OperationalError | InterfaceError | ConnectionError | TimeoutError | asyncio.TimeoutError):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, asyncpg.PostgresConnectionError | asyncpg.InterfaceError):
        return True
    sqlstate = getattr(error, "sqlstate", None) or getattr(getattr(error, "orig", None), "sqlstate", None)
    if sqlstate in _TRANSIENT_SQLSTATES or (sqlstate or "").startswith("08"):
        return True
    cause = error.__cause__ or error.__context__
    return cause is not None and cause is not error and is_transient(cause)
