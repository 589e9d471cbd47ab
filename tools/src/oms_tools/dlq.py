"""`oms dlq tail`: dead letters, one block each, with the headers every OMS consumer writes on them."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from oms_contracts import DEAD_LETTERS

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
    return "\n".join(rows) + "\n"


async def tail(bootstrap: str, echo: Echo, *, from_beginning: bool, follow: bool, full: bool) -> int:
    """Print dead letters as they arrive (or, without `follow`, up to the current end). Returns how many."""
    numbers = await partitions_of(bootstrap, DEAD_LETTERS.name)
    if numbers is None:
        raise ToolError(f"topic {DEAD_LETTERS.name} not found on Kafka at {bootstrap}: run `oms topics create`", FAILED)
    partitions = [TopicPartition(DEAD_LETTERS.name, p) for p in numbers]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, client_id="oms-dlq-tail")
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
