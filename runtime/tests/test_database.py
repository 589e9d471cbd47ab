"""A service's transactions on asyncpg commit and roll back as a whole, and failures are classified so that only
what a retry can cure is retried."""

import asyncio
import uuid

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from oms_runtime import database as database_module
from oms_runtime.database import Database, driver, is_transient, together


class Boom(Exception):
    pass


async def count_rows(database: Database) -> int:
    async with database.connect() as conn:
        return (await conn.execute(sa.text("SELECT count(*) FROM applied"))).scalar_one()


@pytest.fixture
async def database(database_url):
    database = Database(database_url)
    yield database
    await database.dispose()


async def test_a_transaction_rolls_back_what_its_block_wrote_when_the_block_raises(database):
    with pytest.raises(Boom):
        async with database.transaction() as pg:
            await pg.execute("INSERT INTO applied (event_id, reference) VALUES (gen_random_uuid(), 'rolled back')")
            raise Boom
    assert await count_rows(database) == 0


async def test_a_transaction_commits_what_its_block_wrote(database):
    async with database.transaction() as pg:
        await pg.execute("INSERT INTO applied (event_id, reference) VALUES (gen_random_uuid(), 'kept')")
    assert await count_rows(database) == 1


async def test_a_connection_given_back_mid_transaction_is_rolled_back_before_its_next_use(database):
    """The pool skips asyncpg's reset query (`_keep_session`), not its rollback of an open transaction."""
    async with database.autocommit() as pg:
        await pg.execute("BEGIN")
        await pg.execute("INSERT INTO applied (event_id, reference) VALUES (gen_random_uuid(), 'abandoned')")
    async with database.autocommit() as pg:
        assert await pg.fetchval("SELECT count(*) FROM applied") == 0
        assert not pg.is_in_transaction()


async def test_jsonb_is_read_as_python_values_and_written_from_json_text(database):
    async with database.transaction() as pg:
        value = await pg.fetchval("SELECT $1::jsonb", '{"n": 12345678901234567890, "x": [1.5, "ü", null]}')
    assert value == {"n": 12345678901234567890, "x": [1.5, "ü", None]}


async def test_a_scan_no_index_serves_is_not_compiled_on_the_pools_connections(database):
    """The pool plans without sequential scans, which costs a scan that is left at 10^10: far above the cost from
    which PostgreSQL would compile the statement with LLVM at every execution (tens of milliseconds each)."""
    async with database.transaction() as pg:
        await pg.execute("CREATE TEMP TABLE few (n int) ON COMMIT DROP; INSERT INTO few VALUES (1), (2)")
        plan = [row[0] for row in await pg.fetch("EXPLAIN (ANALYZE) SELECT * FROM few WHERE n = 2")]
    assert plan[0].startswith("Seq Scan on few  (cost=10000000000")
    assert not [line for line in plan if line.startswith("JIT:")]


async def test_a_statement_is_planned_once_per_connection_whatever_keys_each_batch_brings(database):
    """Left to choose, PostgreSQL plans a prepared statement again at each execution for as long as a plan for the
    values at hand looks cheaper than its generic plan, and for a batch's `= ANY($1)` of a few keys it always does:
    at 10 orders/s that planning was a third of the server's time on the services' statements. The pool's connections
    keep the generic plan, made at the first execution (and again after an ANALYZE of its tables)."""
    async with database.autocommit() as pg:
        for n in range(8):
            keys = [uuid.uuid4() for _ in range(n % 3 + 1)]
            await pg.fetch("SELECT reference FROM applied WHERE event_id = ANY($1::uuid[])", keys)
        plans = await pg.fetchrow(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE 'SELECT reference FROM applied%'"
        )
    assert (plans["generic_plans"], plans["custom_plans"]) == (8, 0)


async def test_a_transaction_lock_is_held_until_the_transaction_ends(database, database_url):
    # What keeps two relays from publishing the same rows: in autocommit the lock would be gone after its statement.
    other = Database(database_url)
    try:
        async with database.transaction() as pg:
            await pg.execute("SELECT pg_advisory_xact_lock(7)")
            async with other.transaction() as elsewhere:
                assert await elsewhere.fetchval("SELECT pg_try_advisory_xact_lock(7)") is False
        async with other.transaction() as elsewhere:
            assert await elsewhere.fetchval("SELECT pg_try_advisory_xact_lock(7)") is True
    finally:
        await other.dispose()


def test_driver_gives_the_asyncpg_connection_of_a_transaction_as_it_is():
    sentinel = object()
    assert asyncio.run(driver(sentinel)) is sentinel


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("refused"),
        TimeoutError(),
        OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    ],
    ids=type,
)
def test_what_a_retry_can_cure_is_transient(error):
    assert is_transient(error)


