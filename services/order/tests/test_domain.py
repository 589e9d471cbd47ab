import copy
import itertools
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from oms_contracts.order import OrderStatus as S
from oms_order import domain
from oms_order.domain import (
    FULFILLMENT_TRANSITIONS,
    TRANSITIONS,
    UNIT_MOVES,
    Cause,
    FulfillmentStatus,
    InvalidFulfillmentTransition,
    InvalidTransition,
    LineState,
    OrderRefusal,
)

F = FulfillmentStatus
L = LineState
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CAUSE = Cause("test", NOW, uuid.uuid4(), "0" * 32)


def new_order(*lines: tuple[str, int, str]) -> domain.Order:
    lines = lines or (("SKU-1", 2, "19.99"),)
    order_lines = [domain.Line(str(i), sku, qty, Decimal(price)) for i, (sku, qty, price) in enumerate(lines, 1)]
    total = sum((line.unit_price * line.quantity for line in order_lines), Decimal(0)) + Decimal("4.99")
    return domain.accept(
        uuid.uuid4(),
        channel="web-eu",
        external_order_id="1001",
        currency="EUR",
        placed_at=NOW,
        customer={"email": "ada@example.com", "name": "Ada"},
        shipping_address={"name": "Ada", "line1": "x", "city": "Berlin", "country": "DE"},
        shipping_method="standard",
        pickup_source=None,
        options={"ship_complete": False, "backorder_policy": "allow"},
        lines=order_lines,
        shipping_total=Decimal("4.99"),
        tax_total=Decimal(0),
        discount_total=Decimal(0),
        grand_total=total,
        cause=CAUSE,
        traceparent=None,
    )


def paid_order(*lines) -> domain.Order:
    order = new_order(*lines)
    order.capture_payment(order.grand_total, "EUR", "pay-1", CAUSE)
    return order


def units_of(order: domain.Order, line_id: str, *quantities: int) -> list[domain.ShipmentLine]:
    line = order.lines[line_id]
    return [domain.ShipmentLine(line_id, line.sku, q) for q in quantities]


def everything(order: domain.Order) -> list[domain.ShipmentLine]:
    return [domain.ShipmentLine(x.line_id, x.sku, x.quantity) for x in order.lines.values()]


def planned(shipment_id: uuid.UUID, lines: list[domain.ShipmentLine], source: str = "WH-EAST"):
    return domain.PlannedShipment(shipment_id, source, lines, date(2026, 11, 26), date(2026, 11, 29), f"{source}: x")


def plan(order: domain.Order, shipments=(), backordered=(), unfulfillable=(), attempt=1) -> list[uuid.UUID]:
    """Apply a plan of `shipments` (each a list of shipment lines); returns their ids."""
    ids = [uuid.uuid4() for _ in shipments]
    order.apply_plan(
        uuid.uuid4(),
        [planned(i, list(lines)) for i, lines in zip(ids, shipments, strict=True)],
        list(backordered),
        list(unfulfillable),
        CAUSE,
        attempt,
    )
    return ids


def plan_everything(order: domain.Order) -> uuid.UUID:
    return plan(order, [everything(order)])[0]


def reserved(order: domain.Order, shipment_id: uuid.UUID) -> domain.Reservation:
    """Inventory's reservation of a planned shipment, as its event describes it."""
    known = order.fulfillments[shipment_id]
    return domain.Reservation(shipment_id, known.source_code, list(known.lines), uuid.uuid4(), date(2026, 11, 26))


def requested_everything(*lines) -> tuple[domain.Order, uuid.UUID]:
    order = paid_order(*lines)
    shipment_id = plan_everything(order)
    order.request_fulfillment(reserved(order, shipment_id), CAUSE)
    return order, shipment_id


def parcel(tracking: str = "T1", lines: dict[str, int] | None = None) -> domain.Shipment:
    return domain.Shipment("DHL", "Paket", tracking, f"https://track.example/{tracking}", NOW, lines)


def allocation(lines: list[domain.ShipmentLine], ship_by: date | None = date(2026, 12, 3), source: str = "WH-WEST"):
    return domain.Allocation(uuid.uuid4(), source, lines, ship_by)


def units(order: domain.Order, line_id: str) -> dict[LineState, int]:
    return {state: n for state, n in order.lines[line_id].units.items() if n}


def events(order: domain.Order, kind: type) -> list:
    return [e for e in order.events if isinstance(e, kind)]


def unchanged_by(order: domain.Order, refused, match: str) -> None:
    """`refused()` raises OrderRefusal naming `match` and leaves the order exactly as it was."""
    before = copy.deepcopy(order)
    with pytest.raises(OrderRefusal, match=match):
        refused()
    assert order.status is before.status
    assert order.lines == before.lines
    assert order.fulfillments == before.fulfillments
    assert len(order.transitions) == len(before.transitions) and len(order.events) == len(before.events)


# -- the three tables, each edge by edge ------------------------------------------------------------------------

ALL = list(S)


@pytest.mark.parametrize(("from_status", "to_status"), [(a, b) for a in ALL for b in ALL])
def test_transition_is_allowed_exactly_on_the_edges_of_the_state_machine(from_status, to_status):
    order = new_order()
    order.status = from_status
    if to_status in TRANSITIONS[from_status]:
        row = order.transition(to_status, CAUSE, "why")
        assert (row.from_status, row.to_status, row.actor, row.note) == (from_status, to_status, "test", "why")
        assert order.status is to_status
    else:
        with pytest.raises(InvalidTransition, match=f"{from_status} -> {to_status}"):
            order.transition(to_status, CAUSE)
        assert order.status is from_status


@pytest.mark.parametrize(("from_state", "to_state"), [(a, b) for a in L for b in L])
def test_units_move_exactly_along_the_edges_of_the_unit_table(from_state, to_state):
    order = new_order(("SKU-1", 3, "1.00"))
    line = order.lines["1"]
    line.units = {s: 0 for s in L} | {from_state: 3}
    if to_state in UNIT_MOVES[from_state]:
        order._move([(line, 2, from_state, to_state)])
        assert line.units[from_state] == 1 and line.units[to_state] == 2
    else:
        with pytest.raises(OrderRefusal, match=f"cannot move from {from_state} to {to_state}"):
            order._move([(line, 2, from_state, to_state)])
        assert line.units[from_state] == 3
    assert sum(line.units.values()) == 3


@pytest.mark.parametrize(("from_status", "to_status"), [(a, b) for a in F for b in F])
def test_a_fulfillment_moves_exactly_along_the_edges_of_its_table(from_status, to_status):
    fulfillment = domain.Fulfillment(uuid.uuid4(), uuid.uuid4(), "WH", (), from_status)
    if to_status in FULFILLMENT_TRANSITIONS[from_status]:
        fulfillment.move(to_status)
        assert fulfillment.status is to_status
    else:
        with pytest.raises(InvalidFulfillmentTransition, match=f"is {from_status}; it cannot become {to_status}"):
            fulfillment.move(to_status)
        assert fulfillment.status is from_status


