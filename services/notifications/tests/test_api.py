from __future__ import annotations

import threading
import uuid

import httpx
import pytest

from oms_contracts.topics import INVENTORY_ALLOCATIONS, INVENTORY_STOCK, ORDER_EVENTS, ROUTING_PLANS
from oms_notifications.sender import Sender, SmtpServer
from oms_runtime.testing import deliver

TOKEN = "test-token"  # the token the session's settings accept (conftest.py)


@pytest.fixture
async def client(service):
    transport = httpx.ASGITransport(app=service.http)
    async with httpx.AsyncClient(transport=transport, base_url="http://notifications") as client:
        yield client


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_listing_notifications_needs_a_bearer_token(client):
    response = await client.get("/notifications", params={"order_id": str(uuid.uuid4())})

    assert response.status_code == 401


async def test_an_unknown_token_is_refused(client):
    response = await client.get("/notifications", params={"order_id": str(uuid.uuid4())}, headers=auth("nope"))

    assert response.status_code == 401


async def test_listing_notifications_needs_an_order_id(client):
    response = await client.get("/notifications", headers=auth())

    assert response.status_code == 422


async def test_an_order_id_that_is_not_a_uuid_is_refused(client):
    response = await client.get("/notifications", params={"order_id": "1001"}, headers=auth())

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "order_id"]


async def test_an_order_without_a_message_is_not_found(client, pg):
    order_id = uuid.uuid4()

    response = await client.get("/notifications", params={"order_id": str(order_id)}, headers=auth())

    assert response.status_code == 404
    assert response.json() == {"detail": f"no message about order {order_id} yet"}


async def test_an_order_whose_messages_wait_for_its_contact_is_not_found_and_says_so(
    service, client, pg, order_accepted, fulfillment_planned, inventory_backorder_queued
):
    order_id = order_accepted("1001").data.order_id
    await deliver(service, ROUTING_PLANS, fulfillment_planned(order_id))
    await deliver(service, INVENTORY_ALLOCATIONS, inventory_backorder_queued(order_id))

    response = await client.get("/notifications", params={"order_id": str(order_id)}, headers=auth())

    assert response.status_code == 404
    assert "2 wait for the customer's contact" in response.json()["detail"]


async def test_every_notification_of_an_order_is_listed_oldest_first(
    service, pg, client, order_accepted, smtp_server, closed_port
):
    first, second = order_accepted("1001"), order_accepted("1001")
    other = order_accepted("2002")
    await deliver(service, ORDER_EVENTS, first)
    _, port = smtp_server()
    await Sender(service.database, SmtpServer(port=port)).send_due()
    await deliver(service, ORDER_EVENTS, second, other)
    await Sender(service.database, SmtpServer(port=closed_port)).send_due()

    response = await client.get("/notifications", params={"order_id": str(first.data.order_id)}, headers=auth())

    assert response.status_code == 200
    listed = response.json()
    assert [n["status"] for n in listed] == ["sent", "pending"]
    sent, pending = listed
    assert set(sent) >= {
        "id",
        "template",
        "channel",
        "recipient",
        "subject",
        "status",
        "attempts",
        "created_at",
        "sent_at",
        "last_error",
    }
    assert (sent["template"], sent["channel"], sent["recipient"]) == ("order_confirmation", "email", "ada@example.com")
    assert sent["subject"] == "Your order 1001 is confirmed"
    assert (sent["attempts"], sent["last_error"]) == (1, None)
    assert sent["sent_at"] is not None
    assert (pending["attempts"], pending["sent_at"]) == (1, None)
    assert "Connect" in pending["last_error"] or "connect" in pending["last_error"]
    assert pending["next_attempt_at"] is not None
    assert sent["created_at"] <= pending["created_at"]


async def test_customer_service_sees_word_for_word_what_the_customer_was_told_at_every_step(
    service, client, pg, order_accepted, fulfillment_planned, fulfillment_shipped, smtp_server
):
    acceptance = order_accepted("1001", email="erika@example.de", name="Erika", locale="de-DE")
    order_id = acceptance.data.order_id
    plan = fulfillment_planned(order_id)
    await deliver(service, ROUTING_PLANS, plan)  # before the acceptance: it waits for the contact
    await deliver(service, ORDER_EVENTS, acceptance)
    await deliver(service, ORDER_EVENTS, fulfillment_shipped(order_id))
    _, port = smtp_server()
    await Sender(service.database, SmtpServer(port=port)).send_due()

    response = await client.get("/notifications", params={"order_id": str(order_id)}, headers=auth())

    assert response.status_code == 200
    listed = response.json()
    assert [n["template"] for n in listed] == ["order_confirmation", "split_prewarning", "shipped"]
    assert [n["status"] for n in listed] == ["sent", "pending", "pending"]
    prewarning = listed[1]
    assert (prewarning["locale"], prewarning["recipient"], prewarning["recipient_name"]) == (
        "de-DE",
        "erika@example.de",
        "Erika",
    )
    assert prewarning["cause_event_id"] == str(plan.id)
    assert prewarning["subject"] == "Ihre Bestellung 1001 kommt in 2 Paketen"
    row = await pg.fetchrow("SELECT body_text FROM notifications WHERE template = 'split_prewarning'")
    assert prewarning["body_text"] == row["body_text"]
    assert "Paket 1 von 2, voraussichtliche Zustellung am Dienstag, 1. Dezember 2026:" in prewarning["body_text"]
    assert (prewarning["attempts"], prewarning["sent_at"], prewarning["failed_at"]) == (0, None, None)
    assert listed[0]["sent_at"] is not None


