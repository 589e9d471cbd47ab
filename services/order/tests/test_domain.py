import copy
import itertools
import uuid
from dataclasses import replace
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
    """A pending order of `lines` (two units of SKU-1 by default), shipping 4.99, no tax or discount."""
    return priced_order(*(lines or (("SKU-1", 2, "19.99"),)))


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


def test_an_allocation_of_units_cancelled_meanwhile_gives_them_back_and_requests_only_the_rest():
    # The cancellation had not reached inventory when it allocated: what it reserved for them goes back at once.
    order = paid_order(("A", 1, "1.00"), ("B", 3, "1.00"))
    plan(order, [units_of(order, "1", 1)], backordered=units_of(order, "2", 3))
    order.request_cancellation(
        domain.CancellationRequest(uuid.uuid4(), "cs-agent", "http", "too late", (domain.LineRequest("2", 2),)), CAUSE
    )
    allocated = allocation(units_of(order, "2", 3))
    order.allocate_backorder(allocated, CAUSE)
    fulfillment = order.fulfillments[allocated.fulfillment_id]
    assert fulfillment.status is F.requested and fulfillment.requestable() == units_of(order, "2", 1)
    assert units(order, "2") == {L.requested: 1, L.cancelled: 2}
    [released] = [e for e in events(order, domain.UnitsCancelled) if e.released]
    assert [(u.line_id, u.quantity, u.was, u.fulfillment_id) for u in released.units] == [
        ("2", 2, "reserved", allocated.fulfillment_id)
    ]
    assert released.refund is None and order.refunded_total == Decimal("2.00")  # refunded once, by the cancellation


def test_an_allocation_of_nothing_but_cancelled_units_is_given_back_and_requests_nothing():
    order = paid_order(("A", 1, "1.00"), ("B", 2, "1.00"))
    plan(order, backordered=units_of(order, "1", 1), unfulfillable=units_of(order, "2", 2))
    cancelled = allocation(units_of(order, "2", 1))
    order.allocate_backorder(cancelled, CAUSE)
    assert order.fulfillments[cancelled.fulfillment_id].status is F.cancelled
    assert not [
        e
        for e in events(order, domain.FulfillmentRequested)
        if e.fulfillment.fulfillment_id == cancelled.fulfillment_id
    ]
    assert [e.released for e in events(order, domain.UnitsCancelled)][-1] is True


def test_an_allocation_beyond_what_waits_and_what_cancellations_explain_is_refused():
    order = paid_order(("A", 1, "1.00"), ("B", 2, "1.00"))
    plan(order, backordered=units_of(order, "1", 1), unfulfillable=units_of(order, "2", 2))
    unchanged_by(
        order,
        lambda: order.allocate_backorder(allocation(units_of(order, "1", 2)), CAUSE),
        "allocation of 2 units of line 1 .* only 1 are backordered",
    )


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
        out = delivered = 0
        for f in order.fulfillments.values():
            if f.status is F.planned:
                held[L.reserved] += f.still_to_ship(line.line_id)
            elif f.status in (F.requested, F.accepted):
                held[L.requested] += f.still_to_ship(line.line_id)
            assert f.pending_units(line.line_id) <= max(f.still_to_ship(line.line_id), 0), (f, line)
            assert f.still_to_ship(line.line_id) >= 0 or f.status is F.rejected, (f, line)
            for p in f.parcels:
                units_in = sum(x.quantity for x in p.lines if x.line_id == line.line_id)
                out += units_in
                delivered += units_in if p.delivered_at else 0
        for state in (L.reserved, L.requested):
            assert line.units[state] == held[state], (line, state)
        # Every unit that left is shipped, delivered or returned; returns take delivered units first.
        assert line.units[L.shipped] + line.units[L.delivered] + line.units[L.returned] == out, line
        assert line.units[L.delivered] <= delivered, line


def _check_money(order: domain.Order) -> None:
    """Refunds never exceed what was paid, each unit is refunded at most once, a paid order with nothing left
    refunds exactly what was paid, and the totals are what the units and cancellations left."""
    refunds = events_of_refunds(order)
    assert order.refunded_total == sum((r.amount for r in refunds), Decimal(0))
    assert all(r.amount > 0 for r in refunds)
    paid = order.paid_amount or Decimal(0)
    assert order.refunded_total <= paid
    units = order.units()
    for line in order.lines.values():
        refunded = sum(x.quantity for r in refunds for x in r.lines if x.line_id == line.line_id)
        assert refunded <= line.units[L.cancelled] + line.units[L.returned], line
    if order.paid_amount is not None and units[L.cancelled] + units[L.returned] == units.total():
        assert order.refunded_total == order.paid_amount
    left = order.left
    assert order.grand_total == left.grand and left.grand >= 0
    assert min(left.goods, left.shipping, left.tax, left.discount) >= 0
    if units[L.cancelled] == units.total():
        assert order.grand_total == 0


def _check_cancellations(order: domain.Order) -> None:
    """Each request's units are cancelled, pending or refused, and pending ones are exactly those fulfillments wait
    to hear about."""
    for record in order.cancellations.values():
        for line_id, x in record.lines.items():
            assert min(x.cancelled, x.pending, x.refused) >= 0, record
            if x.asked is not None and record.refusal is None:
                assert x.cancelled + x.pending == x.asked, record
            pending = sum(
                p.quantity
                for f in order.fulfillments.values()
                for p in f.pending
                if p.cancellation_id == record.cancellation_id and p.line_id == line_id
            )
            assert pending == x.pending, record