def test_nothing_shipped_is_ever_cancelled_and_only_shipped_units_are_returned():
    assert all(L.cancelled not in UNIT_MOVES[s] for s in (L.shipped, L.delivered, L.returned))
    assert {s for s in L if L.returned in UNIT_MOVES[s]} == {L.shipped, L.delivered}


def test_moving_more_units_than_a_state_holds_is_refused_and_moves_nothing():
    order = paid_order(("A", 2, "1.00"), ("B", 1, "1.00"))
    a, b = order.lines["1"], order.lines["2"]
    unchanged_by(
        order,
        lambda: order._move([(a, 2, L.open, L.backordered), (b, 1, L.open, L.reserved), (b, 1, L.open, L.cancelled)]),
        "1 units of line 2 should leave open, but 0 are open",
    )


@pytest.mark.parametrize(
    ("held", "state"),
    [
        ({L.open: 2}, L.open),
        ({L.requested: 2, L.backordered: 3}, L.backordered),
        ({L.shipped: 1, L.cancelled: 1}, L.shipped),
        ({L.shipped: 1, L.delivered: 1}, L.shipped),
        ({L.delivered: 1, L.returned: 1}, L.delivered),
        ({L.reserved: 1, L.requested: 1}, L.reserved),
        ({L.cancelled: 2}, L.cancelled),
    ],
)
def test_a_lines_state_is_the_least_advanced_state_of_its_units_that_are_not_cancelled(held, state):
    line = domain.Line("1", "SKU", sum(held.values()), Decimal(1), {s: held.get(s, 0) for s in L})
    assert line.state is state


# -- payments ---------------------------------------------------------------------------------------------------


def test_a_new_order_is_pending_with_its_creation_in_the_timeline_and_every_unit_open():
    order = new_order(("A", 3, "1.00"))
    assert order.status is S.pending
    [created] = order.transitions
    assert (created.from_status, created.to_status) == (None, S.pending)
    assert units(order, "1") == {L.open: 3} and order.lines["1"].state is L.open


def test_a_full_capture_moves_pending_through_payment_processing_to_paid_and_records_it():
    order = new_order()
    order.capture_payment(order.grand_total, "EUR", "pay-1", CAUSE)
    assert [(t.from_status, t.to_status) for t in order.transitions[1:]] == [
        (S.pending, S.payment_processing),
        (S.payment_processing, S.paid),
    ]
    assert order.paid_amount == order.grand_total
    assert order.events == [domain.Paid()]


def test_a_second_capture_changes_nothing():
    order = paid_order()
    before = list(order.transitions)
    order.capture_payment(order.grand_total, "EUR", "pay-1", CAUSE)
    assert order.transitions == before and order.events == [domain.Paid()]


@pytest.mark.parametrize(("amount", "currency"), [("1.00", "EUR"), (None, "USD")])
def test_a_capture_that_does_not_match_the_total_is_refused_and_changes_nothing(amount, currency):
    order = new_order()
    with pytest.raises(OrderRefusal, match="does not match the order total"):
        order.capture_payment(Decimal(amount) if amount else order.grand_total, currency, "pay-1", CAUSE)
    assert order.status is S.pending and len(order.transitions) == 1 and order.events == []


def test_a_payment_failure_cancels_an_unpaid_order_and_every_unit():
    order = new_order(("A", 2, "1.00"))
    order.fail_payment("card declined", CAUSE)
    assert order.status is S.cancelled
    assert units(order, "1") == {L.cancelled: 2} and order.lines["1"].state is L.cancelled
    assert "card declined" in order.transitions[-1].note


def test_a_payment_failure_after_payment_is_refused():
    order = paid_order()
    unchanged_by(order, lambda: order.fail_payment("late", CAUSE), "a payment failure cannot cancel it now")


# -- plans and reservations -------------------------------------------------------------------------------------


def test_reserving_a_planned_shipment_requests_it_and_the_order_awaits_fulfillment():
    order = paid_order(("A", 2, "1.00"))
    shipment_id = plan_everything(order)
    assert order.fulfillments[shipment_id].status is F.planned and units(order, "1") == {L.reserved: 2}
    order.request_fulfillment(reserved(order, shipment_id), CAUSE)
    requested = order.fulfillments[shipment_id]
    assert requested.status is F.requested and requested.requested_at == NOW
    assert order.status is S.awaiting_fulfillment
    assert units(order, "1") == {L.requested: 2}
    assert events(order, domain.FulfillmentRequested) == [domain.FulfillmentRequested(requested)]
    order.request_fulfillment(reserved(order, shipment_id), CAUSE)  # a redelivered reservation asks once
    assert len(events(order, domain.FulfillmentRequested)) == 1 and units(order, "1") == {L.requested: 2}


def test_a_mixed_plan_requests_what_is_reserved_and_backorders_the_rest_by_units():
    order = paid_order(("A", 1, "5.00"), ("B", 5, "6.00"))
    [shipment_id] = plan(order, [units_of(order, "1", 1) + units_of(order, "2", 2)], units_of(order, "2", 3))
    assert units(order, "2") == {L.reserved: 2, L.backordered: 3}
    assert order.lines["2"].state is L.backordered
    assert order.status is S.paid  # nothing is requested until inventory reserves it
    order.request_fulfillment(reserved(order, shipment_id), CAUSE)
    assert order.status is S.awaiting_fulfillment
    assert units(order, "1") == {L.requested: 1} and units(order, "2") == {L.requested: 2, L.backordered: 3}


def test_a_reservation_that_overtakes_its_plan_requests_the_fulfillment_and_the_late_plan_adds_its_reason():
    order = paid_order()
    shipment_id = uuid.uuid4()
    reservation = domain.Reservation(shipment_id, "WH-EAST", everything(order), uuid.uuid4(), date(2026, 11, 26))
    order.request_fulfillment(reservation, CAUSE)
    requested = order.fulfillments[shipment_id]
    assert requested.status is F.requested and requested.ship_by == date(2026, 11, 26)
    assert order.status is S.awaiting_fulfillment and units(order, "1") == {L.requested: 2}
    order.apply_plan(reservation.plan_id, [planned(shipment_id, everything(order))], [], [], CAUSE)
    assert requested.status is F.requested and requested.reason == "WH-EAST: x"
    assert requested.estimated_delivery == date(2026, 11, 29)
    assert units(order, "1") == {L.requested: 2}


def test_a_rejection_that_overtakes_its_plan_leaves_the_fulfillment_rejected_when_the_plan_arrives():
    order = paid_order()
    shipment_id = uuid.uuid4()
    reservation = domain.Reservation(shipment_id, "WH-EAST", everything(order), uuid.uuid4())
    order.reject_reservation(reservation, "short", CAUSE)
    order.apply_plan(reservation.plan_id, [planned(shipment_id, everything(order))], [], [], CAUSE)
    assert order.fulfillments[shipment_id].status is F.rejected
    assert order.status is S.paid and units(order, "1") == {L.open: 2}


