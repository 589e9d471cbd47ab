"""The order service's consumers on a real PostgreSQL: each batch in one transaction, effects in the outbox."""

import json
import uuid
from datetime import date, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from oms_contracts import inventory, routing
from oms_contracts.order import FieldError, OrderStatus
from oms_contracts.topics import CHANNEL_ORDERS, FULFILLMENT_UPDATES, INVENTORY_ALLOCATIONS, ROUTING_PLANS
from oms_order import store
from oms_runtime.testing import deliver
from oms_tools import samples


def types(emitted):
    return [e.headers.get("ce-type", e.topic) for e in emitted]


async def timeline(service, order_id):
    async with service.database.connect() as conn:
        return [(row["from_status"], row["to_status"]) for row in await store.timeline(conn, order_id)]


def plan_for(submitted, source="WH-EAST"):
    """Every line in one shipment from `source`."""
    return samples.fulfillment_planned(
        submitted, [(x.line_id, x.quantity) for x in submitted.data.lines], source_code=source
    )


reserved = samples.shipment_reserved
mixed_plan = samples.fulfillment_planned


async def test_the_walking_skeleton_from_submission_to_fulfilled(order_service):
    submitted = samples.order_submitted("skel-1", [("SKU-1", 2, "19.99")])
    order_id = submitted.data.order_id

    emitted = await deliver(order_service, CHANNEL_ORDERS, submitted)
    assert types(emitted) == ["oms.order.status_changed.v1", "oms.order.accepted.v1"]
    assert all(e.key == str(order_id) for e in emitted)

    emitted = await deliver(order_service, CHANNEL_ORDERS, samples.payment_captured(submitted))
    assert types(emitted) == ["oms.order.status_changed.v1", "oms.order.status_changed.v1", "oms.order.paid.v1"]
    # Each status change names its new status in a header too, for consumers that want only some to pass the rest
    # over unread (notifications reads the cancellations only).
    assert [e.headers.get("oms-to-status") for e in emitted] == ["payment_processing", "paid", None]
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
    assert types(emitted) == ["oms.order.status_changed.v1", "oms.order.fulfillment_shipped.v1"]
    assert emitted[0].event.data.to_status is OrderStatus.fulfilled

    emitted = await deliver(order_service, FULFILLMENT_UPDATES, samples.delivered(request.event))
    assert types(emitted) == ["oms.order.status_changed.v1", "oms.order.fulfillment_delivered.v1"]

    assert await timeline(order_service, order_id) == [
        (None, "pending"),
        ("pending", "payment_processing"),
        ("payment_processing", "paid"),
        ("paid", "awaiting_fulfillment"),
        ("awaiting_fulfillment", "fulfilled"),
        ("fulfilled", "delivered"),
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


async def test_a_rejection_echoes_a_bounded_part_of_a_huge_invalid_submission(order_service):
    """Anyone may publish on the channel topic: what the rejection echoes is bounded whatever the submission holds,
    so it always fits on the order topic. The errors beyond the first 50 are counted, not listed."""
    submitted = samples.order_submitted(f"huge-{uuid.uuid4().hex[:6]}", [("SKU-1", 2, "19.99")])
    document = submitted.model_dump(mode="json")
    document["data"]["lines"] = [
        {"line_id": str(n), "sku": "SKU-1", "quantity": 0, "unit_price": "1.00"} for n in range(120)
    ]
    document["data"]["channel"] = "c" * 50_000

    [rejected] = await deliver(order_service, CHANNEL_ORDERS, json.dumps(document).encode())

    rejection = rejected.event.data
    assert len(rejection.errors) == 50
    assert rejection.errors_omitted == len(FieldError.all_of(_refusal(document))) - 50
    assert rejection.channel is None and rejection.order_id is None, "an id no channel could have sent is not echoed"
    assert rejection.external_order_id == submitted.data.external_order_id
    assert rejection.rejected_event_id == submitted.id
    assert len(rejected.payload) < 40_000


def _refusal(document):
    with pytest.raises(ValidationError) as refused:
        CHANNEL_ORDERS.parse(json.dumps(document))
    return refused.value


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
    rejected = samples.reservation_rejected(plan)
    assert await deliver(order_service, INVENTORY_ALLOCATIONS, rejected) == []
    async with order_service.database.connect() as conn:
        view = await store.order_view(conn, submitted.data.order_id)
    assert view["status"] == "paid"
    assert view["fulfillments"][0]["status"] == "rejected"
    assert "SKU-1 0/1" in view["fulfillments"][0]["rejection"]


# -- mixed orders: what is in stock ships now, the rest when it arrives --------------------------------------------


async def view(service, order_id):
    async with service.database.connect() as conn:
        return await store.order_view(conn, order_id)


def quantities(order_view, line_id):
    [line] = [x for x in order_view["lines"] if x["line_id"] == line_id]
    return line["state"], {state: n for state, n in line["quantities"].items() if n}


async def mixed_order(service, name):
    """A TENT (1, in stock at WH-EAST) and 3 LAMPs (backordered), paid, planned and requested."""
    submitted = samples.order_submitted(name, [("TENT", 1, "99.00"), ("LAMP", 3, "10.00")])
    await deliver(service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    plan = mixed_plan(submitted, [("1", 1)], [("2", 3)])
    assert await deliver(service, ROUTING_PLANS, plan) == []
    emitted = await deliver(service, INVENTORY_ALLOCATIONS, reserved(plan))
    return submitted, emitted


async def test_a_mixed_plan_requests_the_reserved_shipment_and_marks_the_other_line_backordered(order_service):
    submitted, emitted = await mixed_order(order_service, "mixed-1")
    assert types(emitted) == ["oms.order.status_changed.v1", "oms.fulfillment.requested.v1"]
    assert (emitted[0].event.data.from_status, emitted[0].event.data.to_status) == ("paid", "awaiting_fulfillment")
    request = emitted[1]
    assert request.topic == "oms.fulfillment.requests.WH-EAST.v1"
    assert [(x.line_id, x.quantity) for x in request.event.data.lines] == [("1", 1)]
    order = await view(order_service, submitted.data.order_id)
    assert quantities(order, "1") == ("requested", {"requested": 1})
    assert quantities(order, "2") == ("backordered", {"backordered": 3})


async def test_a_backorder_allocation_is_a_new_fulfillment_requested_on_its_sources_topic(order_service):
    submitted, _ = await mixed_order(order_service, "mixed-2")
    order_id = submitted.data.order_id
    ship_by = date.today() + timedelta(days=2)
    allocated = samples.backorder_allocated(order_id, [("2", "LAMP", 2)], "WH-WEST", ship_by=ship_by)
    emitted = await deliver(order_service, INVENTORY_ALLOCATIONS, allocated)
    assert types(emitted) == ["oms.fulfillment.requested.v1"]
    [request] = emitted
    assert request.topic == "oms.fulfillment.requests.WH-WEST.v1" and request.key == str(order_id)
    data = request.event.data
    assert data.fulfillment_id == allocated.data.shipment_id and data.ship_by == ship_by
    assert [(x.line_id, x.sku, x.quantity) for x in data.lines] == [("2", "LAMP", 2)]
    assert data.recipient.name == "Ada Lovelace" and data.ship_to.country == "DE"
    order = await view(order_service, order_id)
    assert quantities(order, "2") == ("backordered", {"requested": 2, "backordered": 1})
    assert {f["fulfillment_id"]: f["status"] for f in order["fulfillments"]}[data.fulfillment_id] == "requested"

    rest = samples.backorder_allocated(order_id, [("2", "LAMP", 1)], "WH-EAST")
    [request] = await deliver(order_service, INVENTORY_ALLOCATIONS, rest)
    assert request.topic == "oms.fulfillment.requests.WH-EAST.v1" and request.event.data.ship_by == date.today()
    assert quantities(await view(order_service, order_id), "2") == ("requested", {"requested": 3})


def backorder_queued(order_id, lines):
    """Inventory's announcement that `lines` [(line_id, sku, units)] joined their SKUs' queues."""
    return inventory.BackorderQueued(
        source="/oms/inventory",
        subject=str(order_id),
        data=inventory.BackorderQueuedData(
            order_id=order_id,
            lines=[
                inventory.BackorderedLine(line_id=line_id, sku=sku, quantity=n, position=1) for line_id, sku, n in lines
            ],
        ),
    )


async def test_backorder_queued_after_its_plan_moves_no_unit_and_requests_nothing(order_service):
    submitted, _ = await mixed_order(order_service, "mixed-queued")
    before = await view(order_service, submitted.data.order_id)
    queued = backorder_queued(submitted.data.order_id, [("2", "LAMP", 3)])
    assert await deliver(order_service, INVENTORY_ALLOCATIONS, queued) == []
    after = await view(order_service, submitted.data.order_id)
    assert [quantities(after, x) for x in ("1", "2")] == [quantities(before, x) for x in ("1", "2")]
    assert after["status"] == before["status"] and after["fulfillments"] == before["fulfillments"]


async def test_inventorys_answers_that_overtake_the_plan_request_at_once_and_the_late_plan_changes_nothing(
    order_service,
):
    # Inventory reserved the tent, queued the lamps and served them at once from stock routing did not know of:
    # one transaction, so one batch here, in that order; the plan comes last.
    submitted = samples.order_submitted("overtaken", [("TENT", 1, "99.00"), ("LAMP", 3, "10.00")])
    order_id = submitted.data.order_id
    await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    plan = mixed_plan(submitted, [("1", 1)], [("2", 3)])
    allocated = samples.backorder_allocated(order_id, [("2", "LAMP", 3)], "WH-EAST")

    emitted = await deliver(
        order_service,
        INVENTORY_ALLOCATIONS,
        reserved(plan),
        backorder_queued(order_id, [("2", "LAMP", 3)]),
        allocated,
    )

    assert types(emitted) == [
        "oms.order.status_changed.v1",
        "oms.fulfillment.requested.v1",
        "oms.fulfillment.requested.v1",
    ]
    assert emitted[2].event.data.fulfillment_id == allocated.data.shipment_id
    assert await deliver(order_service, ROUTING_PLANS, plan) == []
    order = await view(order_service, order_id)
    assert quantities(order, "1") == ("requested", {"requested": 1})
    assert quantities(order, "2") == ("requested", {"requested": 3})
    assert order["status"] == "awaiting_fulfillment"
    assert await timeline(order_service, order_id) == [
        (None, "pending"),
        ("pending", "payment_processing"),
        ("payment_processing", "paid"),
        ("paid", "awaiting_fulfillment"),
    ]


ARRIVALS = {
    "plan first": ["plan", "reserved", "queued", "allocated"],
    "plan after the reservation": ["reserved", "plan", "queued", "allocated"],
    "plan after the announcement": ["reserved", "queued", "plan", "allocated"],
    "plan last": ["reserved", "queued", "allocated", "plan"],
    "inventory in one batch, then the plan": ["reserved+queued+allocated", "plan"],
}


@pytest.mark.parametrize("arrival", list(ARRIVALS))
async def test_a_mixed_order_ends_the_same_whichever_of_plan_and_inventorys_answers_comes_first(order_service, arrival):
    submitted = samples.order_submitted(f"arrival-{uuid.uuid4().hex[:6]}", [("TENT", 1, "99.00"), ("LAMP", 3, "10.00")])
    order_id = submitted.data.order_id
    await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    plan = mixed_plan(submitted, [("1", 1)], [("2", 3)])
    messages = {
        "plan": (ROUTING_PLANS, plan),
        "reserved": (INVENTORY_ALLOCATIONS, reserved(plan)),
        "queued": (INVENTORY_ALLOCATIONS, backorder_queued(order_id, [("2", "LAMP", 3)])),
        "allocated": (INVENTORY_ALLOCATIONS, samples.backorder_allocated(order_id, [("2", "LAMP", 2)], "WH-WEST")),
    }
    requests = []
    for step in ARRIVALS[arrival]:
        batch = [messages[name] for name in step.split("+")]
        emitted = await deliver(order_service, batch[0][0], *(event for _, event in batch))
        assert not [e for e in emitted if e.topic == "oms.dlq.v1"]
        requests += [e.event.data.source_code for e in emitted if e.topic.startswith("oms.fulfillment.requests.")]

    assert sorted(requests) == ["WH-EAST", "WH-WEST"]
    order = await view(order_service, order_id)
    assert order["status"] == "awaiting_fulfillment"
    assert quantities(order, "1") == ("requested", {"requested": 1})
    assert quantities(order, "2") == ("backordered", {"requested": 2, "backordered": 1})
    assert sorted((f["source_code"], f["status"]) for f in order["fulfillments"]) == [
        ("WH-EAST", "requested"),
        ("WH-WEST", "requested"),
    ]
    assert (await timeline(order_service, order_id))[-1] == ("paid", "awaiting_fulfillment")


async def test_a_backorder_queued_naming_a_line_the_order_does_not_have_is_dead_lettered(order_service):
    submitted, _ = await mixed_order(order_service, f"bad-queued-{uuid.uuid4().hex[:6]}")
    other = samples.order_submitted(f"bad-queued-other-{uuid.uuid4().hex[:6]}", [("LAMP", 2, "10.00")])
    await deliver(order_service, CHANNEL_ORDERS, other, samples.payment_captured(other))
    bad = backorder_queued(submitted.data.order_id, [("2", "TENT", 1)])
    good = backorder_queued(other.data.order_id, [("1", "LAMP", 2)])
    message = await refused(
        order_service, INVENTORY_ALLOCATIONS, bad, lambda e: "oms.order.status_changed.v1" in types(e), good
    )
    assert "has no line 2 of TENT" in message


async def test_parcels_move_a_mixed_order_through_partially_fulfilled_fulfilled_and_delivered(order_service):
    submitted, emitted = await mixed_order(order_service, "mixed-3")
    order_id = submitted.data.order_id
    first = emitted[1].event

    # The tent leaves: some units shipped, others to come.
    emitted = await deliver(order_service, FULFILLMENT_UPDATES, samples.parcel(first, {"1": 1}, tracking_number="T-1"))
    assert types(emitted) == ["oms.order.status_changed.v1", "oms.order.fulfillment_shipped.v1"]
    assert emitted[0].event.data.to_status is OrderStatus.partially_fulfilled
    shipped = emitted[1].event.data
    assert [(x.line_id, x.sku, x.quantity) for x in shipped.lines] == [("1", "TENT", 1)]
    assert [(x.line_id, x.sku, x.quantity) for x in shipped.to_come] == [("2", "LAMP", 3)]
    assert shipped.status is OrderStatus.partially_fulfilled and shipped.tracking_number == "T-1"
    assert shipped.fulfillment_id == first.data.fulfillment_id and shipped.source_code == "WH-EAST"
    assert emitted[1].key == str(order_id)

    # The lamps arrive at WH-WEST and leave in two parcels.
    allocated = samples.backorder_allocated(order_id, [("2", "LAMP", 3)], "WH-WEST")
    [second] = await deliver(order_service, INVENTORY_ALLOCATIONS, allocated)
    emitted = await deliver(
        order_service, FULFILLMENT_UPDATES, samples.parcel(second.event, {"2": 2}, tracking_number="T-2")
    )
    assert types(emitted) == ["oms.order.fulfillment_shipped.v1"]
    assert [(x.line_id, x.quantity) for x in emitted[0].event.data.lines] == [("2", 2)]
    assert [(x.line_id, x.quantity) for x in emitted[0].event.data.to_come] == [("2", 1)]
    emitted = await deliver(
        order_service, FULFILLMENT_UPDATES, samples.parcel(second.event, {"2": 1}, tracking_number="T-3")
    )
    assert types(emitted) == ["oms.order.status_changed.v1", "oms.order.fulfillment_shipped.v1"]
    assert emitted[0].event.data.to_status is OrderStatus.fulfilled
    assert emitted[1].event.data.to_come == [] and emitted[1].event.data.status is OrderStatus.fulfilled

    # Deliveries, one per fulfillment; the order is delivered with the last.
    emitted = await deliver(order_service, FULFILLMENT_UPDATES, samples.delivered(first))
    assert types(emitted) == ["oms.order.fulfillment_delivered.v1"]
    assert emitted[0].event.data.status is OrderStatus.fulfilled
    emitted = await deliver(order_service, FULFILLMENT_UPDATES, samples.delivered(second.event))
    assert types(emitted) == ["oms.order.status_changed.v1", "oms.order.fulfillment_delivered.v1"]
    delivered = emitted[1].event.data
    assert [(x.line_id, x.quantity) for x in delivered.lines] == [("2", 3)]
    assert delivered.tracking_numbers == ["T-2", "T-3"] and delivered.status is OrderStatus.delivered

    order = await view(order_service, order_id)
    assert order["status"] == "delivered"
    assert quantities(order, "1") == ("delivered", {"delivered": 1})
    assert quantities(order, "2") == ("delivered", {"delivered": 3})
    by_id = {f["fulfillment_id"]: f for f in order["fulfillments"]}
    assert [p["tracking_number"] for p in by_id[second.event.data.fulfillment_id]["parcels"]] == ["T-2", "T-3"]
    assert all(p["delivered_at"] for f in order["fulfillments"] for p in f["parcels"])
    assert await timeline(order_service, order_id) == [
        (None, "pending"),
        ("pending", "payment_processing"),
        ("payment_processing", "paid"),
        ("paid", "awaiting_fulfillment"),
        ("awaiting_fulfillment", "partially_fulfilled"),
        ("partially_fulfilled", "fulfilled"),
        ("fulfilled", "delivered"),
    ]


async def test_parcel_and_delivery_events_continue_the_orders_trace(order_service):
    submitted = samples.order_submitted("mixed-trace", [("TENT", 1, "99.00"), ("LAMP", 3, "10.00")])
    accepted = await deliver(order_service, CHANNEL_ORDERS, submitted)
    order_trace = accepted[0].headers["traceparent"].split("-")[1]
    await deliver(order_service, CHANNEL_ORDERS, samples.payment_captured(submitted))
    plan = mixed_plan(submitted, [("1", 1)], [("2", 3)])
    await deliver(order_service, ROUTING_PLANS, plan)
    request = (await deliver(order_service, INVENTORY_ALLOCATIONS, reserved(plan)))[1].event
    allocated = await deliver(
        order_service,
        INVENTORY_ALLOCATIONS,
        samples.backorder_allocated(submitted.data.order_id, [("2", "LAMP", 3)], "WH-WEST"),
    )
    shipped = await deliver(
        order_service, FULFILLMENT_UPDATES, samples.parcel(request, {"1": 1}, tracking_number="TR-1")
    )
    delivered = await deliver(order_service, FULFILLMENT_UPDATES, samples.delivered(request))
    assert {e.headers["traceparent"].split("-")[1] for e in allocated + shipped + delivered} == {order_trace}


async def test_the_same_parcel_sent_again_under_a_new_event_id_is_one_parcel(order_service):
    submitted, emitted = await mixed_order(order_service, "mixed-dup")
    request = emitted[1].event
    first = samples.parcel(request, {"1": 1}, tracking_number="DUP-1")
    again = samples.parcel(request, {"1": 1}, tracking_number="DUP-1")
    assert again.id != first.id
    assert types(await deliver(order_service, FULFILLMENT_UPDATES, first)) == [
        "oms.order.status_changed.v1",
        "oms.order.fulfillment_shipped.v1",
    ]
    before = await view(order_service, submitted.data.order_id)
    assert await deliver(order_service, FULFILLMENT_UPDATES, again) == []
    after = await view(order_service, submitted.data.order_id)
    assert after == before
    assert [len(f["parcels"]) for f in after["fulfillments"]] == [1]


def with_data(event, **changes):
    """The same event with some data fields changed (contracts are frozen)."""
    return event.model_copy(update={"data": event.data.model_copy(update=changes)})


async def refused(service, topic, bad, good_order_of, good):
    """Deliver `bad` then `good` in one batch: `bad` is dead-lettered with its reason and changes nothing, `good`
    still goes through. Returns the dead letter's reason."""
    order_id = bad.data.order_id
    before = await view(service, order_id)
    emitted = await deliver(service, topic, bad, good)
    dead = [e for e in emitted if e.topic == "oms.dlq.v1"]
    assert len(dead) == 1 and dead[0].payload == bad.to_bytes()
    assert await view(service, order_id) == before
    assert [e for e in emitted if e.topic != "oms.dlq.v1"], "the consumer went on with the next message"
    assert good_order_of(emitted)
    return dead[0].headers["oms-error-message"]


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ([("9", "LAMP", 1)], "has no line 9 of LAMP"),
        ([("2", "TENT", 1)], "has no line 2 of TENT"),
        ([("2", "LAMP", 4)], "allocation of 4 units of line 2 (LAMP), but only 3 are backordered"),
        ([("1", "TENT", 1)], "allocation of 1 units of line 1 (TENT), but only 0 are backordered"),
    ],
)
async def test_a_bad_backorder_allocation_is_dead_lettered_with_its_reason_and_changes_nothing(
    order_service, lines, reason
):
    submitted, _ = await mixed_order(order_service, f"bad-alloc-{uuid.uuid4().hex[:6]}")
    other, _ = await mixed_order(order_service, f"bad-alloc-other-{uuid.uuid4().hex[:6]}")
    bad = samples.backorder_allocated(submitted.data.order_id, lines, "WH-WEST")
    good = samples.backorder_allocated(other.data.order_id, [("2", "LAMP", 3)], "WH-WEST")
    message = await refused(
        order_service, INVENTORY_ALLOCATIONS, bad, lambda e: "oms.fulfillment.requested.v1" in types(e), good
    )
    assert reason in message


