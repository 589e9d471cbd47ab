"""Two order-service instances in one consumer group on a real broker, and customer service cancelling over both
instances' HTTP at the same time, on the same orders: no update is lost and nothing is refunded twice."""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal
from typing import ClassVar

import httpx
from aiokafka import AIOKafkaProducer

from oms_contracts import fulfillment_requests
from oms_contracts.envelope import CloudEvent
from oms_contracts.topics import CHANNEL_ORDERS, FULFILLMENT_UPDATES, INVENTORY_ALLOCATIONS, ROUTING_PLANS
from oms_order import store
from oms_order.app import create_service
from oms_order.settings import OrderSettings
from oms_runtime.testing import deliver, start_at_end
from oms_runtime.topics import ensure_topics
from oms_tools import samples

RUN = uuid.uuid4().hex[:8]
SOURCE = f"WH-C{RUN[:4].upper()}"
ORDERS = 8


class TwinSettings(OrderSettings):
    # Consumer groups of this run's own (oms-order-{run}.{topic}), so that no earlier run's offsets or messages
    # decide what these two instances see.
    service: ClassVar[str] = f"order-{RUN}"


async def produce(bootstrap: str, events: list[tuple[str, CloudEvent]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await asyncio.gather(
            *(
                producer.send_and_wait(
                    topic,
                    event.to_bytes(),
                    key=event.key().encode(),
                    headers=[("content-type", b"application/cloudevents+json")],
                )
                for topic, event in events
            )
        )
    finally:
        await producer.stop()


async def until(check, what: str, within: float = 180.0) -> None:
    """Wait for a condition the consumers bring about (generous: two instances share two cores with the broker)."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not within {within:.0f}s: {what}"
        await asyncio.sleep(0.2)


async def test_two_instances_and_concurrent_http_cancellations_lose_no_update_and_refund_nothing_twice(
    service_database, oms_topics
):
    database = service_database("order", f"twins_{RUN}")
    await ensure_topics(oms_topics, [fulfillment_requests(SOURCE)], partitions=3)
    first, second = (
        create_service(TwinSettings(database_url=database, kafka_bootstrap=oms_topics, api_tokens={"t": "cs-agent"}))
        for _ in range(2)
    )
    # Its groups are new; on a broker earlier tests used, they would start at those tests' records (unknown orders).
    await start_at_end(first)
    # Orders paid and planned: TENT x2 requested from the source, LAMP x4 backordered; paid 58.99 each.
    orders = []
    for i in range(ORDERS):
        submitted = samples.order_submitted(f"twins-{RUN}-{i}", [("TENT", 2, "7.00"), ("LAMP", 4, "10.00")])
        await deliver(first, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
        plan = samples.fulfillment_planned(submitted, [("1", 2)], [("2", 4)], source_code=SOURCE)
        await deliver(first, ROUTING_PLANS, plan)
        [_, request] = await deliver(first, INVENTORY_ALLOCATIONS, samples.shipment_reserved(plan))
        orders.append((submitted, request.event))

    # At once, for every order: two cancellations of a lamp from the channel and the source's own cancellation of a
    # tent (consumed by whichever instance holds the partition), and over HTTP on both instances a lamp each, the
    # first of them again with its key, and a tent (pending at the source, or open again if the source came first).
    messages = []
    for submitted, request in orders:
        messages += [(CHANNEL_ORDERS.name, samples.cancellation_requested(submitted, {"2": 1})) for _ in range(2)]
        messages.append((FULFILLMENT_UPDATES.name, samples.cancelled(request, {"1": 1}, reason="shelf empty")))

    async with (
        first.lifespan(first.http),
        second.lifespan(second.http),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=first.http), base_url="http://first") as one,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=second.http), base_url="http://second") as two,
    ):

        async def cancel(client, order_id, line_id, key):
            return await client.post(
                f"/orders/{order_id}/cancellations",
                json={"lines": [{"line_id": line_id, "quantity": 1}], "reason": "customer called"},
                headers={"Authorization": "Bearer t", "Idempotency-Key": key},
            )

        calls = []
        for submitted, _ in orders:
            order_id = submitted.data.order_id
            calls += [
                cancel(one, order_id, "2", "lamp-a"),
                cancel(two, order_id, "2", "lamp-b"),
                cancel(two, order_id, "2", "lamp-a"),  # the same request again, on the other instance
                cancel(one, order_id, "1", "tent"),
            ]
        answers, _ = await asyncio.gather(asyncio.gather(*calls), produce(oms_topics, messages))
        assert [a.status_code for a in answers] == [200] * len(calls), [a.text for a in answers if a.status_code != 200]
        for i in range(0, len(answers), 4):
            assert answers[i].json()["cancellation_id"] == answers[i + 2].json()["cancellation_id"]

        async def settled() -> bool:
            async with first.database.connect() as conn:
                views = [await store.order_view(conn, s.data.order_id) for s, _ in orders]
            return all(
                [x["quantities"]["cancelled"] for x in view["lines"]] == [1, 4]
                and not any(c["status"] == "pending" for c in view["cancellations"])
                for view in views
            )

        await until(settled, "every cancellation applied and every pending one answered")

    async with first.database.connect() as conn:
        for submitted, _ in orders:
            view = await store.order_view(conn, submitted.data.order_id)
            tent, lamp = ({k: n for k, n in x["quantities"].items() if n} for x in view["lines"])
            assert tent == {"cancelled": 1, "requested": 1} and lamp == {"cancelled": 4}
            # Five units cancelled, each refunded once: 4 x 10.00 + 7.00, never shipping (a tent still ships).
            refunds = view["refunds"]
            assert sum(r["amount"] for r in refunds) == view["refunded_total"] == Decimal("47.00")
            assert sum(x["quantity"] for r in refunds for x in r["lines"]) == 5
            assert view["refunded_total"] <= view["paid_amount"] == Decimal("58.99")
            assert view["grand_total"] == Decimal("11.99") and view["status"] == "awaiting_fulfillment"
            # Two from the channel, lamp-a (once, though asked twice), lamp-b, the tent.
            assert sorted(c["via"] for c in view["cancellations"]) == ["channel", "channel", "http", "http", "http"]
            assert all(c["status"] == "cancelled" for c in view["cancellations"])
    await first.database.dispose()
    await second.database.dispose()