def test_a_re_plan_that_overtakes_the_rejection_of_a_planned_shipment_supersedes_it():
    order = paid_order(("A", 2, "1.00"), ("B", 1, "1.00"))
    first = plan_everything(order)
    [second] = plan(order, [everything(order)], attempt=2)
    assert (
        order.fulfillments[first].status is F.rejected and "superseded by plan" in order.fulfillments[first].rejection
    )
    assert order.fulfillments[second].status is F.planned and units(order, "1") == {L.reserved: 2}
    late = domain.Reservation(first, "WH-EAST", everything(order), uuid.uuid4())
    order.reject_reservation(late, "short", CAUSE)  # the rejection that caused the re-plan, late: nothing changes
    assert order.fulfillments[first].rejection.startswith("superseded") and units(order, "1") == {L.reserved: 2}
    order.request_fulfillment(reserved(order, second), CAUSE)
    assert order.status is S.awaiting_fulfillment and units(order, "2") == {L.requested: 1}


def test_a_re_plan_that_backorders_a_requested_shipment_before_its_source_rejection_arrives_supersedes_it():
    order, first = requested_everything(("A", 2, "1.00"))
    plan(order, backordered=everything(order), attempt=2)
    assert order.fulfillments[first].status is F.rejected and units(order, "1") == {L.backordered: 2}
    order.reject_fulfillment(first, "WH-EAST", "no staff", CAUSE)
    assert units(order, "1") == {L.backordered: 2}


def test_a_first_plan_never_supersedes_anything():
    order = paid_order(("A", 2, "1.00"))
    first = plan_everything(order)
    unchanged_by(order, lambda: plan(order, [everything(order)]), "2 units of line 1 should leave open, but 0 are open")
    assert order.fulfillments[first].status is F.planned


def test_a_re_plan_that_matches_no_single_earlier_shipment_supersedes_nothing_and_is_refused():
    order = paid_order(("A", 3, "1.00"))
    plan(order, [units_of(order, "1", 1), units_of(order, "1", 2)])
    unchanged_by(order, lambda: plan(order, [units_of(order, "1", 3)], attempt=2), "should leave open")


def test_a_reservation_for_an_unpaid_order_is_refused():
    order = new_order()
    reservation = domain.Reservation(uuid.uuid4(), "WH", everything(order), uuid.uuid4())
    unchanged_by(order, lambda: order.request_fulfillment(reservation, CAUSE), "takes no fulfillment")


def test_a_rejected_fulfillment_reopens_its_units_for_the_re_plan():
    order, shipment_id = requested_everything(("A", 2, "1.00"))
    order.reject_fulfillment(shipment_id, "WH-EAST", "no staff", CAUSE)
    assert order.fulfillments[shipment_id].status is F.rejected
    assert order.fulfillments[shipment_id].rejection == "no staff"
    assert units(order, "1") == {L.open: 2}
    unchanged_by(order, lambda: order.ship_parcel(shipment_id, "WH-EAST", parcel(), CAUSE), "nothing of it can ship")


def test_a_plan_of_only_backorders_moves_the_order_to_awaiting_fulfillment():
    order = paid_order(("A", 2, "1.00"))
    plan(order, backordered=everything(order))
    assert units(order, "1") == {L.backordered: 2} and order.lines["1"].state is L.backordered
    assert order.status is S.awaiting_fulfillment


def test_a_plan_where_nothing_can_be_fulfilled_cancels_the_order():
    order = paid_order()
    plan(order, unfulfillable=everything(order))
    assert order.status is S.cancelled and order.lines["1"].state is L.cancelled


def test_a_plan_naming_a_line_the_order_does_not_have_is_refused():
    order = paid_order()
    unchanged_by(order, lambda: plan(order, backordered=[domain.ShipmentLine("9", "SKU-1", 1)]), "no line 9")


def test_a_plan_placing_more_units_than_are_open_is_refused():
    order = paid_order(("A", 2, "1.00"))
    unchanged_by(order, lambda: plan(order, [units_of(order, "1", 3)]), "3 units of line 1 should leave open")


def test_a_plan_for_an_unpaid_order_is_refused():
    order = new_order()
    unchanged_by(order, lambda: plan(order), "takes no fulfillment")


# -- backorder allocations --------------------------------------------------------------------------------------


def mixed_order() -> tuple[domain.Order, uuid.UUID]:
    """Line 1 (1 unit) in stock and requested; line 2 (3 units) backordered."""
    order = paid_order(("TENT", 1, "99.00"), ("LAMP", 3, "10.00"))
    [shipment_id] = plan(order, [units_of(order, "1", 1)], units_of(order, "2", 3))
    order.request_fulfillment(reserved(order, shipment_id), CAUSE)
    return order, shipment_id


def test_an_allocation_is_a_new_fulfillment_requested_at_once_from_the_backordered_units():
    order, _ = mixed_order()
    allocated = allocation(units_of(order, "2", 3))
    order.allocate_backorder(allocated, CAUSE)
    fulfillment = order.fulfillments[allocated.fulfillment_id]
    assert (fulfillment.status, fulfillment.source_code, fulfillment.ship_by) == (
        F.requested,
        "WH-WEST",
        date(2026, 12, 3),
    )
    assert fulfillment.requested_at == NOW and fulfillment.plan_id is None
    assert units(order, "2") == {L.requested: 3}
    assert events(order, domain.FulfillmentRequested)[-1] == domain.FulfillmentRequested(fulfillment)


def test_an_allocation_without_a_ship_by_date_ships_by_the_day_it_was_allocated():
    order, _ = mixed_order()
    allocated = allocation(units_of(order, "2", 3), ship_by=None)
    order.allocate_backorder(allocated, CAUSE)
    assert order.fulfillments[allocated.fulfillment_id].ship_by == NOW.date()


def test_an_allocation_of_part_of_the_backorder_leaves_the_rest_waiting():
    order, _ = mixed_order()
    order.allocate_backorder(allocation(units_of(order, "2", 2)), CAUSE)
    assert units(order, "2") == {L.requested: 2, L.backordered: 1}
    assert order.lines["2"].state is L.backordered


def test_the_same_allocation_twice_is_one_fulfillment():
    order, _ = mixed_order()
    allocated = allocation(units_of(order, "2", 3))
    order.allocate_backorder(allocated, CAUSE)
    before = copy.deepcopy(order)
    order.allocate_backorder(allocated, CAUSE)
    assert order.fulfillments == before.fulfillments and len(order.events) == len(before.events)


def test_an_allocation_of_an_order_where_every_line_waited_moves_it_to_awaiting_and_requests():
    order = paid_order(("A", 2, "1.00"))
    plan(order, backordered=everything(order))
    assert order.status is S.awaiting_fulfillment
    order.allocate_backorder(allocation(everything(order)), CAUSE)
    assert order.status is S.awaiting_fulfillment and units(order, "1") == {L.requested: 2}


