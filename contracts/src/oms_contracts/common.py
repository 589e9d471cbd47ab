"""Payload parts shared by several events: addresses, customers, lines."""

from __future__ import annotations

import functools
import uuid
from enum import StrEnum

from pydantic import Field, field_validator

from .types import (
    Contract,
    CountryCode,
    Email,
    Latitude,
    LineId,
    Longitude,
    Money,
    NonEmptyStr,
    Quantity,
    Sku,
)

# order_id = UUIDv5(ORDER_NAMESPACE, "{channel}:{external_order_id}"): a duplicate submission maps to the same
# order, and a channel can compute the id itself.
ORDER_NAMESPACE = uuid.UUID("7c2f4a52-5d0e-4b8e-9a41-0c3e6d1f2b77")


# Remembered for recent orders: the order service asks for the id of each channel event three times (to lock the
# batch's orders, to apply the event, to accept a new order), and a submission and its capture come close together.
# A SHA-1 and a UUID each time were 3 % of the order service at 300 orders/s (docs/performance.md, step 34). About
# 300 bytes an entry: the repeats within an event need only a few, 4,096 also catch a capture within seconds.
@functools.lru_cache(maxsize=4_096)
def order_id_for(channel: str, external_order_id: str) -> uuid.UUID:
    return uuid.uuid5(ORDER_NAMESPACE, f"{channel}:{external_order_id}")


class ShippingMethod(StrEnum):
    standard = "standard"
    express = "express"
    pickup = "pickup"


class BackorderPolicy(StrEnum):
    allow = "allow"
    deny = "deny"


class RoutingRule(StrEnum):
    """One rule of a routing rule chain. A chain ranks candidate plans by its rules in order, each breaking the ties
    of the ones before; `fewest_shipments` always comes first (an order is split only when it must be)."""

    fewest_shipments = "fewest_shipments"
    source_type = "source_type"  # own warehouse, then store, then 3PL, then dropship
    nearest = "nearest"
    lowest_cost = "lowest_cost"
    fastest_delivery = "fastest_delivery"  # handling days + cut-off + transit
    priority = "priority"
    daily_capacity = "daily_capacity"  # a source that reached its daily capacity is not a candidate


class SourceType(StrEnum):
    warehouse = "warehouse"
    store = "store"
    third_party_logistics = "3pl"
    dropship = "dropship"


class Address(Contract):
    name: NonEmptyStr
    line1: NonEmptyStr
    line2: str | None = Field(default=None, max_length=200)
    city: NonEmptyStr
    region: str | None = Field(default=None, max_length=100)
    postal_code: str | None = Field(default=None, max_length=20)
    country: CountryCode
    lat: Latitude | None = None
    lon: Longitude | None = None


class Customer(Contract):
    id: str | None = Field(default=None, max_length=100)
    email: Email
    name: NonEmptyStr
    phone: str | None = Field(default=None, max_length=40)
    locale: str = Field(default="en", pattern=r"^[a-z]{2}([-_][A-Za-z]{2})?$")


class Recipient(Contract):
    name: NonEmptyStr
    phone: str | None = Field(default=None, max_length=40)


class PricedLine(Contract):
    line_id: LineId
    sku: Sku
    quantity: Quantity
    unit_price: Money


class Line(Contract):
    """A quantity of one order line's SKU: what a shipment, reservation or backorder is made of."""

    line_id: LineId
    sku: Sku
    quantity: Quantity


class LineQuantity(Contract):
    line_id: LineId
    quantity: Quantity


class ReturnCondition(StrEnum):
    resellable = "resellable"  # back on the shelf of the source that received it
    damaged = "damaged"  # refunded, not restocked


class ReturnedLine(LineQuantity):
    condition: ReturnCondition = ReturnCondition.resellable


class OrderOptions(Contract):
    ship_complete: bool = False
    backorder_policy: BackorderPolicy = BackorderPolicy.allow
    routing_rules: list[RoutingRule] | None = Field(
        default=None,
        min_length=1,
        max_length=len(RoutingRule),
        description="This order's own routing rule chain, overriding its channel's; null uses the channel's",
    )

    @field_validator("routing_rules")
    @classmethod
    def _each_rule_once(cls, rules: list[RoutingRule] | None) -> list[RoutingRule] | None:
        return check_rule_chain(rules) if rules is not None else None


def check_rule_chain(rules: list[RoutingRule]) -> list[RoutingRule]:
    """A rule chain names each rule at most once, and `fewest_shipments`, when named, first: splitting an order
    is never traded for a nearer or cheaper source."""
    repeated = sorted({rule.value for rule in rules if rules.count(rule) > 1})
    if repeated:
        raise ValueError(f"a rule chain names each rule once; repeated: {', '.join(repeated)}")
    if RoutingRule.fewest_shipments in rules[1:]:
        raise ValueError("fewest_shipments always comes first in a rule chain: an order is split only when it must be")
    return rules
