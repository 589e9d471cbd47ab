"""The outbox relay on a real broker and PostgreSQL: rows are published in order, intact, once, and only then
deleted; nothing is lost when the broker cannot take them, and a producer that can no longer publish is replaced."""

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict

import asyncpg
import pytest
import sqlalchemy as sa
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, NotLeaderForPartitionError
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from oms_runtime import metrics, outbox
from oms_runtime.database import Database
from oms_runtime.outbox import _FAILURES_BEFORE_RESTART, OutboxMessage, Relay, append
from oms_runtime.topics import ensure_topics

from .conftest import probe_topic

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
        if not relay._stopping:
            await relay.stop()


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


async def test_a_pass_takes_three_round_trips_and_leaves_no_transaction_open(
    database, kafka_bootstrap, kafka_topic, topic_reader, monkeypatch
):
    """BEGIN and the lock in one simple query, the read, then the DELETE and COMMIT in one: a pass is paid per batch
    of rows, so its round trips are a hop's fixed cost at low rates."""
    topic = await kafka_topic(partitions=1)
    await write(database, [OutboxMessage(topic.name, "k", f"m{i}".encode()) for i in range(3)])
    sent: list[str] = []
    monkeypatch.setattr(metrics, "statement_done", lambda query, *_: sent.append(query.split()[0]))
    relay = Relay(database, kafka_bootstrap, "probe")
    try:
        async with topic_reader(topic.name) as reader:
            await relay.drain()
            assert [r.value for r in await reader.take(3)] == [b"m0", b"m1", b"m2"]
    finally:
        await relay.producer.stop()

    assert sent == ["BEGIN;", "SELECT", "DELETE"]
    assert await outbox_size(database) == 0
    async with database.autocommit() as pg:
        assert await pg.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0


async def test_a_pass_reads_the_outbox_by_its_primary_key_however_small_its_plan_was_costed(database, database_url):
    """Between two vacuums an outbox's heap holds the pages of the rows already sent. PostgreSQL caches a statement's
    generic plan after its fifth run, costed on the table as it then was: for an outbox the last vacuum left near
    empty, a sequential scan that later reads every dead page. The pool's connections read it by the index."""
    async with database.autocommit() as pg:
        await pg.execute("INSERT INTO outbox (topic, key, payload) VALUES ('t', 'k', 'x')")
        await pg.execute("ANALYZE outbox")
        assert "Index Scan using outbox_pkey on outbox" in await _plan(pg, outbox._NEXT_ROWS, 0, 1000)
    # Planned on an outbox of one row with the planner's defaults: the scan that would be cached.
    plain = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        assert "Seq Scan on outbox" in await _plan(plain, outbox._NEXT_ROWS, 0, 1000)
    finally:
        await plain.close()


async def _plan(pg, statement: str, *args) -> str:
    return "\n".join(row[0] for row in await pg.fetch(f"EXPLAIN {statement}", *args))


async def _is_empty(database) -> bool:
    return await outbox_size(database) == 0


async def _published_with(traceparent: str, database, relays, kafka_topic, topic_reader):
    """The message the relay publishes for an outbox row stored with this trace context."""
    topic = await kafka_topic()
    await write(database, [OutboxMessage(topic.name, "k", b"{}", [("traceparent", traceparent)])])
    async with topic_reader(topic.name) as reader:
        (await relays(database)).wake()
        [published] = await reader.take(1)
    return published


async def test_a_rows_traceparent_is_continued_by_the_published_message(
    database, relays, kafka_topic, topic_reader, header_of
):
    published = await _published_with(f"00-{TRACE_ID}-{PARENT_SPAN}-01", database, relays, kafka_topic, topic_reader)

    carried = [v.decode() for k, v in published.headers if k == "traceparent"]
    assert len(carried) == 1
    version, trace_id, span_id, _ = carried[0].split("-")
    assert (version, trace_id) == ("00", TRACE_ID), "the publish continues the trace of the transaction"
    assert span_id != PARENT_SPAN, "as a span of its own"