def test_an_allocation_that_overtakes_its_plan_takes_open_units_and_the_late_plan_does_not_backorder_them_again():
    order = paid_order(("A", 1, "1.00"), ("B", 3, "1.00"))
    order.allocate_backorder(allocation(units_of(order, "2", 3)), CAUSE)
    assert units(order, "2") == {L.requested: 3}
    plan(order, [units_of(order, "1", 1)], units_of(order, "2", 3))
    assert units(order, "1") == {L.reserved: 1} and units(order, "2") == {L.requested: 3}


def test_an_allocation_naming_a_line_the_order_does_not_have_is_refused():
    order, _ = mixed_order()
    bad = allocation([domain.ShipmentLine("9", "LAMP", 1)])
    unchanged_by(order, lambda: order.allocate_backorder(bad, CAUSE), "has no line 9 of LAMP")
    wrong_sku = allocation([domain.ShipmentLine("2", "TENT", 1)])
    unchanged_by(order, lambda: order.allocate_backorder(wrong_sku, CAUSE), "has no line 2 of TENT")


def test_an_allocation_of_more_units_than_are_backordered_is_refused():
    order, _ = mixed_order()
    order.allocate_backorder(allocation(units_of(order, "2", 2)), CAUSE)
    too_many = allocation(units_of(order, "2", 2))
    unchanged_by(
        order,
        lambda: order.allocate_backorder(too_many, CAUSE),
        "allocation of 2 units of line 2 .* only 1 are backordered",
    )


def test_an_allocation_of_an_already_shipped_line_is_refused():
    order, shipment_id = mixed_order()
    order.ship_parcel(shipment_id, "WH-EAST", parcel(), CAUSE)
    shipped_line = allocation(units_of(order, "1", 1))
    unchanged_by(order, lambda: order.allocate_backorder(shipped_line, CAUSE), "line 1 already shipped")


def test_an_allocation_of_a_cancelled_line_is_refused():
    order = paid_order(("A", 1, "1.00"), ("B", 2, "1.00"))
    plan(order, backordered=units_of(order, "1", 1), unfulfillable=units_of(order, "2", 2))
    cancelled = allocation(units_of(order, "2", 1))
    unchanged_by(order, lambda: order.allocate_backorder(cancelled, CAUSE), "line 2 is cancelled")


def test_an_allocation_for_an_order_that_takes_no_fulfillment_is_refused():
    order = new_order()
    unchanged_by(order, lambda: order.allocate_backorder(allocation(everything(order)), CAUSE), "takes no fulfillment")


# -- backorder_queued: inventory says which units joined its queues -------------------------------------------------
# Plans (routing topic) and inventory's answers (allocations topic) overtake each other. Inventory's answers about one
# order keep their order: each shipment's reservation, then backorder_queued, then any backorder_allocated.


def test_backorder_queued_that_overtakes_its_plan_backorders_the_units_and_the_late_plan_moves_nothing():
    order = paid_order(("TENT", 1, "99.00"), ("LAMP", 3, "10.00"))
    order.queue_backorder(units_of(order, "2", 3), CAUSE)
    assert units(order, "2") == {L.backordered: 3} and units(order, "1") == {L.open: 1}
    assert order.status is S.paid  # the tent is not placed yet
    plan(order, [units_of(order, "1", 1)], units_of(order, "2", 3))
    assert units(order, "2") == {L.backordered: 3} and units(order, "1") == {L.reserved: 1}


def test_backorder_queued_after_its_plan_moves_nothing():
    order, _ = mixed_order()
    before = copy.deepcopy(order.lines)
    order.queue_backorder(units_of(order, "2", 3), CAUSE)
    assert {i: x.units for i, x in order.lines.items()} == {i: x.units for i, x in before.items()}
    assert order.status is S.awaiting_fulfillment


def test_backorder_queued_of_every_unit_moves_a_paid_order_to_awaiting_fulfillment():
    order = paid_order(("A", 2, "1.00"), ("B", 1, "1.00"))
    order.queue_backorder(everything(order), CAUSE)
    assert order.status is S.awaiting_fulfillment
    assert [t.to_status for t in order.transitions[-1:]] == [S.awaiting_fulfillment]
    plan(order, backordered=everything(order))
    assert order.status is S.awaiting_fulfillment and units(order, "1") == {L.backordered: 2}


def test_backorder_queued_after_the_rejection_of_the_plans_shipment_of_the_same_line_leaves_those_units_open():
    # A line split between a shipment (2) and the backorder (3): inventory rejects the shipment, its units are
    # open again for the re-plan; the announcement of the 3 queued units must not backorder them.
    order = paid_order(("LAMP", 5, "10.00"))
    [shipment_id] = plan(order, [units_of(order, "1", 2)], units_of(order, "1", 3))
    order.reject_reservation(reserved(order, shipment_id), "short", CAUSE)
    order.queue_backorder(units_of(order, "1", 3), CAUSE)
    assert units(order, "1") == {L.open: 2, L.backordered: 3}


def test_a_plan_after_the_rejection_and_the_announcement_of_its_split_line_leaves_the_rejected_units_open():
    order = paid_order(("LAMP", 5, "10.00"))
    shipment_id, plan_id = uuid.uuid4(), uuid.uuid4()
    order.reject_reservation(
        domain.Reservation(shipment_id, "WH-EAST", units_of(order, "1", 2), plan_id), "short", CAUSE
    )
    order.queue_backorder(units_of(order, "1", 3), CAUSE)
    order.apply_plan(plan_id, [planned(shipment_id, units_of(order, "1", 2))], units_of(order, "1", 3), [], CAUSE)
    assert units(order, "1") == {L.open: 2, L.backordered: 3}
    assert order.fulfillments[shipment_id].status is F.rejected


def test_an_allocation_after_backorder_queued_that_overtook_the_plan_takes_the_backordered_units():
    order = paid_order(("TENT", 1, "99.00"), ("LAMP", 3, "10.00"))
    order.queue_backorder(units_of(order, "2", 3), CAUSE)
    order.allocate_backorder(allocation(units_of(order, "2", 2)), CAUSE)
    plan(order, [units_of(order, "1", 1)], units_of(order, "2", 3))
    assert units(order, "2") == {L.requested: 2, L.backordered: 1} and units(order, "1") == {L.reserved: 1}


def test_an_announcement_that_comes_after_its_allocation_backorders_only_what_was_not_allocated():
    # An allocation committed by a later transaction can be published before the announcement of an earlier one.
    order = paid_order(("LAMP", 3, "10.00"))
    order.allocate_backorder(allocation(units_of(order, "1", 2)), CAUSE)
    order.queue_backorder(units_of(order, "1", 3), CAUSE)
    assert units(order, "1") == {L.requested: 2, L.backordered: 1}
    plan(order, backordered=units_of(order, "1", 3))
    assert units(order, "1") == {L.requested: 2, L.backordered: 1}


