"""Records that wait for their source: a receipt, count, expected receipt or return for a source inventory has not
heard of yet. The network event that announces a source travels on another topic and may simply come later (seen
from outside: `make run`'s demo loader raced it), so such a record is held (`store.held_receipts`) instead of
refused, applied by the network's consumer when the source arrives, or dead-lettered after the grace period.

A held record is kept as it came (topic, partition, offset, key, bytes, text headers): applying it parses it again,
and its dead letter carries the original bytes and origin like any other. Its inbox row was written when it was
held, so neither a redelivery holds it twice nor does anything apply it twice; a dead letter moves that row from the
event to the record's position, as the runtime records dead letters, so that a replay of the dead letter after a fix
is applied."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from aiokafka import ConsumerRecord
from opentelemetry.trace import SpanKind

from oms_contracts.topics import INVENTORY_RECEIPTS, ORDER_EVENTS
from oms_runtime import Incoming, Refused, Service, Transaction, telemetry
from oms_runtime.outbox import append

from . import store

log = logging.getLogger(__name__)

# The topics whose records may wait for their source.
TOPICS = {topic.name: topic for topic in (INVENTORY_RECEIPTS, ORDER_EVENTS)}

# How many expired records one transaction dead-letters.
_EXPIRE_AT_ONCE = 500


def record_of(message: Incoming[Any], source_code: str) -> store.Held:
    """What is kept of a message that waits for `source_code`."""
    r = message.record
    return store.Held(
        id=None,
        source_code=source_code,
        topic=r.topic,
        partition=r.partition,
        offset=r.offset,
        key=r.key.decode("utf-8", "replace").replace("\x00", "\ufffd") if r.key is not None else None,
        value=r.value or b"",
        headers=_text_headers(r.headers),
        event_source=message.event.source,
        event_id=message.event.id,
    )


def _text_headers(headers: telemetry.Headers | None) -> list[tuple[str, str]]:
    # The jsonb column holds text: a binary or null header value (never part of the contract) is not kept.
    kept = []
    for name, value in headers or ():
        if value is None:
            continue
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if "\x00" not in name and "\x00" not in text:
            kept.append((name, text))
    return kept


def incoming(held: store.Held) -> Incoming[Any]:
    """The held record as the consumer had it, in a span of its own that continues the record's trace (end it)."""
    key = held.key.encode() if held.key is not None else None
    headers = [(name, value.encode()) for name, value in held.headers]
    record = ConsumerRecord(
        topic=held.topic,
        partition=held.partition,
        offset=held.offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=held.value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(held.value),
        headers=headers,
    )
    span = telemetry.tracer().start_span(
        f"let go {held.topic}",
        context=telemetry.extract(headers),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": held.topic,
            "messaging.kafka.partition": held.partition,
            "messaging.kafka.offset": held.offset,
            "oms.held_for": held.source_code,
        },
    )
    return Incoming(TOPICS[held.topic].parse(held.value), record, span)


async def dead_letter(tx: Transaction, messages: Sequence[Incoming[Any]], reasons: Sequence[str]) -> None:
    """Dead-letter held records, each with its reason, in the caller's transaction. A record dead-lettered before
    (held again after a redelivery) is not dead-lettered twice."""
    if not messages:
        return
    pg = await tx.pg()
    first_time = await store.record_dead_letters(
        pg,
        # The runtime's inbox keeps each consumer group's events apart: `oms-{service}.{topic}` (Service.consumer).
        [f"oms-{tx.service}.{m.record.topic}" for m in messages],
        [m.key for m in messages],
        [m.position[1] for m in messages],
    )
    for message, reason, new in zip(messages, reasons, first_time, strict=True):
        if new:
            tx.dead_letter(message, Refused(reason))
        else:
            log.info("held %s dead-lettered before; not again", message.event.type)


async def dead_letter_expired(service: Service, grace: timedelta, now: datetime) -> int:
    """Dead-letter records held since before `now - grace` (at most a chunk, in one transaction); returns how many
    went."""
    async with service.database.transaction() as conn:
        tx = Transaction(conn, service.name, dead_letter_max_bytes=service.settings.dead_letter_max_bytes)
        expired = await store.take_expired(await tx.pg(), now - grace, _EXPIRE_AT_ONCE)
        messages = [incoming(held) for held in expired]
        try:
            reasons = [_expired(m, held.source_code, grace) for m, held in zip(messages, expired, strict=True)]
            await dead_letter(tx, messages, reasons)
        finally:
            for m in messages:
                m.span.end()
        await append(conn, tx.outbox)
    if tx.outbox:
        service.relay.wake()
    return len(expired)


def what(message: Incoming[Any]) -> str:
    """What a held record is, in an operator's words."""
    return {
        "oms.inventory.stock_received.v1": "receipts",
        "oms.inventory.stock_counted.v1": "counts",
        "oms.inventory.receipt_expected.v1": "expected receipts",
        "oms.order.lines_returned.v1": "returned units",
    }.get(message.event.type, "receipts")


def _expired(message: Incoming[Any], code: str, grace: timedelta) -> str:
    return (
        f"unknown source {code!r}: {what(message)} are accepted only for sources in the network "
        f"(oms.routing.network.v1); held {_duration(grace)} for the source to be announced there, and it was not"
    )


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds % 60 == 0 and seconds:
        return f"{seconds // 60} min"
    return f"{span.total_seconds():g} s"
