"""Kill services with SIGKILL while orders flow: nothing is lost and no effect happens twice."""

from __future__ import annotations

import asyncio
import json

import pytest

from oms_contracts.topics import CHANNEL_ORDERS, INVENTORY_RECEIPTS, fulfillment_requests
from oms_tools import samples

from .conftest import System, eventually, read_until, run_id, wait_ready

pytestmark = pytest.mark.timeout(300)

ORDERS = 300


async def test_killing_order_and_inventory_mid_stream_loses_nothing_and_applies_nothing_twice(system: System, network):
    sku = f"SKU-CRASH-{run_id()}"
    channel = f"crash-{run_id()}"
    await system.publish(INVENTORY_RECEIPTS.name, samples.stock_received(sku, "WH-EAST", ORDERS * 2))
    async with system.http() as http:

        async def stocked():
            r = await http.get(system.url("inventory", f"/stock/{sku}"))
            return r.status_code == 200

        await eventually(stocked, what="stock for the crash test")
        probe = samples.order_submitted("probe", [(sku, 1, "3.00")], channel_name=channel).data

        async def routable():
            body = {
                "order_id": str(probe.order_id),
                "channel": channel,
                "placed_at": "2026-11-25T10:00:00Z",
                "currency": "EUR",
                "amount": str(probe.grand_total),
                "lines": [{"line_id": "1", "sku": sku, "quantity": 1}],
                "shipping_address": probe.shipping_address.model_dump(mode="json"),
                "shipping_method": "standard",
                "options": {},
            }
            r = await http.post(system.url("routing", "/simulate"), json=body)
            return r.status_code == 200 and r.json()["shipments"]

        await eventually(routable, what="routing to see the stock")

    orders = [
        samples.order_submitted(f"{channel}-{i}", [(sku, 1, "3.00")], channel_name=channel) for i in range(ORDERS)
    ]
    messages = [m for o in orders for m in (o, samples.payment_captured(o))]

    # Crash the order service and inventory while the orders are in flight, then start them again.
    publishing = asyncio.create_task(system.publish(CHANNEL_ORDERS.name, *messages))
    await asyncio.sleep(1.0)
    system.kill("order")
    await asyncio.sleep(0.5)
    system.kill("inventory")
    await publishing
    system.start("order")
    system.start("inventory")
    await asyncio.to_thread(wait_ready, system, "order")
    await asyncio.to_thread(wait_ready, system, "inventory")

    async with system.http() as http:

        async def all_requested():
            r = await http.get(
                system.url("order", "/orders"),
                params={"channel": channel, "status": "awaiting_fulfillment", "limit": 500},
            )
            done = len(r.json()) if r.status_code == 200 else 0
            return done if done == ORDERS else None

        await eventually(all_requested, timeout=120, interval=1.0, what=f"all {ORDERS} orders to be requested")

        # Every order has exactly its four status changes: no transition was lost or applied twice.
        for order in orders:
            timeline = (await http.get(system.url("order", f"/orders/{order.data.order_id}/timeline"))).json()
            assert [(t["from_status"], t["to_status"]) for t in timeline] == [
                (None, "pending"),
                ("pending", "payment_processing"),
                ("payment_processing", "paid"),
                ("paid", "awaiting_fulfillment"),
            ], order.data.external_order_id

        # One plan per order, and inventory reserved each unit once.
        for order in orders[:: ORDERS // 30]:
            plans = (await http.get(system.url("routing", f"/plans/{order.data.order_id}"))).json()["plans"]
            assert len(plans) == 1
        stock = (await http.get(system.url("inventory", f"/stock/{sku}"))).json()
        [warehouse] = [s for s in stock["sources"] if s["source_code"] == "WH-EAST"]
        assert warehouse["reserved"] == ORDERS and warehouse["on_hand"] == ORDERS * 2

    # The warehouse got a request for every order; a relay that crashed after publishing may have sent one twice,
    # but always the same fulfillment (same event id), which a source's own inbox recognises.
    source = system.consumer(fulfillment_requests("WH-EAST").name)
    await source.start()
    wanted = {str(o.data.order_id) for o in orders}
    seen: dict[str, set[str]] = {}
    try:

        def collect(record) -> bool:
            event = json.loads(record.value)
            order_id = event["data"]["order_id"]
            if order_id in wanted:
                seen.setdefault(order_id, set()).add(event["data"]["fulfillment_id"])
            return len(seen) == ORDERS

        await read_until(source, collect, timeout=60)
    finally:
        await source.stop()
    assert all(len(fulfillments) == 1 for fulfillments in seen.values())
