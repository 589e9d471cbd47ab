from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime
from urllib.parse import parse_qsl, urlsplit

import pytest

from oms_contracts.inventory import ShipmentReserved, ShipmentReservedData
from oms_contracts.order import StatusChanged, StatusChangedData
from oms_contracts.topics import INVENTORY_ALLOCATIONS, INVENTORY_STOCK, ORDER_EVENTS, ROUTING_PLANS
from oms_notifications import store
from oms_notifications.app import create_service
from oms_notifications.domain import contact_of, tell
from oms_notifications.rendering import render
from oms_runtime.database import driver
from oms_runtime.links import LinkCheck, verify
from oms_runtime.testing import deliver


async def test_accepted_order_queues_one_pending_confirmation_to_the_customer(service, pg, order_accepted):
    event = order_accepted("1001", email="ada@example.com")

    emitted = await deliver(service, ORDER_EVENTS, event)

    rows = await pg.fetch("SELECT * FROM notifications")
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "pending"
    assert row["attempts"] == 0
    assert row["template"] == "order_confirmation"
    assert row["channel"] == "email"
    assert row["recipient"] == "ada@example.com"
    assert row["order_id"] == event.data.order_id
    assert row["cause_event_id"] == event.id
    assert row["subject"] == "Your order 1001 is confirmed"
    assert "SKU-RED-MUG" in row["body_text"] and "SKU-RED-MUG" in row["body_html"]
    assert row["next_attempt_at"] <= datetime.now(UTC)
    # Nothing is announced before the mail has actually gone out.
    assert emitted == []


async def test_accepted_order_remembers_the_customers_contact(service, pg, order_accepted):
    event = order_accepted("1002", email="grace@example.org", name="Grace")

    await deliver(service, ORDER_EVENTS, event)

    contact = await pg.fetchrow("SELECT * FROM order_contacts WHERE order_id = $1", event.data.order_id)
    assert (contact["email"], contact["name"], contact["locale"]) == ("grace@example.org", "Grace", "en")
    assert (contact["channel"], contact["external_order_id"]) == ("web-eu", "1002")


async def test_the_same_accepted_event_delivered_twice_queues_one_confirmation(service, pg, order_accepted):
    event = order_accepted("1003")

    await deliver(service, ORDER_EVENTS, event)
    await deliver(service, ORDER_EVENTS, event)
    await deliver(service, ORDER_EVENTS, event, event)

    assert await pg.fetchval("SELECT count(*) FROM notifications") == 1


async def test_a_confirmation_already_queued_for_an_event_is_never_queued_again(service, pg, order_accepted):
    # Even when the inbox no longer remembers the event (e.g. cleaned up), the (event, template) key holds.
    event = order_accepted("1004")
    await deliver(service, ORDER_EVENTS, event)
    await pg.execute("DELETE FROM inbox")

    await deliver(service, ORDER_EVENTS, event)

    assert await pg.fetchval("SELECT count(*) FROM notifications") == 1


async def test_a_batch_of_orders_queues_one_confirmation_each(service, pg, order_accepted):
    events = [order_accepted(str(n), email=f"customer{n}@example.com") for n in range(1, 51)]

    await deliver(service, ORDER_EVENTS, *events)

    rows = await pg.fetch("SELECT recipient, cause_event_id FROM notifications")
    assert sorted(r["recipient"] for r in rows) == sorted(f"customer{n}@example.com" for n in range(1, 51))
    assert {r["cause_event_id"] for r in rows} == {e.id for e in events}
    assert await pg.fetchval("SELECT count(*) FROM order_contacts") == 50


async def test_order_events_without_a_notification_yet_are_skipped_not_dead_lettered(service, pg, order_accepted):
    order_id = order_accepted().data.order_id
    changed = StatusChanged(
        source="/oms/order",
        subject=str(order_id),
        data=StatusChangedData(
            order_id=order_id, from_status=None, to_status="pending", actor="order", at=datetime.now(UTC)
        ),
    )

    emitted = await deliver(service, ORDER_EVENTS, changed)

    assert emitted == []
    assert await pg.fetchval("SELECT count(*) FROM notifications") == 0