def _check_status_follows_units(order: domain.Order) -> None:
    units = order.units()
    to_ship = sum(units[s] for s in domain.TO_SHIP)
    has_shipped = sum(units[s] for s in domain.HAS_SHIPPED)
    gone = units[L.cancelled] + units[L.returned]
    expected = {
        S.partially_fulfilled: has_shipped > 0 and to_ship > 0,
        S.fulfilled: to_ship == 0 and units[L.shipped] > 0,
        S.delivered: to_ship == 0 and has_shipped > 0 and units[L.shipped] == 0,
        # (a rejected shipment may leave it with open units only, until routing's re-plan)
        S.awaiting_fulfillment: has_shipped == 0,
        S.paid: has_shipped == 0 and units[L.requested] == 0 and units[L.backordered] < sum(units.values()),
        S.cancelled: units[L.cancelled] == units.total(),
        S.refunded: gone == units.total() and units[L.returned] > 0,
    }
    if order.status in expected:
        assert expected[order.status], (order.status, units)
    if has_shipped:
        assert order.status in (S.partially_fulfilled, S.fulfilled, S.delivered, S.refunded)
    if units[L.cancelled] == units.total():
        assert order.status is S.cancelled
    elif gone == units.total():
        assert order.status is S.refunded


def events_of_refunds(order: domain.Order) -> list[domain.Refund]:
    made = []
    for e in order.events:
        if isinstance(e, domain.UnitsCancelled | domain.Returned) and e.refund is not None:
            made.append(e.refund)
    return made


PAYING = ["capture", "capture", "capture", "authorize", "fail", "cancel", "cancel_lines"]
# Weighted towards what moves an order forward, so that walks reach fulfilled and delivered; refusals come from
# drawing fulfillments, lines and quantities that do not fit.
FULFILLING = ["plan", "reserve", "reserve", "reject", "accept", "allocate", "allocate", "ship", "ship", "ship"]
FULFILLING += ["resend", "deliver", "deliver", "replan", "overtaken", "overtaken"]
# After the sale: cancellations of all kinds, the sources' own cancellations, returns.
FULFILLING += ["cancel_lines", "cancel_lines", "cancel", "source_cancel", "source_cancel", "return", "return"]


def _cancel_step(order: domain.Order, data, whole: bool) -> None:
    if whole:
        lines = None
    else:
        chosen = data.draw(st.lists(st.sampled_from(sorted(order.lines)), min_size=1, max_size=3), label="lines")
        lines = tuple(domain.LineRequest(x, data.draw(st.integers(1, 3), label="units")) for x in chosen)
    request = domain.CancellationRequest(
        uuid.UUID(int=data.draw(st.integers(1, 6), label="request id")),
        data.draw(st.sampled_from(["channel:web-eu:ada", "cs-agent"]), label="who"),
        "channel",
        "changed my mind",
        lines,
    )
    order.request_cancellation(request, CAUSE, record_refusal=data.draw(st.booleans(), label="record refusal"))


def _walk_step(order: domain.Order, data, choices: list[str] | None = None) -> None:
    action = data.draw(st.sampled_from(PAYING if order.status in domain.UNPAID else choices or FULFILLING))
    fulfillments = list(order.fulfillments.values())
    pick = (lambda: data.draw(st.sampled_from(fulfillments))) if fulfillments else None
    if action == "authorize":
        order.authorize_payment(order.grand_total, "EUR", CAUSE)
    elif action == "capture":
        order.capture_payment(order.grand_total, "EUR", "p", CAUSE)
    elif action == "fail":
        order.fail_payment("x", CAUSE)
    elif action in ("cancel", "cancel_lines"):
        _cancel_step(order, data, whole=action == "cancel")
    elif action == "return":
        line = data.draw(st.sampled_from(list(order.lines.values())))
        n = data.draw(st.integers(1, max(line.units[L.shipped] + line.units[L.delivered], 0) + 1))
        condition = data.draw(st.sampled_from(["resellable", "damaged"]))
        order.receive_return(uuid.uuid4(), "STORE-1", [domain.ReturnedLine(line.line_id, n, condition)], "x", CAUSE)
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
        order.accept_fulfillment(f.fulfillment_id, f.source_code, CAUSE)
    elif action == "source_cancel":
        # The source will not ship some units: its answer to a cancellation, or its own decision.
        f = pick()
        lines = {
            x.line_id: data.draw(st.integers(1, max(f.still_to_ship(x.line_id), 0) + 1))
            for x in f.lines
            if data.draw(st.booleans())
        }
        if lines:
            order.cancel_at_source(f.fulfillment_id, f.source_code, lines, "shelf empty", CAUSE)
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
            # Two messages: the rejection stands even when the plan after it is refused.
            _applied_or_refused_changing_nothing(
                order, lambda: order.reject_fulfillment(f.fulfillment_id, f.source_code, "x", CAUSE)
            )
        ship = [x for x in f.lines if data.draw(st.booleans())]
        rest = [x for x in f.lines if x not in ship]
        _applied_or_refused_changing_nothing(order, lambda: plan(order, [ship] if ship else [], rest, attempt=2))


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
        assert order.fulfillments == before.fulfillments and order.cancellations == before.cancellations
        assert (order.grand_total, order.refunded_total) == (before.grand_total, before.refunded_total)
        assert len(order.transitions) == len(before.transitions) and len(order.events) == len(before.events)
        assert len(order.timeline) == len(before.timeline)


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
    order.submitted_tax_total = order.tax_total = Decimal(data.draw(st.sampled_from(["0", "3.17", "5.01"])))
    order.submitted_discount_total = order.discount_total = Decimal(data.draw(st.sampled_from(["0", "2.35"])))
    order.grand_total = order.left.grand
    if data.draw(st.booleans(), label="paid at once"):
        order.capture_payment(order.grand_total, "EUR", "p", CAUSE)
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        # A refused message changes nothing.
        _applied_or_refused_changing_nothing(order, lambda: _walk_step(order, data))
        _check_units_add_up(order)
        _check_status_follows_units(order)
        _check_money(order)
        _check_cancellations(order)
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
        # Delivered, unless cancellations the walk left pending took what was left.
        units = order.units()
        gone = units[L.cancelled] + units[L.returned]
        left_nothing = S.cancelled if units[L.cancelled] == units.total() else S.refunded
        assert order.status is (left_nothing if gone == units.total() else S.delivered)
        _check_money(order)
        _check_cancellations(order)
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
    # The timeline holds every status change among its other entries, in the order they happened.
    assert [e.to_status for e in order.timeline if e.kind is domain.EntryKind.status] == [
        t.to_status for t in order.transitions
    ]
    assert all(e.actor for e in order.timeline)


