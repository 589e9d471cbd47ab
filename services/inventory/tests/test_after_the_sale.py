"""After the sale, through the real consumer path (inbox, handler, outbox) on a real PostgreSQL: what the order
service cancelled is given back (a reservation, a queue entry) and serves the queue; cancellations that overtake
their plan are remembered for it; returns restock the source that received them; a re-plan that backorders more
units of a waiting line adds them; lines served as they join are never announced as waiting."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from oms_contracts.common import SourceType
from oms_contracts.inventory import (
    BackorderAllocated,
    BackorderQueued,
    ReservationRejected,
    ShipmentReserved,
    StockLevelChanged,
)
from oms_contracts.topics import (
    DEAD_LETTERS,
    FULFILLMENT_UPDATES,
    INVENTORY_ALLOCATIONS,
    INVENTORY_RECEIPTS,
    ORDER_EVENTS,
    ROUTING_NETWORK,
    ROUTING_PLANS,
)
from oms_runtime import Service
from oms_runtime.database import driver
from oms_runtime.testing import Emitted, deliver


def of_type(emitted: list[Emitted], kind: type) -> list:
    return [e.event for e in emitted if e.headers.get("ce-type") == kind.TYPE]


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def stock_row(service: Service, sku: str, source: str) -> tuple[int, int, int] | None:
    async with service.database.connect() as conn:
        pg = await driver(conn)
        row = await pg.fetchrow(
            "SELECT on_hand, reserved, set_aside FROM stock WHERE sku = $1 AND source_code = $2", sku, source
        )
    return None if row is None else (row["on_hand"], row["reserved"], row["set_aside"])


async def queue_of(service: Service, sku: str) -> list[tuple[uuid.UUID, str, int]]:
    """(order, line, waiting) of each waiting line, in arrival order."""
    async with service.database.connect() as conn:
        pg = await driver(conn)
        rows = await pg.fetch(
            "SELECT order_id, line_id, waiting FROM backorders WHERE sku = $1 AND state = 'waiting' ORDER BY id", sku
        )
    return [(r["order_id"], r["line_id"], r["waiting"]) for r in rows]


async def reservation_of(service: Service, shipment_id: uuid.UUID) -> dict[str, tuple[int, int, str]]:
    """line -> (quantity, released, state)."""
    async with service.database.connect() as conn:
        pg = await driver(conn)
        rows = await pg.fetch(
            "SELECT line_id, quantity, released, state FROM reservations WHERE shipment_id = $1", shipment_id
        )
    return {r["line_id"]: (r["quantity"], r["released"], r["state"]) for r in rows}


async def tombstones_of_order(service: Service, order_id: uuid.UUID) -> list[tuple[str, int, uuid.UUID | None]]:
    async with service.database.connect() as conn:
        pg = await driver(conn)
        rows = await pg.fetch(
            "SELECT line_id, quantity, shipment_id FROM tombstones WHERE order_id = $1 ORDER BY id", order_id
        )
    return [(r["line_id"], r["quantity"], r["shipment_id"]) for r in rows]


async def network(service: Service, events: Any, *codes: str, type: SourceType = SourceType.warehouse) -> None:
    await deliver(service, ROUTING_NETWORK, *(events.source_upserted(code, type=type) for code in codes))


def allocations_topic_kinds(emitted: list[Emitted]) -> list[str]:
    return [e.headers["ce-type"] for e in emitted if e.topic == INVENTORY_ALLOCATIONS.name]


async def reserved_here(service: Service, events: Any, sku: str, source: str, on_hand: int, quantity: int):
    """A source holding `on_hand` units of `sku`, `quantity` of them reserved for line 1 of a planned shipment."""
    await network(service, events, source)
    await deliver(service, INVENTORY_RECEIPTS, events.received(sku, source, on_hand))
    shipment = events.shipment(source, ("1", sku, quantity))
    plan = events.plan(shipment, ship_to_country="DE")
    assert len(of_type(await deliver(service, ROUTING_PLANS, plan), ShipmentReserved)) == 1
    return plan, shipment


# --- cancelled units ----------------------------------------------------------------------------------------------


async def test_cancelled_reserved_units_are_released_and_serve_the_next_waiting_line(
    inventory, events, fresh_sku, fresh_source
):
    reserved, shipment = await reserved_here(inventory, events, fresh_sku, fresh_source, 3, 3)
    waiting = events.plan(backordered=(("1", fresh_sku, 2),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, waiting)

    emitted = await deliver(
        inventory,
        ORDER_EVENTS,
        events.units_cancelled(reserved.data.order_id, ("1", fresh_sku, 2, "reserved", shipment.shipment_id)),
    )

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert (allocated.data.order_id, allocated.data.source_code) == (waiting.data.order_id, fresh_source)
    assert [(x.line_id, x.quantity) for x in allocated.data.lines] == [("1", 2)]
    assert await reservation_of(inventory, shipment.shipment_id) == {"1": (3, 2, "reserved")}
    # One unit still reserved for the first order, two for the waiting one: nothing left over.
    assert await stock_row(inventory, fresh_sku, fresh_source) == (3, 3, 0)
    assert await queue_of(inventory, fresh_sku) == []


async def test_cancelled_reserved_units_nobody_waits_for_become_available(inventory, events, fresh_sku, fresh_source):
    plan, shipment = await reserved_here(inventory, events, fresh_sku, fresh_source, 5, 3)

    emitted = await deliver(
        inventory,
        ORDER_EVENTS,
        events.units_cancelled(plan.data.order_id, ("1", fresh_sku, 3, "reserved", shipment.shipment_id)),
    )

    (level,) = of_type(emitted, StockLevelChanged)
    assert (level.data.on_hand, level.data.reserved, level.data.available) == (5, 0, 5)
    assert await reservation_of(inventory, shipment.shipment_id) == {"1": (3, 3, "released")}


async def test_requested_and_open_units_hold_nothing_here_and_change_nothing(
    inventory, events, fresh_sku, fresh_source
):
    plan, shipment = await reserved_here(inventory, events, fresh_sku, fresh_source, 5, 3)

    emitted = await deliver(
        inventory,
        ORDER_EVENTS,
        events.units_cancelled(
            plan.data.order_id,
            ("1", fresh_sku, 2, "requested", shipment.shipment_id),
            ("2", fresh_sku, 1, "open", None),
        ),
    )

    # The source's fulfillment.cancelled gives requested units back; open units were never held.
    assert emitted == []
    assert await stock_row(inventory, fresh_sku, fresh_source) == (5, 3, 0)
    assert await tombstones_of_order(inventory, plan.data.order_id) == []


async def test_reserved_units_cancelled_without_their_shipment_are_refused_and_change_nothing(
    inventory, events, fresh_sku
):
    order_id = uuid.uuid4()
    (dead,) = await deliver(
        inventory, ORDER_EVENTS, events.units_cancelled(order_id, ("1", fresh_sku, 1, "reserved", None))
    )

    assert dead.topic == DEAD_LETTERS.name
    assert "without the fulfillment_id" in dead.headers["oms-error-message"]
    assert await tombstones_of_order(inventory, order_id) == []


async def test_backordered_units_cancelled_leave_the_queue_and_the_claim_serves_the_next_line(
    inventory, events, fresh_sku, fresh_source
):
    await network(inventory, events, fresh_source)
    whole = events.plan(backordered=(("1", fresh_sku, 3),), ship_to_country="DE", ship_complete=True)
    next_ = events.plan(backordered=(("1", fresh_sku, 2),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, whole, next_)
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 2))

    emitted = await deliver(
        inventory, ORDER_EVENTS, events.units_cancelled(whole.data.order_id, ("1", fresh_sku, 3, "backordered", None))
    )

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert allocated.data.order_id == next_.data.order_id
    assert await queue_of(inventory, fresh_sku) == []
    assert await tombstones_of_order(inventory, whole.data.order_id) == []


# --- cancellations that overtake their plan ----------------------------------------------------------------------


async def test_backordered_units_cancelled_before_their_plan_arrives_never_join_the_queue(
    inventory, client, events, fresh_sku
):
    planned_at = datetime.now(UTC) - timedelta(seconds=5)
    order_id = uuid.uuid4()
    plan = events.plan(
        backordered=(("1", fresh_sku, 3), ("2", fresh_sku, 1)),
        order_id=order_id,
        ship_to_country="DE",
        planned_at=planned_at,
    )
    # The order service saw the plan (routing topic) and cancelled before inventory consumed it.
    cancellation = events.units_cancelled(
        order_id, ("1", fresh_sku, 2, "backordered", None), ("2", fresh_sku, 1, "backordered", None)
    )

    assert await deliver(inventory, ORDER_EVENTS, cancellation) == []
    assert await tombstones_of_order(inventory, order_id) == [("1", 2, None), ("2", 1, None)]

    emitted = await deliver(inventory, ROUTING_PLANS, plan)

    (queued,) = of_type(emitted, BackorderQueued)
    assert [(x.line_id, x.quantity, x.position) for x in queued.data.lines] == [("1", 1, 1)]
    assert await queue_of(inventory, fresh_sku) == [(order_id, "1", 1)]
    (waiting,) = (await client.get(f"/backorders?order_id={order_id}")).json()
    assert (waiting["line_id"], waiting["quantity"]) == ("1", 1)
    # Used once: a plan delivered again (new event id) adds nothing, and no tombstone is left to use.
    assert await tombstones_of_order(inventory, order_id) == []
    assert await deliver(inventory, ROUTING_PLANS, plan.model_copy(update={"id": uuid.uuid4()})) == []
    assert await queue_of(inventory, fresh_sku) == [(order_id, "1", 1)]


async def test_a_cancellation_made_before_a_plan_was_made_is_not_applied_to_it(inventory, events, fresh_sku):
    # A cancellation older than the plan cannot be of the units the plan backorders (it answered an earlier plan,
    # or units served meanwhile): the plan's line waits whole.
    order_id = uuid.uuid4()
    cancelled_at = datetime.now(UTC) - timedelta(minutes=5)
    await deliver(
        inventory,
        ORDER_EVENTS,
        events.units_cancelled(order_id, ("1", fresh_sku, 2, "backordered", None), at=cancelled_at),
    )
    later = events.plan(backordered=(("1", fresh_sku, 2),), order_id=order_id, ship_to_country="DE")

    (queued,) = of_type(await deliver(inventory, ROUTING_PLANS, later), BackorderQueued)

    assert [(x.line_id, x.quantity) for x in queued.data.lines] == [("1", 2)]
    assert await tombstones_of_order(inventory, order_id) == [("1", 2, None)]


async def test_an_older_cancellation_event_without_units_remembers_nothing(inventory, events, fresh_sku):
    order_id = uuid.uuid4()
    assert await deliver(inventory, ORDER_EVENTS, events.lines_cancelled(order_id, ("1", 2))) == []

    (queued,) = of_type(
        await deliver(inventory, ROUTING_PLANS, events.plan(backordered=(("1", fresh_sku, 2),), order_id=order_id)),
        BackorderQueued,
    )

    assert [(x.line_id, x.quantity) for x in queued.data.lines] == [("1", 2)]


async def cancelled_ahead(
    service: Service, events: Any, sku: str, source: str, on_hand: int, *lines: tuple[str, int, int]
) -> tuple[Any, Any]:
    """A source holding `on_hand` units of `sku`, and a plan reserving there (line_id, planned, cancelled) lines
    whose `cancelled` units the order service cancelled before inventory consumed the plan (it has not yet)."""
    await network(service, events, source)
    await deliver(service, INVENTORY_RECEIPTS, events.received(sku, source, on_hand))
    shipment = events.shipment(source, *((line_id, sku, planned) for line_id, planned, _ in lines))
    plan = events.plan(shipment)
    units = [(line_id, sku, cancelled, "reserved", shipment.shipment_id) for line_id, _, cancelled in lines]
    await deliver(service, ORDER_EVENTS, events.units_cancelled(plan.data.order_id, *units))
    return plan, shipment


async def test_reserved_units_cancelled_before_their_plan_arrives_are_never_reserved(
    inventory, events, fresh_sku, fresh_source
):
    plan, shipment = await cancelled_ahead(inventory, events, fresh_sku, fresh_source, 10, ("1", 3, 1), ("2", 1, 1))

    emitted = await deliver(inventory, ROUTING_PLANS, plan)

    # The reservation names what it holds: the order service requests exactly that.
    (reserved,) = of_type(emitted, ShipmentReserved)
    assert [(x.line_id, x.quantity) for x in reserved.data.lines] == [("1", 2)]
    assert await stock_row(inventory, fresh_sku, fresh_source) == (10, 2, 0)
    assert await reservation_of(inventory, shipment.shipment_id) == {
        "1": (3, 1, "reserved"),
        "2": (1, 1, "released"),
    }
    assert await tombstones_of_order(inventory, plan.data.order_id) == []


async def test_a_shipment_whose_every_unit_was_cancelled_before_its_plan_is_not_reserved_and_says_nothing(
    inventory, events, fresh_sku, fresh_source
):
    plan, shipment = await cancelled_ahead(inventory, events, fresh_sku, fresh_source, 10, ("1", 3, 3))

    assert await deliver(inventory, ROUTING_PLANS, plan) == []

    assert await stock_row(inventory, fresh_sku, fresh_source) == (10, 0, 0)
    assert await reservation_of(inventory, shipment.shipment_id) == {"1": (3, 3, "released")}
    # Decided: the same plan again under a new event id reserves nothing.
    assert await deliver(inventory, ROUTING_PLANS, plan.model_copy(update={"id": uuid.uuid4()})) == []
    assert await stock_row(inventory, fresh_sku, fresh_source) == (10, 0, 0)


async def test_a_short_shipment_is_checked_for_what_was_not_cancelled_ahead_of_it(
    inventory, events, fresh_sku, fresh_source
):
    plan, _ = await cancelled_ahead(inventory, events, fresh_sku, fresh_source, 1, ("1", 3, 1))

    (rejected,) = of_type(await deliver(inventory, ROUTING_PLANS, plan), ReservationRejected)

    assert [(s.requested, s.available) for s in rejected.data.shortages] == [(2, 1)]
    assert await tombstones_of_order(inventory, plan.data.order_id) == []


# --- returns -----------------------------------------------------------------------------------------------------


async def test_a_return_in_a_store_restocks_it_and_serves_a_waiting_backorder_the_store_can_ship(
    inventory, events, fresh_sku
):
    store_code, warehouse = fresh("STORE"), fresh("WH")
    await network(inventory, events, store_code, type=SourceType.store)
    await network(inventory, events, warehouse)
    # A pickup at another store cannot be served here; the pickup at this store, younger, can.
    elsewhere = events.plan(backordered=(("1", fresh_sku, 1),), pickup_source=fresh("STORE"))
    pickup = events.plan(backordered=(("1", fresh_sku, 1),), pickup_source=store_code)
    await deliver(inventory, ROUTING_PLANS, elsewhere, pickup)
    sold = uuid.uuid4()

    emitted = await deliver(
        inventory,
        ORDER_EVENTS,
        events.returned(sold, store_code, ("1", fresh_sku, 2, "resellable"), ("2", fresh_sku, 1, "damaged")),
    )

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert (allocated.data.order_id, allocated.data.source_code) == (pickup.data.order_id, store_code)
    assert [(x.line_id, x.quantity) for x in allocated.data.lines] == [("1", 1)]
    # Two resellable units on the shelf, one of them reserved for the pickup; the damaged one is not stock.
    (level,) = of_type(emitted, StockLevelChanged)
    assert (level.data.source_code, level.data.on_hand, level.data.reserved, level.data.available) == (
        store_code,
        2,
        1,
        1,
    )
    assert await stock_row(inventory, fresh_sku, store_code) == (2, 1, 0)
    assert await stock_row(inventory, fresh_sku, warehouse) is None
    assert await queue_of(inventory, fresh_sku) == [(elsewhere.data.order_id, "1", 1)]


async def test_a_return_of_damaged_units_only_restocks_nothing(inventory, events, fresh_sku, fresh_source):
    await network(inventory, events, fresh_source)

    emitted = await deliver(
        inventory, ORDER_EVENTS, events.returned(uuid.uuid4(), fresh_source, ("1", fresh_sku, 1, "damaged"))
    )

    assert emitted == []
    assert await stock_row(inventory, fresh_sku, fresh_source) is None


async def test_a_return_at_a_source_not_heard_of_yet_waits_for_it_and_the_consumer_goes_on(
    inventory, events, fresh_sku, fresh_source
):
    await network(inventory, events, fresh_source)
    waiting = events.plan(backordered=(("1", fresh_sku, 1),))
    await deliver(inventory, ROUTING_PLANS, waiting)
    later = f"STORE-{uuid.uuid4().hex[:8]}"

    emitted = await deliver(
        inventory,
        ORDER_EVENTS,
        events.returned(uuid.uuid4(), later, ("1", fresh_sku, 1, "resellable")),
        events.returned(uuid.uuid4(), fresh_source, ("1", fresh_sku, 1, "resellable")),
    )

    # The one for a source the network has not announced yet waits (not dead-lettered); the other is applied.
    assert [e for e in emitted if e.topic == DEAD_LETTERS.name] == []
    assert await stock_row(inventory, fresh_sku, later) is None
    (allocated,) = of_type(emitted, BackorderAllocated)
    assert allocated.data.order_id == waiting.data.order_id

    await network(inventory, events, later)

    assert await stock_row(inventory, fresh_sku, later) == (1, 0, 0)


async def test_a_return_at_an_inactive_source_is_refused(inventory, events, fresh_sku, fresh_source):
    await network(inventory, events, fresh_source)
    await deliver(inventory, ROUTING_NETWORK, events.source_deactivated(fresh_source))

    (dead,) = await deliver(
        inventory, ORDER_EVENTS, events.returned(uuid.uuid4(), fresh_source, ("1", fresh_sku, 1, "resellable"))
    )

    assert dead.topic == DEAD_LETTERS.name
    assert f"inactive source '{fresh_source}'" in dead.headers["oms-error-message"]
    assert await stock_row(inventory, fresh_sku, fresh_source) is None


async def test_a_return_settles_no_expected_receipt(inventory, client, events, fresh_sku, fresh_source):
    await network(inventory, events, fresh_source)
    friday = (datetime.now(UTC) + timedelta(days=7)).date()
    await deliver(inventory, INVENTORY_RECEIPTS, events.expected(fresh_sku, fresh_source, 2, friday))
    await deliver(inventory, ROUTING_PLANS, events.plan(backordered=(("1", fresh_sku, 3),), ship_to_country="DE"))

    await deliver(
        inventory, ORDER_EVENTS, events.returned(uuid.uuid4(), fresh_source, ("1", fresh_sku, 1, "resellable"))
    )

    # One unit came back and was served; the purchase order still brings the other two on Friday.
    (line,) = (await client.get(f"/backorders/{fresh_sku}")).json()
    assert (line["quantity"], line["expected_date"]) == (2, friday.isoformat())


# --- source cancellations serve the queue -------------------------------------------------------------------------


async def test_units_a_source_cancels_serve_the_queue_at_that_source_first(inventory, events, fresh_sku, fresh_source):
    await network(inventory, events, fresh_source)
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 2))
    shipment = events.shipment(fresh_source, ("1", fresh_sku, 2))
    planned = events.plan(shipment)
    await deliver(inventory, ROUTING_PLANS, planned)
    waiting = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, waiting)

    emitted = await deliver(inventory, FULFILLMENT_UPDATES, events.cancelled(planned, shipment, [("1", 1)]))

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert (allocated.data.order_id, allocated.data.source_code) == (waiting.data.order_id, fresh_source)
    assert await stock_row(inventory, fresh_sku, fresh_source) == (2, 2, 0)


# --- lines served as they join (issue 7, 5a) ---------------------------------------------------------------------


async def test_a_line_served_in_part_as_it_joins_is_announced_only_with_the_units_still_waiting(
    inventory, events, fresh_sku, fresh_source
):
    await network(inventory, events, fresh_source)
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 2))
    plan = events.plan(backordered=(("1", fresh_sku, 5),), ship_to_country="DE")

    emitted = await deliver(inventory, ROUTING_PLANS, plan)

    assert allocations_topic_kinds(emitted) == [BackorderQueued.TYPE, BackorderAllocated.TYPE]
    (queued,) = of_type(emitted, BackorderQueued)
    assert [(x.line_id, x.quantity, x.position) for x in queued.data.lines] == [("1", 3, 1)]
    (allocated,) = of_type(emitted, BackorderAllocated)
    assert [(x.line_id, x.quantity) for x in allocated.data.lines] == [("1", 2)]


async def test_of_two_lines_joining_only_the_one_left_waiting_is_announced(inventory, events, fresh_source):
    served, short = fresh("SKU"), fresh("SKU")
    await network(inventory, events, fresh_source)
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(served, fresh_source, 1))
    plan = events.plan(backordered=(("1", served, 1), ("2", short, 1)), ship_to_country="DE")

    emitted = await deliver(inventory, ROUTING_PLANS, plan)

    (queued,) = of_type(emitted, BackorderQueued)
    assert [(x.line_id, x.sku) for x in queued.data.lines] == [("2", short)]
    (allocated,) = of_type(emitted, BackorderAllocated)
    assert [(x.line_id, x.sku) for x in allocated.data.lines] == [("1", served)]


# --- a re-plan that backorders more units of a waiting line (issue 7, 5b) ------------------------------------------


async def test_a_replan_that_backorders_more_units_of_a_waiting_line_adds_them_at_the_lines_place(
    inventory, client, events, fresh_sku, fresh_source
):
    await network(inventory, events, fresh_source)
    order_id = uuid.uuid4()
    first = events.plan(backordered=(("1", fresh_sku, 2),), order_id=order_id, ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, first)
    younger = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, younger)
    # Routing re-planned 3 units of the line (a source rejected their fulfillment) and found no stock for them.
    replan = events.plan(backordered=(("1", fresh_sku, 3),), order_id=order_id, ship_to_country="DE", attempt=2)

    emitted = await deliver(inventory, ROUTING_PLANS, replan)

    (queued,) = of_type(emitted, BackorderQueued)
    assert [(x.line_id, x.quantity, x.position) for x in queued.data.lines] == [("1", 3, 1)]
    assert await queue_of(inventory, fresh_sku) == [(order_id, "1", 5), (younger.data.order_id, "1", 1)]
    queue = (await client.get(f"/backorders/{fresh_sku}")).json()
    assert [(b["order_id"], b["position"], b["quantity"]) for b in queue] == [
        (str(order_id), 1, 5),
        (str(younger.data.order_id), 2, 1),
    ]

    # Delivered again under a new event id: never added twice.
    assert await deliver(inventory, ROUTING_PLANS, replan.model_copy(update={"id": uuid.uuid4()})) == []
    assert await queue_of(inventory, fresh_sku) == [(order_id, "1", 5), (younger.data.order_id, "1", 1)]

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 5))

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert (allocated.data.order_id, [(x.line_id, x.quantity) for x in allocated.data.lines]) == (order_id, [("1", 5)])
    assert await queue_of(inventory, fresh_sku) == [(younger.data.order_id, "1", 1)]


async def test_a_plan_and_its_replan_in_one_batch_queue_the_line_once_with_both(inventory, events, fresh_sku):
    order_id = uuid.uuid4()
    first = events.plan(backordered=(("1", fresh_sku, 2),), order_id=order_id)
    replan = events.plan(backordered=(("1", fresh_sku, 1),), order_id=order_id, attempt=2)

    emitted = await deliver(inventory, ROUTING_PLANS, first, replan, first.model_copy(update={"id": uuid.uuid4()}))

    (queued,) = of_type(emitted, BackorderQueued)
    assert [(x.line_id, x.quantity) for x in queued.data.lines] == [("1", 3)]
    assert await queue_of(inventory, fresh_sku) == [(order_id, "1", 3)]


async def test_a_plan_delivered_again_after_its_line_was_served_does_not_queue_it_again(
    inventory, events, fresh_sku, fresh_source
):
    await network(inventory, events, fresh_source)
    plan = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, plan)
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 1))
    assert await queue_of(inventory, fresh_sku) == []

    assert await deliver(inventory, ROUTING_PLANS, plan.model_copy(update={"id": uuid.uuid4()})) == []
    assert await queue_of(inventory, fresh_sku) == []


async def test_a_cancellation_and_the_plan_it_overtook_on_two_instances_at_once_end_the_same_either_way(
    inventory, second_inventory, events, fresh_source
):
    await network(inventory, events, fresh_source)
    for _ in range(5):
        sku = fresh("SKU")
        await deliver(inventory, INVENTORY_RECEIPTS, events.received(sku, fresh_source, 10))
        shipment = events.shipment(fresh_source, ("1", sku, 3))
        plan = events.plan(shipment, backordered=(("2", sku, 20),), ship_to_country="DE", planned_at=datetime.now(UTC))
        cancellation = events.units_cancelled(
            plan.data.order_id,
            ("1", sku, 1, "reserved", shipment.shipment_id),
            ("2", sku, 5, "backordered", None),
        )

        await asyncio.gather(
            deliver(inventory, ROUTING_PLANS, plan), deliver(second_inventory, ORDER_EVENTS, cancellation)
        )

        # Plan first: the reservation and the queue give the units back. Cancellation first: the plan reserves and
        # queues the rest. Either way 2 units are reserved, the 10 on hand went to the line (8 after the 2), and
        # 20 - 5 - 8 = 7 units wait, with nothing remembered.
        assert await reservation_of(inventory, shipment.shipment_id) == {"1": (3, 1, "reserved")}
        assert await stock_row(inventory, sku, fresh_source) == (10, 10, 0)
        assert await queue_of(inventory, sku) == [(plan.data.order_id, "2", 7)]
        assert await tombstones_of_order(inventory, plan.data.order_id) == []


async def test_tombstones_no_plan_used_within_the_retention_are_pruned(inventory, events, fresh_sku):
    stale = uuid.uuid4()
    async with inventory.database.transaction() as conn:
        await (await driver(conn)).execute(
            "INSERT INTO tombstones (order_id, line_id, quantity, cancelled_at, created_at) "
            "VALUES ($1, '1', 2, now() - interval '9 days', now() - interval '9 days')",
            stale,
        )
    fresh_order = uuid.uuid4()

    await deliver(
        inventory, ORDER_EVENTS, events.units_cancelled(fresh_order, ("1", fresh_sku, 1, "backordered", None))
    )

    assert await tombstones_of_order(inventory, stale) == []
    assert await tombstones_of_order(inventory, fresh_order) == [("1", 1, None)]
