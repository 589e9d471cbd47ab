import itertools
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oms_contracts.order import OrderStatus as S
from oms_order import domain
from oms_order.domain import TRANSITIONS, Cause, FulfillmentStatus, InvalidTransition, LineState, OrderRefusal

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


def plan_everything(order: domain.Order, source: str = "WH-EAST") -> uuid.UUID:
    shipment_id = uuid.uuid4()
    order.apply_plan(
        uuid.uuid4(),
        [
            domain.PlannedShipment(
                shipment_id,
                source,
                [domain.ShipmentLine(x.line_id, x.sku, x.quantity) for x in order.lines.values()],
                date(2026, 11, 26),
                date(2026, 11, 29),
                "test",
            )
        ],
        [],
        [],
        CAUSE,
    )
    return shipment_id


def reserved(order: domain.Order, shipment_id: uuid.UUID) -> domain.Reservation:
    """Inventory's reservation of a planned shipment, as its event describes it."""
    planned = order.fulfillments[shipment_id]
    return domain.Reservation(shipment_id, planned.source_code, list(planned.lines), uuid.uuid4(), date(2026, 11, 26))


def everything(order: domain.Order) -> list[domain.ShipmentLine]:
    return [domain.ShipmentLine(x.line_id, x.sku, x.quantity) for x in order.lines.values()]


def shipment(tracking: str = "T1") -> domain.Shipment:
    return domain.Shipment("DHL", None, tracking, None, NOW)


ALL = list(S)
EDGES = [(a, b) for a in ALL for b in ALL]


@pytest.mark.parametrize(("from_status", "to_status"), EDGES)
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


def test_a_new_order_is_pending_with_its_creation_in_the_timeline():
    order = new_order()
    assert order.status is S.pending
    [created] = order.transitions
    assert (created.from_status, created.to_status) == (None, S.pending)


def test_a_full_capture_moves_pending_through_payment_processing_to_paid():
    order = new_order()
    assert order.capture_payment(order.grand_total, "EUR", "pay-1", CAUSE)
    assert [(t.from_status, t.to_status) for t in order.transitions[1:]] == [
        (S.pending, S.payment_processing),
        (S.payment_processing, S.paid),
    ]
    assert order.paid_amount == order.grand_total


def test_a_second_capture_changes_nothing():
    order = paid_order()
    before = list(order.transitions)
    assert not order.capture_payment(order.grand_total, "EUR", "pay-1", CAUSE)
    assert order.transitions == before


@pytest.mark.parametrize(("amount", "currency"), [("1.00", "EUR"), (None, "USD")])
def test_a_capture_that_does_not_match_the_total_is_refused_and_changes_nothing(amount, currency):
    order = new_order()
    with pytest.raises(OrderRefusal, match="does not match the order total"):
        order.capture_payment(Decimal(amount) if amount else order.grand_total, currency, "pay-1", CAUSE)
    assert order.status is S.pending and len(order.transitions) == 1


def test_a_payment_failure_cancels_an_unpaid_order_and_its_lines():
    order = new_order()
    order.fail_payment("card declined", CAUSE)
    assert order.status is S.cancelled
    assert all(line.state is LineState.cancelled for line in order.lines.values())
    assert "card declined" in order.transitions[-1].note


def test_a_payment_failure_after_payment_is_refused():
    order = paid_order()
    with pytest.raises(OrderRefusal):
        order.fail_payment("late", CAUSE)


def test_reserving_a_planned_shipment_requests_it_and_the_order_awaits_fulfillment():
    order = paid_order()
    shipment_id = plan_everything(order)
    assert order.fulfillments[shipment_id].status is FulfillmentStatus.planned
    requested = order.request_fulfillment(reserved(order, shipment_id), CAUSE)
    assert requested is not None and requested.status is FulfillmentStatus.requested
    assert order.status is S.awaiting_fulfillment
    assert all(line.state is LineState.requested for line in order.lines.values())
    assert order.request_fulfillment(reserved(order, shipment_id), CAUSE) is None  # a redelivered reservation asks once


