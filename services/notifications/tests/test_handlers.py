from __future__ import annotations

from datetime import UTC, datetime

from oms_contracts.order import StatusChanged, StatusChangedData
from oms_contracts.topics import ORDER_EVENTS
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
