from __future__ import annotations

import asyncio
import sys
import threading
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from oms_contracts.notification import NotificationFailed, NotificationSent
from oms_contracts.topics import INVENTORY_ALLOCATIONS, INVENTORY_STOCK, NOTIFICATIONS, ORDER_EVENTS, ROUTING_PLANS
from oms_notifications import store
from oms_notifications.domain import ClaimPolicy, Outcome, RetryPolicy
from oms_notifications.sender import Sender, SmtpServer
from oms_runtime.database import driver
from oms_runtime.testing import deliver, take_outbox

CONFIRM = "order_confirmation"


def sender_for(service, port: int, **options) -> Sender:
    return Sender(service.database, SmtpServer(port=port, timeout=5.0), after_commit=service.relay.wake, **options)


async def test_confirmation_reaches_the_customer_over_smtp_and_is_recorded_as_sent(
    service, pg, order_accepted, smtp_server
):
    mail, port = smtp_server()
    event = order_accepted("WEB-1001", email="ada@example.com", name="Ada Lovelace")
    await deliver(service, ORDER_EVENTS, event)

    assert await sender_for(service, port).send_due() == 1

    assert mail.recipients == [["ada@example.com"]]
    [message] = mail.received
    assert message["To"] == "Ada Lovelace <ada@example.com>"
    assert message["From"] == "OMS <orders@oms.local>"
    assert message["Subject"] == "Your order WEB-1001 is confirmed"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    for body in (text, html):
        assert "WEB-1001" in body
        assert "SKU-RED-MUG" in body and "SKU-TEA-500G" in body
        assert "52.47 EUR" in body
    assert "- 2 x SKU-RED-MUG at 19.99 EUR = 39.98 EUR" in text

    row = await pg.fetchrow("SELECT * FROM notifications")
    assert row["status"] == "sent"
    assert row["attempts"] == 1
    assert row["sent_at"] is not None
    assert message["Message-ID"] == f"<{row['id']}@oms.local>"

    [emitted] = await take_outbox(service)
    assert emitted.topic == NOTIFICATIONS.name
    assert emitted.key == str(event.data.order_id)
    sent = emitted.event
    assert isinstance(sent, NotificationSent)
    assert sent.subject == str(event.data.order_id)
    assert sent.data.notification_id == row["id"]
    assert sent.data.order_id == event.data.order_id
    assert sent.data.cause_event_id == event.id
    assert (sent.data.template, sent.data.recipient, sent.data.attempts) == ("order_confirmation", "ada@example.com", 1)
    assert sent.data.subject == "Your order WEB-1001 is confirmed"


async def test_a_sent_notification_is_not_sent_again(service, pg, order_accepted, smtp_server):
    mail, port = smtp_server()
    await deliver(service, ORDER_EVENTS, order_accepted())
    sender = sender_for(service, port)

    await sender.send_due()
    assert await sender.send_due() == 0

    assert len(mail.received) == 1


async def test_a_pass_sends_over_the_connection_the_pass_before_left_open(service, pg, order_accepted, smtp_server):
    mail, port = smtp_server()
    sender = sender_for(service, port)
    for number in ("WEB-1", "WEB-2"):
        await deliver(service, ORDER_EVENTS, order_accepted(number))
        assert await sender.send_due() == 1

    assert [m["Subject"] for m in mail.received] == ["Your order WEB-1 is confirmed", "Your order WEB-2 is confirmed"]
    assert mail.greetings == 1, "one connection, one EHLO"


async def test_smtp_down_keeps_the_message_pending_for_a_later_try(service, pg, order_accepted, closed_port):
    await deliver(service, ORDER_EVENTS, order_accepted())
    before = datetime.now(UTC)

    assert await sender_for(service, closed_port).send_due() == 1

    row = await pg.fetchrow("SELECT * FROM notifications")
    assert row["status"] == "pending"
    assert row["attempts"] == 1
    assert row["next_attempt_at"] > before
    assert f"127.0.0.1:{closed_port}" in row["last_error"]
    assert await take_outbox(service) == []
    # Not due yet: the next pass leaves it alone.
    assert await sender_for(service, closed_port).send_due() == 0


async def test_a_temporary_refusal_is_retried_later(service, pg, order_accepted, smtp_server):
    _, port = smtp_server(refuse_with="451 4.3.0 Mailbox temporarily unavailable")
    await deliver(service, ORDER_EVENTS, order_accepted())

    await sender_for(service, port).send_due()

    row = await pg.fetchrow("SELECT * FROM notifications")
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert "451" in row["last_error"]
    assert await take_outbox(service) == []