async def test_an_allocation_of_an_already_shipped_line_is_dead_lettered(order_service):
    submitted, emitted = await mixed_order(order_service, "shipped-alloc")
    await deliver(order_service, FULFILLMENT_UPDATES, samples.parcel(emitted[1].event, {"1": 1}, tracking_number="S-1"))
    other, _ = await mixed_order(order_service, "shipped-alloc-other")
    good = samples.backorder_allocated(other.data.order_id, [("2", "LAMP", 1)], "WH-WEST")
    bad = samples.backorder_allocated(submitted.data.order_id, [("1", "TENT", 1)], "WH-WEST")
    message = await refused(order_service, INVENTORY_ALLOCATIONS, bad, lambda e: True, good)
    assert "line 1 already shipped" in message


async def test_an_allocation_of_cancelled_units_gives_them_back_to_inventory_and_requests_nothing(order_service):
    cancelled = samples.order_submitted("cancelled-alloc", [("TENT", 1, "99.00"), ("LAMP", 2, "10.00")])
    await deliver(order_service, CHANNEL_ORDERS, cancelled, samples.payment_captured(cancelled))
    unfulfillable = [routing.UnplannedLine(line_id="2", sku="LAMP", quantity=2, reason="no source")]
    plan = with_data(mixed_plan(cancelled, [], [("1", 1)]), unfulfillable_lines=unfulfillable)
    await deliver(order_service, ROUTING_PLANS, plan)
    allocated = samples.backorder_allocated(cancelled.data.order_id, [("2", "LAMP", 1)], "WH-WEST")
    [released] = await deliver(order_service, INVENTORY_ALLOCATIONS, allocated)
    data = released.event.data
    assert released.event.type == "oms.order.lines_cancelled.v1" and data.refund_amount == 0
    assert [(u.line_id, u.quantity, u.from_state, u.fulfillment_id) for u in data.units] == [
        ("2", 1, "reserved", allocated.data.shipment_id)
    ]
    order = await view(order_service, cancelled.data.order_id)
    assert {f["fulfillment_id"]: f["status"] for f in order["fulfillments"]}[allocated.data.shipment_id] == "cancelled"