async def test_an_unsampled_rows_trace_context_travels_as_stored_without_a_span(
    database, relays, kafka_topic, topic_reader
):
    traceparent = f"00-{TRACE_ID}-{PARENT_SPAN}-00"
    published = await _published_with(traceparent, database, relays, kafka_topic, topic_reader)

    assert [v.decode() for k, v in published.headers if k == "traceparent"] == [traceparent]


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
        async with database.autocommit() as pg:
            behind = pg.transaction()
            await behind.start()
            await append(pg, [OutboxMessage(topic.name, "k", f"behind {i}".encode()) for i in range(2)])
            await write(database, [OutboxMessage(topic.name, "k", b"ahead")])
            relay.wake()
            await reader.take(1, where=lambda r: r.value == b"ahead")
            await behind.commit()
        committed = time.monotonic()
        late = await reader.take(2, within=2.5, where=lambda r: r.value.startswith(b"behind"))
        assert time.monotonic() - committed < 2.5

    assert sorted(r.value for r in left) == [f"left {i}".encode() for i in range(3)]
    assert [r.value for r in late] == [b"behind 0", b"behind 1"]


async def test_a_busy_relay_still_sweeps_once_a_second(database, relays, kafka_topic, topic_reader):
    """A row that took its id before rows a busy relay (one that finds rows at every pass) has published is found by
    the sweep within a second: a relay that went from pass to pass without sweeping while it found rows left such
    rows for seconds (docs/performance.md, step 46)."""
    topic = await kafka_topic()
    relay = await relays(database)
    written = 0

    async def keep_busy(stop: asyncio.Event) -> None:
        # Rows faster than the relay publishes them: every pass finds some.
        nonlocal written
        while not stop.is_set():
            await write(database, [OutboxMessage(topic.name, f"k{written % 7}", b"busy") for _ in range(5)])
            written += 5
            relay.wake()

    def busy(r) -> bool:
        return r.value == b"busy"

    stop = asyncio.Event()
    async with topic_reader(topic.name) as reader:
        writer = asyncio.create_task(keep_busy(stop))
        try:
            await reader.take(20, where=busy)
            async with database.autocommit() as pg:
                behind = pg.transaction()
                await behind.start()
                await append(pg, [OutboxMessage(topic.name, "k", b"behind")])
                # The relay reads past the row's id while its transaction is still open.
                await reader.take(written + 20, within=30, where=busy)
                await behind.commit()
            committed = time.monotonic()
            await reader.take(1, within=5, where=lambda r: r.value == b"behind")
            assert time.monotonic() - committed < 2.5
        finally:
            stop.set()
            await writer


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


async def test_a_relay_starts_while_the_broker_is_unreachable_and_keeps_every_row_in_the_outbox(
    database, relays, kafka_topic, topic_reader, wait_until, caplog
):
    topic = await kafka_topic()
    await write(database, [OutboxMessage(topic.name, f"k{i}", f"kept {i}".encode()) for i in range(3)])

    with caplog.at_level(logging.WARNING, logger="oms_runtime.loop"):
        unreachable = await relays(database, bootstrap="127.0.0.1:1")  # starts all the same
        assert unreachable.producer is None

        async def tried_twice() -> bool:
            return sum("KafkaConnectionError" in r.getMessage() for r in caplog.records) >= 2

        await wait_until(tried_twice, "two passes that could not reach Kafka")
    await unreachable.stop()
    assert await outbox_size(database) == 3

    async with topic_reader(topic.name) as reader:
        (await relays(database)).wake()
        records = await reader.take(3)
    assert sorted(r.value for r in records) == [f"kept {i}".encode() for i in range(3)]


