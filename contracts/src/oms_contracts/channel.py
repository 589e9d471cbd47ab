"""What sales channels publish on `oms.channel.orders.v1`, keyed `{channel}:{external_order_id}`."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from .common import (
    Address,
    Customer,
    LineQuantity,
    OrderOptions,
    PricedLine,
    ReturnedLine,
    ShippingMethod,
    order_id_for,
)
from .envelope import CloudEvent
from .types import Contract, CurrencyCode, Money, NonEmptyStr, SourceCode, Text, UtcDatetime

ChannelName = Annotated[str, Field(min_length=1, max_length=64)]
ExternalOrderId = Annotated[str, Field(min_length=1, max_length=100)]


class ChannelOrderRef(Contract):
    channel: ChannelName
    external_order_id: ExternalOrderId

    @property
    def order_id(self) -> uuid.UUID:
        return order_id_for(self.channel, self.external_order_id)


class OrderSubmittedData(ChannelOrderRef):
    placed_at: UtcDatetime
    currency: CurrencyCode
    customer: Customer
    shipping_address: Address
    shipping_method: ShippingMethod = ShippingMethod.standard
    pickup_source: SourceCode | None = None
    lines: list[PricedLine] = Field(min_length=1, max_length=500)
    shipping_total: Money
    tax_total: Money
    discount_total: Money
    grand_total: Money
    options: OrderOptions = OrderOptions()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        ids = [line.line_id for line in self.lines]
        if len(ids) != len(set(ids)):
            raise ValueError("line_id must be unique within an order")
        if (self.shipping_method is ShippingMethod.pickup) != (self.pickup_source is not None):
            raise ValueError("pickup_source is required for shipping_method 'pickup' and only then")
        expected = self.subtotal + self.shipping_total + self.tax_total - self.discount_total
        if expected != self.grand_total:
            raise ValueError(
                f"grand_total {self.grand_total} does not equal lines {self.subtotal} + shipping "
                f"{self.shipping_total} + tax {self.tax_total} - discount {self.discount_total} = {expected}"
            )
        return self

    @property
    def subtotal(self) -> Decimal:
        return sum((line.unit_price * line.quantity for line in self.lines), Decimal(0))


class PaymentData(ChannelOrderRef):
    amount: Money
    currency: CurrencyCode
    payment_ref: NonEmptyStr


class PaymentFailedData(PaymentData):
    reason: Text


class CancellationRequestedData(ChannelOrderRef):
    lines: list[LineQuantity] | None = Field(default=None, min_length=1, description="null cancels the whole order")
    reason: Text
    requested_by: NonEmptyStr


class ReturnReceivedData(ChannelOrderRef):
    lines: list[ReturnedLine] = Field(min_length=1)
    source_code: SourceCode = Field(description="Where the parcel came back: a warehouse, or a store (return in store)")
    reason: Text


class _ChannelEvent(CloudEvent):
    data: ChannelOrderRef

    def key(self) -> str:
        return f"{self.data.channel}:{self.data.external_order_id}"


class OrderSubmitted(_ChannelEvent):
    type: Literal["oms.channel.order_submitted.v1"] = "oms.channel.order_submitted.v1"
    data: OrderSubmittedData


class PaymentAuthorized(_ChannelEvent):
    type: Literal["oms.channel.payment_authorized.v1"] = "oms.channel.payment_authorized.v1"
    data: PaymentData


class PaymentCaptured(_ChannelEvent):
    type: Literal["oms.channel.payment_captured.v1"] = "oms.channel.payment_captured.v1"
    data: PaymentData


class PaymentFailed(_ChannelEvent):
    type: Literal["oms.channel.payment_failed.v1"] = "oms.channel.payment_failed.v1"
    data: PaymentFailedData


class CancellationRequested(_ChannelEvent):
    type: Literal["oms.channel.cancellation_requested.v1"] = "oms.channel.cancellation_requested.v1"
    data: CancellationRequestedData


class ReturnReceived(_ChannelEvent):
    type: Literal["oms.channel.return_received.v1"] = "oms.channel.return_received.v1"
    data: ReturnReceivedData