def test_a_re_plan_whose_announcement_came_first_supersedes_no_live_shipment_of_the_same_shape():
    order = paid_order(("LAMP", 4, "10.00"))
    first, second = plan(order, [units_of(order, "1", 2), units_of(order, "1", 2)])
    order.request_fulfillment(reserved(order, second), CAUSE)
    order.reject_fulfillment(first, "WH-EAST", "no staff", CAUSE)
    # Routing re-plans the 2 rejected units as a backorder; inventory's announcement of them comes first.
    order.queue_backorder(units_of(order, "1", 2), CAUSE)
    plan(order, backordered=units_of(order, "1", 2), attempt=2)
    assert order.fulfillments[second].status is F.requested
    assert units(order, "1") == {L.requested: 2, L.backordered: 2}


def test_backorder_queued_naming_a_line_the_order_does_not_have_is_refused():
    order, _ = mixed_order()
    unknown = [domain.ShipmentLine("9", "LAMP", 1)]
    unchanged_by(order, lambda: order.queue_backorder(unknown, CAUSE), "has no line 9 of LAMP")
    other_sku = [domain.ShipmentLine("2", "TENT", 1)]
    unchanged_by(order, lambda: order.queue_backorder(other_sku, CAUSE), "has no line 2 of TENT")


def test_backorder_queued_for_an_unpaid_order_is_refused():
    order = new_order()
    unchanged_by(order, lambda: order.queue_backorder(everything(order), CAUSE), "takes no fulfillment")


def test_a_late_backorder_queued_with_nothing_to_move_changes_no_units_whatever_the_status():
    order, shipment_id = mixed_order()
    allocated = allocation(units_of(order, "2", 3))
    order.allocate_backorder(allocated, CAUSE)
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1"), CAUSE)
    order.ship_parcel(allocated.fulfillment_id, "WH-WEST", parcel("T2"), CAUSE)
    assert order.status is S.fulfilled
    order.queue_backorder(units_of(order, "2", 3), CAUSE)
    assert units(order, "2") == {L.shipped: 3} and order.status is S.fulfilled


# Every arrival order of one plan's messages: routing's plan on its topic; inventory's answers on theirs, in the
# order inventory emits them (the shipment's reservation or rejection, backorder_queued, then allocations), except
# that an allocation may come before the announcement (committed later, published first: see allocate_backorder).


def _mixed_messages(order: domain.Order, rejected: bool, split: int):
    """A plan of a 2-unit TENT and 1 LAMP in one shipment, 3 more LAMPs and 2 STOVEs backordered; inventory's answers,
    the backorder served in two allocations (the first takes `split` LAMPs and both STOVEs)."""
    plan_id, shipment_id = uuid.UUID(int=100), uuid.UUID(int=101)
    shipped = [*units_of(order, "1", 2), *units_of(order, "2", 1)]
    waiting = [*units_of(order, "2", 3), *units_of(order, "3", 2)]
    reservation = domain.Reservation(shipment_id, "WH-EAST", shipped, plan_id, date(2026, 11, 26))
    first = domain.Allocation(uuid.UUID(int=1), "WH-WEST", [*units_of(order, "2", split), *units_of(order, "3", 2)])
    second = domain.Allocation(uuid.UUID(int=2), "WH-EAST", units_of(order, "2", 3 - split)) if split < 3 else None

    def the_plan():
        order.apply_plan(plan_id, [planned(shipment_id, shipped)], waiting, [], CAUSE)

    def decision():
        if rejected:
            order.reject_reservation(reservation, "short", CAUSE)
        else:
            order.request_fulfillment(reservation, CAUSE)

    inventory = [
        ("decision", decision),
        ("queued", lambda: order.queue_backorder(waiting, CAUSE)),
        ("allocated", lambda: order.allocate_backorder(first, CAUSE)),
    ]
    if second is not None:
        inventory.append(("allocated again", lambda: order.allocate_backorder(second, CAUSE)))
    return ("plan", the_plan), inventory


def _state(order: domain.Order):
    return (
        order.status,
        {i: {s: n for s, n in x.units.items() if n} for i, x in order.lines.items()},
        {
            f: (x.status, x.source_code, sorted((y.line_id, y.quantity) for y in x.lines))
            for f, x in order.fulfillments.items()
        },
        sorted(str(type(e).__name__) for e in order.events),
    )


def _check_timeline(order: domain.Order) -> None:
    timeline = order.transitions
    for before_t, after_t in itertools.pairwise(timeline):
        assert after_t.from_status is before_t.to_status
        assert after_t.to_status in TRANSITIONS[before_t.to_status]
    assert timeline[-1].to_status is order.status


@settings(max_examples=300, deadline=None)
@given(rejected=st.booleans(), split=st.integers(1, 3), data=st.data())
def test_every_arrival_order_of_a_mixed_plan_and_inventorys_answers_ends_in_the_same_state(rejected, split, data):
    def run(arrangement) -> domain.Order:
        order = paid_order(("TENT", 2, "99.00"), ("LAMP", 4, "10.00"), ("STOVE", 2, "50.00"))
        the_plan, inventory = _mixed_messages(order, rejected, split)
        names = dict([the_plan, *inventory])
        for name in arrangement(the_plan[0], [n for n, _ in inventory]):
            names[name]()
            _check_units_add_up(order)
            _check_status_follows_units(order)
        _check_timeline(order)
        return order

    expected = run(lambda p, inventory: [p, *inventory])

    def drawn(p, inventory):
        # The announcement may come after the first allocation; the plan anywhere.
        if data.draw(st.booleans(), label="allocation before its announcement"):
            i = inventory.index("queued")
            inventory[i], inventory[i + 1] = inventory[i + 1], inventory[i]
        at = data.draw(st.integers(0, len(inventory)), label="plan arrives after")
        return [*inventory[:at], p, *inventory[at:]]

    got = run(drawn)
    assert _state(got) == _state(expected)
    assert [t.to_status for t in got.transitions] == [t.to_status for t in expected.transitions]
    assert {i: x.backorder for i, x in got.lines.items()} == {i: x.backorder for i, x in expected.lines.items()}


# -- parcels ----------------------------------------------------------------------------------------------------


def test_a_parcel_with_part_of_a_fulfillment_ships_those_units_and_leaves_the_rest_open():
    order, shipment_id = requested_everything(("A", 3, "1.00"), ("B", 1, "2.00"))
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 2}), CAUSE)
    fulfillment = order.fulfillments[shipment_id]
    assert fulfillment.status is F.requested and fulfillment.still_to_ship("1") == 1
    assert units(order, "1") == {L.shipped: 2, L.requested: 1} and order.lines["1"].state is L.requested
    assert order.status is S.partially_fulfilled
    [shipped] = events(order, domain.ParcelShipped)
    assert shipped.parcel.lines == (domain.ShipmentLine("1", "A", 2),)
    assert shipped.to_come == (domain.ShipmentLine("1", "A", 1), domain.ShipmentLine("2", "B", 1))
    assert shipped.status is S.partially_fulfilled and shipped.parcel.tracking_number == "T1"

    order.ship_parcel(shipment_id, "WH-EAST", parcel("T2", {"1": 1, "2": 1}), CAUSE)
    assert fulfillment.status is F.shipped and fulfillment.shipped_at == NOW
    assert order.status is S.fulfilled
    last = events(order, domain.ParcelShipped)[-1]
    assert last.to_come == () and last.status is S.fulfilled
    assert [t.to_status for t in order.transitions[-2:]] == [S.partially_fulfilled, S.fulfilled]


