"""Mixed orders through all four services on the real broker and databases: what is in stock ships at once, the
rest when stock arrives (FIFO), a split ships from two warehouses, the customer is told at every step, and a line
routing backorders on a stale view of stock ships from the stock already there."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from oms_contracts import fulfillment
from oms_contracts.inventory import StockLevelChanged, StockLevelChangedData
from oms_contracts.topics import (
    CHANNEL_ORDERS,
    FULFILLMENT_UPDATES,
    INVENTORY_STOCK,
    fulfillment_requests,
)
from oms_tools import samples

from .conftest import System, eventually, read_until, run_id
from .steps import line_of, notices, order_view, receive, request_for, requests_for, routable, simulated, units_of

pytestmark = pytest.mark.timeout(300)


async def test_a_mixed_order_ships_what_is_in_stock_now_and_the_rest_when_stock_arrives(system: System, network):
    rid = run_id()
    here, missing = f"MIX-HERE-{rid}", f"MIX-LATER-{rid}"
    await receive(system, here, "WH-EAST", 5)
    await routable(system, here, "WH-EAST")

    submitted = samples.order_submitted(f"mixed-{rid}", [(here, 1, "10.00"), (missing, 2, "7.50")])
    order_id = submitted.data.order_id
    warehouse = system.consumer(fulfillment_requests("WH-EAST").name)
    await warehouse.start()
    try:
        await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))

        # The line in stock is requested at once; the other waits in its SKU's queue, and the customer is told.
        first = await request_for(warehouse, order_id)
        assert units_of(first.data.lines) == [(here, 1)]
        order = await order_view(system, order_id, "awaiting_fulfillment")
        waiting = line_of(order, missing)
        assert waiting["state"] == "backordered" and waiting["quantities"]["backordered"] == 2

        async def queued_first():
            line = line_of(await order_view(system, order_id), missing)
            return line["backorder"] and line["backorder"]["position"] == 1

        await eventually(queued_first, what="the line's place in its SKU's queue")
        [notice] = await notices(system, order_id, "backorder_notice")
        assert missing in notice["body_text"] and here not in notice["body_text"]

        # The parcel with the in-stock line leaves: partially fulfilled, and the mail says what is still to come.
        await system.publish(FULFILLMENT_UPDATES.name, samples.shipped(first))
        await order_view(system, order_id, "partially_fulfilled")
        [parcel_mail] = await notices(system, order_id, "shipped")
        assert here in parcel_mail["body_text"] and missing in parcel_mail["body_text"]

        # Stock arrives: the waiting line is served first-in-first-out, as a new fulfillment at the restocked source.
        await receive(system, missing, "WH-EAST", 2)
        second = await request_for(warehouse, order_id)
    finally:
        await warehouse.stop()
    assert second.data.fulfillment_id != first.data.fulfillment_id
    assert units_of(second.data.lines) == [(missing, 2)]
    await system.publish(FULFILLMENT_UPDATES.name, samples.shipped(second))
    order = await order_view(system, order_id, "fulfilled")
    assert {line["state"] for line in order["lines"]} == {"shipped"}
    assert len(order["fulfillments"]) == 2
    await notices(system, order_id, "shipped", count=2)

    await system.publish(FULFILLMENT_UPDATES.name, samples.delivered(first), samples.delivered(second))
    await order_view(system, order_id, "delivered")
    await notices(system, order_id, "delivered", count=2)

    async with system.http() as http:
        timeline = (await http.get(system.url("order", f"/orders/{order_id}/timeline"))).json()
    assert [t["to_status"] for t in timeline] == [
        "pending",
        "payment_processing",
        "paid",
        "awaiting_fulfillment",
        "partially_fulfilled",
        "fulfilled",
        "delivered",
    ]


async def test_a_two_warehouse_split_ships_two_parcels_each_mailed_with_exactly_its_items(system: System, network):
    rid = run_id()
    east, west = f"SPLIT-E-{rid}", f"SPLIT-W-{rid}"
    await receive(system, east, "WH-EAST", 3)
    await receive(system, west, "WH-WEST", 3)
    await routable(system, east, "WH-EAST")
    await routable(system, west, "WH-WEST")

    submitted = samples.order_submitted(f"split-{rid}", [(east, 1, "10.00"), (west, 2, "5.00")])
    order_id = submitted.data.order_id
    consumers = {code: system.consumer(fulfillment_requests(code).name) for code in ("WH-EAST", "WH-WEST")}
    for consumer in consumers.values():
        await consumer.start()
    try:
        await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
        requests = {code: await request_for(consumer, order_id) for code, consumer in consumers.items()}
    finally:
        for consumer in consumers.values():
            await consumer.stop()
    assert units_of(requests["WH-EAST"].data.lines) == [(east, 1)]
    assert units_of(requests["WH-WEST"].data.lines) == [(west, 2)]

    # Before anything leaves, the customer learns it comes in two parcels.
    [warning] = await notices(system, order_id, "split_prewarning")
    assert east in warning["body_text"] and west in warning["body_text"]

    await system.publish(FULFILLMENT_UPDATES.name, samples.shipped(requests["WH-EAST"]))
    await order_view(system, order_id, "partially_fulfilled")
    [first_mail] = await notices(system, order_id, "shipped")
    await system.publish(FULFILLMENT_UPDATES.name, samples.shipped(requests["WH-WEST"]))
    await order_view(system, order_id, "fulfilled")
    mails = await notices(system, order_id, "shipped", count=2)
    second_mail = next(m for m in mails if m["id"] != first_mail["id"])

    # Each parcel's mail names its own items as in the parcel, and the first also names what is still to come.
    tracking = {code: samples.shipped(r).data.tracking_number for code, r in requests.items()}
    assert tracking["WH-EAST"] in first_mail["body_text"] and tracking["WH-WEST"] not in first_mail["body_text"]
    assert tracking["WH-WEST"] in second_mail["body_text"] and tracking["WH-EAST"] not in second_mail["body_text"]
    assert east in first_mail["body_text"] and west in first_mail["body_text"]
    assert west in second_mail["body_text"]


async def test_three_backorders_are_served_oldest_first_and_the_third_keeps_its_place(system: System, network):
    sku = f"FIFO-{run_id()}"
    orders = []
    async with system.http() as http:
        for n in range(3):
            submitted = samples.order_submitted(f"fifo-{n}-{sku}", [(sku, 1, "9.00")])
            await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
            orders.append(submitted.data.order_id)

            # One at a time, so that arrival order in the queue is the order the customers paid in.
            async def queued(count=n + 1):
                r = await http.get(system.url("inventory", f"/backorders/{sku}"))
                return r.status_code == 200 and len(r.json()) == count

            await eventually(queued, what=f"order {n + 1} to join the queue of {sku}")

        warehouse = system.consumer(fulfillment_requests("WH-EAST").name)
        await warehouse.start()
        try:
            await receive(system, sku, "WH-EAST", 2)
            served = await requests_for(warehouse, *orders[:2])
            assert all(units_of(r.data.lines) == [(sku, 1)] for r in served.values())

            queue = (await http.get(system.url("inventory", f"/backorders/{sku}"))).json()
            assert [(w["position"], w["order_id"]) for w in queue] == [(1, str(orders[2]))]
            order = await order_view(system, orders[2])
            assert line_of(order, sku)["state"] == "backordered"

            await receive(system, sku, "WH-EAST", 1)
            third = await request_for(warehouse, orders[2])
        finally:
            await warehouse.stop()
    assert units_of(third.data.lines) == [(sku, 1)]
    assert (await order_view(system, orders[2]))["status"] == "awaiting_fulfillment"


def _level(sku: str, source: str, available: int, changed_at: datetime) -> StockLevelChanged:
    level = StockLevelChangedData(
        sku=sku, source_code=source, on_hand=available, reserved=0, available=available, changed_at=changed_at
    )
    return StockLevelChanged(source="/e2e", subject=sku, data=level)


async def test_a_line_routing_backorders_on_a_stale_view_of_stock_is_requested_from_the_stock_already_there(
    system: System, network
):
    """Routing plans from its projection of inventory's stock levels, which lags. Here it is held stale on purpose:
    it keeps a level of WH-EAST stamped later than anything inventory publishes (as a level from a clock running
    ahead would be), so it ignores the receipt's level and backorders a line inventory holds stock for. Inventory
    serves that line from the stock already there, at once, without any further receipt."""
    rid = run_id()
    here, unseen = f"STALE-HERE-{rid}", f"STALE-UNSEEN-{rid}"
    poland = samples.DEMO_ADDRESSES["PL"]  # only WH-EAST ships to Poland
    await receive(system, here, "WH-EAST", 3)
    await routable(system, here, "WH-EAST")

    levels = system.consumer(INVENTORY_STOCK.name)
    await levels.start()
    try:
        # Levels of one SKU share a partition, so routing reads them in this order: the level from the future, the
        # receipt's level (ignored: older), and a marker at WH-WEST (which does not ship to Poland) that shows when
        # routing has read the receipt's level.
        await system.publish(INVENTORY_STOCK.name, _level(unseen, "WH-EAST", 0, datetime(2099, 1, 1, tzinfo=UTC)))
        await receive(system, unseen, "WH-EAST", 2)

        def inventorys_level(record) -> bool:
            event = json.loads(record.value)
            data = event["data"]
            return event["source"] == "/oms/inventory" and (data["sku"], data["source_code"]) == (unseen, "WH-EAST")

        await read_until(levels, inventorys_level)
    finally:
        await levels.stop()
    await system.publish(INVENTORY_STOCK.name, _level(unseen, "WH-WEST", 1, datetime.now(UTC)))
    await routable(system, unseen, "WH-WEST")
    stale = await simulated(system, unseen, 2, poland)
    assert stale["shipments"] == [] and [x["sku"] for x in stale["backordered_lines"]] == [unseen]
    async with system.http() as http:
        stock = (await http.get(system.url("inventory", f"/stock/{unseen}"))).json()
    assert [(s["source_code"], s["available"]) for s in stock["sources"]] == [("WH-EAST", 2)]

    submitted = samples.order_submitted(f"stale-{rid}", [(here, 1, "10.00"), (unseen, 2, "7.50")], address=poland)
    order_id = submitted.data.order_id
    warehouse = system.consumer(fulfillment_requests("WH-EAST").name)
    await warehouse.start()
    try:
        await system.publish(CHANNEL_ORDERS.name, submitted, samples.payment_captured(submitted))
        # The in-stock line as planned, and the backordered one from the stock routing did not see: two requests.
        requests: list[fulfillment.FulfillmentRequested] = []

        def both(record) -> bool:
            event = json.loads(record.value)
            if event["type"] == fulfillment.FulfillmentRequested.TYPE and event["data"]["order_id"] == str(order_id):
                requests.append(fulfillment.FulfillmentRequested.model_validate_json(record.value))
            return len(requests) == 2

        await read_until(warehouse, both)
    finally:
        await warehouse.stop()
    assert sorted(units_of(r.data.lines) for r in requests) == [[(here, 1)], [(unseen, 2)]]

    async with system.http() as http:
        [plan] = (await http.get(system.url("routing", f"/plans/{order_id}"))).json()["plans"]
        queue = (await http.get(system.url("inventory", f"/backorders/{unseen}"))).json()
    assert [(x["sku"], x["quantity"]) for x in plan["backordered_lines"]] == [(unseen, 2)]
    assert queue == []
    order = await order_view(system, order_id, "awaiting_fulfillment")
    assert line_of(order, unseen)["state"] == "requested"
    assert line_of(order, unseen)["quantities"]["requested"] == 2