async def test_an_invalid_order_event_goes_to_the_dead_letter_topic(service, pg):
    emitted = await deliver(service, ORDER_EVENTS, b'{"type": "oms.order.accepted.v1", "data": {}}')

    assert [e.topic for e in emitted] == ["oms.dlq.v1"]
    assert await pg.fetchval("SELECT count(*) FROM notifications") == 0


# Every step of an order: each event queues exactly one message to the contact from the order's acceptance.


async def accepted(service, order_accepted, number: str = "2001", **customer):
    event = order_accepted(number, **customer)
    await deliver(service, ORDER_EVENTS, event)
    return event.data.order_id


async def queued(pg, template: str) -> list:
    return await pg.fetch("SELECT * FROM notifications WHERE template = $1", template)


@pytest.mark.parametrize(
    ("topic", "builder", "template"),
    [
        (ROUTING_PLANS, "fulfillment_planned", "split_prewarning"),
        (INVENTORY_ALLOCATIONS, "inventory_backorder_queued", "backorder_notice"),
        (ORDER_EVENTS, "fulfillment_shipped", "shipped"),
        (ORDER_EVENTS, "fulfillment_delivered", "delivered"),
    ],
)
async def test_each_step_queues_exactly_one_message_to_the_orders_contact_and_a_redelivery_none(
    service, pg, order_accepted, request, topic, builder, template
):
    build = request.getfixturevalue(builder)
    order_id = await accepted(service, order_accepted, email="erika@example.de", name="Erika", locale="de-DE")
    event = build(order_id)

    emitted = await deliver(service, topic, event)
    await deliver(service, topic, event)
    await deliver(service, topic, event, event)

    assert emitted == []
    [row] = await queued(pg, template)
    assert (row["recipient"], row["recipient_name"], row["locale"]) == ("erika@example.de", "Erika", "de-DE")
    assert (row["status"], row["attempts"], row["order_id"], row["cause_event_id"]) == (
        "pending",
        0,
        order_id,
        event.id,
    )
    assert "2001" in row["subject"]
    assert row["cause_at"] == event.time
    assert row["body_text"] and row["body_html"].startswith("<!DOCTYPE html>")
    assert await pg.fetchval("SELECT count(*) FROM notifications") == 2  # and the confirmation


async def test_a_plan_with_one_shipment_or_a_replan_queues_nothing(service, pg, order_accepted, fulfillment_planned):
    order_id = await accepted(service, order_accepted)

    await deliver(
        service,
        ROUTING_PLANS,
        fulfillment_planned(order_id, [[("A", 1), ("B", 1)]], backordered=[("C", 1)]),
        fulfillment_planned(order_id, [[("A", 1)], [("B", 1)]], attempt=2),
    )

    assert await queued(pg, "split_prewarning") == []
    assert await pg.fetchval("SELECT count(*) FROM notices_awaiting_contact") == 0


async def test_allocations_other_than_a_queued_backorder_are_skipped_not_dead_lettered(service, pg, order_accepted):
    order_id = await accepted(service, order_accepted)
    reserved = ShipmentReserved(
        source="/oms/inventory",
        subject=str(order_id),
        data=ShipmentReservedData(
            order_id=order_id,
            shipment_id=uuid.uuid4(),
            source_code="WH-1",
            lines=[{"line_id": "1", "sku": "A", "quantity": 1}],
            plan_id=uuid.uuid4(),
            ship_by=date(2026, 12, 1),
        ),
    )

    assert await deliver(service, INVENTORY_ALLOCATIONS, reserved) == []
    assert await pg.fetchval("SELECT count(*) FROM notifications") == 1  # the confirmation only


