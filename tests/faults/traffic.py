"""What flows through the system while the suite breaks it: the channels' orders (an open-loop stream of mixed
orders), the warehouses' restocks, and the fulfillment sources that accept, ship and deliver every request.

Every order is deterministic from (seed, index) and says where it must end: `delivered` (in stock, or backordered
and served by a later restock), `cancelled` (cancelled before payment, or its payment failed), or rejected (invalid:
no order, one `order.rejected`). The channels, the WMS and the sources keep a journal of what they published, which
is the ground truth the checker compares the databases and topics with."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata

from oms_contracts import channel, fulfillment
from oms_contracts.topics import CHANNEL_ORDERS, FULFILLMENT_UPDATES, INVENTORY_RECEIPTS, fulfillment_requests
from oms_tools import samples

log = logging.getLogger("faults.traffic")

SOURCES = {
    # code: (name, type, lat, lon, countries)
    "WH-EAST": ("Berlin warehouse", "warehouse", 52.52, 13.40, ["DE", "AT", "PL"]),
    "WH-WEST": ("Cologne warehouse", "warehouse", 50.94, 6.96, ["DE", "NL", "BE"]),
    "3PL-NL": ("Venlo 3PL", "3pl", 51.37, 6.17, ["NL", "BE", "DE"]),
}
NETWORK = {
    "sources": [
        {
            "code": code,
            "name": name,
            "type": kind,
            "lat": lat,
            "lon": lon,
            "countries": countries,
            "priority": 10 if kind == "warehouse" else 20,
            "cost_per_shipment": "4.50",
            "cost_per_unit": "0.20",
            "handling_days": 1,
        }
        for code, (name, kind, lat, lon, countries) in SOURCES.items()
    ]
}
REQUEST_TOPICS = [fulfillment_requests(code).name for code in SOURCES]

# In stock everywhere, far more than any run orders: these lines ship at once.
PLENTY = [f"FLT-P{i:02d}" for i in range(20)]
PLENTY_UNITS = 1_000_000
# A few units at one warehouse, restocked there now and then: most of their lines wait in the backorder queue first.
SCARCE = [f"FLT-S{i}" for i in range(4)]
SCARCE_AT = "WH-EAST"
SCARCE_UNITS = 4
COUNTRIES = ("DE", "DE", "DE", "AT", "NL", "BE", "PL")

# The mix: (kind, weight). Kinds name the path an order takes and so where it must end.
MIX = (
    ("plain", 55),  # 1-3 lines in stock: planned, reserved, requested, shipped, delivered
    ("backorder", 18),  # a scarce line (+ maybe one in stock): split, waits for a restock, then ships
    ("whole", 5),  # the same, ship_complete: waits whole, ships in one go
    ("cancelled", 8),  # cancelled by the channel before payment
    ("payment_failed", 6),  # the payment fails: cancelled
    ("invalid", 8),  # fails validation: order.rejected, never an order
)
EXPECTED = {
    "plain": "delivered",
    "backorder": "delivered",
    "whole": "delivered",
    "cancelled": "cancelled",
    "payment_failed": "cancelled",
    "invalid": None,
}


def price(sku: str) -> str:
    return f"{5 + sum(map(ord, sku)) % 60}.{sum(map(ord, sku)) % 100:02d}"


@dataclass
class Planned:
    """One order as the channel places it, and where it must end."""

    index: int
    kind: str
    key: str
    order_id: uuid.UUID
    submitted_id: uuid.UUID
    lines: list[tuple[str, str, int]]  # (line_id, sku, quantity)
    records: list[bytes]  # submission, then its follow-up (payment, cancellation), same key, in this order
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    submitted_at: float | None = None  # when the broker acknowledged the submission

    @property
    def expected(self) -> str | None:
        return EXPECTED[self.kind]

    @property
    def valid(self) -> bool:
        return self.expected is not None


def _kind(rng: random.Random) -> str:
    kinds, weights = zip(*MIX, strict=True)
    return rng.choices(kinds, weights)[0]


def plan(tag: str, index: int, seed: int, kind: str | None = None) -> Planned:
    """Order `index` of a run: the same (tag, index, seed) always makes the same order, event ids included."""
    rng = random.Random(f"{seed}:{index}")
    kind = kind or _kind(rng)
    channel_name = ("web-eu", "marketplace", "pos-berlin", "b2b-edi")[index % 4]
    external = f"{tag}-{index}"
    ids = uuid.uuid5(uuid.NAMESPACE_URL, f"oms-faults:{tag}:{seed}:{index}")
    if kind in ("backorder", "whole"):
        country = "DE"  # where the scarce SKUs' warehouse ships
        chosen = [(rng.choice(SCARCE), rng.choice((1, 1, 2)))]
        if kind == "whole" or rng.random() < 0.6:
            chosen.append((rng.choice(PLENTY), rng.choice((1, 2))))
    else:
        country = rng.choice(COUNTRIES)
        skus = rng.sample(PLENTY, rng.choice((1, 1, 2, 3)))
        chosen = [(sku, rng.choice((1, 1, 1, 2, 3))) for sku in skus]
    address = samples.DEMO_ADDRESSES[country]
    submitted = samples.order_submitted(
        external,
        [(sku, qty, price(sku)) for sku, qty in chosen],
        channel_name=channel_name,
        address=address,
        email=samples.demo_email(address),
        ship_complete=kind == "whole",
    ).model_copy(update={"id": uuid.uuid5(ids, "submitted")})
    data = submitted.data
    source = f"/channels/{channel_name}"
    records = [submitted.to_bytes()]
    if kind == "invalid":
        records = [_invalid(submitted, rng)]
    elif kind == "cancelled":
        cancel = channel.CancellationRequested(
            id=uuid.uuid5(ids, "cancelled"),
            source=source,
            subject=str(data.order_id),
            data=channel.CancellationRequestedData(
                channel=channel_name, external_order_id=external, reason="changed my mind", requested_by="customer"
            ),
        )
        records.append(cancel.to_bytes())
    elif kind == "payment_failed":
        failed = channel.PaymentFailed(
            id=uuid.uuid5(ids, "failed"),
            source=source,
            subject=str(data.order_id),
            data=channel.PaymentFailedData(
                channel=channel_name,
                external_order_id=external,
                amount=data.grand_total,
                currency=data.currency,
                payment_ref=f"pay-{external}",
                reason="card declined",
            ),
        )
        records.append(failed.to_bytes())
    else:
        paid = samples.payment_captured(submitted).model_copy(update={"id": uuid.uuid5(ids, "paid")})
        records.append(paid.to_bytes())
    return Planned(
        index=index,
        kind=kind,
        key=f"{channel_name}:{external}",
        order_id=data.order_id,
        submitted_id=submitted.id,
        lines=[(x.line_id, x.sku, x.quantity) for x in data.lines],
        records=records,
    )


def _invalid(submitted: channel.OrderSubmitted, rng: random.Random) -> bytes:
    """The submission with one mistake a channel could make; it fails the contract, so the order service answers
    with order.rejected and makes no order."""
    document = json.loads(submitted.to_bytes())
    data = document["data"]
    mistake = rng.choice(("total", "quantity", "currency", "country", "email"))
    if mistake == "total":
        data["grand_total"] = str(Decimal(data["grand_total"]) + Decimal("0.01"))
    elif mistake == "quantity":
        data["lines"][0]["quantity"] = 0
    elif mistake == "currency":
        data["currency"] = "XXX"  # not legal tender
    elif mistake == "country":
        data["shipping_address"]["country"] = "ZZ"
    else:
        data["customer"]["email"] = "not an address"
    return json.dumps(document).encode()


class Publisher:
    """An idempotent producer that outlives the broker: a send that fails is sent again, the same bytes by a fresh
    producer, until the broker acknowledges it. A copy the broker had already written carries the same event id,
    which the consumer's inbox absorbs (what a real channel's retry looks like)."""

    def __init__(self, bootstrap: str, client_id: str) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.retries = 0
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _current(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    client_id=self.client_id,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=2,
                    request_timeout_ms=15_000,
                    max_request_size=1_048_000,
                )
                await producer.start()
                self._producer = producer
            return self._producer

    async def _discard(self, producer: AIOKafkaProducer) -> None:
        async with self._lock:
            if self._producer is producer:
                self._producer = None
            else:
                return
        with contextlib.suppress(Exception):
            await producer.stop()

    async def send(
        self, topic: str, value: bytes | None, key: str | None, headers: list[tuple[str, bytes | None]] | None = None
    ) -> RecordMetadata:
        delay = 0.2
        while True:
            producer = None
            try:
                producer = await self._current()
                sent = await producer.send(
                    topic, value, key=key.encode() if key is not None else None, headers=headers or []
                )
                return await sent
            except Exception as error:
                self.retries += 1
                log.info("send to %s failed, sending again in %.1fs: %r", topic, delay, error)
                if producer is not None:
                    await self._discard(producer)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._discard(self._producer)


class Channels:
    """The sales channels: order `i` is due at t0 + i / rate, whatever happened to the orders before it (open loop:
    a system that stalls does not slow the load; its queue grows). Each order is a task of its own that publishes
    its submission, waits for the broker's acknowledgement, then its follow-up with the same key."""

    CONTENT = ("content-type", b"application/cloudevents+json")

    def __init__(self, publisher: Publisher, tag: str, seed: int, rate: float) -> None:
        self.publisher = publisher
        self.tag = tag
        self.seed = seed
        self.rate = rate
        self.orders: list[Planned] = []
        self.lag_max = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="faults-channels")

    async def _run(self) -> None:
        t0 = time.time()
        i = 0
        while not self._stop.is_set():
            due = t0 + i / self.rate
            now = time.time()
            if due > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), due - now)
                continue
            self.lag_max = max(self.lag_max, now - due)
            self.place(plan(self.tag, i, self.seed))
            i += 1

    def place(self, order: Planned) -> None:
        self.orders.append(order)
        task = asyncio.create_task(self._publish(order))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, order: Planned) -> None:
        headers = [self.CONTENT, *order.headers]
        sent = await self.publisher.send(CHANNEL_ORDERS.name, order.records[0], order.key, headers)
        order.submitted_at = sent.timestamp / 1000
        for record in order.records[1:]:
            await self.publisher.send(CHANNEL_ORDERS.name, record, order.key, [self.CONTENT])

    async def stop(self) -> None:
        """No new orders; returns once every order placed is acknowledged by the broker."""
        self._stop.set()
        if self._runner is not None:
            await self._runner
        while self._tasks:
            await asyncio.gather(*list(self._tasks))


