"""Inventory's metrics (oms_inventory.metrics) from its real consumer path: reservations counted by source and
outcome, and the backorder gauges bounded to the SKUs that wait longest, the rest summed as "(other)"."""

from __future__ import annotations

import uuid

from oms_contracts.topics import INVENTORY_RECEIPTS, ROUTING_NETWORK, ROUTING_PLANS
from oms_inventory import metrics as inventory_metrics
from oms_inventory.app import create_service
from oms_inventory.settings import InventorySettings
from oms_runtime import metrics
from oms_runtime.testing import deliver


async def test_reservations_are_counted_by_source_and_outcome(inventory, events, fresh_sku, fresh_source):
    await deliver(inventory, ROUTING_NETWORK, events.source_upserted(fresh_source))
    await deliver(inventory, INVENTORY_RECEIPTS, events.received(fresh_sku, fresh_source, 1))
    held = events.plan(events.shipment(fresh_source, ("1", fresh_sku, 1)))
    short = events.plan(events.shipment(fresh_source, ("1", fresh_sku, 1)))

    await deliver(inventory, ROUTING_PLANS, held, short)  # one unit: the first plan gets it, the second is short

    def counted(outcome: str) -> float:
        return metrics.sample("oms_inventory_reservations_total", {"oms_source": fresh_source, "oms_outcome": outcome})

    assert (counted("reserved"), counted("rejected")) == (1, 1)


async def test_the_backorder_gauges_show_the_skus_waiting_longest_and_sum_the_rest(service_database, events):
    # A database of its own: the queues of the other tests would take the first places.
    service = create_service(InventorySettings(database_url=service_database("inventory", "metrics")))
    try:
        source = f"WH-{uuid.uuid4().hex[:6]}"
        await deliver(service, ROUTING_NETWORK, events.source_upserted(source))
        skus = [f"SKU-{i:02}" for i in range(inventory_metrics.TOP_SKUS + 2)]
        # All queued in one transaction (one now()): the oldest first, then by SKU.
        plans = [events.plan(backordered=(("1", sku, 2),), ship_to_country="DE") for sku in skus]
        await deliver(service, ROUTING_PLANS, *plans)
        await service.refresh_metrics()
    finally:
        await service.database.dispose()

    def gauge(name: str) -> dict[str, float]:
        registry = metrics.setup("inventory")
        return {s.labels["oms_sku"]: s.value for f in registry.collect() for s in f.samples if s.name == name}

    lines = gauge("oms_inventory_backorder_lines")
    assert set(lines) == {*skus[: inventory_metrics.TOP_SKUS], inventory_metrics.OTHER}
    assert lines[inventory_metrics.OTHER] == 2 and sum(lines.values()) == len(skus)
    assert gauge("oms_inventory_backorder_units")[skus[0]] == 2
    assert all(age >= 0 for age in gauge("oms_inventory_backorder_oldest_age_seconds").values())