async def test_bad_shipped_updates_are_dead_lettered_with_their_reason_and_change_nothing(order_service):
    _, emitted = await mixed_order(order_service, "bad-ship")
    request = emitted[1].event
    others = iter(range(4))

    async def good(tracking):
        """A parcel of another order, in the same batch after the bad one."""
        _, other_emitted = await mixed_order(order_service, f"bad-ship-other-{next(others)}")
        return samples.parcel(other_emitted[1].event, {"1": 1}, tracking_number=tracking)

    too_many = samples.parcel(request, {"1": 2}, tracking_number="X-1")
    message = await refused(order_service, FULFILLMENT_UPDATES, too_many, lambda e: True, await good("OK-1"))
    assert "ships 2 units of line 1, but only 1 of it are still to ship" in message

    not_in_it = samples.parcel(request, {"2": 1}, tracking_number="X-2")
    message = await refused(order_service, FULFILLMENT_UPDATES, not_in_it, lambda e: True, await good("OK-1"))
    assert f"fulfillment {request.data.fulfillment_id} has no line 2" in message

    unknown = with_data(samples.parcel(request, {"1": 1}, tracking_number="X-3"), fulfillment_id=uuid.uuid4())
    message = await refused(order_service, FULFILLMENT_UPDATES, unknown, lambda e: True, await good("OK-1"))
    assert f"has no fulfillment {unknown.data.fulfillment_id}" in message

    # A fulfillment routing planned but inventory has not reserved: nothing of it may ship yet.
    planned_only = samples.order_submitted("bad-ship-planned", [("TENT", 1, "99.00")])
    await deliver(order_service, CHANNEL_ORDERS, planned_only, samples.payment_captured(planned_only))
    plan = plan_for(planned_only)
    await deliver(order_service, ROUTING_PLANS, plan)
    s = plan.data.shipments[0]
    not_requested = with_data(
        samples.parcel(request, {"1": 1}, tracking_number="X-4"),
        order_id=planned_only.data.order_id,
        fulfillment_id=s.shipment_id,
        source_code=s.source_code,
    )
    message = await refused(order_service, FULFILLMENT_UPDATES, not_requested, lambda e: True, await good("OK-1"))
    assert f"fulfillment {s.shipment_id} is planned; nothing of it can ship" in message