# After the sale: after a shipment, anything may come: parcels, cancellations, the sources' answers, returns.
AFTER = ["ship", "ship", "deliver", "accept", "cancel_lines", "cancel_lines", "cancel", "source_cancel"]
AFTER += ["source_cancel", "reject", "return", "return", "return", "plan", "reserve", "allocate"]


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_walk_after_the_sale_refunds_each_unit_at_most_once_and_never_more_than_was_paid(data):
    tax, discount = data.draw(st.sampled_from([("0", "0"), ("3.17", "0"), ("5.01", "2.35")]), label="tax, discount")
    order = priced_order(("A", 3, "5.00"), ("B", 2, "6.00"), ("C", 1, "7.00"), tax=tax, discount=discount)
    order.capture_payment(order.grand_total, "EUR", "p", CAUSE)
    order.request_fulfillment(reserved(order, plan_everything(order)), CAUSE)
    for _ in range(data.draw(st.integers(1, 30), label="steps")):
        _applied_or_refused_changing_nothing(order, lambda: _walk_step(order, data, AFTER))
        _check_units_add_up(order)
        _check_status_follows_units(order)
        _check_money(order)
        _check_cancellations(order)
    if data.draw(st.booleans(), label="wind down"):
        # The customer gives up: everything not shipped is cancelled (the holders say yes), everything shipped comes
        # back. Nothing of the order is kept, so exactly what was paid goes back.
        _wind_down(order)
        units = order.units()
        assert units[L.cancelled] + units[L.returned] == units.total()
        assert order.status is (S.refunded if units[L.returned] else S.cancelled)
        assert order.refunded_total == order.paid_amount
        _check_money(order)
        _check_cancellations(order)
    event(f"ends {order.status}")
    _check_timeline(order)


def _wind_down(order: domain.Order) -> None:
    cancel(order, reason="giving up")
    for f in list(order.fulfillments.values()):
        if f.status is F.planned:
            order.request_fulfillment(
                domain.Reservation(f.fulfillment_id, f.source_code, list(f.lines), uuid.uuid4()), CAUSE
            )
        elif f.status in domain.SHIPPABLE:
            asked = {line_id: f.pending_units(line_id) for line_id in {x.line_id for x in f.lines}}
            if any(asked.values()):
                order.cancel_at_source(
                    f.fulfillment_id, f.source_code, {k: n for k, n in asked.items() if n}, None, CAUSE
                )
        _check_units_add_up(order)
        _check_money(order)
    out = [
        domain.ReturnedLine(x.line_id, x.units[L.shipped] + x.units[L.delivered], "resellable")
        for x in order.lines.values()
        if x.units[L.shipped] + x.units[L.delivered]
    ]
    if out:
        order.receive_return(uuid.uuid4(), "WH-EAST", out, "giving up", CAUSE)


# -- after the sale: cancellations ---------------------------------------------------------------------------------


def priced_order(*lines: tuple[str, int, str], shipping="4.99", tax="0", discount="0") -> domain.Order:
    """A pending order of `lines` [(sku, units, price)] whose totals add up."""
    order_lines = [domain.Line(str(i), sku, qty, Decimal(price)) for i, (sku, qty, price) in enumerate(lines, 1)]
    goods = sum((x.unit_price * x.quantity for x in order_lines), Decimal(0))
    return domain.accept(
        uuid.uuid4(),
        channel="web-eu",
        external_order_id="2001",
        currency="EUR",
        placed_at=NOW,
        customer={"email": "ada@example.com", "name": "Ada"},
        shipping_address={"name": "Ada", "line1": "x", "city": "Berlin", "country": "DE"},
        shipping_method="standard",
        pickup_source=None,
        options={},
        lines=order_lines,
        shipping_total=Decimal(shipping),
        tax_total=Decimal(tax),
        discount_total=Decimal(discount),
        grand_total=goods + Decimal(shipping) + Decimal(tax) - Decimal(discount),
        cause=CAUSE,
        traceparent=None,
    )


def paid(order: domain.Order) -> domain.Order:
    order.capture_payment(order.grand_total, "EUR", "pay-1", CAUSE)
    return order


def cancel(order, *lines, who="cs-agent", reason="changed my mind", cancellation_id=None, only=None, record=True):
    """Ask to cancel `lines` [(line_id, units)] of the order, the whole order when none are named."""
    request = domain.CancellationRequest(
        cancellation_id or uuid.uuid4(),
        who,
        "http",
        reason,
        tuple(domain.LineRequest(line_id, n) for line_id, n in lines) if lines else None,
        only,
    )
    return order.request_cancellation(request, CAUSE, record_refusal=record)


def cancelled_units(fact: domain.UnitsCancelled) -> list[tuple[str, int, str, uuid.UUID | None]]:
    return [(u.line_id, u.quantity, str(u.was), u.fulfillment_id) for u in fact.units]


def test_cancelling_open_units_before_payment_lowers_the_total_and_refunds_nothing():
    order = priced_order(("A", 2, "10.00"), ("B", 1, "5.00"))
    record = cancel(order, ("1", 1))
    assert units(order, "1") == {L.open: 1, L.cancelled: 1} and order.grand_total == Decimal("19.99")
    [fact] = events(order, domain.UnitsCancelled)
    assert cancelled_units(fact) == [("1", 1, "open", None)] and fact.refund is None
    assert (fact.grand_total, fact.status, fact.actor) == (Decimal("19.99"), S.pending, "cs-agent")
    assert record.status is domain.CancellationStatus.cancelled and order.refunded_total == 0
    # The channel captures what the order costs now.
    with pytest.raises(OrderRefusal, match=r"does not match the order total 19\.99"):
        order.capture_payment(Decimal("29.99"), "EUR", "p", CAUSE)
    order.capture_payment(Decimal("19.99"), "EUR", "p", CAUSE)
    assert order.status is S.paid


