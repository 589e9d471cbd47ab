"""Backorders released FIFO, through the real consumer path (inbox, handler, outbox) on a real PostgreSQL: restocks,
counts, returns and rejected fulfillments serve the queue; cancelled lines leave it; expected receipts date it; bad
input is refused and changes nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from oms_contracts.inventory import BackorderAllocated, BackorderQueued, ShipmentReserved, StockLevelChanged
from oms_contracts.routing import RuleChainSet
from oms_contracts.topics import (
    DEAD_LETTERS,
    FULFILLMENT_UPDATES,
    INVENTORY_ALLOCATIONS,
    INVENTORY_RECEIPTS,
    ORDER_EVENTS,
    ROUTING_NETWORK,
    ROUTING_PLANS,
)
from oms_inventory import store
from oms_inventory.domain import NewBackorder, ReleaseTerms
from oms_runtime import Service
from oms_runtime.database import driver
from oms_runtime.testing import Emitted, deliver

TOKEN = "inventory-test-token"
FRIDAY = date(2026, 12, 4)


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


async def queue_of(service: Service, sku: str) -> list[tuple[uuid.UUID, str, int, int, str | None]]:
    """(order, line, waiting, set aside, anchor) of each waiting line, in arrival order."""
    async with service.database.connect() as conn:
        pg = await driver(conn)
        rows = await pg.fetch(
            "SELECT order_id, line_id, waiting, set_aside, anchor FROM backorders "
            "WHERE sku = $1 AND state = 'waiting' ORDER BY id",
            sku,
        )
    return [(r["order_id"], r["line_id"], r["waiting"], r["set_aside"], r["anchor"]) for r in rows]


async def reservations_of(service: Service, shipment_id: uuid.UUID) -> dict[str, tuple[str, int, str]]:
    async with service.database.connect() as conn:
        pg = await driver(conn)
        rows = await pg.fetch(
            "SELECT line_id, source_code, quantity, state FROM reservations WHERE shipment_id = $1", shipment_id
        )
    return {r["line_id"]: (r["source_code"], r["quantity"], r["state"]) for r in rows}


async def network(service: Service, events: Any, *sources: tuple[str, tuple[str, ...]]) -> None:
    await deliver(
        service, ROUTING_NETWORK, *(events.source_upserted(code, countries=countries) for code, countries in sources)
    )


async def gathering_whole_order(service: Service, events: Any, sku: str, gathering: str, other: str):
    """An order that ships complete waits for 3 units of `sku`: 2 arrived at `gathering` and are set aside for it
    there (it gathers there); 1 arrived at `other`, which cannot ship it whole, and stays available."""
    await network(service, events, (gathering, ("DE",)), (other, ("DE",)))
    whole = events.plan(backordered=(("1", sku, 3),), ship_to_country="DE", ship_complete=True)
    await deliver(service, ROUTING_PLANS, whole)
    await deliver(service, INVENTORY_RECEIPTS, events.received(sku, gathering, 2))
    await deliver(service, INVENTORY_RECEIPTS, events.received(sku, other, 1))
    return whole


# --- the example ------------------------------------------------------------------------------------------


async def test_three_backordered_orders_and_a_restock_of_two_the_two_oldest_are_served_and_the_third_moves_to_the_front(
    inventory, client, events, fresh_sku, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    plans = [events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE") for _ in range(3)]
    for plan in plans:
        await deliver(inventory, ROUTING_PLANS, plan)

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 2))

    first, second = of_type(emitted, BackorderAllocated)
    assert [a.data.order_id for a in (first, second)] == [plans[0].data.order_id, plans[1].data.order_id]
    assert {a.data.source_code for a in (first, second)} == {fresh_source}
    assert [(x.line_id, x.sku, x.quantity) for x in first.data.lines] == [("1", fresh_sku, 1)]
    assert first.data.ship_by == datetime.now(UTC).date() + timedelta(days=1)
    assert next(e for e in emitted if e.headers["ce-type"] == BackorderAllocated.TYPE).topic == (
        INVENTORY_ALLOCATIONS.name
    )
    (level,) = of_type(emitted, StockLevelChanged)
    assert (level.data.on_hand, level.data.reserved, level.data.available) == (2, 2, 0)
    assert await reservations_of(inventory, first.data.shipment_id) == {"1": (fresh_source, 1, "reserved")}

    (third,) = (await client.get(f"/backorders/{fresh_sku}")).json()
    assert (third["order_id"], third["position"]) == (str(plans[2].data.order_id), 1)

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 1))
    (last,) = of_type(emitted, BackorderAllocated)
    assert last.data.order_id == plans[2].data.order_id
    assert await queue_of(inventory, fresh_sku) == []


async def test_a_line_whose_country_the_restocked_source_does_not_serve_is_skipped(
    inventory, events, fresh_sku, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    to_france = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="FR")
    to_germany = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, to_france, to_germany)

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 5))

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert allocated.data.order_id == to_germany.data.order_id
    assert [line[0] for line in await queue_of(inventory, fresh_sku)] == [to_france.data.order_id]
    assert await stock_row(inventory, fresh_sku, fresh_source) == (5, 1, 0)


async def test_a_splittable_line_is_served_in_part_and_the_rest_keeps_its_place(
    inventory, client, events, fresh_sku, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    big = events.plan(backordered=(("1", fresh_sku, 5),), ship_to_country="DE")
    small = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, big, small)

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 3))

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert (allocated.data.order_id, allocated.data.lines[0].quantity) == (big.data.order_id, 3)
    queue = (await client.get(f"/backorders/{fresh_sku}")).json()
    assert [(b["order_id"], b["position"], b["quantity"]) for b in queue] == [
        (str(big.data.order_id), 1, 2),
        (str(small.data.order_id), 2, 1),
    ]


# --- every increase serves the queue ------------------------------------------------------------------------------


async def test_a_count_upwards_serves_the_queue(inventory, events, fresh_sku, fresh_source):
    await network(inventory, events, (fresh_source, ("DE",)))
    plan = events.plan(backordered=(("1", fresh_sku, 2),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, plan)

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.counted(fresh_sku, fresh_source, 4))

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert allocated.data.order_id == plan.data.order_id
    assert await stock_row(inventory, fresh_sku, fresh_source) == (4, 2, 0)


async def test_units_of_a_rejected_fulfillment_serve_the_queue_before_anyone_else(
    inventory, events, fresh_sku, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 2))
    shipment = events.shipment(fresh_source, ("1", fresh_sku, 2))
    planned = events.plan(shipment)
    await deliver(inventory, ROUTING_PLANS, planned)
    waiting = events.plan(backordered=(("1", fresh_sku, 2),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, waiting)

    emitted = await deliver(inventory, FULFILLMENT_UPDATES, events.rejected(planned, shipment))

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert allocated.data.order_id == waiting.data.order_id
    # The units went from one reservation to the next: the published level did not change, so none is published.
    assert of_type(emitted, StockLevelChanged) == []
    assert await stock_row(inventory, fresh_sku, fresh_source) == (2, 2, 0)


async def test_a_released_shipment_is_settled_like_any_other_when_it_ships(inventory, events, fresh_sku, fresh_source):
    await network(inventory, events, (fresh_source, ("DE",)))
    plan = events.plan(backordered=(("1", fresh_sku, 2),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, plan)
    (allocated,) = of_type(
        await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 2)), BackorderAllocated
    )
    as_planned = events.shipment(fresh_source, ("1", fresh_sku, 2)).model_copy(
        update={"shipment_id": allocated.data.shipment_id}
    )

    await deliver(inventory, FULFILLMENT_UPDATES, events.shipped(plan, as_planned))

    assert await stock_row(inventory, fresh_sku, fresh_source) == (0, 0, 0)
    assert await reservations_of(inventory, allocated.data.shipment_id) == {"1": (fresh_source, 2, "shipped")}


# --- lines that join while the stock is already there -------------------------------------------------------------
# Routing plans from its own view of stock levels, which lags: it may backorder a line for which a source already
# holds stock. That line is served at once, as if the stock had just arrived, instead of waiting for a receipt that
# may never come.


async def test_a_line_backordered_beside_its_stock_is_served_at_once_and_never_announced_as_waiting(
    inventory, events, fresh_sku, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 3))
    plan = events.plan(backordered=(("1", fresh_sku, 2),), ship_to_country="DE")

    emitted = await deliver(inventory, ROUTING_PLANS, plan)

    # Only the allocation: a backorder_queued would mail the customer to wait for units that ship now.
    kinds = [e.headers["ce-type"] for e in emitted if e.topic == INVENTORY_ALLOCATIONS.name]
    assert kinds == [BackorderAllocated.TYPE]
    assert {e.key for e in emitted if e.topic == INVENTORY_ALLOCATIONS.name} == {str(plan.data.order_id)}
    (allocated,) = of_type(emitted, BackorderAllocated)
    assert (allocated.data.order_id, allocated.data.source_code) == (plan.data.order_id, fresh_source)
    assert [(x.line_id, x.sku, x.quantity) for x in allocated.data.lines] == [("1", fresh_sku, 2)]
    assert allocated.data.ship_by == datetime.now(UTC).date() + timedelta(days=1)
    (level,) = of_type(emitted, StockLevelChanged)
    assert (level.data.sku, level.data.source_code) == (fresh_sku, fresh_source)
    assert (level.data.on_hand, level.data.reserved, level.data.available) == (3, 2, 1)
    assert await queue_of(inventory, fresh_sku) == []
    assert await reservations_of(inventory, allocated.data.shipment_id) == {"1": (fresh_source, 2, "reserved")}


async def test_a_plan_that_reserves_a_shipment_and_backorders_what_the_same_source_still_has_gets_both(
    inventory, events, fresh_sku, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    other = fresh("SKU")
    await deliver(
        inventory,
        INVENTORY_RECEIPTS,
        events.received(fresh_sku, fresh_source, 1),
        events.received(other, fresh_source, 4),
    )
    plan = events.plan(
        events.shipment(fresh_source, ("1", other, 3)), backordered=(("2", fresh_sku, 1),), ship_to_country="DE"
    )

    emitted = await deliver(inventory, ROUTING_PLANS, plan)

    kinds = [e.headers["ce-type"] for e in emitted if e.topic == INVENTORY_ALLOCATIONS.name]
    assert kinds == [ShipmentReserved.TYPE, BackorderAllocated.TYPE]
    # One level per stock row the batch changed, with its final value.
    levels = {(x.data.sku, x.data.reserved, x.data.available) for x in of_type(emitted, StockLevelChanged)}
    assert levels == {(other, 3, 1), (fresh_sku, 1, 0)}


async def test_an_older_line_the_source_cannot_serve_is_passed_over_and_the_line_that_joins_is_served(
    inventory, events, fresh_sku, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    to_france = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="FR")
    await deliver(inventory, ROUTING_PLANS, to_france)
    # The source does not ship to France: the receipt leaves its stock available, and the French line waits.
    assert (
        of_type(
            await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 1)),
            BackorderAllocated,
        )
        == []
    )
    to_germany = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")

    emitted = await deliver(inventory, ROUTING_PLANS, to_germany)

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert allocated.data.order_id == to_germany.data.order_id
    assert [line[0] for line in await queue_of(inventory, fresh_sku)] == [to_france.data.order_id]
    assert await stock_row(inventory, fresh_sku, fresh_source) == (1, 1, 0)


async def test_lines_that_join_together_beside_stock_are_served_oldest_first(
    inventory, client, events, fresh_sku, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 1))
    older = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")
    younger = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")

    emitted = await deliver(inventory, ROUTING_PLANS, older, younger)

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert allocated.data.order_id == older.data.order_id
    # Only the line that still waits is announced, with its place once the older line was served.
    (queued,) = of_type(emitted, BackorderQueued)
    assert queued.data.order_id == younger.data.order_id
    assert [(x.line_id, x.quantity, x.position) for x in queued.data.lines] == [("1", 1, 1)]
    queue = (await client.get(f"/backorders/{fresh_sku}")).json()
    assert [(b["order_id"], b["position"]) for b in queue] == [(str(younger.data.order_id), 1)]


async def test_a_line_left_waiting_beside_stock_is_served_before_the_line_that_joins(
    inventory, events, fresh_sku, fresh_source
):
    # A version before this one queued lines without offering them the stock already there: such a line still
    # waits at the front when the next line of its SKU joins, and the source serves it first (FIFO).
    await network(inventory, events, (fresh_source, ("DE",)))
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 1))
    left, left_plan = uuid.uuid4(), uuid.uuid4()
    async with inventory.database.transaction() as conn:
        await store.queue_backorders(
            await driver(conn), [NewBackorder(left, left_plan, "1", fresh_sku, 1, ReleaseTerms("DE"))]
        )
    joining = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")

    emitted = await deliver(inventory, ROUTING_PLANS, joining)

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert allocated.data.order_id == left
    assert [line[0] for line in await queue_of(inventory, fresh_sku)] == [joining.data.order_id]


async def test_an_order_that_ships_complete_joining_beside_part_of_its_stock_gathers_it_and_leaves_whole(
    inventory, events, fresh_source
):
    tent, lamp = fresh("TENT"), fresh("LAMP")
    await network(inventory, events, (fresh_source, ("DE",)))
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(tent, fresh_source, 2))
    whole = events.plan(backordered=(("1", tent, 2), ("2", lamp, 1)), ship_to_country="DE", ship_complete=True)

    emitted = await deliver(inventory, ROUTING_PLANS, whole)

    # The source has the tents, not the lamp: the tents are set aside for the order, which ships whole later.
    assert of_type(emitted, BackorderAllocated) == []
    assert await stock_row(inventory, tent, fresh_source) == (2, 0, 2)
    younger = events.plan(backordered=(("1", tent, 1),), ship_to_country="DE")
    assert of_type(await deliver(inventory, ROUTING_PLANS, younger), BackorderAllocated) == []

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.received(lamp, fresh_source, 1))

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert allocated.data.order_id == whole.data.order_id
    assert sorted((x.line_id, x.sku, x.quantity) for x in allocated.data.lines) == [("1", tent, 2), ("2", lamp, 1)]


async def test_a_line_joining_beside_stock_passes_over_an_older_order_gathering_elsewhere_and_keeps_its_claim(
    inventory, events, fresh_sku
):
    gathering, other = fresh("WH"), fresh("WH")
    whole = await gathering_whole_order(inventory, events, fresh_sku, gathering, other)
    assert await stock_row(inventory, fresh_sku, other) == (1, 0, 0)
    joining = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")

    emitted = await deliver(inventory, ROUTING_PLANS, joining)

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert (allocated.data.order_id, allocated.data.source_code) == (joining.data.order_id, other)
    assert await queue_of(inventory, fresh_sku) == [(whole.data.order_id, "1", 3, 2, gathering)]
    assert await stock_row(inventory, fresh_sku, gathering) == (2, 0, 2)


async def test_an_order_that_ships_complete_joining_beside_all_of_its_stock_leaves_at_once_as_one_shipment(
    inventory, events, fresh_source
):
    tent, lamp = fresh("TENT"), fresh("LAMP")
    await network(inventory, events, (fresh_source, ("DE",)))
    await deliver(
        inventory, INVENTORY_RECEIPTS, events.received(tent, fresh_source, 2), events.received(lamp, fresh_source, 1)
    )
    whole = events.plan(backordered=(("1", tent, 2), ("2", lamp, 1)), ship_to_country="DE", ship_complete=True)

    emitted = await deliver(inventory, ROUTING_PLANS, whole)

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert sorted((x.line_id, x.sku, x.quantity) for x in allocated.data.lines) == [("1", tent, 2), ("2", lamp, 1)]
    assert await queue_of(inventory, tent) == [] and await queue_of(inventory, lamp) == []


# --- orders that ship complete ------------------------------------------------------------------------------------


async def test_an_order_that_ships_complete_waits_whole_with_stock_set_aside_and_leaves_as_one_shipment(
    inventory, client, events, fresh_source
):
    tent, lamp = fresh("TENT"), fresh("LAMP")
    await network(inventory, events, (fresh_source, ("DE",)))
    whole = events.plan(backordered=(("1", tent, 2), ("2", lamp, 1)), ship_to_country="DE", ship_complete=True)
    younger = events.plan(backordered=(("1", tent, 1),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, whole, younger)

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.received(tent, fresh_source, 2))
    assert of_type(emitted, BackorderAllocated) == []
    (level,) = of_type(emitted, StockLevelChanged)
    # Set aside counts as reserved for everyone who reads stock levels.
    assert (level.data.on_hand, level.data.reserved, level.data.available) == (2, 2, 0)
    assert await stock_row(inventory, tent, fresh_source) == (2, 0, 2)
    head = (await client.get(f"/backorders/{tent}")).json()[0]
    assert (head["order_id"], head["set_aside"], head["set_aside_at"]) == (str(whole.data.order_id), 2, fresh_source)

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.received(lamp, fresh_source, 1))
    (allocated,) = of_type(emitted, BackorderAllocated)
    assert allocated.data.order_id == whole.data.order_id
    assert sorted((x.line_id, x.sku, x.quantity) for x in allocated.data.lines) == [("1", tent, 2), ("2", lamp, 1)]
    assert await stock_row(inventory, tent, fresh_source) == (2, 2, 0)
    assert [line[0] for line in await queue_of(inventory, tent)] == [younger.data.order_id]


# --- cancellations ------------------------------------------------------------------------------------------------


async def test_a_cancelled_line_leaves_the_queue_and_the_next_line_moves_up(
    inventory, client, events, fresh_sku, fresh_source
):
    first = events.plan(backordered=(("1", fresh_sku, 2),), ship_to_country="DE")
    second = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, first, second)

    emitted = await deliver(inventory, ORDER_EVENTS, events.lines_cancelled(first.data.order_id, ("1", 2)))

    assert emitted == []
    queue = (await client.get(f"/backorders/{fresh_sku}")).json()
    assert [(b["order_id"], b["position"]) for b in queue] == [(str(second.data.order_id), 1)]


async def test_the_units_set_aside_for_a_cancelled_line_serve_the_next_one(inventory, events, fresh_sku, fresh_source):
    await network(inventory, events, (fresh_source, ("DE",)))
    whole = events.plan(backordered=(("1", fresh_sku, 3),), ship_to_country="DE", ship_complete=True)
    next_ = events.plan(backordered=(("1", fresh_sku, 2),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, whole, next_)
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 2))
    assert await stock_row(inventory, fresh_sku, fresh_source) == (2, 0, 2)

    emitted = await deliver(inventory, ORDER_EVENTS, events.lines_cancelled(whole.data.order_id, ("1", 3)))

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert (allocated.data.order_id, allocated.data.lines[0].quantity) == (next_.data.order_id, 2)
    assert await stock_row(inventory, fresh_sku, fresh_source) == (2, 2, 0)


async def test_other_order_events_and_cancellations_of_lines_not_waiting_change_nothing(inventory, events, fresh_sku):
    plan = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, plan)

    emitted = await deliver(
        inventory,
        ORDER_EVENTS,
        events.lines_cancelled(uuid.uuid4(), ("1", 1)),
        events.lines_cancelled(plan.data.order_id, ("9", 1)),
    )

    assert emitted == []
    assert len(await queue_of(inventory, fresh_sku)) == 1


# --- queueing: position and expected date ------------------------------------------------------------------------


async def test_a_queued_line_is_announced_with_its_place_and_the_date_announced_receipts_give_it(
    inventory, events, fresh_sku, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    await deliver(inventory, INVENTORY_RECEIPTS, events.expected(fresh_sku, fresh_source, 3, FRIDAY, reference="PO"))
    await deliver(inventory, ROUTING_PLANS, events.plan(backordered=(("1", fresh_sku, 2),), ship_to_country="DE"))

    emitted = await deliver(
        inventory,
        ROUTING_PLANS,
        events.plan(backordered=(("1", fresh_sku, 1), ("2", fresh_sku, 1)), ship_to_country="DE"),
    )

    (queued,) = of_type(emitted, BackorderQueued)
    assert [(x.line_id, x.position, x.expected_date) for x in queued.data.lines] == [("1", 2, FRIDAY), ("2", 3, None)]


async def test_an_order_that_ships_complete_is_not_dated_while_one_of_its_lines_has_no_announcement(
    inventory, events, fresh_sku, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    await deliver(inventory, INVENTORY_RECEIPTS, events.expected(fresh_sku, fresh_source, 5, FRIDAY))
    whole = events.plan(
        backordered=(("1", fresh_sku, 1), ("2", fresh("SKU"), 1)), ship_to_country="DE", ship_complete=True
    )

    (queued,) = of_type(await deliver(inventory, ROUTING_PLANS, whole), BackorderQueued)

    assert [(x.line_id, x.expected_date) for x in queued.data.lines] == [("1", None), ("2", None)]


async def test_an_orders_waiting_lines_are_listed_with_their_live_place_and_date(
    inventory, client, events, fresh_sku, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    ahead = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")
    mine = events.plan(backordered=(("1", fresh_sku, 1), ("2", fresh("SKU"), 4)), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, ahead, mine)
    await deliver(inventory, INVENTORY_RECEIPTS, events.expected(fresh_sku, fresh_source, 2, FRIDAY))

    response = await client.get("/backorders", params={"order_id": str(mine.data.order_id)})

    assert response.status_code == 200
    assert [(b["line_id"], b["position"], b["quantity"], b["expected_date"]) for b in response.json()] == [
        ("1", 2, 1, FRIDAY.isoformat()),
        ("2", 1, 4, None),
    ]
    await deliver(inventory, ORDER_EVENTS, events.lines_cancelled(ahead.data.order_id, ("1", 1)))
    moved_up = (await client.get("/backorders", params={"order_id": str(mine.data.order_id)})).json()
    assert moved_up[0]["position"] == 1


# --- expected receipts --------------------------------------------------------------------------------------------


async def expected_rows(service: Service, sku: str) -> list[tuple[int, int, date, str | None]]:
    async with service.database.connect() as conn:
        pg = await driver(conn)
        rows = await pg.fetch(
            "SELECT quantity, outstanding, expected_date, reference FROM expected_receipts WHERE sku = $1 ORDER BY id",
            sku,
        )
    return [(r["quantity"], r["outstanding"], r["expected_date"], r["reference"]) for r in rows]


async def test_an_expected_receipt_is_settled_by_the_receipt_with_its_reference(
    inventory, events, fresh_sku, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    await deliver(inventory, INVENTORY_RECEIPTS, events.expected(fresh_sku, fresh_source, 10, FRIDAY, reference="PO-1"))
    assert await expected_rows(inventory, fresh_sku) == [(10, 10, FRIDAY, "PO-1")]

    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 8, reference="PO-1"))

    assert await expected_rows(inventory, fresh_sku) == [(10, 0, FRIDAY, "PO-1")]


async def test_receipts_without_a_reference_use_up_the_earliest_expected_receipt(
    inventory, events, fresh_sku, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    later, sooner = FRIDAY + timedelta(days=7), FRIDAY
    await deliver(
        inventory,
        INVENTORY_RECEIPTS,
        events.expected(fresh_sku, fresh_source, 5, later),
        events.expected(fresh_sku, fresh_source, 3, sooner),
    )

    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 4))

    assert await expected_rows(inventory, fresh_sku) == [(5, 4, later, None), (3, 0, sooner, None)]


# --- bad input: refused with the reason, nothing changes, the consumer goes on ------------------------------------


async def test_an_expected_receipt_for_a_source_not_heard_of_yet_waits_for_it(inventory, events, fresh_sku):
    later = f"WH-{uuid.uuid4().hex[:8]}"

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.expected(fresh_sku, later, 5, FRIDAY))

    assert emitted == []
    assert await expected_rows(inventory, fresh_sku) == []
    await network(inventory, events, (later, ("DE",)))
    assert await expected_rows(inventory, fresh_sku) == [(5, 5, FRIDAY, None)]


async def test_an_expected_receipt_for_an_inactive_source_is_refused(inventory, events, fresh_sku, fresh_source):
    await network(inventory, events, (fresh_source, ("DE",)))
    await deliver(inventory, ROUTING_NETWORK, events.source_deactivated(fresh_source))

    (dead,) = await deliver(inventory, INVENTORY_RECEIPTS, events.expected(fresh_sku, fresh_source, 5, FRIDAY))

    assert dead.headers["oms-error-message"].startswith(f"inactive source '{fresh_source}'")
    assert await expected_rows(inventory, fresh_sku) == []


@pytest.mark.parametrize("kind", ["received", "expected"])
async def test_a_quantity_of_zero_is_dead_lettered_with_the_field_error_and_the_rest_of_the_batch_applies(
    inventory, events, fresh_sku, fresh_source, kind
):
    await network(inventory, events, (fresh_source, ("DE",)))
    plan = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, plan)
    valid = events.received(fresh_sku, fresh_source, 1)
    bad = (
        events.received(fresh_sku, fresh_source, 1)
        if kind == "received"
        else events.expected(fresh_sku, fresh_source, 1, FRIDAY)
    )
    body = json.loads(bad.to_bytes())
    body["data"]["quantity"] = 0

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, json.dumps(body).encode(), valid)

    (dead,) = [e for e in emitted if e.topic == DEAD_LETTERS.name]
    assert "quantity" in dead.headers["oms-error-message"]
    assert "greater than 0" in dead.headers["oms-error-message"]
    (allocated,) = of_type(emitted, BackorderAllocated)
    assert allocated.data.order_id == plan.data.order_id
    assert await stock_row(inventory, fresh_sku, fresh_source) == (1, 1, 0)
    assert await expected_rows(inventory, fresh_sku) == []


async def test_a_receipt_for_a_source_not_heard_of_yet_serves_nobody_and_the_next_receipt_does(
    inventory, events, fresh_sku, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    plan = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, plan)

    emitted = await deliver(
        inventory,
        INVENTORY_RECEIPTS,
        events.received(fresh_sku, f"WH-{uuid.uuid4().hex[:8]}", 5),
        events.received(fresh_sku, fresh_source, 1),
    )

    assert [e.topic for e in emitted].count(DEAD_LETTERS.name) == 0
    (allocated,) = of_type(emitted, BackorderAllocated)
    assert allocated.data.source_code == fresh_source


# --- the network --------------------------------------------------------------------------------------------------


async def test_a_source_teaches_its_countries_handling_days_and_time_zone(inventory, events, fresh_sku, fresh_source):
    await deliver(
        inventory,
        ROUTING_NETWORK,
        events.source_upserted(fresh_source, countries=("AT",), handling_days=3, timezone="Pacific/Kiritimati"),
    )
    plan = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="AT")
    await deliver(inventory, ROUTING_PLANS, plan)

    (allocated,) = of_type(
        await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 1)), BackorderAllocated
    )

    # Kiritimati is UTC+14: its date is a day ahead of UTC's most of the day.
    from zoneinfo import ZoneInfo

    today_there = datetime.now(UTC).astimezone(ZoneInfo("Pacific/Kiritimati")).date()
    assert allocated.data.ship_by == today_there + timedelta(days=3)


async def test_a_rule_chain_on_the_network_topic_is_skipped_not_dead_lettered(inventory, events, fresh_source):
    from oms_contracts.common import RoutingRule
    from oms_contracts.routing import RuleChainData

    chain = RuleChainSet(
        source="/oms/routing",
        subject="web-eu",
        data=RuleChainData(
            channel="web-eu",
            rules=[RoutingRule.fewest_shipments, RoutingRule.nearest],
            set_by="ops",
            set_at=datetime.now(UTC),
        ),
    )

    emitted = await deliver(inventory, ROUTING_NETWORK, chain, events.source_upserted(fresh_source))

    assert emitted == []


async def test_units_set_aside_at_a_source_that_is_deactivated_go_back_and_the_order_gathers_elsewhere(
    inventory, client, events, fresh_sku
):
    east, west = fresh("EAST"), fresh("WEST")
    whole = await gathering_whole_order(inventory, events, fresh_sku, east, west)
    assert await queue_of(inventory, fresh_sku) == [(whole.data.order_id, "1", 3, 2, east)]

    emitted = await deliver(inventory, ROUTING_NETWORK, events.source_deactivated(east))

    assert await queue_of(inventory, fresh_sku) == [(whole.data.order_id, "1", 3, 1, west)]
    assert await stock_row(inventory, fresh_sku, east) == (2, 0, 0)
    assert await stock_row(inventory, fresh_sku, west) == (1, 0, 1)
    assert {(e.data.source_code, e.data.available) for e in of_type(emitted, StockLevelChanged)} == {
        (east, 2),
        (west, 0),
    }


async def test_a_source_that_starts_shipping_to_a_country_serves_the_lines_waiting_for_it(
    inventory, events, fresh_sku, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 4))
    to_austria = events.plan(backordered=(("1", fresh_sku, 2),), ship_to_country="AT")
    await deliver(inventory, ROUTING_PLANS, to_austria)

    emitted = await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source, countries=("DE", "AT")))

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert allocated.data.order_id == to_austria.data.order_id
    # Published again, unchanged, the source moves nothing.
    again = events.source_upserted(fresh_source, countries=("DE", "AT"))
    assert await deliver(inventory, ROUTING_NETWORK, again) == []


# --- two instances ------------------------------------------------------------------------------------------------


async def test_two_instances_restocking_one_sku_at_two_sources_at_once_never_serve_a_line_twice(
    inventory, second_inventory, events
):
    east, west = fresh("EAST"), fresh("WEST")
    await network(inventory, events, (east, ("DE",)), (west, ("DE",)))
    for _ in range(5):
        sku = fresh("SKU")
        plans = [events.plan(backordered=(("1", sku, 2),), ship_to_country="DE") for _ in range(2)]
        await deliver(inventory, ROUTING_PLANS, *plans)

        results = await asyncio.gather(
            deliver(inventory, INVENTORY_RECEIPTS, events.received(sku, east, 3)),
            deliver(second_inventory, INVENTORY_RECEIPTS, events.received(sku, west, 3)),
        )

        allocated = [a for batch in results for a in of_type(batch, BackorderAllocated)]
        units: dict[uuid.UUID, int] = {}
        for a in allocated:
            units[a.data.order_id] = units.get(a.data.order_id, 0) + sum(x.quantity for x in a.data.lines)
        # 6 units came in for 4 waiting: each line got exactly what it waited for, and 2 units are left.
        assert units == {p.data.order_id: 2 for p in plans}
        assert await queue_of(inventory, sku) == []
        (e_on, e_res, _), (w_on, w_res, _) = (
            await stock_row(inventory, sku, east),
            await stock_row(inventory, sku, west),
        )
        assert (e_on + w_on, e_res + w_res) == (6, 4)


async def test_a_line_joining_while_another_instance_receives_its_stock_is_served_either_way(
    inventory, second_inventory, events, fresh_source
):
    # The plan and the receipt take the SKU's queue lock: whichever comes second sees what the first committed, so
    # the line is served by the receipt (it found the line) or by the plan (it found the stock), never left waiting.
    await network(inventory, events, (fresh_source, ("DE",)))
    for _ in range(8):
        sku = fresh("SKU")
        plan = events.plan(backordered=(("1", sku, 2),), ship_to_country="DE")

        results = await asyncio.gather(
            deliver(inventory, ROUTING_PLANS, plan),
            deliver(second_inventory, INVENTORY_RECEIPTS, events.received(sku, fresh_source, 2)),
        )

        (allocated,) = [a for batch in results for a in of_type(batch, BackorderAllocated)]
        assert allocated.data.order_id == plan.data.order_id
        assert await queue_of(inventory, sku) == []
        assert await stock_row(inventory, sku, fresh_source) == (2, 2, 0)


# --- long queues --------------------------------------------------------------------------------------------------


async def test_a_line_far_back_behind_lines_the_source_cannot_serve_is_found_by_reading_further(
    inventory, events, fresh_sku, fresh_source
):
    # More lines than a release reads at first, all for a country the source does not ship to, then one it does:
    # the release reads on until it finds it, and never serves the others.
    await network(inventory, events, (fresh_source, ("DE",)))
    abroad = [events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="FR") for _ in range(700)]
    for start in range(0, len(abroad), 250):
        await deliver(inventory, ROUTING_PLANS, *abroad[start : start + 250])
    at_home = events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, at_home)

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 1))

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert allocated.data.order_id == at_home.data.order_id
    assert len(await queue_of(inventory, fresh_sku)) == 700


async def test_a_restock_serves_hundreds_of_waiting_lines_in_arrival_order(inventory, events, fresh_sku, fresh_source):
    await network(inventory, events, (fresh_source, ("DE",)))
    plans = [events.plan(backordered=(("1", fresh_sku, 1),), ship_to_country="DE") for _ in range(600)]
    for start in range(0, len(plans), 300):
        await deliver(inventory, ROUTING_PLANS, *plans[start : start + 300])

    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 550))

    served = [a.data.order_id for a in of_type(emitted, BackorderAllocated)]
    assert served == [p.data.order_id for p in plans[:550]]
    assert [line[0] for line in await queue_of(inventory, fresh_sku)] == [p.data.order_id for p in plans[550:]]


async def test_a_cancellation_racing_a_restock_on_another_instance_never_serves_a_cancelled_unit(
    inventory, second_inventory, events, fresh_source
):
    await network(inventory, events, (fresh_source, ("DE",)))
    for _ in range(5):
        sku = fresh("SKU")
        plan = events.plan(backordered=(("1", sku, 3),), ship_to_country="DE")
        await deliver(inventory, ROUTING_PLANS, plan)

        results = await asyncio.gather(
            deliver(inventory, INVENTORY_RECEIPTS, events.received(sku, fresh_source, 2)),
            deliver(second_inventory, ORDER_EVENTS, events.lines_cancelled(plan.data.order_id, ("1", 2))),
        )

        served = sum(x.quantity for batch in results for a in of_type(batch, BackorderAllocated) for x in a.data.lines)
        (waiting,) = await queue_of(inventory, sku) or [(None, "1", 0, 0, None)]
        # Restock first: 2 served, then 2 of the last 1 waiting cancelled. Cancellation first: 1 waits, 1 served.
        assert (served, waiting[2]) in {(2, 0), (1, 0)}
        on_hand, reserved, _ = await stock_row(inventory, sku, fresh_source)
        assert (on_hand, reserved) == (2, served)
