"""`oms dlq replay` on the real broker: chosen dead letters go back to the topic they came from, with their key, value
and the original's headers, saying which dead letter they replay; nothing else is published."""

from __future__ import annotations

import asyncio
import uuid
from typing import ClassVar

import pytest
import sqlalchemy as sa
from aiokafka import TopicPartition
from sqlalchemy.ext.asyncio import create_async_engine

from oms_contracts import DEAD_LETTERS, Topic
from oms_contracts.inventory import StockReceived
from oms_runtime import Incoming, Refused, Service, ServiceSettings, Transaction, add_messaging_tables
from oms_runtime.topics import ensure_topics
from oms_tools import dlq, samples
from oms_tools.kafka import producer

from .conftest import end_offsets, read_from, until

CUT = {"oms-truncated": "true", "oms-original-size": "2000000"}


def _dead_letter_headers(original: str, error_class: str, service: str, **extra: str) -> list[tuple[str, bytes]]:
    headers = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-channel": "web-eu",
        "oms-original-topic": original,
        "oms-original-partition": "0",
        "oms-original-offset": "17",
        "oms-error-class": error_class,
        "oms-error-message": "source WH-9 is not in the network",
        "oms-service": service,
        **extra,
    }
    return [(name, value.encode()) for name, value in headers.items()]


async def _dead_letters(bootstrap: str, letters: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> list[tuple]:
    """Publish dead letters as a service's relay does; return their (partition, offset)."""
    async with producer(bootstrap, "test-dlq-replay") as client:
        positions = []
        for key, value, headers in letters:
            sent = await client.send_and_wait(DEAD_LETTERS.name, value, key=key, headers=headers)
            positions.append((sent.partition, sent.offset))
        return positions


@pytest.fixture
def original_topic(oms_topics) -> str:
    topic = Topic(f"oms.test.replay.{uuid.uuid4().hex[:10]}.v1", (StockReceived,), key="sku", description="test")
    asyncio.run(ensure_topics(oms_topics, [topic], partitions=1))
    return topic.name


def test_dlq_replay_publishes_the_chosen_dead_letters_to_their_original_topic_as_they_were(
    oms, oms_topics, original_topic
):
    other = f"oms.test.replay.other.{uuid.uuid4().hex[:6]}.v1"
    positions = asyncio.run(
        _dead_letters(
            oms_topics,
            [
                (b"SKU-1", b'{"n": 1}', _dead_letter_headers(original_topic, "Refused", "inventory")),
                (b"SKU-1", b'{"n": 2}', _dead_letter_headers(original_topic, "ValidationError", "inventory")),
                (b"SKU-1", b'{"n": 3}', _dead_letter_headers(original_topic, "Refused", "routing")),
                (b"SKU-2", b'{"n"', _dead_letter_headers(original_topic, "Refused", "inventory", **CUT)),
                (b"SKU-3", b'{"n": 5}', _dead_letter_headers(other, "Refused", "inventory")),
            ],
        )
    )
    since = {TopicPartition(original_topic, 0): 0}

    dry = oms("dlq", "replay", "--topic", original_topic, "--error-class", "Refused", "--dry-run", "-b", oms_topics)
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.count("would replay") == 2
    assert f"→ {original_topic} key SKU-1" in dry.stdout
    assert "its value was cut to 4 of 2000000 bytes" in dry.stderr
    assert "2 dead letter(s) would be replayed, 1 skipped" in dry.stderr
    assert end_offsets(oms_topics, original_topic) == since, "a dry run publishes nothing"

    result = oms(
        "dlq", "replay", "--topic", original_topic, "--error-class", "Refused", "--service", "inventory",
        "-b", oms_topics,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 dead letter(s) replayed, 1 skipped" in result.stderr
    [replayed] = read_from(oms_topics, since, lambda r: True, count=1)
    assert (replayed.key, replayed.value) == (b"SKU-1", b'{"n": 1}')
    headers = dict(replayed.headers)
    assert headers["x-channel"] == b"web-eu" and headers["traceparent"].startswith(b"00-0af76519")
    assert not [name for name in headers if name.startswith("oms-") and name != "oms-replayed-from"]
    partition, offset = positions[0]
    assert headers["oms-replayed-from"] == f"{DEAD_LETTERS.name}[{partition}]@{offset}".encode()

    by_position = oms("dlq", "replay", "--at", f"{positions[2][0]}:{positions[2][1]}", "-b", oms_topics)
    assert by_position.exit_code == 0, by_position.output
    records = read_from(oms_topics, since, lambda r: True, count=2)
    assert [r.value for r in records] == [b'{"n": 1}', b'{"n": 3}']

    missing = oms("dlq", "replay", "--topic", other, "-b", oms_topics)
    assert missing.exit_code == 0
    assert f"its topic {other} does not exist" in missing.stderr

    nothing = oms("dlq", "replay", "--topic", original_topic, "--since", "1h", "--until", "30m", "-b", oms_topics)
    assert "0 dead letter(s) replayed, 0 skipped" in nothing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "choose with --at or a filter"),
        (["--at", "2"], "is not PARTITION:OFFSET"),
        (["--topic", "x", "--since", "yesterday"], "neither a time"),
    ],
)
def test_dlq_replay_refuses_to_guess_what_to_replay(oms, args, message):
    result = oms("dlq", "replay", *args, "--bootstrap", "127.0.0.1:1")
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())