async def test_a_permanent_refusal_fails_the_message_at_once_and_says_so(service, pg, order_accepted, smtp_server):
    _, port = smtp_server(refuse_with="550 5.1.1 No such user here")
    event = order_accepted(email="nobody@example.com")
    await deliver(service, ORDER_EVENTS, event)

    await sender_for(service, port, policy=RetryPolicy(max_attempts=8)).send_due()

    row = await pg.fetchrow("SELECT * FROM notifications")
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert "550" in row["last_error"]
    [emitted] = await take_outbox(service)
    failed = emitted.event
    assert isinstance(failed, NotificationFailed)
    assert emitted.key == str(event.data.order_id)
    assert failed.data.recipient == "nobody@example.com"
    assert failed.data.attempts == 1
    assert "550" in failed.data.error


async def test_a_message_fails_after_max_attempts_of_smtp_down(service, pg, order_accepted, closed_port, clock):
    await deliver(service, ORDER_EVENTS, order_accepted())
    clock.now = datetime.now(UTC)
    sender = sender_for(service, closed_port, policy=RetryPolicy(max_attempts=3), clock=clock)

    tries = 0
    while await sender.send_due():
        tries += 1
        clock.now += timedelta(minutes=20)

    assert tries == 3
    row = await pg.fetchrow("SELECT * FROM notifications")
    assert (row["status"], row["attempts"]) == ("failed", 3)
    [emitted] = await take_outbox(service)
    assert isinstance(emitted.event, NotificationFailed)
    assert emitted.event.data.attempts == 3


async def test_a_message_gets_through_once_the_smtp_server_is_back(
    service, pg, order_accepted, smtp_server, closed_port, clock
):
    await deliver(service, ORDER_EVENTS, order_accepted())
    clock.now = datetime.now(UTC)
    assert await sender_for(service, closed_port, clock=clock).send_due() == 1
    mail, port = smtp_server(port=closed_port)

    clock.now += timedelta(seconds=1)
    assert await sender_for(service, port, clock=clock).send_due() == 0  # its backoff has not passed yet
    clock.now += timedelta(seconds=2)
    assert await sender_for(service, port, clock=clock).send_due() == 1

    assert len(mail.received) == 1
    row = await pg.fetchrow("SELECT * FROM notifications")
    assert (row["status"], row["attempts"]) == ("sent", 2)
    [emitted] = await take_outbox(service)
    assert emitted.event.data.attempts == 2


async def test_one_refused_recipient_does_not_hold_back_the_others_on_the_same_connection(
    service, pg, order_accepted, smtp_server
):
    mail, port = smtp_server(refuse_with="550 5.1.1 No such user here", refused={"c3@example.com", "c7@example.com"})
    await deliver(service, ORDER_EVENTS, *(order_accepted(str(n), email=f"c{n}@example.com") for n in range(10)))

    await sender_for(service, port, connections=1).send_due()

    assert sorted(r[0] for r in mail.recipients) == sorted(f"c{n}@example.com" for n in range(10) if n not in (3, 7))
    rows = await pg.fetch("SELECT recipient, status FROM notifications")
    assert {r["recipient"] for r in rows if r["status"] == "failed"} == {"c3@example.com", "c7@example.com"}
    assert sum(r["status"] == "sent" for r in rows) == 8
    events = [e.event for e in await take_outbox(service)]
    assert sum(isinstance(e, NotificationSent) for e in events) == 8
    assert {e.data.recipient for e in events if isinstance(e, NotificationFailed)} == {
        "c3@example.com",
        "c7@example.com",
    }


async def test_two_senders_never_send_the_same_notification(service, pg, order_accepted, smtp_server):
    mail, port = smtp_server(delay=0.02)
    await deliver(service, ORDER_EVENTS, *(order_accepted(str(n), email=f"c{n}@example.com") for n in range(40)))
    first = sender_for(service, port, batch_size=10, connections=2)
    second = sender_for(service, port, batch_size=10, connections=2)

    async def drain(sender: Sender) -> int:
        sent = 0
        while tried := await sender.send_due():
            sent += tried
        return sent

    by_first, by_second = await asyncio.gather(drain(first), drain(second))

    assert by_first > 0 and by_second > 0  # they really did work side by side

    ids = [m["Message-ID"] for m in mail.received]
    assert len(ids) == len(set(ids)) == 40
    assert await pg.fetchval("SELECT count(*) FROM notifications WHERE status = 'sent' AND attempts = 1") == 40
    sent = await take_outbox(service)
    assert len({e.event.data.notification_id for e in sent}) == len(sent) == 40


async def test_a_woken_sender_sends_without_waiting_for_its_tick(service, pg, order_accepted, smtp_server):
    mail, port = smtp_server()
    sender = sender_for(service, port, interval=60.0)
    running = asyncio.create_task(sender.run())
    try:
        await asyncio.sleep(0.1)  # the first pass found nothing; the next tick is a minute away
        await deliver(service, ORDER_EVENTS, order_accepted())
        sender.wake()
        for _ in range(100):
            if mail.received:
                break
            await asyncio.sleep(0.05)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    assert len(mail.received) == 1


# The messages of every later step, and the order in which one order's messages reach the customer.