async def test_several_parcels_of_several_orders_in_one_batch(order_service):
    a, a_emitted = await mixed_order(order_service, "batch-a")
    b, b_emitted = await mixed_order(order_service, "batch-b")
    emitted = await deliver(
        order_service,
        FULFILLMENT_UPDATES,
        samples.parcel(a_emitted[1].event, {"1": 1}, tracking_number="BA-1"),
        samples.parcel(b_emitted[1].event, {"1": 1}, tracking_number="BB-1"),
        samples.parcel(a_emitted[1].event, {"1": 1}, tracking_number="BA-1"),
    )
    assert types(emitted).count("oms.order.fulfillment_shipped.v1") == 2
    for submitted in (a, b):
        order = await view(order_service, submitted.data.order_id)
        assert order["status"] == "partially_fulfilled"
        assert sum(len(f["parcels"]) for f in order["fulfillments"]) == 1


async def test_a_re_plan_that_overtakes_the_rejection_it_answers_is_applied_and_the_late_rejection_changes_nothing(
    order_service,
):
    submitted = samples.order_submitted("replan-race", [("TENT", 2, "99.00")])
    await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    first = plan_for(submitted, "WH-EAST")
    await deliver(order_service, ROUTING_PLANS, first)
    second = with_data(plan_for(submitted, "WH-WEST"), attempt=2)
    assert await deliver(order_service, ROUTING_PLANS, second) == []
    [_, request] = await deliver(order_service, INVENTORY_ALLOCATIONS, reserved(second))
    assert request.topic == "oms.fulfillment.requests.WH-WEST.v1"
    late = samples.reservation_rejected(first)
    assert await deliver(order_service, INVENTORY_ALLOCATIONS, late) == []
    order = await view(order_service, submitted.data.order_id)
    assert {f["source_code"]: f["status"] for f in order["fulfillments"]} == {
        "WH-EAST": "rejected",
        "WH-WEST": "requested",
    }
    assert quantities(order, "1") == ("requested", {"requested": 2})


