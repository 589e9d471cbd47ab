"""Kafka for the `oms` command: the OMS producer settings, topic checks, headers, and errors a person can read."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError

from oms_contracts import CONTENT_TYPE, CloudEvent
from oms_runtime.outbox import kafka_producer

from .errors import FAILED, UNREACHABLE, ToolError

Headers = list[tuple[str, bytes]]

TRACE_HEADERS = ("traceparent", "tracestate")


@contextlib.asynccontextmanager
async def talking_to(bootstrap: str) -> AsyncIterator[None]:
    """Turn the broker's failures into one line: `cannot reach Kafka at X`, a timeout, or the broker's error."""
    try:
        yield
    except ToolError:
        raise
    except (KafkaConnectionError, NodeNotReadyError, ConnectionError):
        raise ToolError(f"cannot reach Kafka at {bootstrap}", UNREACHABLE) from None
    except (KafkaTimeoutError, RequestTimedOutError, TimeoutError) as error:
        raise ToolError(f"timed out waiting for Kafka at {bootstrap} ({_short(error)})", UNREACHABLE) from None
    except KafkaError as error:
        raise ToolError(f"Kafka at {bootstrap} answered with an error: {_short(error)}", FAILED) from None
    except OSError as error:
        raise ToolError(f"cannot reach Kafka at {bootstrap} ({_short(error)})", UNREACHABLE) from None


def _short(error: BaseException) -> str:
    text = str(error).strip()
    name = type(error).__name__
    if not text or text == name:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


@contextlib.asynccontextmanager
async def admin(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="oms-cli", request_timeout_ms=15_000)
    try:
        await client.start()
        yield client
    finally:
        await client.close()


async def existing_topics(bootstrap: str) -> set[str]:
    async with admin(bootstrap) as client:
        return set(await client.list_topics())


async def partitions_of(bootstrap: str, topic: str) -> list[int] | None:
    """A topic's partition numbers, or None when the topic does not exist."""
    async with admin(bootstrap) as client:
        [described] = await client.describe_topics([topic])
    if described["error_code"] != 0 or not described["partitions"]:
        return None
    return sorted(p["partition"] for p in described["partitions"])


async def require_topics(bootstrap: str, names: Iterable[str], hint: str) -> None:
    """Fail clearly when a topic is missing: the broker never creates OMS topics by itself, and a send to a missing
    topic would only time out."""
    missing = sorted(set(names) - await existing_topics(bootstrap))
    if missing:
        which = "topic" if len(missing) == 1 else "topics"
        raise ToolError(f"{which} {', '.join(missing)} not found on Kafka at {bootstrap}: {hint}", FAILED)


@contextlib.asynccontextmanager
async def producer(bootstrap: str, client_id: str) -> AsyncIterator[AIOKafkaProducer]:
    """A producer with the settings the OMS publishes with (idempotent, acks=all)."""
    made = kafka_producer(bootstrap, client_id)
    try:
        await made.start()
        yield made
    finally:
        await made.stop()


def new_traceparent(trace_id: str | None = None) -> str:
    """A W3C trace context with a new span id (in a new trace unless `trace_id` is given), sampled: what a channel
    that starts a trace sends."""
    return f"00-{trace_id or secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def trace_id_of(traceparent: str) -> str:
    return traceparent.split("-")[1]


def event_headers(event: CloudEvent, trace: Iterable[tuple[str, bytes]] = ()) -> Headers:
    """The headers an OMS service puts on an event, plus the trace context to carry."""
    return [("content-type", CONTENT_TYPE.encode()), ("ce-type", event.type.encode()), *trace]


def trace_headers(headers: Iterable[tuple[str, bytes]] | None) -> Headers:
    return [(name, value) for name, value in headers or () if name in TRACE_HEADERS]


async def send(
    client: AIOKafkaProducer, topic: str, event: CloudEvent, trace: Iterable[tuple[str, bytes]] = ()
) -> None:
    """Publish one event keyed as its contract says, and wait for the broker's acknowledgement."""
    await client.send_and_wait(topic, event.to_bytes(), key=event.key().encode(), headers=event_headers(event, trace))