def test_a_reservation_that_overtakes_its_plan_requests_the_fulfillment_and_the_late_plan_adds_its_reason():
    order = paid_order()
    shipment_id = uuid.uuid4()
    reservation = domain.Reservation(shipment_id, "WH-EAST", everything(order), uuid.uuid4(), date(2026, 11, 26))
    requested = order.request_fulfillment(reservation, CAUSE)
    assert requested is not None and requested.status is FulfillmentStatus.requested
    assert requested.ship_by == date(2026, 11, 26) and order.status is S.awaiting_fulfillment
    order.apply_plan(
        reservation.plan_id,
        [
            domain.PlannedShipment(
                shipment_id, "WH-EAST", everything(order), date(2026, 11, 26), date(2026, 11, 29), "why"
            )
        ],
        [],
        [],
        CAUSE,
    )
    assert order.fulfillments[shipment_id].status is FulfillmentStatus.requested
    assert order.fulfillments[shipment_id].reason == "why"
    assert order.fulfillments[shipment_id].estimated_delivery == date(2026, 11, 29)


def test_a_rejection_that_overtakes_its_plan_leaves_the_fulfillment_rejected_when_the_plan_arrives():
    order = paid_order()
    shipment_id = uuid.uuid4()
    reservation = domain.Reservation(shipment_id, "WH-EAST", everything(order), uuid.uuid4())
    order.reject_reservation(reservation, "short", CAUSE)
    order.apply_plan(
        reservation.plan_id,
        [
            domain.PlannedShipment(
                shipment_id, "WH-EAST", everything(order), date(2026, 11, 26), date(2026, 11, 29), "x"
            )
        ],
        [],
        [],
        CAUSE,
    )
    assert order.fulfillments[shipment_id].status is FulfillmentStatus.rejected
    assert order.status is S.paid


def test_a_reservation_for_an_unpaid_order_is_refused():
    order = new_order()
    with pytest.raises(OrderRefusal, match="takes no fulfillment"):
        order.request_fulfillment(domain.Reservation(uuid.uuid4(), "WH", everything(order), uuid.uuid4()), CAUSE)


def test_shipping_every_line_fulfils_the_order_and_delivery_delivers_it():
    order = paid_order()
    shipment_id = plan_everything(order)
    order.request_fulfillment(reserved(order, shipment_id), CAUSE)
    order.ship_fulfillment(shipment_id, shipment(), CAUSE)
    assert order.status is S.fulfilled
    assert order.fulfillments[shipment_id].tracking_number == "T1"
    order.deliver_fulfillment(shipment_id, NOW, CAUSE)
    assert order.status is S.delivered
    assert [t.to_status for t in order.transitions] == [
        S.pending,
        S.payment_processing,
        S.paid,
        S.awaiting_fulfillment,
        S.fulfilled,
        S.delivered,
    ]


def test_shipping_one_of_two_fulfillments_leaves_the_order_partially_fulfilled():
    order = paid_order(("A", 1, "5.00"), ("B", 1, "6.00"))
    first, second = uuid.uuid4(), uuid.uuid4()
    lines = list(order.lines.values())
    order.apply_plan(
        uuid.uuid4(),
        [
            domain.PlannedShipment(first, "WH-1", [domain.ShipmentLine("1", "A", 1)], date.today(), date.today(), "a"),
            domain.PlannedShipment(second, "WH-2", [domain.ShipmentLine("2", "B", 1)], date.today(), date.today(), "b"),
        ],
        [],
        [],
        CAUSE,
    )
    order.request_fulfillment(reserved(order, first), CAUSE)
    order.request_fulfillment(reserved(order, second), CAUSE)
    order.ship_fulfillment(first, shipment("T1"), CAUSE)
    assert order.status is S.partially_fulfilled
    assert [line.state for line in lines] == [LineState.shipped, LineState.requested]
    order.ship_fulfillment(second, shipment("T2"), CAUSE)
    assert order.status is S.fulfilled