async def test_a_row_whose_send_failed_is_sent_again_and_no_later_row_of_its_key_overtakes_it(
    database, relays, kafka_topic, topic_reader, wait_until
):
    """A passing fault is retried with the same producer. Rows of other keys go on meanwhile; a row of the same
    topic and key waits for the one that failed, so the key's order holds."""
    topic = await kafka_topic()
    async with topic_reader(topic.name) as reader:
        relay = await relays(database)
        producer = relay.producer
        send, failures, sent = producer.send, [], []

        async def broker_gone_twice_for_the_first_row(topic_name, *, value, **kwargs):
            if value == b"a0" and len(failures) < 2:
                failures.append(value)
                raise KafkaConnectionError("broker connection lost")
            sent.append(value)
            return await send(topic_name, value=value, **kwargs)

        producer.send = broker_gone_twice_for_the_first_row
        await write(
            database,
            [
                OutboxMessage(topic.name, "order-a", b"a0"),
                OutboxMessage(topic.name, "order-a", b"a1"),
                OutboxMessage(topic.name, "order-b", b"b0"),
            ],
        )
        relay.wake()
        records = await reader.take(3)
        await wait_until(lambda: _is_empty(database), "the published rows deleted from the outbox")

    assert failures == [b"a0", b"a0"]
    assert sent == [b"b0", b"a0", b"a1"], "a1 was not even sent while a0 had not gone out"
    assert [r.value for r in records if r.key == b"order-a"] == [b"a0", b"a1"]
    assert relay.producer is producer and relay.producer_restarts == 0, "a connection lost is no reason for a new one"
    assert relay.parked == 0


def _restart_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "oms_runtime.outbox" and r.levelno == logging.WARNING and "new one" in r.getMessage()
    ]


async def _read_distinct(reader, count: int) -> list:
    """Read until `count` distinct payloads have arrived (a resent batch may repeat some); return every record."""
    while len({r.value for r in reader.records}) < count:
        await reader.take(len(reader.records) + 1)
    return reader.records


async def test_a_producer_whose_idempotent_session_died_is_replaced_and_every_row_arrives(
    make_service, database_url, kafka_bootstrap, kafka_topic, topic_reader, wait_until, caplog
):
    """Seen in production: a leader change, then OutOfOrderSequenceNumber on every retry until a restart. aiokafka
    spends a sequence number on a batch it gives up unsent (a partition without a leader for request_timeout_ms);
    from then on the broker refuses every batch of that producer to that partition. The sequence numbers are spent
    here directly, and the real broker refuses what follows."""
    topic = await kafka_topic(partitions=3)
    service = make_service(database_url, bootstrap=kafka_bootstrap)
    relay = service.relay
    keys = [f"order-{k}" for k in range(6)]

    def rows(start: int, stop: int) -> list[OutboxMessage]:
        return [
            OutboxMessage(topic.name, keys[n % len(keys)], json.dumps({"key": keys[n % len(keys)], "n": n}).encode())
            for n in range(start, stop)
        ]

    await relay.start()
    try:
        async with topic_reader(topic.name) as reader:
            await write(service.database, rows(0, 30))
            relay.wake()
            await reader.take(30)
            dead = relay.producer
            dead_id = dead._txn_manager.producer_id
            for partition in range(3):
                dead._txn_manager.increment_sequence_number(TopicPartition(topic.name, partition), 1)

            with caplog.at_level(logging.WARNING):
                await write(service.database, rows(30, 90))
                relay.wake()
                records = await _read_distinct(reader, 90)
                await wait_until(lambda: _is_empty(service.database), "every row deleted from the outbox")
            # Only the relay runs here (no consumers): readiness asks the producer that replaced the dead one.
            assert "kafka" not in await service.readiness()
    finally:
        await relay.stop()

    assert relay.producer is not dead and relay.producer._txn_manager.producer_id != dead_id
    [warning] = _restart_warnings(caplog)
    assert "OutOfOrderSequenceNumber" in warning
    seen = defaultdict(list)
    for r in records:
        body = json.loads(r.value)
        if body["n"] not in seen[body["key"]]:
            seen[body["key"]].append(body["n"])
    assert seen == {key: list(range(k, 90, len(keys))) for k, key in enumerate(keys)}, "every row, in per-key order"


