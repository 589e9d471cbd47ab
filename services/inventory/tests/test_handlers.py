"""Inventory's consumers through the real consumer path (inbox, handler, outbox) on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from oms_contracts.fulfillment import FulfillmentCancelled, ReasonCode
from oms_contracts.inventory import (
    BackorderAllocated,
    BackorderQueued,
    LowStock,
    ReservationRejected,
    ShipmentReserved,
    StockLevelChanged,
)
from oms_contracts.topics import (
    DEAD_LETTERS,
    FULFILLMENT_UPDATES,
    INVENTORY_ALLOCATIONS,
    INVENTORY_RECEIPTS,
    INVENTORY_STOCK,
    ROUTING_NETWORK,
    ROUTING_PLANS,
)
from oms_runtime import Service
from oms_runtime.database import driver
from oms_runtime.testing import Emitted, deliver


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def of_type(emitted: list[Emitted], kind: type) -> list:
    return [e.event for e in emitted if e.headers["ce-type"] == kind.TYPE]


async def stock_row(service: Service, sku: str, source: str) -> tuple[int, int] | None:
    async with service.database.connect() as conn:
        pg = await driver(conn)
        row = await pg.fetchrow("SELECT on_hand, reserved FROM stock WHERE sku = $1 AND source_code = $2", sku, source)
    return None if row is None else (row["on_hand"], row["reserved"])


async def counted_at(service: Service, sku: str, source: str) -> datetime | None:
    async with service.database.connect() as conn:
        pg = await driver(conn)
        return await pg.fetchval("SELECT counted_at FROM stock WHERE sku = $1 AND source_code = $2", sku, source)


async def reservation_states(service: Service, shipment_id: uuid.UUID) -> dict[str, str]:
    async with service.database.connect() as conn:
        pg = await driver(conn)
        rows = await pg.fetch("SELECT line_id, state FROM reservations WHERE shipment_id = $1", shipment_id)
    return {row["line_id"]: row["state"] for row in rows}


async def stocked(service: Service, events: Any, sku: str, source: str, quantity: int) -> None:
    """A source in the network holding `quantity` units of `sku`."""
    await deliver(service, ROUTING_NETWORK, events.source_upserted(source))
    await deliver(service, INVENTORY_RECEIPTS, events.received(sku, source, quantity))


# --- receipts ----------------------------------------------------------------------------------------------------


async def test_a_receipt_for_a_deactivated_source_is_refused(inventory, events, fresh_sku, fresh_source):
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))
    await deliver(inventory, ROUTING_NETWORK, events.source_deactivated(fresh_source))

    (dead,) = await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 5))

    assert dead.topic == DEAD_LETTERS.name
    assert dead.headers["oms-error-message"].startswith(f"inactive source '{fresh_source}'")
    assert await stock_row(inventory, fresh_sku, fresh_source) is None


async def test_one_refused_receipt_in_a_batch_does_not_hold_back_the_others(inventory, events, fresh_sku, fresh_source):
    closed = fresh("CLOSED")
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source), events.source_upserted(closed))
    await deliver(inventory, ROUTING_NETWORK, events.source_deactivated(closed))

    emitted = await deliver(
        inventory,
        INVENTORY_RECEIPTS,
        events.received(fresh_sku, fresh_source, 4),
        events.received(fresh_sku, closed, 5),
        events.received(fresh_sku, fresh_source, 3),
    )

    assert [e.topic for e in emitted].count(DEAD_LETTERS.name) == 1
    assert await stock_row(inventory, fresh_sku, fresh_source) == (7, 0)


async def test_a_receipt_at_a_known_source_raises_on_hand_and_publishes_the_level(
    inventory, events, fresh_sku, fresh_source
):
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 12))

    (level,) = of_type(emitted, StockLevelChanged)
    assert emitted[0].topic == INVENTORY_STOCK.name
    assert emitted[0].key == fresh_sku
    assert (level.data.sku, level.data.source_code) == (fresh_sku, fresh_source)
    assert (level.data.on_hand, level.data.reserved, level.data.available) == (12, 0, 12)
    assert await stock_row(inventory, fresh_sku, fresh_source) == (12, 0)


async def test_receipts_of_one_batch_publish_one_level_per_sku_and_source(inventory, events, fresh_sku, fresh_source):
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))

    emitted = await deliver(
        inventory,
        INVENTORY_RECEIPTS,
        events.received(fresh_sku, fresh_source, 2),
        events.received(fresh_sku, fresh_source, 3),
        events.counted(fresh_sku, fresh_source, 20),
        events.received(fresh_sku, fresh_source, 1),
    )

    (level,) = of_type(emitted, StockLevelChanged)
    assert level.data.on_hand == 21


async def test_a_count_below_what_is_reserved_keeps_the_reservation_and_shows_nothing_available(
    inventory, events, fresh_sku, fresh_source
):
    await stocked(inventory, events, fresh_sku, fresh_source, 10)
    await deliver(inventory, ROUTING_PLANS, events.plan(events.shipment(fresh_source, ("1", fresh_sku, 6))))

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.counted(fresh_sku, fresh_source, 2))

    (level,) = of_type(emitted, StockLevelChanged)
    assert (level.data.on_hand, level.data.reserved, level.data.available) == (2, 6, 0)
    assert await stock_row(inventory, fresh_sku, fresh_source) == (2, 6)


async def test_a_late_count_older_than_the_last_count_applied_does_not_overwrite_newer_stock(
    inventory, events, fresh_sku, fresh_source
):
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))
    t1 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    t2 = t1 + timedelta(hours=1)
    await deliver(inventory, INVENTORY_RECEIPTS, events.counted(fresh_sku, fresh_source, 10, at=t2))
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 5))

    # The count as of t1 was held up somewhere and arrives last: it is applied by nobody, and refused by nobody.
    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.counted(fresh_sku, fresh_source, 3, at=t1))

    assert emitted == []
    assert await stock_row(inventory, fresh_sku, fresh_source) == (15, 0)
    assert await counted_at(inventory, fresh_sku, fresh_source) == t2


async def test_a_count_resent_as_of_the_same_time_does_not_undo_the_receipts_since(
    inventory, events, fresh_sku, fresh_source
):
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))
    count = events.counted(fresh_sku, fresh_source, 10, at=datetime(2026, 11, 22, 10, 0, tzinfo=UTC))
    await deliver(inventory, INVENTORY_RECEIPTS, count)
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 5))

    # The feed sends the same count again, under a new event id (the inbox cannot tell).
    emitted = await deliver(inventory, INVENTORY_RECEIPTS, count.model_copy(update={"id": uuid.uuid4()}))

    assert emitted == []
    assert await stock_row(inventory, fresh_sku, fresh_source) == (15, 0)


async def test_a_later_count_replaces_on_hand_and_a_stale_one_in_the_same_batch_is_skipped(
    inventory, client, events, fresh_sku, fresh_source
):
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))
    t1 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    await deliver(inventory, INVENTORY_RECEIPTS, events.counted(fresh_sku, fresh_source, 10, at=t1))

    emitted = await deliver(
        inventory,
        INVENTORY_RECEIPTS,
        events.counted(fresh_sku, fresh_source, 8, at=t1 + timedelta(hours=2)),
        events.counted(fresh_sku, fresh_source, 20, at=t1 + timedelta(hours=1)),
    )

    (level,) = of_type(emitted, StockLevelChanged)
    assert level.data.on_hand == 8
    assert await counted_at(inventory, fresh_sku, fresh_source) == t1 + timedelta(hours=2)
    (listed,) = (await client.get(f"/stock/{fresh_sku}")).json()["sources"]
    assert (listed["on_hand"], listed["counted_at"]) == (8, "2026-11-22T12:00:00Z")


async def test_a_count_that_drops_availability_below_the_threshold_raises_low_stock(
    inventory, events, fresh_sku, fresh_source
):
    threshold = inventory.settings.low_stock_threshold
    await stocked(inventory, events, fresh_sku, fresh_source, threshold + 3)

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.counted(fresh_sku, fresh_source, threshold - 1))
    (alert,) = of_type(emitted, LowStock)
    assert (alert.data.available, alert.data.threshold) == (threshold - 1, threshold)

    # Already below: no second alert.
    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.counted(fresh_sku, fresh_source, 1))
    assert of_type(emitted, LowStock) == []


async def test_a_redelivered_receipt_is_applied_once(inventory, events, fresh_sku, fresh_source):
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))
    receipt = events.received(fresh_sku, fresh_source, 5)

    await deliver(inventory, INVENTORY_RECEIPTS, receipt)
    assert await deliver(inventory, INVENTORY_RECEIPTS, receipt) == []

    assert await stock_row(inventory, fresh_sku, fresh_source) == (5, 0)


# --- plans -------------------------------------------------------------------------------------------------------


async def test_a_plan_reserves_its_shipment_and_says_so(inventory, events, fresh_sku, fresh_source):
    await stocked(inventory, events, fresh_sku, fresh_source, 10)
    shipment = events.shipment(fresh_source, ("1", fresh_sku, 3))
    plan = events.plan(shipment)

    emitted = await deliver(inventory, ROUTING_PLANS, plan)

    (reserved,) = of_type(emitted, ShipmentReserved)
    assert next(e for e in emitted if e.headers["ce-type"] == ShipmentReserved.TYPE).topic == INVENTORY_ALLOCATIONS.name
    assert reserved.data.order_id == plan.data.order_id
    assert reserved.data.shipment_id == shipment.shipment_id
    assert reserved.data.plan_id == plan.data.plan_id
    assert reserved.data.source_code == fresh_source
    assert [(line.line_id, line.sku, line.quantity) for line in reserved.data.lines] == [("1", fresh_sku, 3)]
    (level,) = of_type(emitted, StockLevelChanged)
    assert (level.data.on_hand, level.data.reserved, level.data.available) == (10, 3, 7)
    assert await stock_row(inventory, fresh_sku, fresh_source) == (10, 3)
    assert await reservation_states(inventory, shipment.shipment_id) == {"1": "reserved"}


async def test_a_short_shipment_is_rejected_with_its_shortages_and_reserves_nothing(inventory, events, fresh_source):
    plenty, scarce = fresh("SKU"), fresh("SKU")
    await stocked(inventory, events, plenty, fresh_source, 10)
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(scarce, fresh_source, 1))
    shipment = events.shipment(fresh_source, ("1", plenty, 4), ("2", scarce, 3))

    emitted = await deliver(inventory, ROUTING_PLANS, events.plan(shipment))

    (rejected,) = of_type(emitted, ReservationRejected)
    assert rejected.data.shipment_id == shipment.shipment_id
    assert [(s.sku, s.requested, s.available) for s in rejected.data.shortages] == [(scarce, 3, 1)]
    assert of_type(emitted, ShipmentReserved) == []
    assert of_type(emitted, StockLevelChanged) == []
    assert await stock_row(inventory, plenty, fresh_source) == (10, 0)
    assert await stock_row(inventory, scarce, fresh_source) == (1, 0)


async def test_a_sku_never_stocked_at_the_source_is_short_with_nothing_available(inventory, events, fresh_source):
    unheard = fresh("SKU")
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))

    emitted = await deliver(inventory, ROUTING_PLANS, events.plan(events.shipment(fresh_source, ("1", unheard, 1))))

    (rejected,) = of_type(emitted, ReservationRejected)
    assert [(s.sku, s.requested, s.available) for s in rejected.data.shortages] == [(unheard, 1, 0)]


async def test_a_plan_delivered_again_reserves_once(inventory, events, fresh_sku, fresh_source):
    await stocked(inventory, events, fresh_sku, fresh_source, 10)
    plan = events.plan(events.shipment(fresh_source, ("1", fresh_sku, 4)))

    first = await deliver(inventory, ROUTING_PLANS, plan)
    # The same plan under a new event id gets past the inbox; the shipment id still says it was decided.
    again = await deliver(inventory, ROUTING_PLANS, plan.model_copy(update={"id": uuid.uuid4()}))
    redelivered = await deliver(inventory, ROUTING_PLANS, plan)

    assert len(of_type(first, ShipmentReserved)) == 1
    assert again == []
    assert redelivered == []
    assert await stock_row(inventory, fresh_sku, fresh_source) == (10, 4)


async def test_a_rejected_shipment_delivered_again_is_not_reserved_after_stock_arrives(
    inventory, events, fresh_sku, fresh_source
):
    await stocked(inventory, events, fresh_sku, fresh_source, 1)
    plan = events.plan(events.shipment(fresh_source, ("1", fresh_sku, 4)))
    assert len(of_type(await deliver(inventory, ROUTING_PLANS, plan), ReservationRejected)) == 1
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 10))

    # Routing has re-planned that shipment elsewhere by now; reserving it here would hold stock nobody ships.
    assert await deliver(inventory, ROUTING_PLANS, plan.model_copy(update={"id": uuid.uuid4()})) == []
    assert await stock_row(inventory, fresh_sku, fresh_source) == (11, 0)


async def test_shipments_of_one_batch_draw_on_the_stock_in_order(inventory, events, fresh_sku, fresh_source):
    await stocked(inventory, events, fresh_sku, fresh_source, 5)
    first = events.plan(events.shipment(fresh_source, ("1", fresh_sku, 4)))
    second = events.plan(events.shipment(fresh_source, ("1", fresh_sku, 4)))
    third = events.plan(events.shipment(fresh_source, ("1", fresh_sku, 1)))

    emitted = await deliver(inventory, ROUTING_PLANS, first, second, third)

    assert [e.data.order_id for e in of_type(emitted, ShipmentReserved)] == [first.data.order_id, third.data.order_id]
    (rejected,) = of_type(emitted, ReservationRejected)
    assert rejected.data.order_id == second.data.order_id
    assert rejected.data.shortages[0].available == 1
    (level,) = of_type(emitted, StockLevelChanged)
    assert (level.data.reserved, level.data.available) == (5, 0)
    (alert,) = of_type(emitted, LowStock)
    assert alert.data.available == 0


async def test_backordered_lines_join_the_queue_once(inventory, events, fresh_sku):
    plan = events.plan(backordered=(("1", fresh_sku, 2), ("2", fresh_sku, 1)))

    emitted = await deliver(inventory, ROUTING_PLANS, plan)
    again = await deliver(inventory, ROUTING_PLANS, plan.model_copy(update={"id": uuid.uuid4()}))

    (queued,) = of_type(emitted, BackorderQueued)
    assert queued.data.order_id == plan.data.order_id
    assert [(line.line_id, line.sku, line.quantity) for line in queued.data.lines] == [
        ("1", fresh_sku, 2),
        ("2", fresh_sku, 1),
    ]
    assert again == []


async def test_a_plan_with_a_line_given_two_skus_is_refused(inventory, events, fresh_source):
    shipment = events.shipment(fresh_source, ("1", fresh("SKU"), 1), ("1", fresh("SKU"), 1))

    (dead,) = await deliver(inventory, ROUTING_PLANS, events.plan(shipment))

    assert dead.topic == DEAD_LETTERS.name
    assert "two SKUs" in dead.headers["oms-error-message"]


async def test_two_instances_reserving_the_last_units_at_once_never_oversell(
    inventory, second_inventory, events, fresh_source
):
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))
    for _ in range(10):
        sku = fresh("SKU")
        await deliver(inventory, INVENTORY_RECEIPTS, events.received(sku, fresh_source, 3))
        one = events.plan(events.shipment(fresh_source, ("1", sku, 2)))
        other = events.plan(events.shipment(fresh_source, ("1", sku, 2)))

        results = await asyncio.gather(
            deliver(inventory, ROUTING_PLANS, one), deliver(second_inventory, ROUTING_PLANS, other)
        )

        # Either instance's read of the outbox may hold the other's events: judge them together.
        emitted = [e for batch in results for e in batch]
        assert len(of_type(emitted, ShipmentReserved)) == 1
        (rejected,) = of_type(emitted, ReservationRejected)
        assert [(s.requested, s.available) for s in rejected.data.shortages] == [(2, 1)]
        assert await stock_row(inventory, sku, fresh_source) == (3, 2)


async def test_a_reservation_waits_for_a_concurrent_writer_and_decides_on_what_it_left(
    inventory, events, fresh_sku, fresh_source
):
    await stocked(inventory, events, fresh_sku, fresh_source, 3)
    plan = events.plan(events.shipment(fresh_source, ("1", fresh_sku, 2)))

    async with inventory.database.transaction() as conn:
        other = await driver(conn)
        await other.execute(
            "SELECT 1 FROM stock WHERE sku = $1 AND source_code = $2 FOR UPDATE", fresh_sku, fresh_source
        )
        reserving = asyncio.create_task(deliver(inventory, ROUTING_PLANS, plan))
        await asyncio.sleep(0.3)
        assert not reserving.done()
        # What another instance's batch would do while holding the row: take two of the three units.
        await other.execute(
            "UPDATE stock SET reserved = reserved + 2 WHERE sku = $1 AND source_code = $2", fresh_sku, fresh_source
        )

    (rejected,) = of_type(await reserving, ReservationRejected)
    assert [(s.requested, s.available) for s in rejected.data.shortages] == [(2, 1)]
    assert await stock_row(inventory, fresh_sku, fresh_source) == (3, 2)


# --- fulfillment updates -----------------------------------------------------------------------------------------


async def reserved_plan(service, events, sku, source, *, on_hand, lines):
    await stocked(service, events, sku, source, on_hand)
    shipment = events.shipment(source, *lines)
    plan = events.plan(shipment)
    assert len(of_type(await deliver(service, ROUTING_PLANS, plan), ShipmentReserved)) == 1
    return plan, shipment


async def test_shipped_lowers_on_hand_and_reserved(inventory, events, fresh_sku, fresh_source):
    plan, shipment = await reserved_plan(
        inventory, events, fresh_sku, fresh_source, on_hand=10, lines=[("1", fresh_sku, 3)]
    )

    emitted = await deliver(inventory, FULFILLMENT_UPDATES, events.shipped(plan, shipment))

    (level,) = of_type(emitted, StockLevelChanged)
    assert (level.data.on_hand, level.data.reserved, level.data.available) == (7, 0, 7)
    assert await stock_row(inventory, fresh_sku, fresh_source) == (7, 0)
    assert await reservation_states(inventory, shipment.shipment_id) == {"1": "shipped"}


async def test_shipped_twice_ships_once(inventory, events, fresh_sku, fresh_source):
    plan, shipment = await reserved_plan(
        inventory, events, fresh_sku, fresh_source, on_hand=10, lines=[("1", fresh_sku, 3)]
    )

    await deliver(inventory, FULFILLMENT_UPDATES, events.shipped(plan, shipment))
    assert await deliver(inventory, FULFILLMENT_UPDATES, events.shipped(plan, shipment)) == []

    assert await stock_row(inventory, fresh_sku, fresh_source) == (7, 0)


async def test_rejected_releases_the_reservation(inventory, events, fresh_sku, fresh_source):
    plan, shipment = await reserved_plan(
        inventory, events, fresh_sku, fresh_source, on_hand=10, lines=[("1", fresh_sku, 3)]
    )

    emitted = await deliver(inventory, FULFILLMENT_UPDATES, events.rejected(plan, shipment))

    (level,) = of_type(emitted, StockLevelChanged)
    assert (level.data.on_hand, level.data.reserved, level.data.available) == (10, 0, 10)
    assert await reservation_states(inventory, shipment.shipment_id) == {"1": "released"}


async def test_cancelled_releases_the_cancelled_lines_only(inventory, events, fresh_sku, fresh_source):
    plan, shipment = await reserved_plan(
        inventory, events, fresh_sku, fresh_source, on_hand=10, lines=[("1", fresh_sku, 3), ("2", fresh_sku, 2)]
    )

    emitted = await deliver(inventory, FULFILLMENT_UPDATES, events.cancelled(plan, shipment, [("2", 2)]))

    (level,) = of_type(emitted, StockLevelChanged)
    assert (level.data.reserved, level.data.available) == (3, 7)
    assert await reservation_states(inventory, shipment.shipment_id) == {"1": "reserved", "2": "released"}


@pytest.mark.parametrize("code", [ReasonCode.out_of_stock, ReasonCode.damaged])
async def test_units_a_source_cancels_as_not_there_are_written_off_not_made_available(
    inventory, events, fresh_sku, fresh_source, code
):
    plan, shipment = await reserved_plan(
        inventory, events, fresh_sku, fresh_source, on_hand=10, lines=[("1", fresh_sku, 3)]
    )

    emitted = await deliver(inventory, FULFILLMENT_UPDATES, events.cancelled(plan, shipment, [("1", 2)], code))

    (level,) = of_type(emitted, StockLevelChanged)
    assert (level.data.on_hand, level.data.reserved, level.data.available) == (8, 1, 7)
    assert (
        level.data.reason is not None and f"{fresh_source} reported 2 reserved unit(s) not there" in level.data.reason
    )
    assert await stock_row(inventory, fresh_sku, fresh_source) == (8, 1)
    assert await reservation_states(inventory, shipment.shipment_id) == {"1": "reserved"}


async def test_a_fulfillment_rejected_as_out_of_stock_writes_off_all_it_held(
    inventory, events, fresh_sku, fresh_source
):
    plan, shipment = await reserved_plan(
        inventory, events, fresh_sku, fresh_source, on_hand=4, lines=[("1", fresh_sku, 3)]
    )

    emitted = await deliver(inventory, FULFILLMENT_UPDATES, events.rejected(plan, shipment, ReasonCode.out_of_stock))

    (level,) = of_type(emitted, StockLevelChanged)
    assert (level.data.on_hand, level.data.reserved, level.data.available) == (1, 0, 1)
    assert await reservation_states(inventory, shipment.shipment_id) == {"1": "released"}


@pytest.mark.parametrize(
    ("code", "served"), [(ReasonCode.out_of_stock, False), (ReasonCode.customer_request, True), (None, True)]
)
async def test_a_waiting_line_is_served_from_units_given_back_only_when_they_are_on_the_shelf(
    inventory, events, fresh_sku, fresh_source, code, served
):
    plan, shipment = await reserved_plan(
        inventory, events, fresh_sku, fresh_source, on_hand=2, lines=[("1", fresh_sku, 2)]
    )
    waiting = events.plan(backordered=(("1", fresh_sku, 1),))
    await deliver(inventory, ROUTING_PLANS, waiting)
    cancelled = events.cancelled(plan, shipment, [("1", 2)])
    if code is not None:
        cancelled = events.cancelled(plan, shipment, [("1", 2)], code)
    else:  # a source from before reason_code: "other"
        wire = json.loads(cancelled.to_bytes())
        del wire["data"]["reason_code"]
        cancelled = FulfillmentCancelled.model_validate(wire)

    emitted = await deliver(inventory, FULFILLMENT_UPDATES, cancelled)

    allocated = of_type(emitted, BackorderAllocated)
    assert [a.data.order_id for a in allocated] == ([waiting.data.order_id] if served else [])
    assert await stock_row(inventory, fresh_sku, fresh_source) == ((2, 1) if served else (0, 0))
    if not served:
        # The source's next receipt serves the waiting line, oldest first, as any receipt does.
        emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 1))
        assert [a.data.order_id for a in of_type(emitted, BackorderAllocated)] == [waiting.data.order_id]


async def test_accepted_moves_no_stock(inventory, events, fresh_sku, fresh_source):
    plan, shipment = await reserved_plan(
        inventory, events, fresh_sku, fresh_source, on_hand=10, lines=[("1", fresh_sku, 3)]
    )

    assert await deliver(inventory, FULFILLMENT_UPDATES, events.accepted(plan, shipment)) == []
    assert await stock_row(inventory, fresh_sku, fresh_source) == (10, 3)


async def test_an_update_for_a_fulfillment_inventory_never_reserved_is_skipped_not_refused(
    inventory, events, fresh_sku, fresh_source
):
    shipment = events.shipment(fresh_source, ("1", fresh_sku, 1))
    plan = events.plan(shipment)

    emitted = await deliver(
        inventory, FULFILLMENT_UPDATES, events.shipped(plan, shipment), events.rejected(plan, shipment)
    )

    assert emitted == []