# -- after the sale ----------------------------------------------------------------------------------------------


async def entries(service, order_id):
    """The timeline as (kind, actor) pairs, oldest first."""
    async with service.database.connect() as conn:
        return [(row["kind"], row["actor"]) for row in await store.timeline(conn, order_id)]


def data_of(emitted, type_):
    return [e.event.data for e in emitted if e.headers.get("ce-type") == type_]


async def test_a_channel_cancels_a_backordered_line_refunded_with_the_new_total(order_service):
    submitted, _ = await mixed_order(order_service, "cancel-backordered")
    order_id = submitted.data.order_id
    asked = samples.cancellation_requested(submitted, {"2": 2}, reason="too slow")
    emitted = await deliver(order_service, CHANNEL_ORDERS, asked)
    assert types(emitted) == ["oms.order.lines_cancelled.v1", "oms.order.refund_issued.v1"]
    assert all(e.key == str(order_id) and e.topic == "oms.order.events.v1" for e in emitted)
    [cancelled] = data_of(emitted, "oms.order.lines_cancelled.v1")
    assert [(x.line_id, x.quantity) for x in cancelled.lines] == [("2", 2)]
    assert [(u.line_id, u.sku, u.quantity, u.from_state, u.fulfillment_id) for u in cancelled.units] == [
        ("2", "LAMP", 2, "backordered", None)
    ]
    assert (cancelled.refund_amount, cancelled.grand_total, cancelled.currency) == (
        Decimal("20.00"),
        Decimal("113.99"),
        "EUR",
    )
    assert cancelled.cancellation_id == asked.id and cancelled.status is OrderStatus.awaiting_fulfillment
    assert (cancelled.actor, cancelled.reason) == ("channel:web-eu:customer", "too slow")
    [refund] = data_of(emitted, "oms.order.refund_issued.v1")
    assert (refund.amount, refund.refunded_total, refund.cause, refund.cancellation_id) == (
        Decimal("20.00"),
        Decimal("20.00"),
        "cancellation",
        asked.id,
    )
    assert [(x.line_id, x.quantity) for x in refund.lines] == [("2", 2)]
    order = await view(order_service, order_id)
    assert quantities(order, "2") == ("backordered", {"backordered": 1, "cancelled": 2})
    assert (order["grand_total"], order["refunded_total"]) == (Decimal("113.99"), Decimal("20.00"))
    assert (await entries(order_service, order_id))[-3:] == [
        ("cancellation_requested", "channel:web-eu:customer"),
        ("units_cancelled", "channel:web-eu:customer"),
        ("refund", "channel:web-eu:customer"),
    ]
    # The same request redelivered is the inbox's; resent under a new id, it asks for units already cancelled.
    assert await deliver(order_service, CHANNEL_ORDERS, asked) == []
    again = samples.cancellation_requested(submitted, {"2": 2}, reason="too slow")
    [refusal] = await deliver(order_service, CHANNEL_ORDERS, again)
    assert refusal.event.type == "oms.order.cancellation_rejected.v1"
    assert "2 cancelled already" in refusal.event.data.reason and refusal.event.data.requested_by.startswith("channel:")
    assert quantities(await view(order_service, order_id), "2") == ("backordered", {"backordered": 1, "cancelled": 2})