def test_a_whole_order_cancelled_before_payment_is_cancelled_with_nothing_to_refund():
    order = priced_order(("A", 2, "10.00"))
    cancel(order, who="channel:web-eu:ada", reason="ordered twice")
    assert order.status is S.cancelled and order.grand_total == 0
    assert order.transitions[-1].note == "cancelled: ordered twice"
    [fact] = events(order, domain.UnitsCancelled)
    assert fact.status is S.cancelled and fact.refund is None


def test_cancelling_backordered_units_after_payment_refunds_their_price_and_share_of_tax_and_discount():
    order = paid(priced_order(("A", 2, "10.00"), ("B", 1, "20.00"), tax="7.60", discount="4.00"))
    assert order.paid_amount == Decimal("48.59")
    plan(order, backordered=everything(order))
    cancel(order, ("1", 1))
    [fact] = events(order, domain.UnitsCancelled)
    assert cancelled_units(fact) == [("1", 1, "backordered", None)]
    # 10.00 + 7.60 x 10/40 - 4.00 x 10/40 = 10.00 + 1.90 - 1.00
    assert fact.refund.amount == Decimal("10.90") and fact.refund.refunded_total == Decimal("10.90")
    assert fact.refund.cause is domain.RefundCause.cancellation and fact.refund.lines == tuple(units_of(order, "1", 1))
    assert order.grand_total == fact.grand_total == Decimal("37.69")
    assert (order.tax_total, order.discount_total, order.shipping_total) == (
        Decimal("5.70"),
        Decimal("3.00"),
        Decimal("4.99"),
    )
    assert order.status is S.awaiting_fulfillment


def test_the_last_units_cancelled_refund_what_is_left_of_the_payment_shipping_included_and_cancel_the_order():
    order = paid(priced_order(("A", 2, "10.00"), ("B", 1, "20.00"), tax="7.60", discount="4.00"))
    plan(order, backordered=everything(order))
    cancel(order, ("1", 1))
    cancel(order, ("1", 1), ("2", 1), reason="no longer needed")
    last = events(order, domain.UnitsCancelled)[-1]
    assert last.refund.amount == Decimal("37.69") and order.refunded_total == order.paid_amount
    assert order.status is S.cancelled and last.status is S.cancelled and order.grand_total == 0
    assert order.transitions[-1].note == "cancelled: no longer needed"


def test_a_whole_paid_order_cancelled_at_once_refunds_exactly_what_was_paid():
    order = paid(priced_order(("A", 3, "3.33"), ("B", 1, "0.01"), tax="1.91", discount="0.07"))
    plan(order, backordered=everything(order))
    cancel(order)
    assert order.refunded_total == order.paid_amount and order.status is S.cancelled


def test_units_are_taken_least_advanced_first_and_held_ones_wait_for_their_holders_answer():
    order = paid(priced_order(("A", 4, "10.00")))
    requested_id, planned_id = plan(order, [units_of(order, "1", 1), units_of(order, "1", 1)], units_of(order, "1", 1))
    order.request_fulfillment(reserved(order, requested_id), CAUSE)
    assert units(order, "1") == {L.open: 1, L.backordered: 1, L.reserved: 1, L.requested: 1}
    record = cancel(order, ("1", 3))
    [fact] = events(order, domain.UnitsCancelled)
    assert sorted(cancelled_units(fact)) == [("1", 1, "backordered", None), ("1", 1, "open", None)]
    assert order.fulfillments[planned_id].pending == [domain.PendingCancellation(record.cancellation_id, "1", 1)]
    assert record.status is domain.CancellationStatus.pending
    assert (record.lines["1"].cancelled, record.lines["1"].pending) == (2, 1)
    assert not events(order, domain.CancelAskedOfSource)  # inventory's reservation answers for the planned one
    other = cancel(order, ("1", 1))
    [asked] = events(order, domain.CancelAskedOfSource)
    assert asked.fulfillment.fulfillment_id == requested_id and asked.lines == tuple(units_of(order, "1", 1))
    assert order.fulfillments[requested_id].pending == [domain.PendingCancellation(other.cancellation_id, "1", 1)]
    # Nothing is left to take: a fifth unit does not exist.
    with pytest.raises(domain.CancellationRefused, match=r"only 0 can still be cancelled .*2 cancelled already"):
        cancel(order, ("1", 1), record=False)


def test_reserved_units_are_cancelled_when_inventory_reserves_and_only_the_rest_is_requested():
    order = paid(priced_order(("A", 2, "10.00")))
    shipment_id = plan_everything(order)
    record = cancel(order, ("1", 1))
    assert units(order, "1") == {L.reserved: 2} and not events(order, domain.UnitsCancelled)
    order.request_fulfillment(reserved(order, shipment_id), CAUSE)
    [fact] = events(order, domain.UnitsCancelled)
    assert cancelled_units(fact) == [("1", 1, "reserved", shipment_id)] and fact.refund.amount == Decimal("10.00")
    [request] = events(order, domain.FulfillmentRequested)
    assert request.fulfillment.requestable() == units_of(order, "1", 1)
    assert (
        units(order, "1") == {L.requested: 1, L.cancelled: 1} and record.status is domain.CancellationStatus.cancelled
    )


def test_a_planned_fulfillment_whose_every_unit_was_cancelled_is_not_requested_when_reserved():
    order = paid(priced_order(("A", 2, "10.00")))
    shipment_id = plan_everything(order)
    cancel(order)
    order.request_fulfillment(reserved(order, shipment_id), CAUSE)
    assert order.fulfillments[shipment_id].status is F.cancelled and not events(order, domain.FulfillmentRequested)
    assert order.status is S.cancelled and order.refunded_total == order.paid_amount