def test_a_parcel_with_everything_fulfils_the_order_at_once():
    order, shipment_id = requested_everything(("A", 2, "1.00"))
    order.ship_parcel(shipment_id, "WH-EAST", parcel(), CAUSE)
    assert order.status is S.fulfilled and order.fulfillments[shipment_id].status is F.shipped
    assert order.transitions[-1].from_status is S.awaiting_fulfillment
    assert order.transitions[-1].note == "WH-EAST shipped 2x A (DHL T1)"


def test_the_same_parcel_reported_again_under_a_new_event_is_one_parcel():
    order, shipment_id = requested_everything(("A", 3, "1.00"))
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 1}), CAUSE)
    before = copy.deepcopy(order)
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 1}), CAUSE)
    assert order.fulfillments == before.fulfillments and order.lines == before.lines
    assert len(events(order, domain.ParcelShipped)) == 1 and len(order.transitions) == len(before.transitions)


def test_the_last_parcel_reported_again_after_the_fulfillment_shipped_is_absorbed_not_refused():
    order, shipment_id = requested_everything(("A", 2, "1.00"))
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 2}), CAUSE)
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 2}), CAUSE)
    assert len(order.fulfillments[shipment_id].parcels) == 1 and len(events(order, domain.ParcelShipped)) == 1


def test_a_known_tracking_number_with_other_lines_is_refused():
    order, shipment_id = requested_everything(("A", 3, "1.00"))
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 1}), CAUSE)
    unchanged_by(
        order,
        lambda: order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 2}), CAUSE),
        "parcel T1 was recorded with 1x A",
    )


def test_a_parcel_with_more_than_is_still_to_ship_is_refused():
    order, shipment_id = requested_everything(("A", 3, "1.00"))
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 2}), CAUSE)
    unchanged_by(
        order,
        lambda: order.ship_parcel(shipment_id, "WH-EAST", parcel("T2", {"1": 2}), CAUSE),
        "ships 2 units of line 1, but only 1 of it are still to ship",
    )


def test_a_parcel_with_a_line_not_in_the_fulfillment_is_refused():
    order = paid_order(("A", 1, "1.00"), ("B", 1, "1.00"))
    [shipment_id] = plan(order, [units_of(order, "1", 1)], units_of(order, "2", 1))
    order.request_fulfillment(reserved(order, shipment_id), CAUSE)
    unchanged_by(
        order,
        lambda: order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 1, "2": 1}), CAUSE),
        f"fulfillment {shipment_id} has no line 2",
    )


def test_a_parcel_for_an_unknown_fulfillment_or_from_another_source_is_refused():
    order, shipment_id = requested_everything()
    unknown = uuid.uuid4()
    unchanged_by(order, lambda: order.ship_parcel(unknown, "WH-EAST", parcel(), CAUSE), f"no fulfillment {unknown}")
    unchanged_by(
        order, lambda: order.ship_parcel(shipment_id, "WH-WEST", parcel(), CAUSE), "requested from WH-EAST, not WH-WEST"
    )


@pytest.mark.parametrize("status", [F.planned, F.rejected])
def test_a_parcel_for_a_fulfillment_that_is_not_requested_or_accepted_is_refused(status):
    order = paid_order()
    shipment_id = plan_everything(order)
    if status is F.rejected:
        order.reject_fulfillment(shipment_id, "WH-EAST", "short", CAUSE)
    unchanged_by(order, lambda: order.ship_parcel(shipment_id, "WH-EAST", parcel(), CAUSE), f"is {status}; nothing")


def test_a_new_parcel_for_a_fulfillment_that_already_shipped_everything_is_refused():
    order, shipment_id = requested_everything()
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1"), CAUSE)
    unchanged_by(
        order, lambda: order.ship_parcel(shipment_id, "WH-EAST", parcel("T2", {"1": 1}), CAUSE), "is shipped; nothing"
    )


def test_an_accepted_fulfillment_ships_in_parcels_too_and_a_late_acceptance_changes_nothing():
    order, shipment_id = requested_everything(("A", 2, "1.00"))
    order.accept_fulfillment(shipment_id, "WH-EAST")
    assert order.fulfillments[shipment_id].status is F.accepted
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 1}), CAUSE)
    assert order.fulfillments[shipment_id].status is F.accepted
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T2", {"1": 1}), CAUSE)
    order.accept_fulfillment(shipment_id, "WH-EAST")
    assert order.fulfillments[shipment_id].status is F.shipped


def test_a_fulfillment_with_a_parcel_out_cannot_be_rejected():
    order, shipment_id = requested_everything(("A", 2, "1.00"))
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 1}), CAUSE)
    unchanged_by(order, lambda: order.reject_fulfillment(shipment_id, "WH-EAST", "x", CAUSE), "has shipped 1 parcel")


# -- deliveries -------------------------------------------------------------------------------------------------


def test_delivery_of_every_shipped_unit_with_nothing_left_to_ship_delivers_the_order():
    order, shipment_id = requested_everything(("A", 2, "1.00"))
    order.ship_parcel(shipment_id, "WH-EAST", parcel(), CAUSE)
    order.deliver_fulfillment(shipment_id, "WH-EAST", NOW + timedelta(days=2), CAUSE)
    fulfillment = order.fulfillments[shipment_id]
    assert fulfillment.status is F.delivered and fulfillment.delivered_at == NOW + timedelta(days=2)
    assert order.status is S.delivered and units(order, "1") == {L.delivered: 2}
    [delivered] = events(order, domain.FulfillmentDelivered)
    assert delivered.lines == [domain.ShipmentLine("1", "A", 2)] and delivered.status is S.delivered
    assert [t.to_status for t in order.transitions] == [
        S.pending,
        S.payment_processing,
        S.paid,
        S.awaiting_fulfillment,
        S.fulfilled,
        S.delivered,
    ]


def test_delivering_one_fulfillment_while_another_is_still_to_ship_leaves_the_order_partially_fulfilled():
    order, first = mixed_order()
    order.ship_parcel(first, "WH-EAST", parcel(), CAUSE)
    order.deliver_fulfillment(first, "WH-EAST", NOW, CAUSE)
    assert order.fulfillments[first].status is F.delivered and order.status is S.partially_fulfilled


def test_delivery_of_a_partly_shipped_fulfillment_delivers_its_parcels_and_the_rest_delivers_later():
    order, shipment_id = requested_everything(("A", 3, "1.00"))
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 1}), CAUSE)
    order.deliver_fulfillment(shipment_id, "WH-EAST", NOW, CAUSE)
    assert order.fulfillments[shipment_id].status is F.requested and units(order, "1") == {
        L.delivered: 1,
        L.requested: 2,
    }
    assert order.status is S.partially_fulfilled
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T2", {"1": 2}), CAUSE)
    assert order.status is S.fulfilled
    order.deliver_fulfillment(shipment_id, "WH-EAST", NOW, CAUSE)
    assert order.status is S.delivered and order.fulfillments[shipment_id].status is F.delivered
    assert [e.parcels[0].tracking_number for e in events(order, domain.FulfillmentDelivered)] == ["T1", "T2"]


