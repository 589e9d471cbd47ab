"""Test support: deliver events to a service's real consumer path (inbox, handler, outbox on a real PostgreSQL)
without a broker, and read back what it emitted. For a handler's test; end-to-end tests use real Kafka."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from oms_contracts import CloudEvent, Topic
from oms_contracts.topics import ALL_EVENTS

from .consumer import published_headers
from .service import Service

_offsets = itertools.count()
_TYPES = {e.TYPE: e for e in ALL_EVENTS}


class _Consumer:
    """Stands in for the aiokafka consumer: no partition is assigned, so no offset is committed."""

    def assignment(self) -> set[TopicPartition]:
        return set()

    def seek(self, *_: Any) -> None:
        pass


@dataclass
class Emitted:
    topic: str
    key: str | None
    payload: bytes
    headers: dict[str, str]

    @property
    def event(self) -> CloudEvent:
        return _TYPES[self.headers["ce-type"]].model_validate_json(self.payload)


def record(topic: str, value: bytes, key: str | None = None, headers: list[tuple[str, bytes]] | None = None):
    offset = next(_offsets)
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key.encode() if key else None,
        value=value,
        checksum=None,
        serialized_key_size=len(key or ""),
        serialized_value_size=len(value),
        headers=headers or [],
    )


async def deliver(service: Service, topic: Topic, *messages: CloudEvent | bytes) -> list[Emitted]:
    """Run one batch through the consumer `service` registered for `topic`; return what it wrote to the outbox
    (and take it out of the outbox, so the next call returns only its own)."""
    consumer = next(c for c in service.consumers if c.topic.name == topic.name)
    records = [
        # With the headers the outbox writes, so a consumer skips what it does not handle, as it does in service.
        record(
            topic.name,
            m.to_bytes(),
            m.key(),
            headers=[(name, value.encode()) for name, value in published_headers(m)],
        )
        if isinstance(m, CloudEvent)
        else record(topic.name, m)
        for m in messages
    ]
    await consumer.consume(records, _Consumer())
    return await take_outbox(service)


async def take_outbox(service: Service) -> list[Emitted]:
    async with service.database.transaction() as pg:
        rows = await pg.fetch("DELETE FROM outbox RETURNING id, topic, key, payload, headers")
    rows = sorted(rows, key=lambda r: r["id"])
    return [Emitted(r["topic"], r["key"], bytes(r["payload"]), {n: v for n, v in _headers(r["headers"])}) for r in rows]


def _headers(stored: Any) -> list[list[str]]:
    return json.loads(stored) if isinstance(stored, str) else stored


async def groups_to_end(bootstrap: str, groups: Iterable[tuple[str, str]]) -> None:
    """Commit the end of each topic as its group's offsets, for (group, topic) pairs on a real broker. On a broker the
    tests share, a service started afterwards takes in only what comes after: a new group (auto_offset_reset
    earliest) would otherwise read all that earlier tests left on the topic, and an old one what it left unread.
    A topic that does not exist is passed over; so is a group some live member holds (it stays where it is)."""
    groups = list(groups)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = sorted({topic for _, topic in groups} & set(await admin.list_topics()))
        # The admin's metadata, not a consumer's: a consumer knows the partitions of its subscriptions only.
        partitions = {
            t["topic"]: [TopicPartition(t["topic"], p["partition"]) for p in t["partitions"]]
            for t in (await admin.describe_topics(topics) if topics else [])
        }
    finally:
        await admin.close()

    async def to_end(group: str, topic: str) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(partitions[topic])
            await consumer.commit(await consumer.end_offsets(partitions[topic]))
        except KafkaError as error:
            print(f"consumer group {group} not moved to the end of {topic}: {error!r}")
        finally:
            await consumer.stop()

    await asyncio.gather(*(to_end(group, topic) for group, topic in groups if partitions.get(topic)))


async def start_at_end(service: Service) -> None:
    """Move the consumer groups of a service not yet started to the end of its topics (see `groups_to_end`)."""
    await groups_to_end(service.settings.kafka_bootstrap, ((c.name, c.topic.name) for c in service.consumers))
