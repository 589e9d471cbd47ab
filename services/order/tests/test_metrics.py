"""The order service's metrics (oms_order.metrics) from its real consumer path on PostgreSQL: what a committed batch
recorded is counted once, and the KPIs read the order's own times."""

import httpx

from oms_contracts.topics import CHANNEL_ORDERS, FULFILLMENT_UPDATES, INVENTORY_ALLOCATIONS, ROUTING_PLANS
from oms_runtime import metrics
from oms_runtime.testing import deliver
from oms_tools import samples


def counted(name: str, **labels: str) -> float:
    return metrics.sample(name, labels)


async def requested_of_wh_east(order_service, submitted, *, units: int):
    """Submit and pay the order, plan line 1 at WH-EAST, reserve it: the fulfillment request the order emits."""
    await deliver(order_service, CHANNEL_ORDERS, submitted, samples.payment_captured(submitted))
    plan = samples.fulfillment_planned(submitted, [("1", units)], source_code="WH-EAST")
    await deliver(order_service, ROUTING_PLANS, plan)
    [request] = [
        e.event
        for e in await deliver(order_service, INVENTORY_ALLOCATIONS, samples.shipment_reserved(plan))
        if e.topic.startswith("oms.fulfillment.requests.")
    ]
    return request


async def cancel_over_http(order_service, submitted) -> dict:
    """Customer service cancels the whole order (the order service's HTTP write, outside any consumer)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=order_service.http), base_url="http://o") as http:
        response = await http.post(
            f"/orders/{submitted.data.order_id}/cancellations",
            json={"lines": None, "reason": "customer called"},
            headers={"Authorization": "Bearer cs-token"},
        )
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_shipped_order_counts_its_status_changes_flow_steps_and_on_time_shipment(order_service):
    submitted = samples.order_submitted("metrics-1", [("SKU-1", 2, "19.99")], channel_name="metrics-web")
    channel = {"oms_channel": "metrics-web"}
    kpi = {**channel, "oms_source": "WH-EAST"}
    before = {
        "requested": counted("oms_order_flow_duration_seconds_count", oms_flow_step="fulfillment_requested"),
        "shipped": counted("oms_order_flow_duration_seconds_count", oms_flow_step="shipped"),
    }
    request = await requested_of_wh_east(order_service, submitted, units=2)
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
    assert counted("oms_fulfillment_requests_total", **kpi) == 1

    # The parcel comes back to the warehouse: a return of that channel and source.
    await deliver(order_service, CHANNEL_ORDERS, samples.return_received(submitted, {"1": 1}, "WH-EAST"))
    assert counted("oms_order_returns_total", **kpi) == 1


async def test_a_batch_replayed_after_a_refusal_counts_only_what_committed(order_service):
    good = samples.order_submitted("metrics-2", [("SKU-1", 1, "5.00")], channel_name="metrics-replay")
    # A payment for an order that does not exist is refused: the batch rolls back and is replayed one message at a
    # time, so the accepted order's status change is counted once, not once per attempt.
    stray = samples.payment_captured(
        samples.order_submitted("metrics-none", [("SKU-1", 1, "5.00")], channel_name="metrics-replay")
    )
    await deliver(order_service, CHANNEL_ORDERS, good, stray)
    assert counted("oms_order_status_changes_total", oms_order_status="pending", oms_channel="metrics-replay") == 1


async def test_cancellations_count_per_channel_and_the_source_that_held_the_units(order_service):
    channel = {"oms_channel": "metrics-cancel"}
    # Cancelled by its channel before payment: no source held its units.
    unpaid = samples.order_submitted("metrics-cancel-1", [("SKU-1", 1, "5.00")], channel_name="metrics-cancel")
    await deliver(order_service, CHANNEL_ORDERS, unpaid, samples.cancellation_requested(unpaid))
    assert counted("oms_order_cancellations_total", **channel, oms_source="(none)") == 1
    assert counted("oms_order_status_changes_total", **channel, oms_order_status="cancelled") == 1

    # Cancelled by customer service over HTTP (the writes path, not a consumer) while its source holds the unit; the
    # source confirms, and the cancellation counts for that source once.
    held = samples.order_submitted("metrics-cancel-2", [("SKU-1", 1, "5.00")], channel_name="metrics-cancel")
    request = await requested_of_wh_east(order_service, held, units=1)
    assert (await cancel_over_http(order_service, held))["status"] == "pending"
    await deliver(order_service, FULFILLMENT_UPDATES, samples.cancelled(request, {"1": 1}))
    assert counted("oms_order_cancellations_total", **channel, oms_source="WH-EAST") == 1
    assert counted("oms_order_status_changes_total", **channel, oms_order_status="cancelled") == 2

    # Cancelled over HTTP before payment: done at once, in the HTTP write's own transaction, and counted after it.
    unpaid = samples.order_submitted("metrics-cancel-3", [("SKU-1", 1, "5.00")], channel_name="metrics-cancel")
    await deliver(order_service, CHANNEL_ORDERS, unpaid)
    assert (await cancel_over_http(order_service, unpaid))["status"] == "cancelled"
    assert counted("oms_order_cancellations_total", **channel, oms_source="(none)") == 2
    assert counted("oms_order_status_changes_total", **channel, oms_order_status="cancelled") == 3