def test_a_repeated_delivery_changes_nothing():
    order, shipment_id = requested_everything()
    order.ship_parcel(shipment_id, "WH-EAST", parcel(), CAUSE)
    order.deliver_fulfillment(shipment_id, "WH-EAST", NOW, CAUSE)
    before = copy.deepcopy(order)
    order.deliver_fulfillment(shipment_id, "WH-EAST", NOW + timedelta(days=1), CAUSE)
    assert order.fulfillments == before.fulfillments and len(order.events) == len(before.events)


def test_delivery_of_a_fulfillment_nothing_of_which_shipped_is_refused():
    order, shipment_id = requested_everything()
    unchanged_by(
        order, lambda: order.deliver_fulfillment(shipment_id, "WH-EAST", NOW, CAUSE), "nothing of it has shipped"
    )


def test_the_mixed_order_of_the_design_from_plan_to_delivered():
    order, first = mixed_order()
    assert order.status is S.awaiting_fulfillment
    order.ship_parcel(first, "WH-EAST", parcel("T1"), CAUSE)
    assert order.status is S.partially_fulfilled
    assert events(order, domain.ParcelShipped)[-1].to_come == (domain.ShipmentLine("2", "LAMP", 3),)
    allocated = allocation(units_of(order, "2", 3))
    order.allocate_backorder(allocated, CAUSE)
    order.ship_parcel(allocated.fulfillment_id, "WH-WEST", parcel("T2"), CAUSE)
    assert order.status is S.fulfilled
    order.deliver_fulfillment(first, "WH-EAST", NOW, CAUSE)
    assert order.status is S.fulfilled
    order.deliver_fulfillment(allocated.fulfillment_id, "WH-WEST", NOW, CAUSE)
    assert order.status is S.delivered
    assert [t.to_status for t in order.transitions[3:]] == [
        S.awaiting_fulfillment,
        S.partially_fulfilled,
        S.fulfilled,
        S.delivered,
    ]


# -- random walks -----------------------------------------------------------------------------------------------


def _check_units_add_up(order: domain.Order) -> None:
    """Every line's units are where its fulfillments, parcels and the backorder say, and add up to the order."""
    for line in order.lines.values():
        assert all(n >= 0 for n in line.units.values()) and sum(line.units.values()) == line.quantity
        held = {state: 0 for state in L}
        for f in order.fulfillments.values():
            in_it = sum(x.quantity for x in f.lines if x.line_id == line.line_id)
            if f.status is F.planned:
                held[L.reserved] += in_it
            elif f.status in (F.requested, F.accepted):
                held[L.requested] += f.still_to_ship(line.line_id)
            for p in f.parcels:
                units_in = sum(x.quantity for x in p.lines if x.line_id == line.line_id)
                held[L.delivered if p.delivered_at else L.shipped] += units_in
        for state in (L.reserved, L.requested, L.shipped, L.delivered):
            assert line.units[state] == held[state], (line, state)
        # shipped + open in fulfillments + backordered + cancelled (+ not placed yet) = ordered
        assert (
            held[L.shipped]
            + held[L.delivered]
            + held[L.reserved]
            + held[L.requested]
            + line.units[L.backordered]
            + line.units[L.cancelled]
            + line.units[L.open]
        ) == line.quantity


def _check_status_follows_units(order: domain.Order) -> None:
    units = order.units()
    to_ship = sum(units[s] for s in domain.TO_SHIP)
    has_shipped = sum(units[s] for s in domain.HAS_SHIPPED)
    expected = {
        S.partially_fulfilled: has_shipped > 0 and to_ship > 0,
        S.fulfilled: to_ship == 0 and units[L.shipped] > 0,
        S.delivered: to_ship == 0 and has_shipped > 0 and units[L.shipped] == 0,
        # (a rejected shipment may leave it with open units only, until routing's re-plan)
        S.awaiting_fulfillment: has_shipped == 0,
        S.paid: has_shipped == 0 and units[L.requested] == 0 and units[L.backordered] < sum(units.values()),
    }
    if order.status in expected:
        assert expected[order.status], (order.status, units)
    if has_shipped:
        assert order.status in (S.partially_fulfilled, S.fulfilled, S.delivered)


PAYING = ["capture", "capture", "capture", "authorize", "fail", "cancel"]
# Weighted towards what moves an order forward, so that walks reach fulfilled and delivered; refusals come from
# drawing fulfillments, lines and quantities that do not fit.
FULFILLING = ["plan", "reserve", "reserve", "reject", "accept", "allocate", "allocate", "ship", "ship", "ship"]
FULFILLING += ["resend", "deliver", "deliver", "replan", "overtaken", "overtaken"]


def _walk_step(order: domain.Order, data) -> None:
    action = data.draw(st.sampled_from(PAYING if order.status in domain.UNPAID else FULFILLING))
    fulfillments = list(order.fulfillments.values())
    pick = (lambda: data.draw(st.sampled_from(fulfillments))) if fulfillments else None
    if action == "authorize":
        order.authorize_payment(order.grand_total, "EUR", CAUSE)
    elif action == "capture":
        order.capture_payment(order.grand_total, "EUR", "p", CAUSE)
    elif action == "fail":
        order.fail_payment("x", CAUSE)
    elif action == "cancel":
        order.cancel_before_payment("x", CAUSE)
    elif action == "plan":
        shipments: list[list[domain.ShipmentLine]] = [[], []]
        backordered, unfulfillable = [], []
        for line in order.lines.values():
            left = line.units[L.open]
            for target in (shipments[0], shipments[1], backordered, unfulfillable):
                n = data.draw(st.integers(0, left), label=f"{line.line_id}")
                if n:
                    target.append(domain.ShipmentLine(line.line_id, line.sku, n))
                    left -= n
        plan(order, [s for s in shipments if s], backordered, unfulfillable)
    elif action == "overtaken":
        _overtaken_plan(order, data)
    elif action == "allocate":
        line = data.draw(st.sampled_from(list(order.lines.values())))
        n = data.draw(st.integers(1, line.units[L.backordered] + 1))
        order.allocate_backorder(allocation([domain.ShipmentLine(line.line_id, line.sku, n)]), CAUSE)
    elif pick is None:
        return
    elif action == "reserve":
        f = pick()
        order.request_fulfillment(
            domain.Reservation(f.fulfillment_id, f.source_code, list(f.lines), uuid.uuid4()), CAUSE
        )
    elif action == "reject":
        order.reject_fulfillment(pick().fulfillment_id, data.draw(st.sampled_from(["WH-EAST", "WH-WEST"])), "x", CAUSE)
    elif action == "accept":
        f = pick()
        order.accept_fulfillment(f.fulfillment_id, f.source_code)
    elif action == "ship":
        f = pick()
        lines = {
            x.line_id: data.draw(st.integers(1, f.still_to_ship(x.line_id) + 1))
            for x in f.lines
            if data.draw(st.booleans())
        }
        order.ship_parcel(f.fulfillment_id, f.source_code, parcel(data.draw(st.sampled_from("ABCD")), lines), CAUSE)
    elif action == "resend":
        # A source sends a parcel it already reported, under a new event id: never a second parcel.
        sent = [(f, p) for f in fulfillments for p in f.parcels]
        if sent:
            f, p = data.draw(st.sampled_from(sent))
            before = (len(f.parcels), copy.deepcopy(order.lines), len(order.events))
            again = parcel(p.tracking_number, {x.line_id: x.quantity for x in p.lines})
            order.ship_parcel(f.fulfillment_id, f.source_code, again, CAUSE)
            assert (len(f.parcels), order.lines, len(order.events)) == before
    elif action == "deliver":
        f = pick()
        order.deliver_fulfillment(f.fulfillment_id, f.source_code, NOW, CAUSE)
    elif action == "replan":
        # Routing re-plans a shipment's lines after its rejection, which may or may not have arrived yet.
        f = pick()
        if data.draw(st.booleans(), label="rejection first"):
            order.reject_fulfillment(f.fulfillment_id, f.source_code, "x", CAUSE)
        ship = [x for x in f.lines if data.draw(st.booleans())]
        rest = [x for x in f.lines if x not in ship]
        plan(order, [ship] if ship else [], rest, attempt=2)