async def drain(sender: Sender) -> int:
    """Send until nothing is due; returns how many passes sent something."""
    passes = 0
    while await sender.send_due():
        passes += 1
    return passes


async def test_an_orders_mails_reach_the_customer_in_the_order_of_its_story(
    service,
    pg,
    order_accepted,
    fulfillment_planned,
    inventory_backorder_queued,
    fulfillment_shipped,
    fulfillment_delivered,
    smtp_server,
):
    mail, port = smtp_server()
    acceptance = order_accepted("8001", email="ada@example.com")
    order_id = acceptance.data.order_id
    # The plan and the backorder overtake the acceptance (other topics); the parcels follow it on its own topic.
    await deliver(service, ROUTING_PLANS, fulfillment_planned(order_id, backordered=[("SKU-LATER", 1)]))
    await deliver(service, INVENTORY_ALLOCATIONS, inventory_backorder_queued(order_id, [("SKU-LATER", 1, None)]))
    await deliver(service, ORDER_EVENTS, acceptance)
    await deliver(service, ORDER_EVENTS, fulfillment_shipped(order_id), fulfillment_delivered(order_id))

    # One message of an order per pass, each once the one before it is sent.
    assert await drain(sender_for(service, port)) == 5

    assert [m["Subject"] for m in mail.received] == [
        "Your order 8001 is confirmed",
        "Your order 8001 will arrive in 2 parcels",
        "Some items of your order 8001 will ship later",
        "Part of your order 8001 is on its way",
        "Your order 8001 has been delivered",
    ]
    assert mail.recipients == [["ada@example.com"]] * 5
    sent = [e.event for e in await take_outbox(service)]
    assert [e.data.template for e in sent] == [
        "order_confirmation",
        "split_prewarning",
        "backorder_notice",
        "shipped",
        "delivered",
    ]
    assert all(isinstance(e, NotificationSent) and e.data.order_id == order_id for e in sent)


async def test_a_later_mail_of_an_order_waits_while_an_earlier_one_is_retried(
    service, pg, order_accepted, fulfillment_planned, smtp_server, closed_port, clock
):
    acceptance = order_accepted("8002")
    await deliver(service, ORDER_EVENTS, acceptance)
    await deliver(service, ROUTING_PLANS, fulfillment_planned(acceptance.data.order_id))
    clock.now = datetime.now(UTC)

    assert await sender_for(service, closed_port, clock=clock).send_due() == 1

    rows = {r["template"]: r for r in await pg.fetch("SELECT template, status, attempts FROM notifications")}
    assert (rows["order_confirmation"]["status"], rows["order_confirmation"]["attempts"]) == ("pending", 1)
    assert (rows["split_prewarning"]["status"], rows["split_prewarning"]["attempts"]) == ("pending", 0)

    mail, port = smtp_server(port=closed_port)
    clock.now += timedelta(seconds=3)
    assert await drain(sender_for(service, port, clock=clock)) == 2

    assert [m["Subject"] for m in mail.received] == [
        "Your order 8002 is confirmed",
        "Your order 8002 will arrive in 2 parcels",
    ]


async def test_a_mail_that_failed_for_good_no_longer_holds_back_the_next(
    service, pg, order_accepted, fulfillment_planned, smtp_server
):
    _, port = smtp_server(refuse_with="550 5.1.1 No such user here")
    acceptance = order_accepted("8003", email="gone@example.com")
    await deliver(service, ORDER_EVENTS, acceptance)
    await deliver(service, ROUTING_PLANS, fulfillment_planned(acceptance.data.order_id))

    assert await drain(sender_for(service, port)) == 2

    rows = await pg.fetch("SELECT template, status, attempts FROM notifications ORDER BY stage")
    assert [(r["template"], r["status"], r["attempts"]) for r in rows] == [
        ("order_confirmation", "failed", 1),
        ("split_prewarning", "failed", 1),
    ]


async def test_one_orders_waiting_mail_does_not_hold_back_another_orders(
    service, pg, order_accepted, fulfillment_planned, smtp_server
):
    mail, port = smtp_server(refuse_with="452 4.2.2 Mailbox full", refused={"full@example.com"})
    held_up, free = order_accepted("8004", email="full@example.com"), order_accepted("8005", email="ada@example.com")
    await deliver(service, ORDER_EVENTS, held_up, free)
    await deliver(
        service,
        ROUTING_PLANS,
        fulfillment_planned(held_up.data.order_id),
        fulfillment_planned(free.data.order_id),
    )

    await drain(sender_for(service, port))

    assert [m["Subject"] for m in mail.received] == [
        "Your order 8005 is confirmed",
        "Your order 8005 will arrive in 2 parcels",
    ]
    rows = await pg.fetch("SELECT template, attempts FROM notifications WHERE recipient = 'full@example.com'")
    assert {r["template"]: r["attempts"] for r in rows} == {"order_confirmation": 1, "split_prewarning": 0}


