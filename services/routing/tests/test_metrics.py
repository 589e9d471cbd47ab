"""Routing's metrics (oms_routing.metrics) from its real consumer path: plans counted by channel and shape (the
split and backorder rates), shipments by source, and the planning of each batch timed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from oms_contracts.inventory import StockLevelChanged, StockLevelChangedData
from oms_contracts.order import OrderPaid
from oms_contracts.topics import INVENTORY_STOCK, ORDER_EVENTS
from oms_routing import store
from oms_runtime import metrics
from oms_runtime.database import driver
from oms_runtime.testing import deliver


def level(sku: str, source_code: str, available: int) -> StockLevelChanged:
    data = StockLevelChangedData(
        sku=sku,
        source_code=source_code,
        on_hand=available,
        reserved=0,
        available=available,
        changed_at=datetime.now(UTC),
    )
    return StockLevelChanged(source="/oms/inventory", subject=sku, data=data)


async def test_plans_are_counted_by_channel_and_shape_and_shipments_by_source(routing, make_source, make_order):
    tag = uuid.uuid4().hex[:6].upper()
    east, west = f"WH-E-{tag}", f"WH-W-{tag}"
    sku_a, sku_b, missing = f"SKU-A-{tag}", f"SKU-B-{tag}", f"SKU-X-{tag}"
    channel = f"metrics-{tag}"
    async with routing.database.transaction() as conn:
        await store.upsert_sources(await driver(conn), [make_source(east), make_source(west)])
    await deliver(routing, INVENTORY_STOCK, level(sku_a, east, 5), level(sku_b, west, 5))
    whole = make_order(uuid.uuid4(), [("1", sku_a, 1)], channel=channel)
    split = make_order(uuid.uuid4(), [("1", sku_a, 1), ("2", sku_b, 1)], channel=channel)
    waiting = make_order(uuid.uuid4(), [("1", missing, 1)], channel=channel)
    batches = metrics.sample("oms_routing_planning_duration_seconds_count")

    await deliver(routing, ORDER_EVENTS, *(OrderPaid(source="/oms/order", data=o) for o in (whole, split, waiting)))

    def plans(split: str, backorder: str) -> float:
        labels = {"oms_channel": channel, "oms_plan_attempt": "first", "oms_plan_unfulfillable": "false"}
        return metrics.sample(
            "oms_routing_plans_total", {**labels, "oms_plan_split": split, "oms_plan_backorder": backorder}
        )

    assert (plans("false", "false"), plans("true", "false"), plans("false", "true")) == (1, 1, 1)
    assert metrics.sample("oms_routing_shipments_total", {"oms_source": east}) == 2
    assert metrics.sample("oms_routing_shipments_total", {"oms_source": west}) == 1
    # One batch, one observation of its planning, whatever the number of plans in it.
    assert metrics.sample("oms_routing_planning_duration_seconds_count") == batches + 1
