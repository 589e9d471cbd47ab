"""The bare asyncpg connection that set-based SQL goes through is inside the SQLAlchemy transaction, and failures
are classified so that only what a retry can cure is retried."""

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from oms_runtime.database import Database, driver, is_transient


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


@pytest.mark.parametrize("sqlalchemy_first", [False, True], ids=["driver-first", "after-a-sqlalchemy-statement"])
async def test_driver_statements_roll_back_with_the_transaction(database, sqlalchemy_first):
    with pytest.raises(Boom):
        async with database.transaction() as conn:
            if sqlalchemy_first:
                await conn.execute(sa.text("SELECT 1"))
            pg = await driver(conn)
            await pg.execute("INSERT INTO applied (event_id, reference) VALUES (gen_random_uuid(), 'rolled back')")
            raise Boom
    assert await count_rows(database) == 0


async def test_driver_statements_commit_with_the_transaction(database):
    async with database.transaction() as conn:
        pg = await driver(conn)
        await pg.execute("INSERT INTO applied (event_id, reference) VALUES (gen_random_uuid(), 'kept')")
        # Visible to this transaction through SQLAlchemy too: one transaction, not two.
        assert (await conn.execute(sa.text("SELECT count(*) FROM applied"))).scalar_one() == 1
    assert await count_rows(database) == 1


async def test_a_transaction_lock_taken_through_the_driver_is_held_until_the_transaction_ends(database, database_url):
    # What keeps two relays from publishing the same rows: in autocommit the lock would be gone after its statement.
    other = Database(database_url)
    try:
        async with database.transaction() as conn:
            pg = await driver(conn)
            await pg.execute("SELECT pg_advisory_xact_lock(7)")
            async with other.transaction() as elsewhere:
                taken = await elsewhere.execute(sa.text("SELECT pg_try_advisory_xact_lock(7)"))
                assert taken.scalar_one() is False
    finally:
        await other.dispose()


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
        asyncpg.exceptions.UndefinedTableError('relation "nope" does not exist'),
    ],
    ids=type,
)
def test_what_a_retry_cannot_cure_is_not_transient(error):
    assert not is_transient(error)


def test_an_error_caused_by_a_transient_one_is_transient():
    assert is_transient(_caused_by(ConnectionError("refused")))
    assert not is_transient(_caused_by(ValueError("bad value")))
