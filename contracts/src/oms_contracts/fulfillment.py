"""Between the OMS and its fulfillment sources: requests on `oms.fulfillment.requests.{source_code}.v1` and updates
on `oms.fulfillment.updates.v1`, all keyed by order_id."""

from __future__ import annotations

import uuid
from datetime import date
from enum import StrEnum
from typing import Literal

from pydantic import Field, HttpUrl

from .common import Address, Line, LineQuantity, Recipient, ShippingMethod
from .envelope import CloudEvent
from .types import Contract, NonEmptyStr, SourceCode, Text, UtcDatetime


class ReasonCode(StrEnum):
    """Why a source will not ship units (`fulfillment.rejected`, `fulfillment.cancelled`): what inventory does with
    the units it held for them follows from it."""

    out_of_stock = "out_of_stock"  # the shelf is empty or the units were not found: they are not there
    damaged = "damaged"  # found, but not fit to ship: they are not there to sell either
    customer_request = "customer_request"  # the source's answer to a cancel request: the units are on the shelf
    other = "other"  # capacity, address, carrier...: the units are on the shelf (also when a source sends none)


REASON_CODE = Field(
    default=ReasonCode.other,
    description="out_of_stock and damaged: the units are not there, and inventory takes them off the source's on "
    "hand; otherwise they are available there again. Absent: other.",
)


class FulfillmentRef(Contract):
    fulfillment_id: uuid.UUID
    order_id: uuid.UUID
    source_code: SourceCode


class FulfillmentRequestedData(FulfillmentRef):
    """What a source needs to ship, and only the personal data a shipper needs."""

    lines: list[Line] = Field(min_length=1)
    ship_to: Address
    recipient: Recipient
    shipping_method: ShippingMethod
    requested_at: UtcDatetime
    ship_by: date


class FulfillmentCancelRequestedData(FulfillmentRef):
    lines: list[LineQuantity] | None = Field(default=None, description="null cancels the whole fulfillment")
    reason: Text


class FulfillmentAcceptedData(FulfillmentRef):
    pass


class FulfillmentRejectedData(FulfillmentRef):
    reason: Text
    reason_code: ReasonCode = REASON_CODE


class FulfillmentShippedData(FulfillmentRef):
    carrier: NonEmptyStr
    service: str | None = Field(default=None, max_length=100)
    tracking_number: NonEmptyStr
    tracking_url: HttpUrl | None = None
    shipped_at: UtcDatetime
    lines: list[LineQuantity] = Field(min_length=1)


class FulfillmentDeliveredData(FulfillmentRef):
    delivered_at: UtcDatetime


class FulfillmentCancelledData(FulfillmentRef):
    """The source will not ship these units: its answer to a cancel request, or its own decision (a shelf found
    empty). The order service tells the two apart; what it did not ask to cancel is planned again elsewhere."""

    lines: list[LineQuantity] = Field(min_length=1)
    reason: Text | None = None
    reason_code: ReasonCode = REASON_CODE


class _FulfillmentEvent(CloudEvent):
    data: FulfillmentRef

    def key(self) -> str:
        return str(self.data.order_id)


class FulfillmentRequested(_FulfillmentEvent):
    type: Literal["oms.fulfillment.requested.v1"] = "oms.fulfillment.requested.v1"
    data: FulfillmentRequestedData


class FulfillmentCancelRequested(_FulfillmentEvent):
    type: Literal["oms.fulfillment.cancel_requested.v1"] = "oms.fulfillment.cancel_requested.v1"
    data: FulfillmentCancelRequestedData


class FulfillmentAccepted(_FulfillmentEvent):
    type: Literal["oms.fulfillment.accepted.v1"] = "oms.fulfillment.accepted.v1"
    data: FulfillmentAcceptedData


class FulfillmentRejected(_FulfillmentEvent):
    type: Literal["oms.fulfillment.rejected.v1"] = "oms.fulfillment.rejected.v1"
    data: FulfillmentRejectedData


class FulfillmentShipped(_FulfillmentEvent):
    type: Literal["oms.fulfillment.shipped.v1"] = "oms.fulfillment.shipped.v1"
    data: FulfillmentShippedData


class FulfillmentDelivered(_FulfillmentEvent):
    type: Literal["oms.fulfillment.delivered.v1"] = "oms.fulfillment.delivered.v1"
    data: FulfillmentDeliveredData


class FulfillmentCancelled(_FulfillmentEvent):
    type: Literal["oms.fulfillment.cancelled.v1"] = "oms.fulfillment.cancelled.v1"
    data: FulfillmentCancelledData
