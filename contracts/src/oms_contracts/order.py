"""What the order service publishes on `oms.order.events.v1`, keyed by order_id."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Literal

from pydantic import Field, HttpUrl, ValidationError

from .common import Address, Customer, Line, LineQuantity, OrderOptions, PricedLine, ShippingMethod
from .envelope import CloudEvent
from .types import Contract, Count, CurrencyCode, Money, NonEmptyStr, SourceCode, Text, UtcDatetime


class OrderStatus(StrEnum):
    pending = "pending"
    payment_processing = "payment_processing"
    paid = "paid"
    awaiting_fulfillment = "awaiting_fulfillment"
    partially_fulfilled = "partially_fulfilled"
    fulfilled = "fulfilled"
    delivered = "delivered"
    cancelled = "cancelled"
    refunded = "refunded"


class OrderRef(Contract):
    order_id: uuid.UUID


class OrderAcceptedData(OrderRef):
    """The accepted order as the OMS holds it: everything a reader needs to show or notify about it."""

    channel: NonEmptyStr
    external_order_id: NonEmptyStr
    placed_at: UtcDatetime
    currency: CurrencyCode
    customer: Customer
    shipping_address: Address
    shipping_method: ShippingMethod
    pickup_source: SourceCode | None = None
    lines: list[PricedLine] = Field(min_length=1)
    subtotal: Money
    shipping_total: Money
    tax_total: Money
    discount_total: Money
    grand_total: Money
    options: OrderOptions


class FieldError(Contract):
    field: str = Field(description="Dotted path of the offending field, e.g. data.lines.0.quantity")
    message: str
    type: str = Field(description="Machine-readable error kind, e.g. greater_than")

    @classmethod
    def all_of(cls, error: ValidationError) -> list[FieldError]:
        """One entry per field a validation error names; the union's type tag is left out of the path."""
        return [
            cls(
                field=".".join(str(part) for part in e["loc"] if not str(part).startswith("oms.")) or "(message)",
                message=e["msg"],
                type=e["type"],
            )
            for e in error.errors(include_url=False)
        ]


class OrderRejectedData(Contract):
    order_id: uuid.UUID | None = Field(description="Null when the submission did not name its channel and order")
    channel: str | None = None
    external_order_id: str | None = None
    rejected_event_id: uuid.UUID | None = None
    reason: Text
    errors: list[FieldError] = Field(
        default_factory=list, description="The field errors, the first 50 of them (each field and message cut short)"
    )
    errors_omitted: Count = Field(default=0, description="How many more field errors there were than `errors` lists")


class StatusChangedData(OrderRef):
    from_status: OrderStatus | None = Field(alias="from", description="Null for a new order")
    to_status: OrderStatus = Field(alias="to")
    actor: NonEmptyStr
    note: Text | None = None
    at: UtcDatetime
    cause_event_id: uuid.UUID | None = None


class OrderPaidData(OrderRef):
    """Everything routing needs to plan an order, and nothing more."""

    channel: NonEmptyStr
    placed_at: UtcDatetime
    currency: CurrencyCode
    amount: Money
    lines: list[Line] = Field(min_length=1)
    shipping_address: Address
    shipping_method: ShippingMethod
    pickup_source: SourceCode | None = None
    options: OrderOptions


class LinesCancelledData(OrderRef):
    lines: list[LineQuantity] = Field(min_length=1)
    reason: Text
    actor: NonEmptyStr
    refund_amount: Money
    currency: CurrencyCode
    grand_total: Money = Field(description="The order total after the cancellation")


class RefundIssuedData(OrderRef):
    refund_id: uuid.UUID
    amount: Money
    currency: CurrencyCode
    reason: Text
    lines: list[LineQuantity] = Field(default_factory=list)


class OrderStuckData(OrderRef):
    status: OrderStatus
    since: UtcDatetime
    age_hours: float = Field(ge=0)


class OrderFulfillmentShippedData(OrderRef):
    """A parcel left a source, as the order service checked and recorded it: what is in it and what is still to come.

    A fulfillment may leave in several parcels (a partial shipment); each is announced once."""

    fulfillment_id: uuid.UUID
    source_code: SourceCode
    carrier: NonEmptyStr
    service: str | None = Field(default=None, max_length=100)
    tracking_number: NonEmptyStr
    tracking_url: HttpUrl | None = None
    shipped_at: UtcDatetime
    lines: list[Line] = Field(min_length=1, description="What is in this parcel")
    to_come: list[Line] = Field(
        default_factory=list, description="Ordered units of the whole order not shipped yet and not cancelled"
    )
    status: OrderStatus = Field(description="The order's status after this parcel")


class OrderFulfillmentDeliveredData(OrderRef):
    fulfillment_id: uuid.UUID
    source_code: SourceCode
    delivered_at: UtcDatetime
    lines: list[Line] = Field(min_length=1, description="What the fulfillment delivered")
    tracking_numbers: list[str] = Field(default_factory=list)
    status: OrderStatus = Field(description="The order's status after this delivery")


class _OrderEvent(CloudEvent):
    data: OrderRef | OrderRejectedData

    def key(self) -> str:
        return str(self.data.order_id) if self.data.order_id else str(self.id)


class OrderAccepted(_OrderEvent):
    type: Literal["oms.order.accepted.v1"] = "oms.order.accepted.v1"
    data: OrderAcceptedData


class OrderRejected(_OrderEvent):
    type: Literal["oms.order.rejected.v1"] = "oms.order.rejected.v1"
    data: OrderRejectedData


class StatusChanged(_OrderEvent):
    type: Literal["oms.order.status_changed.v1"] = "oms.order.status_changed.v1"
    data: StatusChangedData


class OrderPaid(_OrderEvent):
    type: Literal["oms.order.paid.v1"] = "oms.order.paid.v1"
    data: OrderPaidData


class LinesCancelled(_OrderEvent):
    type: Literal["oms.order.lines_cancelled.v1"] = "oms.order.lines_cancelled.v1"
    data: LinesCancelledData


class RefundIssued(_OrderEvent):
    type: Literal["oms.order.refund_issued.v1"] = "oms.order.refund_issued.v1"
    data: RefundIssuedData


class OrderStuck(_OrderEvent):
    type: Literal["oms.order.stuck.v1"] = "oms.order.stuck.v1"
    data: OrderStuckData


class OrderFulfillmentShipped(_OrderEvent):
    type: Literal["oms.order.fulfillment_shipped.v1"] = "oms.order.fulfillment_shipped.v1"
    data: OrderFulfillmentShippedData


class OrderFulfillmentDelivered(_OrderEvent):
    type: Literal["oms.order.fulfillment_delivered.v1"] = "oms.order.fulfillment_delivered.v1"
    data: OrderFulfillmentDeliveredData
