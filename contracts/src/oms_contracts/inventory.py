"""Inventory's topics: allocations (keyed by order_id), receipts and stock levels (keyed by sku)."""

from __future__ import annotations

import uuid
from datetime import date
from enum import StrEnum
from typing import Literal

from pydantic import Field

from .common import Line
from .envelope import CloudEvent
from .order import OrderRef
from .types import Contract, Count, Quantity, Sku, SourceCode, Text, UtcDatetime


class ShipmentRef(OrderRef):
    shipment_id: uuid.UUID
    source_code: SourceCode
    lines: list[Line] = Field(min_length=1)


class ShipmentReservedData(ShipmentRef):
    plan_id: uuid.UUID
    # Copied from the plan, so that a reader can request the fulfillment even when this event overtakes the plan
    # (they travel on different topics).
    ship_by: date = Field(description="The plan's estimated ship date: when the source should ship by")


class Shortage(Contract):
    sku: Sku
    requested: Quantity
    available: Count = Field(description="What the source had available when the reservation was refused")


class ReservationRejectedData(ShipmentRef):
    plan_id: uuid.UUID
    shortages: list[Shortage] = Field(min_length=1)


class BackorderedLine(Line):
    """A line waiting in its SKU's queue."""

    position: int | None = Field(
        default=None, ge=1, description="Place in the SKU's queue when it joined; 1 is served next"
    )
    expected_date: date | None = Field(
        default=None, description="When announced receipts should serve it (receipt_expected); null: not known"
    )


class BackorderQueuedData(OrderRef):
    lines: list[BackorderedLine] = Field(min_length=1)


class BackorderAllocatedData(ShipmentRef):
    """Stock that arrived went to waiting lines: a new shipment, reserved at `source_code`, to be requested."""

    ship_by: date | None = Field(default=None, description="When the source should ship by (its handling days)")


class ReceiptReason(StrEnum):
    restock = "restock"
    return_ = "return"
    transfer = "transfer"


class StockReceivedData(Contract):
    sku: Sku
    source_code: SourceCode
    quantity: Quantity
    reason: ReceiptReason
    reference: str | None = Field(default=None, max_length=200)


class ReceiptExpectedData(Contract):
    """Stock announced by a purchasing system or WMS: not available yet, but it dates the lines waiting for it."""

    sku: Sku
    source_code: SourceCode
    quantity: Quantity
    expected_date: date
    reference: str | None = Field(
        default=None, max_length=200, description="E.g. the purchase order; a stock_received with it settles this"
    )


class StockCountedData(Contract):
    sku: Sku
    source_code: SourceCode
    on_hand: Count
    counted_at: UtcDatetime


class StockLevelChangedData(Contract):
    sku: Sku
    source_code: SourceCode
    on_hand: Count
    reserved: Count
    available: Count
    changed_at: UtcDatetime
    reason: Text | None = Field(
        default=None,
        description="Set when the change is not a plain movement: units a source reported missing or damaged "
        "(written off its on hand)",
    )


class LowStockData(Contract):
    sku: Sku
    source_code: SourceCode
    available: Count
    threshold: Count


class _AllocationEvent(CloudEvent):
    data: OrderRef

    def key(self) -> str:
        return str(self.data.order_id)


class ShipmentReserved(_AllocationEvent):
    type: Literal["oms.inventory.shipment_reserved.v1"] = "oms.inventory.shipment_reserved.v1"
    data: ShipmentReservedData


class ReservationRejected(_AllocationEvent):
    type: Literal["oms.inventory.reservation_rejected.v1"] = "oms.inventory.reservation_rejected.v1"
    data: ReservationRejectedData


class BackorderQueued(_AllocationEvent):
    type: Literal["oms.inventory.backorder_queued.v1"] = "oms.inventory.backorder_queued.v1"
    data: BackorderQueuedData


class BackorderAllocated(_AllocationEvent):
    type: Literal["oms.inventory.backorder_allocated.v1"] = "oms.inventory.backorder_allocated.v1"
    data: BackorderAllocatedData


class _SkuEvent(CloudEvent):
    data: StockReceivedData | StockCountedData | ReceiptExpectedData | StockLevelChangedData | LowStockData

    def key(self) -> str:
        return self.data.sku


class StockReceived(_SkuEvent):
    type: Literal["oms.inventory.stock_received.v1"] = "oms.inventory.stock_received.v1"
    data: StockReceivedData


class StockCounted(_SkuEvent):
    type: Literal["oms.inventory.stock_counted.v1"] = "oms.inventory.stock_counted.v1"
    data: StockCountedData


class ReceiptExpected(_SkuEvent):
    type: Literal["oms.inventory.receipt_expected.v1"] = "oms.inventory.receipt_expected.v1"
    data: ReceiptExpectedData


class StockLevelChanged(_SkuEvent):
    type: Literal["oms.inventory.stock_level_changed.v1"] = "oms.inventory.stock_level_changed.v1"
    data: StockLevelChangedData


class LowStock(_SkuEvent):
    type: Literal["oms.inventory.low_stock.v1"] = "oms.inventory.low_stock.v1"
    data: LowStockData
