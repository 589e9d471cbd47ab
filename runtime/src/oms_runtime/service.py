"""Wiring of one service process: FastStream batch subscribers, the outbox relay, the database, HTTP, telemetry."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from itertools import chain
from typing import Any

import uvicorn
from aiokafka import ConsumerRecord
from fastapi import FastAPI
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaAckableMessage
from faststream.specification import AsyncAPI

from oms_contracts import CloudEvent, Topic

from . import http, metrics, telemetry
from .consumer import BatchConsumer, Handler, InvalidHandler, Only, prune_inbox
from .database import Database, is_transient
from .kafka import kafka_problem
from .loop import run_when_woken
from .outbox import Relay
from .settings import ServiceSettings

log = logging.getLogger(__name__)

VERSION = "1.0.0"


async def _undecoded(message: KafkaAckableMessage) -> tuple[tuple[ConsumerRecord, ...], Any]:
    """The runtime validates each record itself (so an invalid one is dead-lettered, not dropped by the framework):
    hand the raw records and their consumer straight to the subscriber.

    Not the framework's message itself: FastStream keeps what the decoder returns in the message's own cache, and a
    message that refers to itself is a reference cycle, freed only by the garbage collector, with every record of the
    batch and its headers. At 300 orders/s that was tens of thousands of objects per collection in each service, and
    a collection every few seconds of 50-70 ms (docs/performance.md, step 30)."""
    return message.raw_message, message.consumer


def _raw_batch(records: tuple[ConsumerRecord, ...], consumer: Any) -> KafkaAckableMessage:
    """The framework's message for a batch, with the records as aiokafka returned them.

    FastStream's batch parser decodes every header value as UTF-8 (and the first record's headers again for
    `correlation_id` and `content-type`): one record with a binary or null header value fails the whole batch, which
    the framework logs and drops, and the next offset commit moves past it. Headers are not part of the contract (a
    structured CloudEvent carries everything in its body), so nothing here reads them; the runtime reads only the
    trace headers, and tolerates any value."""
    first, last = records[0], records[-1]
    return KafkaAckableMessage(
        raw_message=records,
        body=[record.value or b"" for record in records],
        message_id=f"{first.offset}-{last.offset}-{first.timestamp}",
        consumer=consumer,
    )


def _poll(timeout_ms: int, max_records: int) -> Callable[[Any], Awaitable[tuple[ConsumerRecord, ...]]]:
    """How a subscription takes its next batch: whatever has arrived, as soon as anything has (aiokafka's getmany
    returns at the first fetched records, it does not wait to fill a batch); with nothing, after `timeout_ms`.

    FastStream's own batch poll sleeps another `batch_timeout_ms` after an empty poll: a short timeout then spins an
    idle service (four subscriptions polling 100 times a second each were most of its idle CPU), and a long one
    holds back the first record that arrives during the sleep."""

    async def get_msg(consumer: Any) -> tuple[ConsumerRecord, ...]:
        batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return tuple(chain.from_iterable(batches.values()))

    return get_msg


class _Outbox(metrics.GaugeSource):
    """The outbox gauges of one service, from its last refresh."""

    def __init__(self) -> None:
        self.state: dict[str, float] | None = None

    def outbox(self) -> dict[str, float] | None:
        return self.state


# Counted up to this many rows: an exact count of a huge backlog would scan it all at every refresh.
_BACKLOG_COUNTED = 100_001


class Service:
    def __init__(self, settings: ServiceSettings, *, description: str) -> None:
        self.settings = settings
        self.name = settings.service
        # Before any instrument records: counters a service starts at 0 (below) are dropped by a provider-less SDK.
        metrics.setup(self.name)
        self.database = Database(settings.database_url, settings.db_pool_size)
        self.relay = Relay(
            self.database, settings, self.name, unknown_topic_grace_s=settings.relay_unknown_topic_grace_s
        )
        self.broker = KafkaBroker(
            settings.kafka_bootstrap,
            # SASL and/or TLS from the settings, as the relay's producer and the admin client have them.
            security=settings.kafka_security(),
            client_id=f"oms-{self.name}",
            apply_types=False,
            # Topics are created from the contracts by `oms topics create`, never as a side effect of subscribing.
            allow_auto_create_topics=False,
            # Everything this service publishes goes through its outbox relay's producer.
            consumer_only=True,
            graceful_timeout=30.0,
            logger=logging.getLogger(f"faststream.{self.name}"),
            description=description,
        )
        self.asyncapi = AsyncAPI(
            self.broker, title=f"OMS {self.name} service", version=VERSION, description=description
        )
        self.consumers: list[BatchConsumer] = []
        self._startup: list[Callable[[], Awaitable[None]]] = []
        self._workers: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._unready: dict[str, str] = {}
        self._starting: asyncio.Task[None] | None = None
        self._consumers_started = False
        self._freeze_when_started = False
        self._refreshes: list[Callable[[], Awaitable[None]]] = []
        self.outbox_gauges = _Outbox()
        metrics.observe(self.outbox_gauges)
        self.http: FastAPI = http.create_app(self, description)
        self.worker(self._prune_inbox)
        self.worker(self._refresh_metrics)

    @property
    def meter(self):
        """The meter of this service's own instruments (`oms.{service}`); see oms_runtime.metrics."""
        return metrics.meter(f"oms.{self.name}")

    def metrics_refresh(self, refresh: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """A query that feeds a service's observable gauges, run every `metrics_refresh_s` with the runtime's own
        (consumer lag, outbox): a scrape reads what the last run found, so a costly query never runs per scrape."""
        self._refreshes.append(refresh)
        return refresh

    def consumer(
        self,
        topic: Topic,
        *,
        on_invalid: InvalidHandler | None = None,
        handles: Iterable[type[CloudEvent]] | None = None,
        only: Iterable[Only] = (),
    ) -> Callable[[Handler], Handler]:
        """Subscribe a batch handler to a topic, in this service's consumer group for that topic. With `handles`,
        records of the topic's other types are skipped by their `ce-type` header, before they are decoded; with
        `only`, so are those of a handled type whose filter header has another value."""

        def register(handler: Handler) -> Handler:
            group = f"oms-{self.name}.{topic.name}"
            consumer = BatchConsumer(
                name=group,
                topic=topic,
                handler=handler,
                database=self.database,
                service=self.name,
                on_commit=self._committed,
                on_invalid=on_invalid,
                dead_letter_max_bytes=self.settings.dead_letter_max_bytes,
                handles=handles,
                only=only,
            )
            self.consumers.append(consumer)

            async def subscriber(events: Any) -> None:
                records, kafka_consumer = events
                await consumer.consume(records, kafka_consumer)

            async def parse(records: tuple[ConsumerRecord, ...]) -> KafkaAckableMessage:
                return _raw_batch(records, subscription.consumer)

            # What AsyncAPI documents: the topic's events, described by the handler.
            subscriber.__annotations__ = {"events": list[topic.union], "return": None}
            subscriber.__name__ = handler.__name__
            subscriber.__doc__ = handler.__doc__
            subscription = self.broker.subscriber(
                topic.name,
                batch=True,
                group_id=group,
                max_records=self.settings.batch_max_records,
                batch_timeout_ms=self.settings.batch_timeout_ms,
                # Idle, a subscription asks again every `batch_timeout_ms`: the broker holds a fetch that finds nothing
                # that long (it answers at the first record, so nothing waits for it), and aiokafka's fetch routine
                # wakes that often when nothing else wakes it (a fetch's answer, a poll, a seek or a rebalance do).
                fetch_max_wait_ms=self.settings.batch_timeout_ms,
                consumer_timeout_ms=self.settings.batch_timeout_ms,
                ack_policy=AckPolicy.MANUAL,
                auto_offset_reset="earliest",
                parser=parse,
                decoder=_undecoded,
                description=handler.__doc__,
            )
            subscription(subscriber)
            subscription.get_msg = _poll(self.settings.batch_timeout_ms, self.settings.batch_max_records)
            consumer.subscription = subscription
            return handler

        return register

    def publishes(self, topic: Topic, description: str | None = None) -> None:
        """Declare, for the AsyncAPI document, a topic this service publishes on (through its outbox)."""
        self.broker.publisher(topic.name, schema=topic.union, description=description or topic.description)

    def _committed(self, appended: bool) -> None:
        """A consumer committed a batch: the relay publishes what it wrote to the outbox, if anything. (A handler
        that needs more after the commit registers it on the batch's transaction: `Transaction.after_commit`.)"""
        if appended:
            self.relay.wake()

    def on_startup(self, hook: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        self._startup.append(hook)
        return hook

    def worker(self, loop: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """A background loop that runs while the service runs (e.g. a sender, a stuck-order sweep)."""
        self._workers.append(loop)
        return loop

    async def _prune_inbox(self) -> None:
        wake = asyncio.Event()
        wake.set()  # once at start, then every interval

        async def prune() -> None:
            pruned = await prune_inbox(self.database, self.settings.inbox_retention)
            if pruned:
                log.info("inbox: forgot %d events applied more than %s ago", pruned, self.settings.inbox_retention)

        await run_when_woken(wake, prune, interval=self.settings.inbox_prune_interval_s, what="inbox pruning")

    async def _refresh_metrics(self) -> None:
        wake = asyncio.Event()
        wake.set()
        await run_when_woken(
            wake, self.refresh_metrics, interval=self.settings.metrics_refresh_s, what="metrics refresh"
        )

    async def refresh_metrics(self) -> None:
        """Refresh what the gauges show: the outbox, each consumer's lag, the service's own (`metrics_refresh`)."""
        # Each on its own: a consumer whose broker does not answer leaves the outbox gauges fresh.
        for step in (self._refresh_outbox, *(c.refresh for c in self.consumers), *self._refreshes):
            try:
                await step()
            except Exception as error:
                log.debug("metrics refresh %s failed: %r", getattr(step, "__qualname__", step), error)

    async def _refresh_outbox(self) -> None:
        """Backlog, age of the oldest row and parked rows: index lookups and a bounded count, one round trip."""
        async with self.database.autocommit() as pg:
            row = await pg.fetchrow(
                """
                SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT $1) AS o) AS backlog,
                       (SELECT extract(epoch FROM now() - created_at) FROM outbox ORDER BY id LIMIT 1) AS oldest_age,
                       (SELECT count(*) FROM parked_messages) AS parked
                """,
                _BACKLOG_COUNTED,
            )
        self.outbox_gauges.state = {
            "backlog": float(row["backlog"]),
            "oldest_age": max(float(row["oldest_age"] or 0.0), 0.0),
            "parked": float(row["parked"]),
        }

    @contextlib.asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        """Serve HTTP at once and start the rest in the background: a service started while Kafka or PostgreSQL is
        down answers /healthz, says in /readyz what it waits for, and becomes ready when they come back."""
        self._starting = asyncio.create_task(self._start(), name=f"{self.name}-start")
        try:
            yield
        finally:
            await self._stop()

    async def _start(self) -> None:
        await self.relay.start()
        for hook in self._startup:
            await self._until_done(hook.__name__, hook)
        self._tasks = [asyncio.create_task(w(), name=w.__name__) for w in self._workers]
        await self._until_done("consumers", self._start_consumers)
        self._consumers_started = True
        if self._freeze_when_started:
            # What the service made to start (modules, schemas, the app, clients and pools) lives as long as the
            # process: frozen, the collector's full collections no longer walk it (about 150,000 objects each).
            gc.collect()
            gc.freeze()
        log.info("oms-%s started", self.name)

    async def _until_done(self, what: str, step: Callable[[], Awaitable[None]]) -> None:
        delay = 0.5
        while True:
            try:
                await step()
                return
            except Exception as error:
                level = logging.WARNING if is_transient(error) else logging.ERROR
                log.log(level, "%s of oms-%s not started, retrying in %.1fs: %r", what, self.name, delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _start_consumers(self) -> None:
        try:
            await self.broker.start()
        except BaseException:
            # Subscribers that did start are stopped, so that the next attempt starts each of them once.
            with contextlib.suppress(Exception):
                await self.broker.stop()
            raise

    async def _stop(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        # Offsets first, while the Kafka consumers still run. A batch still being applied commits its own offsets
        # before it returns, and the broker's stop waits for it before stopping its consumer.
        for consumer in self.consumers:
            consumer.stopping = True
        for consumer in self.consumers:
            await consumer.close()
        await self.broker.stop()
        self._consumers_started = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.relay.stop()
        await self.database.dispose()
        log.info("oms-%s stopped", self.name)

    async def readiness(self) -> dict[str, str]:
        """What keeps the service from being ready, in plain words by part; empty when it is ready.

        `/readyz` answers without a token, so it never shows a connection string, a host or an exception: the detail
        goes to the log, once each time it changes."""
        problems: dict[str, str] = {}
        details: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.database.ping(), 2.0)
        except Exception as error:
            problems["database"], details["database"] = "database unreachable", repr(error)
        producer, failure = self.relay.producer, self.relay.connect_error
        if producer is not None:
            try:
                await asyncio.wait_for(producer.client.fetch_all_metadata(), 2.0)
                failure = None
            except Exception as error:
                failure = error
        if failure is not None:
            # Told apart from a broker that does not answer: a login refused, an authorization missing.
            problems["kafka"], details["kafka"] = f"kafka {await kafka_problem(self.settings, failure)}", repr(failure)
        elif producer is None:
            problems["kafka"] = details["kafka"] = "kafka not connected yet"
        if not self._consumers_started:
            problems["consumers"] = details["consumers"] = "consumers not started yet"
        if details != self._unready:
            if details:
                log.warning("not ready: %s", "; ".join(f"{part}: {why}" for part, why in details.items()))
            else:
                log.info("ready")
            self._unready = details
        return problems

    def run(self) -> None:
        """The service's process: serve until stopped. Its garbage collector is tuned for batches (`gc_threshold`, and
        what the start made is frozen once started); services built in a test process are left as they are."""
        _, middle, oldest = gc.get_threshold()
        gc.set_threshold(self.settings.gc_threshold, middle, oldest)
        self._freeze_when_started = True
        telemetry.setup_logging(self.name, self.settings.log_level)
        telemetry.setup_tracing(self.name, self.settings.trace_file)
        uvicorn.run(
            self.http,
            host=self.settings.http_host,
            port=self.settings.http_port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=30,
        )
