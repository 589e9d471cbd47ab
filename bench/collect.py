"""The observer: reads every topic an order's story shows on and keeps, per order, the broker timestamp of each hop.

It reads without a consumer group (assigned partitions, from the end at start-up), so it changes nothing the system
sees. The event type comes from the `ce-type` header the outbox writes (the body's `type` when a record has none);
the order id is the record key (UUIDv5 of the key on the channel topic). Only plans (how many shipments) are decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import stats
from bench.orders import order_id

log = logging.getLogger(__name__)

CHANNEL_TOPIC = "oms.channel.orders.v1"
# How much a fetch of the collector waits for, at most, before the broker answers it.
READ_BYTES = 1024 * 1024
READ_WAIT_MS = 250
CONFIRMATION = b'"template":"order_confirmation"'


@dataclass(frozen=True)
class Profile:
    """Which topics to read and which of them carry the submission (keyed by channel key, not order id)."""

    topics: tuple[str, ...]
    channel_topic: str = CHANNEL_TOPIC
    kinds: dict[str, str] = field(default_factory=lambda: dict(stats.EVENT_KINDS))
    # A notification is the confirmation mail only with this template (the minimal chain sends only that one).
    mail_marker: bytes | None = CONFIRMATION


def system_profile(request_topics: list[str]) -> Profile:
    return Profile(
        topics=(
            CHANNEL_TOPIC,
            "oms.order.events.v1",
            "oms.routing.plans.v1",
            "oms.inventory.allocations.v1",
            "oms.notifications.v1",
            *request_topics,
        )
    )


def header_type(headers) -> str | None:
    for name, value in headers or ():
        if name in ("ce-type", "ce_type") and value:
            return value.decode("ascii", "replace")
    return None


def classify(profile: Profile, topic: str, key: bytes | None, value: bytes | None, headers) -> tuple | None:
    """(order id, kind, shipments) of a record the benchmark measures, None for the rest. Pure: bench/tests pins it."""
    if not key or value is None:
        return None
    etype = header_type(headers)
    if etype is None:
        try:
            etype = json.loads(value).get("type")
        except (ValueError, AttributeError):
            return None
    kind = profile.kinds.get(etype)
    if kind is None:
        return None
    if kind == stats.MAIL and profile.mail_marker is not None and profile.mail_marker not in value:
        return None
    shipments = None
    if kind == stats.PLANNED:
        data = json.loads(value)["data"]
        shipments = len(data.get("shipments", ())) if "shipments" in data else int(data.get("shipment_count", 1))
    oid = str(order_id(key.decode())) if topic == profile.channel_topic else key.decode()
    return oid, kind, shipments


class Collector:
    def __init__(self, bootstrap: str, profile: Profile) -> None:
        self.bootstrap = bootstrap
        self.profile = profile
        self.tracks: dict[str, stats.OrderTrack] = defaultdict(stats.OrderTrack)
        self.sizes: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # event type -> [records, bytes]
        self.dead_letters = 0
        self.records = 0
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            client_id="bench-collector",
            enable_auto_commit=False,
            # A hop's time is its records' broker timestamps, not when the collector reads them: the broker holds a
            # fetch until a megabyte or a quarter of a second has gathered. Answered at the first record, the
            # collector took 7 % of the box's CPU at 50 orders/s, besides the broker's answering its fetches, all of it
            # from the system it measures (docs/performance.md, step 37).
            fetch_min_bytes=READ_BYTES,
            fetch_max_wait_ms=READ_WAIT_MS,
        )
        await consumer.start()
        partitions = []
        for topic in (*self.profile.topics, "oms.dlq.v1"):
            for _ in range(50):
                found = consumer.partitions_for_topic(topic)
                if found:
                    break
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.1)
            else:
                if topic == "oms.dlq.v1":
                    continue
                raise RuntimeError(f"topic {topic} does not exist")
            partitions += [TopicPartition(topic, p) for p in found]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="bench-collector")

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        classify_ = classify
        profile = self.profile
        tracks = self.tracks
        sizes = self.sizes
        while True:
            batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
            for tp, records in batch.items():
                if tp.topic == "oms.dlq.v1":
                    self.dead_letters += len(records)
                    continue
                for r in records:
                    self.records += 1
                    seen = classify_(profile, tp.topic, r.key, r.value, r.headers)
                    if seen is None:
                        continue
                    oid, kind, shipments = seen
                    tracks[oid].observe(kind, r.timestamp, shipments)
                    size = sizes[kind]
                    size[0] += 1
                    size[1] += len(r.value)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer:
            await self._consumer.stop()

    def mean_sizes(self) -> dict[str, int]:
        return {kind: round(total / n) for kind, (n, total) in self.sizes.items() if n}


async def consumer_lag(bootstrap: str, prefixes: tuple[str, ...]) -> int:
    """Records the consumer groups whose names start with `prefixes` have not committed yet, over all their
    partitions: 0 when the services (or the chain) have consumed everything published so far."""
    return sum((await consumer_lags(bootstrap, prefixes)).values())


async def consumer_lags(bootstrap: str, prefixes: tuple[str, ...]) -> dict[tuple[str, str], int]:
    """The records not committed yet per (group, topic), for the groups whose names start with `prefixes`."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    ends = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await ends.start()
    try:
        committed: dict[tuple[str, TopicPartition], int] = {}
        for group, *_ in await admin.list_consumer_groups():
            if group.startswith(prefixes):
                for tp, meta in (await admin.list_consumer_group_offsets(group)).items():
                    committed[(group, tp)] = meta.offset
        if not committed:
            return {}
        end = await ends.end_offsets(list({tp for _, tp in committed}))
        lags: dict[tuple[str, str], int] = {}
        for (group, tp), offset in committed.items():
            lags[(group, tp.topic)] = lags.get((group, tp.topic), 0) + max(0, end[tp] - offset)
        return lags
    finally:
        await ends.stop()
        await admin.close()