@pytest.mark.parametrize(
    ("topic", "builder", "template"),
    [
        (ROUTING_PLANS, "fulfillment_planned", "split_prewarning"),
        (INVENTORY_ALLOCATIONS, "inventory_backorder_queued", "backorder_notice"),
        (ORDER_EVENTS, "fulfillment_shipped", "shipped"),
        (ORDER_EVENTS, "order_status_changed", "payment_failed"),
        (ORDER_EVENTS, "order_lines_returned", "return_processed"),
    ],
)
async def test_an_event_before_its_orders_acceptance_waits_and_is_queued_once_the_contact_arrives(
    service, pg, order_accepted, request, topic, builder, template
):
    build = request.getfixturevalue(builder)
    acceptance = order_accepted("3001", email="erika@example.de", name="Erika", locale="de_AT")
    order_id = acceptance.data.order_id
    early = build(order_id)

    emitted = await deliver(service, topic, early)
    await deliver(service, topic, early)  # redelivered while it waits

    # Kept, not dead-lettered, and nothing to send yet.
    assert emitted == []
    assert await pg.fetchval("SELECT count(*) FROM notifications") == 0
    [waiting] = await pg.fetch("SELECT * FROM notices_awaiting_contact")
    assert (waiting["event_id"], waiting["template"], waiting["order_id"]) == (early.id, template, order_id)

    await deliver(service, ORDER_EVENTS, acceptance)

    rows = await pg.fetch("SELECT * FROM notifications ORDER BY stage")
    assert [r["template"] for r in rows] == ["order_confirmation", template]
    late = rows[1]
    assert (late["recipient"], late["locale"], late["cause_event_id"]) == ("erika@example.de", "de_AT", early.id)
    assert "3001" in late["subject"]
    assert late["status"] == "pending"
    assert await pg.fetchval("SELECT count(*) FROM notices_awaiting_contact") == 0

    # Delivered again after it was sent on its way: still one message.
    await pg.execute("DELETE FROM inbox")
    await deliver(service, topic, early)
    assert len(await queued(pg, template)) == 1
    assert await pg.fetchval("SELECT count(*) FROM notices_awaiting_contact") == 0


async def test_an_acceptance_and_a_parcel_of_the_same_order_in_one_batch_both_queue(
    service, pg, order_accepted, fulfillment_shipped, fulfillment_delivered
):
    acceptance = order_accepted("4001")
    order_id = acceptance.data.order_id

    await deliver(service, ORDER_EVENTS, acceptance, fulfillment_shipped(order_id), fulfillment_delivered(order_id))

    assert sorted(r["template"] for r in await pg.fetch("SELECT template FROM notifications")) == [
        "delivered",
        "order_confirmation",
        "shipped",
    ]
    assert await pg.fetchval("SELECT count(*) FROM notices_awaiting_contact") == 0


async def test_an_acceptance_consumed_while_a_plan_for_its_order_is_being_kept_waits_for_it_and_queues_both(
    service, pg, order_accepted, fulfillment_planned
):
    # The race the order locks exist for: the plans consumer keeps a pre-warning (no contact yet) while the order
    # events consumer stores the contact. Neither sees the other's uncommitted rows; without the lock the
    # pre-warning would wait forever.
    acceptance = order_accepted("5001")
    order_id = acceptance.data.order_id
    plan = fulfillment_planned(order_id)
    async with service.database.transaction() as conn:
        raw = await driver(conn)
        await store.lock_orders(raw, [order_id])
        told = tell([plan], {})
        await store.await_contact(raw, told.awaiting_contact, [None])

        acceptance_consumed = asyncio.create_task(deliver(service, ORDER_EVENTS, acceptance))
        while not await pg.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"):
            assert not acceptance_consumed.done()
            await asyncio.sleep(0.01)
    await acceptance_consumed

    assert sorted(r["template"] for r in await pg.fetch("SELECT template FROM notifications")) == [
        "order_confirmation",
        "split_prewarning",
    ]
    assert await pg.fetchval("SELECT count(*) FROM notices_awaiting_contact") == 0


