"""Async SQLAlchemy on asyncpg, plus the two tables every service has: the outbox and the inbox."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import AsyncIterator

import asyncpg
import pydantic_core
import sqlalchemy as sa
from aiokafka.errors import KafkaError
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    PendingRollbackError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from . import metrics


def add_messaging_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """The outbox (events waiting for the relay) and inbox (events already applied) of one service's database, and
    beside them `parked_messages` (outbox rows that can never be published)."""
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
    # An event is known by the CloudEvent's (source, id); '' stands for "any source" (rows from before the source was
    # kept, and records that never validated, whose id is derived from where they sat). Pruned by age: BRIN on
    # received_at costs next to nothing per insert, as rows arrive in time order.
    inbox = sa.Table(
        "inbox",
        metadata,
        sa.Column("consumer", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, primary_key=True, server_default=""),
        sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Index("inbox_received_at_idx", "received_at", postgresql_using="brin"),
    )
    # Outbox rows the relay could never publish, with why; `oms outbox` lists, retries and drops them.
    sa.Table(
        "parked_messages",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),  # the row's id in the outbox
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=True),
        sa.Column("payload", BYTEA, nullable=False),
        sa.Column("headers", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error_class", sa.Text, nullable=False),
        sa.Column("error_message", sa.Text, nullable=False),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("attempts", sa.Integer, nullable=False),
    )
    return outbox, inbox


class Database:
    """A service's database: an asyncpg pool for its transactions (consumers, relay, writes), and a SQLAlchemy engine
    for the HTTP reads that compose queries.

    The transactions go to asyncpg directly: SQLAlchemy's asyncpg adapter runs each call through a greenlet, checks
    connections out through its pool's events and sends BEGIN through its own layer, 2-8 % of each service's CPU in
    the profiles at 300 orders/s (docs/performance.md, step 21)."""

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_recycle=1800,
            # The HTTP reads are few: a ping per checkout is cheap there, and a read after a database restart finds
            # a live connection instead of failing on one the server closed. (asyncpg's pool drops closed ones.)
            pool_pre_ping=True,
            connect_args={"connection_class": TimedConnection},
            # jsonb columns read with pydantic-core's parser (Rust): half json.loads's time on an order's addresses
            # and lines, a tenth on an empty object; the same Python values for the JSON PostgreSQL stores.
            json_deserializer=pydantic_core.from_json,
        )
        _instrument(self.engine)
        self._dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        """The asyncpg pool, made at first use: connections are opened as they are needed, so a database that is
        down when the service starts is a transient error of the first transaction, not of the start."""
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=0,
                        max_size=self._pool_size,
                        max_inactive_connection_lifetime=1800,
                        connection_class=TimedConnection,
                        init=_json_codecs,
                        reset=_keep_session,
                        server_settings=_PLANNER,
                    )
        return self._pool

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """An asyncpg connection in a transaction, committed when the block ends, rolled back when it raises."""
        async with (await self.pool()).acquire(timeout=_ACQUIRE_SECONDS) as conn, conn.transaction():
            yield conn

    @contextlib.asynccontextmanager
    async def autocommit(self) -> AsyncIterator[asyncpg.Connection]:
        """An asyncpg connection outside a transaction: each statement commits on its own."""
        async with (await self.pool()).acquire(timeout=_ACQUIRE_SECONDS) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A SQLAlchemy connection, for queries composed with SQLAlchemy (the HTTP reads)."""
        async with self.engine.connect() as conn:
            yield conn

    async def ping(self) -> None:
        async with self.autocommit() as conn:
            await conn.fetchval("SELECT 1")

    async def dispose(self) -> None:
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), _CLOSE_SECONDS)
            except TimeoutError:
                self._pool.terminate()
            self._pool = None
        await self.engine.dispose()


