"""Transactional outbox: rows written in the same transaction as the state change, published by the relay.

The relay is woken in-process after each commit and reads forward from the last id it sent; a sweep every second
catches rows that committed out of id order or were left by a crashed instance. Sent rows are deleted so the
index it scans holds only work. An advisory lock lets one relay per database publish at a time, which keeps the
per-key order of the rows when two instances of a service run.

A failed publication rolls its batch back: every row stays in the outbox and is sent again, in id order. Most send
errors are retried with the same producer. Some leave the idempotent producer's session unable to publish ever again
(the broker refuses its sequence numbers, or its producer id or epoch), so the relay starts a fresh producer, with a
new producer id, and resends from the outbox; consumers' inboxes absorb the copies the broker already had.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)
from opentelemetry import trace

from . import telemetry
from .database import Database, driver
from .loop import run_when_woken

log = logging.getLogger(__name__)

_RELAY_LOCK = 0x6F6D735F72656C61  # "oms_rela": one publishing relay per database at a time
_BATCH = 1000
_SWEEP_SECONDS = 1.0

# Errors after which the producer's idempotent session cannot publish again: its sequence numbers, producer id or
# epoch are refused by the broker (aiokafka spends a sequence number on a batch it gives up without sending, e.g.
# when a partition had no leader for request_timeout_ms: every later batch to that partition is then out of order),
# or the producer is closed. Only a new producer, with a new producer id, publishes again.
_SESSION_ERRORS = (
    OutOfOrderSequenceNumber,
    InvalidProducerEpoch,
    ProducerFenced,
    UnknownProducerId,
    InvalidProducerIdMapping,
    ProducerClosed,
)
# Any other error is retried with the same producer (aiokafka already retries leader changes, timeouts and lost
# connections itself), but one that keeps failing this many passes in a row is not trusted to heal in that session.
_FAILURES_BEFORE_RESTART = 3


@dataclass(slots=True)
class OutboxMessage:
    topic: str
    key: str | None
    payload: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


async def append(conn, messages: Sequence[OutboxMessage]) -> None:
    """Write messages to the outbox in one statement, inside the caller's transaction."""
    if not messages:
        return
    pg = await driver(conn)
    await pg.execute(
        """
        INSERT INTO outbox (topic, key, payload, headers)
        SELECT t, k, p, h::jsonb FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[]) AS u(t, k, p, h)
        """,
        [m.topic for m in messages],
        [m.key for m in messages],
        [m.payload for m in messages],
        [json.dumps(m.headers) for m in messages],
    )


