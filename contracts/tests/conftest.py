"""One valid example of every event type, written as the JSON a producer sends (so the tests read like the wire)."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from oms_contracts import CloudEvent, order_id_for

ORDER_ID = str(order_id_for("web-eu", "1001"))
FULFILLMENT_ID = "0b6b7c4e-3f51-4d0a-9a33-1f4c2d0d9e01"
SHIPMENT_ID = "5f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
PLAN_ID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
CAUSE_ID = "11111111-2222-4333-8444-555555555555"

# The public example of DESIGN.md ("Public contract"), verbatim.
ORDER_SUBMITTED = {
    "channel": "web-eu",
    "external_order_id": "1001",
    "placed_at": "2026-11-22T10:00:00Z",
    "currency": "EUR",
    "customer": {"id": "c-1", "email": "ada@example.com", "name": "Ada L", "phone": None, "locale": "en"},
    "shipping_address": {
        "name": "Ada L",
        "line1": "Unter den Linden 1",
        "line2": None,
        "city": "Berlin",
        "region": None,
        "postal_code": "10117",
        "country": "DE",
        "lat": 52.517,
        "lon": 13.389,
    },
    "shipping_method": "standard",
    "pickup_source": None,
    "lines": [{"line_id": "1", "sku": "SKU-1", "quantity": 2, "unit_price": "19.99"}],
    "shipping_total": "4.99",
    "tax_total": "0.00",
    "discount_total": "0.00",
    "grand_total": "44.97",
    "options": {"ship_complete": False, "backorder_policy": "allow"},
}

CHANNEL_ORDER = {"channel": "web-eu", "external_order_id": "1001"}
PAYMENT = {**CHANNEL_ORDER, "amount": "44.97", "currency": "EUR", "payment_ref": "psp-7781"}
LINES = [{"line_id": "1", "sku": "SKU-1", "quantity": 2}]
LINE_QUANTITIES = [{"line_id": "1", "quantity": 1}]
FULFILLMENT = {"fulfillment_id": FULFILLMENT_ID, "order_id": ORDER_ID, "source_code": "WH-EAST"}
SHIPMENT = {"order_id": ORDER_ID, "shipment_id": SHIPMENT_ID, "source_code": "WH-EAST", "lines": LINES}
NOTIFICATION = {
    "notification_id": "c0ffee00-0000-4000-8000-000000000001",
    "order_id": ORDER_ID,
    "template": "order_confirmed",
    "channel": "email",
    "recipient": "ada@example.com",
    "subject": "Your order 1001",
    "cause_event_id": CAUSE_ID,
    "attempts": 1,
}
SOURCE = {
    "code": "WH-EAST",
    "name": "East warehouse",
    "type": "warehouse",
    "lat": 52.52,
    "lon": 13.40,
    "countries": ["DE", "AT"],
    "priority": 10,
    "cost_per_shipment": "4.50",
    "cost_per_unit": "0.25",
    "handling_days": 1,
    "active": True,
}

DATA: dict[str, dict[str, Any]] = {
    "oms.channel.order_submitted.v1": ORDER_SUBMITTED,
    "oms.channel.payment_authorized.v1": PAYMENT,
    "oms.channel.payment_captured.v1": PAYMENT,
    "oms.channel.payment_failed.v1": {**PAYMENT, "reason": "card declined"},
    "oms.channel.cancellation_requested.v1": {
        **CHANNEL_ORDER,
        "lines": LINE_QUANTITIES,
        "reason": "changed my mind",
        "requested_by": "customer",
    },
    "oms.channel.return_received.v1": {
        **CHANNEL_ORDER,
        "lines": [{**line, "condition": "damaged"} for line in LINE_QUANTITIES],
        "source_code": "WH-EAST",
        "reason": "damaged",
    },
    "oms.order.accepted.v1": {
        **{k: v for k, v in ORDER_SUBMITTED.items() if k not in ("lines",)},
        "order_id": ORDER_ID,
        "lines": ORDER_SUBMITTED["lines"],
        "subtotal": "39.98",
    },
    "oms.order.rejected.v1": {
        "order_id": ORDER_ID,
        **CHANNEL_ORDER,
        "rejected_event_id": CAUSE_ID,
        "reason": "invalid submission",
        "errors": [
            {"field": "data.currency", "message": "'EUX' is not an ISO 4217 currency code", "type": "value_error"}
        ],
    },
    "oms.order.status_changed.v1": {
        "order_id": ORDER_ID,
        "from": "paid",
        "to": "awaiting_fulfillment",
        "actor": "oms-routing",
        "note": "planned",
        "at": "2026-11-22T10:05:00Z",
        "cause_event_id": CAUSE_ID,
        "cause_type": "oms.inventory.shipment_reserved.v1",
    },
    "oms.order.paid.v1": {
        "order_id": ORDER_ID,
        "channel": "web-eu",
        "placed_at": "2026-11-22T10:00:00Z",
        "currency": "EUR",
        "amount": "44.97",
        "lines": LINES,
        "shipping_address": ORDER_SUBMITTED["shipping_address"],
        "shipping_method": "standard",
        "options": {"ship_complete": True, "backorder_policy": "deny"},
    },
    "oms.order.lines_cancelled.v1": {
        "order_id": ORDER_ID,
        "lines": LINE_QUANTITIES,
        "reason": "out of stock",
        "actor": "cs-agent",
        "refund_amount": "19.99",
        "currency": "EUR",
        "grand_total": "24.98",
        "cancellation_id": "5a5a5a5a-1111-4222-8333-444455556666",
        "units": [{**line, "from": "backordered", "fulfillment_id": None} for line in LINES],
        "status": "awaiting_fulfillment",
    },
    "oms.order.refund_issued.v1": {
        "order_id": ORDER_ID,
        "refund_id": "7e7e7e7e-1111-4222-8333-444455556666",
        "amount": "19.99",
        "currency": "EUR",
        "reason": "line cancelled",
        "lines": LINE_QUANTITIES,
        "cause": "cancellation",
        "cancellation_id": "5a5a5a5a-1111-4222-8333-444455556666",
        "return_id": None,
        "refunded_total": "19.99",
    },
    "oms.order.stuck.v1": {
        "order_id": ORDER_ID,
        "status": "awaiting_fulfillment",
        "since": "2026-11-21T10:00:00+02:00",
        "age_hours": 26.5,
        "kind": "accepted_not_shipped",
        "reason": "WH-EAST accepted fulfillment 1 26 h ago and has not shipped it",
        "fulfillment_id": "3c3c3c3c-1111-4222-8333-444455556666",
    },
    "oms.order.fulfillment_shipped.v1": {
        "order_id": ORDER_ID,
        "fulfillment_id": SHIPMENT_ID,
        "source_code": "WH-EAST",
        "carrier": "DHL",
        "service": "Paket",
        "tracking_number": "JJD000390007",
        "tracking_url": "https://www.dhl.de/track?n=JJD000390007",
        "shipped_at": "2026-11-23T15:00:00Z",
        "lines": LINES,
        "to_come": [{"line_id": "2", "sku": "SKU-2", "quantity": 1}],
        "status": "partially_fulfilled",
    },
    "oms.order.fulfillment_delivered.v1": {
        "order_id": ORDER_ID,
        "fulfillment_id": SHIPMENT_ID,
        "source_code": "WH-EAST",
        "delivered_at": "2026-11-25T11:00:00Z",
        "lines": LINES,
        "tracking_numbers": ["JJD000390007"],
        "status": "partially_fulfilled",
    },
    "oms.order.cancellation_rejected.v1": {
        "order_id": ORDER_ID,
        "cancellation_id": "5a5a5a5a-1111-4222-8333-444455556666",
        "lines": LINE_QUANTITIES,
        "reason": "line 1: 1 unit already shipped",
        "requested_by": "channel:web-eu:ada",
    },
    "oms.order.replan_requested.v1": {
        "order_id": ORDER_ID,
        "fulfillment_id": SHIPMENT_ID,
        "source_code": "WH-EAST",
        "lines": LINES,
        "reason": "WH-EAST cancelled: shelf empty",
    },
    "oms.order.lines_returned.v1": {
        "order_id": ORDER_ID,
        "return_id": "6b6b6b6b-1111-4222-8333-444455556666",
        "source_code": "STORE-MUC",
        "lines": [{**line, "condition": "resellable"} for line in LINES],
        "reason": "too small",
        "refund_amount": "19.99",
        "currency": "EUR",
    },
    "oms.routing.fulfillment_planned.v1": {
        "order_id": ORDER_ID,
        "plan_id": PLAN_ID,
        "attempt": 1,
        "shipments": [
            {
                "shipment_id": SHIPMENT_ID,
                "source_code": "WH-EAST",
                "source_type": "warehouse",
                "lines": LINES,
                "estimated_ship_date": "2026-11-23",
                "estimated_delivery_date": "2026-11-25",
                "reason": "WH-EAST: nearest source with all 1 items, 12 km",
            }
        ],
        "backordered_lines": [{"line_id": "2", "sku": "SKU-2", "quantity": 1, "reason": "no stock anywhere"}],
        "unfulfillable_lines": [],
        "planned_at": "2026-11-22T10:01:00Z",
        "rules": ["fewest_shipments", "source_type", "nearest"],
        "ship_to_country": "DE",
        "pickup_source": None,
        "ship_complete": False,
    },
    "oms.routing.rule_chain_set.v1": {
        "channel": "web-eu",
        "rules": ["fewest_shipments", "nearest", "lowest_cost"],
        "set_by": "cs-demo",
        "set_at": "2026-11-22T09:00:00Z",
    },
    "oms.routing.source_upserted.v1": SOURCE,
    "oms.routing.source_deactivated.v1": {"code": "WH-EAST", "deactivated_at": "2026-11-22T12:00:00Z"},
    "oms.inventory.shipment_reserved.v1": {**SHIPMENT, "plan_id": PLAN_ID, "ship_by": "2026-11-23"},
    "oms.inventory.reservation_rejected.v1": {
        **SHIPMENT,
        "plan_id": PLAN_ID,
        "shortages": [{"sku": "SKU-1", "requested": 2, "available": 1}],
    },
    "oms.inventory.backorder_queued.v1": {
        "order_id": ORDER_ID,
        "lines": [{**line, "position": 3, "expected_date": "2026-12-01"} for line in LINES],
    },
    "oms.inventory.backorder_allocated.v1": {**SHIPMENT, "ship_by": "2026-11-24"},
    "oms.inventory.receipt_expected.v1": {
        "sku": "SKU-1",
        "source_code": "WH-EAST",
        "quantity": 40,
        "expected_date": "2026-12-01",
        "reference": "PO-4411",
    },
    "oms.inventory.stock_received.v1": {
        "sku": "SKU-1",
        "source_code": "WH-EAST",
        "quantity": 10,
        "reason": "restock",
        "reference": "PO-4411",
    },
    "oms.inventory.stock_counted.v1": {
        "sku": "SKU-1",
        "source_code": "WH-EAST",
        "on_hand": 0,
        "counted_at": "2026-11-22T06:00:00Z",
    },
    "oms.inventory.stock_level_changed.v1": {
        "sku": "SKU-1",
        "source_code": "WH-EAST",
        "on_hand": 10,
        "reserved": 2,
        "available": 8,
        "changed_at": "2026-11-22T10:02:00Z",
    },
    "oms.inventory.low_stock.v1": {"sku": "SKU-1", "source_code": "WH-EAST", "available": 1, "threshold": 5},
    "oms.fulfillment.requested.v1": {
        **FULFILLMENT,
        "lines": LINES,
        "ship_to": ORDER_SUBMITTED["shipping_address"],
        "recipient": {"name": "Ada L", "phone": None},
        "shipping_method": "standard",
        "requested_at": "2026-11-22T10:03:00Z",
        "ship_by": "2026-11-23",
    },
    "oms.fulfillment.cancel_requested.v1": {**FULFILLMENT, "lines": None, "reason": "order cancelled"},
    "oms.fulfillment.accepted.v1": FULFILLMENT,
    "oms.fulfillment.rejected.v1": {**FULFILLMENT, "reason": "no capacity"},
    "oms.fulfillment.shipped.v1": {
        **FULFILLMENT,
        "carrier": "DHL",
        "service": "Paket",
        "tracking_number": "JJD000390007",
        "tracking_url": "https://www.dhl.de/track?n=JJD000390007",
        "shipped_at": "2026-11-23T15:00:00Z",
        "lines": LINE_QUANTITIES,
    },
    "oms.fulfillment.delivered.v1": {**FULFILLMENT, "delivered_at": "2026-11-25T11:00:00Z"},
    "oms.fulfillment.cancelled.v1": {
        **FULFILLMENT,
        "lines": LINE_QUANTITIES,
        "reason": "shelf empty",
        "reason_code": "out_of_stock",
    },
    "oms.notification.sent.v1": {**NOTIFICATION, "sent_at": "2026-11-22T10:00:05Z"},
    "oms.notification.failed.v1": {
        **NOTIFICATION,
        "failed_at": "2026-11-22T10:00:05Z",
        "error": "550 mailbox unavailable",
    },
}


def document(type_: str, **data_changes: Any) -> dict[str, Any]:
    """The JSON of one event of `type_`, as a producer sends it."""
    data = copy.deepcopy(DATA[type_])
    data.update(data_changes)
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "type": type_,
        "source": "/oms/test",
        "time": "2026-11-22T10:00:00Z",
        "subject": data.get("order_id"),
        "datacontenttype": "application/json",
        "data": data,
    }


def example(event: type[CloudEvent]) -> CloudEvent:
    return event.model_validate(document(event.TYPE))


@pytest.fixture
def make_document() -> Callable[..., dict[str, Any]]:
    return document


@pytest.fixture
def make_example() -> Callable[[type[CloudEvent]], CloudEvent]:
    return example


@pytest.fixture
def example_types() -> set[str]:
    return set(DATA)