def _caused_by(cause: BaseException) -> RuntimeError:
    try:
        raise RuntimeError("while applying a batch") from cause
    except RuntimeError as error:
        return error


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("bug"),
        ValueError("bad value"),
        IntegrityError("INSERT", {}, asyncpg.exceptions.UniqueViolationError("duplicate key")),
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.DivisionByZeroError("division by zero"),
    ],
    ids=type,
)
def test_what_a_retry_cannot_cure_is_not_transient(error):
    assert not is_transient(error)


def test_an_error_caused_by_a_transient_one_is_transient():
    assert is_transient(_caused_by(ConnectionError("refused")))
    assert not is_transient(_caused_by(ValueError("bad value")))


async def _failure(attempt) -> BaseException:
    try:
        await attempt()
    except Exception as error:
        return error
    raise AssertionError("it did not fail")


async def _in_transaction(database: Database, *statements: str) -> None:
    async with database.transaction() as pg:
        for statement in statements:
            await pg.execute(statement)


async def test_real_outage_failures_are_transient(database, database_url, postgres_url, monkeypatch):
    """Each as SQLAlchemy and asyncpg raise it against a real server: none of these says anything about a message,
    so none may dead-letter one."""
    failures = {}

    # The server ends the session (a restart, pg_terminate_backend): AdminShutdown, then a connection closed.
    async with database.connect() as conn:
        pid = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        failures["terminated"] = await _failure(lambda: conn.execute(sa.text("SELECT 1")))

    failures["statement timeout"] = await _failure(
        lambda: _in_transaction(database, "SET LOCAL statement_timeout = 20", "SELECT pg_sleep(5)")
    )

    # A row lock held elsewhere, with lock_timeout: LockNotAvailable.
    async with database.transaction() as holder:
        await holder.execute("INSERT INTO applied (event_id, reference) VALUES (gen_random_uuid(), 'x')")
        await holder.execute("LOCK TABLE applied IN ACCESS EXCLUSIVE MODE")
        other = Database(database_url)
        try:
            failures["lock timeout"] = await _failure(
                lambda: _in_transaction(other, "SET LOCAL lock_timeout = 20", "SELECT count(*) FROM applied")
            )
        finally:
            await other.dispose()

    # Every connection of the pool in use for longer than the pool waits.
    monkeypatch.setattr(database_module, "_ACQUIRE_SECONDS", 0.05)
    tight = Database(database_url, pool_size=1)
    try:
        async with tight.transaction():
            failures["pool exhausted"] = await _failure(lambda: _in_transaction(tight, "SELECT 1"))
    finally:
        await tight.dispose()

    base = database_url.rpartition("/")[0]
    for label, url in {
        "refused": "postgresql+asyncpg://oms:oms@127.0.0.1:1/none",
        "no such database": f"{base}/oms_does_not_exist",
        "no such host": "postgresql+asyncpg://oms:oms@oms-no-such-host.invalid:5432/none",
    }.items():
        elsewhere = Database(url)
        try:
            failures[label] = await _failure(elsewhere.ping)
        finally:
            await elsewhere.dispose()

    failures["schema behind the code"] = await _failure(
        lambda: _in_transaction(database, "SELECT * FROM not_migrated_yet")
    )

    assert {label: is_transient(error) for label, error in failures.items()} == dict.fromkeys(failures, True), {
        label: repr(error) for label, error in failures.items()
    }


async def test_real_failures_of_a_statement_are_not_transient(database):
    """What only a given message can cause (its data breaks a rule or a constraint) is dead-lettered, not retried."""
    failures = [
        await _failure(lambda: _in_transaction(database, "SELECT 1 / 0")),
        await _failure(lambda: _in_transaction(database, "SELECT 'nine'::int")),
        await _failure(lambda: _in_transaction(database, "SELECT 99999999999::int")),
        await _failure(
            lambda: _in_transaction(database, "INSERT INTO applied (seq, event_id, reference) VALUES (1, NULL, 'x')")
        ),
    ]
    assert [is_transient(error) for error in failures] == [False] * len(failures), [repr(e) for e in failures]


def test_statements_sent_together_have_their_parameters_numbered_on():
    statements = ("INSERT INTO a SELECT $1, $2", "UPDATE b SET x = $1 WHERE y = $3 OR z = $2")
    assert together(statements) == (
        "WITH w0 AS (INSERT INTO a SELECT $1, $2),\nw1 AS (UPDATE b SET x = $3 WHERE y = $5 OR z = $4)\nSELECT 1"
    )
    assert together(statements[:1], "SELECT count(*) FROM w0").endswith("\nSELECT count(*) FROM w0")