class _Settings(ServiceSettings):
    service: ClassVar[str] = "replaytest"
    database_url: str = "postgresql+asyncpg://oms:oms@127.0.0.1:1/none"
    http_port: int = 8099


async def _tables(url: str) -> None:
    metadata = sa.MetaData()
    add_messaging_tables(metadata)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
    finally:
        await engine.dispose()


async def test_a_replayed_dead_letter_is_applied_by_the_service_once_the_cause_is_fixed(
    oms, oms_topics, original_topic, create_database
):
    """The whole way: a running service refuses a receipt (its source unknown) and dead-letters it; once the source
    is known, `oms dlq replay` puts it back on its topic and the same service applies it."""
    url = create_database(f"replay_{uuid.uuid4().hex[:6]}").replace("postgresql://", "postgresql+asyncpg://", 1)
    await _tables(url)
    known_sources: set[str] = set()
    applied: list[str] = []
    topic = Topic(original_topic, (StockReceived,), key="sku", description="test")
    service = Service(_Settings(database_url=url, kafka_bootstrap=oms_topics), description="replay test")

    @service.consumer(topic)
    async def apply_receipts(tx: Transaction, events: list[Incoming[StockReceived]]) -> None:
        for e in events:
            if e.event.data.source_code not in known_sources:
                raise Refused(f"source {e.event.data.source_code} is not in the network")
            applied.append(e.event.data.reference)

    receipt = samples.stock_received("SKU-R", "WH-NEW", 3, reference=f"ref-{uuid.uuid4().hex[:6]}")
    async with service.lifespan(service.http):
        async with producer(oms_topics, "test-dlq-replay") as client:
            await client.send_and_wait(original_topic, receipt.to_bytes(), key=b"SKU-R")

        async def dead_lettered() -> bool:
            found = await dlq.chosen(oms_topics, dlq.Selection(original_topic=original_topic, service="replaytest"))
            return len(found) == 1

        await until(dead_lettered, "the receipt dead-lettered")
        known_sources.add("WH-NEW")
        result = await asyncio.to_thread(oms, "dlq", "replay", "--topic", original_topic, "-b", oms_topics)
        assert result.exit_code == 0, result.output

        async def applied_once() -> bool:
            return applied == [receipt.data.reference]

        await until(applied_once, "the replayed receipt applied")
    assert applied == [receipt.data.reference]
    await service.database.dispose()
