"""Records for a source inventory has not heard of yet wait for the network event, through the real consumer path on a
real PostgreSQL: applied in the network consumer's transaction when the source arrives, dead-lettered when it is
announced inactive or after the grace period; never lost, never applied twice."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from oms_contracts.inventory import BackorderAllocated, StockLevelChanged
from oms_contracts.topics import DEAD_LETTERS, INVENTORY_RECEIPTS, ORDER_EVENTS, ROUTING_NETWORK, ROUTING_PLANS
from oms_inventory import held
from oms_runtime import Service
from oms_runtime.database import driver
from oms_runtime.testing import Emitted, deliver, take_outbox

GRACE = timedelta(minutes=10)


def of_type(emitted: list[Emitted], kind: type) -> list:
    return [e.event for e in emitted if e.headers["ce-type"] == kind.TYPE]


async def fetch(service: Service, query: str, *args: Any) -> list[Any]:
    async with service.database.connect() as conn:
        return await (await driver(conn)).fetch(query, *args)


async def stock_of(service: Service, sku: str, source: str) -> tuple[int, int] | None:
    rows = await fetch(service, "SELECT on_hand, reserved FROM stock WHERE sku = $1 AND source_code = $2", sku, source)
    return (rows[0]["on_hand"], rows[0]["reserved"]) if rows else None


async def held_for(service: Service, source: str) -> int:
    return len(await fetch(service, "SELECT id FROM held_receipts WHERE source_code = $1", source))


async def test_a_receipt_for_a_source_not_heard_of_yet_waits_and_is_applied_when_the_network_announces_it(
    inventory, events, fresh_sku, fresh_source
):
    emitted = await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 5))

    assert emitted == []  # not dead-lettered, not applied
    assert await stock_of(inventory, fresh_sku, fresh_source) is None
    assert await held_for(inventory, fresh_source) == 1

    emitted = await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))

    (level,) = of_type(emitted, StockLevelChanged)
    assert (level.data.sku, level.data.source_code, level.data.on_hand) == (fresh_sku, fresh_source, 5)
    assert await stock_of(inventory, fresh_sku, fresh_source) == (5, 0)
    assert await held_for(inventory, fresh_source) == 0


async def test_counts_announcements_and_returns_wait_too_and_are_applied_in_the_order_they_came(
    inventory, events, fresh_sku, fresh_source
):
    await deliver(
        inventory,
        INVENTORY_RECEIPTS,
        events.received(fresh_sku, fresh_source, 5),
        events.counted(fresh_sku, fresh_source, 3),
        events.expected(fresh_sku, fresh_source, 10, datetime.now(UTC).date() + timedelta(days=3), reference="PO-1"),
    )
    returned = events.returned(uuid.uuid4(), fresh_source, ("1", fresh_sku, 2, "resellable"))
    assert await deliver(inventory, ORDER_EVENTS, returned) == []
    assert await held_for(inventory, fresh_source) == 4

    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))

    # Received 5, counted 3, then the return's 2: in arrival order.
    assert await stock_of(inventory, fresh_sku, fresh_source) == (5, 0)
    expected = await fetch(inventory, "SELECT outstanding, reference FROM expected_receipts WHERE sku = $1", fresh_sku)
    assert [(r["outstanding"], r["reference"]) for r in expected] == [(10, "PO-1")]
    assert await held_for(inventory, fresh_source) == 0


async def test_a_held_receipt_serves_the_waiting_lines_when_its_source_arrives(
    inventory, events, fresh_sku, fresh_source
):
    plan = events.plan(backordered=(("1", fresh_sku, 2),), ship_to_country="DE")
    await deliver(inventory, ROUTING_PLANS, plan)
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 3))

    emitted = await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))

    (allocated,) = of_type(emitted, BackorderAllocated)
    assert (allocated.data.order_id, allocated.data.source_code) == (plan.data.order_id, fresh_source)
    assert await stock_of(inventory, fresh_sku, fresh_source) == (3, 2)


async def test_a_held_receipt_is_dead_lettered_at_once_when_its_source_is_announced_inactive(
    inventory, events, fresh_sku, fresh_source
):
    receipt = events.received(fresh_sku, fresh_source, 5)
    await deliver(inventory, INVENTORY_RECEIPTS, receipt)

    emitted = await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source, active=False))

    (dead,) = emitted
    assert dead.topic == DEAD_LETTERS.name
    assert dead.payload == receipt.to_bytes()
    assert dead.headers["oms-original-topic"] == INVENTORY_RECEIPTS.name
    assert dead.headers["oms-error-message"] == (
        f"inactive source '{fresh_source}': receipts are accepted only for active sources in the network "
        "(oms.routing.network.v1); it was announced inactive while they waited for it"
    )
    assert await stock_of(inventory, fresh_sku, fresh_source) is None
    assert await held_for(inventory, fresh_source) == 0


async def test_a_receipt_held_past_the_grace_period_is_dead_lettered_with_the_reason_and_its_replay_is_applied(
    inventory, events, fresh_sku, fresh_source
):
    receipt = events.received(fresh_sku, fresh_source, 5)
    await deliver(inventory, INVENTORY_RECEIPTS, receipt)
    [row] = await fetch(inventory, "SELECT held_at FROM held_receipts WHERE source_code = $1", fresh_source)
    await take_outbox(inventory)

    # Within the grace period it stays (what other tests left waiting longer may go); after it, the receipt is
    # dead-lettered as it came, saying why.
    await held.dead_letter_expired(inventory, GRACE, row["held_at"] + GRACE)
    assert await held_for(inventory, fresh_source) == 1
    await take_outbox(inventory)
    while await held.dead_letter_expired(inventory, GRACE, row["held_at"] + GRACE + timedelta(seconds=1)):
        pass

    (dead,) = [e for e in await take_outbox(inventory) if e.key == fresh_sku]
    assert dead.topic == DEAD_LETTERS.name
    assert (dead.key, dead.payload) == (fresh_sku, receipt.to_bytes())
    assert dead.headers["oms-error-class"] == "Refused"
    assert dead.headers["oms-error-message"] == (
        f"unknown source '{fresh_source}': receipts are accepted only for sources in the network "
        "(oms.routing.network.v1); held 10 min for the source to be announced there, and it was not"
    )
    assert await held_for(inventory, fresh_source) == 0

    # The source arrives late; nothing waits for it any more. An operator replays the dead letter: applied, once.
    assert (
        of_type(await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source)), StockLevelChanged)
        == []
    )
    await deliver(inventory, INVENTORY_RECEIPTS, receipt)
    await deliver(inventory, INVENTORY_RECEIPTS, receipt)
    assert await stock_of(inventory, fresh_sku, fresh_source) == (5, 0)


async def test_a_held_receipt_delivered_again_is_neither_held_twice_nor_applied_twice(
    inventory, events, fresh_sku, fresh_source
):
    receipt = events.received(fresh_sku, fresh_source, 5)
    await deliver(inventory, INVENTORY_RECEIPTS, receipt)
    await deliver(inventory, INVENTORY_RECEIPTS, receipt)
    assert await held_for(inventory, fresh_source) == 1

    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))
    await deliver(inventory, INVENTORY_RECEIPTS, receipt)
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))

    assert await stock_of(inventory, fresh_sku, fresh_source) == (5, 0)


async def test_receipts_racing_the_network_event_of_their_source_are_each_applied_once(
    inventory, second_inventory, events, fresh_sku
):
    codes = [f"RACE-{uuid.uuid4().hex[:8]}" for _ in range(12)]

    # Two instances: one consumes the receipts while the other consumes the network, at the same moment.
    await asyncio.gather(
        *(deliver(second_inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, code, 7)) for code in codes),
        *(deliver(inventory, ROUTING_NETWORK, events.source_upserted(code)) for code in codes),
    )

    rows = await fetch(
        inventory, "SELECT source_code, on_hand FROM stock WHERE sku = $1 AND source_code = ANY($2)", fresh_sku, codes
    )
    assert {r["source_code"]: r["on_hand"] for r in rows} == dict.fromkeys(codes, 7)
    assert await fetch(inventory, "SELECT id FROM held_receipts WHERE source_code = ANY($1)", codes) == []