def test_reserved_units_whose_reservation_inventory_rejects_are_cancelled_with_nothing_held_and_the_rest_reopens():
    order = paid(priced_order(("A", 3, "10.00")))
    shipment_id = plan_everything(order)
    cancel(order, ("1", 1))
    order.reject_reservation(reserved(order, shipment_id), "short", CAUSE)
    [fact] = events(order, domain.UnitsCancelled)
    assert cancelled_units(fact) == [("1", 1, "open", shipment_id)]
    assert units(order, "1") == {L.open: 2, L.cancelled: 1}
    assert not events(order, domain.ReplanAsked)  # routing re-plans inventory's rejections by itself


def test_requested_units_are_asked_of_their_source_and_cancelled_and_refunded_when_it_confirms():
    order, shipment_id = requested_everything(("A", 2, "10.00"))
    record = cancel(order, ("1", 1), reason="found it cheaper")
    [asked] = events(order, domain.CancelAskedOfSource)
    assert (asked.reason, asked.lines) == ("found it cheaper", tuple(units_of(order, "1", 1)))
    assert units(order, "1") == {L.requested: 2} and record.status is domain.CancellationStatus.pending
    order.cancel_at_source(shipment_id, "WH-EAST", {"1": 1}, "as asked", CAUSE)
    [fact] = events(order, domain.UnitsCancelled)
    assert cancelled_units(fact) == [("1", 1, "requested", shipment_id)]
    assert fact.refund.amount == Decimal("10.00") and fact.actor == "cs-agent" and fact.reason == "found it cheaper"
    assert units(order, "1") == {L.requested: 1, L.cancelled: 1} and not events(order, domain.ReplanAsked)
    fulfillment = order.fulfillments[shipment_id]
    assert fulfillment.status is F.requested and fulfillment.still_to_ship("1") == 1 and fulfillment.pending == []
    assert record.status is domain.CancellationStatus.cancelled


def test_units_a_cancellation_waited_for_that_leave_anyway_are_refused_as_already_left():
    order, shipment_id = requested_everything(("A", 2, "10.00"))
    record = cancel(order, ("1", 2), who="channel:web-eu:ada")
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 1}), CAUSE)
    [refusal] = events(order, domain.CancellationRefusal)
    assert refusal.lines == (("1", 1),) and refusal.requested_by == "channel:web-eu:ada"
    assert "already left WH-EAST" in refusal.reason
    assert (record.lines["1"].pending, record.lines["1"].refused) == (1, 1)
    order.cancel_at_source(shipment_id, "WH-EAST", {"1": 1}, None, CAUSE)
    assert record.status is domain.CancellationStatus.partly_cancelled
    assert order.fulfillments[shipment_id].status is F.shipped and order.status is S.fulfilled
    assert order.refunded_total == Decimal("10.00")


def test_a_parcel_of_units_nobody_waits_to_cancel_leaves_the_pending_ones_pending():
    order, shipment_id = requested_everything(("A", 3, "10.00"))
    record = cancel(order, ("1", 1))
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 2}), CAUSE)
    assert not events(order, domain.CancellationRefusal) and record.lines["1"].pending == 1


def test_a_source_that_cancels_units_nobody_asked_to_cancel_opens_them_for_a_re_plan():
    order, shipment_id = requested_everything(("A", 2, "10.00"), ("B", 1, "5.00"))
    order.cancel_at_source(shipment_id, "WH-EAST", {"1": 2, "2": 1}, "shelf empty", CAUSE)
    [replan] = events(order, domain.ReplanAsked)
    assert replan.fulfillment.fulfillment_id == shipment_id and replan.reason == "WH-EAST: shelf empty"
    assert replan.lines == (*units_of(order, "1", 2), *units_of(order, "2", 1))
    assert units(order, "1") == {L.open: 2} and order.fulfillments[shipment_id].status is F.cancelled
    assert not events(order, domain.UnitsCancelled) and order.refunded_total == 0
    assert order.status is S.awaiting_fulfillment
    # The re-plan places the open units anew.
    [again] = plan(order, [units_of(order, "1", 2) + units_of(order, "2", 1)], attempt=2)
    assert order.fulfillments[again].status is F.planned and units(order, "1") == {L.reserved: 2}


def test_the_sources_reason_code_is_shown_on_the_timeline_with_the_re_plan():
    order, shipment_id = requested_everything(("A", 3, "10.00"))
    order.cancel_at_source(shipment_id, "WH-EAST", {"1": 1}, "shelf empty", CAUSE, reason_code="out_of_stock")
    order.cancel_at_source(shipment_id, "WH-EAST", {"1": 1}, None, CAUSE)
    replans = [e for e in order.timeline if e.kind is domain.EntryKind.replan_requested]
    assert [e.details.get("reason_code") for e in replans] == ["out_of_stock", None]
    assert replans[0].note.endswith("WH-EAST: shelf empty [out_of_stock]")


def test_a_source_cancellation_answers_pending_units_first_and_re_plans_the_rest():
    order, shipment_id = requested_everything(("A", 3, "10.00"))
    cancel(order, ("1", 1))
    order.cancel_at_source(shipment_id, "WH-EAST", {"1": 2}, "damaged", CAUSE)
    [fact] = events(order, domain.UnitsCancelled)
    [replan] = events(order, domain.ReplanAsked)
    assert cancelled_units(fact) == [("1", 1, "requested", shipment_id)] and replan.lines == tuple(
        units_of(order, "1", 1)
    )
    assert units(order, "1") == {L.requested: 1, L.open: 1, L.cancelled: 1}