# Every statement sent on the pool reads by key (a batch's ids through `= ANY($1)` or `unnest`, an order, the outbox
# after the last id sent) or has no index to use. Its connections keep each statement's generic plan
# (`plan_cache_mode`), made at its first execution without knowing how many keys a batch holds (an array
# parameter counts as ten), and made again after an ANALYZE of its tables. Left to choose, PostgreSQL plans a
# statement anew at every execution while a plan for the values at hand looks cheaper than the generic one, which for
# a batch of a few keys is always: at 50 orders/s that was 1.7 ms of the server's time per order, against 4.6 ms
# executing the statements (docs/performance.md, step 40).
# A generic plan is costed on the tables as large as they are when it is made. On young tables (a new deployment, the
# bench's fresh database) it scanned them whole for every batch, and kept doing so as they grew: about 8,000 rows read
# per order at 50 orders/s (step 35). Without sequential scans, a batch's keys are looked up in their index whatever
# the size the table had then; a table no index serves is still scanned. Nor may a statement let the planner hash a
# whole table rather than probe it per key: an EXISTS subquery may become a hashed subplan, a LATERAL subquery with a
# LIMIT cannot (services/order/tests/test_store.py checks the plans of the order service's load). The HTTP reads
# (SQLAlchemy's pool) keep the planner's defaults.
#
# Nor with JIT compilation: no statement on the pool costs enough for compiling it to pay, and the setting above would
# set it off. A scan the planner cannot avoid (a table without an index; every table has one today) is costed at
# 10^10, far above `jit_above_cost`, and would be compiled with LLVM, inlined and optimised, at every execution: 67 ms
# of the server's CPU against 0.2 for a table of five rows.
_PLANNER = {"enable_seqscan": "off", "jit": "off", "plan_cache_mode": "force_generic_plan"}

# How long a transaction waits for a pooled connection before it fails (a transient error: the batch is retried).
_ACQUIRE_SECONDS = 30.0
# How long a stopping service waits for its connections to be given back before it closes them anyway.
_CLOSE_SECONDS = 10.0


def json_text(value: object) -> str:
    """A value as the JSON text a statement passes for a json or jsonb parameter, written by pydantic-core (Rust): a
    fifth of `json.dumps`'s time on an outbox row's headers or an address (0.6 µs against 2.9). Non-ASCII text is
    written as UTF-8, not escaped; PostgreSQL stores the same value either way."""
    return pydantic_core.to_json(value).decode()


async def _json_codecs(conn: asyncpg.Connection) -> None:
    """json and jsonb as text: read by pydantic-core's parser (see Database), called by asyncpg itself with no Python
    frame in between; written from the JSON text the statements pass (`json_text` of the value)."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, schema="pg_catalog", format="text", encoder=str, decoder=pydantic_core.from_json
        )


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """What a connection given back to the pool needs besides asyncpg's own rollback of an open transaction: nothing.
    asyncpg's default sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` each time, a round trip per
    transaction; the OMS keeps no session state (no SET, LISTEN, cursor or session-level advisory lock; the settings
    a connection starts with, `_PLANNER`, are the same for all of them)."""


class TimedConnection(asyncpg.Connection):
    """asyncpg's connection, timing each statement sent on it (`db.client.operation.duration`, and a span inside a
    traced operation): the set-based batch SQL, and BEGIN and COMMIT, which asyncpg's transactions send through it.
    The time is taken around the call itself, so a statement's span sits where it ran, and what asyncpg does for it
    (preparing, introspecting a type the first time) is in it."""

    async def execute(self, query: str, *args, **kwargs):
        with _timed(query):
            return await super().execute(query, *args, **kwargs)

    async def executemany(self, command: str, args, **kwargs):
        with _timed(command):
            return await super().executemany(command, args, **kwargs)

    async def fetch(self, query: str, *args, **kwargs):
        with _timed(query):
            return await super().fetch(query, *args, **kwargs)

    async def fetchrow(self, query: str, *args, **kwargs):
        with _timed(query):
            return await super().fetchrow(query, *args, **kwargs)

    async def fetchval(self, query: str, *args, **kwargs):
        with _timed(query):
            return await super().fetchval(query, *args, **kwargs)


@contextlib.contextmanager
def _timed(query: str):
    started = time.perf_counter()
    try:
        yield
    except BaseException as error:
        metrics.statement_done(query, time.perf_counter() - started, error)
        raise
    metrics.statement_done(query, time.perf_counter() - started, None)


def _instrument(engine: AsyncEngine) -> None:
    """Time SQLAlchemy's own statements (the HTTP reads): they go through prepared statements, which TimedConnection
    does not see, so SQLAlchemy's cursor events time those."""

    @sa.event.listens_for(engine.sync_engine, "before_cursor_execute")
    def started(conn, _cursor, _statement, _parameters, _context, _executemany) -> None:
        conn.info.setdefault("oms_started", []).append(time.perf_counter())

    @sa.event.listens_for(engine.sync_engine, "after_cursor_execute")
    def finished(conn, _cursor, statement, _parameters, _context, _executemany) -> None:
        metrics.statement_done(statement, time.perf_counter() - conn.info["oms_started"].pop(), None)

    @sa.event.listens_for(engine.sync_engine, "handle_error")
    def failed(context) -> None:
        started_at = context.connection.info.get("oms_started") if context.connection is not None else None
        if started_at:
            seconds = time.perf_counter() - started_at.pop()
            metrics.statement_done(context.statement or "", seconds, context.original_exception)


