"""The outbox relay on a real broker and PostgreSQL: rows are published in order, intact, once, and only then
deleted; nothing is lost when the broker cannot take them."""

import contextlib
import json
import time
from collections import defaultdict

import pytest
import sqlalchemy as sa
from aiokafka.errors import KafkaConnectionError

from oms_runtime.database import Database
from oms_runtime.outbox import OutboxMessage, Relay, append

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
async def database(database_url):
    database = Database(database_url)
    yield database
    await database.dispose()


async def write(database, messages):
    async with database.transaction() as conn:
        await append(conn, messages)


async def outbox_size(database) -> int:
    async with database.connect() as conn:
        return (await conn.execute(sa.text("SELECT count(*) FROM outbox"))).scalar_one()


def headers_without_trace(record):
    return [(name, value.decode()) for name, value in record.headers if name not in ("traceparent", "tracestate")]


@pytest.fixture
async def relays(kafka_bootstrap, kafka_topic):
    """Start relays on the real broker; each is stopped (and drained) after the test, before its topics go."""
    started = []

    async def start(database, bootstrap=kafka_bootstrap):
        relay = Relay(database, bootstrap, "probe")
        started.append(relay)
        await relay.start()
        return relay

    yield start
    for relay in started:
        if relay._task is not None:
            await relay.stop()
        else:  # its start failed
            with contextlib.suppress(Exception):
                await relay.producer.stop()


async def test_rows_are_published_in_id_order_with_key_headers_and_payload_intact_and_then_deleted(
    database, relays, kafka_topic, topic_reader, wait_until
):
    topic = await kafka_topic(partitions=1)
    messages = [
        OutboxMessage(
            topic.name,
            None if i == 4 else f"order-{i % 3}",
            json.dumps({"n": i, "text": "Grüße"}).encode(),
            [("content-type", "application/cloudevents+json"), ("ce-type", "oms.test.v1"), ("x-n", str(i))],
        )
        for i in range(12)
    ]
    await write(database, messages[:5])
    await write(database, messages[5:])

    async with topic_reader(topic.name) as reader:
        relay = await relays(database)
        relay.wake()
        records = await reader.take(12)
        await wait_until(lambda: _is_empty(database), "the published rows deleted from the outbox")

    assert [r.value for r in records] == [m.payload for m in messages]
    assert [r.key for r in records] == [m.key.encode() if m.key else None for m in messages]
    assert [headers_without_trace(r) for r in records] == [m.headers for m in messages]
    assert relay.published == 12


async def _is_empty(database) -> bool:
    return await outbox_size(database) == 0


async def test_a_rows_traceparent_is_continued_by_the_published_message(
    database, relays, kafka_topic, topic_reader, header_of
):
    topic = await kafka_topic()
    traceparent = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
    await write(database, [OutboxMessage(topic.name, "k", b"{}", [("traceparent", traceparent)])])

    async with topic_reader(topic.name) as reader:
        (await relays(database)).wake()
        [published] = await reader.take(1)

    carried = [v.decode() for k, v in published.headers if k == "traceparent"]
    assert len(carried) == 1
    version, trace_id, span_id, _ = carried[0].split("-")
    assert (version, trace_id) == ("00", TRACE_ID), "the publish continues the trace of the transaction"
    assert span_id != PARENT_SPAN, "as a span of its own"