async def test_a_german_backorder_notice_reaches_the_customer_in_german(
    service, pg, order_accepted, inventory_backorder_queued, smtp_server
):
    mail, port = smtp_server()
    acceptance = order_accepted("8006", email="erika@example.de", name="Erika Müller", locale="de-DE")
    await deliver(service, ORDER_EVENTS, acceptance)
    await deliver(
        service,
        INVENTORY_ALLOCATIONS,
        inventory_backorder_queued(acceptance.data.order_id, [("SKU-ZELT", 1, date(2026, 12, 1))]),
    )

    await drain(sender_for(service, port))

    confirmation, notice = mail.received
    assert confirmation["Subject"] == "Ihre Bestellung 8006 ist bestätigt"
    assert notice["Subject"] == "Einige Artikel Ihrer Bestellung 8006 kommen später"
    assert notice["To"] == "Erika Müller <erika@example.de>"
    text = notice.get_body(("plain",)).get_content()
    html = notice.get_body(("html",)).get_content()
    assert "- 1 x SKU-ZELT: voraussichtlich vorrätig ab Dienstag, 1. Dezember 2026" in text
    assert "Dienstag, 1. Dezember 2026" in html
    assert '<html lang="de">' in html


async def test_a_shipped_mail_carries_the_parcels_items_what_is_to_come_and_its_tracking_link(
    service, pg, order_accepted, fulfillment_shipped, smtp_server
):
    mail, port = smtp_server()
    acceptance = order_accepted("8007")
    parcel = fulfillment_shipped(
        acceptance.data.order_id,
        [("SKU-RED-MUG", 2)],
        [("SKU-TEA-500G", 1)],
        tracking_url="https://track.example/00340434161094042557",
    )
    await deliver(service, ORDER_EVENTS, acceptance, parcel)

    await drain(sender_for(service, port))

    shipped = mail.received[1]
    assert shipped["Subject"] == "Part of your order 8007 is on its way"
    text = shipped.get_body(("plain",)).get_content().replace("\r\n", "\n")
    html = shipped.get_body(("html",)).get_content()
    assert "In this parcel:\n- 2 x SKU-RED-MUG\n" in text
    assert "Still to come:\n- 1 x SKU-TEA-500G\n" in text
    assert "https://track.example/00340434161094042557" in text
    assert '<a href="https://track.example/00340434161094042557">' in html


async def test_a_woken_sender_sends_an_orders_mails_one_after_another_without_waiting_for_its_tick(
    service, pg, order_accepted, fulfillment_planned, smtp_server
):
    mail, port = smtp_server()
    sender = sender_for(service, port, interval=60.0)
    running = asyncio.create_task(sender.run())
    try:
        await asyncio.sleep(0.1)  # the first pass found nothing; the next tick is a minute away
        acceptance = order_accepted("8008")
        await deliver(service, ORDER_EVENTS, acceptance)
        await deliver(service, ROUTING_PLANS, fulfillment_planned(acceptance.data.order_id))
        sender.wake()
        for _ in range(100):
            if len(mail.received) == 2:
                break
            await asyncio.sleep(0.05)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    assert [m["Subject"] for m in mail.received] == [
        "Your order 8008 is confirmed",
        "Your order 8008 will arrive in 2 parcels",
    ]


# After the sale, over a real SMTP server: the customer's mails in their story, the operators' alerts outside it.


async def test_a_cancellation_and_its_refund_reach_a_german_customer_in_the_order_they_happened(
    service, pg, order_accepted, order_lines_cancelled, order_refund_issued, smtp_server
):
    mail, port = smtp_server()
    acceptance = order_accepted("8101", email="erika@example.de", name="Erika Müller", locale="de-DE")
    order_id = acceptance.data.order_id
    cancelled = order_lines_cancelled(order_id, [("2", 1)], refund="1234.5", grand_total="39.98")
    # The refund is published at the very instant of its cancellation: its stage still puts it after.
    refunded = order_refund_issued(order_id, "1234.5", refunded_total="1234.5", at=cancelled.time)
    await deliver(service, ORDER_EVENTS, acceptance, refunded, cancelled)

    assert await drain(sender_for(service, port)) == 3

    assert [m["Subject"] for m in mail.received] == [
        "Ihre Bestellung 8101 ist bestätigt",
        "Artikel Ihrer Bestellung 8101 wurden storniert",
        "Erstattung von 1.234,50 EUR für Ihre Bestellung 8101",
    ]
    notice = mail.received[1]
    assert notice["To"] == "Erika Müller <erika@example.de>"
    text = notice.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "- 1 x SKU-TEA-500G\n" in text
    assert "Wir erstatten Ihnen dafür 1.234,50 EUR" in text
    assert "Ihre Bestellung kostet jetzt 39,98 EUR." in text
    assert "1.234,50 EUR" in notice.get_body(("html",)).get_content()
    sent = [e.event for e in await take_outbox(service)]
    assert [e.data.template for e in sent] == ["order_confirmation", "lines_cancelled", "refund_issued"]


