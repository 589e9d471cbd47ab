"""Batch consumption with effectively-once effects.

For each batch a subscriber receives:
1. every record is validated against its topic's contract (bytes straight into Pydantic);
2. one database transaction runs the handler and records the events' (source, id) in the inbox with the statement
   that writes the events it emits, plus dead letters for records that can never be processed, to the outbox. If the
   inbox had any of them (a redelivery), that transaction is rolled back and the batch applied claim-first: the
   inbox is written before the handler runs, and what it had seen is skipped;
3. only after the commit are the offsets committed (asynchronously: the inbox makes a redelivery harmless).

A transient failure (database or broker unreachable) is retried with backoff, never skipped. Any other failure of
a batch rolls it back and replays it one record at a time; a record that fails alone is dead-lettered with its error,
in a transaction of its own, and the partition moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

import asyncpg
from aiokafka import ConsumerRecord, TopicPartition
from opentelemetry import trace
from opentelemetry.metrics import Observation
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from pydantic import ValidationError

from oms_contracts import DEAD_LETTERS, CloudEvent, Topic
from oms_contracts.topics import topic_for

from . import faults, metrics, telemetry
from .database import Database, is_transient, together
from .outbox import APPEND, OutboxMessage, append, outbox_columns

log = logging.getLogger(__name__)

E = TypeVar("E", bound=CloudEvent)

# How long a stopping consumer waits for its offsets to be committed; then they are left for redelivery.
_FLUSH_SECONDS = 10.0
# How long applied offsets wait to be committed together with the next batches' (seconds).
_OFFSET_COMMIT_INTERVAL = 0.2
# How long one offset commit may take before it counts as failed and is tried again. aiokafka's commit can wait
# without end once it has lost the group's coordinator (seen after a broker restart in the fault suite), and while
# it waits no later offsets of the subscription are committed. A request given up on may still be applied: it went
# before the retry, and a coordinator handles one connection's requests in order, so the retry's newer offsets land
# last. Were it ever to land after them, a restart would redeliver a little more, which the inbox skips.
_OFFSET_COMMIT_TIMEOUT = 15.0

# The most of an original record's value a dead letter keeps: the broker's default message.max.bytes is 1 MB, and a
# dead letter carries its error and origin in headers beside the value. A larger one is cut, and says so.
DEAD_LETTER_MAX_BYTES = 900_000
# The most of the original's own headers a dead letter carries along.
_HEADER_BYTES = 16 * 1024
# Of a validation error with many field errors, the dead letter's header names this many.
_ERRORS_NAMED = 20

# Records that never validated have no event id of their own; their inbox key is derived from where they sit.
_UNDECODABLE = uuid.UUID("3d0bf7c6-94a4-4c52-9a0b-9a7e0e3c6a11")

# Where a record names its CloudEvent type: the outbox writes `ce-type`; the CloudEvents Kafka binding says `ce_type`.
_TYPE_HEADERS = ("ce-type", "ce_type")


@dataclass(slots=True)
class Incoming(Generic[E]):
    """A valid event as it arrived, with the span that traces its handling."""

    event: E
    record: ConsumerRecord
    span: Span = field(repr=False)

    @property
    def id(self) -> uuid.UUID:
        return self.event.id

    @property
    def key(self) -> tuple[str, uuid.UUID]:
        """What the inbox knows it by: CloudEvents identify an event by its source and id together."""
        return self.event.source, self.event.id

    @property
    def position(self) -> tuple[str, uuid.UUID]:
        return _position(self.record)


@dataclass(frozen=True, slots=True)
class Only:
    """Of the events of a type, those whose header `header` (see CloudEvent.headers) has one of `values`: a consumer
    that handles the type only for those passes the others over unread. A record without the header is decoded."""

    event: type[CloudEvent]
    header: str
    values: frozenset[str]


@dataclass(slots=True)
class Invalid:
    """A record that failed validation (or could not be decoded at all)."""

    record: ConsumerRecord
    error: Exception
    span: Span = field(repr=False)

    @property
    def id(self) -> uuid.UUID:
        return _position(self.record)[1]

    @property
    def key(self) -> tuple[str, uuid.UUID]:
        # No source can be trusted from a record that did not validate: it is known by where it sat.
        return _position(self.record)

    @property
    def position(self) -> tuple[str, uuid.UUID]:
        return _position(self.record)


def _position(record: ConsumerRecord) -> tuple[str, uuid.UUID]:
    """An inbox key for one record as it sits in its topic, with source '' (the inbox's "any source")."""
    return "", uuid.uuid5(_UNDECODABLE, f"{record.topic}:{record.partition}:{record.offset}")


Message = Incoming[Any] | Invalid


class Refused(Exception):
    """A domain decision that a message cannot be applied (an impossible transition, an unknown source).

    Raised by a handler, it dead-letters the message it was about with this error (and nothing the handler wrote
    for it is kept)."""


def published_headers(event: CloudEvent) -> list[tuple[str, str]]:
    """The headers an event is published with besides its trace context: its content type, its type (`ce-type`, what
    a consumer skips unread by) and the event's own filter headers (`CloudEvent.headers`)."""
    return [("content-type", "application/cloudevents+json"), ("ce-type", event.type), *event.headers()]


class Transaction:
    """What a handler gets: the open database transaction and the means to emit events from it."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        service: str,
        *,
        dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES,
        batch: bool = False,
    ) -> None:
        self.conn = conn
        self.service = service
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.outbox: list[OutboxMessage] = []
        self.committed: list[Callable[[], None]] = []
        # A consumer's batch (`batch`): the writes its handler leaves for the statement that ends it (`write`).
        self._batch = batch
        self.writes: list[tuple[str, Sequence[Any]]] = []

    async def pg(self) -> asyncpg.Connection:
        """The asyncpg connection of this transaction, for set-based SQL."""
        return self.conn

    async def write(self, statement: str, *args: Any) -> None:
        """A write whose outcome the handler does not read. In a consumer's batch it is left for the batch's last
        statement, which records the batch in the inbox and its events in the outbox: a round trip fewer per batch,
        each of which costs a few milliseconds on a busy box (docs/performance.md, step 41). Elsewhere (an HTTP
        write) it is sent now.

        So it is for a handler's last writes: nothing the handler sends after it sees its rows. The statement is one
        INSERT, UPDATE or DELETE without a WITH of its own, since it becomes a CTE of that last statement."""
        if self._batch:
            self.writes.append((statement, args))
        else:
            await self.conn.execute(statement, *args)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this transaction has committed, never when it rolls back: what a handler counts for
        its metrics is then counted once, however often a failed batch is replayed."""
        self.committed.append(callback)

    def has_committed(self) -> None:
        """Run the `after_commit` callbacks: the consumer calls this once the transaction has committed, and so does
        a service's own transaction outside a consumer (an HTTP write). A callback that fails is logged, never
        raised: the transaction stands."""
        for callback in self.committed:
            try:
                callback()
            except Exception:
                log.exception("a metric of %s could not be recorded (the transaction is committed)", self.service)
        self.committed.clear()

    def emit(
        self,
        event: CloudEvent,
        *,
        cause: Incoming[Any] | None = None,
        traceparent: str | None = None,
        topic: str | None = None,
    ) -> None:
        """Queue an event for the outbox. Its trace continues `traceparent` if given, else the cause's span."""
        if traceparent is None and cause is not None:
            traceparent = telemetry.traceparent_of(cause.span)
        if traceparent is None:
            traceparent = telemetry.traceparent_of(trace.get_current_span())
        headers = published_headers(event)
        if traceparent:
            headers.append(("traceparent", traceparent))
        self.outbox.append(OutboxMessage(topic or topic_for(event), event.key(), event.to_bytes(), headers))

    def dead_letter(self, message: Message, error: BaseException) -> None:
        record = message.record
        headers = _passed_on(record.headers)
        headers += [
            ("oms-original-topic", record.topic),
            ("oms-original-partition", str(record.partition)),
            ("oms-original-offset", str(record.offset)),
            ("oms-error-class", type(error).__name__),
            ("oms-error-message", _describe(error)[:4000]),
            ("oms-service", self.service),
        ]
        payload = record.value or b""
        if len(payload) > self.dead_letter_max_bytes:
            # Whole, it might be more than the broker takes: the dead letter would be parked instead of read.
            headers += [("oms-truncated", "true"), ("oms-original-size", str(len(payload)))]
            payload = payload[: self.dead_letter_max_bytes]
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        # The outbox's text and jsonb columns cannot hold NUL; a dead letter that cannot be written would stop the
        # partition for good.
        if key is not None:
            key = key.replace("\x00", "\ufffd")
        headers = [(name.replace("\x00", "\ufffd"), value.replace("\x00", "\ufffd")) for name, value in headers]
        self.outbox.append(OutboxMessage(DEAD_LETTERS.name, key, payload, headers))
        log.warning(
            "dead-lettered %s[%d]@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            _describe(error),
            extra={"order_id": _subject(message)},
        )


async def prune_inbox(database: Database, retention: timedelta, chunk: int = 10_000) -> int:
    """Delete the inbox rows older than `retention`, `chunk` rows per transaction (short locks, bounded WAL);
    return how many went. Kafka redelivers only what was not committed, within minutes: a retention of days leaves
    the inbox nothing to forget that it could still need."""
    pruned = 0
    while True:
        async with database.transaction() as pg:
            gone = await pg.fetchval(
                """
                WITH gone AS (
                    DELETE FROM inbox WHERE ctid = ANY(ARRAY(
                        SELECT ctid FROM inbox WHERE received_at < now() - $1::interval LIMIT $2
                    ))
                    RETURNING 1
                )
                SELECT count(*) FROM gone
                """,
                retention,
                chunk,
            )
        pruned += gone
        if gone < chunk:
            return pruned


# Records events in the inbox, each (source, id) once, for the consumer $1; the events are arrays $2 (sources) and $3
# (ids). A row with source '' (written before the inbox kept sources, or by a service not upgraded yet) stands for the
# id from any source, so an event applied before the upgrade is not applied again when redelivered.
_CLAIM = """
    INSERT INTO inbox (consumer, source, event_id)
    SELECT $1, u.source, u.event_id FROM unnest($2::text[], $3::uuid[]) AS u(source, event_id)
    WHERE NOT EXISTS (SELECT 1 FROM inbox o WHERE o.consumer = $1 AND o.source = '' AND o.event_id = u.event_id)
    ON CONFLICT DO NOTHING"""
_CLAIMED = f"{_CLAIM} RETURNING 1"


_SEEN = """
    SELECT EXISTS (
        SELECT 1 FROM unnest($2::text[], $3::uuid[]) AS u(source, event_id) JOIN inbox o
            ON o.consumer = $1 AND o.source IN (u.source, '') AND o.event_id = u.event_id
    )"""


class _SeenBefore(Exception):
    """Some of a batch applied as unseen had been seen: its transaction is rolled back."""


def _held(tx: Transaction) -> tuple[tuple[str, ...], list[Any]]:
    """The outbox append and the writes the handler left (`Transaction.write`): their statements, and their
    arguments in that order."""
    statements = (APPEND, *(w for w, _ in tx.writes))
    return statements, [*outbox_columns(tx.outbox), *(a for _, args in tx.writes for a in args)]


async def _claim_and_end(pg, consumer: str, keys: list[tuple[str, uuid.UUID]], tx: Transaction) -> int:
    """Record events in the inbox, write the batch's messages to the outbox and send the writes its handler left,
    in one statement; return how many of the events were not there before."""
    statements, args = _held(tx)
    statement = together((_CLAIMED, *statements), "SELECT count(*) FROM w0")
    return await pg.fetchval(statement, consumer, [k[0] for k in keys], [k[1] for k in keys], *args)


async def _end(pg, tx: Transaction) -> None:
    """Write the batch's messages to the outbox and send the writes its handler left, in one statement (a batch
    claimed in the inbox before it was handled)."""
    if not tx.writes:
        await append(pg, tx.outbox)
        return
    statements, args = _held(tx)
    await pg.execute(together(statements), *args)


Handler = Callable[[Transaction, list[Incoming[Any]]], Awaitable[None]]
InvalidHandler = Callable[[Transaction, Invalid], Awaitable[bool]]


def _passed_on(headers: telemetry.Headers | None) -> list[tuple[str, str]]:
    """The original's headers a dead letter carries, so that a replay (`oms dlq replay`) passes them on: the trace
    headers when W3C-valid, any other header whose value is text; never the original's own oms-* headers (the dead
    letter's are the runtime's), nor a null or binary value (the outbox stores headers as text), and at most
    _HEADER_BYTES of them."""
    kept = list(telemetry.trace_headers(headers).items())
    room = _HEADER_BYTES
    for name, value in headers or ():
        if name in telemetry.TRACE_HEADERS or name.startswith("oms-") or value is None:
            continue
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            continue
        room -= len(name) + len(value)
        if room < 0:
            break
        kept.append((name, text))
    return kept


def _describe(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        parts = []
        for e in error.errors(include_url=False, include_input=False)[:_ERRORS_NAMED]:
            where = ".".join(str(p)[:200] for p in e["loc"] if not str(p).startswith("oms."))
            parts.append(f"{where}: {e['msg']}" if where else e["msg"])
        if error.error_count() > _ERRORS_NAMED:
            parts.append(f"and {error.error_count() - _ERRORS_NAMED} more")
        return f"{error.error_count()} validation error(s): " + "; ".join(parts)
    return str(error) or type(error).__name__


def _subject(message: Message) -> str | None:
    return message.event.subject if isinstance(message, Incoming) else None


class BatchConsumer(metrics.GaugeSource):
    """One subscription of one service: a topic, a consumer group, a handler."""

    def __init__(
        self,
        *,
        name: str,
        topic: Topic,
        handler: Handler,
        database: Database,
        service: str,
        on_commit: Callable[[bool], None],
        on_invalid: InvalidHandler | None = None,
        dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES,
        handles: Iterable[type[CloudEvent]] | None = None,
        only: Iterable[Only] = (),
    ) -> None:
        self.name = name
        # The topic's types this consumer does not handle, as their headers spell them: such a record is skipped
        # before it is decoded. Only a type the topic's contract lists counts; a record without the header, or with
        # a type unknown to the topic, is decoded (and dead-lettered when invalid) as always.
        handled = None if handles is None else {event.TYPE for event in handles}
        self.skipped = frozenset(t.encode() for t in topic.types if handled is not None and t not in handled)
        # Per type, the header and the values of it whose records are decoded; others of that type are skipped.
        self.only = {o.event.TYPE.encode(): (o.header, frozenset(v.encode() for v in o.values)) for o in only}
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.topic = topic
        self.handler = handler
        self.database = database
        self.service = service
        self.on_commit = on_commit
        self.on_invalid = on_invalid
        self.stopping = False
        self._pending_offsets: dict[TopicPartition, int] = {}
        self._commit_task: asyncio.Task[None] | None = None
        self.consumer: Any = None
        # The framework's subscriber, whose Kafka consumer the lag gauge asks before the first batch arrives.
        self.subscription: Any = None
        self._attributes = {metrics.SYSTEM: "kafka", metrics.DESTINATION: topic.name, metrics.GROUP: name}
        # What became of the records of the batch being applied, counted from committed transactions only.
        self._outcomes: Counter[str] = Counter()
        # Whether a transaction of the batch being applied wrote to the outbox, once it has committed.
        self._appended = False
        # Per partition: the next offset this group applies (after each commit), the partition's end offset and the
        # consumer's position as the last refresh found them. The lag gauge reads them; nothing here asks Kafka.
        self._applied: dict[TopicPartition, int] = {}
        self._end: dict[TopicPartition, int] = {}
        self._position: dict[TopicPartition, int] = {}
        metrics.observe(self)
        # Every outcome and the errors start at 0, so that Prometheus's increase() and rate() see the first dead
        # letter or error (a series that appears at 1 has no increase), and an alert on them has a series to read.
        for outcome in ("applied", "duplicate", "dead_lettered", "skipped"):
            metrics.MESSAGES.add(0, {**self._attributes, "oms.outcome": outcome})
        metrics.ERRORS.add(0, self._attributes)
        metrics.COMMIT_FAILURES.add(0, self._attributes)

    async def consume(self, records: Sequence[ConsumerRecord], consumer: Any) -> None:
        if not records:
            return
        self.consumer = consumer
        started = time.perf_counter()
        self._outcomes.clear()
        self._appended = False
        messages: list[Message] = []
        try:
            # Inside the try: whatever a record holds, an error here is a redelivery, never a batch that the
            # framework logs and drops while the next offset commit moves past it.
            messages.extend(self._open(record) for record in records if not self._skips(record))
            if messages:
                with telemetry.tracer().start_as_current_span(
                    f"process {self.topic.name}",
                    kind=SpanKind.CONSUMER,
                    # The messages of sampled traces: the batch is recorded in their traces (the sampler's rule);
                    # a link to a trace nobody records would only cost its making and its export.
                    links=[
                        Link(context) for m in messages if (context := m.span.get_span_context()).trace_flags.sampled
                    ],
                    attributes={
                        **self._attributes,
                        "messaging.operation.type": "process",
                        "messaging.batch.message_count": len(messages),
                    },
                ):
                    await self._apply_batch(messages)
        except asyncio.CancelledError:
            self._rewind(records)
            raise
        except Exception as error:
            # Not even dead-lettering could absorb it: rewind so the batch is fetched again rather than skipped by
            # the next offset commit, and slow down so a persistent fault does not spin.
            self._rewind(records)
            self._measure(records, started, error)
            log.critical("batch of %d on %s not applied, will be redelivered: %r", len(records), self.name, error)
            await asyncio.sleep(1.0)
            return
        finally:
            for m in messages:
                m.span.end()
        # Records of types this consumer does not handle, passed over unread (`handles`).
        self._outcomes["skipped"] += len(records) - len(messages)
        self._measure(records, started)
        if faults.ARMED:
            # The batch's transaction has committed; its offsets are not committed yet.
            faults.reach("consumer.after_commit")
        if messages:
            # Whether the batch wrote to the outbox: the relay is woken only then. Most batches of some topics write
            # none (stock levels in routing, plans in notifications), and a pass that finds nothing still costs a
            # transaction: three round trips.
            self.on_commit(self._appended)
        # Skipped records' offsets too: they are done with.
        self._commit(records)
        if self.stopping:
            # The framework stops the Kafka consumer once this batch returns: commit its offsets while it can.
            await self._flush()

    def _measure(self, records: Sequence[ConsumerRecord], started: float, error: BaseException | None = None) -> None:
        """The batch's metrics, one call per instrument (and per outcome), whatever its size."""
        attributes = (
            self._attributes if error is None else {**self._attributes, metrics.ERROR_TYPE: type(error).__name__}
        )
        metrics.PROCESS_DURATION.record(time.perf_counter() - started, attributes)
        metrics.CONSUMED.add(len(records), self._attributes)
        metrics.BATCH_SIZE.record(len(records), self._attributes)
        for outcome, n in self._outcomes.items():
            metrics.MESSAGES.add(n, {**self._attributes, "oms.outcome": outcome})

    def _failed(self, error: BaseException, *, transient: bool) -> None:
        metrics.ERRORS.add(
            1, {**self._attributes, metrics.ERROR_TYPE: type(error).__name__, "oms.transient": str(transient).lower()}
        )

    def lag(self) -> Iterable[Observation]:
        """Per assigned partition, the records not applied yet; partitions without a known position are left out."""
        consumer = self.consumer or getattr(self.subscription, "consumer", None)
        if consumer is None:
            return
        for tp in consumer.assignment():
            end = max(consumer.highwater(tp) or 0, self._end.get(tp, 0))
            applied = self._applied.get(tp, self._position.get(tp))
            if applied is None or not end:
                continue
            yield Observation(max(end - applied, 0), {**self._attributes, metrics.PARTITION: str(tp.partition)})

    async def refresh(self) -> None:
        """Ask Kafka for the end offsets of the assigned partitions (the fetcher's highwater stops moving while a
        consumer is stuck) and, for partitions no batch of this process came from yet, where the group stands: its
        committed offset, else the partition's beginning (where `earliest` starts it). Not the fetch position: records
        fetched but not applied are lag. Once per metrics refresh."""
        consumer = self.consumer or getattr(self.subscription, "consumer", None)
        if consumer is None:
            return
        assigned = consumer.assignment()
        # A partition that moved to another instance is that instance's to report.
        self._applied = {tp: offset for tp, offset in self._applied.items() if tp in assigned}
        self._position = {tp: offset for tp, offset in self._position.items() if tp in assigned}
        if not assigned:
            self._end = {}
            return
        self._end = await asyncio.wait_for(consumer.end_offsets(list(assigned)), 5.0)
        unknown = [tp for tp in assigned if tp not in self._applied]
        if not unknown:
            return
        beginnings = await asyncio.wait_for(consumer.beginning_offsets(unknown), 5.0)
        for tp in unknown:
            committed = await asyncio.wait_for(consumer.committed(tp), 5.0)
            self._position[tp] = committed if committed is not None else beginnings[tp]

    def _rewind(self, records: Sequence[ConsumerRecord]) -> None:
        first: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            first[tp] = min(first.get(tp, record.offset), record.offset)
        for tp, offset in first.items():
            if tp in self.consumer.assignment():
                self.consumer.seek(tp, offset)

    def _skips(self, record: ConsumerRecord) -> bool:
        """Whether the record's type header names a type of the topic this consumer does not handle, or a type it
        handles `only` with other values of a header than the record's: it is not decoded, traced or recorded in the
        inbox, only its offset is committed. A record without the headers is decoded."""
        if not self.skipped and not self.only:
            return False
        headers = record.headers or ()
        for name, value in headers:
            if name in _TYPE_HEADERS:
                if value in self.skipped:
                    return True
                wanted = self.only.get(value)
                if wanted is None:
                    return False
                header, values = wanted
                return any(other == header and seen not in values for other, seen in headers)
        return False

    def _open(self, record: ConsumerRecord) -> Message:
        span = telemetry.span_for(record.headers, f"process {record.topic}", SpanKind.CONSUMER)
        # Most spans are not recorded (sampling): their attributes are not even made.
        recording = span.is_recording()
        if recording:
            span.set_attributes(
                {
                    **self._attributes,
                    "messaging.operation.type": "process",
                    metrics.PARTITION: str(record.partition),
                    "messaging.kafka.offset": record.offset,
                }
            )
        try:
            event = self.topic.parse(record.value or b"")
        except (ValidationError, ValueError) as error:
            span.set_status(Status(StatusCode.ERROR, "invalid message"))
            return Invalid(record, error, span)
        if recording:
            span.set_attribute("cloudevents.event_type", event.type)
            span.set_attribute("cloudevents.event_id", str(event.id))
            if event.subject:
                span.set_attribute("cloudevents.event_subject", event.subject)
        return Incoming(event, record, span)

    async def _apply_batch(self, messages: list[Message]) -> None:
        try:
            await self._retrying(lambda: self._apply(messages))
            return
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if is_transient(error):
                # Only a stopping consumer gives up on a transient failure: leave the batch for redelivery.
                raise
            self._failed(error, transient=False)
            if len(messages) == 1:
                await self._retrying(lambda e=error: self._apply(messages, poison=e))
                return
            log.warning("batch of %d failed (%r); replaying one message at a time", len(messages), error)
        for message in messages:
            try:
                await self._retrying(lambda m=message: self._apply([m]))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if is_transient(error):
                    raise
                self._failed(error, transient=False)
                await self._retrying(lambda m=message, e=error: self._apply([m], poison=e))

    async def _retrying(self, attempt: Callable[[], Awaitable[None]]) -> None:
        delay = 0.05
        while True:
            try:
                await attempt()
                return
            except Exception as error:
                if not is_transient(error) or self.stopping:
                    raise
                self._failed(error, transient=True)
                log.warning("transient failure in %s, retrying in %.2fs: %r", self.name, delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Transaction]:
        """One attempt at a batch: a database transaction, traced."""
        with telemetry.tracer().start_as_current_span(
            "transaction", kind=SpanKind.CLIENT, attributes={"db.system.name": "postgresql"}
        ):
            async with self.database.transaction() as conn:
                yield Transaction(conn, self.service, dead_letter_max_bytes=self.dead_letter_max_bytes, batch=True)

    async def _apply(self, messages: list[Message], poison: BaseException | None = None) -> None:
        if poison is None and await self._apply_unseen(messages):
            return
        outcomes: Counter[str] = Counter()
        async with self._transaction() as tx:
            # A dead letter is recorded by the record's position, not its event: a redelivery of that record is
            # not dead-lettered twice, while a replay of the dead letter (a new record, the same event) is applied.
            fresh = await self._claim(tx, messages, by_position=poison is not None)
            outcomes["duplicate"] = len(messages) - len(fresh)
            if poison is not None:
                for message in fresh:
                    message.span.record_exception(poison)
                    message.span.set_status(Status(StatusCode.ERROR, type(poison).__name__))
                    tx.dead_letter(message, poison)
                outcomes["dead_lettered"] += len(fresh)
            else:
                await self._handle(tx, fresh, outcomes)
            await _end(tx.conn, tx)
        self._committed(tx, outcomes)

    async def _apply_unseen(self, messages: list[Message]) -> bool:
        """Apply the batch as if none of it had been seen before, the usual case, and record it in the inbox at the
        end, in the statement that writes the outbox and the handler's last writes: a round trip fewer per batch than
        claiming it first. If any of it had been seen (a redelivery, the same event twice in the batch), roll back and
        return False: the caller then claims first and skips what was seen. So does a failure when some of the batch
        had been seen (the handler may have refused a duplicate: it is skipped, never dead-lettered); any other
        failure is raised, to be retried (transient) or replayed one message at a time, as a claimed batch's would
        be."""
        outcomes: Counter[str] = Counter()
        try:
            async with self._transaction() as tx:
                await self._handle(tx, messages, outcomes)
                if await _claim_and_end(tx.conn, self.name, [m.key for m in messages], tx) < len(messages):
                    raise _SeenBefore
        except _SeenBefore:
            return False
        except Exception as error:
            if is_transient(error) or not await self._any_seen(messages):
                raise
            return False
        self._committed(tx, outcomes)
        return True

    def _committed(self, tx: Transaction, outcomes: Counter[str]) -> None:
        """A transaction of the batch has committed: only now do its records count, and the handler's own metrics
        with them; and whether it wrote to the outbox decides whether the relay is woken."""
        self._outcomes.update(outcomes)
        self._appended |= bool(tx.outbox)
        tx.has_committed()

    async def _any_seen(self, messages: list[Message]) -> bool:
        """Whether the inbox has any of these events, or the batch holds one twice."""
        keys = [m.key for m in messages]
        if len(set(keys)) < len(keys):
            return True
        async with self.database.autocommit() as pg:
            return await pg.fetchval(_SEEN, self.name, [k[0] for k in keys], [k[1] for k in keys])

    async def _handle(self, tx: Transaction, fresh: list[Message], outcomes: Counter[str]) -> None:
        """Apply messages not seen before: the valid ones through the handler, the invalid ones through `on_invalid`
        or to the dead letters."""
        valid: list[Incoming[Any]] = []
        for message in fresh:
            if isinstance(message, Incoming):
                valid.append(message)
            elif self.on_invalid and await self.on_invalid(tx, message):
                outcomes["applied"] += 1
            else:
                tx.dead_letter(message, message.error)
                outcomes["dead_lettered"] += 1
        if valid:
            # Any exception, Refused included, rolls back the whole transaction; the batch is then replayed one
            # message at a time and the culprit dead-lettered in a transaction of its own.
            await self.handler(tx, valid)
        outcomes["applied"] += len(valid)

    async def _claim(self, tx: Transaction, messages: list[Message], *, by_position: bool = False) -> list[Message]:
        """Record the batch in the inbox; return the messages not seen before, each (source, id) once."""
        pg = await tx.pg()
        keys = [m.position if by_position else m.key for m in messages]
        rows = await pg.fetch(
            f"{_CLAIM} RETURNING source, event_id", self.name, [key[0] for key in keys], [key[1] for key in keys]
        )
        new = {(row["source"], row["event_id"]) for row in rows}
        fresh = []
        for message, key in zip(messages, keys, strict=True):
            if key in new:
                new.discard(key)
                fresh.append(message)
            else:
                message.span.set_attribute("oms.duplicate", True)
        return fresh

    def _commit(self, records: Sequence[ConsumerRecord]) -> None:
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            self._pending_offsets[tp] = max(self._pending_offsets.get(tp, 0), record.offset + 1)
            self._applied[tp] = max(self._applied.get(tp, 0), record.offset + 1)
        if self._commit_task is None or self._commit_task.done():
            self._commit_task = asyncio.create_task(self._flush_offsets())

    async def _flush_offsets(self) -> None:
        if not self.stopping:
            # Offsets of the batches applied meanwhile go in the same request: one commit per subscription per
            # interval instead of one per batch (each is a write on the broker). A crash in between redelivers a
            # little more, which the inbox skips.
            await asyncio.sleep(_OFFSET_COMMIT_INTERVAL)
        delay = 0.05
        while self._pending_offsets:
            offsets, self._pending_offsets = self._pending_offsets, {}
            # A revoked partition's offsets are its new owner's business; it redelivers from its last commit.
            assigned = self.consumer.assignment()
            offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
            if not offsets:
                continue
            try:
                await asyncio.wait_for(self.consumer.commit(offsets), _OFFSET_COMMIT_TIMEOUT)
                delay = 0.05
            except Exception as error:
                # Kept, merged with what later batches add: dropped, they would leave the group's position behind
                # until the next batch of that partition, and a restart would redeliver everything since.
                for tp, offset in offsets.items():
                    self._pending_offsets[tp] = max(self._pending_offsets.get(tp, 0), offset)
                metrics.COMMIT_FAILURES.add(1, {**self._attributes, metrics.ERROR_TYPE: type(error).__name__})
                timed_out = isinstance(error, TimeoutError)
                reason = f"no answer within {_OFFSET_COMMIT_TIMEOUT:g}s" if timed_out else repr(error)
                log.warning("offset commit failed for %s, retrying in %.2fs: %s", self.name, delay, reason)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _flush(self) -> None:
        if self._commit_task is None:
            return
        try:
            await asyncio.wait_for(self._commit_task, _FLUSH_SECONDS)
        except Exception as error:
            log.warning(
                "offsets of %s not committed at shutdown (%r); their records will be redelivered, the inbox skips them",
                self.name,
                error,
            )

    async def close(self) -> None:
        """Commit what is applied before the Kafka consumer stops (call it before stopping the broker)."""
        self.stopping = True
        await self._flush()