async def test_rows_left_by_a_crashed_instance_are_published_by_the_sweep(database, relays, kafka_topic, topic_reader):
    topic = await kafka_topic()
    await write(database, [OutboxMessage(topic.name, f"k{i}", f"left {i}".encode()) for i in range(3)])

    async with topic_reader(topic.name) as reader:
        started = time.monotonic()
        relay = await relays(database)  # never woken: only the sweep can find these rows
        left = await reader.take(3, within=2.5)
        assert time.monotonic() - started < 2.5

        # Rows that commit behind the position the relay reads forward from (another instance's transaction that
        # took its ids earlier and committed later, with no one to wake this relay): the sweep finds them too.
        async with database.engine.connect() as conn:
            behind = await conn.begin()
            await append(conn, [OutboxMessage(topic.name, "k", f"behind {i}".encode()) for i in range(2)])
            await write(database, [OutboxMessage(topic.name, "k", b"ahead")])
            relay.wake()
            await reader.take(1, where=lambda r: r.value == b"ahead")
            await behind.commit()
        committed = time.monotonic()
        late = await reader.take(2, within=2.5, where=lambda r: r.value.startswith(b"behind"))
        assert time.monotonic() - committed < 2.5

    assert sorted(r.value for r in left) == [f"left {i}".encode() for i in range(3)]
    assert [r.value for r in late] == [b"behind 0", b"behind 1"]


async def test_two_relays_on_one_database_publish_every_row_once_in_per_key_order(
    database_url, relays, kafka_topic, topic_reader, wait_until
):
    topic = await kafka_topic(partitions=3)
    keys, per_key = 20, 25
    # Two instances of a service: a pool and a relay each, on the same database.
    first, second = Database(database_url), Database(database_url)
    try:
        async with topic_reader(topic.name) as reader:
            instances = [await relays(first), await relays(second)]
            sequence = [(f"order-{n % keys}", n // keys) for n in range(keys * per_key)]
            for start in range(0, len(sequence), 10):
                writer, relay = (first, instances[0]) if start % 20 else (second, instances[1])
                await write(
                    writer,
                    [
                        OutboxMessage(topic.name, key, json.dumps({"key": key, "seq": seq}).encode())
                        for key, seq in sequence[start : start + 10]
                    ],
                )
                relay.wake()  # the instance that committed wakes its own relay; the other one only sweeps
            records = await reader.take(keys * per_key, within=30)
            await wait_until(lambda: _is_empty(first), "every row deleted from the outbox")
            assert await reader.total() == keys * per_key, "no row was published twice"
    finally:
        await first.dispose()
        await second.dispose()

    assert sum(relay.published for relay in instances) == keys * per_key
    seen = defaultdict(list)
    for r in records:
        body = json.loads(r.value)
        assert r.key.decode() == body["key"]
        seen[body["key"]].append(body["seq"])
    assert seen == {f"order-{k}": list(range(per_key)) for k in range(keys)}


async def test_rows_stay_in_the_outbox_while_the_broker_is_unreachable(database, relays, kafka_topic, topic_reader):
    topic = await kafka_topic()
    await write(database, [OutboxMessage(topic.name, f"k{i}", f"kept {i}".encode()) for i in range(3)])

    with pytest.raises(KafkaConnectionError):
        await relays(database, bootstrap="127.0.0.1:1")
    assert await outbox_size(database) == 3

    async with topic_reader(topic.name) as reader:
        (await relays(database)).wake()
        records = await reader.take(3)
    assert sorted(r.value for r in records) == [f"kept {i}".encode() for i in range(3)]


async def test_rows_whose_publication_failed_stay_in_the_outbox_until_the_broker_takes_them(
    database, relays, kafka_topic, topic_reader, wait_until
):
    topic = await kafka_topic()
    async with topic_reader(topic.name) as reader:
        relay = await relays(database)
        send, failures = relay.producer.send, []

        async def broker_gone(*args, **kwargs):
            failures.append(args)
            raise KafkaConnectionError("broker connection lost")

        relay.producer.send = broker_gone
        await write(database, [OutboxMessage(topic.name, f"k{i}", f"held {i}".encode()) for i in range(3)])
        relay.wake()

        async def retried() -> bool:
            return len(failures) >= 2

        await wait_until(retried, "the relay retrying the failed publication")
        assert await outbox_size(database) == 3

        relay.producer.send = send
        relay.wake()
        records = await reader.take(3)
        await wait_until(lambda: _is_empty(database), "the published rows deleted from the outbox")
    assert [r.value for r in records] == [f"held {i}".encode() for i in range(3)]
