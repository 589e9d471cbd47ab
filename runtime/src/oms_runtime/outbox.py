"""Transactional outbox: rows written in the same transaction as the state change, published by the relay.

The relay is woken in-process after each commit and reads forward from the last id it sent; a sweep every second
catches rows that committed out of id order or were left by a crashed instance. Sent rows are deleted so the
index it scans holds only work. An advisory lock lets one relay per database publish at a time, which keeps the
per-key order of the rows when two instances of a service run.

Each row's send is judged on its own. A row that is acknowledged is deleted. A row that failed for a reason that
passes (a lost connection, a leader election, a topic created a moment ago) stays and is sent again, in id order,
and no later row of its topic and key is sent before it. A row that can never be published (larger than the broker
takes, a topic that does not exist, a record the broker calls invalid) is *parked*: moved to `parked_messages`, in
the transaction that deletes the published rows, with its error, so one such row never stalls a service; an
operator lists, retries or drops parked rows with `oms outbox`. Some errors leave the idempotent producer's session
unable to publish ever again (the broker refuses its sequence numbers, or its producer id or epoch), so the relay
starts a fresh producer, with a new producer id, and resends from the outbox; consumers' inboxes absorb the copies
the broker already had.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidTopicError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownError,
    UnknownProducerId,
    UnknownTopicOrPartitionError,
    UnsupportedForMessageFormatError,
    for_code,
)
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.protocol.metadata import MetadataRequest
from opentelemetry import trace

from . import faults, metrics, telemetry
from .database import Database, json_text
from .kafka import Kafka, client_options
from .loop import run_when_woken

log = logging.getLogger(__name__)

_RELAY_LOCK = 0x6F6D735F72656C61  # "oms_rela": one publishing relay per database at a time
# The outbox is a queue: between two vacuums its heap fills with the pages of rows already sent, which the planner
# does not see. Its read goes by the primary key however small the outbox was when planned: the pool's connections
# plan without sequential scans (database._PLANNER), which spared a quarter of the order database's page reads at 50
# orders/s when the relay alone set it.
_BEGIN_LOCKED = f"BEGIN; SELECT pg_advisory_xact_lock({_RELAY_LOCK})"
_NEXT_ROWS = "SELECT id, topic, key, payload, headers, created_at FROM outbox WHERE id > $1 ORDER BY id LIMIT $2"
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

# Raised by `send` itself, before the row has a sequence number: the row alone is larger than the producer may send.
_TOO_LARGE_HERE = (MessageSizeTooLargeError, RecordTooLargeError)
# The broker refused the record batch for good. A batch may hold several rows, and a batch of small rows can be too
# large for a topic whose max.message.bytes is small: such rows are suspects, sent again alone, and parked only when
# alone they are refused again. UnknownError is what aiokafka makes of codes it does not know, among them
# INVALID_RECORD (87: e.g. a record without a key on a compacted topic).
_REFUSED_BY_BROKER = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    CorruptRecordException,
    UnsupportedForMessageFormatError,
    UnknownError,
)
# The topic is missing or closed to this producer: maybe only for a moment (a topic created a moment ago is briefly
# unknown, an ACL is being granted), so its rows wait for a grace period before they are parked.
_TOPIC_ERRORS = (UnknownTopicOrPartitionError, TopicAuthorizationFailedError)


@dataclass(slots=True)
class OutboxMessage:
    topic: str
    key: str | None
    payload: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


# Writes outbox rows from arrays: $1 topics, $2 keys, $3 payloads, $4 headers (JSON text).
APPEND = """
    INSERT INTO outbox (topic, key, payload, headers)
    SELECT t, k, p, h::jsonb FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[]) AS u(t, k, p, h)"""


def outbox_columns(messages: Sequence[OutboxMessage]) -> tuple[list[str], list[str | None], list[bytes], list[str]]:
    """The arguments of APPEND for these messages."""
    return (
        [m.topic for m in messages],
        [m.key for m in messages],
        [m.payload for m in messages],
        [json_text(m.headers) for m in messages],
    )


async def append(pg, messages: Sequence[OutboxMessage]) -> None:
    """Write messages to the outbox in one statement, inside the caller's transaction (an asyncpg connection)."""
    if messages:
        await pg.execute(APPEND, *outbox_columns(messages))