def test_a_rejected_fulfillment_reopens_its_lines_for_the_re_plan():
    order = paid_order()
    shipment_id = plan_everything(order)
    order.reject_fulfillment(shipment_id, "short", CAUSE)
    assert order.fulfillments[shipment_id].status is FulfillmentStatus.rejected
    assert all(line.state is LineState.open for line in order.lines.values())
    assert order.status is S.paid
    with pytest.raises(OrderRefusal):
        order.ship_fulfillment(shipment_id, shipment(), CAUSE)


def test_a_plan_of_only_backorders_moves_the_order_to_awaiting_fulfillment():
    order = paid_order()
    line = next(iter(order.lines.values()))
    order.apply_plan(uuid.uuid4(), [], [domain.ShipmentLine(line.line_id, line.sku, line.quantity)], [], CAUSE)
    assert line.state is LineState.backordered
    assert order.status is S.awaiting_fulfillment


def test_a_plan_where_nothing_can_be_fulfilled_cancels_the_order():
    order = paid_order()
    line = next(iter(order.lines.values()))
    order.apply_plan(uuid.uuid4(), [], [], [domain.ShipmentLine(line.line_id, line.sku, line.quantity)], CAUSE)
    assert order.status is S.cancelled and line.state is LineState.cancelled


def test_a_plan_naming_a_line_the_order_does_not_have_is_refused():
    order = paid_order()
    with pytest.raises(OrderRefusal, match="no line 9"):
        order.apply_plan(uuid.uuid4(), [], [domain.ShipmentLine("9", "SKU-1", 1)], [], CAUSE)


def test_a_plan_for_an_unpaid_order_is_refused():
    with pytest.raises(OrderRefusal, match="takes no fulfillment"):
        new_order().apply_plan(uuid.uuid4(), [], [], [], CAUSE)


# Random walks through everything a message can ask of an order.
def _step(order: domain.Order, action: str, shipments: list[uuid.UUID]) -> None:
    if action == "authorize":
        order.authorize_payment(order.grand_total, "EUR", CAUSE)
    elif action == "capture":
        order.capture_payment(order.grand_total, "EUR", "p", CAUSE)
    elif action == "fail":
        order.fail_payment("x", CAUSE)
    elif action == "cancel":
        order.cancel_before_payment("x", CAUSE)
    elif action == "plan":
        shipments.append(plan_everything(order))
    elif shipments:
        target = shipments[-1]
        {
            "reserve": lambda: order.request_fulfillment(reserved(order, target), CAUSE),
            "reject": lambda: order.reject_fulfillment(target, "x", CAUSE),
            "accept": lambda: order.accept_fulfillment(target),
            "ship": lambda: order.ship_fulfillment(target, shipment(), CAUSE),
            "deliver": lambda: order.deliver_fulfillment(target, NOW, CAUSE),
        }[action]()


ACTIONS = ["authorize", "capture", "fail", "cancel", "plan", "reserve", "reject", "accept", "ship", "deliver"]


@settings(max_examples=300)
@given(st.lists(st.sampled_from(ACTIONS), max_size=25))
def test_any_sequence_of_messages_leaves_a_consistent_order_and_timeline(actions):
    order = new_order(("A", 1, "5.00"), ("B", 2, "6.00"))
    shipments: list[uuid.UUID] = []
    for action in actions:
        status, transitions = order.status, len(order.transitions)
        try:
            _step(order, action, shipments)
        except OrderRefusal:
            # A refused message changes neither the status nor the timeline.
            assert order.status is status and len(order.transitions) == transitions
    timeline = order.transitions
    assert timeline[0].from_status is None
    for before, after in itertools.pairwise(timeline):
        assert after.from_status is before.to_status
        assert after.to_status in TRANSITIONS[before.to_status]
    assert timeline[-1].to_status is order.status
    states = {line.state for line in order.lines.values()}
    if order.status in (S.fulfilled, S.delivered):
        assert states <= {LineState.shipped, LineState.delivered, LineState.cancelled}
    if order.status is S.delivered:
        assert all(
            f.status in (FulfillmentStatus.delivered, FulfillmentStatus.rejected) for f in order.fulfillments.values()
        )
