"""Inventory's HTTP surface over ASGI: bearer auth, stock per source, the backorder queue."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from oms_contracts.topics import INVENTORY_RECEIPTS, ROUTING_NETWORK, ROUTING_PLANS
from oms_runtime.testing import deliver

TOKEN = "inventory-test-token"


@pytest.fixture
async def client(inventory) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=inventory.http)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://inventory", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as client:
        yield client


@pytest.mark.parametrize("path", ["/stock/SKU-1", "/backorders/SKU-1", "/sources"])
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
    await deliver(inventory, INVENTORY_RECEIPTS, events.counted(fresh_sku, west, 1))

    response = await client.get(f"/stock/{fresh_sku}")

    assert response.status_code == 200
    assert response.json() == {
        "sku": fresh_sku,
        "sources": [
            {"source_code": east, "on_hand": 10, "reserved": 4, "available": 6},
            {"source_code": west, "on_hand": 1, "reserved": 2, "available": 0},
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