async def test_a_requested_line_is_cancelled_at_its_source_and_refunded_when_the_source_confirms(order_service):
    submitted, emitted = await mixed_order(order_service, "cancel-requested")
    request = emitted[1].event
    emitted = await deliver(order_service, CHANNEL_ORDERS, samples.cancellation_requested(submitted, {"1": 1}))
    [asked] = emitted
    assert asked.topic == "oms.fulfillment.requests.WH-EAST.v1" and asked.key == str(submitted.data.order_id)
    data = asked.event.data
    assert asked.event.type == "oms.fulfillment.cancel_requested.v1"
    assert (data.fulfillment_id, data.source_code, data.reason) == (
        request.data.fulfillment_id,
        "WH-EAST",
        "changed my mind",
    )
    assert [(x.line_id, x.quantity) for x in data.lines] == [("1", 1)]

    emitted = await deliver(order_service, FULFILLMENT_UPDATES, samples.cancelled(request, {"1": 1}))
    assert types(emitted) == ["oms.order.lines_cancelled.v1", "oms.order.refund_issued.v1"]
    [cancelled] = data_of(emitted, "oms.order.lines_cancelled.v1")
    assert [(u.from_state, u.fulfillment_id) for u in cancelled.units] == [("requested", request.data.fulfillment_id)]
    assert cancelled.refund_amount == Decimal("99.00")
    order = await view(order_service, submitted.data.order_id)
    assert quantities(order, "1") == ("cancelled", {"cancelled": 1})
    assert order["fulfillments"][0]["status"] == "cancelled"


async def test_a_cancellation_the_source_overtakes_by_shipping_is_refused_as_already_left(order_service):
    submitted, emitted = await mixed_order(order_service, "cancel-too-late")
    request = emitted[1].event
    await deliver(order_service, CHANNEL_ORDERS, samples.cancellation_requested(submitted, {"1": 1}))
    emitted = await deliver(
        order_service, FULFILLMENT_UPDATES, samples.parcel(request, {"1": 1}, tracking_number="L-1")
    )
    assert types(emitted) == [
        "oms.order.status_changed.v1",
        "oms.order.fulfillment_shipped.v1",
        "oms.order.cancellation_rejected.v1",
    ]
    [refusal] = data_of(emitted, "oms.order.cancellation_rejected.v1")
    assert [(x.line_id, x.quantity) for x in refusal.lines] == [("1", 1)] and "already left WH-EAST" in refusal.reason
    assert refusal.requested_by == "channel:web-eu:customer"


async def test_a_cancellation_of_a_shipped_line_is_refused_and_changes_nothing(order_service):
    submitted, emitted = await mixed_order(order_service, "cancel-shipped")
    await deliver(order_service, FULFILLMENT_UPDATES, samples.parcel(emitted[1].event, {"1": 1}, tracking_number="Z-1"))
    before = await view(order_service, submitted.data.order_id)
    asked = samples.cancellation_requested(submitted, {"1": 1, "2": 1})
    [refusal] = await deliver(order_service, CHANNEL_ORDERS, asked)
    assert refusal.event.type == "oms.order.cancellation_rejected.v1"
    data = refusal.event.data
    assert data.cancellation_id == asked.id and [(x.line_id, x.quantity) for x in data.lines] == [("1", 1), ("2", 1)]
    assert "line 1 (TENT): 1 units asked, only 0 can still be cancelled (1 already shipped)" in data.reason
    after = await view(order_service, submitted.data.order_id)
    assert after["lines"] == before["lines"] and after["grand_total"] == before["grand_total"]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (lambda order, ghost: samples.cancellation_requested(ghost, {"1": 1}), "no order web-eu:cancel-ghost"),
        (lambda order, ghost: samples.cancellation_requested(order, {"7": 1}), "has no line 7"),
        (lambda order, ghost: samples.return_received(order, {"9": 1}, "WH-EAST"), "has no line 9"),
        (
            lambda order, ghost: samples.return_received(order, {"2": 1}, "WH-EAST"),
            "return of 1 units of line 2 (LAMP), but only 0 shipped and not returned",
        ),
    ],
)
async def test_cancellations_and_returns_naming_unknown_orders_or_lines_are_dead_lettered_and_the_consumer_goes_on(
    order_service, bad, reason
):
    submitted, _ = await mixed_order(order_service, f"cancel-bad-{uuid.uuid4().hex[:6]}")
    other, _ = await mixed_order(order_service, f"cancel-bad-other-{uuid.uuid4().hex[:6]}")
    ghost = samples.order_submitted("cancel-ghost", [("TENT", 1, "1.00")])
    message = await refused(
        order_service,
        CHANNEL_ORDERS,
        bad(submitted, ghost),
        lambda e: "oms.order.lines_cancelled.v1" in types(e),
        samples.cancellation_requested(other, {"2": 1}),
    )
    assert reason in message


