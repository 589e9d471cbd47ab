import uuid

import httpx
import pytest

from oms_contracts.topics import CHANNEL_ORDERS
from oms_runtime.testing import deliver
from oms_tools import samples

AUTH = {"Authorization": "Bearer cs-token"}


@pytest.fixture
async def client(order_service):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=order_service.http), base_url="http://order") as c:
        yield c


async def test_an_order_and_its_timeline_read_back_with_money_as_strings(order_service, client):
    submitted = samples.order_submitted("api-1", [("SKU-1", 2, "19.99"), ("SKU-2", 1, "5.00")])
    await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    order_id = submitted.data.order_id

    response = await client.get(f"/orders/{order_id}", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "paid"
    assert body["grand_total"] == "49.97" and body["subtotal"] == "44.98" and body["paid_amount"] == "49.97"
    assert [(x["sku"], x["quantity"], x["unit_price"], x["state"]) for x in body["lines"]] == [
        ("SKU-1", 2, "19.99", "open"),
        ("SKU-2", 1, "5.00", "open"),
    ]

    timeline = (await client.get(f"/orders/{order_id}/timeline", headers=AUTH)).json()
    assert [(t["from_status"], t["to_status"]) for t in timeline] == [
        (None, "pending"),
        ("pending", "payment_processing"),
        ("payment_processing", "paid"),
    ]
    assert {t["actor"] for t in timeline} == {"channel:web-eu"}
    assert all(t["cause_event_id"] and t["trace_id"] for t in timeline)

    listed = (await client.get("/orders", params={"status": "paid", "channel": "web-eu"}, headers=AUTH)).json()
    assert str(order_id) in [o["order_id"] for o in listed]


@pytest.mark.parametrize("path", ["/orders/{id}", "/orders/{id}/timeline"])
async def test_an_unknown_order_is_404(client, path):
    unknown = uuid.uuid4()
    response = await client.get(path.format(id=unknown), headers=AUTH)
    assert response.status_code == 404
    assert str(unknown) in response.json()["detail"]


async def test_a_malformed_order_id_is_422_naming_the_field(client):
    response = await client.get("/orders/not-a-uuid", headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "order_id"]


async def test_an_unknown_status_filter_is_422(client):
    response = await client.get("/orders", params={"status": "teleported"}, headers=AUTH)
    assert response.status_code == 422


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}])
async def test_without_a_known_bearer_token_it_is_401(client, headers):
    response = await client.get(f"/orders/{uuid.uuid4()}", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_health_needs_no_token(client):
    assert (await client.get("/healthz")).status_code == 200