async def test_a_stuck_order_alert_reaches_every_operator_in_one_mail_and_is_announced_as_sent(
    service, pg, order_stuck, settings, smtp_server
):
    mail, port = smtp_server()
    event = order_stuck(uuid.uuid4())
    await deliver(service, ORDER_EVENTS, event)

    assert await sender_for(service, port).send_due() == 1

    [message] = mail.received
    assert mail.recipients == [settings.ops_email]
    assert message["To"] == ", ".join(settings.ops_email)
    assert message["Subject"].startswith(f"Stuck order {event.data.order_id}: accepted, not shipped")
    assert message["X-OMS-Order-Id"] == str(event.data.order_id)
    assert f"http://127.0.0.1:8081/orders/{event.data.order_id}" in message.get_body(("plain",)).get_content()
    [emitted] = await take_outbox(service)
    assert emitted.key == str(event.data.order_id)
    assert isinstance(emitted.event, NotificationSent)
    assert (emitted.event.data.template, emitted.event.data.recipient) == ("order_stuck", ", ".join(settings.ops_email))


async def test_a_low_stock_alert_about_no_order_is_sent_and_keyed_by_its_notification(
    service, pg, inventory_low_stock, smtp_server
):
    mail, port = smtp_server()
    await deliver(service, INVENTORY_STOCK, inventory_low_stock("SKU-RED-MUG", "WH-1", 2, 5))

    assert await sender_for(service, port).send_due() == 1

    [message] = mail.received
    assert message["Subject"] == "Low stock: SKU-RED-MUG at WH-1 (2 available)"
    assert message["X-OMS-Order-Id"] is None
    [emitted] = await take_outbox(service)
    assert emitted.event.data.order_id is None
    assert emitted.key == str(emitted.event.data.notification_id)


async def test_an_alert_about_an_order_does_not_wait_behind_its_customers_mail_being_retried(
    service, pg, order_accepted, order_stuck, smtp_server
):
    mail, port = smtp_server(refuse_with="452 4.2.2 Mailbox full", refused={"full@example.com"})
    acceptance = order_accepted("8102", email="full@example.com")
    await deliver(service, ORDER_EVENTS, acceptance)
    await deliver(service, ORDER_EVENTS, order_stuck(acceptance.data.order_id))

    await drain(sender_for(service, port))

    assert [m["Subject"].split(":")[0] for m in mail.received] == ["Stuck order 8102"]
    rows = {r["template"]: r for r in await pg.fetch("SELECT template, status, attempts FROM notifications")}
    assert (rows["order_confirmation"]["status"], rows["order_confirmation"]["attempts"]) == ("pending", 1)
    assert rows["order_stuck"]["status"] == "sent"


async def test_an_alert_being_retried_does_not_hold_up_its_orders_customer_mails(
    service, pg, order_accepted, order_stuck, fulfillment_shipped, settings, smtp_server
):
    mail, port = smtp_server(refuse_with="451 4.3.0 Try again later", refused=set(settings.ops_email))
    acceptance = order_accepted("8103", email="ada@example.com")
    order_id = acceptance.data.order_id
    # The alert is queued first and is older than the customer's mails.
    await deliver(service, ORDER_EVENTS, order_stuck(order_id))
    await deliver(service, ORDER_EVENTS, acceptance, fulfillment_shipped(order_id))

    await drain(sender_for(service, port))

    assert [m["Subject"] for m in mail.received] == [
        "Your order 8103 is confirmed",
        "Part of your order 8103 is on its way",
    ]
    alert = await pg.fetchrow("SELECT status, attempts FROM notifications WHERE template = 'order_stuck'")
    assert (alert["status"], alert["attempts"]) == ("pending", 1)


async def test_an_alert_refused_for_one_operator_still_reaches_the_others_and_is_not_sent_again(
    service, pg, order_stuck, settings, smtp_server
):
    refused = settings.ops_email[0]
    mail, port = smtp_server(refuse_with="550 5.1.1 No such user here", refused={refused})
    await deliver(service, ORDER_EVENTS, order_stuck(uuid.uuid4()))

    await drain(sender_for(service, port))

    assert mail.recipients == [[a for a in settings.ops_email if a != refused]]
    assert await pg.fetchval("SELECT status FROM notifications") == "sent"


# At most once: claim (committed), send, record. Nothing that happens after a claim sends the message again.

CLAIMS = ClaimPolicy(timedelta(minutes=10))