def test_a_source_rejection_cancels_what_was_pending_and_re_plans_the_rest():
    order, shipment_id = requested_everything(("A", 3, "10.00"))
    cancel(order, ("1", 2))
    order.reject_fulfillment(shipment_id, "WH-EAST", "no staff", CAUSE)
    [fact] = events(order, domain.UnitsCancelled)
    [replan] = events(order, domain.ReplanAsked)
    assert cancelled_units(fact) == [("1", 2, "requested", shipment_id)] and fact.refund.amount == Decimal("20.00")
    assert replan.lines == tuple(units_of(order, "1", 1)) and replan.reason == "no staff"
    assert units(order, "1") == {L.open: 1, L.cancelled: 2}


def test_a_fulfillment_from_a_backorder_allocation_that_its_source_rejects_is_planned_again():
    order, _ = mixed_order()
    allocated = allocation(units_of(order, "2", 3))
    order.allocate_backorder(allocated, CAUSE)
    order.reject_fulfillment(allocated.fulfillment_id, "WH-WEST", "closed", CAUSE)
    [replan] = events(order, domain.ReplanAsked)
    assert replan.fulfillment.fulfillment_id == allocated.fulfillment_id and replan.fulfillment.plan_id is None
    assert replan.lines == tuple(units_of(order, "2", 3)) and units(order, "2") == {L.open: 3}


def test_a_source_cancelling_more_than_is_still_to_ship_or_a_line_not_in_it_is_refused():
    order, shipment_id = requested_everything(("A", 2, "10.00"), ("B", 1, "5.00"))
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 1}), CAUSE)
    unchanged_by(
        order,
        lambda: order.cancel_at_source(shipment_id, "WH-EAST", {"1": 2}, None, CAUSE),
        "cancels 2 units of line 1, but only 1 of it are still to ship",
    )
    unchanged_by(order, lambda: order.cancel_at_source(shipment_id, "WH-WEST", {"1": 1}, None, CAUSE), "not WH-WEST")
    unchanged_by(
        order, lambda: order.cancel_at_source(uuid.uuid4(), "WH-EAST", {"1": 1}, None, CAUSE), "has no fulfillment"
    )
    order.cancel_at_source(shipment_id, "WH-EAST", {"1": 1, "2": 1}, None, CAUSE)
    unchanged_by(
        order, lambda: order.cancel_at_source(shipment_id, "WH-EAST", {"1": 1}, None, CAUSE), "is shipped; nothing"
    )


def test_the_rest_of_a_partially_fulfilled_order_cancelled_makes_it_fulfilled():
    order, shipment_id = requested_everything(("A", 2, "10.00"))
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 1}), CAUSE)
    assert order.status is S.partially_fulfilled
    cancel(order, ("1", 1))
    order.cancel_at_source(shipment_id, "WH-EAST", {"1": 1}, None, CAUSE)
    assert order.status is S.fulfilled and order.refunded_total == Decimal("10.00")  # shipping stays: one unit left


def test_asking_to_cancel_shipped_units_refuses_the_whole_request_and_changes_nothing():
    order, shipment_id = requested_everything(("A", 2, "10.00"), ("B", 1, "5.00"))
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 2}), CAUSE)
    unchanged_by(
        order,
        lambda: cancel(order, ("1", 1), ("2", 1), record=False),
        r"line 1 \(A\): 1 units asked, only 0 can still be cancelled \(2 already shipped\)",
    )
    record = cancel(order, ("1", 1), ("2", 1), who="channel:web-eu:ada")
    assert record.status is domain.CancellationStatus.refused and units(order, "2") == {L.requested: 1}
    [refusal] = events(order, domain.CancellationRefusal)
    assert refusal.lines == (("1", 1), ("2", 1)) and "already shipped" in refusal.reason
    assert not events(order, domain.UnitsCancelled) and not events(order, domain.CancelAskedOfSource)


def test_a_whole_order_cancellation_after_a_parcel_takes_the_rest_and_refuses_what_left():
    order, shipment_id = requested_everything(("A", 2, "10.00"), ("B", 1, "5.00"))
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 2}), CAUSE)
    record = cancel(order, who="channel:web-eu:ada")
    [refusal] = events(order, domain.CancellationRefusal)
    assert refusal.lines == (("1", 2),) and refusal.reason == "already shipped: it cannot be cancelled"
    [asked] = events(order, domain.CancelAskedOfSource)
    assert asked.lines == tuple(units_of(order, "2", 1)) and record.status is domain.CancellationStatus.pending


def test_the_same_cancellation_again_applies_once_and_its_key_with_another_request_is_refused():
    order = paid(priced_order(("A", 3, "10.00")))
    key = uuid.uuid4()
    first = cancel(order, ("1", 1), cancellation_id=key)
    seen = len(order.events)
    assert cancel(order, ("1", 1), cancellation_id=key) is first and len(order.events) == seen
    assert units(order, "1") == {L.open: 2, L.cancelled: 1}
    unchanged_by(order, lambda: cancel(order, ("1", 2), cancellation_id=key), "was asked before with other lines")


def test_a_duplicate_of_an_applied_cancellation_under_a_new_id_is_refused_with_the_reason():
    order = paid(priced_order(("A", 2, "10.00")))
    cancel(order, ("1", 2))
    with pytest.raises(domain.CancellationRefused, match=r"2 units asked, only 0 .*2 cancelled already"):
        cancel(order, ("1", 2), record=False)
    with pytest.raises(domain.CancellationRefused, match="is cancelled already"):
        cancel(order, record=False)


def test_a_cancellation_naming_a_line_the_order_does_not_have_is_refused_as_unknown():
    order = paid(priced_order(("A", 2, "10.00")))
    unchanged_by(order, lambda: cancel(order, ("9", 1)), "has no line 9")
    with pytest.raises(domain.UnknownLine):
        cancel(order, ("1", 1), ("9", 1))


