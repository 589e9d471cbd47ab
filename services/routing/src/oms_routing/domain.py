"""Routing's business rules: which source ships an order's lines, and why. Pure: no I/O.

The walking-skeleton engine ships every line of a plan from the one best source that has them all, else backorders
them (or makes them unfulfillable when the order denies backorders). It is shaped for the full engine with splits:
candidate sources -> ranking by a rule chain that is data -> the plan.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from oms_contracts.common import BackorderPolicy, Line, ShippingMethod, SourceType
from oms_contracts.order import OrderPaidData
from oms_contracts.routing import FulfillmentPlannedData, PlannedShipment, Source, UnplannedLine

# Days from handing the parcel over to the customer having it; a pickup is collected at the source itself.
TRANSIT_DAYS: Mapping[ShippingMethod, int] = {
    ShippingMethod.express: 1,
    ShippingMethod.standard: 3,
    ShippingMethod.pickup: 0,
}

# "Own warehouse first, then other sources, dropship as fallback."
SOURCE_TYPE_RANK: Mapping[SourceType, int] = {
    SourceType.warehouse: 0,
    SourceType.store: 1,
    SourceType.third_party_logistics: 2,
    SourceType.dropship: 3,
}

_SOURCE_TYPE_WORDS: Mapping[SourceType, str] = {
    SourceType.warehouse: "own warehouse",
    SourceType.store: "store",
    SourceType.third_party_logistics: "3PL",
    SourceType.dropship: "dropship supplier",
}

_EARTH_RADIUS_KM = 6371.0088


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance between two points, in kilometres."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlambda = phi2 - phi1, math.radians(lon2 - lon1)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def units_by_sku(lines: Iterable[Line]) -> dict[str, int]:
    """What a set of lines needs from one source: two lines of the same SKU need their sum."""
    needs: Counter[str] = Counter()
    for line in lines:
        needs[line.sku] += line.quantity
    return dict(needs)


class Availability:
    """What each source can ship now, by (source code, sku), as the projection of inventory's stock levels says.

    A pair that is absent has nothing available."""

    def __init__(self, levels: Mapping[tuple[str, str], int] | None = None) -> None:
        self._levels: dict[tuple[str, str], int] = dict(levels or {})

    def available(self, source_code: str, sku: str) -> int:
        return self._levels.get((source_code, sku), 0)

    def can_ship(self, source_code: str, needs: Mapping[str, int]) -> bool:
        return all(self.available(source_code, sku) >= units for sku, units in needs.items())

    def take(self, source_code: str, needs: Mapping[str, int]) -> None:
        """Count stock a plan has just promised as gone, so that the next plan of the batch does not count on it."""
        for sku, units in needs.items():
            self._levels[(source_code, sku)] = max(0, self.available(source_code, sku) - units)

    def copy(self) -> Availability:
        return Availability(self._levels)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A source that could ship all the lines being planned, with what the ranking rules compare."""

    source: Source
    distance_km: float | None
    cost: Decimal


class Rule(StrEnum):
    """One criterion of a rule chain; a chain ranks candidates by its rules in order, each breaking the ties of the
    ones before."""

    source_type = "source_type"
    distance = "distance"
    cost = "cost"
    priority = "priority"
    code = "code"


_RULE_KEYS: Mapping[Rule, Callable[[Candidate], Any]] = {
    Rule.source_type: lambda c: SOURCE_TYPE_RANK[c.source.type],
    # Either every candidate has a distance or none has (the address has coordinates or not).
    Rule.distance: lambda c: math.inf if c.distance_km is None else c.distance_km,
    Rule.cost: lambda c: c.cost,
    Rule.priority: lambda c: c.source.priority,
    Rule.code: lambda c: c.source.code,
}

DEFAULT_CHAIN: tuple[Rule, ...] = (Rule.source_type, Rule.distance, Rule.cost, Rule.priority, Rule.code)


def rank(candidates: Iterable[Candidate], chain: Sequence[Rule] = DEFAULT_CHAIN) -> list[Candidate]:
    """Candidates best first, by the rule chain."""
    keys = [_RULE_KEYS[rule] for rule in chain]
    return sorted(candidates, key=lambda c: tuple(key(c) for key in keys))


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """Lines of one order to plan: all of them on the first attempt, a rejected shipment's lines on a re-plan."""

    order: OrderPaidData
    lines: tuple[Line, ...]
    attempt: int = 1
    excluded: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RoutedOrder:
    """A paid order routing has planned, with what a re-plan needs: attempts made and sources excluded."""

    paid: OrderPaidData
    attempts: int = 1
    excluded: frozenset[str] = field(default_factory=frozenset)

    def first_plan(self) -> PlanRequest:
        return PlanRequest(self.paid, tuple(self.paid.lines), 1, self.excluded)

    def rejected(self, source_code: str, lines: Sequence[Line]) -> tuple[RoutedOrder, PlanRequest]:
        """A shipment of `source_code` was rejected: re-plan its lines without that source, one attempt on."""
        routed = replace(self, attempts=self.attempts + 1, excluded=self.excluded | {source_code})
        return routed, PlanRequest(self.paid, tuple(lines), routed.attempts, routed.excluded)


