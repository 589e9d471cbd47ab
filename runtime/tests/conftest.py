"""What the runtime tests build on: a fresh database holding only the messaging tables (plus `applied`, where the
probe handler records its effects), a probe service whose handler each test steers, and readers of real topics."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from oms_contracts import Topic
from oms_contracts.inventory import StockReceived, StockReceivedData
from oms_runtime import (
    Incoming,
    Invalid,
    Refused,
    Service,
    ServiceSettings,
    Transaction,
    add_messaging_tables,
    service_field,
)
from oms_runtime.testing import Emitted, take_outbox
from oms_runtime.topics import ensure_topics

METADATA = sa.MetaData()
add_messaging_tables(METADATA)
APPLIED = sa.Table(
    "applied",
    METADATA,
    sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("event_id", UUID(as_uuid=True), nullable=False),
    sa.Column("reference", sa.Text, nullable=False),
)


class ProbeSettings(ServiceSettings):
    service: ClassVar[str] = "probe"
    database_url: str = service_field("probe", "database_url", "postgresql+asyncpg://oms:oms@127.0.0.1:1/none")
    http_port: int = service_field("probe", "http_port", 8089)


class Probe:
    """A handler of stock receipts that records each one in `applied`, in the batch's transaction.

    What it does with an event is steered by the event's `reference`: "boom..." raises an unexpected error and
    "refuse..." is refused, both after writing; `transient_failures` makes the next calls fail as if a dependency were
    down; `odd_failures` makes the next calls fail with an error of no transient kind (what a driver may raise in the
    middle of an outage); `gate` holds every call until it is set; a reference in `fixed` is applied however it
    starts (the cause of its refusal was fixed)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.transient_failures = 0
        self.odd_failures = 0
        self.fixed: set[str] = set()
        # Refuse a batch holding an event already applied, as a state machine refuses a transition it already made.
        self.refuse_seen = False
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        # Write `applied` as the batch's last write (Transaction.write) rather than at once.
        self.write_last = False

    async def __call__(self, tx: Transaction, events: list[Incoming[StockReceived]]) -> None:
        self.batches.append([e.event.data.reference or "" for e in events])
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise ConnectionError("the stock ledger is unreachable")
        if self.odd_failures > 0:
            self.odd_failures -= 1
            raise RuntimeError("'NoneType' object has no attribute 'send'")
        if self.refuse_seen:
            seen = await (await tx.pg()).fetchval(
                "SELECT count(*) FROM applied WHERE event_id = ANY($1::uuid[])", [e.id for e in events]
            )
            if seen:
                raise Refused(f"{seen} of these were applied already")
        # Written before the checks below: what a failing handler wrote must not be kept.
        if self.write_last:
            await tx.write(
                "INSERT INTO applied (event_id, reference) SELECT * FROM unnest($1::uuid[], $2::text[])",
                [e.id for e in events],
                [e.event.data.reference for e in events],
            )
        else:
            await (await tx.pg()).executemany(
                "INSERT INTO applied (event_id, reference) VALUES ($1, $2)",
                [(e.id, e.event.data.reference) for e in events],
            )
        for e in events:
            reference = e.event.data.reference or ""
            if reference in self.fixed:
                continue
            if reference.startswith("boom"):
                raise RuntimeError(f"cannot apply {reference}")
            if reference.startswith("refuse"):
                raise Refused(f"source {e.event.data.source_code} does not take {reference}")

    @property
    def seen(self) -> list[str]:
        return [reference for batch in self.batches for reference in batch]


def received(reference: str, sku: str = "SKU-1") -> StockReceived:
    """A valid event of the probe topic; `reference` names it in `applied` and steers the probe."""
    return StockReceived(
        source="/test/probe",
        data=StockReceivedData(sku=sku, source_code="WH-1", quantity=1, reason="restock", reference=reference),
    )


def probe_topic() -> Topic:
    """A topic of its own for one test (its name also names the consumer group and the inbox consumer)."""
    return Topic(
        f"oms.test.probe.{uuid.uuid4().hex[:10]}.v1",
        (StockReceived,),
        key="sku",
        description="Stock receipts for one runtime test",
    )