def test_a_customer_link_cancels_only_what_waits_for_stock():
    order, _ = mixed_order()
    order.allocate_backorder(allocation(units_of(order, "2", 1)), CAUSE)
    request = domain.CancellationRequest(
        uuid.uuid4(), "customer:c-1", "link", "no longer wanted", (domain.LineRequest("2"),), L.backordered
    )
    record = order.request_cancellation(request, CAUSE)
    [fact] = events(order, domain.UnitsCancelled)
    assert cancelled_units(fact) == [("2", 2, "backordered", None)] and fact.actor == "customer:c-1"
    assert (
        units(order, "2") == {L.requested: 1, L.cancelled: 2} and record.status is domain.CancellationStatus.cancelled
    )
    assert not events(order, domain.CancelAskedOfSource)
    again = domain.CancellationRequest(
        uuid.uuid4(), "customer:c-1", "link", "no longer wanted", (domain.LineRequest("2"),), L.backordered
    )
    refused = order.request_cancellation(again, CAUSE)
    assert refused.status is domain.CancellationStatus.refused and "nothing of these items waits" in refused.refusal


def test_a_payment_failure_cancels_the_order_and_its_status_change_names_the_failed_payment():
    order = priced_order(("A", 2, "10.00"))
    failed = replace(CAUSE, type="oms.channel.payment_failed.v1")
    order.fail_payment("card declined", failed)
    [change] = order.transitions[-1:]
    assert (change.to_status, change.cause_type, change.note) == (
        S.cancelled,
        "oms.channel.payment_failed.v1",
        "payment failed: card declined",
    )
    assert order.grand_total == 0 and not events(order, domain.UnitsCancelled)


def test_the_timeline_keeps_each_step_of_a_cancellation_with_who_asked():
    order, shipment_id = requested_everything(("A", 2, "10.00"))
    cancel(order, ("1", 1), who="channel:web-eu:ada", reason="gift no longer needed")
    order.cancel_at_source(shipment_id, "WH-EAST", {"1": 1}, None, replace(CAUSE, actor="source:WH-EAST"))
    after_paid = [(e.kind, e.actor) for e in order.timeline if e.kind is not domain.EntryKind.status]
    assert after_paid == [
        (domain.EntryKind.cancellation_requested, "channel:web-eu:ada"),
        (domain.EntryKind.cancellation_pending, "channel:web-eu:ada"),
        (domain.EntryKind.units_cancelled, "channel:web-eu:ada"),
        (domain.EntryKind.refund, "channel:web-eu:ada"),
    ]
    assert order.timeline[-1].cause_event_id == CAUSE.event_id


# -- after the sale: plans that cancel, plans overtaken by cancellations --------------------------------------------


def test_unfulfillable_lines_in_a_plan_are_cancelled_and_refunded_with_the_plans_reason():
    order = paid(priced_order(("A", 1, "10.00"), ("B", 2, "5.00")))
    plan_id = uuid.uuid4()
    order.apply_plan(
        plan_id, [], units_of(order, "1", 1), units_of(order, "2", 2), CAUSE, 1, {"2": "no source ships to IS"}
    )
    [fact] = events(order, domain.UnitsCancelled)
    assert cancelled_units(fact) == [("2", 2, "open", None)] and fact.reason == "no source ships to IS"
    assert fact.refund.amount == Decimal("10.00") and order.status is S.awaiting_fulfillment


def test_a_plan_that_can_fulfil_nothing_cancels_the_order_and_refunds_everything():
    order = paid(priced_order(("A", 1, "10.00"), ("B", 2, "5.00")))
    order.apply_plan(uuid.uuid4(), [], [], everything(order), CAUSE, 1, {"1": "x", "2": "y"})
    [fact] = events(order, domain.UnitsCancelled)
    assert fact.reason == "A: x; B: y" and fact.status is S.cancelled
    assert order.status is S.cancelled and order.refunded_total == order.paid_amount == Decimal("24.99")


def test_a_plan_placing_units_cancelled_before_it_arrived_gives_them_back_with_the_reservation():
    order = paid(priced_order(("A", 3, "10.00")))
    cancel(order, ("1", 1))
    [shipment_id] = plan(order, [units_of(order, "1", 3)])
    fulfillment = order.fulfillments[shipment_id]
    assert units(order, "1") == {L.reserved: 2, L.cancelled: 1} and fulfillment.to_release == {"1": 1}
    order.request_fulfillment(reserved(order, shipment_id), CAUSE)
    released = events(order, domain.UnitsCancelled)[-1]
    assert released.released and released.refund is None
    assert cancelled_units(released) == [("1", 1, "reserved", shipment_id)]
    assert events(order, domain.FulfillmentRequested)[-1].fulfillment.requestable() == units_of(order, "1", 2)
    assert order.refunded_total == Decimal("10.00")


def test_a_plan_for_an_order_cancelled_before_it_arrived_gives_everything_back_and_requests_nothing():
    order = paid(priced_order(("A", 2, "10.00"), ("B", 1, "5.00")))
    cancel(order)
    [shipment_id] = plan(order, [units_of(order, "1", 2)], units_of(order, "2", 1))
    gone_to_queue = events(order, domain.UnitsCancelled)[-1]
    assert gone_to_queue.released and cancelled_units(gone_to_queue) == [("2", 1, "backordered", None)]
    order.request_fulfillment(reserved(order, shipment_id), CAUSE)
    assert order.fulfillments[shipment_id].status is F.cancelled and order.status is S.cancelled
    assert cancelled_units(events(order, domain.UnitsCancelled)[-1]) == [("1", 2, "reserved", shipment_id)]
    assert not events(order, domain.FulfillmentRequested) and order.refunded_total == order.paid_amount


def test_a_reservation_that_overtakes_its_plan_after_a_cancellation_gives_back_the_cancelled_units_at_once():
    order = paid(priced_order(("A", 2, "10.00")))
    cancel(order, ("1", 1))
    shipment_id = uuid.uuid4()
    order.request_fulfillment(
        domain.Reservation(shipment_id, "WH-EAST", units_of(order, "1", 2), uuid.uuid4(), date(2026, 11, 26)), CAUSE
    )
    released = events(order, domain.UnitsCancelled)[-1]
    assert released.released and cancelled_units(released) == [("1", 1, "reserved", shipment_id)]
    assert units(order, "1") == {L.requested: 1, L.cancelled: 1}


