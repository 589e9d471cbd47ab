"""Per-source access control on a real broker with SASL/SCRAM and the StandardAuthorizer: a 3PL reads its own
fulfillment requests and publishes updates, and nothing else, through the same aiokafka clients a 3PL would use."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

from oms_contracts import fulfillment_requests
from oms_contracts.topics import CHANNEL_ORDERS, FULFILLMENT_UPDATES, ORDER_EVENTS
from oms_runtime.kafka import KafkaSettings, client_options
from oms_runtime.outbox import kafka_producer

from .conftest import SecureBroker, eventually

A_REQUESTS = fulfillment_requests("3PL-A").name
B_REQUESTS = fulfillment_requests("3PL-B").name


def consumer(login: KafkaSettings, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        **client_options(login),
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
    )


async def publish(login: KafkaSettings, topic: str, value: bytes, key: bytes = b"order-1") -> None:
    """Publish with the producer settings the OMS uses (idempotent, acks=all); wait for the acknowledgement."""
    producer = kafka_producer(login, "oms-test-acl")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def refusal_of(client: AIOKafkaConsumer | AIOKafkaProducer, action=None) -> BaseException:
    """Start the client (and do `action`); return the error the broker's authorizer answered with."""
    try:
        with pytest.raises((TopicAuthorizationFailedError, GroupAuthorizationFailedError)) as refused:
            await client.start()
            if action is not None:
                await action()
        return refused.value
    finally:
        await client.stop()


async def test_a_source_reads_its_own_requests_in_a_group_of_its_own_and_commits_its_offsets(
    secure_kafka: SecureBroker,
):
    marker = uuid.uuid4().hex.encode()
    # The order service's principal publishes requests to any source's topic.
    await publish(secure_kafka.login("oms-order"), A_REQUESTS, marker)
    group = f"3pl-a.requests-{uuid.uuid4().hex[:6]}"
    reader = consumer(secure_kafka.login("3pl-a"), A_REQUESTS, group)
    await reader.start()
    try:
        seen: list[bytes] = []

        async def arrived() -> bool:
            for records in (await reader.getmany(timeout_ms=200)).values():
                seen.extend(r.value for r in records)
            return marker in seen

        await eventually(arrived, f"3pl-a reads its request on {A_REQUESTS}")
        await reader.commit()
        assert await reader.committed(next(iter(reader.assignment()))) is not None
    finally:
        await reader.stop()


async def test_a_source_is_refused_another_sources_requests(secure_kafka: SecureBroker):
    refused = await refusal_of(consumer(secure_kafka.login("3pl-a"), B_REQUESTS, "3pl-a.requests"))
    assert isinstance(refused, TopicAuthorizationFailedError)
    assert B_REQUESTS in str(refused)


async def test_a_source_is_refused_a_consumer_group_outside_its_prefix(secure_kafka: SecureBroker):
    # Another source's group (or an OMS service's) would let it move their offsets.
    for group in ("3pl-b.requests", "oms-order.oms.fulfillment.updates.v1", "requests"):
        refused = await refusal_of(consumer(secure_kafka.login("3pl-a"), A_REQUESTS, group))
        assert isinstance(refused, GroupAuthorizationFailedError), group


async def test_a_source_may_publish_fulfillment_updates_with_an_idempotent_producer(secure_kafka: SecureBroker):
    # No IDEMPOTENT_WRITE on the cluster is granted: Kafka 4.1 lets WRITE on a topic start an idempotent producer.
    await publish(secure_kafka.login("3pl-a"), FULFILLMENT_UPDATES.name, b'{"type": "oms.fulfillment.accepted.v1"}')


async def test_a_source_may_neither_publish_channel_orders_nor_read_order_events(secure_kafka: SecureBroker):
    login = secure_kafka.login("3pl-a")
    producer = kafka_producer(login, "oms-test-acl")
    refused = await refusal_of(producer, lambda: producer.send_and_wait(CHANNEL_ORDERS.name, b"{}", key=b"web:1"))
    assert isinstance(refused, TopicAuthorizationFailedError)
    # The order events carry what routing needs, the customer's address among it: not for a 3PL.
    refused = await refusal_of(consumer(login, ORDER_EVENTS.name, "3pl-a.events"))
    assert isinstance(refused, TopicAuthorizationFailedError)


async def test_a_source_does_not_even_see_the_names_of_topics_it_may_not_use(secure_kafka: SecureBroker):
    admin = AIOKafkaAdminClient(**client_options(secure_kafka.login("3pl-b")), client_id="oms-test-acl")
    await admin.start()
    try:
        assert set(await admin.list_topics()) == {B_REQUESTS, FULFILLMENT_UPDATES.name}
    finally:
        await admin.close()