async def _create_tables(url: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(METADATA.create_all)
    finally:
        await engine.dispose()


@pytest.fixture
def database_url(create_database: Callable[[str], str]) -> str:
    """A fresh database with the outbox, the inbox and `applied`; its SQLAlchemy (asyncpg) URL."""
    url = create_database(f"rt_{uuid.uuid4().hex[:10]}").replace("postgresql://", "postgresql+asyncpg://", 1)
    asyncio.run(_create_tables(url))
    return url


@pytest.fixture
def topic() -> Topic:
    return probe_topic()


@pytest.fixture
def receipt() -> Callable[..., StockReceived]:
    return received


@pytest.fixture
def probe() -> Probe:
    return Probe()


ServiceFactory = Callable[..., Service]


@pytest.fixture
async def make_service() -> AsyncIterator[ServiceFactory]:
    """Build probe services; their connection pools are closed after the test."""
    made: list[Service] = []

    def factory(
        database_url: str,
        topic: Topic | None = None,
        handler: Probe | None = None,
        *,
        bootstrap: str = "127.0.0.1:1",
        on_invalid: Callable[[Transaction, Invalid], Awaitable[bool]] | None = None,
        **settings: Any,
    ) -> Service:
        service = Service(
            ProbeSettings(database_url=database_url, kafka_bootstrap=bootstrap, **settings),
            description="A service that only exists in the runtime tests",
        )
        if topic is not None and handler is not None:

            @service.consumer(topic, on_invalid=on_invalid)
            async def apply_stock_receipts(tx: Transaction, events: list[Incoming[StockReceived]]) -> None:
                await handler(tx, events)

        made.append(service)
        return service

    yield factory
    for service in made:
        await service.database.dispose()


class NoBroker:
    """Stands in for the aiokafka consumer, as in oms_runtime.testing.deliver: nothing assigned, nothing committed."""

    def assignment(self) -> set[TopicPartition]:
        return set()

    def seek(self, *_: Any) -> None:
        pass


@pytest.fixture
def consume() -> Callable[[Service, Topic, list[ConsumerRecord]], Awaitable[list[Emitted]]]:
    """Run given records (e.g. the same record twice, or records with keys) through a service's consumer; return what
    it wrote to the outbox."""

    async def run(service: Service, topic: Topic, records: list[ConsumerRecord]) -> list[Emitted]:
        consumer = next(c for c in service.consumers if c.topic.name == topic.name)
        await consumer.consume(records, NoBroker())
        return await take_outbox(service)

    return run


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A plain producer on the test broker, for what channels and sources would publish."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
def applied() -> Callable[[Service], Awaitable[list[str]]]:
    """The references the probe handler committed, in the order it wrote them."""

    async def read(service: Service) -> list[str]:
        async with service.database.connect() as conn:
            rows = await conn.execute(sa.select(APPLIED.c.reference).order_by(APPLIED.c.seq))
            return list(rows.scalars())

    return read


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f}s: {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def wait_until() -> Callable[..., Awaitable[None]]:
    """Poll an async condition until it holds (a failure says what did not happen)."""
    return eventually


@pytest.fixture
async def kafka_topic(kafka_bootstrap: str) -> AsyncIterator[Callable[..., Awaitable[Topic]]]:
    """Create probe topics on the broker (deleted after the test)."""
    created: list[str] = []

    async def create(partitions: int = 1, config: dict[str, str] | None = None) -> Topic:
        topic = dataclasses.replace(probe_topic(), config=config or {})
        await ensure_topics(kafka_bootstrap, [topic], partitions=partitions)
        created.append(topic.name)
        return topic

    yield create
    if created:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="oms-test-cleanup")
        await admin.start()
        try:
            await admin.delete_topics(created)
        finally:
            await admin.close()


class TopicReader:
    """Reads every partition of a topic without a consumer group, from the beginning or from where it ends now."""

    def __init__(self, bootstrap: str, topic: str, *, from_end: bool = False) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.from_end = from_end
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100, client_id="oms-test-reader"
        )
        self.records: list[ConsumerRecord] = []

    async def __aenter__(self) -> TopicReader:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="oms-test-reader")
        await admin.start()
        try:
            [described] = await admin.describe_topics([self.topic])
        finally:
            await admin.close()
        partitions = [TopicPartition(self.topic, p["partition"]) for p in described["partitions"]]
        await self.consumer.start()
        try:
            self.consumer.assign(partitions)
            start = await (self.consumer.end_offsets if self.from_end else self.consumer.beginning_offsets)(partitions)
        except BaseException:
            await self.consumer.stop()
            raise
        for tp, offset in start.items():
            self.consumer.seek(tp, offset)
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.consumer.stop()

    async def take(
        self, count: int, within: float = 15.0, where: Callable[[ConsumerRecord], bool] = lambda _: True
    ) -> list[ConsumerRecord]:
        """Read until `count` records that match `where` have arrived; return those, in the order read."""
        deadline = time.monotonic() + within
        while len(matching := [r for r in self.records if where(r)]) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(matching)} of {count} records arrived on {self.topic} in {within:.0f}s")
            batches = await self.consumer.getmany(timeout_ms=int(min(left, 0.2) * 1000))
            for batch in batches.values():
                self.records.extend(batch)
        return matching

    async def end_offsets(self) -> dict[TopicPartition, int]:
        return await self.consumer.end_offsets(list(self.consumer.assignment()))

    async def total(self) -> int:
        """How many records the topic holds (its end offsets, summed)."""
        return sum((await self.end_offsets()).values())


@pytest.fixture
def topic_reader(kafka_bootstrap: str) -> Callable[..., TopicReader]:
    return lambda topic, **kw: TopicReader(kafka_bootstrap, topic, **kw)


def header(record: ConsumerRecord, name: str) -> str | None:
    return next((v.decode() for k, v in record.headers if k == name), None)


@pytest.fixture
def header_of() -> Callable[[ConsumerRecord, str], str | None]:
    return header


class TcpProxy:
    """A TCP port the test opens and closes in front of a real server (PostgreSQL or Kafka): closed, it refuses new
    connections and cuts the ones it carries, as a server that died or a network that broke would."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.accepted = 0
        self._server: asyncio.base_events.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def is_open(self) -> bool:
        return self._server is not None

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._carry, "127.0.0.1", self.port, reuse_address=True)

    async def close(self) -> None:
        """Refuse new connections and reset the ones open (no goodbye reaches either side)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _carry(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, server_writer}
        pipes = [
            asyncio.create_task(self._pipe(client_reader, server_writer)),
            asyncio.create_task(self._pipe(server_reader, client_writer)),
        ]
        self._pipes.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        self._pipes.difference_update(pipes)
        for writer in (client_writer, server_writer):
            writer.transport.abort()
            self._writers.discard(writer)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
async def tcp_proxy() -> AsyncIterator[Callable[[str], TcpProxy]]:
    """Proxies made closed; every one is closed after the test."""
    made: list[TcpProxy] = []

    def make(target: str) -> TcpProxy:
        proxy = TcpProxy(target)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.close()
