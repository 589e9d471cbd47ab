"""What routing publishes: plans on `oms.routing.plans.v1` (keyed by order_id) and the fulfillment network on the
compacted `oms.routing.network.v1` (keyed by source code)."""

from __future__ import annotations

import uuid
import zoneinfo
from datetime import date, time
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, WithJsonSchema, field_validator

from .common import Line, RoutingRule, SourceType, check_rule_chain
from .envelope import CloudEvent
from .order import OrderRef
from .types import Contract, CountryCode, Latitude, Longitude, Money, NonEmptyStr, SourceCode, Text, UtcDatetime


def _zone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"{name!r} is not an IANA time zone such as 'Europe/Berlin'") from error
    return name


TimeZone = Annotated[
    str,
    AfterValidator(_zone),
    WithJsonSchema({"type": "string", "maxLength": 64, "description": "IANA time zone, e.g. Europe/Berlin"}),
]


class TransitDays(Contract):
    """Days from handing a parcel to the carrier to the customer having it, per shipping method."""

    standard: int = Field(default=3, ge=0, le=60)
    express: int = Field(default=1, ge=0, le=60)


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
    timezone: TimeZone = Field(default="UTC", description="Where the source's cut-off time is read")
    cutoff_time: time | None = Field(
        default=None, description="Local time after which a new shipment leaves one day later; null: no cut-off"
    )
    transit_days: TransitDays = Field(default_factory=TransitDays)
    daily_capacity: int | None = Field(
        default=None, ge=1, description="Shipments the source can take per day; null: unlimited"
    )


class PlannedShipment(Contract):
    shipment_id: uuid.UUID = Field(description="Also the id of the fulfillment the order service requests")
    source_code: SourceCode
    source_type: SourceType
    lines: list[Line] = Field(min_length=1)
    estimated_ship_date: date
    estimated_delivery_date: date
    reason: Text = Field(description="Why this source, in words a person reads")
    distance_km: float | None = Field(default=None, ge=0, description="From the source to the ship-to address")
    cost: Money | None = Field(default=None, description="The source's cost for this shipment")


class UnplannedLine(Line):
    reason: Text


class FulfillmentPlannedData(OrderRef):
    plan_id: uuid.UUID
    attempt: int = Field(ge=1, description="1 for the first plan; re-plans after a rejection count up")
    shipments: list[PlannedShipment] = Field(default_factory=list)
    backordered_lines: list[UnplannedLine] = Field(default_factory=list)
    unfulfillable_lines: list[UnplannedLine] = Field(default_factory=list)
    planned_at: UtcDatetime
    rules: list[RoutingRule] = Field(default_factory=list, description="The rule chain that ranked this plan")
    # What a backordered line's release must respect, so that inventory can serve it without asking.
    ship_to_country: CountryCode | None = None
    pickup_source: SourceCode | None = None
    ship_complete: bool = False


class SourceDeactivatedData(Contract):
    code: SourceCode
    deactivated_at: UtcDatetime


class RuleChainData(Contract):
    """The rule chain routing ranks a channel's orders by (an order may still bring its own)."""

    channel: str | None = Field(
        default=None, min_length=1, max_length=64, description="The sales channel; null for the default chain"
    )
    rules: list[RoutingRule] = Field(min_length=1, max_length=len(RoutingRule))
    set_by: NonEmptyStr
    set_at: UtcDatetime

    @field_validator("rules")
    @classmethod
    def _chain(cls, rules: list[RoutingRule]) -> list[RoutingRule]:
        return check_rule_chain(rules)


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


class RuleChainSet(CloudEvent):
    """Published on the network topic beside the sources, keyed so that compaction keeps each channel's latest."""

    type: Literal["oms.routing.rule_chain_set.v1"] = "oms.routing.rule_chain_set.v1"
    data: RuleChainData

    def key(self) -> str:
        return f"rule-chain:{self.data.channel or '*'}"
