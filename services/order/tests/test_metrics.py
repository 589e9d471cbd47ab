"""The order service's metrics (oms_order.metrics) from its real consumer path on PostgreSQL: what a committed batch
recorded is counted once, and the KPIs read the order's own times."""

from oms_contracts.topics import CHANNEL_ORDERS, FULFILLMENT_UPDATES, INVENTORY_ALLOCATIONS, ROUTING_PLANS
from oms_runtime import metrics
from oms_runtime.testing import deliver
from oms_tools import samples


def counted(name: str, **labels: str) -> float:
    return metrics.sample(name, labels)


async def test_a_shipped_order_counts_its_status_changes_flow_steps_and_on_time_shipment(order_service):
    submitted = samples.order_submitted("metrics-1", [("SKU-1", 2, "19.99")], channel_name="metrics-web")
    channel = {"oms_channel": "metrics-web"}
    kpi = {**channel, "oms_source": "WH-EAST"}
    before = {
        "requested": counted("oms_order_flow_duration_seconds_count", oms_flow_step="fulfillment_requested"),
        "shipped": counted("oms_order_flow_duration_seconds_count", oms_flow_step="shipped"),
    }
    await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    plan = samples.fulfillment_planned(submitted, [("1", 2)], source_code="WH-EAST")
    await deliver(order_service, ROUTING_PLANS, plan)
    [request] = [
        e.event
        for e in await deliver(order_service, INVENTORY_ALLOCATIONS, samples.shipment_reserved(plan))
        if e.topic.startswith("oms.fulfillment.requests.")
    ]
    await deliver(order_service, FULFILLMENT_UPDATES, samples.shipped(request))

    for status, n in (
        ("pending", 1),
        ("payment_processing", 1),
        ("paid", 1),
        ("awaiting_fulfillment", 1),
        ("fulfilled", 1),
    ):
        assert counted("oms_order_status_changes_total", oms_order_status=status, **channel) == n, status
    assert (
        counted("oms_order_flow_duration_seconds_count", oms_flow_step="fulfillment_requested")
        == before["requested"] + 1
    )
    assert counted("oms_order_flow_duration_seconds_count", oms_flow_step="shipped") == before["shipped"] + 1
    assert counted("oms_fulfillment_order_to_ship_duration_seconds_count", **kpi) == 1
    assert counted("oms_fulfillment_shipments_total", **kpi, oms_on_time="true") == 1


async def test_a_batch_replayed_after_a_refusal_counts_only_what_committed(order_service):
    good = samples.order_submitted("metrics-2", [("SKU-1", 1, "5.00")], channel_name="metrics-replay")
    # A payment for an order that does not exist is refused: the batch rolls back and is replayed one message at a
    # time, so the accepted order's status change is counted once, not once per attempt.
    stray = samples.payment_captured(
        samples.order_submitted("metrics-none", [("SKU-1", 1, "5.00")], channel_name="metrics-replay")
    )
    await deliver(order_service, CHANNEL_ORDERS, good, stray)
    assert counted("oms_order_status_changes_total", oms_order_status="pending", oms_channel="metrics-replay") == 1
