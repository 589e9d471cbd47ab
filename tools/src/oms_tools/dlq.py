"""`oms dlq tail` and `oms dlq replay`: dead letters, one block each, with the headers every OMS consumer writes on
them; and chosen dead letters published again to the topic they came from, once the cause is fixed."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from oms_contracts import DEAD_LETTERS
from oms_runtime.kafka import Kafka, bootstrap_of, client_options

from .errors import FAILED, ToolError
from .kafka import partitions_of

Echo = Callable[..., None]

_PAYLOAD_CHARS = 600
_INDENT = " " * 12


def _field(name: str, value: str) -> str:
    lines = value.splitlines() or [""]
    return "\n".join([f"  {name:<10}{lines[0]}", *(f"{_INDENT}{line}" for line in lines[1:])])


def format_dead_letter(record: ConsumerRecord, *, full: bool = False) -> str:
    headers = {name: value.decode("utf-8", "replace") for name, value in record.headers or ()}
    when = datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(timespec="milliseconds")
    original = (
        f"{headers.get('oms-original-topic', '?')}[{headers.get('oms-original-partition', '?')}]"
        f"@{headers.get('oms-original-offset', '?')}"
    )
    error = headers.get("oms-error-class", "?")
    if message := headers.get("oms-error-message"):
        error += f": {message}"
    payload = (record.value or b"").decode("utf-8", "replace")
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if isinstance(body, dict):
        event = f"{body.get('type', '?')} id {body.get('id', '?')} subject {body.get('subject', '-')}"
    else:
        event = "(not a CloudEvent)"
    if not full and len(payload) > _PAYLOAD_CHARS:
        payload = f"{payload[:_PAYLOAD_CHARS]}… ({len(record.value or b'')} bytes; --full shows all)"
    rows = [
        f"── {record.topic}[{record.partition}]@{record.offset}  {when.replace('+00:00', 'Z')}",
        _field("original", original),
        _field("service", headers.get("oms-service", "?")),
        _field("error", error),
        _field("key", record.key.decode("utf-8", "replace") if record.key is not None else "-"),
        _field("event", event),
    ]
    if traceparent := headers.get("traceparent"):
        rows.append(_field("trace", traceparent))
    if headers.get("oms-truncated") == "true":
        kept = len(record.value or b"")
        rows.append(_field("truncated", f"kept the first {kept} of {headers.get('oms-original-size', '?')} bytes"))
    rows.append(_field("payload", payload or "(empty)"))
    # JSON may escape a lone surrogate ("\ud800"), which no terminal encoding can print: shown as "?".
    return ("\n".join(rows) + "\n").encode("utf-8", "replace").decode("utf-8")


async def tail(kafka: Kafka, echo: Echo, *, from_beginning: bool, follow: bool, full: bool) -> int:
    """Print dead letters as they arrive (or, without `follow`, up to the current end). Returns how many."""
    bootstrap = bootstrap_of(kafka)
    numbers = await partitions_of(kafka, DEAD_LETTERS.name)
    if numbers is None:
        raise ToolError(f"topic {DEAD_LETTERS.name} not found on Kafka at {bootstrap}: run `oms topics create`", FAILED)
    partitions = [TopicPartition(DEAD_LETTERS.name, p) for p in numbers]
    consumer = AIOKafkaConsumer(**client_options(kafka), group_id=None, client_id="oms-dlq-tail")
    try:
        await consumer.start()
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        end = None if follow else await consumer.end_offsets(partitions)
        if follow:
            echo(f"following {DEAD_LETTERS.name} on {bootstrap}; Ctrl-C to stop", err=True)
        count = 0
        while end is None or any([await consumer.position(tp) < end[tp] for tp in partitions]):
            batch = await consumer.getmany(timeout_ms=1000)
            for _, records in sorted(batch.items()):
                for record in records:
                    echo(format_dead_letter(record, full=full))
                    count += 1
        return count
    finally:
        await consumer.stop()


# oms dlq replay ------------------------------------------------------------------------------------------------------

REPLAYED_FROM = "oms-replayed-from"


@dataclass(frozen=True)
class Selection:
    """Which dead letters to replay: at given positions of oms.dlq.v1, and/or those matching every filter given."""

    at: frozenset[tuple[int, int]] = frozenset()
    original_topic: str | None = None
    error_class: str | None = None
    service: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def chooses(self, record: ConsumerRecord) -> bool:
        headers = _text_headers(record)
        when = datetime.fromtimestamp(record.timestamp / 1000, UTC)
        return (
            (not self.at or (record.partition, record.offset) in self.at)
            and self.original_topic in (None, headers.get("oms-original-topic"))
            and self.error_class in (None, headers.get("oms-error-class"))
            and self.service in (None, headers.get("oms-service"))
            and (self.since is None or when >= self.since)
            and (self.until is None or when < self.until)
        )


def _text_headers(record: ConsumerRecord) -> dict[str, str]:
    return {name: (value or b"").decode("utf-8", "replace") for name, value in record.headers or ()}


def why_not_replayable(record: ConsumerRecord) -> str | None:
    headers = _text_headers(record)
    if "oms-original-topic" not in headers:
        return "not a dead letter of an OMS service (no oms-original-topic header)"
    if headers.get("oms-truncated") == "true":
        return (
            f"its value was cut to {len(record.value or b'')} of {headers.get('oms-original-size', '?')} bytes: "
            "the original is not in the dead letter"
        )
    return None


def replayed_headers(record: ConsumerRecord) -> list[tuple[str, bytes]]:
    """The original's own headers as the dead letter kept them (everything but the oms-* headers the runtime added),
    and one that says which dead letter this is a replay of."""
    kept = [(name, value or b"") for name, value in record.headers or () if not name.startswith("oms-")]
    return [*kept, (REPLAYED_FROM, f"{record.topic}[{record.partition}]@{record.offset}".encode())]


async def chosen(kafka: Kafka, selection: Selection) -> list[ConsumerRecord]:
    """The dead letters the selection chooses, from the first the topic keeps (or `since`) to where it ends now,
    in order of partition and offset."""
    numbers = await partitions_of(kafka, DEAD_LETTERS.name)
    if numbers is None:
        raise ToolError(
            f"topic {DEAD_LETTERS.name} not found on Kafka at {bootstrap_of(kafka)}: run `oms topics create`", FAILED
        )
    if selection.at:
        numbers = [p for p in numbers if any(p == partition for partition, _ in selection.at)]
    partitions = [TopicPartition(DEAD_LETTERS.name, p) for p in numbers]
    consumer = AIOKafkaConsumer(
        **client_options(kafka), group_id=None, enable_auto_commit=False, client_id="oms-dlq-replay"
    )
    found: list[ConsumerRecord] = []
    try:
        await consumer.start()
        if not partitions:
            return found
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        start = await consumer.beginning_offsets(partitions)
        if selection.since is not None:
            at_time = await consumer.offsets_for_times(
                {tp: int(selection.since.timestamp() * 1000) for tp in partitions}
            )
            start = {tp: at_time[tp].offset if at_time[tp] is not None else end[tp] for tp in partitions}
        for tp in partitions:
            wanted = [offset for partition, offset in selection.at if partition == tp.partition]
            consumer.seek(tp, max([start[tp], *([min(wanted)] if wanted else [])]))
        while any([await consumer.position(tp) < end[tp] for tp in partitions]):
            batch = await consumer.getmany(*partitions, timeout_ms=1000)
            for tp, records in batch.items():
                found += [r for r in records if r.offset < end[tp] and selection.chooses(r)]
    finally:
        await consumer.stop()
    return sorted(found, key=lambda r: (r.partition, r.offset))


def describe(record: ConsumerRecord) -> str:
    headers = _text_headers(record)
    try:
        body = json.loads(record.value or b"")
    except ValueError:
        body = None
    event = body.get("type", "?") if isinstance(body, dict) else "(not a CloudEvent)"
    key = record.key.decode("utf-8", "replace") if record.key is not None else "-"
    return (
        f"{record.topic}[{record.partition}]@{record.offset} → {headers.get('oms-original-topic', '?')} key {key}, "
        f"{event}, {headers.get('oms-error-class', '?')} at {headers.get('oms-service', '?')}"
    )