async def test_a_send_error_that_persists_on_one_producer_ends_in_a_new_producer(
    database, relays, kafka_topic, topic_reader, wait_until, caplog
):
    topic = await kafka_topic()
    async with topic_reader(topic.name) as reader:
        relay = await relays(database)
        stuck, failures = relay.producer, []

        async def expired_without_a_leader(*args, **kwargs):
            failures.append(args)
            raise NotLeaderForPartitionError()

        stuck.send = expired_without_a_leader
        with caplog.at_level(logging.WARNING):
            await write(database, [OutboxMessage(topic.name, "k", f"held {i}".encode()) for i in range(3)])
            relay.wake()
            records = await reader.take(3)
            await wait_until(lambda: _is_empty(database), "the published rows deleted from the outbox")

    assert [r.value for r in records] == [f"held {i}".encode() for i in range(3)]
    assert relay.producer is not stuck and relay.producer_restarts == 1
    assert len(failures) == _FAILURES_BEFORE_RESTART, "retried with the same producer first"
    [warning] = _restart_warnings(caplog)
    assert "NotLeaderForPartitionError" in warning


async def parked_rows(database) -> list[dict]:
    async with database.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT id, topic, key, payload, error_class, error_message, attempts FROM parked_messages ORDER BY id"
            )
        )
        return [dict(row._mapping) for row in rows]


def _parked_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "oms_runtime.outbox" and "parked" in r.getMessage()]


async def test_a_row_larger_than_the_producer_may_send_is_parked_and_the_rows_around_it_are_published_in_order(
    database, relays, kafka_topic, topic_reader, wait_until, caplog
):
    """Parked rows never hold their key: a later event of the same order is published (holding every later event
    behind one that can never go out would stall that order for good; the parked row is an operator's problem)."""
    topic = await kafka_topic(partitions=2)
    huge = b"x" * 1_500_000  # over the producer's max_request_size (1 MiB), the broker's default limit too
    rows = [
        OutboxMessage(topic.name, "order-1", b"before"),
        OutboxMessage(topic.name, "order-2", b"other order"),
        OutboxMessage(topic.name, "order-1", huge, [("ce-type", "oms.test.v1")]),
        OutboxMessage(topic.name, "order-1", b"after"),
    ]
    with caplog.at_level(logging.WARNING, logger="oms_runtime.outbox"):
        async with topic_reader(topic.name) as reader:
            relay = await relays(database)
            await write(database, rows)
            relay.wake()
            records = await reader.take(3)
            await wait_until(lambda: _is_empty(database), "the outbox empty: published or parked")

    assert [r.value for r in records if r.key == b"order-1"] == [b"before", b"after"]
    [parked] = await parked_rows(database)
    assert (parked["topic"], parked["key"], bytes(parked["payload"])) == (topic.name, "order-1", huge)
    assert parked["error_class"] == "MessageSizeTooLargeError"
    assert "larger than the maximum request size" in parked["error_message"]
    assert parked["attempts"] == 1
    assert (relay.parked, relay.published, relay.producer_restarts) == (1, 3, 0)
    [warning] = _parked_warnings(caplog)
    assert topic.name in warning and "key order-1" in warning and "MessageSizeTooLargeError" in warning