async def test_a_batch_of_plans_for_many_orders_queues_one_prewarning_each_and_keeps_the_rest(
    service, pg, order_accepted, fulfillment_planned
):
    known = [await accepted(service, order_accepted, str(n), email=f"c{n}@example.com") for n in range(6000, 6020)]
    unknown = [order_accepted(str(n)).data.order_id for n in range(7000, 7020)]

    await deliver(service, ROUTING_PLANS, *(fulfillment_planned(order_id) for order_id in known + unknown))

    rows = await queued(pg, "split_prewarning")
    assert sorted(r["order_id"] for r in rows) == sorted(known)
    waiting = await pg.fetch("SELECT order_id FROM notices_awaiting_contact")
    assert sorted(r["order_id"] for r in waiting) == sorted(unknown)


# After the sale: cancellations, refunds, returns and refusals, to the customer; stuck orders and low stock, to the
# operators.


@pytest.mark.parametrize(
    ("builder", "template"),
    [
        ("order_lines_cancelled", "lines_cancelled"),
        ("order_refund_issued", "refund_issued"),
        ("order_lines_returned", "return_processed"),
        ("order_cancellation_rejected", "cancellation_refused"),
        ("order_status_changed", "payment_failed"),
    ],
)
async def test_each_event_after_the_sale_queues_exactly_one_mail_to_the_customer_and_a_redelivery_none(
    service, pg, order_accepted, request, builder, template
):
    build = request.getfixturevalue(builder)
    order_id = await accepted(service, order_accepted, email="erika@example.de", name="Erika", locale="de-DE")
    event = build(order_id)

    emitted = await deliver(service, ORDER_EVENTS, event)
    await deliver(service, ORDER_EVENTS, event)
    await pg.execute("DELETE FROM inbox")
    await deliver(service, ORDER_EVENTS, event, event)

    assert emitted == []
    [row] = await queued(pg, template)
    assert (row["recipient"], row["locale"], row["audience"], row["order_id"]) == (
        "erika@example.de",
        "de-DE",
        "customer",
        order_id,
    )
    assert (row["status"], row["cause_event_id"], row["cause_at"]) == ("pending", event.id, event.time)
    assert "2001" in row["subject"]


async def test_a_paid_orders_cancellation_mails_order_cancelled_with_its_refund_once_and_then_the_refund(
    service, pg, order_accepted, order_lines_cancelled, order_status_changed, order_refund_issued
):
    order_id = await accepted(service, order_accepted)
    # What the order service publishes for the last units of a paid order, in one transaction.
    last = order_lines_cancelled(order_id, [("1", 2), ("2", 1)], refund="52.47", grand_total="0", status="cancelled")
    change = order_status_changed(order_id, "awaiting_fulfillment", note="cancelled: customer asked", cause_type="http")
    money_back = order_refund_issued(order_id, "52.47", refunded_total="52.47")

    await deliver(service, ORDER_EVENTS, change, last, money_back)

    rows = await pg.fetch("SELECT template, cause_event_id, body_text FROM notifications ORDER BY stage, cause_at")
    assert [r["template"] for r in rows] == ["order_confirmation", "order_cancelled", "refund_issued"]
    assert rows[1]["cause_event_id"] == last.id
    assert "We will refund 52.47 EUR" in rows[1]["body_text"]


async def test_an_unpaid_orders_cancellation_told_in_two_batches_still_makes_one_cancelled_mail(
    service, pg, order_accepted, order_lines_cancelled, order_status_changed
):
    order_id = await accepted(service, order_accepted)
    change = order_status_changed(order_id, "pending", note="cancelled: changed my mind", cause_type="http")
    last = order_lines_cancelled(order_id, [("1", 2), ("2", 1)], refund="0", grand_total="0", status="cancelled")

    await deliver(service, ORDER_EVENTS, change)
    await deliver(service, ORDER_EVENTS, last)

    [row] = await queued(pg, "order_cancelled")
    assert row["cause_event_id"] == change.id
    assert await pg.fetchval("SELECT count(*) FROM notifications") == 2