def kafka_producer(bootstrap: str, client_id: str) -> AIOKafkaProducer:
    """The one producer configuration the OMS publishes with: idempotent, acknowledged by all in-sync replicas."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
    )


class Relay:
    def __init__(self, database: Database, bootstrap: str, service: str) -> None:
        self.database = database
        self.service = service
        self.bootstrap = bootstrap
        # Replaced when its session dies (readiness asks the current one).
        self.producer: AIOKafkaProducer | None = None
        self._wake = asyncio.Event()
        self._last_id = 0
        self._last_sweep = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._failures = 0
        self._dead_session: BaseException | None = None
        self.published = 0
        self.producer_restarts = 0

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        """Start publishing. Kafka need not be reachable: the relay connects when it can, and until then every row
        waits in the outbox."""
        with contextlib.suppress(Exception):
            await self._connect()  # at once when Kafka answers, so that readiness need not wait for the first pass
        self._task = asyncio.create_task(self._run(), name=f"{self.service}-outbox-relay")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task:
            await self._task
        if self.producer is not None:
            await self.producer.stop()

    async def drain(self) -> None:
        """Publish everything committed so far (used at shutdown and by tests)."""
        while await self._publish_batch(after_id=0) == _BATCH:
            pass

    def _new_producer(self) -> AIOKafkaProducer:
        return kafka_producer(self.bootstrap, f"oms-{self.service}-relay")

    async def _run(self) -> None:
        self._wake.set()  # a first pass at once: rows may be waiting from before the start
        await run_when_woken(
            self._wake, self._publish, interval=_SWEEP_SECONDS, what="outbox relay", running=lambda: not self._stopping
        )
        if self.producer is None:
            log.warning("outbox not drained at shutdown: Kafka was never reachable (the next start publishes it)")
            return
        try:
            await self.drain()
        except Exception as error:
            log.warning("outbox not drained at shutdown (the next start publishes it): %r", error)

    async def _publish(self) -> None:
        """Publish forward from the last id sent; once a second, sweep from the start."""
        sweep = time.monotonic() - self._last_sweep >= _SWEEP_SECONDS
        if sweep:
            self._last_sweep = time.monotonic()
        after = 0 if sweep else self._last_id
        while await self._publish_batch(after_id=after) == _BATCH:
            after = self._last_id

    async def _publish_batch(self, after_id: int) -> int:
        if self.producer is None or self._dead_session is not None:
            # Outside the transaction: the advisory lock is not held while a producer connects.
            await self._connect()
        async with self.database.transaction() as conn:
            pg = await driver(conn)
            await pg.execute("SELECT pg_advisory_xact_lock($1)", _RELAY_LOCK)
            rows = await pg.fetch(
                "SELECT id, topic, key, payload, headers FROM outbox WHERE id > $1 ORDER BY id LIMIT $2",
                after_id,
                _BATCH,
            )
            if not rows:
                return 0
            await self._send_all(rows)
            await pg.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [row["id"] for row in rows])
        self._last_id = max(self._last_id, rows[-1]["id"])
        self.published += len(rows)
        return len(rows)

    async def _send_all(self, rows) -> None:
        """Send the rows in id order and wait for every acknowledgement; raise the first failure (in id order), after
        every send has settled, so that nothing of this batch is still in flight when the producer is replaced."""
        producer = self.producer
        pending: list[asyncio.Future] = []
        try:
            try:
                for row in rows:
                    pending.append(await self._send(producer, row))
            finally:
                outcomes = await asyncio.gather(*pending, return_exceptions=True)
            failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if isinstance(failed, asyncio.CancelledError):
                # Only a producer being torn down cancels a delivery; the row was not acknowledged.
                raise ProducerClosed() from failed
            if failed is not None:
                raise failed
        except Exception as error:
            self._failures += 1
            if isinstance(error, _SESSION_ERRORS) or self._failures >= _FAILURES_BEFORE_RESTART:
                self._dead_session = error
            raise
        self._failures = 0

    async def _connect(self) -> None:
        """Start a producer: the first one, or a fresh one (a new producer id) in place of one whose session died."""
        fresh = self._new_producer()
        try:
            await fresh.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await fresh.stop()
            raise
        old, self.producer = self.producer, fresh
        if old is None:
            log.info("outbox relay connected to Kafka")
        else:
            log.warning(
                "outbox relay: its Kafka producer cannot publish any more (%r); a new one resends from the outbox",
                self._dead_session,
            )
            self.producer_restarts += 1
        self._dead_session, self._failures = None, 0
        if old is not None:
            with contextlib.suppress(Exception):
                await old.stop()

    async def _send(self, producer: AIOKafkaProducer, row) -> asyncio.Future:
        stored = row["headers"]
        headers = [(name, value) for name, value in (json.loads(stored) if isinstance(stored, str) else stored)]
        parent = telemetry.context_from_traceparent(dict(headers).get("traceparent"))
        with telemetry.tracer().start_as_current_span(
            f"publish {row['topic']}",
            context=parent,
            kind=trace.SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": row["topic"]},
        ):
            carried = telemetry.inject()
        headers = [(n, v) for n, v in headers if n not in ("traceparent", "tracestate")] + list(carried.items())
        return await producer.send(
            row["topic"],
            value=row["payload"],
            key=row["key"].encode() if row["key"] is not None else None,
            headers=[(n, v.encode()) for n, v in headers],
        )
