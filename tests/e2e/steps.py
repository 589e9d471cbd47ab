"""What the end-to-end tests do again and again, as a channel, a WMS or customer service would: receive stock, wait
until routing sees it, read a source's requests, look at an order and at the mails its customer got."""

from __future__ import annotations

import json
import uuid

from aiokafka import AIOKafkaConsumer

from oms_contracts import fulfillment
from oms_contracts.common import Address
from oms_contracts.topics import INVENTORY_RECEIPTS
from oms_tools import samples

from .conftest import System, eventually, read_until, run_id


async def simulated(system: System, sku: str, quantity: int = 1, address: Address = samples.BERLIN) -> dict:
    """The plan routing would make now for a one-line order of `sku` to `address` (routing's /simulate)."""
    probe = samples.order_submitted(f"probe-{run_id()}", [(sku, quantity, "1.00")], address=address)
    paid = {
        "order_id": str(probe.data.order_id),
        "channel": "web-eu",
        "placed_at": "2026-11-25T10:00:00Z",
        "currency": "EUR",
        "amount": str(probe.data.grand_total),
        "lines": [{"line_id": "1", "sku": sku, "quantity": quantity}],
        "shipping_address": probe.data.shipping_address.model_dump(mode="json"),
        "shipping_method": "standard",
        "options": {"ship_complete": False, "backorder_policy": "allow"},
    }
    async with system.http() as http:
        r = await http.post(system.url("routing", "/simulate"), json=paid)
    assert r.status_code == 200, r.text
    return r.json()


async def routable(system: System, sku: str, source: str, quantity: int = 1) -> None:
    """Routing's projection has caught up with inventory: a one-line order of `sku` would ship from `source`."""

    async def planned_there():
        shipments = (await simulated(system, sku, quantity))["shipments"]
        return [s for s in shipments if s["source_code"] == source]

    await eventually(planned_there, what=f"routing to see {sku} at {source}")


async def receive(system: System, sku: str, source: str, quantity: int) -> None:
    await system.publish(INVENTORY_RECEIPTS.name, samples.stock_received(sku, source, quantity))


async def in_stock(system: System, source: str, quantities: dict[str, int]) -> None:
    """Stock of each SKU received at `source`, and routing sees it there (it would plan all of it from there)."""
    for sku, quantity in quantities.items():
        await receive(system, sku, source, quantity)
    for sku, quantity in quantities.items():
        await routable(system, sku, source, quantity)


async def requests_for(
    consumer: AIOKafkaConsumer, *order_ids: uuid.UUID
) -> dict[uuid.UUID, fulfillment.FulfillmentRequested]:
    """The next fulfillment request of each order; they may arrive in any order (one partition per order)."""
    found: dict[uuid.UUID, fulfillment.FulfillmentRequested] = {}

    def wanted(record) -> bool:
        event = json.loads(record.value)
        order_id = uuid.UUID(event["data"]["order_id"])
        if event["type"] == fulfillment.FulfillmentRequested.TYPE and order_id in order_ids and order_id not in found:
            found[order_id] = fulfillment.FulfillmentRequested.model_validate_json(record.value)
        return len(found) == len(order_ids)

    await read_until(consumer, wanted)
    return found


async def request_for(consumer: AIOKafkaConsumer, order_id: uuid.UUID) -> fulfillment.FulfillmentRequested:
    return (await requests_for(consumer, order_id))[order_id]


def units_of(lines) -> list[tuple[str, int]]:
    return sorted((line.sku, line.quantity) for line in lines)


async def order_view(system: System, order_id: uuid.UUID, status: str | None = None) -> dict:
    async with system.http() as http:

        async def fetched():
            r = await http.get(system.url("order", f"/orders/{order_id}"))
            if r.status_code != 200 or (status is not None and r.json()["status"] != status):
                return None
            return r.json()

        return await eventually(fetched, what=f"order {order_id} to be {status or 'there'}")


async def notices(system: System, order_id: uuid.UUID, template: str, count: int = 1) -> list[dict]:
    async with system.http() as http:

        async def sent():
            r = await http.get(system.url("notifications", "/notifications"), params={"order_id": str(order_id)})
            found = [n for n in r.json() if n["template"] == template and n["status"] == "sent"]
            return found if len(found) >= count else None

        return await eventually(sent, what=f"{count} {template} mail(s) for {order_id}")


def line_of(order: dict, sku: str) -> dict:
    return next(line for line in order["lines"] if line["sku"] == sku)