def candidates(
    order: OrderPaidData,
    needs: Mapping[str, int],
    network: Iterable[Source],
    availability: Availability,
    excluded: frozenset[str] = frozenset(),
) -> list[Candidate]:
    """Sources that may ship these needs: active, not excluded, with every SKU available, and shipping to the
    order's country; for a pickup only the pickup source (the customer comes to it, wherever the address is)."""
    address = order.shipping_address
    units = sum(needs.values())
    if order.shipping_method is ShippingMethod.pickup:
        pool = [s for s in network if s.code == order.pickup_source]
    else:
        pool = [s for s in network if address.country in s.countries]
    found = []
    for source in pool:
        if not source.active or source.code in excluded or not availability.can_ship(source.code, needs):
            continue
        distance = None
        if address.lat is not None and address.lon is not None:
            distance = distance_km(address.lat, address.lon, source.lat, source.lon)
        cost = source.cost_per_shipment + source.cost_per_unit * units
        found.append(Candidate(source, distance, cost))
    return found


def plan(
    request: PlanRequest,
    network: Iterable[Source],
    availability: Availability,
    *,
    planned_at: datetime,
    max_attempts: int,
    chain: Sequence[Rule] = DEFAULT_CHAIN,
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> FulfillmentPlannedData:
    """One plan for the request's lines: one shipment from the best source that has every line, else every line
    backordered (unfulfillable when the order denies backorders). After `max_attempts` plans no source is tried."""
    order, lines = request.order, request.lines
    items = _items(len(lines))
    unplanned_reason = _unplanned_reason(request, items, max_attempts)
    best = None
    if unplanned_reason is None:
        ranked = rank(candidates(order, units_by_sku(lines), network, availability, request.excluded), chain)
        if ranked:
            best = ranked[0]
        elif order.shipping_method is ShippingMethod.pickup:
            unplanned_reason = f"pickup source {order.pickup_source or '(none named)'} cannot ship {items}"
        else:
            unplanned_reason = f"no source has {items}"
    shipments: list[PlannedShipment] = []
    unplanned: list[UnplannedLine] = []
    if best is not None:
        shipments.append(_shipment(request, best, items, planned_at, new_id()))
    else:
        reason = unplanned_reason + _excluded_note(request.excluded)
        unplanned = [UnplannedLine(line_id=ln.line_id, sku=ln.sku, quantity=ln.quantity, reason=reason) for ln in lines]
    backorder = order.options.backorder_policy is BackorderPolicy.allow
    return FulfillmentPlannedData(
        order_id=order.order_id,
        plan_id=new_id(),
        attempt=request.attempt,
        shipments=shipments,
        backordered_lines=unplanned if backorder else [],
        unfulfillable_lines=[] if backorder else unplanned,
        planned_at=planned_at,
    )


def plan_all(
    requests: Iterable[PlanRequest],
    network: Sequence[Source],
    availability: Availability,
    *,
    planned_at: datetime,
    max_attempts: int,
    chain: Sequence[Rule] = DEFAULT_CHAIN,
) -> list[FulfillmentPlannedData]:
    """Plan requests in the order they came; stock one plan promises is not offered to the plans after it."""
    stock = availability.copy()
    plans = []
    for request in requests:
        made = plan(request, network, stock, planned_at=planned_at, max_attempts=max_attempts, chain=chain)
        for shipment in made.shipments:
            stock.take(shipment.source_code, units_by_sku(shipment.lines))
        plans.append(made)
    return plans


@dataclass(frozen=True, slots=True)
class NetworkChange:
    """What replacing the network changes: sources new or different, and active sources no longer listed."""

    upserted: list[Source]
    deactivated: list[str]


def duplicate_codes(sources: Iterable[Source]) -> list[str]:
    counts = Counter(s.code for s in sources)
    return sorted(code for code, n in counts.items() if n > 1)


def network_change(current: Iterable[Source], wanted: Iterable[Source]) -> NetworkChange:
    """Replacing the network: a source missing from the new list is deactivated, never forgotten, because shipments
    already planned from it still need its request topic and its name."""
    now = {s.code: s for s in current}
    wanted = list(wanted)
    listed = {s.code for s in wanted}
    return NetworkChange(
        upserted=[s for s in wanted if now.get(s.code) != s],
        deactivated=sorted(code for code, s in now.items() if s.active and code not in listed),
    )


def _items(count: int) -> str:
    return "the item" if count == 1 else f"all {count} items"


def _unplanned_reason(request: PlanRequest, items: str, max_attempts: int) -> str | None:
    if request.attempt > max_attempts:
        return f"no source left for {items} after {max_attempts} attempts"
    return None


def _excluded_note(excluded: frozenset[str]) -> str:
    return f"; rejected by {', '.join(sorted(excluded))}" if excluded else ""


def _shipment(
    request: PlanRequest, best: Candidate, items: str, planned_at: datetime, shipment_id: uuid.UUID
) -> PlannedShipment:
    source = best.source
    ship_on = planned_at.date() + timedelta(days=source.handling_days)
    method = request.order.shipping_method
    kind = _SOURCE_TYPE_WORDS[source.type]
    reason = f"{source.code}: {'pickup at ' + kind if method is ShippingMethod.pickup else kind} with {items}"
    if best.distance_km is not None and method is not ShippingMethod.pickup:
        reason += f", {best.distance_km:.0f} km"
    return PlannedShipment(
        shipment_id=shipment_id,
        source_code=source.code,
        source_type=source.type,
        lines=list(request.lines),
        estimated_ship_date=ship_on,
        estimated_delivery_date=ship_on + timedelta(days=TRANSIT_DAYS[method]),
        reason=reason + _excluded_note(request.excluded),
    )
