"""A whole service on a real broker and PostgreSQL: each record applied once, garbage dead-lettered, and the
consumer group's offsets committed only once the database has committed what they cover."""

import asyncio
import gc
import weakref

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import RequestTimedOutError

from oms_contracts import DEAD_LETTERS
from oms_runtime import consumer as consumer_module
from oms_runtime import metrics
from oms_runtime import service as service_module

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


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


@pytest.fixture
def probe_service(make_service, database_url, probe, oms_topics):
    """A probe service on the real broker, its handler the test's `probe`, subscribed to `topic`."""
    return lambda topic: make_service(database_url, topic, probe, bootstrap=oms_topics)


@pytest.fixture
def caught_up(applied, group_offsets, topic_reader, wait_until):
    """Wait until a probe service has applied `count` records and its consumer group's offsets stand at the end of
    the topic as it is when called (publish first); return those end offsets."""

    async def wait(service, topic, count: int) -> dict[TopicPartition, int]:
        async with topic_reader(topic.name) as records:
            ends = {tp: offset for tp, offset in (await records.end_offsets()).items() if offset > 0}
        group = f"oms-probe.{topic.name}"

        async def done() -> bool:
            return len(await applied(service)) == count and await group_offsets(group) == ends

        await wait_until(done, f"{count} records applied and the group's offsets at the end of the topic")
        return ends

    return wait


async def test_a_service_applies_each_record_once_dead_letters_garbage_and_commits_offsets_after_the_database(
    kafka_topic,
    probe_service,
    probe,
    receipt,
    applied,
    producer,
    group_offsets,
    caught_up,
    topic_reader,
    header_of,
):
    topic = await kafka_topic(partitions=3)
    group = f"oms-probe.{topic.name}"
    events = [receipt(f"r{i}", sku=f"SKU-{i % 7}") for i in range(30)]
    probe.gate = asyncio.Event()
    service = probe_service(topic)

    async with topic_reader(DEAD_LETTERS.name, from_end=True) as dead_letters:
        await publish(producer, topic, events[:20])
        await producer.send_and_wait(
            topic.name,
            b'{"type": "oms.inventory.stock_received.v1"',
            key=b"SKU-X",
            headers=[("traceparent", TRACEPARENT.encode())],
        )
        await publish(producer, topic, events[20:])

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

            ends = await caught_up(service, topic, len(events))
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


async def test_records_whose_headers_are_not_text_are_applied_or_dead_lettered_and_none_is_skipped(
    kafka_topic,
    probe_service,
    receipt,
    applied,
    producer,
    caught_up,
    topic_reader,
    header_of,
):
    """Kafka header values are bytes or null, text or not; FastStream's own batch parser decoded them as UTF-8 and
    dropped the whole batch when one was not. Headers are not part of the contract (a CloudEvent in structured mode
    carries everything in its body), so a valid body is applied whatever its headers; only the trace context is lost
    when its header cannot be read."""
    topic = await kafka_topic(partitions=1)
    odd = {
        "binary": [("x", b"\xff\xfe")],
        "null": [("x", None)],
        "binary-traceparent": [("traceparent", b"\xff\xfe"), ("tracestate", b"\xff")],
        "null-traceparent": [("traceparent", None)],
        "garbled-traceparent": [("traceparent", b"00-not-a-trace-01"), ("x", b"\x00")],
        "fine-traceparent": [("traceparent", TRACEPARENT.encode()), ("x", b"\xff\xfe"), ("y", None)],
    }
    garbage = {
        b"not json, binary trace": [("traceparent", b"\xff\xfe")],
        b"not json, null trace": [("traceparent", None)],
    }
    before, after = receipt("before"), receipt("after")
    odd_events = {name: receipt(name) for name in odd}
    service = probe_service(topic)

    async with topic_reader(DEAD_LETTERS.name, from_end=True) as dead_letters:
        await publish(producer, topic, [before])
        for name, headers in odd.items():
            event = odd_events[name]
            await producer.send_and_wait(topic.name, event.to_bytes(), key=event.key().encode(), headers=headers)
        for body, headers in garbage.items():
            await producer.send_and_wait(topic.name, body, key=b"SKU-X", headers=headers)
        await publish(producer, topic, [after])

        async with service.lifespan(service.http):
            await caught_up(service, topic, len(odd) + 2)
            letters = await dead_letters.take(2, where=lambda r: header_of(r, "oms-original-topic") == topic.name)

    assert sorted(await applied(service)) == sorted(["before", "after", *odd])
    assert sorted(letter.value for letter in letters) == sorted(garbage)
    for letter in letters:
        assert header_of(letter, "oms-error-class") == "ValidationError"
        # Nothing of the original's unreadable trace headers was passed on: every header is text.
        assert [value.decode() for _, value in letter.headers]


