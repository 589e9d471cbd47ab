"""The order service's consumers on a real PostgreSQL: each batch in one transaction, effects in the outbox."""

import json
import uuid
from datetime import date, timedelta
from decimal import Decimal

import pytest

from oms_contracts import inventory, routing
from oms_contracts.common import Line
from oms_contracts.order import OrderStatus
from oms_contracts.topics import CHANNEL_ORDERS, FULFILLMENT_UPDATES, INVENTORY_ALLOCATIONS, ROUTING_PLANS
from oms_contracts.types import utc_now
from oms_order import store
from oms_runtime.testing import deliver
from oms_tools import samples


def types(emitted):
    return [e.headers.get("ce-type", e.topic) for e in emitted]


async def timeline(service, order_id):
    async with service.database.connect() as conn:
        return [(row["from_status"], row["to_status"]) for row in await store.timeline(conn, order_id)]


def plan_for(submitted, source="WH-EAST", shipment_id=None):
    d = submitted.data
    return routing.FulfillmentPlanned(
        source="/oms/routing",
        subject=str(d.order_id),
        data=routing.FulfillmentPlannedData(
            order_id=d.order_id,
            plan_id=uuid.uuid4(),
            attempt=1,
            shipments=[
                routing.PlannedShipment(
                    shipment_id=shipment_id or uuid.uuid4(),
                    source_code=source,
                    source_type="warehouse",
                    lines=[Line(line_id=x.line_id, sku=x.sku, quantity=x.quantity) for x in d.lines],
                    estimated_ship_date=date.today() + timedelta(days=1),
                    estimated_delivery_date=date.today() + timedelta(days=3),
                    reason=f"{source}: own warehouse with all items",
                )
            ],
            planned_at=utc_now(),
        ),
    )


def reserved(plan):
    s = plan.data.shipments[0]
    return inventory.ShipmentReserved(
        source="/oms/inventory",
        subject=str(plan.data.order_id),
        data=inventory.ShipmentReservedData(
            order_id=plan.data.order_id,
            shipment_id=s.shipment_id,
            plan_id=plan.data.plan_id,
            source_code=s.source_code,
            lines=s.lines,
            ship_by=s.estimated_ship_date,
        ),
    )


async def test_the_walking_skeleton_from_submission_to_fulfilled(order_service):
    submitted = samples.order_submitted("skel-1", [("SKU-1", 2, "19.99")])
    order_id = submitted.data.order_id

    emitted = await deliver(order_service, CHANNEL_ORDERS, submitted)
    assert types(emitted) == ["oms.order.status_changed.v1", "oms.order.accepted.v1"]
    assert all(e.key == str(order_id) for e in emitted)

    emitted = await deliver(order_service, CHANNEL_ORDERS, samples.payment_captured(submitted))
    assert types(emitted) == ["oms.order.status_changed.v1", "oms.order.status_changed.v1", "oms.order.paid.v1"]
    paid = emitted[-1].event.data
    assert [(x.sku, x.quantity) for x in paid.lines] == [("SKU-1", 2)] and paid.shipping_address.country == "DE"

    plan = plan_for(submitted)
    assert await deliver(order_service, ROUTING_PLANS, plan) == []

    emitted = await deliver(order_service, INVENTORY_ALLOCATIONS, reserved(plan))
    assert types(emitted) == ["oms.order.status_changed.v1", "oms.fulfillment.requested.v1"]
    request = emitted[1]
    assert request.topic == "oms.fulfillment.requests.WH-EAST.v1"
    assert request.event.data.recipient.name == "Ada Lovelace"

    emitted = await deliver(order_service, FULFILLMENT_UPDATES, samples.shipped(request.event))
    assert types(emitted) == ["oms.order.status_changed.v1"]
    assert emitted[0].event.data.to_status is OrderStatus.fulfilled

    assert await timeline(order_service, order_id) == [
        (None, "pending"),
        ("pending", "payment_processing"),
        ("payment_processing", "paid"),
        ("paid", "awaiting_fulfillment"),
        ("awaiting_fulfillment", "fulfilled"),
    ]


async def test_every_event_about_an_order_continues_the_trace_of_its_submission(order_service):
    submitted = samples.order_submitted("trace-1", [("SKU-1", 1, "9.99")])
    accepted = await deliver(order_service, CHANNEL_ORDERS, submitted)
    paid = await deliver(order_service, CHANNEL_ORDERS, samples.payment_captured(submitted))
    trace_ids = {e.headers["traceparent"].split("-")[1] for e in accepted + paid}
    assert len(trace_ids) == 1


