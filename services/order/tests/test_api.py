from __future__ import annotations

import asyncio
import socket
import uuid

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from oms_contracts.topics import CHANNEL_ORDERS, FULFILLMENT_UPDATES, INVENTORY_ALLOCATIONS, ROUTING_PLANS
from oms_order.app import create_service
from oms_order.settings import OrderSettings
from oms_runtime.testing import deliver
from oms_tools import samples

AUTH = {"Authorization": "Bearer cs-token"}
TOKENS = {"cs-token": "cs-agent"}


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


# -- the single view of a mixed order, with inventory's live queue -----------------------------------------------


class InventoryServer:
    """A real HTTP server on a free local port answering `GET /backorders?order_id=` in inventory's shape, with what
    a test puts in `waiting`; it records the Authorization header of each request. `answer` switches it to an error
    status, or to never answering ("hang")."""

    def __init__(self) -> None:
        self.waiting: list[dict] = []
        self.answer: int | str = 200
        self.authorizations: list[str | None] = []
        self.released = asyncio.Event()
        app = FastAPI()

        @app.get("/backorders")
        async def backorders(order_id: uuid.UUID, request: Request):
            self.authorizations.append(request.headers.get("authorization"))
            if self.answer == "hang":
                await self.released.wait()
            if self.answer != 200:
                return JSONResponse({"detail": "inventory is having a bad day"}, status_code=500)
            return [entry for entry in self.waiting if entry["order_id"] == str(order_id)]

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        # Listening before the server starts: a request that comes early waits in the backlog, never refused.
        self.socket.listen()
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))

    async def __aenter__(self) -> InventoryServer:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        return self

    async def __aexit__(self, *_) -> None:
        self.released.set()
        self.server.should_exit = True
        await self.task


@pytest.fixture(scope="module")
async def inventory():
    async with InventoryServer() as server:
        yield server


def viewer(service_database, inventory_url: str):
    """The order service's HTTP app, asking inventory at `inventory_url`, on the database the consumers write."""
    service = create_service(
        OrderSettings(database_url=service_database("order"), api_tokens=TOKENS, inventory_url=inventory_url)
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http), base_url="http://order")


async def mixed_order(order_service, name: str):
    """TENT ×1 requested from WH-EAST and shipped in one parcel; LAMP ×3 backordered."""
    submitted = samples.order_submitted(name, [("TENT", 1, "99.00"), ("LAMP", 3, "10.00")])
    await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    plan = samples.fulfillment_planned(submitted, [("1", 1)], [("2", 3)])
    await deliver(order_service, ROUTING_PLANS, plan)
    [_, request] = await deliver(order_service, INVENTORY_ALLOCATIONS, samples.shipment_reserved(plan))
    await deliver(order_service, FULFILLMENT_UPDATES, samples.parcel(request.event, {"1": 1}, tracking_number="P-1"))
    return submitted.data.order_id


async def test_the_view_shows_each_lines_units_its_live_backorder_place_and_every_parcel(
    order_service, service_database, inventory
):
    order_id = await mixed_order(order_service, "view-1")
    inventory.waiting = [
        {
            "order_id": str(order_id),
            "line_id": "2",
            "sku": "LAMP",
            "quantity": 3,
            "position": 2,
            "expected_date": "2026-12-10",
            "queued_at": "2026-11-29T10:00:00Z",
        },
        {
            "order_id": str(uuid.uuid4()),
            "line_id": "2",
            "sku": "LAMP",
            "quantity": 1,
            "position": 1,
            "expected_date": None,
        },
    ]
    async with viewer(service_database, inventory.url) as client:
        response = await client.get(f"/orders/{order_id}", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "partially_fulfilled" and body["warnings"] == []
    tent, lamp = body["lines"]
    assert (tent["state"], tent["backorder"]) == ("shipped", None)
    assert {k: v for k, v in tent["quantities"].items() if v} == {"shipped": 1}
    assert lamp["state"] == "backordered" and {k: v for k, v in lamp["quantities"].items() if v} == {"backordered": 3}
    assert lamp["backorder"] == {"quantity": 3, "position": 2, "expected_date": "2026-12-10"}
    [fulfillment] = body["fulfillments"]
    assert fulfillment["status"] == "shipped" and fulfillment["source_code"] == "WH-EAST"
    [parcel] = fulfillment["parcels"]
    assert (parcel["carrier"], parcel["tracking_number"], parcel["delivered_at"]) == ("DHL", "P-1", None)
    assert parcel["tracking_url"].endswith("P-1") and parcel["lines"] == [
        {"line_id": "1", "sku": "TENT", "quantity": 1}
    ]
    assert (fulfillment["carrier"], fulfillment["tracking_number"]) == ("DHL", "P-1")
    assert inventory.authorizations[-1] == AUTH["Authorization"]


async def test_a_backordered_line_inventory_does_not_list_is_shown_without_a_place(
    order_service, service_database, inventory
):
    order_id = await mixed_order(order_service, "view-2")
    inventory.waiting = []
    async with viewer(service_database, inventory.url) as client:
        body = (await client.get(f"/orders/{order_id}", headers=AUTH)).json()
    assert body["lines"][1]["backorder"] == {"quantity": 3, "position": None, "expected_date": None}
    assert body["warnings"] == []


async def test_an_order_with_nothing_backordered_does_not_ask_inventory(order_service, service_database, inventory):
    submitted = samples.order_submitted("view-3", [("TENT", 1, "99.00")])
    await deliver(order_service, CHANNEL_ORDERS, submitted)
    asked = len(inventory.authorizations)
    async with viewer(service_database, inventory.url) as client:
        body = (await client.get(f"/orders/{submitted.data.order_id}", headers=AUTH)).json()
    assert body["lines"][0]["backorder"] is None and len(inventory.authorizations) == asked


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (500, "inventory answered 500"),
        ("hang", "inventory did not answer within 1 s"),
        ("down", "could not be reached"),
    ],
)
async def test_when_inventory_fails_the_view_shows_the_lines_without_places_and_says_so(
    order_service, service_database, answer, why
):
    order_id = await mixed_order(order_service, f"view-down-{answer}")
    async with InventoryServer() as inventory:
        inventory.answer = answer
        url = inventory.url
        if answer == "down":
            await inventory.__aexit__()
        async with viewer(service_database, url) as client:
            response = await client.get(f"/orders/{order_id}", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["lines"][1]["backorder"] == {"quantity": 3, "position": None, "expected_date": None}
    [warning] = body["warnings"]
    assert warning.startswith("backorder positions and expected dates are not shown") and why in warning
    assert body["fulfillments"][0]["parcels"][0]["tracking_number"] == "P-1"
