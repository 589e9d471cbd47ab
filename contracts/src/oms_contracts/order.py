"""What the order service publishes on `oms.order.events.v1`, keyed by order_id."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field, HttpUrl, ValidationError

from .common import (
    Address,
    Customer,
    Line,
    LineQuantity,
    OrderOptions,
    PricedLine,
    ReturnCondition,
    ShippingMethod,
)
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
    cause_type: str | None = Field(
        default=None,
        max_length=200,
        description="Type of the event or request behind the change, e.g. oms.channel.payment_failed.v1 or http",
    )


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


class UnitsFrom(StrEnum):
    """Where cancelled units were when they were cancelled: what inventory must give back for them."""

    open = "open"  # not planned yet: nothing held
    backordered = "backordered"  # waiting in the SKU's queue: leaves it
    reserved = "reserved"  # reserved at a source, not requested: the reservation is released
    requested = "requested"  # the source confirmed it will not ship them: its fulfillment.cancelled released them


class CancelledUnits(Line):
    from_state: UnitsFrom = Field(alias="from")
    fulfillment_id: uuid.UUID | None = Field(default=None, description="For reserved and requested units")


class LinesCancelledData(OrderRef):
    lines: list[LineQuantity] = Field(min_length=1)
    reason: Text
    actor: NonEmptyStr
    refund_amount: Money
    currency: CurrencyCode
    grand_total: Money = Field(description="The order total after the cancellation")
    cancellation_id: uuid.UUID | None = Field(default=None, description="The request this answers, if one asked")
    units: list[CancelledUnits] = Field(default_factory=list, description="Where each cancelled unit was")
    status: OrderStatus | None = Field(default=None, description="The order's status after the cancellation")


class RefundCause(StrEnum):
    cancellation = "cancellation"
    return_ = "return"


class RefundIssuedData(OrderRef):
    refund_id: uuid.UUID
    amount: Money
    currency: CurrencyCode
    reason: Text
    lines: list[LineQuantity] = Field(default_factory=list)
    cause: RefundCause | None = None
    cancellation_id: uuid.UUID | None = None
    return_id: uuid.UUID | None = None
    refunded_total: Money | None = Field(default=None, description="Everything refunded on the order so far")


class StuckKind(StrEnum):
    paid_not_planned = "paid_not_planned"
    requested_not_accepted = "requested_not_accepted"
    accepted_not_shipped = "accepted_not_shipped"
    backorder_overdue = "backorder_overdue"
    no_progress = "no_progress"


class OrderStuckData(OrderRef):
    status: OrderStatus
    since: UtcDatetime
    age_hours: float = Field(ge=0)
    kind: StuckKind | None = None
    reason: Text | None = Field(default=None, description="What has not happened, in words an operator reads")
    fulfillment_id: uuid.UUID | None = None


class CancellationRejectedData(OrderRef):
    """A cancellation that could not be done (in whole or in part): the units named here stay on the order."""

    cancellation_id: uuid.UUID
    lines: list[LineQuantity] = Field(min_length=1)
    reason: Text
    requested_by: NonEmptyStr


class ReplanRequestedData(OrderRef):
    """A source will not ship these units (rejected or cancelled the fulfillment): plan them again without it."""

    fulfillment_id: uuid.UUID
    source_code: SourceCode
    lines: list[Line] = Field(min_length=1)
    reason: Text


class ReturnedUnits(Line):
    condition: ReturnCondition


class LinesReturnedData(OrderRef):
    """A return the order service accepted: what came back where, and what is refunded for it."""

    return_id: uuid.UUID
    source_code: SourceCode = Field(description="Where it was received; resellable units are restocked there")
    lines: list[ReturnedUnits] = Field(min_length=1)
    reason: Text
    refund_amount: Money
    currency: CurrencyCode


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

    # The Kafka header that names the new status beside the record (not part of the contract: the body says it), so
    # that a consumer interested in some statuses only can pass the others over unread.
    STATUS_HEADER: ClassVar[str] = "oms-to-status"

    def headers(self) -> list[tuple[str, str]]:
        return [(self.STATUS_HEADER, self.data.to_status.value)]


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


class CancellationRejected(_OrderEvent):
    type: Literal["oms.order.cancellation_rejected.v1"] = "oms.order.cancellation_rejected.v1"
    data: CancellationRejectedData


class ReplanRequested(_OrderEvent):
    type: Literal["oms.order.replan_requested.v1"] = "oms.order.replan_requested.v1"
    data: ReplanRequestedData


class LinesReturned(_OrderEvent):
    type: Literal["oms.order.lines_returned.v1"] = "oms.order.lines_returned.v1"
    data: LinesReturnedData