async def test_the_same_submission_twice_makes_one_order(order_service):
    submitted = samples.order_submitted("dup-1", [("SKU-1", 1, "9.99")])
    first = await deliver(order_service, CHANNEL_ORDERS, submitted, submitted)
    again = await deliver(order_service, CHANNEL_ORDERS, submitted)
    resent = await deliver(order_service, CHANNEL_ORDERS, samples.order_submitted("dup-1", [("SKU-1", 1, "9.99")]))
    assert types(first) == ["oms.order.status_changed.v1", "oms.order.accepted.v1"]
    assert again == [] and resent == []
    assert await timeline(order_service, submitted.data.order_id) == [(None, "pending")]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["lines"][0].update(quantity=-1), "data.lines.0.quantity"),
        (lambda d: d.update(currency="EUX"), "data.currency"),
        (lambda d: d.update(grand_total="1.00"), "data"),
        (lambda d: d.update(lines=[]), "data.lines"),
        (lambda d: d["shipping_address"].update(country="XX"), "data.shipping_address.country"),
        (lambda d: d.update(grand_total=44.97), "data.grand_total"),
    ],
)
async def test_an_invalid_submission_is_rejected_with_its_field_errors_and_makes_no_order(order_service, mutate, field):
    submitted = samples.order_submitted(f"bad-{uuid.uuid4().hex[:6]}", [("SKU-1", 2, "19.99")])
    document = submitted.model_dump(mode="json")
    mutate(document["data"])
    emitted = await deliver(order_service, CHANNEL_ORDERS, json.dumps(document).encode())
    assert types(emitted) == ["oms.order.rejected.v1"]
    rejection = emitted[0].event.data
    assert rejection.order_id == submitted.data.order_id
    assert rejection.rejected_event_id == submitted.id
    assert field in [e.field for e in rejection.errors], rejection.errors
    async with order_service.database.connect() as conn:
        assert await store.order_view(conn, submitted.data.order_id) is None


async def test_undecodable_bytes_go_to_the_dead_letter_topic_and_the_next_message_is_processed(order_service):
    good = samples.order_submitted("after-junk", [("SKU-1", 1, "1.00")])
    emitted = await deliver(order_service, CHANNEL_ORDERS, b"\x00not json", good)
    assert types(emitted[1:]) == ["oms.order.status_changed.v1", "oms.order.accepted.v1"]
    dead = emitted[0]
    assert dead.topic == "oms.dlq.v1" and dead.payload == b"\x00not json"
    assert dead.headers["oms-original-topic"] == "oms.channel.orders.v1"
    assert dead.headers["oms-error-class"] == "ValidationError"
    assert "Invalid JSON" in dead.headers["oms-error-message"]
    assert dead.headers["oms-service"] == "order"


async def test_a_capture_that_does_not_match_the_total_is_dead_lettered_and_changes_nothing(order_service):
    submitted = samples.order_submitted("short-pay", [("SKU-1", 1, "10.00")])
    other = samples.order_submitted("other-in-batch", [("SKU-1", 1, "10.00")])
    await deliver(order_service, CHANNEL_ORDERS, submitted, other)
    emitted = await deliver(
        order_service,
        CHANNEL_ORDERS,
        samples.payment_captured(submitted, amount=Decimal("1.00")),
        samples.payment_captured(other),
    )
    dead = [e for e in emitted if e.topic == "oms.dlq.v1"]
    assert len(dead) == 1 and "does not match the order total" in dead[0].headers["oms-error-message"]
    assert "oms.order.paid.v1" in types(emitted)  # the rest of the batch went through
    assert await timeline(order_service, submitted.data.order_id) == [(None, "pending")]


async def test_a_message_for_an_unknown_order_is_dead_lettered(order_service):
    ghost = samples.order_submitted("ghost", [("SKU-1", 1, "1.00")])
    emitted = await deliver(order_service, ROUTING_PLANS, plan_for(ghost))
    assert [e.topic for e in emitted] == ["oms.dlq.v1"]
    assert f"unknown order {ghost.data.order_id}" in emitted[0].headers["oms-error-message"]


async def test_a_rejected_reservation_leaves_the_order_paid_waiting_for_the_re_plan(order_service):
    submitted = samples.order_submitted("short-stock", [("SKU-1", 1, "1.00")])
    await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    plan = plan_for(submitted)
    await deliver(order_service, ROUTING_PLANS, plan)
    s = plan.data.shipments[0]
    rejected = inventory.ReservationRejected(
        source="/oms/inventory",
        subject=str(plan.data.order_id),
        data=inventory.ReservationRejectedData(
            order_id=plan.data.order_id,
            shipment_id=s.shipment_id,
            plan_id=plan.data.plan_id,
            source_code=s.source_code,
            lines=s.lines,
            shortages=[inventory.Shortage(sku="SKU-1", requested=1, available=0)],
        ),
    )
    assert await deliver(order_service, INVENTORY_ALLOCATIONS, rejected) == []
    async with order_service.database.connect() as conn:
        view = await store.order_view(conn, submitted.data.order_id)
    assert view["status"] == "paid"
    assert view["fulfillments"][0]["status"] == "rejected"
    assert "SKU-1 0/1" in view["fulfillments"][0]["rejection"]