async def test_the_store_keeps_one_cancelled_mail_per_order_also_within_one_statement(
    service, pg, order_accepted, order_status_changed
):
    # The domain already keeps one per batch; the unique index is what holds across batches and consumers.
    contact = contact_of(order_accepted("2101").data)
    failed = order_status_changed(contact.order_id, "payment_processing")
    cancelled = order_status_changed(contact.order_id, "pending", note="cancelled", cause_type="http")
    notices = [tell([e], {contact.order_id: contact}).notices[0] for e in (failed, cancelled)]

    async with service.database.transaction() as conn:
        queued_ids = await store.queue(
            await driver(conn), [render(n) for n in notices], [None, None], datetime.now(UTC)
        )

    assert queued_ids == [notices[0].notification_id]
    assert [r["template"] for r in await pg.fetch("SELECT template FROM notifications")] == ["payment_failed"]


async def test_units_given_back_after_their_cancellation_make_no_second_cancelled_mail(
    service, pg, order_accepted, order_lines_cancelled
):
    order_id = await accepted(service, order_accepted)
    cancelled = order_lines_cancelled(order_id, [("2", 1)], refund="7.50", actor="channel:web-eu:customer")
    # Routing planned the paid order before it heard of the cancellation; the order service gives the unit back.
    given_back = order_lines_cancelled(
        order_id,
        [("2", 1)],
        refund="0.00",
        actor="service:order",
        reason="cancelled before it was placed at WH-EAST: given back",
        units=[("2", "SKU-TEA-500G", 1, "reserved")],
    )

    await deliver(service, ORDER_EVENTS, cancelled)
    await deliver(service, ORDER_EVENTS, given_back)

    [row] = await queued(pg, "lines_cancelled")
    assert row["cause_event_id"] == cancelled.id
    assert await pg.fetchval("SELECT count(*) FROM notices_awaiting_contact") == 0


async def test_a_cancellation_refused_to_customer_service_mails_nobody(
    service, pg, order_accepted, order_cancellation_rejected
):
    order_id = await accepted(service, order_accepted)

    await deliver(service, ORDER_EVENTS, order_cancellation_rejected(order_id, requested_by="cs-ana"))

    assert await queued(pg, "cancellation_refused") == []
    assert await pg.fetchval("SELECT count(*) FROM notices_awaiting_contact") == 0


async def test_lines_cancelled_before_the_orders_acceptance_wait_and_name_the_skus_of_the_accepted_order(
    service, pg, order_accepted, order_lines_cancelled
):
    acceptance = order_accepted("2201")
    order_id = acceptance.data.order_id
    early = order_lines_cancelled(order_id, [("2", 1)])

    await deliver(service, ORDER_EVENTS, early)
    assert await pg.fetchval("SELECT count(*) FROM notices_awaiting_contact") == 1
    await deliver(service, ORDER_EVENTS, acceptance)

    [row] = await queued(pg, "lines_cancelled")
    assert "- 1 x SKU-TEA-500G\n" in row["body_text"]
    assert await pg.fetchval("SELECT count(*) FROM notices_awaiting_contact") == 0


async def test_the_backorder_notice_carries_the_signed_wait_or_cancel_link(
    service, pg, order_accepted, inventory_backorder_queued, settings
):
    order_id = await accepted(service, order_accepted)
    queued_event = inventory_backorder_queued(order_id)

    await deliver(service, INVENTORY_ALLOCATIONS, queued_event)

    [row] = await queued(pg, "backorder_notice")
    url = next(w for w in row["body_text"].split() if "/backorders?" in w)
    assert url.startswith(f"http://127.0.0.1:8081/customer/orders/{order_id}/backorders?")
    params = dict(parse_qsl(urlsplit(url).query))
    key = settings.customer_link_key.get_secret_value().encode()
    assert verify(key, order_id, params, now=queued_event.time) == (LinkCheck.valid, ["1"])