@pytest.mark.parametrize("failure", ["refused", "never answered"])
async def test_an_offset_commit_that_fails_is_retried_until_the_group_stands_at_the_end_of_the_topic(
    failure, kafka_topic, probe_service, probe, receipt, producer, caught_up, monkeypatch
):
    """No later batch comes to carry the offsets along: a failed commit that were dropped would leave the group
    behind for as long as the topic stays quiet, and a restart would redeliver all of it. A commit that never
    answers (aiokafka's, once it has lost the group's coordinator) counts as failed after its timeout: awaited for
    ever, it would hold back every later commit of the subscription."""
    monkeypatch.setattr(consumer_module, "_OFFSET_COMMIT_TIMEOUT", 0.5)
    topic = await kafka_topic(partitions=1)
    events = [receipt(f"r{i}") for i in range(5)]
    probe.gate = asyncio.Event()
    service = probe_service(topic)
    await publish(producer, topic, events)
    attempts = []

    async with service.lifespan(service.http):
        try:
            await asyncio.wait_for(probe.entered.wait(), 30)
            kafka = service.consumers[0].consumer
            commit = kafka.commit

            async def fails_once(offsets):
                attempts.append(offsets)
                if len(attempts) == 1:
                    if failure == "refused":
                        raise RequestTimedOutError()
                    await asyncio.Event().wait()
                await commit(offsets)

            kafka.commit = fails_once
        finally:
            probe.gate.set()
        ends = await caught_up(service, topic, len(events))

    assert len(attempts) >= 2, "the failed commit was tried again"
    assert attempts[-1] == ends
    # The lag gauge counts applied records: only this counter says that offsets were held back.
    group = {
        "messaging_system": "kafka",
        "messaging_destination_name": topic.name,
        "messaging_consumer_group_name": f"oms-probe.{topic.name}",
    }
    error_type = "RequestTimedOutError" if failure == "refused" else "TimeoutError"
    assert metrics.sample("oms_consumer_offset_commit_failures_total", {**group, "error_type": error_type}) == 1
    assert metrics.sample("oms_consumer_offset_commit_failures_total", group) == 0, "it starts at 0"


@pytest.mark.parametrize("in_flight", ["offset commit", "batch"])
async def test_a_stopping_service_commits_its_offsets_before_its_kafka_consumer_stops(
    in_flight, kafka_topic, probe_service, probe, receipt, producer, applied, group_offsets, wait_until
):
    """A consumer that has left its group cannot commit for partitions that another instance now owns; what it
    applied last would be redelivered there. Shutdown begins with an offset commit or a whole batch in flight."""
    topic = await kafka_topic(partitions=1)
    events = [receipt(f"r{i}") for i in range(5)]
    probe.gate = asyncio.Event()
    service = probe_service(topic)
    await publish(producer, topic, events)
    consumer, closing, order = service.consumers[0], asyncio.Event(), []

    async with service.lifespan(service.http):
        try:
            await asyncio.wait_for(probe.entered.wait(), 30)
            kafka = consumer.consumer
            close, commit, stop = consumer.close, kafka.commit, kafka.stop

            async def close_begins():
                closing.set()
                probe.gate.set()
                await close()

            async def committing(offsets):
                if in_flight == "offset commit":
                    await closing.wait()
                await commit(offsets)
                order.append("offsets committed")

            async def stopped():
                order.append("Kafka consumer stopped")
                await stop()

            consumer.close, kafka.commit, kafka.stop = close_begins, committing, stopped
        finally:
            if in_flight == "offset commit":
                probe.gate.set()
        if in_flight == "offset commit":

            async def all_applied() -> bool:
                return len(await applied(service)) == len(events)

            await wait_until(all_applied, "every record applied before the shutdown")

    assert await applied(service) == [e.data.reference for e in events]
    assert order == ["offsets committed", "Kafka consumer stopped"]
    assert await group_offsets(f"oms-probe.{topic.name}") == {TopicPartition(topic.name, 0): len(events)}


async def test_a_service_process_collects_its_youngest_objects_less_often_and_freezes_what_its_start_made(
    make_service, database_url, probe, oms_topics, kafka_topic, monkeypatch, wait_until
):
    """Python's collector, left at its defaults, was about half of a service's CPU at 300 orders/s: `run` sets the
    youngest generation's threshold from the settings, and once started the service freezes what its start made.
    A service built in a test process (not through `run`) leaves the collector alone."""
    topic = await kafka_topic()
    service = make_service(database_url, topic, probe, bootstrap=oms_topics, gc_threshold=12_345)
    before = gc.get_threshold()
    # The process's server and its logging and tracing set-up: the lifespan below stands in for the server.
    monkeypatch.setattr(service_module.uvicorn, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr(service_module.telemetry, "setup_logging", lambda *args: None)
    monkeypatch.setattr(service_module.telemetry, "setup_tracing", lambda *args: None)
    try:
        service.run()
        assert gc.get_threshold() == (12_345, *before[1:])
        assert gc.get_freeze_count() == 0
        async with service.lifespan(service.http):

            async def started() -> bool:
                return service._consumers_started

            await wait_until(started, "the service started")
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_a_batch_is_freed_as_soon_as_it_is_let_go_not_left_to_the_collector():
    """FastStream keeps what the decoder returns in the message's own cache. The runtime's decoder returned the
    message itself, so every batch, with all its records and their headers, was a reference cycle that only the
    collector freed: collections of 50-70 ms every few seconds in each service at 300 orders/s."""
    record = ConsumerRecord(
        topic="oms.probe",
        partition=0,
        offset=7,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=b"{}",
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=2,
        headers=(("ce_type", b"oms.probe.v1"),),
    )
    kafka_consumer = object()
    message = service_module._raw_batch((record,), kafka_consumer)
    message.set_decoder(service_module._undecoded)
    assert await message.decode() == ((record,), kafka_consumer)
    batch = weakref.ref(message)
    gc.disable()
    try:
        del message
        assert batch() is None, "the batch's message is still alive: a reference cycle keeps it for the collector"
    finally:
        gc.enable()