async def test_a_commit_that_fails_after_the_send_does_not_send_the_mail_again(
    service, pg, order_accepted, smtp_server
):
    mail, port = smtp_server()
    event = order_accepted("9001")
    await deliver(service, ORDER_EVENTS, event)
    # The first commit that records a message as sent is refused by PostgreSQL at COMMIT (a deferred constraint
    # trigger; the sequence counts outside the transaction, so only the first one fails).
    await pg.execute(
        """
        CREATE SEQUENCE refused_commits;
        CREATE FUNCTION refuse_the_first_sent_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.status = 'sent' THEN
                IF nextval('refused_commits') = 1 THEN
                    RAISE EXCEPTION 'the commit that records the send is refused';
                END IF;
            END IF;
            RETURN NULL;
        END $$;
        CREATE CONSTRAINT TRIGGER refuse_the_first_sent_commit AFTER UPDATE ON notifications
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_the_first_sent_commit();
        """
    )
    try:
        sender = sender_for(service, port)
        with pytest.raises(Exception, match="the commit that records the send is refused"):
            await sender.send_due()

        assert len(mail.received) == 1
        row = await pg.fetchrow("SELECT status, claimed_by FROM notifications")
        assert (row["status"], row["claimed_by"]) == ("sending", sender.name)
        # Meanwhile another sender finds nothing to send: the message is claimed.
        assert await sender_for(service, port).send_due() == 0

        # The next pass records what the failed one knew, and claims nothing more.
        assert await sender.send_due() == 0
    finally:
        await pg.execute(
            """
            DROP TRIGGER refuse_the_first_sent_commit ON notifications;
            DROP FUNCTION refuse_the_first_sent_commit();
            DROP SEQUENCE refused_commits;
            """
        )

    assert len(mail.received) == 1
    row = await pg.fetchrow("SELECT status, attempts FROM notifications")
    assert (row["status"], row["attempts"]) == ("sent", 1)
    [emitted] = await take_outbox(service)
    assert isinstance(emitted.event, NotificationSent)
    assert emitted.event.data.cause_event_id == event.id
    assert await sender_for(service, port).send_due() == 0
    assert len(mail.received) == 1


# A sender process that dies once the mail server has the message and before its answer is recorded.
_DOOMED_SENDER = """
import asyncio, sys
from oms_notifications.sender import Sender, SmtpServer
from oms_runtime import Database

async def main():
    database = Database(sys.argv[1])
    await Sender(database, SmtpServer(port=int(sys.argv[2])), name="doomed-sender").send_due()

asyncio.run(main())
"""


async def test_a_sender_killed_between_claim_and_record_leaves_its_mail_unknown_and_never_sent_again(
    service, settings, pg, order_accepted, fulfillment_planned, smtp_server, clock
):
    hold = threading.Event()
    mail, port = smtp_server(hold=hold)
    acceptance = order_accepted("9002")
    await deliver(service, ORDER_EVENTS, acceptance)
    await deliver(service, ROUTING_PLANS, fulfillment_planned(acceptance.data.order_id))
    doomed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DOOMED_SENDER, settings.database_url, str(port)
    )
    try:
        # The server has the confirmation and has not answered yet: the doomed sender waits for its "250".
        assert await asyncio.to_thread(mail.taken.wait, 120)
    finally:
        doomed.kill()
        await doomed.wait()
    hold.set()
    row = await pg.fetchrow("SELECT status, claimed_by, claimed_at FROM notifications WHERE template = $1", CONFIRM)
    assert (row["status"], row["claimed_by"]) == ("sending", "doomed-sender")

    # Before the claim times out, nobody touches it, and the order's next mail waits behind it.
    clock.now = row["claimed_at"] + CLAIMS.timeout - timedelta(seconds=1)
    survivor = sender_for(service, port, clock=clock, claims=CLAIMS)
    assert await survivor.send_due() == 0
    assert len(mail.received) == 1

    # After it, the claim is taken for lost: the confirmation is unknown, not sent again, and says so.
    clock.now = row["claimed_at"] + CLAIMS.timeout + timedelta(seconds=1)
    assert await drain(survivor) == 1

    lost = await pg.fetchrow("SELECT * FROM notifications WHERE template = $1", CONFIRM)
    assert (lost["status"], lost["attempts"], lost["next_attempt_at"]) == ("unknown", 1, None)
    assert lost["failed_at"] == clock.now
    assert "claimed by doomed-sender" in lost["last_error"]
    assert f"Message-ID <{lost['id']}@oms.local>" in lost["last_error"]
    assert [m["Subject"] for m in mail.received] == [
        "Your order 9002 is confirmed",
        "Your order 9002 will arrive in 2 parcels",  # the story goes on: an unknown mail holds nothing back
    ]
    failed, sent = (e.event for e in await take_outbox(service))
    assert isinstance(failed, NotificationFailed)
    assert (failed.data.template, failed.data.outcome_unknown) == (CONFIRM, True)
    assert isinstance(sent, NotificationSent)
    clock.now += timedelta(days=1)
    assert await drain(survivor) == 0
    assert len(mail.received) == 2


_DOOMED_ONE_LANE = _DOOMED_SENDER.replace('name="doomed-sender"', 'name="doomed-sender", connections=1')


