"""Inventory's HTTP surface over ASGI: bearer auth, stock per source, the backorder queue."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from oms_contracts.topics import INVENTORY_RECEIPTS, ROUTING_NETWORK, ROUTING_PLANS
from oms_runtime.testing import deliver

TOKEN = "inventory-test-token"


@pytest.mark.parametrize(
    "path", ["/stock/SKU-1", "/backorders/SKU-1", "/sources", f"/backorders?order_id={uuid.uuid4()}"]
)
async def test_without_a_known_token_the_api_answers_401(client, path):
    assert (await client.get(path, headers={"Authorization": ""})).status_code == 401
    assert (await client.get(path, headers={"Authorization": "Bearer not-a-token"})).status_code == 401


@pytest.mark.parametrize("path", ["/stock/{sku}", "/backorders/{sku}"])
async def test_a_sku_inventory_never_heard_of_is_404_with_the_reason(client, fresh_sku, path):
    response = await client.get(path.format(sku=fresh_sku))
    assert response.status_code == 404
    assert response.json() == {"detail": f"inventory has never heard of sku {fresh_sku!r}"}


async def test_stock_lists_every_source_and_the_total_available(inventory, client, events, fresh_sku):
    east, west = f"EAST-{uuid.uuid4().hex[:8]}", f"WEST-{uuid.uuid4().hex[:8]}"
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(east), events.source_upserted(west))
    await deliver(
        inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, east, 10), events.received(fresh_sku, west, 2)
    )
    await deliver(inventory, ROUTING_PLANS, events.plan(events.shipment(east, ("1", fresh_sku, 4))))
    # A count below what is reserved: that source adds nothing to the total.
    await deliver(inventory, ROUTING_PLANS, events.plan(events.shipment(west, ("1", fresh_sku, 2))))
    await deliver(
        inventory, INVENTORY_RECEIPTS, events.counted(fresh_sku, west, 1, at=datetime(2026, 11, 22, 9, tzinfo=UTC))
    )

    response = await client.get(f"/stock/{fresh_sku}")

    assert response.status_code == 200
    assert response.json() == {
        "sku": fresh_sku,
        "sources": [
            {"source_code": east, "on_hand": 10, "reserved": 4, "set_aside": 0, "available": 6, "counted_at": None},
            {
                "source_code": west,
                "on_hand": 1,
                "reserved": 2,
                "set_aside": 0,
                "available": 0,
                "counted_at": "2026-11-22T09:00:00Z",
            },
        ],
        "available": 6,
    }


async def test_a_sku_with_a_slash_is_found(inventory, client, events, fresh_source):
    sku = f"BOX/{uuid.uuid4().hex[:8]}"
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(sku, fresh_source, 1))

    response = await client.get(f"/stock/{sku}")

    assert response.status_code == 200
    assert response.json()["sku"] == sku


async def test_backorders_list_the_waiting_lines_first_come_first(inventory, client, events, fresh_sku):
    first = events.plan(backordered=(("1", fresh_sku, 2),))
    second = events.plan(backordered=(("7", fresh_sku, 1), ("8", fresh_sku, 5)))
    await deliver(inventory, ROUTING_PLANS, first)
    await deliver(inventory, ROUTING_PLANS, second)

    response = await client.get(f"/backorders/{fresh_sku}")

    assert response.status_code == 200
    queue = response.json()
    assert [(b["position"], b["order_id"], b["line_id"], b["quantity"]) for b in queue] == [
        (1, str(first.data.order_id), "1", 2),
        (2, str(second.data.order_id), "7", 1),
        (3, str(second.data.order_id), "8", 5),
    ]
    assert all(b["queued_at"] for b in queue)
    assert queue[0] | {"queued_at": None} == {
        "position": 1,
        "order_id": str(first.data.order_id),
        "line_id": "1",
        "sku": fresh_sku,
        "quantity": 2,
        "set_aside": 0,
        "set_aside_at": None,
        "expected_date": None,
        "queued_at": None,
        "ship_to_country": None,
        "pickup_source": None,
        "ship_complete": False,
    }


async def test_a_stocked_sku_with_nobody_waiting_has_an_empty_queue(inventory, client, events, fresh_sku, fresh_source):
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 3))

    response = await client.get(f"/backorders/{fresh_sku}")

    assert response.status_code == 200
    assert response.json() == []


async def test_a_sku_known_only_from_its_backorders_has_stock_nowhere(inventory, client, events, fresh_sku):
    await deliver(inventory, ROUTING_PLANS, events.plan(backordered=(("1", fresh_sku, 2),)))

    response = await client.get(f"/stock/{fresh_sku}")

    assert response.status_code == 200
    assert response.json() == {"sku": fresh_sku, "sources": [], "available": 0}


async def test_the_sources_are_those_the_network_topic_announced(inventory, client, events, fresh_source):
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))

    response = await client.get("/sources")

    assert response.status_code == 200
    [known] = [s for s in response.json() if s["code"] == fresh_source]
    assert known == {"code": fresh_source, "name": f"Source {fresh_source}", "type": "warehouse", "active": True}


async def test_an_order_with_nothing_waiting_has_no_waiting_lines(client):
    response = await client.get("/backorders", params={"order_id": str(uuid.uuid4())})
    assert response.status_code == 200
    assert response.json() == []


@pytest.mark.parametrize("query", ["", "?order_id=not-a-uuid"])
async def test_an_order_backorder_query_without_a_valid_order_id_is_422_naming_the_field(client, query):
    response = await client.get(f"/backorders{query}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "order_id"]


async def test_the_openapi_document_names_every_answer_of_the_stock_and_backorder_endpoints(client):
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert set(paths["/backorders/{sku}"]["get"]["responses"]) == {"200", "401", "404", "422"}
    assert set(paths["/stock/{sku}"]["get"]["responses"]) == {"200", "401", "404", "422"}
    assert set(paths["/backorders"]["get"]["responses"]) == {"200", "401", "422"}
    assert set(paths["/sources"]["get"]["responses"]) >= {"200", "401"}
