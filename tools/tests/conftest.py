"""Helpers for the `oms` command's tests. The broker fixtures (`kafka_bootstrap`, `oms_topics`) are the root
conftest's: start the test broker with `OMS_KAFKA_PORT=19092 deploy/kafka/kafka.sh start` and export
OMS_TEST_KAFKA_BOOTSTRAP=127.0.0.1:19092."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from typer.testing import CliRunner

from oms_tools.cli import app
from oms_tools.kafka import partitions_of


class Cli:
    """Runs `oms ...` in-process, as a user would type it."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, env: dict[str, str] | None = None):
        return self.runner.invoke(app, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def oms() -> Cli:
    return Cli()


async def _end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    numbers = await partitions_of(bootstrap, topic)
    assert numbers, f"no topic {topic}"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        return await consumer.end_offsets([TopicPartition(topic, p) for p in numbers])
    finally:
        await consumer.stop()


async def _read_from(
    bootstrap: str,
    since: dict[TopicPartition, int],
    wanted: Callable[[ConsumerRecord], bool],
    count: int,
    seconds: float,
) -> list[ConsumerRecord]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(since))
        for tp, offset in since.items():
            consumer.seek(tp, offset)
        found: list[ConsumerRecord] = []
        deadline = time.monotonic() + seconds
        while len(found) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            found += [r for records in batch.values() for r in records if wanted(r)]
        return sorted(found, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    """Where every partition of a topic ends now: read from here to see only what a test publishes next."""
    return asyncio.run(_end_offsets(bootstrap, topic))


def read_from(
    bootstrap: str,
    since: dict[TopicPartition, int],
    wanted: Callable[[ConsumerRecord], bool],
    count: int,
    timeout: float = 30.0,
) -> list[ConsumerRecord]:
    """The records after `since` that `wanted` accepts, once `count` of them arrived (or the timeout passed)."""
    return asyncio.run(_read_from(bootstrap, since, wanted, count, timeout))


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    """Poll an async condition until it holds; a failure says what did not happen."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f}s: {what}")
        await asyncio.sleep(0.1)
