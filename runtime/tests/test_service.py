"""A whole service on a real broker and PostgreSQL: each record applied once, garbage dead-lettered, and the
consumer group's offsets committed only once the database has committed what they cover."""

import asyncio

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from oms_contracts import DEAD_LETTERS

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
async def producer(kafka_bootstrap):
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    yield producer
    await producer.stop()


async def publish(producer, topic, events):
    for event in events:
        await producer.send_and_wait(topic.name, event.to_bytes(), key=event.key().encode())


@pytest.fixture
async def group_offsets(kafka_bootstrap):
    """The committed offsets of a consumer group, per partition (a partition without a commit is left out)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="oms-test-offsets")
    await admin.start()

    async def read(group: str) -> dict[TopicPartition, int]:
        committed = await admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}

    yield read
    await admin.close()


async def test_a_service_applies_each_record_once_dead_letters_garbage_and_commits_offsets_after_the_database(
    oms_topics,
    kafka_topic,
    make_service,
    database_url,
    probe,
    receipt,
    applied,
    producer,
    group_offsets,
    topic_reader,
    header_of,
    wait_until,
):
    topic = await kafka_topic(partitions=3)
    group = f"oms-probe.{topic.name}"
    events = [receipt(f"r{i}", sku=f"SKU-{i % 7}") for i in range(30)]
    probe.gate = asyncio.Event()
    service = make_service(database_url, topic, probe, bootstrap=oms_topics)

    async with topic_reader(DEAD_LETTERS.name, from_end=True) as dead_letters:
        await publish(producer, topic, events[:20])
        await producer.send_and_wait(
            topic.name,
            b'{"type": "oms.inventory.stock_received.v1"',
            key=b"SKU-X",
            headers=[("traceparent", TRACEPARENT.encode())],
        )
        await publish(producer, topic, events[20:])
        async with topic_reader(topic.name) as records:
            ends = {tp: offset for tp, offset in (await records.end_offsets()).items() if offset > 0}

        async with service.lifespan(service.http):
            try:
                await asyncio.wait_for(probe.entered.wait(), 30)
                # The handler holds its batch's transaction open: nothing is in the database yet, so no offset may
                # be committed either (nor auto-committed in the background, however long the handler takes).
                assert service.consumers[0].consumer._enable_auto_commit is False
                for _ in range(5):
                    assert await applied(service) == []
                    assert await group_offsets(group) == {}
                    await asyncio.sleep(0.1)
            finally:
                probe.gate.set()

            async def caught_up() -> bool:
                return len(await applied(service)) == len(events) and await group_offsets(group) == ends

            await wait_until(caught_up, "every record applied and the group's offsets at the end of the topic")
            [letter] = await dead_letters.take(1, where=lambda r: header_of(r, "oms-original-topic") == topic.name)

    assert sorted(await applied(service)) == sorted(e.data.reference for e in events)
    assert sorted(probe.seen) == sorted(e.data.reference for e in events), "the handler saw each event once"
    assert letter.value == b'{"type": "oms.inventory.stock_received.v1"' and letter.key == b"SKU-X"
    assert header_of(letter, "oms-error-class") == "ValidationError"
    assert "Invalid JSON" in header_of(letter, "oms-error-message")
    assert header_of(letter, "oms-service") == "probe"
    assert header_of(letter, "traceparent").split("-")[1] == TRACEPARENT.split("-")[1], "still in the sender's trace"
    original = TopicPartition(topic.name, int(header_of(letter, "oms-original-partition")))
    assert 0 <= int(header_of(letter, "oms-original-offset")) < ends[original]


async def test_a_restarted_service_does_not_apply_anything_twice(
    oms_topics, kafka_topic, make_service, database_url, probe, receipt, applied, producer, wait_until
):
    topic = await kafka_topic(partitions=2)
    events = [receipt(f"r{i}", sku=f"SKU-{i % 5}") for i in range(20)]
    await publish(producer, topic, events)

    async def all_applied(service, count):
        async def check() -> bool:
            return len(await applied(service)) == count

        await wait_until(check, f"{count} events applied")

    first = make_service(database_url, topic, probe, bootstrap=oms_topics)
    async with first.lifespan(first.http):
        await all_applied(first, len(events))

    after_restart = type(probe)()
    second = make_service(database_url, topic, after_restart, bootstrap=oms_topics)
    async with second.lifespan(second.http):
        marker = receipt("after-restart")
        await publish(producer, topic, [marker])
        await all_applied(second, len(events) + 1)

    assert after_restart.seen == ["after-restart"]
    assert sorted(await applied(second)) == sorted([*(e.data.reference for e in events), "after-restart"])
