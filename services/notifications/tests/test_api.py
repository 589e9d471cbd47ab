from __future__ import annotations

import uuid

import httpx
import pytest

from oms_contracts.topics import ORDER_EVENTS
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


async def test_an_order_without_notifications_has_an_empty_list(client, pg):
    response = await client.get("/notifications", params={"order_id": str(uuid.uuid4())}, headers=auth())

    assert response.status_code == 200
    assert response.json() == []


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
