"""Every topic, what travels on it, and how it is created. This list is what `oms topics create` applies."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from . import channel, fulfillment, inventory, notification, order, routing
from .envelope import READ_FROM_A_TOPIC, CloudEvent


@dataclass(frozen=True)
class Topic:
    name: str
    events: tuple[type[CloudEvent], ...]
    key: str
    description: str
    config: dict[str, str] = field(default_factory=dict)

    @cached_property
    def union(self) -> Any:
        """The Pydantic type of one message on this topic: a union discriminated by `type`."""
        if len(self.events) == 1:
            return self.events[0]
        return Annotated[Union[self.events], Field(discriminator="type")]  # noqa: UP007

    @cached_property
    def adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.union)

    def parse(self, raw: bytes | str) -> CloudEvent:
        """Validate one message's bytes; raises pydantic.ValidationError with every field error (a missing id is
        one: what a consumer reads must carry its own)."""
        return self.adapter.validate_json(raw, context=READ_FROM_A_TOPIC)

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(e.TYPE for e in self.events)


CHANNEL_ORDERS = Topic(
    "oms.channel.orders.v1",
    (
        channel.OrderSubmitted,
        channel.PaymentAuthorized,
        channel.PaymentCaptured,
        channel.PaymentFailed,
        channel.CancellationRequested,
        channel.ReturnReceived,
    ),
    key="{channel}:{external_order_id}",
    description="Orders, payments, cancellations and returns from sales channels",
)
ORDER_EVENTS = Topic(
    "oms.order.events.v1",
    (
        order.OrderAccepted,
        order.OrderRejected,
        order.StatusChanged,
        order.OrderPaid,
        order.LinesCancelled,
        order.RefundIssued,
        order.OrderStuck,
        order.OrderFulfillmentShipped,
        order.OrderFulfillmentDelivered,
        order.CancellationRejected,
        order.ReplanRequested,
        order.LinesReturned,
    ),
    key="order_id",
    description="Everything that happens to an order, from the order service",
)
ROUTING_PLANS = Topic(
    "oms.routing.plans.v1",
    (routing.FulfillmentPlanned,),
    key="order_id",
    description="Fulfillment plans: shipments per source, backordered and unfulfillable lines",
)
INVENTORY_ALLOCATIONS = Topic(
    "oms.inventory.allocations.v1",
    (
        inventory.ShipmentReserved,
        inventory.ReservationRejected,
        inventory.BackorderQueued,
        inventory.BackorderAllocated,
    ),
    key="order_id",
    description="Reservations, rejections and backorders, from inventory",
)
INVENTORY_RECEIPTS = Topic(
    "oms.inventory.receipts.v1",
    (inventory.StockReceived, inventory.StockCounted, inventory.ReceiptExpected),
    key="sku",
    description="Stock arriving at, counted in or announced to a source: WMS feeds, purchasing, the returns desk",
)
INVENTORY_STOCK = Topic(
    "oms.inventory.stock.v1",
    (inventory.StockLevelChanged, inventory.LowStock),
    key="sku",
    description="Stock levels per (sku, source) and low-stock alerts, from inventory",
)
FULFILLMENT_UPDATES = Topic(
    "oms.fulfillment.updates.v1",
    (
        fulfillment.FulfillmentAccepted,
        fulfillment.FulfillmentRejected,
        fulfillment.FulfillmentShipped,
        fulfillment.FulfillmentDelivered,
        fulfillment.FulfillmentCancelled,
    ),
    key="order_id",
    description="Shipment updates that fulfillment sources publish back",
)
ROUTING_NETWORK = Topic(
    "oms.routing.network.v1",
    (routing.SourceUpserted, routing.SourceDeactivated, routing.RuleChainSet),
    key="source code; rule-chain:{channel} for rule chains",
    description="The fulfillment network: the latest state of every source and every channel's rule chain (compacted)",
    config={"cleanup.policy": "compact"},
)
NOTIFICATIONS = Topic(
    "oms.notifications.v1",
    (notification.NotificationSent, notification.NotificationFailed),
    key="order_id",
    description="Every customer and operator message sent or failed",
)
DEAD_LETTERS = Topic(
    "oms.dlq.v1",
    (),
    key="original key",
    description="Messages that can never be processed: the original bytes, the error in headers",
)

FULFILLMENT_REQUEST_EVENTS = (fulfillment.FulfillmentRequested, fulfillment.FulfillmentCancelRequested)


def fulfillment_requests(source_code: str) -> Topic:
    """One request topic per source, so that a broker ACL can let a 3PL read its own orders and no one else's."""
    return Topic(
        f"oms.fulfillment.requests.{source_code}.v1",
        FULFILLMENT_REQUEST_EVENTS,
        key="order_id",
        description=f"Fulfillment requests for source {source_code}",
    )


# Topics created at start-up; a source's request topic is created by routing when the source is first upserted.
FIXED_TOPICS: tuple[Topic, ...] = (
    CHANNEL_ORDERS,
    ORDER_EVENTS,
    ROUTING_PLANS,
    INVENTORY_ALLOCATIONS,
    INVENTORY_RECEIPTS,
    INVENTORY_STOCK,
    FULFILLMENT_UPDATES,
    ROUTING_NETWORK,
    NOTIFICATIONS,
    DEAD_LETTERS,
)

# Header names carried on dead-lettered messages.
DLQ_HEADERS = (
    "oms-original-topic",
    "oms-original-partition",
    "oms-original-offset",
    "oms-error-class",
    "oms-error-message",
    "oms-service",
)

ALL_EVENTS: tuple[type[CloudEvent], ...] = tuple(
    dict.fromkeys(e for t in (*FIXED_TOPICS, fulfillment_requests("x")) for e in t.events)
)

_TOPIC_OF_TYPE = {event.TYPE: topic.name for topic in FIXED_TOPICS for event in topic.events}


def topic_for(event: CloudEvent) -> str:
    """The topic an event is published on."""
    if isinstance(event, FULFILLMENT_REQUEST_EVENTS):
        return fulfillment_requests(event.data.source_code).name
    return _TOPIC_OF_TYPE[event.type]
