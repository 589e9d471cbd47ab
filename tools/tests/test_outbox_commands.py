"""`oms outbox` against a service's real database and the real broker: what the relay parked is listed, put back
and published once its cause is fixed, or dropped with a reason. The command runs in-process as typed (in a thread
of its own: it runs its own event loop), and as its own process where its log line on stderr is what is checked."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from oms_contracts import Topic
from oms_contracts.inventory import StockReceived
from oms_runtime.database import Database
from oms_runtime.outbox import OutboxMessage, Relay, append
from oms_runtime.topics import ensure_topics
from oms_tools.cli import app

from .conftest import until

OMS = str(Path(sys.executable).parent / "oms")


async def oms(*args: str) -> tuple[int, str, str]:
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


async def oms_process(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        OMS, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=os.environ.copy()
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


def a_topic() -> Topic:
    return Topic(f"oms.test.outbox.{uuid.uuid4().hex[:10]}.v1", (StockReceived,), key="sku", description="test")


@pytest.fixture
async def order_database(service_database) -> str:
    """A database with the order service's migrations, its outbox and parked messages empty; a libpq URL."""
    url = service_database("order", "outbox").replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE outbox, parked_messages")
    finally:
        await conn.close()
    return url


async def parked_ids(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        return [row["id"] for row in await conn.fetch("SELECT id FROM parked_messages ORDER BY id")]
    finally:
        await conn.close()


async def test_a_message_parked_for_a_missing_topic_is_listed_and_published_after_oms_outbox_retry(
    order_database, kafka_bootstrap
):
    existing, missing = a_topic(), a_topic()
    await ensure_topics(kafka_bootstrap, [existing], partitions=1)
    database = Database(order_database.replace("postgresql://", "postgresql+asyncpg://", 1))
    relay = Relay(database, kafka_bootstrap, "order", unknown_topic_grace_s=0.5)
    try:
        async with database.transaction() as conn:
            await append(
                conn,
                [
                    OutboxMessage(existing.name, "order-1", b"published at once"),
                    OutboxMessage(missing.name, "order-1", b"waits for its topic", [("ce-type", "oms.test.v1")]),
                ],
            )
        await relay.start()
        await until(lambda: _parked(order_database, 1), "the row for the missing topic parked")

        code, out, err = await oms("outbox", "parked", "--service", "order", "--database-url", order_database)
        assert code == 0, err
        [parked_id] = await parked_ids(order_database)
        assert f"── parked message {parked_id}" in out
        assert f"topic     {missing.name}" in out
        assert "key       order-1" in out and "type      oms.test.v1" in out
        assert "error     UnknownTopicOrPartitionError: topic" in out
        assert "payload   waits for its topic" in out
        assert "1 parked message(s) in order's outbox" in err

        await ensure_topics(kafka_bootstrap, [missing], partitions=1)
        code, out, err = await oms(
            "outbox", "retry", "--service", "order", str(parked_id), "--database-url", order_database
        )
        assert code == 0, err
        assert f"1 parked message(s) back in order's outbox: {parked_id}" in out
        await until(lambda: _parked(order_database, 0), "nothing parked any more")
        await until(lambda: _published(relay, 2), "the retried row published by the running relay")
        assert relay.parked == 1
    finally:
        await relay.stop()
        await database.dispose()


async def _parked(url: str, count: int) -> bool:
    return len(await parked_ids(url)) == count


async def _published(relay: Relay, count: int) -> bool:
    return relay.published == count


async def _park(url: str, *payloads: bytes) -> list[int]:
    """Rows as the relay parks them, for the commands that only touch the database."""
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(
            "INSERT INTO parked_messages (id, topic, key, payload, created_at, error_class, error_message, attempts) "
            "VALUES ($1, 'oms.order.events.v1', 'order-9', $2, now(), 'MessageSizeTooLargeError', 'too big', 1)",
            [(1000 + i, payload) for i, payload in enumerate(payloads)],
        )
    finally:
        await conn.close()
    return [1000 + i for i in range(len(payloads))]


async def _outbox(url: str) -> list[bytes]:
    conn = await asyncpg.connect(url)
    try:
        return [bytes(row["payload"]) for row in await conn.fetch("SELECT payload FROM outbox ORDER BY id")]
    finally:
        await conn.close()


async def test_oms_outbox_retry_all_puts_every_parked_message_back_in_parking_order(order_database):
    await _park(order_database, b"first", b"second")
    code, out, err = await oms("outbox", "retry", "-s", "order", "--all", "--database-url", order_database)
    assert code == 0, err
    assert "2 parked message(s) back in order's outbox: 1000, 1001" in out
    assert await _outbox(order_database) == [b"first", b"second"]
    assert await parked_ids(order_database) == []


async def test_oms_outbox_drop_deletes_one_parked_message_with_its_reason_in_the_log(order_database):
    first, second = await _park(order_database, b"dropped", b"kept")
    code, out, err = await oms_process(
        "outbox", "drop", "-s", "order", str(first), "--reason", "replaced by a corrected event", "--database-url",
        order_database,
    )  # fmt: skip
    assert code == 0, err
    assert f"dropped parked message {first} of order (oms.order.events.v1, key order-9)" in out
    assert "replaced by a corrected event" in err, "a log line"
    assert await parked_ids(order_database) == [second]
    assert await _outbox(order_database) == [], "never published"

    code, _, err = await oms(
        "outbox", "drop", "-s", "order", str(first), "--reason", "again", "--database-url", order_database
    )
    assert code == 1
    assert f"no parked message {first}" in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["retry", "-s", "order"], 2, "name parked message ids, or --all"),
        (["retry", "-s", "order", "1", "--all"], 2, "name parked message ids, or --all"),
        (["drop", "-s", "order", "1", "--reason", " "], 2, "say why"),
        (["parked", "-s", "shipping"], 2, "shipping"),
        (
            ["parked", "-s", "order", "--database-url", "postgresql://oms:secret@127.0.0.1:1/oms_order"],
            3,
            "cannot reach",
        ),
    ],
)
async def test_oms_outbox_refuses_what_it_cannot_do_with_one_line(args, code, message):
    returned, out, err = await oms("outbox", *args)
    assert returned == code, out + err
    assert message in " ".join(err.replace("│", " ").split())
    assert "secret" not in out + err and "Traceback" not in err