async def test_a_stuck_order_queues_one_alert_to_every_operator_without_waiting_for_a_contact(
    service, pg, order_stuck, settings
):
    order_id = uuid.uuid4()  # an order whose acceptance this service never saw
    event = order_stuck(order_id)

    emitted = await deliver(service, ORDER_EVENTS, event)
    await deliver(service, ORDER_EVENTS, event)

    assert emitted == []
    [row] = await queued(pg, "order_stuck")
    assert (row["recipient"], row["audience"], row["order_id"]) == (
        ", ".join(settings.ops_email),
        "operators",
        order_id,
    )
    assert (row["locale"], row["status"], row["cause_event_id"]) == ("en", "pending", event.id)
    assert f"http://127.0.0.1:8081/orders/{order_id}" in row["body_text"]
    assert await pg.fetchval("SELECT count(*) FROM notices_awaiting_contact") == 0


async def test_a_stuck_orders_alert_names_its_order_number_once_the_contact_is_known(
    service, pg, order_accepted, order_stuck
):
    order_id = await accepted(service, order_accepted, "2301")

    await deliver(service, ORDER_EVENTS, order_stuck(order_id))

    [row] = await queued(pg, "order_stuck")
    assert row["subject"].startswith("Stuck order 2301:")


async def test_low_stock_queues_one_alert_and_stock_level_changes_nothing(
    service, pg, inventory_low_stock, stock_level_changed
):
    levels = [stock_level_changed(f"SKU-{n}", n) for n in range(300)]
    alarm = inventory_low_stock("SKU-RED-MUG", "WH-1", 2, 5)

    assert await deliver(service, INVENTORY_STOCK, *levels[:150], alarm, *levels[150:]) == []
    await deliver(service, INVENTORY_STOCK, alarm)

    [row] = await pg.fetch("SELECT * FROM notifications")
    assert (row["template"], row["order_id"], row["audience"]) == ("low_stock", None, "operators")
    assert row["subject"] == "Low stock: SKU-RED-MUG at WH-1 (2 available)"


async def test_a_batch_of_stock_level_changes_alone_writes_nothing_of_ours(service, pg, stock_level_changed):
    await deliver(service, INVENTORY_STOCK, *(stock_level_changed(f"SKU-{n}", n) for n in range(500)))

    assert await pg.fetchval("SELECT count(*) FROM notifications") == 0
    assert await pg.fetchval("SELECT count(*) FROM order_contacts") == 0


async def test_without_operators_configured_alerts_are_not_queued(settings, pg, order_stuck, inventory_low_stock):
    service = create_service(settings.model_copy(update={"ops_email": []}))
    try:
        await deliver(service, ORDER_EVENTS, order_stuck(uuid.uuid4()))
        await deliver(service, INVENTORY_STOCK, inventory_low_stock())
    finally:
        await service.database.dispose()

    assert await pg.fetchval("SELECT count(*) FROM notifications") == 0


async def test_status_changes_to_a_status_no_message_is_for_are_passed_over_unread(
    service, pg, order_accepted, order_status_changed
):
    """Four in five of an order's status changes lead nowhere here: by the header that names the new status they are
    not even decoded or remembered in the inbox; a cancellation is."""
    order_id = await accepted(service, order_accepted)
    paid = order_status_changed(order_id, "payment_processing", "paid", note=None, cause_type=None)
    cancelled = order_status_changed(order_id)
    inbox = await pg.fetchval("SELECT count(*) FROM inbox")

    await deliver(service, ORDER_EVENTS, paid, cancelled)

    assert await pg.fetchval("SELECT count(*) FROM inbox") == inbox + 1
    [row] = await queued(pg, "payment_failed")
    assert row["cause_event_id"] == cancelled.id
