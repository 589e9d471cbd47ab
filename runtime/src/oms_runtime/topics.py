"""Explicit, idempotent topic creation (the broker never auto-creates OMS topics)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError, for_code

from oms_contracts import Topic

from .kafka import Kafka, client_options

log = logging.getLogger(__name__)

_ALREADY_EXISTS = 36


async def ensure_topics(
    kafka: Kafka, topics: Iterable[Topic], *, partitions: int = 6, replication_factor: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; return the names created, once the broker lists them. Existing topics
    are left as they are."""
    admin = AIOKafkaAdminClient(**client_options(kafka), client_id="oms-topics", request_timeout_ms=30_000)
    await admin.start()
    try:
        wanted = {t.name: t for t in topics}
        existing = set(await admin.list_topics())
        missing = [t for name, t in wanted.items() if name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [
                NewTopic(
                    t.name,
                    num_partitions=partitions,
                    replication_factor=replication_factor,
                    topic_configs={"min.insync.replicas": str(min(replication_factor, 2)), **t.config},
                )
                for t in missing
            ]
        )
        created = []
        for topic_error in response.topic_errors:
            name, code = topic_error[0], topic_error[1]
            if code == 0:
                created.append(name)
            elif code != _ALREADY_EXISTS:
                raise for_code(code)(f"creating topic {name}: {topic_error[2] if len(topic_error) > 2 else ''}")
        await until_listed(admin, created)
        return created
    finally:
        await admin.close()


async def until_listed(admin: AIOKafkaAdminClient, names: Iterable[str], timeout: float = 30.0) -> None:
    """Wait until the broker's metadata lists these topics. CreateTopics answers once the controller has recorded
    them; a broker's metadata follows a moment later, and a client that asks in between is told they do not exist
    (a test that listed the topics at once saw them missing on a busy machine)."""
    wanted = set(names)
    deadline = time.monotonic() + timeout
    # Nothing to wait for (every topic existed already) costs no metadata request.
    while wanted and (missing := wanted - set(await admin.list_topics())):
        if time.monotonic() > deadline:
            raise KafkaTimeoutError(
                f"topics created but not listed by the broker after {timeout:.0f} s: {sorted(missing)}"
            )
        await asyncio.sleep(0.1)