async def driver(conn: AsyncConnection | asyncpg.Connection) -> asyncpg.Connection:
    """The asyncpg connection to send set-based statements on: a transaction's own (`Database.transaction`), or the
    one under a SQLAlchemy connection outside a transaction (the HTTP reads that mix both)."""
    if not isinstance(conn, AsyncConnection):
        return conn
    if conn.in_transaction():
        # SQLAlchemy's adapter sends BEGIN lazily, with its own first statement: statements on the bare connection
        # would run in autocommit, outside the transaction they seem to be in.
        raise ValueError("a SQLAlchemy transaction's statements must go through SQLAlchemy; use Database.transaction()")
    return (await conn.get_raw_connection()).driver_connection


_PARAMETER = re.compile(r"\$(\d+)")


def parameters(statement: str) -> int:
    """How many parameters a statement takes: its highest $n."""
    return max((int(n) for n in _PARAMETER.findall(statement)), default=0)


def renumbered(statement: str, by: int) -> str:
    """A statement's parameters $1..$n as $(1+by)..$(n+by): to send it as a part of a larger one (a data-modifying CTE)
    whose earlier parts take the first `by`."""
    return _PARAMETER.sub(lambda m: f"${int(m.group(1)) + by}", statement)


@functools.lru_cache(maxsize=256)
def together(statements: tuple[str, ...], result: str = "SELECT 1") -> str:
    """Several data-modifying statements as one, each a CTE (`w0`, `w1`, ... in this order) with its parameters
    numbered on, and `result` the final query, which may read them by name. PostgreSQL runs each to completion
    whether or not anything reads it, all in one snapshot (no part sees another's rows), and checks foreign keys at
    the statement's end. The few combinations a service makes are each prepared once per connection."""
    parts, before = [], 0
    for i, statement in enumerate(statements):
        parts.append(f"w{i} AS ({renumbered(statement, before)})")
        before += parameters(statement)
    return "WITH " + ",\n".join(parts) + "\n" + result


# SQLSTATEs that say nothing about the message being applied, only about the database it is applied to; the same
# message applies once the database is back (PostgreSQL's appendix A, "PostgreSQL Error Codes").
_TRANSIENT_CLASSES = (
    "08",  # connection exception: refused, lost, rejected
    "28",  # invalid authorization: a password or pg_hba.conf being changed
    "40",  # transaction rollback: serialization failure, deadlock, statement completion unknown
    "53",  # insufficient resources: too many connections, disk full, out of memory
    "57",  # operator intervention: admin or crash shutdown, cannot connect now (starting up, recovering),
    # query canceled (statement_timeout, pg_cancel_backend), idle session timeout
    "58",  # system error: I/O error
)
_TRANSIENT_SQLSTATES = {
    "3D000",  # the database does not exist (yet): deployment order, not the message
    "55P03",  # lock not available (lock_timeout)
    "55006",  # object in use
    "25006",  # read-only transaction: a standby during a failover
    "25P03",  # idle in transaction session timeout
    "25P04",  # transaction timeout
    # The schema is behind the code: the service runs before its migrations. Every message would fail alike, and
    # dead-lettering them all would lose the stream; waiting for `alembic upgrade` loses nothing.
    "42P01",  # undefined table
    "42703",  # undefined column
}
# Errors raised around a connection rather than by a statement: a pool that gave no connection in time, a
# connection invalidated in the middle of a transaction, one closed under the driver.
_TRANSIENT_TYPES = (
    OSError,  # refused, reset, unreachable, name resolution, a unix socket that is not there (includes ConnectionError)
    TimeoutError,
    asyncio.TimeoutError,
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PendingRollbackError,
    PoolTimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
)


def _sqlstate(error: BaseException) -> str | None:
    return getattr(error, "sqlstate", None) or getattr(getattr(error, "orig", None), "sqlstate", None)


def is_transient(error: BaseException, _seen: frozenset[int] = frozenset()) -> bool:
    """True for failures that a retry can cure: the database or broker unreachable, restarting, overloaded, a
    deadlock, a statement timeout. The consumers retry these forever and never dead-letter a message for them; an
    error raised from (or while handling) a transient one is transient too."""
    if isinstance(error, _TRANSIENT_TYPES):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, KafkaError) and error.retriable:
        return True
    sqlstate = _sqlstate(error)
    if sqlstate is not None and (sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith(_TRANSIENT_CLASSES)):
        return True
    cause = error.__cause__ or error.__context__
    seen = _seen | {id(error)}
    return cause is not None and id(cause) not in seen and is_transient(cause, seen)