def test_a_re_plan_covering_only_some_open_units_places_those_and_leaves_the_rest_open():
    order = paid(priced_order(("A", 2, "10.00"), ("B", 1, "5.00")))
    [first] = plan(order, [everything(order)])
    order.request_fulfillment(reserved(order, first), CAUSE)
    order.cancel_at_source(first, "WH-EAST", {"1": 2, "2": 1}, "flood", CAUSE)
    plan(order, [units_of(order, "2", 1)], attempt=2)
    assert units(order, "2") == {L.reserved: 1} and units(order, "1") == {L.open: 2}
    assert order.fulfillments[first].status is F.cancelled


# -- after the sale: returns ------------------------------------------------------------------------------------


def shipped_order(*lines, tax="0", discount="0") -> tuple[domain.Order, uuid.UUID]:
    order = paid(priced_order(*lines, tax=tax, discount=discount))
    shipment_id = plan_everything(order)
    order.request_fulfillment(reserved(order, shipment_id), CAUSE)
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1"), CAUSE)
    return order, shipment_id


def back(line_id: str, n: int, condition: str = "resellable") -> list[domain.ReturnedLine]:
    return [domain.ReturnedLine(line_id, n, condition)]


def test_a_return_refunds_price_and_share_of_tax_and_discount_but_not_shipping():
    order, _ = shipped_order(("A", 2, "10.00"), ("B", 1, "20.00"), tax="7.60", discount="4.00")
    ret = order.receive_return(uuid.uuid4(), "STORE-1", back("1", 1, "damaged"), "too small", CAUSE)
    [fact] = events(order, domain.Returned)
    assert (
        fact.refund.amount == ret.refund_amount == Decimal("10.90") and fact.refund.cause is domain.RefundCause.return_
    )
    assert ret.lines == ((domain.ShipmentLine("1", "A", 1), "damaged"),) and ret.source_code == "STORE-1"
    assert units(order, "1") == {L.shipped: 1, L.returned: 1} and order.status is S.fulfilled
    assert order.grand_total == Decimal("48.59")  # a return refunds, it does not change what the order cost


def test_the_last_return_refunds_what_is_left_and_the_order_becomes_refunded():
    order, shipment_id = shipped_order(("A", 2, "10.00"))
    order.deliver_fulfillment(shipment_id, "WH-EAST", NOW, CAUSE)
    order.receive_return(uuid.uuid4(), "WH-EAST", back("1", 1), "x", CAUSE)
    assert order.refunded_total == Decimal("10.00") and order.status is S.delivered
    order.receive_return(uuid.uuid4(), "WH-EAST", back("1", 1), "x", CAUSE)
    assert order.refunded_total == order.paid_amount == Decimal("24.99") and order.status is S.refunded
    assert order.transitions[-1].from_status is S.delivered


def test_a_return_of_more_than_shipped_and_not_returned_is_refused_and_changes_nothing():
    order, _ = shipped_order(("A", 2, "10.00"))
    order.receive_return(uuid.uuid4(), "WH-EAST", back("1", 2), "x", CAUSE)
    unchanged_by(
        order,
        lambda: order.receive_return(uuid.uuid4(), "WH-EAST", back("1", 1), "again", CAUSE),
        r"return of 1 units of line 1 \(A\), but only 0 shipped and not returned \(2 returned already\)",
    )
    unchanged_by(order, lambda: order.receive_return(uuid.uuid4(), "WH-EAST", back("7", 1), "x", CAUSE), "no line 7")
    unsent = paid(priced_order(("A", 1, "10.00")))
    unchanged_by(unsent, lambda: unsent.receive_return(uuid.uuid4(), "WH-EAST", back("1", 1), "x", CAUSE), "only 0")


def test_a_return_before_its_parcel_is_reported_delivered_keeps_the_units_returned():
    order, shipment_id = shipped_order(("A", 2, "10.00"))
    order.receive_return(uuid.uuid4(), "WH-EAST", back("1", 1), "x", CAUSE)
    order.deliver_fulfillment(shipment_id, "WH-EAST", NOW, CAUSE)
    assert units(order, "1") == {L.delivered: 1, L.returned: 1} and order.status is S.delivered


def test_an_order_with_its_shipped_units_returned_and_the_rest_cancelled_is_refunded():
    order, shipment_id = requested_everything(("A", 2, "10.00"))
    order.ship_parcel(shipment_id, "WH-EAST", parcel("T1", {"1": 1}), CAUSE)
    order.receive_return(uuid.uuid4(), "STORE-1", back("1", 1), "x", CAUSE)
    assert order.status is S.partially_fulfilled
    cancel(order, ("1", 1))
    order.cancel_at_source(shipment_id, "WH-EAST", {"1": 1}, None, CAUSE)
    assert order.status is S.refunded and order.refunded_total == order.paid_amount
    assert [t.to_status for t in order.transitions[-2:]] == [S.fulfilled, S.refunded]


def test_a_rejection_that_overtakes_the_plan_of_an_order_cancelled_meanwhile_changes_nothing():
    order = paid(priced_order(("A", 2, "10.00")))
    cancel(order)
    rejected = domain.Reservation(uuid.uuid4(), "WH-EAST", units_of(order, "1", 2), uuid.uuid4())
    order.reject_reservation(rejected, "short", CAUSE)
    assert order.fulfillments[rejected.fulfillment_id].status is F.rejected and order.status is S.cancelled
    order.apply_plan(rejected.plan_id, [planned(rejected.fulfillment_id, units_of(order, "1", 2))], [], [], CAUSE)
    assert units(order, "1") == {L.cancelled: 2} and order.refunded_total == order.paid_amount