class Warehouse:
    """The WMS: the opening stock, a restock of every scarce SKU every few seconds, and at the end whatever the
    backordered lines still need. Its journal of receipts (by event id) is what inventory must have applied."""

    def __init__(self, publisher: Publisher, every: float, units: int) -> None:
        self.publisher = publisher
        self.every = every
        self.units = units
        self.received: dict[uuid.UUID, tuple[str, str, int]] = {}  # event id -> (sku, source, units)
        self._runner: asyncio.Task[None] | None = None

    async def receive(self, sku: str, source: str, units: int, reference: str) -> None:
        event = samples.stock_received(sku, source, units, reference=reference)
        await self.publisher.send(INVENTORY_RECEIPTS.name, event.to_bytes(), sku, [Channels.CONTENT])
        self.received[event.id] = (sku, source, units)

    async def open(self) -> None:
        for sku in PLENTY:
            for source in SOURCES:
                await self.receive(sku, source, PLENTY_UNITS, "opening")
        for sku in SCARCE:
            await self.receive(sku, SCARCE_AT, SCARCE_UNITS, "opening")

    def start_restocking(self) -> None:
        self._runner = asyncio.create_task(self._restock(), name="faults-restock")

    async def _restock(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(self.every)
            n += 1
            for sku in SCARCE:
                await self.receive(sku, SCARCE_AT, self.units, f"restock-{n}")

    async def stop_restocking(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    def units_received(self) -> Counter[tuple[str, str]]:
        total: Counter[tuple[str, str]] = Counter()
        for sku, source, units in self.received.values():
            total[(sku, source)] += units
        return total

    async def top_up(self, orders: list[Planned]) -> dict[str, int]:
        """Receive what the deliverable orders still need of each scarce SKU, so every waiting line can ship."""
        needed: Counter[str] = Counter()
        for order in orders:
            if order.expected == "delivered":
                for _, sku, qty in order.lines:
                    if sku in SCARCE:
                        needed[sku] += qty
        have = self.units_received()
        added = {}
        for sku in SCARCE:
            missing = needed[sku] - have[(sku, SCARCE_AT)]
            if missing > 0:
                await self.receive(sku, SCARCE_AT, missing, "final top-up")
                added[sku] = missing
        return added


class Sources:
    """The fulfillment sources: read every request topic (a consumer group of their own) and answer each request
    with accepted, shipped (everything) and delivered, with event ids derived from the fulfillment, so a request
    delivered twice gets the same answers, which the services' inboxes absorb. Offsets are committed after the
    answers are acknowledged; any error (the broker gone) starts the clients afresh, and the group redelivers from
    the last commit."""

    def __init__(self, bootstrap: str, publisher: Publisher) -> None:
        self.bootstrap = bootstrap
        self.publisher = publisher
        # fulfillment id -> (source, order id, [(line_id, sku, quantity)]), from the first request seen
        self.shipped: dict[uuid.UUID, tuple[str, uuid.UUID, list[tuple[str, str, int]]]] = {}
        self.requests_seen = 0
        self.restarts = 0
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="faults-sources")

    async def _run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(
                *REQUEST_TOPICS,
                bootstrap_servers=self.bootstrap,
                group_id="faults-sources",
                client_id="faults-sources",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=500,
            )
            try:
                await consumer.start()
                while True:
                    batch = await consumer.getmany(timeout_ms=200)
                    offsets = {}
                    # Requests concurrently, each one's answers in order (accepted, shipped, delivered).
                    await asyncio.gather(*(self._answer(r) for records in batch.values() for r in records))
                    for tp, records in batch.items():
                        offsets[TopicPartition(tp.topic, tp.partition)] = records[-1].offset + 1
                    if offsets:
                        await consumer.commit(offsets)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.restarts += 1
                log.info("sources: %r; starting afresh", error)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def _answer(self, record) -> None:
        try:
            request = fulfillment.FulfillmentRequested.model_validate_json(record.value)
        except ValueError:
            return  # a cancel request: everything here ships at once
        self.requests_seen += 1
        d = request.data
        self.shipped.setdefault(
            d.fulfillment_id, (d.source_code, d.order_id, [(x.line_id, x.sku, x.quantity) for x in d.lines])
        )
        trace = [(k, v) for k, v in record.headers if k in ("traceparent", "tracestate") and v]
        answers = [
            ("accepted", samples.accepted(request)),
            ("shipped", samples.shipped(request)),
            ("delivered", samples.delivered(request)),
        ]
        for kind, event in answers:
            event = event.model_copy(update={"id": uuid.uuid5(d.fulfillment_id, kind)})
            headers = [Channels.CONTENT, ("ce-type", event.type.encode()), *trace]
            await self.publisher.send(FULFILLMENT_UPDATES.name, event.to_bytes(), str(d.order_id), headers)

    def units_shipped(self) -> Counter[tuple[str, str]]:
        total: Counter[tuple[str, str]] = Counter()
        for source, _, lines in self.shipped.values():
            for _, sku, qty in lines:
                total[(sku, source)] += qty
        return total

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