async def test_a_source_cancelling_units_of_its_own_accord_asks_routing_to_plan_them_again(order_service):
    submitted, emitted = await mixed_order(order_service, "source-cancels")
    request = emitted[1].event
    emitted = await deliver(
        order_service, FULFILLMENT_UPDATES, samples.cancelled(request, {"1": 1}, reason="shelf empty")
    )
    [replan] = emitted
    assert replan.event.type == "oms.order.replan_requested.v1" and replan.key == str(submitted.data.order_id)
    data = replan.event.data
    assert (data.fulfillment_id, data.source_code, data.reason) == (
        request.data.fulfillment_id,
        "WH-EAST",
        "WH-EAST: shelf empty",
    )
    assert [(x.line_id, x.sku, x.quantity) for x in data.lines] == [("1", "TENT", 1)]
    order = await view(order_service, submitted.data.order_id)
    assert quantities(order, "1") == ("open", {"open": 1})
    assert order["fulfillments"][0]["status"] == "cancelled"
    # Routing's re-plan places the open unit at another source, which is asked for it.
    replanned = with_data(mixed_plan(submitted, [("1", 1)], [], source_code="WH-WEST"), attempt=2)
    assert await deliver(order_service, ROUTING_PLANS, replanned) == []
    [again] = await deliver(order_service, INVENTORY_ALLOCATIONS, reserved(replanned))
    assert again.topic == "oms.fulfillment.requests.WH-WEST.v1"
    assert quantities(await view(order_service, submitted.data.order_id), "1") == ("requested", {"requested": 1})


async def test_a_rejection_cancels_the_units_a_cancellation_waited_for_and_re_plans_the_rest(order_service):
    submitted = samples.order_submitted("reject-pending", [("TENT", 3, "10.00")])
    await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    plan = plan_for(submitted)
    await deliver(order_service, ROUTING_PLANS, plan)
    [_, request] = await deliver(order_service, INVENTORY_ALLOCATIONS, reserved(plan))
    await deliver(order_service, CHANNEL_ORDERS, samples.cancellation_requested(submitted, {"1": 2}))
    emitted = await deliver(order_service, FULFILLMENT_UPDATES, samples.rejected(request.event))
    assert types(emitted) == [
        "oms.order.lines_cancelled.v1",
        "oms.order.refund_issued.v1",
        "oms.order.replan_requested.v1",
    ]
    [replan] = data_of(emitted, "oms.order.replan_requested.v1")
    assert [(x.line_id, x.quantity) for x in replan.lines] == [("1", 1)] and replan.reason == "no staff"
    assert quantities(await view(order_service, submitted.data.order_id), "1") == (
        "open",
        {"open": 1, "cancelled": 2},
    )


async def test_unfulfillable_lines_of_a_plan_are_cancelled_refunded_and_an_order_with_nothing_left_cancelled(
    order_service,
):
    submitted = samples.order_submitted("unfulfillable", [("TENT", 1, "99.00"), ("LAMP", 2, "10.00")])
    await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    gone = [
        routing.UnplannedLine(line_id="1", sku="TENT", quantity=1, reason="no source ships to IS"),
        routing.UnplannedLine(line_id="2", sku="LAMP", quantity=2, reason="no source ships to IS"),
    ]
    plan = with_data(mixed_plan(submitted, [], []), unfulfillable_lines=gone)
    emitted = await deliver(order_service, ROUTING_PLANS, plan)
    assert types(emitted) == [
        "oms.order.status_changed.v1",
        "oms.order.lines_cancelled.v1",
        "oms.order.refund_issued.v1",
    ]
    [change] = data_of(emitted, "oms.order.status_changed.v1")
    assert (change.to_status, change.cause_type, change.note) == (
        OrderStatus.cancelled,
        "oms.routing.fulfillment_planned.v1",
        "cancelled: no source ships to IS",
    )
    [cancelled] = data_of(emitted, "oms.order.lines_cancelled.v1")
    assert cancelled.status is OrderStatus.cancelled and cancelled.reason == "no source ships to IS"
    assert cancelled.refund_amount == Decimal("123.99") and cancelled.grand_total == 0
    assert cancelled.actor == "service:routing"


async def test_a_return_in_store_is_refunded_and_the_last_one_refunds_the_order(order_service):
    submitted = samples.order_submitted("returned", [("TENT", 2, "50.00")], tax_total="19.00")
    await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    plan = plan_for(submitted)
    await deliver(order_service, ROUTING_PLANS, plan)
    [_, request] = await deliver(order_service, INVENTORY_ALLOCATIONS, reserved(plan))
    await deliver(order_service, FULFILLMENT_UPDATES, samples.shipped(request.event))
    await deliver(order_service, FULFILLMENT_UPDATES, samples.delivered(request.event))
    first = samples.return_received(submitted, {"1": (1, "damaged")}, "STORE-BERLIN")
    emitted = await deliver(order_service, CHANNEL_ORDERS, first)
    assert types(emitted) == ["oms.order.lines_returned.v1", "oms.order.refund_issued.v1"]
    [returned] = data_of(emitted, "oms.order.lines_returned.v1")
    assert (returned.return_id, returned.source_code, returned.refund_amount) == (
        first.id,
        "STORE-BERLIN",
        Decimal("59.50"),  # 50.00 + 19.00 x 50/100, no shipping
    )
    assert [(x.line_id, x.sku, x.quantity, x.condition) for x in returned.lines] == [("1", "TENT", 1, "damaged")]
    [refund] = data_of(emitted, "oms.order.refund_issued.v1")
    assert (refund.cause, refund.return_id, refund.amount) == ("return", first.id, Decimal("59.50"))

    # The same units again: more than shipped and not returned.
    second_time = samples.return_received(submitted, {"1": 2}, "STORE-BERLIN")
    [dead] = await deliver(order_service, CHANNEL_ORDERS, second_time)
    assert (
        "return of 2 units of line 1 (TENT), but only 1 shipped and not returned" in dead.headers["oms-error-message"]
    )

    emitted = await deliver(order_service, CHANNEL_ORDERS, samples.return_received(submitted, {"1": 1}, "WH-EAST"))
    assert types(emitted) == [
        "oms.order.status_changed.v1",
        "oms.order.lines_returned.v1",
        "oms.order.refund_issued.v1",
    ]
    [change] = data_of(emitted, "oms.order.status_changed.v1")
    assert (change.from_status, change.to_status) == (OrderStatus.delivered, OrderStatus.refunded)
    [refund] = data_of(emitted, "oms.order.refund_issued.v1")
    assert refund.amount == Decimal("64.49") and refund.refunded_total == Decimal("123.99")  # shipping back too