async def test_a_dead_senders_claimed_mails_it_never_started_are_sent_later_only_the_one_in_flight_is_unknown(
    service, settings, pg, order_accepted, smtp_server, clock
):
    """Found by the full-size fault run: a crash between claim and record made a whole pass `unknown`, mails never
    handed to the server included (155 of 258). Each mail's hand-over is committed first; the rest go out later."""
    hold = threading.Event()
    mail, port = smtp_server(hold=hold)
    for number in ("9101", "9102", "9103"):
        await deliver(service, ORDER_EVENTS, order_accepted(number))
    doomed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DOOMED_ONE_LANE, settings.database_url, str(port)
    )
    try:
        assert await asyncio.to_thread(mail.taken.wait, 120)  # the first confirmation is at the server
    finally:
        doomed.kill()
        await doomed.wait()
    hold.set()
    rows = await pg.fetch("SELECT status, claimed_by, claimed_at, handed_over_at FROM notifications")
    assert {(r["status"], r["claimed_by"]) for r in rows} == {("sending", "doomed-sender")}
    assert sorted(r["handed_over_at"] is not None for r in rows) == [False, False, True]

    clock.now = rows[0]["claimed_at"] + CLAIMS.timeout + timedelta(seconds=1)
    survivor = sender_for(service, port, clock=clock, claims=CLAIMS)
    await drain(survivor)

    final = {r["subject"]: r["status"] for r in await pg.fetch("SELECT subject, status FROM notifications")}
    assert sorted(final.values()) == ["sent", "sent", "unknown"]
    unknown = next(subject for subject, status in final.items() if status == "unknown")
    # The one in flight reached the server once (the doomed sender's), the other two once each (the survivor's).
    assert sorted(m["Subject"] for m in mail.received) == sorted(final)
    assert mail.received[0]["Subject"] == unknown
    failed = [e.event for e in await take_outbox(service) if isinstance(e.event, NotificationFailed)]
    assert [f.data.outcome_unknown for f in failed] == [True]


async def test_a_connection_lost_after_the_message_went_out_makes_it_unknown_not_retried(
    service, pg, order_accepted, smtp_server, clock
):
    # The server takes the message and never answers; the sender's wait for the answer times out.
    mail, port = smtp_server(hold=threading.Event())
    await deliver(service, ORDER_EVENTS, order_accepted("9003"))
    clock.now = datetime.now(UTC)
    sender = Sender(service.database, SmtpServer(port=port, timeout=1.0), clock=clock)

    assert await sender.send_due() == 1

    row = await pg.fetchrow("SELECT status, attempts, last_error FROM notifications")
    assert (row["status"], row["attempts"]) == ("unknown", 1)
    assert "after the message was handed to" in row["last_error"]
    [emitted] = await take_outbox(service)
    assert isinstance(emitted.event, NotificationFailed)
    assert emitted.event.data.outcome_unknown
    clock.now += timedelta(days=1)
    assert await sender.send_due() == 0
    assert len(mail.received) == 1


async def test_a_stopped_sender_finishes_the_mail_in_hand_records_it_and_gives_the_rest_back(
    service, pg, order_accepted, smtp_server
):
    hold = threading.Event()
    mail, port = smtp_server(hold=hold)
    await deliver(service, ORDER_EVENTS, *(order_accepted(f"91{n}", email=f"c{n}@example.com") for n in range(3)))
    sender = sender_for(service, port, connections=1)
    passing = asyncio.create_task(sender.send_due())
    assert await asyncio.to_thread(mail.taken.wait, 120)

    passing.cancel()  # the service stops while the server holds the first message
    hold.set()
    with pytest.raises(asyncio.CancelledError):
        await passing

    rows = await pg.fetch("SELECT status, attempts FROM notifications ORDER BY status")
    assert [(r["status"], r["attempts"]) for r in rows] == [("pending", 0), ("pending", 0), ("sent", 1)]
    [emitted] = await take_outbox(service)
    assert isinstance(emitted.event, NotificationSent)
    assert await drain(sender_for(service, port)) == 1
    ids = [m["Message-ID"] for m in mail.received]
    assert len(ids) == len(set(ids)) == 3


async def test_a_claimed_mail_is_not_started_once_its_claim_is_too_old_to_be_recorded_in_time(
    service, pg, order_accepted, smtp_server, clock
):
    def time_passes() -> None:
        # The first mail takes over half the claim timeout: the second one's claim could be judged lost before
        # its answer is recorded.
        clock.now += CLAIMS.timeout / 2

    mail, port = smtp_server(on_data=time_passes)
    await deliver(service, ORDER_EVENTS, *(order_accepted(f"92{n}", email=f"d{n}@example.com") for n in range(2)))
    clock.now = datetime.now(UTC)

    assert await sender_for(service, port, connections=1, clock=clock, claims=CLAIMS).send_due() == 2

    assert len(mail.received) == 1
    rows = await pg.fetch("SELECT status, attempts, claimed_at FROM notifications ORDER BY status")
    assert [(r["status"], r["attempts"]) for r in rows] == [("pending", 0), ("sent", 1)]
    assert await drain(sender_for(service, port, clock=clock)) == 1
    assert len(mail.received) == 2


