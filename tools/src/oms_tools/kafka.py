"""Kafka for the `oms` command: the OMS producer settings, topic checks, headers, and errors a person can read."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
)

from oms_contracts import CONTENT_TYPE, CloudEvent
from oms_runtime.kafka import Kafka, bootstrap_of, client_options, kafka_problem
from oms_runtime.outbox import kafka_producer

from .errors import FAILED, UNREACHABLE, ToolError

Headers = list[tuple[str, bytes]]

TRACE_HEADERS = ("traceparent", "tracestate")


@contextlib.asynccontextmanager
async def talking_to(kafka: Kafka) -> AsyncIterator[None]:
    """Turn the broker's failures into one line: `cannot reach Kafka at X`, a refused login, a refused operation, a
    timeout, or the broker's error."""
    bootstrap = bootstrap_of(kafka)
    try:
        yield
    except ToolError:
        raise
    except (KafkaConnectionError, NodeNotReadyError, ConnectionError) as error:
        # A client that cannot bootstrap does not say why; a refused login is not an unreachable broker.
        if await kafka_problem(kafka, error) == "authentication failed":
            raise ToolError(
                f"Kafka at {bootstrap} refused the login (check OMS_KAFKA_SASL_USERNAME, OMS_KAFKA_SASL_PASSWORD and "
                "OMS_KAFKA_SASL_MECHANISM)",
                FAILED,
            ) from None
        raise ToolError(f"cannot reach Kafka at {bootstrap}", UNREACHABLE) from None
    except (TopicAuthorizationFailedError, GroupAuthorizationFailedError, ClusterAuthorizationFailedError) as error:
        raise ToolError(
            f"Kafka at {bootstrap} refused the operation to this principal ({_short(error)}): an ACL is missing "
            "(oms acl show)",
            FAILED,
        ) from None
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
async def admin(kafka: Kafka) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(**client_options(kafka), client_id="oms-cli", request_timeout_ms=15_000)
    try:
        await client.start()
        yield client
    finally:
        await client.close()


async def existing_topics(kafka: Kafka) -> set[str]:
    async with admin(kafka) as client:
        return set(await client.list_topics())


async def partitions_of(kafka: Kafka, topic: str) -> list[int] | None:
    """A topic's partition numbers, or None when the topic does not exist."""
    async with admin(kafka) as client:
        [described] = await client.describe_topics([topic])
    if described["error_code"] != 0 or not described["partitions"]:
        return None
    return sorted(p["partition"] for p in described["partitions"])


async def require_topics(kafka: Kafka, names: Iterable[str], hint: str) -> None:
    """Fail clearly when a topic is missing: the broker never creates OMS topics by itself, and a send to a missing
    topic would only time out."""
    missing = sorted(set(names) - await existing_topics(kafka))
    if missing:
        which = "topic" if len(missing) == 1 else "topics"
        raise ToolError(f"{which} {', '.join(missing)} not found on Kafka at {bootstrap_of(kafka)}: {hint}", FAILED)


@contextlib.asynccontextmanager
async def producer(kafka: Kafka, client_id: str) -> AsyncIterator[AIOKafkaProducer]:
    """A producer with the settings the OMS publishes with (idempotent, acks=all)."""
    made = kafka_producer(kafka, client_id)
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