async def test_every_status_change_names_the_type_of_what_caused_it(order_service):
    submitted = samples.order_submitted("cause-types", [("TENT", 1, "99.00")])
    emitted = await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_failed(submitted))
    changes = data_of(emitted, "oms.order.status_changed.v1")
    assert [(c.to_status, c.cause_type) for c in changes] == [
        (OrderStatus.pending, "oms.channel.order_submitted.v1"),
        (OrderStatus.cancelled, "oms.channel.payment_failed.v1"),
    ]
    assert changes[-1].note == "payment failed: card declined"
    async with order_service.database.connect() as conn:
        rows = await store.timeline(conn, submitted.data.order_id)
    assert [row["cause_type"] for row in rows] == ["oms.channel.order_submitted.v1", "oms.channel.payment_failed.v1"]


async def test_a_whole_order_cancelled_by_its_channel_before_payment_is_cancelled_refunding_nothing(order_service):
    submitted = samples.order_submitted("cancel-unpaid", [("TENT", 1, "99.00")])
    await deliver(order_service, CHANNEL_ORDERS, submitted)
    emitted = await deliver(
        order_service, CHANNEL_ORDERS, samples.cancellation_requested(submitted, reason="duplicate")
    )
    assert types(emitted) == ["oms.order.status_changed.v1", "oms.order.lines_cancelled.v1"]
    [change] = data_of(emitted, "oms.order.status_changed.v1")
    assert (change.from_status, change.to_status, change.note) == ("pending", "cancelled", "cancelled: duplicate")
    [cancelled] = data_of(emitted, "oms.order.lines_cancelled.v1")
    assert cancelled.refund_amount == 0 and cancelled.status is OrderStatus.cancelled


async def test_backorder_queued_teaches_the_order_when_its_waiting_units_are_expected(order_service):
    submitted, _ = await mixed_order(order_service, "expected-date")
    queued = backorder_queued(submitted.data.order_id, [("2", "LAMP", 3)])
    expected = date.today() + timedelta(days=9)
    queued = with_data(queued, lines=[queued.data.lines[0].model_copy(update={"expected_date": expected})])
    assert await deliver(order_service, INVENTORY_ALLOCATIONS, queued) == []
    order = await view(order_service, submitted.data.order_id)
    assert [x["backorder_expected_date"] for x in order["lines"]] == [None, expected]


async def test_units_of_a_planned_shipment_are_cancelled_with_its_reservation_and_only_the_rest_is_requested(
    order_service,
):
    submitted = samples.order_submitted("cancel-planned", [("TENT", 3, "10.00")])
    await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    plan = plan_for(submitted)
    await deliver(order_service, ROUTING_PLANS, plan)
    # Inventory is reserving: the cancellation waits for its answer.
    assert await deliver(order_service, CHANNEL_ORDERS, samples.cancellation_requested(submitted, {"1": 2})) == []
    emitted = await deliver(order_service, INVENTORY_ALLOCATIONS, reserved(plan))
    assert types(emitted) == [
        "oms.order.status_changed.v1",  # paid -> awaiting_fulfillment: status changes come first
        "oms.order.lines_cancelled.v1",
        "oms.order.refund_issued.v1",
        "oms.fulfillment.requested.v1",
    ]
    [cancelled] = data_of(emitted, "oms.order.lines_cancelled.v1")
    shipment_id = plan.data.shipments[0].shipment_id
    assert [(u.from_state, u.quantity, u.fulfillment_id) for u in cancelled.units] == [("reserved", 2, shipment_id)]
    [request] = data_of(emitted, "oms.fulfillment.requested.v1")
    assert [(x.line_id, x.quantity) for x in request.lines] == [("1", 1)]


async def test_a_plan_for_an_order_cancelled_before_it_arrived_gives_back_what_inventory_reserves(order_service):
    submitted = samples.order_submitted("cancel-before-plan", [("TENT", 1, "99.00"), ("LAMP", 3, "10.00")])
    await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    emitted = await deliver(order_service, CHANNEL_ORDERS, samples.cancellation_requested(submitted))
    assert types(emitted) == [
        "oms.order.status_changed.v1",
        "oms.order.lines_cancelled.v1",
        "oms.order.refund_issued.v1",
    ]
    # Routing planned the paid order meanwhile: inventory queues the lamps and reserves the tent.
    plan = mixed_plan(submitted, [("1", 1)], [("2", 3)])
    [queue] = await deliver(order_service, ROUTING_PLANS, plan)
    [reservation] = await deliver(order_service, INVENTORY_ALLOCATIONS, reserved(plan))
    for given_back, state in ((queue, "backordered"), (reservation, "reserved")):
        data = given_back.event.data
        assert given_back.event.type == "oms.order.lines_cancelled.v1" and data.refund_amount == 0
        assert data.actor == "service:order" and data.status is OrderStatus.cancelled
        assert {u.from_state for u in data.units} == {state}
    assert [(u.line_id, u.quantity) for u in reservation.event.data.units] == [("1", 1)]
    order = await view(order_service, submitted.data.order_id)
    assert order["status"] == "cancelled" and order["fulfillments"][0]["status"] == "cancelled"
    assert order["refunded_total"] == order["paid_amount"]