async def test_a_claim_whose_commit_its_sender_never_saw_is_sent_at_its_next_pass(
    service, pg, order_accepted, smtp_server, clock
):
    """The connection lost at COMMIT: the claim committed, the sender saw its transaction fail and holds nothing. Its
    next pass takes the message back at once (it was never handed over), not after the claim timeout."""
    mail, port = smtp_server()
    sender = sender_for(service, port, clock=clock, claims=CLAIMS)
    await deliver(service, ORDER_EVENTS, order_accepted("9305"))
    clock.now = datetime.now(UTC)
    async with service.database.transaction() as conn:
        [_] = await store.claim_due(conn, clock.now, 10, sender.name)  # what the lost COMMIT had committed

    assert await drain(sender) == 1
    assert (await pg.fetchval("SELECT status FROM notifications"), len(mail.received)) == ("sent", 1)
    # Another sender's claim of the same age is left to its timeout.
    await deliver(service, ORDER_EVENTS, order_accepted("9306"))
    clock.now = datetime.now(UTC)
    async with service.database.transaction() as conn:
        [_] = await store.claim_due(conn, clock.now, 10, "another-sender")
    assert await drain(sender) == 0
    assert len(mail.received) == 1


async def test_a_claim_judged_lost_is_not_overwritten_by_its_late_sender(
    service, pg, order_accepted, smtp_server, clock
):
    late = sender_for(service, 1, clock=clock, claims=CLAIMS, name="late-sender")
    await deliver(service, ORDER_EVENTS, order_accepted("9301"))
    clock.now = datetime.now(UTC)
    async with service.database.transaction() as conn:
        [claimed] = await store.claim_due(await driver(conn), clock.now, 10, late.name)
    async with service.database.connect() as conn:  # it began to hand the message over
        assert await store.hand_over(await driver(conn), [claimed], clock.now) == {claimed.id}
    clock.now += CLAIMS.timeout + timedelta(seconds=1)
    mail, port = smtp_server()
    assert await sender_for(service, port, clock=clock, claims=CLAIMS).send_due() == 0  # judged lost: unknown

    # The late sender comes back with an answer: the verdict stands, and the message is announced once.
    sent = claimed.delivery.after(Outcome.delivered, clock.now, RetryPolicy())
    async with service.database.transaction() as conn:
        assert await store.record_deliveries(await driver(conn), [(claimed, sent)]) == set()

    assert await pg.fetchval("SELECT status FROM notifications") == "unknown"
    assert len(await take_outbox(service)) == 1
    assert mail.received == []


async def test_a_late_sender_cannot_start_a_message_whose_claim_was_given_back(
    service, pg, order_accepted, smtp_server, clock
):
    """A claim judged lost before its message was started is pending again, and sent by the sender that judged it;
    the late sender's hand-over then finds the claim gone and sends nothing."""
    late = sender_for(service, 1, clock=clock, claims=CLAIMS, name="late-sender")
    await deliver(service, ORDER_EVENTS, order_accepted("9302"))
    clock.now = datetime.now(UTC)
    async with service.database.transaction() as conn:
        [claimed] = await store.claim_due(await driver(conn), clock.now, 10, late.name)
    clock.now += CLAIMS.timeout + timedelta(seconds=1)
    mail, port = smtp_server()
    assert await drain(sender_for(service, port, clock=clock, claims=CLAIMS)) == 1
    assert (await pg.fetchval("SELECT status FROM notifications"), len(mail.received)) == ("sent", 1)

    async with service.database.connect() as conn:
        assert await store.hand_over(await driver(conn), [claimed], clock.now) == set()
    assert [type(e.event) for e in await take_outbox(service)] == [NotificationSent]


async def test_the_connections_hand_over_marks_asked_for_together_share_one_statement(
    service, pg, order_accepted, clock, monkeypatch
):
    """Each connection waits for its own message's mark before sending it; marks asked for while none is being
    written go to the database in one statement."""
    statements: list[int] = []
    hand_over = store.hand_over

    async def counted(pg_, notifications, at):
        statements.append(len(notifications))
        return await hand_over(pg_, notifications, at)

    monkeypatch.setattr(store, "hand_over", counted)
    sender = sender_for(service, 1, clock=clock, claims=CLAIMS)
    await deliver(service, ORDER_EVENTS, *(order_accepted(f"94{n}", email=f"m{n}@example.com") for n in range(3)))
    clock.now = datetime.now(UTC)
    async with service.database.transaction() as conn:
        claimed = await store.claim_due(await driver(conn), clock.now, 10, sender.name)

    assert await asyncio.gather(*(sender._hand_over(n) for n in claimed)) == [True, True, True]
    assert statements == [3]
    assert await pg.fetchval("SELECT count(*) FROM notifications WHERE handed_over_at IS NOT NULL") == 3
