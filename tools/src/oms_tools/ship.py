"""`oms demo ship`: plays the WMS or 3PL of one or more fulfillment sources.

Each source reads its own request topic (oms.fulfillment.requests.{code}.v1) in its own consumer group, as a real
source would, answers every `fulfillment.requested.v1` with `fulfillment.accepted.v1` then `fulfillment.shipped.v1`
on oms.fulfillment.updates.v1 (keyed by order_id), and carries the request's trace context along. An offset is
committed only once both answers are acknowledged by the broker, so a simulator stopped half-way answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from oms_contracts import Topic, fulfillment_requests
from oms_contracts.fulfillment import FulfillmentCancelRequested, FulfillmentRequested
from oms_contracts.topics import FULFILLMENT_UPDATES
from oms_runtime.kafka import Kafka, client_options

from . import samples
from .errors import FAILED, ToolError
from .kafka import producer, require_topics, send, trace_headers

Echo = Callable[..., None]


def group_of(source_code: str) -> str:
    """The consumer group a simulated source reads its requests in (never one of the OMS services' groups)."""
    return f"oms-demo-ship-{source_code}"


@dataclass
class Shipper:
    kafka: Kafka
    sources: list[str]
    echo: Echo
    once: bool = False
    delay: float = 0.0
    stop_after: float | None = None  # seconds; with `once`, no request by then is an error
    handled: int = 0
    _done: asyncio.Event = field(default_factory=asyncio.Event)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def run(self) -> int:
        """Serve until cancelled (Ctrl-C), until `stop_after` seconds passed, or with `once` after one request.
        Returns how many requests were answered."""
        topics = {code: fulfillment_requests(code) for code in self.sources}
        await require_topics(
            self.kafka,
            [t.name for t in topics.values()],
            "routing creates a source's request topic when the source joins the network; "
            "load it first (oms demo network) or pass --source for sources that exist",
        )
        async with contextlib.AsyncExitStack() as stack:
            updates = await stack.enter_async_context(producer(self.kafka, "oms-demo-ship"))
            consumers = {}
            for code, topic in topics.items():
                consumer = AIOKafkaConsumer(
                    topic.name,
                    **client_options(self.kafka),
                    group_id=group_of(code),
                    client_id=group_of(code),
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                )
                stack.push_async_callback(consumer.stop)
                consumers[code] = consumer
            await asyncio.gather(*(c.start() for c in consumers.values()))
            where = ", ".join(f"{code} ({topics[code].name})" for code in consumers)
            self.echo(f"shipping for {where}; Ctrl-C to stop" if not self.once else f"waiting for one request: {where}")
            tasks = [
                asyncio.create_task(self._serve(code, consumer, topics[code], updates), name=f"ship-{code}")
                for code, consumer in consumers.items()
            ]
            try:
                async with asyncio.timeout(self.stop_after):
                    finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            except TimeoutError:
                if self.once and not self.handled:
                    raise ToolError(f"no fulfillment request arrived within {self.stop_after:g}s", FAILED) from None
                return self.handled
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in finished:
                if (error := task.exception()) is not None:
                    raise error
        return self.handled

    async def _serve(self, code: str, consumer: AIOKafkaConsumer, topic: Topic, updates: AIOKafkaProducer) -> None:
        while not self._done.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    # With --once, one request is answered in all: the sources take turns.
                    async with self._lock if self.once else contextlib.nullcontext():
                        if self._done.is_set():
                            return
                        answered = await self._answer(code, record, topic, updates)
                        await consumer.commit({TopicPartition(tp.topic, tp.partition): record.offset + 1})
                        if answered:
                            self.handled += 1
                            if self.once:
                                self._done.set()
                                return

    async def _answer(self, code: str, record: ConsumerRecord, topic: Topic, updates: AIOKafkaProducer) -> bool:
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        try:
            event = topic.parse(record.value or b"")
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            self.echo(f"{code}: skipped {where}, not a fulfillment request: {first['msg']}", err=True)
            return False
        d = event.data
        if isinstance(event, FulfillmentCancelRequested):
            self.echo(
                f"{code}: cancel request for fulfillment {d.fulfillment_id} (order {d.order_id}) ignored: shipped"
            )
            return False
        assert isinstance(event, FulfillmentRequested)
        trace = trace_headers(record.headers)
        await send(updates, FULFILLMENT_UPDATES.name, samples.accepted(event), trace)
        if self.delay:
            await asyncio.sleep(self.delay)
        shipped = samples.shipped(event)
        await send(updates, FULFILLMENT_UPDATES.name, shipped, trace)
        units = sum(line.quantity for line in d.lines)
        s = shipped.data
        self.echo(
            f"{code}: order {d.order_id} fulfillment {d.fulfillment_id}: accepted, shipped {units} unit(s) "
            f"({', '.join(f'{x.quantity}x {x.sku}' for x in d.lines)}) to {d.ship_to.city} {d.ship_to.country} "
            f"via {s.carrier} {s.tracking_number}"
        )
        return True