async def test_the_openapi_document_names_every_answer_of_the_notifications_list(client):
    document = (await client.get("/openapi.json")).json()

    operation = document["paths"]["/notifications"]["get"]
    assert {"200", "401", "404", "422"} <= set(operation["responses"])
    view = document["components"]["schemas"]["NotificationView"]["properties"]
    assert {"template", "locale", "recipient", "subject", "body_text", "status", "attempts", "created_at"} <= set(view)


# The operators' alerts, listed by template.


async def test_alerts_are_listed_by_template_newest_first_and_not_among_the_customers_messages(
    service, client, pg, order_accepted, order_stuck, inventory_low_stock, settings
):
    acceptance = order_accepted("1001")
    order_id = acceptance.data.order_id
    first, second = order_stuck(order_id, kind="paid_not_planned"), order_stuck(order_id, kind="no_progress")
    await deliver(service, ORDER_EVENTS, acceptance, first)
    await deliver(service, ORDER_EVENTS, second)
    await deliver(service, INVENTORY_STOCK, inventory_low_stock())

    stuck = await client.get("/notifications", params={"template": "order_stuck"}, headers=auth())
    low = await client.get("/notifications", params={"template": "low_stock"}, headers=auth())
    of_order = await client.get("/notifications", params={"order_id": str(order_id)}, headers=auth())

    assert stuck.status_code == 200
    assert [n["cause_event_id"] for n in stuck.json()] == [str(second.id), str(first.id)]
    alert = stuck.json()[0]
    assert (alert["audience"], alert["order_id"], alert["recipient_name"]) == ("operators", str(order_id), None)
    assert alert["recipient"] == ", ".join(settings.ops_email)
    assert "no progress" in alert["subject"]
    [low_alert] = low.json()
    assert (low_alert["template"], low_alert["order_id"]) == ("low_stock", None)
    # What the customer was told: the confirmation only.
    assert [(n["template"], n["audience"]) for n in of_order.json()] == [("order_confirmation", "customer")]


async def test_a_template_and_an_order_narrow_the_list_to_that_orders_messages_of_that_template(
    service, client, pg, order_accepted, order_stuck
):
    one, other = order_accepted("1001").data.order_id, order_accepted("1002").data.order_id
    await deliver(service, ORDER_EVENTS, order_stuck(one), order_stuck(other))

    response = await client.get(
        "/notifications", params={"template": "order_stuck", "order_id": str(one)}, headers=auth()
    )

    assert [n["order_id"] for n in response.json()] == [str(one)]


async def test_a_template_without_messages_lists_none_and_an_order_without_such_messages_is_not_found(client, pg):
    order_id = uuid.uuid4()

    none_yet = await client.get("/notifications", params={"template": "low_stock"}, headers=auth())
    not_found = await client.get(
        "/notifications", params={"template": "order_stuck", "order_id": str(order_id)}, headers=auth()
    )

    assert (none_yet.status_code, none_yet.json()) == (200, [])
    assert not_found.status_code == 404
    assert not_found.json() == {"detail": f"no order_stuck message about order {order_id}"}


async def test_the_list_is_cut_at_the_limit(service, client, pg, inventory_low_stock):
    await deliver(service, INVENTORY_STOCK, *(inventory_low_stock(f"SKU-{n}") for n in range(5)))

    response = await client.get("/notifications", params={"template": "low_stock", "limit": 3}, headers=auth())

    assert len(response.json()) == 3


@pytest.mark.parametrize(
    "params",
    [{"template": "no_such_template"}, {"template": "low_stock", "limit": 0}, {"template": "low_stock", "limit": 1001}],
)
async def test_an_unknown_template_or_a_limit_out_of_range_is_refused(client, params):
    response = await client.get("/notifications", params=params, headers=auth())

    assert response.status_code == 422


async def test_listing_needs_an_order_or_a_template_and_says_so(client):
    response = await client.get("/notifications", headers=auth())

    assert response.status_code == 422
    assert response.json() == {"detail": "give order_id, template, status, or several"}


async def test_the_openapi_document_names_the_template_filter_with_every_template(client):
    document = (await client.get("/openapi.json")).json()

    operation = document["paths"]["/notifications"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert set(parameters) == {"order_id", "template", "status", "limit"}
    assert set(document["components"]["schemas"]["Status"]["enum"]) == {
        "pending",
        "sending",
        "sent",
        "failed",
        "unknown",
    }
    template_schema = document["components"]["schemas"]["Template"]
    assert {"order_stuck", "low_stock", "lines_cancelled", "refund_issued"} <= set(template_schema["enum"])
    assert {"401", "404", "422"} <= set(operation["responses"])
    view = document["components"]["schemas"]["NotificationView"]["properties"]
    assert {"order_id", "audience", "claimed_at", "claimed_by"} <= set(view)


async def test_mails_whose_outcome_is_unknown_are_listed_across_orders_for_an_operator(
    service, client, pg, order_accepted, smtp_server
):
    _, port = smtp_server(hold=threading.Event())  # takes each message and never answers
    await deliver(service, ORDER_EVENTS, order_accepted("1001"), order_accepted("1002", email="b@example.com"))
    await Sender(service.database, SmtpServer(port=port, timeout=1.0)).send_due()

    response = await client.get("/notifications", params={"status": "unknown"}, headers=auth())

    assert response.status_code == 200
    listed = response.json()
    assert sorted(n["recipient"] for n in listed) == ["ada@example.com", "b@example.com"]
    assert {n["status"] for n in listed} == {"unknown"}
    assert all(n["claimed_by"] and n["claimed_at"] and "outcome unknown" in n["last_error"] for n in listed)


async def test_a_status_alone_is_listed_only_for_those_an_operator_looks_for(client):
    response = await client.get("/notifications", params={"status": "sent"}, headers=auth())

    assert response.status_code == 422
    assert response.json() == {"detail": "status alone may be failed or unknown; add order_id or template"}