def _overtaken_plan(order: domain.Order, data) -> None:
    """A plan of open units, one shipment and a backorder, applied with inventory's answers to it in any arrival
    order: the plan anywhere among them; the reservation (or rejection) of the shipment, backorder_queued and an
    allocation of part of the backorder in the order inventory emits them, the allocation possibly first."""
    shipment, backordered = [], []
    for line in order.lines.values():
        left = line.units[L.open]
        for target in (shipment, backordered):
            n = data.draw(st.integers(0, left), label=f"{line.line_id}")
            if n:
                target.append(domain.ShipmentLine(line.line_id, line.sku, n))
                left -= n
    plan_id, shipment_id = uuid.uuid4(), uuid.uuid4()
    reservation = domain.Reservation(shipment_id, "WH-EAST", shipment, plan_id)
    allocated = [
        domain.ShipmentLine(x.line_id, x.sku, n) for x in backordered if (n := data.draw(st.integers(0, x.quantity)))
    ]
    answers = []
    if shipment:
        if data.draw(st.booleans(), label="reserved"):
            answers.append(lambda: order.request_fulfillment(reservation, CAUSE))
        else:
            answers.append(lambda: order.reject_reservation(reservation, "short", CAUSE))
    if backordered:
        answers.append(lambda: order.queue_backorder(backordered, CAUSE))
    if allocated:
        at = len(answers) - (1 if data.draw(st.booleans(), label="allocation first") else 0)
        answers.insert(at, lambda: order.allocate_backorder(allocation(allocated), CAUSE))
    shipments = [planned(shipment_id, shipment)] if shipment else []
    answers.insert(
        data.draw(st.integers(0, len(answers)), label="plan after"),
        lambda: order.apply_plan(plan_id, shipments, backordered, [], CAUSE),
    )
    for answer in answers:
        # Each is a message of its own: a refused one changes nothing, and the next is still applied.
        _applied_or_refused_changing_nothing(order, answer)


def _applied_or_refused_changing_nothing(order: domain.Order, apply) -> None:
    before = copy.deepcopy(order)
    try:
        apply()
    except OrderRefusal:
        assert order.status is before.status and order.lines == before.lines
        assert order.fulfillments == before.fulfillments
        assert len(order.transitions) == len(before.transitions) and len(order.events) == len(before.events)


def _finish(order: domain.Order) -> None:
    def checked() -> None:
        _check_units_add_up(order)
        _check_status_follows_units(order)

    open_units = [domain.ShipmentLine(x.line_id, x.sku, x.units[L.open]) for x in order.lines.values()]
    if any(x.quantity for x in open_units):
        plan(order, [[x for x in open_units if x.quantity]])
        checked()
    for f in list(order.fulfillments.values()):
        if f.status is F.planned:
            order.request_fulfillment(
                domain.Reservation(f.fulfillment_id, f.source_code, list(f.lines), uuid.uuid4()), CAUSE
            )
            checked()
    for x in order.lines.values():
        if x.units[L.backordered]:
            order.allocate_backorder(allocation([domain.ShipmentLine(x.line_id, x.sku, x.units[L.backordered])]), CAUSE)
            checked()
    for i, f in enumerate(list(order.fulfillments.values())):
        if f.status in domain.SHIPPABLE:
            order.ship_parcel(f.fulfillment_id, f.source_code, parcel(f"LAST-{i}"), CAUSE)
            checked()
    for f in list(order.fulfillments.values()):
        if any(p.delivered_at is None for p in f.parcels):
            order.deliver_fulfillment(f.fulfillment_id, f.source_code, NOW, CAUSE)
            checked()


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_walk_of_plans_answers_in_any_arrival_order_parcels_and_deliveries_keeps_units_status_and_timeline(data):
    order = new_order(("A", 3, "5.00"), ("B", 2, "6.00"), ("C", 1, "7.00"))
    if data.draw(st.booleans(), label="paid at once"):
        order.capture_payment(order.grand_total, "EUR", "p", CAUSE)
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        # A refused message changes nothing.
        _applied_or_refused_changing_nothing(order, lambda: _walk_step(order, data))
        _check_units_add_up(order)
        _check_status_follows_units(order)
        for f in order.fulfillments.values():
            tracking = [p.tracking_number for p in f.parcels]
            assert len(tracking) == len(set(tracking))
            assert (f.status in (F.shipped, F.delivered)) == (
                bool(f.parcels) and all(f.still_to_ship(x.line_id) == 0 for x in f.lines)
            )
    if data.draw(st.booleans(), label="finish") and order.status in domain.TAKES_FULFILLMENT:
        # Whatever the walk left, the order can still be completed: plan what is open, request what is planned,
        # allocate what waits, ship in one parcel what is left of each fulfillment, deliver.
        _finish(order)
        assert order.status is S.delivered
    event(f"ends {order.status}")  # --hypothesis-show-statistics: how far the walks get
    # One ParcelShipped per parcel, naming exactly its lines.
    announced = [(e.fulfillment.fulfillment_id, e.parcel.tracking_number) for e in events(order, domain.ParcelShipped)]
    recorded = [(f.fulfillment_id, p.tracking_number) for f in order.fulfillments.values() for p in f.parcels]
    assert sorted(map(str, announced)) == sorted(map(str, recorded))
    timeline = order.transitions
    assert timeline[0].from_status is None
    for before_t, after_t in itertools.pairwise(timeline):
        assert after_t.from_status is before_t.to_status
        assert after_t.to_status in TRANSITIONS[before_t.to_status]
    assert timeline[-1].to_status is order.status
