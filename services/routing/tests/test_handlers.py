"""Routing's consumers on a real PostgreSQL, through the runtime's consumer path (inbox, handler, outbox)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from oms_contracts.common import Address, Line, OrderOptions, RoutingRule, ShippingMethod, SourceType
from oms_contracts.inventory import (
    BackorderAllocated,
    BackorderAllocatedData,
    LowStock,
    LowStockData,
    ReservationRejected,
    ReservationRejectedData,
    Shortage,
    StockLevelChanged,
    StockLevelChangedData,
)
from oms_contracts.order import OrderPaid, ReplanRequested, ReplanRequestedData, StatusChanged, StatusChangedData
from oms_contracts.routing import FulfillmentPlanned, FulfillmentPlannedData, PlannedShipment
from oms_contracts.topics import (
    DEAD_LETTERS,
    FULFILLMENT_UPDATES,
    INVENTORY_ALLOCATIONS,
    INVENTORY_STOCK,
    ORDER_EVENTS,
    ROUTING_PLANS,
)
from oms_routing import store
from oms_routing.app import create_service
from oms_routing.domain import DEFAULT_RULES
from oms_runtime.database import driver
from oms_runtime.testing import deliver

T0 = datetime(2026, 11, 22, 12, tzinfo=UTC)


@pytest.fixture
def sku() -> str:
    # Every test plans its own SKUs, so sources and stock of other tests are never candidates.
    return f"SKU-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def codes() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:6].upper()
    return {name: f"{name}-{suffix}" for name in ("WH-A", "WH-B", "WH-C", "DS-A")}


async def add_sources(routing, *sources) -> None:
    async with routing.database.transaction() as conn:
        await store.upsert_sources(await driver(conn), list(sources))


def level(sku: str, source_code: str, available: int, at: datetime = T0, on_hand: int | None = None):
    on_hand = available if on_hand is None else on_hand
    return StockLevelChanged(
        source="/oms/inventory",
        subject=sku,
        data=StockLevelChangedData(
            sku=sku,
            source_code=source_code,
            on_hand=on_hand,
            reserved=on_hand - available,
            available=available,
            changed_at=at,
        ),
    )


async def stock_at(routing, sku: str) -> dict[str, tuple[int, int, int]]:
    async with routing.database.connect() as conn:
        rows = await (await driver(conn)).fetch(
            "SELECT source_code, on_hand, reserved, available FROM availability WHERE sku = $1", sku
        )
    return {r["source_code"]: (r["on_hand"], r["reserved"], r["available"]) for r in rows}


async def plans_in_db(routing, order_id) -> list[FulfillmentPlannedData]:
    async with routing.database.connect() as conn:
        return await store.plans_of(await driver(conn), order_id)


def paid(order) -> OrderPaid:
    return OrderPaid(source="/oms/order", subject=str(order.order_id), data=order)


def plan_of(emitted) -> FulfillmentPlannedData:
    assert len(emitted) == 1, emitted
    (out,) = emitted
    assert out.topic == ROUTING_PLANS.name
    assert isinstance(out.event, FulfillmentPlanned)
    assert out.key == out.event.subject == str(out.event.data.order_id)
    return out.event.data


def reservation_rejected(plan: FulfillmentPlannedData, shipment: PlannedShipment, available: int = 0):
    return ReservationRejected(
        source="/oms/inventory",
        subject=str(plan.order_id),
        time=T0 + timedelta(minutes=1),
        data=ReservationRejectedData(
            order_id=plan.order_id,
            shipment_id=shipment.shipment_id,
            source_code=shipment.source_code,
            lines=shipment.lines,
            plan_id=plan.plan_id,
            shortages=[Shortage(sku=ln.sku, requested=ln.quantity, available=available) for ln in shipment.lines],
        ),
    )


def replan_requested(order_id, fulfillment_id, source_code: str, lines: list[Line]) -> ReplanRequested:
    """The order service asks: the source will not ship these lines (it rejected or cancelled them)."""
    return ReplanRequested(
        source="/oms/order",
        subject=str(order_id),
        data=ReplanRequestedData(
            order_id=order_id,
            fulfillment_id=fulfillment_id,
            source_code=source_code,
            lines=lines,
            reason=f"{source_code} rejected the fulfillment: damaged in the warehouse",
        ),
    )


def replan_of(plan: FulfillmentPlannedData, shipment: PlannedShipment, lines: list[Line] | None = None):
    """A re-plan request for a shipment routing planned: all of its lines unless told."""
    return replan_requested(plan.order_id, shipment.shipment_id, shipment.source_code, lines or shipment.lines)


async def planned_with_two_sources_to_spare(routing, make_source, make_order, sku, codes):
    """A one-line order planned at one of three warehouses that all hold its SKU: two re-plans could still ship it."""
    await add_sources(routing, make_source(codes["WH-A"]), make_source(codes["WH-B"]), make_source(codes["WH-C"]))
    await deliver(routing, INVENTORY_STOCK, *(level(sku, codes[c], 5) for c in ("WH-A", "WH-B", "WH-C")))
    order = make_order(uuid.uuid4(), [("1", sku, 1)])
    return order, plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))


async def planned_at_wh_a_with_wh_b_to_spare(routing, make_source, make_order, sku, codes):
    """A three-unit order planned at WH-A; WH-B, farther, holds the SKU too."""
    await add_sources(routing, make_source(codes["WH-A"]), make_source(codes["WH-B"], lat=53.55, lon=9.99))
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 5), level(sku, codes["WH-B"], 5))
    order = make_order(uuid.uuid4(), [("1", sku, 3)])
    return order, plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))


async def test_paid_order_is_planned_from_the_own_warehouse_not_the_nearer_dropship(
    routing, make_source, make_order, sku, codes
):
    await add_sources(
        routing,
        make_source(codes["WH-A"], lat=48.137, lon=11.575),
        make_source(codes["DS-A"], SourceType.dropship),
    )
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 5), level(sku, codes["DS-A"], 5))
    order = make_order(uuid.uuid4(), [("1", sku, 2), ("2", sku, 1)])

    plan = plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))

    assert (plan.order_id, plan.attempt) == (order.order_id, 1)
    (shipment,) = plan.shipments
    assert shipment.source_code == codes["WH-A"]
    assert shipment.lines == order.lines
    assert shipment.reason == (
        f"{codes['WH-A']}: all 2 items, 504 km, own warehouse; {codes['DS-A']} also had them, dropship supplier"
    )
    assert plan.rules == list(DEFAULT_RULES)
    assert (plan.ship_to_country, plan.pickup_source, plan.ship_complete) == ("DE", None, False)
    assert await plans_in_db(routing, order.order_id) == [plan]


async def test_order_events_other_than_paid_are_skipped(routing, make_order):
    order_id = uuid.uuid4()
    changed = StatusChanged(
        source="/oms/order",
        subject=str(order_id),
        data=StatusChangedData(
            order_id=order_id, from_status="paid", to_status="awaiting_fulfillment", actor="x", at=T0
        ),
    )
    assert await deliver(routing, ORDER_EVENTS, changed) == []
    assert await plans_in_db(routing, order_id) == []


async def test_a_redelivered_or_resent_paid_order_is_planned_once(routing, make_source, make_order, sku, codes):
    await add_sources(routing, make_source(codes["WH-A"]))
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 10))
    order = make_order(uuid.uuid4(), [("1", sku, 1)])
    event = paid(order)

    first = await deliver(routing, ORDER_EVENTS, event, paid(order))  # the same order twice in one batch
    again = await deliver(routing, ORDER_EVENTS, event)  # redelivered: the inbox has it
    resent = await deliver(routing, ORDER_EVENTS, paid(order))  # a new event id for the same order

    assert plan_of(first).attempt == 1
    assert again == resent == []
    assert len(await plans_in_db(routing, order.order_id)) == 1


async def test_paid_orders_of_one_batch_do_not_both_count_on_the_last_unit(
    routing, make_source, make_order, sku, codes
):
    await add_sources(routing, make_source(codes["WH-A"]))
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 1))
    early, late = (make_order(uuid.uuid4(), [("1", sku, 1)]) for _ in range(2))

    emitted = await deliver(routing, ORDER_EVENTS, paid(early), paid(late))

    plans = {e.event.data.order_id: e.event.data for e in emitted}
    assert [s.source_code for s in plans[early.order_id].shipments] == [codes["WH-A"]]
    assert plans[late.order_id].shipments == []
    assert plans[late.order_id].backordered_lines[0].reason == "no source has the item"


async def test_reservation_rejected_replans_without_that_source_and_lowers_its_availability(
    routing, make_source, make_order, sku, codes
):
    order, first = await planned_at_wh_a_with_wh_b_to_spare(routing, make_source, make_order, sku, codes)
    assert first.shipments[0].source_code == codes["WH-A"]

    second = plan_of(await deliver(routing, INVENTORY_ALLOCATIONS, reservation_rejected(first, first.shipments[0], 1)))

    assert second.attempt == 2
    assert second.plan_id != first.plan_id
    (shipment,) = second.shipments
    assert shipment.source_code == codes["WH-B"]
    assert shipment.lines == order.lines
    assert shipment.reason.endswith(f"; rejected by {codes['WH-A']}")
    assert (await stock_at(routing, sku))[codes["WH-A"]] == (5, 0, 1)
    assert [p.attempt for p in await plans_in_db(routing, order.order_id)] == [1, 2]


async def test_a_stock_level_newer_than_the_shortage_report_is_not_overwritten(
    routing, make_source, make_order, sku, codes
):
    await add_sources(routing, make_source(codes["WH-A"]))
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 5))
    order = make_order(uuid.uuid4(), [("1", sku, 3)])
    first = plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 9, at=T0 + timedelta(hours=1)))

    await deliver(routing, INVENTORY_ALLOCATIONS, reservation_rejected(first, first.shipments[0], 0))

    assert (await stock_at(routing, sku))[codes["WH-A"]][2] == 9


async def test_a_replan_request_plans_the_shipments_lines_again_without_its_source(
    routing, make_source, make_order, sku, codes
):
    await add_sources(routing, make_source(codes["WH-A"]), make_source(codes["DS-A"], SourceType.dropship))
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 5), level(sku, codes["DS-A"], 5))
    order = make_order(uuid.uuid4(), [("1", sku, 1)])
    first = plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))

    second = plan_of(await deliver(routing, ORDER_EVENTS, replan_of(first, first.shipments[0])))

    assert second.attempt == 2
    assert [(s.source_code, s.lines) for s in second.shipments] == [(codes["DS-A"], order.lines)]
    assert second.shipments[0].reason.endswith(f"; rejected by {codes['WH-A']}")
    assert (await stock_at(routing, sku))[codes["WH-A"]][2] == 5  # a source's rejection says nothing about stock


async def test_a_shipment_rejected_by_inventory_and_then_asked_again_by_the_order_service_is_replanned_once(
    routing, make_source, make_order, sku, codes
):
    order, first = await planned_with_two_sources_to_spare(routing, make_source, make_order, sku, codes)
    shipment = first.shipments[0]

    replanned = await deliver(routing, INVENTORY_ALLOCATIONS, reservation_rejected(first, shipment))
    again = await deliver(routing, ORDER_EVENTS, replan_of(first, shipment))

    assert plan_of(replanned).attempt == 2
    assert again == []
    assert [p.attempt for p in await plans_in_db(routing, order.order_id)] == [1, 2]


async def test_after_max_attempts_the_rejected_lines_are_backordered(routing, make_source, make_order, sku, codes):
    await add_sources(routing, *(make_source(code) for code in codes.values()))
    await deliver(routing, INVENTORY_STOCK, *(level(sku, code, 5) for code in codes.values()))
    order = make_order(uuid.uuid4(), [("1", sku, 1), ("2", sku, 1)])
    plan = plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))
    rejected_by = []

    for attempt in (2, 3, 4):
        rejected_by.append(plan.shipments[0].source_code)
        rejection = (
            reservation_rejected(plan, plan.shipments[0], 5) if attempt % 2 else replan_of(plan, plan.shipments[0])
        )
        topic = INVENTORY_ALLOCATIONS if attempt % 2 else ORDER_EVENTS
        plan = plan_of(await deliver(routing, topic, rejection))
        assert plan.attempt == attempt
        assert not {s.source_code for s in plan.shipments} & set(rejected_by)

    assert plan.shipments == []
    assert [ln.line_id for ln in plan.backordered_lines] == ["1", "2"]
    assert plan.backordered_lines[0].reason == (
        f"no source left for all 2 items after 3 attempts; rejected by {', '.join(sorted(rejected_by))}"
    )
    assert len(await plans_in_db(routing, order.order_id)) == 4


async def test_with_backorders_denied_exhausted_lines_become_unfulfillable(
    routing, make_source, make_order, sku, codes
):
    await add_sources(routing, make_source(codes["WH-A"]))
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 5))
    order = make_order(uuid.uuid4(), [("1", sku, 1)], options=OrderOptions(backorder_policy="deny"))
    first = plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))

    second = plan_of(await deliver(routing, ORDER_EVENTS, replan_of(first, first.shipments[0])))

    assert second.backordered_lines == []
    assert [(ln.line_id, ln.sku, ln.quantity) for ln in second.unfulfillable_lines] == [("1", sku, 1)]


async def test_a_rejected_reservation_of_a_shipment_routing_never_planned_is_dead_lettered_alone(
    routing, make_source, make_order, sku, codes
):
    await add_sources(routing, make_source(codes["WH-A"]), make_source(codes["WH-B"]))
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 5), level(sku, codes["WH-B"], 5))
    order = make_order(uuid.uuid4(), [("1", sku, 1)])
    first = plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))
    stranger = first.shipments[0].model_copy(update={"shipment_id": uuid.uuid4()})

    emitted = await deliver(
        routing,
        INVENTORY_ALLOCATIONS,
        reservation_rejected(first, stranger),
        reservation_rejected(first, first.shipments[0]),
    )

    by_topic = {e.topic: e for e in emitted}
    assert set(by_topic) == {DEAD_LETTERS.name, ROUTING_PLANS.name}
    assert "was not planned by routing" in by_topic[DEAD_LETTERS.name].headers["oms-error-message"]
    assert by_topic[DEAD_LETTERS.name].headers["oms-error-class"] == "Refused"
    assert by_topic[ROUTING_PLANS.name].event.data.attempt == 2


async def test_a_replan_request_for_an_order_routing_never_saw_paid_is_dead_lettered_with_the_reason(routing, sku):
    order_id, fulfillment_id = uuid.uuid4(), uuid.uuid4()

    emitted = await deliver(
        routing,
        ORDER_EVENTS,
        replan_requested(order_id, fulfillment_id, "WH-X", [Line(line_id="1", sku=sku, quantity=1)]),
    )

    (dead,) = emitted
    assert dead.topic == DEAD_LETTERS.name
    assert dead.headers["oms-error-class"] == "Refused"
    assert dead.headers["oms-error-message"] == (
        f"order {order_id} was never paid to routing: nothing to plan fulfillment {fulfillment_id} with"
    )
    assert await plans_in_db(routing, order_id) == []


async def test_a_replan_request_for_lines_the_shipment_does_not_hold_is_dead_lettered_and_plans_nothing(
    routing, make_source, make_order, sku, codes
):
    await add_sources(routing, make_source(codes["WH-A"]), make_source(codes["WH-B"]))
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 5), level(sku, codes["WH-B"], 5))
    order = make_order(uuid.uuid4(), [("1", sku, 2)])
    first = plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))
    shipment = first.shipments[0]

    emitted = await deliver(routing, ORDER_EVENTS, replan_of(first, shipment, [Line(line_id="1", sku=sku, quantity=3)]))

    (dead,) = emitted
    assert dead.headers["oms-error-message"] == (f"3 units of line 1 asked, fulfillment {shipment.shipment_id} has 2")
    assert [p.attempt for p in await plans_in_db(routing, order.order_id)] == [1]


async def test_routing_no_longer_reads_fulfillment_updates_so_a_sources_rejection_plans_nothing_by_itself(routing):
    # The order service tells a source's own cancellation from its answer to a customer's, and asks with
    # order.replan_requested; re-planning on the source's update as well would plan the same lines twice.
    assert FULFILLMENT_UPDATES.name not in {c.topic.name for c in routing.consumers}


async def test_allocations_other_than_a_rejected_reservation_are_skipped(routing, make_order, sku):
    order_id = uuid.uuid4()
    allocated = BackorderAllocated(
        source="/oms/inventory",
        subject=str(order_id),
        data=BackorderAllocatedData(
            order_id=order_id,
            shipment_id=uuid.uuid4(),
            source_code="WH-X",
            lines=[Line(line_id="1", sku=sku, quantity=1)],
        ),
    )
    assert await deliver(routing, INVENTORY_ALLOCATIONS, allocated) == []


async def test_stock_levels_upsert_the_projection_keeping_the_last_level_per_key(routing, sku, codes):
    a, b = codes["WH-A"], codes["WH-B"]
    low = LowStock(
        source="/oms/inventory", subject=sku, data=LowStockData(sku=sku, source_code=a, available=0, threshold=2)
    )
    await deliver(routing, INVENTORY_STOCK, level(sku, a, 4, T0), level(sku, b, 2, T0), low)
    assert await stock_at(routing, sku) == {a: (4, 0, 4), b: (2, 0, 2)}

    emitted = await deliver(
        routing,
        INVENTORY_STOCK,
        level(sku, a, 3, T0 + timedelta(seconds=1), on_hand=4),
        level(sku, a, 1, T0 + timedelta(seconds=2), on_hand=4),
        level(sku, b, 7, T0 + timedelta(seconds=1), on_hand=9),
    )
    assert emitted == []
    assert await stock_at(routing, sku) == {a: (4, 3, 1), b: (9, 2, 7)}

    await deliver(routing, INVENTORY_STOCK, level(sku, a, 99, T0))  # older than what the projection holds
    assert (await stock_at(routing, sku))[a] == (4, 3, 1)


async def test_an_inactive_source_is_never_planned(routing, make_source, make_order, sku, codes):
    await add_sources(
        routing, make_source(codes["WH-A"], active=False), make_source(codes["DS-A"], SourceType.dropship)
    )
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 5), level(sku, codes["DS-A"], 5))
    order = make_order(uuid.uuid4(), [("1", sku, 1)])

    plan = plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))

    assert [s.source_code for s in plan.shipments] == [codes["DS-A"]]
    assert plan.shipments[0].lines == [Line(line_id="1", sku=sku, quantity=1)]


async def test_a_rejected_reservation_and_a_replan_request_of_one_shipment_at_once_replan_it_once(
    routing, make_source, make_order, sku, codes
):
    order, first = await planned_with_two_sources_to_spare(routing, make_source, make_order, sku, codes)
    shipment = first.shipments[0]

    # Two consumers, two database connections: the shipment's row lock orders them.
    emitted = await asyncio.gather(
        deliver(routing, INVENTORY_ALLOCATIONS, reservation_rejected(first, shipment)),
        deliver(routing, ORDER_EVENTS, replan_of(first, shipment)),
    )

    assert len([e for batch in emitted for e in batch if e.topic == ROUTING_PLANS.name]) == 1
    assert [p.attempt for p in await plans_in_db(routing, order.order_id)] == [1, 2]


async def test_one_order_paid_twice_on_two_consumers_at_once_is_planned_once(
    routing, make_source, make_order, sku, codes
):
    await add_sources(routing, make_source(codes["WH-A"]))
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 5))
    order = make_order(uuid.uuid4(), [("1", sku, 1)])
    twin = create_service(routing.settings)
    try:
        await asyncio.gather(deliver(routing, ORDER_EVENTS, paid(order)), deliver(twin, ORDER_EVENTS, paid(order)))
    finally:
        await twin.database.dispose()

    assert len(await plans_in_db(routing, order.order_id)) == 1


async def planned_on(routing, order_id) -> dict[str, tuple]:
    async with routing.database.connect() as conn:
        rows = await (await driver(conn)).fetch(
            "SELECT source_code, planned_on, rejected_at IS NOT NULL AS rejected FROM shipments WHERE order_id = $1",
            order_id,
        )
    return {r["source_code"]: (r["planned_on"], r["rejected"]) for r in rows}


async def test_a_mixed_order_is_planned_as_the_shipment_in_stock_and_a_backorder(
    routing, make_source, make_order, sku, codes
):
    await add_sources(routing, make_source(codes["WH-A"]))
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 5))
    missing = f"{sku}-MISSING"
    order = make_order(uuid.uuid4(), [("1", sku, 2), ("2", missing, 1)])

    plan = plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))

    assert [(s.source_code, s.lines) for s in plan.shipments] == [(codes["WH-A"], [order.lines[0]])]
    assert [(ln.line_id, ln.sku, ln.quantity, ln.reason) for ln in plan.backordered_lines] == [
        ("2", missing, 1, "no source has the item")
    ]
    assert (await planned_on(routing, order.order_id)) == {codes["WH-A"]: (plan.planned_at.date(), False)}


async def test_an_order_two_warehouses_share_is_one_plan_with_two_shipments(
    routing, make_source, make_order, sku, codes
):
    other = f"{sku}-B"
    await add_sources(routing, make_source(codes["WH-A"]), make_source(codes["WH-B"], lat=53.55, lon=9.99))
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 5), level(other, codes["WH-B"], 5))
    order = make_order(uuid.uuid4(), [("1", sku, 1), ("2", other, 3)])

    plan = plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))

    assert {s.source_code: s.lines for s in plan.shipments} == {
        codes["WH-A"]: [order.lines[0]],
        codes["WH-B"]: [order.lines[1]],
    }
    assert plan.backordered_lines == []
    assert all(s.reason.startswith(f"{s.source_code}: 1 of 2 items") for s in plan.shipments)
    assert await plans_in_db(routing, order.order_id) == [plan]


async def test_a_channels_stored_chain_ranks_its_orders_and_an_orders_own_chain_overrides_it(
    routing, make_source, make_order, sku, codes
):
    channel = f"market-{uuid.uuid4().hex[:6]}"
    await add_sources(
        routing, make_source(codes["WH-A"], lat=48.137, lon=11.575), make_source(codes["DS-A"], SourceType.dropship)
    )
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 5), level(sku, codes["DS-A"], 5))
    async with routing.database.transaction() as conn:
        await store.set_rule_chain(
            await driver(conn),
            store.StoredRuleChain(channel, [RoutingRule.fewest_shipments, RoutingRule.nearest], "t", T0),
        )
    by_channel = make_order(uuid.uuid4(), [("1", sku, 1)], channel=channel)
    own = make_order(
        uuid.uuid4(), [("1", sku, 1)], channel=channel, options=OrderOptions(routing_rules=[RoutingRule.source_type])
    )

    emitted = await deliver(routing, ORDER_EVENTS, paid(by_channel), paid(own))

    plans = {e.event.data.order_id: e.event.data for e in emitted}
    assert [s.source_code for s in plans[by_channel.order_id].shipments] == [codes["DS-A"]]
    assert plans[by_channel.order_id].rules == [RoutingRule.fewest_shipments, RoutingRule.nearest]
    assert [s.source_code for s in plans[own.order_id].shipments] == [codes["WH-A"]]
    assert plans[own.order_id].rules == [RoutingRule.fewest_shipments, RoutingRule.source_type]


async def test_daily_capacity_counts_todays_planned_shipments_and_a_rejected_one_frees_its_place(
    routing, make_source, make_order, sku, codes
):
    await add_sources(
        routing,
        make_source(codes["WH-A"], daily_capacity=1, timezone="Europe/Berlin"),
        make_source(codes["WH-B"], lat=53.55, lon=9.99),
    )
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 9), level(sku, codes["WH-B"], 9))
    early, late, later = (make_order(uuid.uuid4(), [("1", sku, 1)]) for _ in range(3))

    first = plan_of(await deliver(routing, ORDER_EVENTS, paid(early)))
    second = plan_of(await deliver(routing, ORDER_EVENTS, paid(late)))

    assert [s.source_code for s in first.shipments] == [codes["WH-A"]]
    assert [s.source_code for s in second.shipments] == [codes["WH-B"]]
    assert second.shipments[0].reason.endswith(f"; {codes['WH-A']} at capacity (1 shipment today)")

    await deliver(routing, ORDER_EVENTS, replan_of(first, first.shipments[0]))
    third = plan_of(await deliver(routing, ORDER_EVENTS, paid(later)))

    assert [s.source_code for s in third.shipments] == [codes["WH-A"]]


# --- re-plans the order service asks for ---------------------------------------------------------------------------


async def test_a_backorder_allocated_fulfillment_routing_never_planned_is_planned_again_from_the_paid_order(
    routing, make_source, make_order, sku, codes
):
    await add_sources(routing, make_source(codes["WH-A"]), make_source(codes["WH-B"], lat=53.55, lon=9.99))
    order = make_order(uuid.uuid4(), [("1", sku, 2), ("2", f"{sku}-X", 1)], shipping_method=ShippingMethod.express)
    backordered = plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))
    assert [ln.line_id for ln in backordered.backordered_lines] == ["1", "2"]
    # Stock came to WH-A; inventory allocated line 1 there as a fulfillment of its own making, and WH-A then
    # cancelled it (the shelf was empty). WH-B has it meanwhile.
    allocated = uuid.uuid4()
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-B"], 4))

    replanned = plan_of(
        await deliver(
            routing, ORDER_EVENTS, replan_requested(order.order_id, allocated, codes["WH-A"], order.lines[:1])
        )
    )

    assert replanned.attempt == 2
    (shipment,) = replanned.shipments
    assert (shipment.source_code, shipment.lines) == (codes["WH-B"], order.lines[:1])
    assert (shipment.estimated_delivery_date - shipment.estimated_ship_date).days == 1  # express, as the order paid
    assert shipment.reason.endswith(f"; rejected by {codes['WH-A']}")
    assert (replanned.ship_to_country, replanned.pickup_source, replanned.rules) == ("DE", None, list(DEFAULT_RULES))
    assert [p.attempt for p in await plans_in_db(routing, order.order_id)] == [1, 2]


async def test_a_replan_request_resent_under_a_new_event_id_or_twice_in_a_batch_plans_the_lines_once(
    routing, make_source, make_order, sku, codes
):
    order, first = await planned_with_two_sources_to_spare(routing, make_source, make_order, sku, codes)
    shipment = first.shipments[0]

    twice = await deliver(routing, ORDER_EVENTS, replan_of(first, shipment), replan_of(first, shipment))
    resent = await deliver(routing, ORDER_EVENTS, replan_of(first, shipment))

    assert plan_of(twice).attempt == 2
    assert resent == []
    assert [p.attempt for p in await plans_in_db(routing, order.order_id)] == [1, 2]


async def test_a_later_replan_of_other_lines_of_the_same_fulfillment_plans_those_lines(
    routing, make_source, make_order, sku, codes
):
    other = f"{sku}-B"
    await add_sources(routing, make_source(codes["WH-A"]), make_source(codes["WH-B"], lat=53.55, lon=9.99))
    await deliver(routing, INVENTORY_STOCK, *(level(s, codes[c], 5) for s in (sku, other) for c in ("WH-A", "WH-B")))
    order = make_order(uuid.uuid4(), [("1", sku, 1), ("2", other, 1)])
    first = plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))
    shipment = first.shipments[0]

    one = plan_of(await deliver(routing, ORDER_EVENTS, replan_of(first, shipment, order.lines[:1])))
    two = plan_of(await deliver(routing, ORDER_EVENTS, replan_of(first, shipment, order.lines[1:])))

    assert [(p.attempt, [(s.source_code, s.lines) for s in p.shipments]) for p in (one, two)] == [
        (2, [(codes["WH-B"], order.lines[:1])]),
        (3, [(codes["WH-B"], order.lines[1:])]),
    ]


async def test_a_line_its_source_gives_back_unit_by_unit_is_planned_again_each_time_never_beyond_its_units(
    routing, make_source, make_order, sku, codes
):
    _, first = await planned_at_wh_a_with_wh_b_to_spare(routing, make_source, make_order, sku, codes)
    shipment = first.shipments[0]
    one, two = [Line(line_id="1", sku=sku, quantity=1)], [Line(line_id="1", sku=sku, quantity=2)]

    a = plan_of(await deliver(routing, ORDER_EVENTS, replan_of(first, shipment, one)))
    b = plan_of(await deliver(routing, ORDER_EVENTS, replan_of(first, shipment, one)))
    # Two more asked, one left of the shipment's three: only that one is planned again (past the last attempt:
    # backordered); then nothing is.
    c = plan_of(await deliver(routing, ORDER_EVENTS, replan_of(first, shipment, two)))
    d = await deliver(routing, ORDER_EVENTS, replan_of(first, shipment, one))

    assert [(p.attempt, [(s.source_code, s.lines) for s in p.shipments]) for p in (a, b)] == [
        (2, [(codes["WH-B"], one)]),
        (3, [(codes["WH-B"], one)]),
    ]
    assert (c.attempt, c.shipments, [(x.line_id, x.quantity) for x in c.backordered_lines]) == (4, [], [("1", 1)])
    assert d == []


async def test_after_max_attempts_replan_requests_make_lines_unfulfillable_when_backorders_are_denied(
    routing, make_source, make_order, sku, codes
):
    await add_sources(routing, *(make_source(code) for code in codes.values()))
    await deliver(routing, INVENTORY_STOCK, *(level(sku, code, 5) for code in codes.values()))
    order = make_order(uuid.uuid4(), [("1", sku, 1)], options=OrderOptions(backorder_policy="deny"))
    plan = plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))
    turned_down = []

    while plan.shipments:
        turned_down.append(plan.shipments[0].source_code)
        plan = plan_of(await deliver(routing, ORDER_EVENTS, replan_of(plan, plan.shipments[0])))

    assert plan.attempt == 4
    assert plan.backordered_lines == []
    assert [(ln.line_id, ln.reason) for ln in plan.unfulfillable_lines] == [
        ("1", f"no source left for the item after 3 attempts; rejected by {', '.join(sorted(turned_down))}")
    ]


async def test_the_network_is_read_with_the_shipments_each_source_planned_on_its_own_day(routing, make_source, codes):
    # 20:00 UTC on 1 December: already the 2nd in Auckland (UTC+13), still the 1st in Los Angeles (UTC-8).
    at = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)
    auckland, angeles, unlimited = codes["WH-A"], codes["WH-B"], codes["WH-C"]
    await add_sources(
        routing,
        make_source(auckland, daily_capacity=10, timezone="Pacific/Auckland"),
        make_source(angeles, daily_capacity=10, timezone="America/Los_Angeles"),
        make_source(unlimited, timezone="Pacific/Auckland"),
    )
    async with routing.database.transaction() as pg:
        await pg.execute(
            "INSERT INTO planned_shipments (source_code, planned_on, shipments) SELECT * FROM unnest($1::text[], "
            "$2::date[], $3::int[])",
            [code for code in (auckland, angeles, unlimited) for _ in range(3)],
            [date(2026, 11, 30), date(2026, 12, 1), date(2026, 12, 2)] * 3,
            [1, 2, 3, 4, 5, 6, 7, 8, 9],
        )
        sources, planned = await store.planning_network(pg, at)
    ours = {auckland, angeles, unlimited}
    assert {s.code for s in sources} >= ours
    # Each source's count of its own local day; a source without a daily capacity has none.
    assert {code: n for code, n in planned.items() if code in ours} == {auckland: 3, angeles: 5}


async def test_a_partly_replanned_shipment_keeps_its_place_in_the_daily_capacity_until_all_of_it_is_replanned(
    routing, make_source, make_order, sku, codes
):
    other = f"{sku}-B"
    await add_sources(
        routing,
        make_source(codes["WH-A"], daily_capacity=1),
        make_source(codes["WH-B"], lat=53.55, lon=9.99),
    )
    await deliver(routing, INVENTORY_STOCK, *(level(s, codes[c], 9) for s in (sku, other) for c in ("WH-A", "WH-B")))
    early = make_order(uuid.uuid4(), [("1", sku, 1), ("2", other, 1)])
    first = plan_of(await deliver(routing, ORDER_EVENTS, paid(early)))
    assert [s.source_code for s in first.shipments] == [codes["WH-A"]]

    await deliver(routing, ORDER_EVENTS, replan_of(first, first.shipments[0], early.lines[:1]))
    still_full = plan_of(await deliver(routing, ORDER_EVENTS, paid(make_order(uuid.uuid4(), [("1", sku, 1)]))))
    await deliver(routing, ORDER_EVENTS, replan_of(first, first.shipments[0], early.lines[1:]))
    freed = plan_of(await deliver(routing, ORDER_EVENTS, paid(make_order(uuid.uuid4(), [("1", sku, 1)]))))

    assert [s.source_code for s in still_full.shipments] == [codes["WH-B"]]
    assert [s.source_code for s in freed.shipments] == [codes["WH-A"]]


# --- destinations no source serves ---------------------------------------------------------------------------------


async def test_a_country_no_source_ships_to_is_unfulfillable_even_when_backorders_are_allowed(
    routing, make_source, make_order, sku, codes
):
    await add_sources(routing, make_source(codes["WH-A"]))
    await deliver(routing, INVENTORY_STOCK, level(sku, codes["WH-A"], 5))
    reykjavik = Address(name="Ada L", line1="Laugavegur 1", city="Reykjavik", country="IS")
    order = make_order(uuid.uuid4(), [("1", sku, 1)], shipping_address=reykjavik)

    plan = plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))

    assert plan.shipments == [] and plan.backordered_lines == []
    assert [(ln.line_id, ln.quantity, ln.reason) for ln in plan.unfulfillable_lines] == [
        ("1", 1, "no source ships to IS")
    ]


async def test_a_pickup_at_a_store_not_in_the_network_is_unfulfillable(routing, make_order, sku):
    order = make_order(
        uuid.uuid4(), [("1", sku, 1)], shipping_method=ShippingMethod.pickup, pickup_source="STORE-NOWHERE"
    )

    plan = plan_of(await deliver(routing, ORDER_EVENTS, paid(order)))

    assert plan.backordered_lines == []
    assert [ln.reason for ln in plan.unfulfillable_lines] == ["pickup store STORE-NOWHERE is not in the network"]
