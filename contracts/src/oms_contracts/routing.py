"""What routing publishes: plans on `oms.routing.plans.v1` (keyed by order_id) and the fulfillment network on the
compacted `oms.routing.network.v1` (keyed by source code)."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Literal

from pydantic import Field

from .common import Line, SourceType
from .envelope import CloudEvent
from .order import OrderRef
from .types import Contract, CountryCode, Latitude, Longitude, Money, NonEmptyStr, SourceCode, Text, UtcDatetime


class Source(Contract):
    """A place that can ship an order's lines: own warehouse, store, 3PL or dropship supplier."""

    code: SourceCode
    name: NonEmptyStr
    type: SourceType
    lat: Latitude
    lon: Longitude
    countries: list[CountryCode] = Field(min_length=1, description="Countries this source ships to")
    priority: int = Field(default=100, ge=0, le=10_000, description="Lower ranks first among equals")
    cost_per_shipment: Money
    cost_per_unit: Money
    handling_days: int = Field(default=1, ge=0, le=365)
    active: bool = True


class PlannedShipment(Contract):
    shipment_id: uuid.UUID = Field(description="Also the id of the fulfillment the order service requests")
    source_code: SourceCode
    source_type: SourceType
    lines: list[Line] = Field(min_length=1)
    estimated_ship_date: date
    estimated_delivery_date: date
    reason: Text = Field(description="Why this source, in words a person reads")


class UnplannedLine(Line):
    reason: Text


class FulfillmentPlannedData(OrderRef):
    plan_id: uuid.UUID
    attempt: int = Field(ge=1, description="1 for the first plan; re-plans after a rejection count up")
    shipments: list[PlannedShipment] = Field(default_factory=list)
    backordered_lines: list[UnplannedLine] = Field(default_factory=list)
    unfulfillable_lines: list[UnplannedLine] = Field(default_factory=list)
    planned_at: UtcDatetime


class SourceDeactivatedData(Contract):
    code: SourceCode
    deactivated_at: UtcDatetime


class FulfillmentPlanned(CloudEvent):
    type: Literal["oms.routing.fulfillment_planned.v1"] = "oms.routing.fulfillment_planned.v1"
    data: FulfillmentPlannedData

    def key(self) -> str:
        return str(self.data.order_id)


class _NetworkEvent(CloudEvent):
    data: Source | SourceDeactivatedData

    def key(self) -> str:
        return self.data.code


class SourceUpserted(_NetworkEvent):
    type: Literal["oms.routing.source_upserted.v1"] = "oms.routing.source_upserted.v1"
    data: Source


class SourceDeactivated(_NetworkEvent):
    type: Literal["oms.routing.source_deactivated.v1"] = "oms.routing.source_deactivated.v1"
    data: SourceDeactivatedData