async def test_a_row_larger_than_its_topic_takes_is_parked_and_small_rows_refused_with_it_in_one_batch_are_not(
    database, relays, kafka_topic, topic_reader, wait_until
):
    """The broker refuses a whole record batch when it is over the topic's max.message.bytes: the small rows that
    shared a batch with a big one, or that were only too many together, are sent again alone and published; the
    row that is refused alone is parked. Nothing stalls, and the key's other rows keep their order."""
    topic = await kafka_topic(config={"max.message.bytes": "4000"})
    small = [OutboxMessage(topic.name, "order-1", f"{i:03d}".encode() + b"." * 300) for i in range(30)]
    big = OutboxMessage(topic.name, "order-1", b"B" * 20_000)
    rows = [*small[:20], big, *small[20:]]
    async with topic_reader(topic.name) as reader:
        relay = await relays(database)
        await write(database, rows)
        relay.wake()
        records = await _read_distinct(reader, 30)
        await wait_until(lambda: _is_empty(database), "the outbox empty: published or parked", within=60)

    published = []
    for r in records:
        if r.value not in published:
            published.append(r.value)
    assert published == [m.payload for m in small], "every small row, in order"
    [parked] = await parked_rows(database)
    assert bytes(parked["payload"]) == big.payload
    assert parked["error_class"] == "MessageSizeTooLargeError"
    assert relay.parked == 1


async def test_a_row_for_a_topic_created_a_moment_later_waits_and_is_published_not_parked(
    database, relays, kafka_bootstrap, topic_reader, wait_until, caplog
):
    late = probe_topic()
    try:
        with caplog.at_level(logging.WARNING, logger="oms_runtime.outbox"):
            relay = await relays(database)  # a grace period of 60 s by default
            await write(database, [OutboxMessage(late.name, "order-1", b"early")])
            relay.wake()

            async def noticed() -> bool:
                return any(late.name in r.getMessage() and "wait up to" in r.getMessage() for r in caplog.records)

            await wait_until(noticed, "the relay finding the topic missing")
        await ensure_topics(kafka_bootstrap, [late], partitions=1)
        async with topic_reader(late.name) as reader:
            [record] = await reader.take(1, within=30)
        await wait_until(lambda: _is_empty(database), "the row deleted once published")
    finally:
        await _delete_topics(kafka_bootstrap, [late.name])

    assert record.value == b"early"
    assert await parked_rows(database) == [] and relay.parked == 0


async def test_a_row_for_a_topic_that_never_appears_is_parked_after_the_grace_period_and_others_go_on(
    database, kafka_topic, topic_reader, wait_until, kafka_bootstrap
):
    topic = await kafka_topic()
    nowhere = probe_topic().name
    relay = Relay(database, kafka_bootstrap, "probe", unknown_topic_grace_s=0.5)
    await relay.start()
    try:
        async with topic_reader(topic.name) as reader:
            await write(
                database,
                [
                    OutboxMessage(topic.name, "order-1", b"first"),
                    OutboxMessage(nowhere, "order-1", b"lost"),
                    OutboxMessage(topic.name, "order-1", b"second"),
                ],
            )
            relay.wake()
            records = await reader.take(2)
            await wait_until(lambda: _is_empty(database), "the row for the missing topic parked")
    finally:
        await relay.stop()

    assert [r.value for r in records] == [b"first", b"second"]
    [parked] = await parked_rows(database)
    assert (parked["topic"], parked["error_class"]) == (nowhere, "UnknownTopicOrPartitionError")
    assert "missing for" in parked["error_message"]
    assert relay.producer_restarts == 0


async def _delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="oms-test-cleanup")
    await admin.start()
    try:
        with contextlib.suppress(Exception):
            await admin.delete_topics(names)
    finally:
        await admin.close()


@given(keys=st.lists(st.binary(max_size=64), min_size=1, max_size=50), count=st.integers(min_value=1, max_value=64))
def test_a_key_goes_to_the_partition_kafkas_default_partitioner_chooses(keys, count):
    # Per-key order across versions: a key must never move to another partition.
    partitions = list(range(count))
    for key in keys + keys:
        assert outbox._partition(key, partitions, partitions) == DefaultPartitioner()(key, partitions, partitions)