@functools.lru_cache(maxsize=16_384)
def _partition_index(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _partition(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's (and Java's) default partitioner, remembering recent keys: an order's events leave in runs, and the
    pure-Python murmur2 was a tenth of the relay's CPU. The same key goes to the same partition as with the default."""
    if key is None:
        return DefaultPartitioner()(key, all_partitions, available)
    return all_partitions[_partition_index(key, len(all_partitions))]


def kafka_producer(kafka: Kafka, client_id: str) -> AIOKafkaProducer:
    """The one producer configuration the OMS publishes with: idempotent, acknowledged by all in-sync replicas."""
    return AIOKafkaProducer(
        **client_options(kafka),
        client_id=client_id,
        partitioner=_partition,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
    )


# What an operator does with parked rows (`oms outbox`); each takes an asyncpg connection in a transaction.

PARKED_COLUMNS = "id, topic, key, payload, headers, created_at, error_class, error_message, parked_at, attempts"


async def parked(pg) -> list[Any]:
    """Every parked row, oldest first."""
    return await pg.fetch(f"SELECT {PARKED_COLUMNS} FROM parked_messages ORDER BY id")


async def retry_parked(pg, ids: Sequence[int] | None) -> list[int]:
    """Move parked rows (`ids`, or every one) back into the outbox, where they get new ids after everything already
    there, in the order they were parked in; return the parked ids moved. The relay's sweep publishes them."""
    moved = await pg.fetch(
        """
        WITH moved AS (
            DELETE FROM parked_messages WHERE $1::bigint[] IS NULL OR id = ANY($1::bigint[])
            RETURNING id, topic, key, payload, headers, created_at
        ), back AS (
            INSERT INTO outbox (topic, key, payload, headers, created_at)
            SELECT topic, key, payload, headers, created_at FROM moved ORDER BY id
        )
        SELECT id FROM moved ORDER BY id
        """,
        None if ids is None else list(ids),
    )
    return [row["id"] for row in moved]


async def drop_parked(pg, row_id: int) -> Any | None:
    """Delete one parked row for good; return it (None when there is none with that id)."""
    return await pg.fetchrow(f"DELETE FROM parked_messages WHERE id = $1 RETURNING {PARKED_COLUMNS}", row_id)


class _Pass:
    """What one pass over a batch of rows made of each: sent, parked (with the error), or kept for the next pass."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.parked: list[tuple[Any, BaseException]] = []
        self.kept: list[int] = []
        # The first error a later pass may cure; it is reported, and the relay backs off.
        self.failure: BaseException | None = None
        # Whether a send failed on this producer (not a topic still in its grace period, not a row held behind).
        self.send_failed = False
        # (topic, key) of rows kept: a later row of the same topic and key must not overtake them.
        self.held: set[tuple[str, str]] = set()

    def keep(self, row, error: BaseException | None = None, *, send_failed: bool = False) -> None:
        self.kept.append(row["id"])
        if row["key"] is not None:
            self.held.add((row["topic"], row["key"]))
        if error is not None and self.failure is None:
            self.failure = error
        self.send_failed = self.send_failed or send_failed

    def is_held(self, row) -> bool:
        return row["key"] is not None and (row["topic"], row["key"]) in self.held

    @property
    def gone(self) -> list[int]:
        """The ids leaving the outbox: published or parked."""
        return self.sent + [row["id"] for row, _ in self.parked]


class PublishingHeldBack(Exception):
    """Some rows of a pass were neither published nor parked; they are sent again after a backoff."""


class Relay:
    def __init__(
        self, database: Database, bootstrap: Kafka, service: str, *, unknown_topic_grace_s: float = 60.0
    ) -> None:
        self.database = database
        self.service = service
        self.bootstrap = bootstrap
        self.unknown_topic_grace_s = unknown_topic_grace_s
        # Replaced when its session dies (readiness asks the current one).
        self.producer: AIOKafkaProducer | None = None
        # Why the last attempt to start a producer failed (readiness says it in plain words); None once one runs.
        self.connect_error: BaseException | None = None
        self._wake = asyncio.Event()
        self._last_id = 0
        self._last_sweep = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._failures = 0
        self._dead_session: BaseException | None = None
        # Per row id: how many passes tried it (only rows that failed once are here), and rows to send alone.
        self._tries: dict[int, int] = {}
        self._suspects: set[int] = set()
        # Since when a topic has been unknown (or not authorized) to this relay.
        self._topic_missing_since: dict[str, float] = {}
        self._missing: dict[str, tuple[BaseException, float]] = {}
        self.published = 0
        self.parked = 0
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
        """One pass over up to _BATCH rows after `after_id`: publish, park or keep each; return how many were read,
        or 0 when some were kept for a later pass (which starts with them). Raises PublishingHeldBack, after
        committing what it did, when a send failed: the relay backs off before it tries again."""
        if self.producer is None or self._dead_session is not None:
            # Outside the transaction: the advisory lock is not held while a producer connects.
            await self._connect()
        async with self.database.autocommit() as pg:
            # The transaction is begun and locked in one round trip (a simple query of two statements) and ended with
            # its DELETE in another (`_pass`): a pass takes three round trips, not five.
            try:
                await pg.execute(_BEGIN_LOCKED)
                rows, done = await self._pass(pg, after_id)
            except BaseException:
                # A connection the server dropped is already back in the pool, where asking it anything raises: the
                # pass's own error is the one to report.
                with contextlib.suppress(Exception):
                    if pg.is_in_transaction():
                        await pg.execute("ROLLBACK")
                raise
        if not rows:
            return 0
        for row, error in done.parked:
            log.warning(
                "outbox relay parked message %d for %s, key %s, after %d tries: %s: %s "
                "(later messages of its key are published; `oms outbox parked --service %s` lists it)",
                row["id"],
                row["topic"],
                _shown(row["key"]),
                self._tries.get(row["id"], 1),
                type(error).__name__,
                _describe(error),
                self.service,
            )
        for row_id in done.gone:
            self._tries.pop(row_id, None)
            self._suspects.discard(row_id)
        self.published += len(done.sent)
        self.parked += len(done.parked)
        if done.send_failed:
            self._failures += 1
            if self._failures >= _FAILURES_BEFORE_RESTART and self._dead_session is None:
                self._dead_session = done.failure
        elif done.sent:
            self._failures = 0
        if not done.kept:
            self._last_id = max(self._last_id, rows[-1]["id"])
            return len(rows)
        # The next pass starts with the first row kept, so that nothing of its key overtakes it.
        self._last_id = min(done.kept) - 1
        if done.send_failed:
            raise PublishingHeldBack(
                f"{len(done.kept)} message(s) of {len(rows)} kept for the next pass: {done.failure!r}"
            ) from done.failure
        # Only rows waiting for their topic (or behind one): the sweep tries them again within a second.
        return 0

    async def _pass(self, pg, after_id: int) -> tuple[list[Any], _Pass]:
        """Inside the locked transaction: read, send and judge the rows after `after_id`, park and delete what is
        done with, commit."""
        rows = await pg.fetch(_NEXT_ROWS, after_id, _BATCH)
        done = _Pass()
        if not rows:
            await pg.execute("COMMIT")
            return rows, done
        if after_id == 0:
            self._forget_before(rows[0]["id"])
        started = time.perf_counter()
        done = await self._send_all(rows)
        _measure(rows, done, time.perf_counter() - started)
        if faults.ARMED and done.sent:
            # The broker has acknowledged these rows; they are still in the outbox, and stay there if we die.
            faults.reach("relay.after_publish")
        if done.parked:
            await pg.execute(
                """
                INSERT INTO parked_messages
                    (id, topic, key, payload, headers, created_at, error_class, error_message, attempts)
                SELECT o.id, o.topic, o.key, o.payload, o.headers, o.created_at, p.error_class, p.error_message,
                    p.attempts
                FROM outbox o
                JOIN unnest($1::bigint[], $2::text[], $3::text[], $4::int[])
                    AS p(id, error_class, error_message, attempts) USING (id)
                """,
                [row["id"] for row, _ in done.parked],
                [type(error).__name__ for _, error in done.parked],
                [_describe(error)[:4000] for _, error in done.parked],
                [self._tries.get(row["id"], 1) for row, _ in done.parked],
            )
        gone = ",".join(map(str, done.gone))
        # The ids are integers read from the table: written into the statement, the DELETE and the COMMIT go as one.
        await pg.execute(f"DELETE FROM outbox WHERE id = ANY('{{{gone}}}'::bigint[]); COMMIT")
        return rows, done

    def _forget_before(self, first_id: int) -> None:
        # Rows below the first one left in the outbox were published or parked by another instance.
        for row_id in [i for i in self._tries if i < first_id]:
            del self._tries[row_id]
        self._suspects = {i for i in self._suspects if i >= first_id}

    async def _send_all(self, rows) -> _Pass:
        """Send the rows in id order and wait for every acknowledgement; judge each row by its own outcome.

        Every send has settled when this returns, so nothing of this pass is still in flight when the producer is
        replaced."""
        producer = self.producer
        done = _Pass()
        missing = await self._missing_topics(producer, {row["topic"] for row in rows})
        pending: list[tuple[Any, asyncio.Future]] = []
        stopped = False
        for row in rows:
            if stopped or done.is_held(row):
                done.keep(row)
                continue
            self._tries[row["id"]] = self._tries.get(row["id"], 0) + 1
            if row["topic"] in missing:
                self._judge_topic(done, row, missing[row["topic"]])
                continue
            alone = row["id"] in self._suspects
            if alone:
                # Everything sent before has settled: this row makes a record batch of its own.
                await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
            try:
                future = await self._send(producer, row)
            except Exception as error:
                stopped = self._judge_unsent(done, row, error)
                continue
            if alone:
                [outcome] = await asyncio.gather(future, return_exceptions=True)
                stopped = self._judge_alone(done, row, outcome)
            else:
                pending.append((row, future))
        outcomes = await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
        for (row, _), outcome in zip(pending, outcomes, strict=True):
            self._judge_sent(done, row, outcome)
        return done

    async def _missing_topics(self, producer: AIOKafkaProducer, topics: set[str]) -> dict[str, BaseException]:
        """The topics of a batch that the broker does not have (or will not let this producer write to), asked once
        per pass for topics the producer does not know yet. A send to a topic missing from the metadata would wait
        request_timeout_ms (30 s) before it fails, holding back the whole batch."""
        now = time.monotonic()
        unknown = {t for t in topics if producer.client.cluster.partitions_for_topic(t) is None}
        # A topic found missing less than a second ago is not asked about again at every pass of a busy relay.
        missing = {t: error for t, (error, at) in self._missing.items() if t in unknown and now - at < _SWEEP_SECONDS}
        ask = sorted(unknown - set(missing))
        if ask:
            response = await producer.client.send(
                producer.client.get_random_node(), MetadataRequest(ask, allow_auto_topic_creation=False)
            )
            for entry in response.topics:
                error_code, topic = entry[0], entry[1]
                if error_code != 0:
                    missing[topic] = for_code(error_code)(f"topic {topic}")
                    self._missing[topic] = (missing[topic], now)
                else:
                    self._missing.pop(topic, None)
        for topic in topics:
            if topic not in missing:
                self._topic_missing_since.pop(topic, None)
            else:
                self._note_missing(topic, missing[topic])
        return missing

    def _note_missing(self, topic: str, error: BaseException) -> None:
        if topic not in self._topic_missing_since:
            self._topic_missing_since[topic] = time.monotonic()
            log.warning(
                "outbox relay: topic %s cannot be written to (%s); its messages wait up to %gs, then are parked",
                topic,
                type(error).__name__,
                self.unknown_topic_grace_s,
            )

    def _judge_topic(self, done: _Pass, row, error: BaseException) -> None:
        """A row of a topic the metadata has an error for: parked when the name is invalid or the topic has been
        missing for longer than the grace period; otherwise it waits (a leader being elected, say)."""
        missing_for = time.monotonic() - self._topic_missing_since.get(row["topic"], time.monotonic())
        if isinstance(error, InvalidTopicError) or (
            isinstance(error, _TOPIC_ERRORS) and missing_for >= self.unknown_topic_grace_s
        ):
            done.parked.append((row, _with_time(error, missing_for)))
        else:
            done.keep(row, error)

    def _judge_unsent(self, done: _Pass, row, error: BaseException) -> bool:
        """A send refused before the row left: returns whether this producer must not send any more."""
        if isinstance(error, _TOO_LARGE_HERE):
            done.parked.append((row, error))
            return False
        if isinstance(error, _TOPIC_ERRORS):
            self._note_missing(row["topic"], error)
            self._judge_topic(done, row, error)
            return False
        done.keep(row, error, send_failed=True)
        if isinstance(error, _SESSION_ERRORS):
            self._dead_session = error
            return True
        return False

    def _judge_alone(self, done: _Pass, row, outcome: object) -> bool:
        """A suspect sent alone: refused again, it is parked. Its refusal left a gap in this producer's sequence
        numbers for the partition, so the producer is replaced before anything else is sent."""
        if isinstance(outcome, _REFUSED_BY_BROKER):
            done.parked.append((row, outcome))
            self._dead_session = outcome
            return True
        self._judge_sent(done, row, outcome)
        return self._dead_session is not None

    def _judge_sent(self, done: _Pass, row, outcome: object) -> None:
        if not isinstance(outcome, BaseException):
            done.sent.append(row["id"])
            return
        if isinstance(outcome, asyncio.CancelledError):
            # Only a producer being torn down cancels a delivery; the row was not acknowledged.
            outcome = ProducerClosed()
        if isinstance(outcome, _SESSION_ERRORS):
            self._dead_session = outcome
        elif isinstance(outcome, _REFUSED_BY_BROKER):
            # Sent again alone by a fresh producer: the refused batch left a gap in this one's sequence numbers for
            # the partition, and the broker would take nothing more of it there.
            self._suspects.add(row["id"])
            self._dead_session = outcome
        done.keep(row, outcome, send_failed=True)

    async def _connect(self) -> None:
        """Start a producer: the first one, or a fresh one (a new producer id) in place of one whose session died."""
        fresh = self._new_producer()
        try:
            await fresh.start()
        except BaseException as error:
            self.connect_error = error
            with contextlib.suppress(Exception):
                await fresh.stop()
            raise
        self.connect_error = None
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
        traceparent = next((value for name, value in headers if name == "traceparent"), None)
        if telemetry.is_sampled(traceparent):
            # A traced order: its publish is a span of its own, which the consumers continue.
            with telemetry.tracer().start_as_current_span(
                f"publish {row['topic']}",
                context=telemetry.context_from_traceparent(traceparent),
                kind=trace.SpanKind.PRODUCER,
                attributes={"messaging.system": "kafka", "messaging.destination.name": row["topic"]},
            ):
                carried = telemetry.inject()
            headers = [(n, v) for n, v in headers if n not in ("traceparent", "tracestate")] + list(carried.items())
        # Otherwise the row's trace context travels as the transaction stored it: the same trace, and no span that
        # would not be recorded anyway.
        return await producer.send(
            row["topic"],
            value=row["payload"],
            key=row["key"].encode() if row["key"] is not None else None,
            headers=[(n, v.encode()) for n, v in headers],
        )


def _measure(rows, done: _Pass, seconds: float) -> None:
    """A pass's metrics, one call per instrument (and per topic): rows published by topic, the time the pass took to
    be acknowledged, and how long its oldest published row had waited since its transaction."""
    sent = set(done.sent)
    by_topic = Counter(row["topic"] for row in rows if row["id"] in sent)
    for topic, n in by_topic.items():
        metrics.SENT.add(n, {metrics.SYSTEM: "kafka", metrics.DESTINATION: topic})
    attributes = {metrics.SYSTEM: "kafka", metrics.OPERATION: "send"}
    if done.send_failed and done.failure is not None:
        attributes[metrics.ERROR_TYPE] = type(done.failure).__name__
    metrics.SEND_DURATION.record(seconds, attributes)
    oldest = next((row for row in rows if row["id"] in sent), None)
    if oldest is not None:
        # The database's clock wrote created_at, this process's reads now: they agree where NTP runs.
        metrics.OUTBOX_DELAY.record(max((datetime.now(UTC) - oldest["created_at"]).total_seconds(), 0.0))


def _describe(error: BaseException) -> str:
    """An error's own words, without the class name (stored and shown beside it) and without aiokafka's
    "[Error N] Name:" prefix; the broker's description of the code when there are none."""
    text = " ".join(str(arg) for arg in error.args).strip()
    return text or getattr(error, "description", "") or type(error).__name__


def _with_time(error: BaseException, missing_for: float) -> BaseException:
    if isinstance(error, _TOPIC_ERRORS) and missing_for > 0:
        return type(error)(f"{_describe(error)}, missing for {missing_for:.0f}s")
    return error


def _shown(key: str | None) -> str:
    if key is None:
        return "(none)"
    return key if len(key) <= 200 else f"{key[:200]}… ({len(key)} characters)"
