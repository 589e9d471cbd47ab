"""Routing's business rules: which sources ship an order's lines, and why. Pure: no I/O.

A plan is made in four steps.

1. **Candidates.** Sources that may ship this order: active, not excluded (they rejected one of its shipments),
   shipping to the destination country (a pickup: only the pickup store, wherever the address is), and, when the
   chain names `daily_capacity`, below their daily capacity today. Only those holding some of the order count.
2. **What ships now.** Lines of one SKU are one demand (two lines of a SKU need their sum). A demand that some
   candidate holds whole ships whole from one source; one that no candidate holds whole is split across candidates,
   as many units as they hold together. Whatever cannot ship now waits: backordered (`backorder_policy=allow`) or
   unfulfillable (`deny`). A ship-complete order ships whole from one source or every line waits. Lines no source
   could ever ship (no active source ships to the country; the pickup store is unknown or inactive) are
   unfulfillable whatever the policy: a backorder there would wait forever.
3. **The fewest shipments.** The smallest set of candidates that ships all of step 2 (a minimum set cover). Exact
   for small orders: every set of the smallest size is searched (iterative deepening on the number of shipments,
   branching on the demand with the fewest holders, each set visited once, the last pick found with one AND of the
   unmet demands' holders, pruned by the chain's lower bound), as long as the search visits at most
   `EXACT_SEARCH_STEPS` partial sets. With n candidates a search for k shipments visits at most
   1 + n + ... + n^(k-2) partial sets per depth tried, so "small" is: one or two shipments from any network (up to
   4,998 candidates), three from up to 69, four from up to 16, five from up to 7. The cap bounds what any order
   costs (a 20-line order needing 10 shipments from 100 sources: about 25 ms). Beyond, a bounded heuristic: greedy
   set cover (the candidate that meets most of what is still unmet, best-ranked on ties), then local improvement
   (drop a redundant source, replace two by one, swap one for a better-ranked one) for at most
   `IMPROVEMENT_PASSES` passes. If the steps run out once a set of the smallest size is found, that size is still
   proven; only its ranking may not be the best.
4. **Ranking.** Sets of the same size are ranked by the rule chain, each rule a key of the whole plan (see
   `PLAN_KEYS`); a tie passes to the next rule, and the sources' codes break the last tie. Each shipment keeps
   dates, distance, cost, and a reason naming the runner-up: the best other source that could have taken its
   place, and the rule that decided.

**Re-plans.** Lines a source will not ship (inventory could not reserve a shipment, or the order service asks
because the source rejected or cancelled a fulfillment, also one routing never planned: a backorder allocation)
are planned again without that source, one attempt on; once the order's plans number `max_attempts`, they wait
(backordered, or unfulfillable) with a reason naming the sources that turned them down. A line of a fulfillment is
planned again at most once, however often it is asked.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from operator import attrgetter
from typing import Any
from zoneinfo import ZoneInfo

from oms_contracts.common import BackorderPolicy, Line, RoutingRule, ShippingMethod, SourceType, check_rule_chain
from oms_contracts.order import OrderPaidData
from oms_contracts.routing import FulfillmentPlannedData, PlannedShipment, Source, UnplannedLine

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

# The brief's default: avoid splits, own warehouse first, then nearest, cheapest, fastest, priority; a source
# that declared a daily capacity is not loaded beyond it.
DEFAULT_RULES: tuple[RoutingRule, ...] = (
    RoutingRule.fewest_shipments,
    RoutingRule.source_type,
    RoutingRule.nearest,
    RoutingRule.lowest_cost,
    RoutingRule.fastest_delivery,
    RoutingRule.priority,
    RoutingRule.daily_capacity,
)

# Partial plans the exact search may visit before the heuristic takes over (see the module docstring).
EXACT_SEARCH_STEPS = 5_000
IMPROVEMENT_PASSES = 4

_EARTH_RADIUS_KM = 6371.0088
_REASON_LENGTH = 2000  # the contract's Text


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance between two points, in kilometres."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlambda = phi2 - phi1, math.radians(lon2 - lon1)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def units_by_sku(lines: Iterable[Line]) -> dict[str, int]:
    """What a set of lines needs: two lines of the same SKU need their sum."""
    needs: Counter[str] = Counter()
    for line in lines:
        needs[line.sku] += line.quantity
    return dict(needs)


class Availability:
    """What each source can ship now, by (source code, sku), as the projection of inventory's stock levels says.

    A pair that is absent has nothing available."""

    def __init__(self, levels: Mapping[tuple[str, str], int] | None = None) -> None:
        # By SKU first: a plan asks "who holds this SKU", never "what does this source hold".
        self._by_sku: dict[str, dict[str, int]] = {}
        for (source_code, sku), units in (levels or {}).items():
            if units > 0:
                self._by_sku.setdefault(sku, {})[source_code] = units
        self._own: set[str] = set(self._by_sku)  # SKUs whose holders this copy may change (copy on write)

    def available(self, source_code: str, sku: str) -> int:
        return self._by_sku.get(sku, {}).get(source_code, 0)

    def holders(self, sku: str) -> Mapping[str, int]:
        """Sources with some of `sku` available, and how much."""
        return self._by_sku.get(sku, {})

    def can_ship(self, source_code: str, needs: Mapping[str, int]) -> bool:
        return all(self.available(source_code, sku) >= units for sku, units in needs.items())

    def take(self, source_code: str, needs: Mapping[str, int]) -> None:
        """Count stock a plan has just promised as gone, so that the next plan of the batch does not count on it."""
        for sku, units in needs.items():
            if sku not in self._own:
                self._by_sku[sku] = dict(self._by_sku.get(sku, {}))
                self._own.add(sku)
            left = self.available(source_code, sku) - units
            if left > 0:
                self._by_sku[sku][source_code] = left
            else:
                self._by_sku[sku].pop(source_code, None)

    def copy(self) -> Availability:
        """A copy to promise stock from; only the SKUs it takes from are copied, when it first does."""
        copied = Availability()
        copied._by_sku = dict(self._by_sku)
        self._own = set()  # both now share the holders: either copies a SKU's before changing it
        return copied


# --- rule chains ---------------------------------------------------------------------------------------------------


def normalized_chain(rules: Iterable[RoutingRule]) -> tuple[RoutingRule, ...]:
    """A valid chain with `fewest_shipments` first: an order is split only when it must be, whatever the chain
    says, so a chain that leaves the rule out gets it in front."""
    rules = check_rule_chain([RoutingRule(rule) for rule in rules])
    if RoutingRule.fewest_shipments not in rules:
        rules = [RoutingRule.fewest_shipments, *rules]
    return tuple(rules)


DEFAULT_CHANNEL = "*"


@dataclass(frozen=True, slots=True)
class RuleChains:
    """The chains in force: one per channel, the default (`*`, else the settings'), and an order may bring its own."""

    default: tuple[RoutingRule, ...] = DEFAULT_RULES
    by_channel: Mapping[str, tuple[RoutingRule, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, stored: Mapping[str, Sequence[RoutingRule]], default: Sequence[RoutingRule]) -> RuleChains:
        """The stored chains (channel `*` overriding the default from settings) over that default."""
        chains = {channel: normalized_chain(rules) for channel, rules in stored.items()}
        return cls(chains.pop(DEFAULT_CHANNEL, None) or normalized_chain(default), chains)

    def for_order(self, order: OrderPaidData) -> tuple[RoutingRule, ...]:
        if order.options.routing_rules:
            return normalized_chain(order.options.routing_rules)
        return self.by_channel.get(order.channel, self.default)

    def for_channel(self, channel: str) -> tuple[RoutingRule, ...]:
        return self.default if channel == DEFAULT_CHANNEL else self.by_channel.get(channel, self.default)


# --- a source's calendar -------------------------------------------------------------------------------------------


def local_day(source: Source, at: datetime) -> date:
    """The source's own date at `at`: its daily capacity is counted per local day."""
    return at.astimezone(ZoneInfo(source.timezone)).date()


def estimated_ship_date(source: Source, at: datetime) -> date:
    """When a shipment planned at `at` leaves: the source's local date, one day later at or after its cut-off,
    plus its handling days (calendar days)."""
    local = at.astimezone(ZoneInfo(source.timezone))
    day = local.date()
    if source.cutoff_time is not None and local.time() >= source.cutoff_time.replace(tzinfo=None):
        day += timedelta(days=1)
    return day + timedelta(days=source.handling_days)


def transit_days(source: Source, method: ShippingMethod) -> int:
    """Days with the carrier; a pickup is collected at the source itself."""
    if method is ShippingMethod.pickup:
        return 0
    return source.transit_days.express if method is ShippingMethod.express else source.transit_days.standard


@dataclass(frozen=True, slots=True)
class SourceToday:
    source: Source
    day: date
    ship_date: date
    delivery_dates: Mapping[ShippingMethod, date]


def _today(source: Source, at: datetime) -> SourceToday:
    ship = estimated_ship_date(source, at)
    deliveries = {method: ship + timedelta(days=transit_days(source, method)) for method in ShippingMethod}
    return SourceToday(source, local_day(source, at), ship, deliveries)


class PlanningNetwork:
    """The network at one planning moment, shared by the plans of a batch: each source's local day and ship date,
    and the shipments already planned from it today (counted up as the batch plans more)."""

    def __init__(
        self, sources: Iterable[Source], planned_at: datetime, planned_today: Mapping[str, int] | None = None
    ) -> None:
        self.planned_at = planned_at
        self.sources = {s.code: _today(s, planned_at) for s in sources}
        self.planned_today: Counter[str] = Counter(planned_today or {})
        self._serving: dict[str, list[SourceToday]] = {}

    def serving(self, country: str) -> list[SourceToday]:
        """Active sources that ship to `country`, by code."""
        if country not in self._serving:
            self._serving[country] = sorted(
                (s for s in self.sources.values() if s.source.active and country in s.source.countries),
                key=lambda s: s.source.code,
            )
        return self._serving[country]

    def planned(self, shipments: Iterable[PlannedShipment]) -> None:
        for shipment in shipments:
            self.planned_today[shipment.source_code] += 1

    def copy(self) -> PlanningNetwork:
        copied = PlanningNetwork((), self.planned_at, self.planned_today)
        copied.sources, copied._serving = self.sources, self._serving
        return copied


def capacity_days(sources: Iterable[Source], at: datetime) -> dict[str, date]:
    """The local day of each source with a daily capacity: the day whose planned shipments count against it."""
    return {s.code: local_day(s, at) for s in sources if s.daily_capacity is not None}


# --- candidates and what the rules compare ----------------------------------------------------------------------


class Candidate:
    """A source that could ship some of the lines being planned, with what the rules compare."""

    __slots__ = (
        "at_capacity",
        "code",
        "cost_per_shipment",
        "cost_per_unit",
        "delivery",
        "delivery_date",
        "distance_km",
        "km",
        "planned_today",
        "priority",
        "ship_date",
        "source",
        "stock",
        "type_rank",
        "utilisation",
    )

    def __init__(
        self,
        source: Source,
        stock: dict[str, int],
        distance_km: float | None,
        ship_date: date,
        delivery_date: date,
        planned_today: int = 0,
        at_capacity: bool = False,
    ) -> None:
        self.source = source
        self.code = source.code
        self.stock = stock  # units of the lines' SKUs it has available (only those above zero)
        self.distance_km = distance_km
        self.ship_date = ship_date
        self.delivery_date = delivery_date
        self.planned_today = planned_today
        # At its daily capacity: not a candidate; kept to tell a person why it was passed over.
        self.at_capacity = at_capacity
        # What the plan keys read, computed once. Whole kilometres: a tie on distance passes to the next rule, and
        # a reason never says "212 km ... 212 km".
        self.km = 0 if distance_km is None else round(distance_km)
        self.type_rank = SOURCE_TYPE_RANK[source.type]
        self.delivery = delivery_date.toordinal()
        self.cost_per_shipment = source.cost_per_shipment
        self.cost_per_unit = source.cost_per_unit
        self.priority = source.priority
        capacity = source.daily_capacity
        self.utilisation = 0.0 if capacity is None else (planned_today + 1) / capacity

    def __repr__(self) -> str:
        return f"Candidate({self.code}, {self.stock})"

    def cost(self, units: int) -> Decimal:
        return self.cost_per_shipment + self.cost_per_unit * units

    def holds(self, needs: Mapping[str, int]) -> bool:
        return all(self.stock.get(sku, 0) >= units for sku, units in needs.items())


def candidates(
    request: PlanRequest,
    network: PlanningNetwork,
    availability: Availability,
    rules: Sequence[RoutingRule] = DEFAULT_RULES,
) -> list[Candidate]:
    """Sources that may ship some of the request's lines, by code: active, not excluded, holding some of its SKUs,
    shipping to the order's country (a pickup: only the pickup source, wherever the address is). With
    `daily_capacity` in the chain, a source at its capacity is returned marked `at_capacity`."""
    order = request.order
    address, method = order.shipping_address, order.shipping_method
    if method is ShippingMethod.pickup:
        pickup = network.sources.get(order.pickup_source or "")
        pool = [pickup] if pickup is not None and pickup.source.active else []
    else:
        pool = network.serving(address.country)
    skus = units_by_sku(request.lines)
    held: dict[str, dict[str, int]] = {}
    for sku in skus:
        for code, units in availability.holders(sku).items():
            held.setdefault(code, {})[sku] = units
    capped = RoutingRule.daily_capacity in rules
    found = []
    for today in pool:
        source = today.source
        stock = held.get(source.code)
        if stock is None or source.code in request.excluded:
            continue
        planned = network.planned_today[source.code]
        distance = None
        if address.lat is not None and address.lon is not None:
            distance = distance_km(address.lat, address.lon, source.lat, source.lon)
        found.append(
            Candidate(
                source=source,
                stock=stock,
                distance_km=distance,
                ship_date=today.ship_date,
                delivery_date=today.delivery_dates[method],
                planned_today=planned,
                at_capacity=capped and source.daily_capacity is not None and planned >= source.daily_capacity,
            )
        )
    return found


def unreachable(order: OrderPaidData, network: PlanningNetwork) -> str | None:
    """Why no source could ever ship this order, whatever stock arrives: no active source ships to its country, or
    its pickup store is unknown or inactive. None when some source could."""
    if order.shipping_method is ShippingMethod.pickup:
        pickup = network.sources.get(order.pickup_source or "")
        if pickup is None or not pickup.source.active:
            return f"pickup store {order.pickup_source or '(none named)'} is not in the network"
        return None
    country = order.shipping_address.country
    # Stock, capacity and a source's rejection pass; a source that does not ship there never will.
    return None if network.serving(country) else f"no source ships to {country}"


def _worst_first(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(values, reverse=True))


# Each rule's key of a whole plan (its shipments' candidates and total cost); lower ranks first. Plans compared have
# the same number of shipments, so sums and worst-first tuples compare like for like.
PLAN_KEYS: Mapping[RoutingRule, Callable[[Sequence[Candidate], Decimal], Any]] = {
    RoutingRule.fewest_shipments: lambda members, cost: len(members),
    # The worst source type in the plan, then the next worst: a dropship supplier only when nothing better serves.
    RoutingRule.source_type: lambda members, cost: _worst_first(c.type_rank for c in members),
    # Kilometres travelled by all parcels together (0 when the address has no coordinates: the rule passes).
    RoutingRule.nearest: lambda members, cost: sum(c.km for c in members),
    # What the shipments cost together: per shipment plus per unit.
    RoutingRule.lowest_cost: lambda members, cost: cost,
    # When the customer has everything, then the parcels' delivery dates together (one earlier parcel is better).
    RoutingRule.fastest_delivery: lambda members, cost: (
        max(c.delivery for c in members),
        sum(c.delivery for c in members),
    ),
    # The worst (highest) priority in the plan, then the next.
    RoutingRule.priority: lambda members, cost: _worst_first(c.priority for c in members),
    # The busiest source after this plan, as a share of its daily capacity (unlimited: 0), to spread the load.
    RoutingRule.daily_capacity: lambda members, cost: max(c.utilisation for c in members),
}


def plan_key(rules: Sequence[RoutingRule], members: Sequence[Candidate], cost: Decimal) -> tuple[Any, ...]:
    """A plan's rank under `rules`, the sources' codes last (the final, implicit tie-break)."""
    return (*(PLAN_KEYS[rule](members, cost) for rule in rules), tuple(sorted(c.code for c in members)))


# A plan's rank: each rule's key (but `fewest_shipments`, equal among plans compared), then the sources' codes.
Rank = tuple[tuple[Any, ...], tuple[str, ...]]


def _rank(
    members: Sequence[Candidate],
    cost: Callable[[], Decimal],
    keyed: Sequence[tuple[RoutingRule, Callable[[Sequence[Candidate], Decimal], Any]]],
    than: Rank | None = None,
) -> Rank | None:
    """The plan's rank, or None when it does not rank before `than`: keys are computed only as far as the
    comparison needs (most plans lose on the first rule or two), the cost only when `lowest_cost` is reached."""
    values = []
    rival = than[0] if than is not None else None
    for n, (rule, key) in enumerate(keyed):
        value = cost() if rule is RoutingRule.lowest_cost else key(members, Decimal(0))
        if rival is not None:
            if value > rival[n]:
                return None
            if value < rival[n]:
                rival = None  # it ranks before: the remaining keys are only its rank
        values.append(value)
    codes = tuple(sorted(c.code for c in members))
    if rival is not None and than is not None and codes >= than[1]:
        return None
    return tuple(values), codes


# --- the fewest shipments ------------------------------------------------------------------------------------------


def _bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class _OutOfSteps(Exception):
    pass


# Who ships what: candidate index -> sku -> units.
Cover = dict[int, dict[str, int]]


class _CoverSearch:
    """The fewest candidates that together ship every demand that can ship now, best by the chain.

    Candidates are indexed best single-source rank first, so that the search meets good plans early and the bound
    prunes more. A set of candidates is a bitmask of their indexes."""

    def __init__(
        self,
        ranked: Sequence[Candidate],
        demands: Mapping[str, int],
        rules: Sequence[RoutingRule],
        *,
        whole_only: bool,
        steps: int,
    ) -> None:
        self.ranked = ranked
        # Among plans of one size the shipment count ties; every other rule ranks.
        self.keyed = [(r, PLAN_KEYS[r]) for r in rules if r is not RoutingRule.fewest_shipments]
        self.steps = steps
        self.cpu = [c.cost_per_unit for c in ranked]
        holders = dict.fromkeys(demands, 0)
        whole = dict.fromkeys(demands, 0)
        total = dict.fromkeys(demands, 0)
        cheapest: dict[str, Decimal] = {}
        self.available = 0
        for i, c in enumerate(ranked):
            if c.at_capacity:
                continue
            self.available |= 1 << i
            for sku, have in c.stock.items():
                holders[sku] |= 1 << i
                total[sku] += have
                if have >= demands[sku]:
                    whole[sku] |= 1 << i
                if sku not in cheapest or c.cost_per_unit < cheapest[sku]:
                    cheapest[sku] = c.cost_per_unit
        self.whole: list[tuple[str, int, int]] = []  # (sku, units, candidates holding them all)
        self.split: list[tuple[str, int, int]] = []  # (sku, units the candidates can ship together, holders)
        self.unshippable: dict[str, int] = {}  # sku -> units that cannot ship now
        # No plan ships its units for less than their cheapest holders charge: the cost bound of a partial plan.
        self.unit_floor = Decimal(0)
        for sku, units in demands.items():
            if whole[sku]:
                self.whole.append((sku, units, whole[sku]))
                self.unit_floor += cheapest[sku] * units
            elif holders[sku] and not whole_only:
                shipped = min(units, total[sku])
                self.split.append((sku, shipped, holders[sku]))
                self.unit_floor += cheapest[sku] * shipped
                if shipped < units:
                    self.unshippable[sku] = units - shipped
            else:
                self.unshippable[sku] = units
        self.best: tuple[Rank, int] | None = None  # the best plan so far: its rank and its set
        self.limit = 0

    def has_work(self) -> bool:
        return bool(self.whole or self.split)

    # A requirement is a demand to ship: whole from one chosen holder, or split across chosen holders.
    def _unmet(self, chosen: int, banned: int) -> int | None:
        """The holders not yet chosen nor banned of the requirement with the fewest such holders that `chosen`
        does not meet; None when `chosen` meets them all, 0 when one can no longer be met."""
        fewest, options = math.inf, None
        for _, _, holders in self.whole:
            if holders & chosen:
                continue
            left = holders & ~banned
            count = left.bit_count()
            if count < fewest:
                if not count:
                    return 0
                fewest, options = count, left
        for sku, units, holders in self.split:
            have = sum(self.ranked[i].stock[sku] for i in _bits(holders & chosen))
            if have >= units:
                continue
            left = holders & ~chosen & ~banned
            if have + sum(self.ranked[i].stock[sku] for i in _bits(left)) < units:
                return 0
            count = left.bit_count()
            if count < fewest:
                fewest, options = count, left
        return options

    def feasible(self, chosen: int) -> bool:
        return self._unmet(chosen, 0) is None

    def completions(self, chosen: int, banned: int = 0) -> Iterator[int]:
        """The candidates that alone meet everything `chosen` leaves unmet: the holders common to every unmet whole
        demand (one AND each), checked against the split demands when there are any."""
        last = self.available & ~chosen & ~banned
        for _, _, holders in self.whole:
            if not holders & chosen:
                last &= holders
        for i in _bits(last):
            if not self.split or self.feasible(chosen | 1 << i):
                yield i

    def assign(self, chosen: int) -> Cover:
        """Who ships what within a chosen set: a whole demand from its cheapest holder per unit, a split one from
        the cheapest holders first (then by rank). The shipment count is fixed by the set; this is the cheapest."""
        units: Cover = {}
        for sku, need, holders in self.whole:
            held = holders & chosen
            # One chosen holder (the usual case) needs no comparing.
            i = min(_bits(held), key=lambda i: (self.cpu[i], i)) if held & (held - 1) else held.bit_length() - 1
            units.setdefault(i, {})[sku] = need
        for sku, need, holders in self.split:
            for i in sorted(_bits(holders & chosen), key=lambda i: (self.cpu[i], i)):
                take = min(need, self.ranked[i].stock[sku])
                if take:
                    units.setdefault(i, {})[sku] = take
                    need -= take
                if not need:
                    break
        return units

    def cost(self, units: Mapping[int, Mapping[str, int]]) -> Decimal:
        return sum((self.ranked[i].cost(sum(by_sku.values())) for i, by_sku in units.items()), Decimal(0))

    def rank_of(self, units: Mapping[int, Mapping[str, int]], than: Rank | None = None) -> Rank | None:
        """The rank of a plan (who ships what), or None when it does not rank before `than`."""
        return _rank([self.ranked[i] for i in sorted(units)], lambda: self.cost(units), self.keyed, than)

    def _consider(self, chosen: int) -> None:
        members = [self.ranked[i] for i in _bits(chosen)]
        rank = _rank(members, lambda: self.cost(self.assign(chosen)), self.keyed, self.best and self.best[0])
        if rank is not None:
            self.best = (rank, chosen)

    def _cannot_win(self, chosen: int) -> bool:
        """No plan that adds sources to `chosen` ranks before the best so far: every rule's key only grows as
        sources join (the cost by at least their cost per shipment), so `chosen`'s keys bound them from below."""
        if self.best is None:
            return False
        best = self.best[0][0]
        members = [self.ranked[i] for i in _bits(chosen)]
        for n, (rule, key) in enumerate(self.keyed):
            if rule is RoutingRule.lowest_cost:
                value = sum((c.cost_per_shipment for c in members), self.unit_floor)
            else:
                value = key(members, Decimal(0))
            if value != best[n]:
                return value > best[n]
        return False

    def _visit(self, chosen: int, banned: int, depth: int) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise _OutOfSteps
        options = self._unmet(chosen, banned)
        if options is None:
            self._consider(chosen)
            return
        if depth == self.limit or not options:
            return
        if depth and self._cannot_win(chosen):
            return
        if depth == self.limit - 1:
            for i in self.completions(chosen, banned):
                self._consider(chosen | 1 << i)
            return
        # Each set is visited once: the branch that takes a holder bans the holders of earlier branches.
        for i in _bits(options):
            self._visit(chosen | 1 << i, banned, depth + 1)
            banned |= 1 << i

    def solve(self, max_shipments: int | None = None) -> Cover:
        """Who ships what in the best set of the fewest candidates (none: nothing ships); exact unless the search
        runs out of steps."""
        if not self.has_work():
            return {}
        most = self.available.bit_count() if max_shipments is None else max_shipments
        for limit in range(1, most + 1):
            self.limit = limit
            try:
                self._visit(0, 0, 0)
            except _OutOfSteps:
                # Fewer shipments were ruled out; the best set of this size found so far stands, if any.
                chosen = self.best[1] if self.best is not None else self._improved(self._greedy())
                # The heuristic knows no bound on shipments: a ship-complete order must not come back split.
                if max_shipments is not None and chosen.bit_count() > max_shipments:
                    return {}
                return self.assign(chosen)
            if self.best is not None:
                return self.assign(self.best[1])
        return {}

    def _greedy(self) -> int:
        chosen = 0
        while not self.feasible(chosen):
            gains = []
            for i in _bits(self.available & ~chosen):
                gain = sum(1 for _, _, holders in self.whole if not holders & chosen and holders >> i & 1)
                for sku, units, holders in self.split:
                    have = sum(self.ranked[j].stock[sku] for j in _bits(holders & chosen))
                    if have < units and holders >> i & 1:
                        gain += min(self.ranked[i].stock[sku], units - have) / units
                gains.append((-gain, i))
            chosen |= 1 << min(gains)[1]
        return chosen

    def _improved(self, chosen: int) -> int:
        for _ in range(IMPROVEMENT_PASSES):
            before = chosen
            for i in sorted(_bits(chosen), reverse=True):  # the worst-ranked redundant source goes first
                if self.feasible(chosen & ~(1 << i)):
                    chosen &= ~(1 << i)
            chosen = self._two_for_one(chosen)
            rank = self.rank_of(self.assign(chosen))
            for i in list(_bits(chosen)):
                for c in list(self.completions(chosen & ~(1 << i), chosen)):
                    swapped = chosen & ~(1 << i) | 1 << c
                    if (better := self.rank_of(self.assign(swapped), rank)) is not None:
                        chosen, rank = swapped, better
                        break
            if chosen == before:
                break
        return chosen

    def _two_for_one(self, chosen: int) -> int:
        members = list(_bits(chosen))
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                rest = chosen & ~(1 << members[a]) & ~(1 << members[b])
                for c in self.completions(rest, chosen):
                    return self._two_for_one(rest | 1 << c)
        return chosen


# --- planning ------------------------------------------------------------------------------------------------------


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

    def replan(self, fulfillment: Fulfillment, source_code: str, lines: Sequence[Line]) -> Replan:
        """The order service asks: `source_code` will not ship these lines of `fulfillment` (it rejected or
        cancelled them). They are planned again without it, one attempt on; also for a fulfillment routing never
        planned (a backorder allocation of inventory's), whose lines are checked against the order's."""
        self._check(fulfillment, source_code, lines)
        # Units, not lines: a source may give back a line's units in several steps (1 of 3, later another), and each
        # step is planned again. Never more units of a line than the fulfillment holds, however often it is asked
        # (the same request resent under a new event id): planning them twice would ship them twice. Which units a
        # source gave back is the order service's accounting; routing only keeps the sum under that bound.
        fresh = tuple(
            line.model_copy(update={"quantity": units})
            for line in lines
            if (units := min(line.quantity, fulfillment.left_to_replan(line.line_id, self.paid))) > 0
        )
        if not fresh:
            return Replan(self, fulfillment, source_code, (), None)
        replanned = dict(fulfillment.replanned)
        for line in fresh:
            replanned[line.line_id] = replanned.get(line.line_id, 0) + line.quantity
        # The source ships what was not planned again; with nothing left to ship it no longer counts against its
        # daily capacity.
        withdrawn = fulfillment.withdrawn or (
            fulfillment.planned and all(replanned.get(ln.line_id, 0) >= ln.quantity for ln in fulfillment.lines)
        )
        routed, request = self.rejected(source_code, fresh)
        after = replace(fulfillment, replanned=replanned, withdrawn=withdrawn)
        return Replan(routed, after, source_code, fresh, request)

    def reservation_rejected(self, fulfillment: Fulfillment, source_code: str, lines: Sequence[Line]) -> Replan:
        """Inventory could not reserve a shipment routing planned: its lines are planned again without that source,
        and the shipment never leaves it."""
        if not fulfillment.planned:
            raise ReplanRefused(
                f"shipment {fulfillment.fulfillment_id} of order {self.paid.order_id} was not planned by routing"
            )
        replan = self.replan(fulfillment, source_code, lines)
        return replace(replan, fulfillment=replace(replan.fulfillment, withdrawn=True))

    def _check(self, fulfillment: Fulfillment, source_code: str, lines: Sequence[Line]) -> None:
        """Refuses lines that are not the order's (or not the planned fulfillment's), in the words of the first."""
        order_id = self.paid.order_id
        if fulfillment.order_id != order_id:
            raise ReplanRefused(
                f"fulfillment {fulfillment.fulfillment_id} is of order {fulfillment.order_id}, not of {order_id}"
            )
        if fulfillment.planned and fulfillment.source_code != source_code:
            raise ReplanRefused(
                f"fulfillment {fulfillment.fulfillment_id} was planned at {fulfillment.source_code}, not {source_code}"
            )
        ordered = {line.line_id: line for line in self.paid.lines}
        planned = {line.line_id: line for line in fulfillment.lines}
        named: set[str] = set()
        for line in lines:
            if line.line_id in named:
                raise ReplanRefused(f"line {line.line_id} is named twice")
            named.add(line.line_id)
            of_order = ordered.get(line.line_id)
            if of_order is None:
                raise ReplanRefused(f"order {order_id} has no line {line.line_id}")
            if of_order.sku != line.sku:
                raise ReplanRefused(f"line {line.line_id} of order {order_id} is {of_order.sku}, not {line.sku}")
            # A fulfillment routing planned holds what it planned into it; one it never planned, at most the order.
            if fulfillment.planned:
                if line.line_id not in planned:
                    raise ReplanRefused(f"fulfillment {fulfillment.fulfillment_id} has no line {line.line_id}")
                most, of = planned[line.line_id].quantity, f"fulfillment {fulfillment.fulfillment_id}"
            else:
                most, of = of_order.quantity, f"order {order_id}"
            if line.quantity > most:
                raise ReplanRefused(f"{line.quantity} units of line {line.line_id} asked, {of} has {most}")


class ReplanRefused(ValueError):
    """Lines to plan again that are not the order's, or not the fulfillment's: nothing is planned."""


@dataclass(frozen=True, slots=True)
class Fulfillment:
    """A fulfillment of a routed order as routing knows it: the shipment it planned, if it did (inventory's backorder
    allocations it did not), the units of each line already planned again (summed over re-plans), and whether it was
    withdrawn from its source (then that source's daily capacity no longer counts it)."""

    fulfillment_id: uuid.UUID
    order_id: uuid.UUID
    source_code: str | None = None  # None: routing never planned it
    lines: tuple[Line, ...] = ()
    replanned: Mapping[str, int] = field(default_factory=dict)  # line_id -> units
    withdrawn: bool = False

    @property
    def planned(self) -> bool:
        return self.source_code is not None

    def left_to_replan(self, line_id: str, order: OrderPaidData) -> int:
        """Units of a line that may still be planned again: what the fulfillment holds of it (a fulfillment routing
        never planned, at most the order's line) less what was planned again already."""
        held = self.lines if self.planned else order.lines
        holds = sum(line.quantity for line in held if line.line_id == line_id)
        return max(holds - self.replanned.get(line_id, 0), 0)


@dataclass(frozen=True, slots=True)
class Replan:
    """What one request to plan lines again decided: the order and the fulfillment as they now stand, the lines
    planned again (none when each already was) and the plan request for them."""

    order: RoutedOrder
    fulfillment: Fulfillment
    source_code: str
    lines: tuple[Line, ...]
    request: PlanRequest | None


def plan(
    request: PlanRequest,
    network: PlanningNetwork | Iterable[Source],
    availability: Availability,
    *,
    planned_at: datetime,
    max_attempts: int,
    chains: RuleChains = RuleChains(),
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    search_steps: int = EXACT_SEARCH_STEPS,
) -> FulfillmentPlannedData:
    """One plan for the request's lines: the fewest shipments that ship everything in stock now, ranked by the
    order's rule chain; the rest backordered (unfulfillable when the order denies backorders, or when no source of
    the network could ever ship to it). After `max_attempts` plans no source is tried."""
    if not isinstance(network, PlanningNetwork):
        network = PlanningNetwork(network, planned_at)
    order, lines = request.order, request.lines
    rules = chains.for_order(order)
    note = _excluded_note(request.excluded)
    shipments: list[PlannedShipment] = []
    never = unreachable(order, network)
    if never is not None:
        unplanned = _waiting(lines, never)
    elif request.attempt > max_attempts:
        unplanned = _waiting(lines, f"no source left for {_items(len(lines))} after {max_attempts} attempts")
    else:
        found = candidates(request, network, availability, rules)
        ranked = _ranked(found, rules)
        complete = order.options.ship_complete
        search = _CoverSearch(ranked, units_by_sku(lines), rules, whole_only=complete, steps=search_steps)
        # A ship-complete order ships whole from one source or waits whole.
        cover = {} if complete and search.unshippable else search.solve(max_shipments=1 if complete else None)
        pieces, left = _lines_of(lines, {ranked[i].code: units for i, units in cover.items()})
        for i in sorted(cover):
            lines_at = pieces[ranked[i].code]
            reason = _reason(request, search, cover, i, lines_at) + note
            shipments.append(_shipment(ranked[i], lines_at, reason, new_id()))
        unplanned = _unplanned(request, left, found)
    unplanned = [u.model_copy(update={"reason": _clip(u.reason + note)}) for u in unplanned]
    # A backorder waits for stock at a source that ships to the customer: where there is none, it would wait forever.
    backorder = order.options.backorder_policy is BackorderPolicy.allow and never is None
    return FulfillmentPlannedData(
        order_id=order.order_id,
        plan_id=new_id(),
        attempt=request.attempt,
        shipments=shipments,
        backordered_lines=unplanned if backorder else [],
        unfulfillable_lines=[] if backorder else unplanned,
        planned_at=planned_at,
        rules=list(rules),
        ship_to_country=order.shipping_address.country,
        pickup_source=order.pickup_source if order.shipping_method is ShippingMethod.pickup else None,
        ship_complete=order.options.ship_complete,
    )


def plan_all(
    requests: Iterable[PlanRequest],
    network: PlanningNetwork | Sequence[Source],
    availability: Availability,
    *,
    planned_at: datetime,
    max_attempts: int,
    chains: RuleChains = RuleChains(),
    search_steps: int = EXACT_SEARCH_STEPS,
) -> list[FulfillmentPlannedData]:
    """Plan requests in the order they came; stock one plan promises is not offered to the plans after it, and a
    source's shipments count against its daily capacity for the plans after it."""
    # Its own copies: what the batch promises and plans is counted here, not in what the caller holds.
    network = network.copy() if isinstance(network, PlanningNetwork) else PlanningNetwork(network, planned_at)
    stock = availability.copy()
    plans = []
    for request in requests:
        made = plan(
            request,
            network,
            stock,
            planned_at=planned_at,
            max_attempts=max_attempts,
            chains=chains,
            search_steps=search_steps,
        )
        for shipment in made.shipments:
            stock.take(shipment.source_code, units_by_sku(shipment.lines))
        network.planned(made.shipments)
        plans.append(made)
    return plans


# A candidate's part in each rule's key, to order the search (the plan keys decide; this only finds them sooner).
_SINGLE_KEYS: Mapping[RoutingRule, tuple[str, ...]] = {
    RoutingRule.fewest_shipments: (),
    RoutingRule.source_type: ("type_rank",),
    RoutingRule.nearest: ("km",),
    RoutingRule.lowest_cost: ("cost_per_shipment", "cost_per_unit"),
    RoutingRule.fastest_delivery: ("delivery",),
    RoutingRule.priority: ("priority",),
    RoutingRule.daily_capacity: ("utilisation",),
}


def _ranked(found: Iterable[Candidate], rules: Sequence[RoutingRule]) -> list[Candidate]:
    """Candidates best first, each as if it shipped alone; those at capacity last."""
    return sorted(found, key=attrgetter("at_capacity", *(name for r in rules for name in _SINGLE_KEYS[r]), "code"))


def _lines_of(
    lines: Sequence[Line], units: Mapping[str, Mapping[str, int]]
) -> tuple[dict[str, list[Line]], list[Line]]:
    """The request's lines cut to what each source ships of each SKU, and what is left of them.

    A line goes whole to a source whose units of its SKU can take it whole (the tightest fit, so that larger lines
    still find room); only what cannot goes in pieces, to the sources with units left, in plan order."""
    left_at = {code: dict(by_sku) for code, by_sku in units.items()}
    pieces: dict[str, dict[str, int]] = {code: {} for code in units}  # code -> line_id -> units
    remaining: list[tuple[Line, int]] = []
    for line in sorted(lines, key=lambda ln: -ln.quantity):
        fits = [code for code, by_sku in left_at.items() if by_sku.get(line.sku, 0) >= line.quantity]
        if fits:
            code = min(fits, key=lambda code: left_at[code][line.sku])
            left_at[code][line.sku] -= line.quantity
            pieces[code][line.line_id] = line.quantity
        else:
            remaining.append((line, line.quantity))
    left: list[Line] = []
    for line, quantity in remaining:
        for code, by_sku in left_at.items():
            take = min(quantity, by_sku.get(line.sku, 0))
            if take:
                by_sku[line.sku] -= take
                pieces[code][line.line_id] = take
                quantity -= take
        if quantity:
            left.append(Line(line_id=line.line_id, sku=line.sku, quantity=quantity))
    by_id = {line.line_id: line for line in lines}
    shipped = {
        code: [_cut(by_id[line.line_id], got[line.line_id]) for line in lines if line.line_id in got]
        for code, got in pieces.items()
    }
    order = {line.line_id: n for n, line in enumerate(lines)}
    return shipped, sorted(left, key=lambda ln: order[ln.line_id])


def _cut(line: Line, quantity: int) -> Line:
    return line if quantity == line.quantity else Line(line_id=line.line_id, sku=line.sku, quantity=quantity)


def _waiting(lines: Iterable[Line], reason: str) -> list[UnplannedLine]:
    return [UnplannedLine(line_id=ln.line_id, sku=ln.sku, quantity=ln.quantity, reason=reason) for ln in lines]


# --- reasons -------------------------------------------------------------------------------------------------------


def _items(count: int) -> str:
    return "the item" if count == 1 else f"all {count} items"


def _excluded_note(excluded: frozenset[str]) -> str:
    return f"; rejected by {', '.join(sorted(excluded))}" if excluded else ""


def _clip(reason: str) -> str:
    return reason if len(reason) <= _REASON_LENGTH else reason[: _REASON_LENGTH - 1] + "…"


def _days(n: int) -> str:
    return "1 day" if n == 1 else f"{n} days"


def _shipments_today(candidate: Candidate) -> str:
    n = candidate.planned_today
    return f"{n} shipment{'' if n == 1 else 's'} today"


def _what(shipped: Sequence[Line], request: PlanRequest) -> str:
    """The shipment's part of the request: "all 3 items", "2 of 3 items", "3 of 5 TENT-2P"."""
    ordered = {line.line_id: line.quantity for line in request.lines}
    whole = [ln for ln in shipped if ln.quantity == ordered[ln.line_id]]
    pieces = [
        f"{ln.quantity} of {ordered[ln.line_id]} {ln.sku}" for ln in shipped if ln.quantity != ordered[ln.line_id]
    ]
    total = len(request.lines)
    parts = []
    if whole:
        parts.append(_items(total) if len(whole) == total else f"{len(whole)} of {total} items")
    return " and ".join(parts + pieces)


def _decision(
    rule: RoutingRule | None, won: Candidate, other: Candidate, costs: tuple[Decimal, Decimal], multi: bool
) -> tuple[str | None, str | None]:
    """What the winner's reason says for the rule that decided, and what it says of the runner-up."""
    if rule is RoutingRule.source_type:
        return _SOURCE_TYPE_WORDS[won.source.type], _SOURCE_TYPE_WORDS[other.source.type]
    if rule is RoutingRule.nearest:
        return None, f"{other.km} km"
    if rule is RoutingRule.lowest_cost:
        in_all = " in all" if multi else ""
        return f"cheaper at {costs[0]:.2f}{in_all}", f"{costs[1]:.2f}{in_all}"
    if rule is RoutingRule.fastest_delivery:
        sooner = (other.delivery_date - won.delivery_date).days
        verb = "ships" if (other.ship_date - won.ship_date).days == sooner else "arrives"
        return f"{verb} {_days(sooner)} sooner", None
    if rule is RoutingRule.priority:
        return f"priority {won.source.priority} over {other.source.priority}", None
    if rule is RoutingRule.daily_capacity:
        return (
            "more of its daily capacity left",
            f"{other.planned_today} of {other.source.daily_capacity} planned today",
        )
    return None, f"tied on every rule, {won.code} first by code"


def _shipment(won: Candidate, lines: list[Line], reason: str, shipment_id: uuid.UUID) -> PlannedShipment:
    return PlannedShipment(
        shipment_id=shipment_id,
        source_code=won.code,
        source_type=won.source.type,
        lines=lines,
        estimated_ship_date=won.ship_date,
        estimated_delivery_date=won.delivery_date,
        reason=_clip(reason),
        distance_km=None if won.distance_km is None else round(won.distance_km, 1),
        cost=won.cost(sum(ln.quantity for ln in lines)),
    )


def _reason(request: PlanRequest, search: _CoverSearch, cover: Cover, index: int, lines: list[Line]) -> str:
    """Why this source, as in "WH-EAST: all 3 items, 212 km; WH-WEST also had them, 540 km": the runner-up is the
    best source that could have taken this shipment's place (the rest of the plan unchanged), and the rule that
    decided says why."""
    won = search.ranked[index]
    text = f"{won.code}: {_what(lines, request)}"
    if request.order.shipping_method is ShippingMethod.pickup:
        return text + ", at the pickup store the customer chose"
    if won.distance_km is not None:
        text += f", {won.km} km"
    needs = cover[index]
    them = "it" if len(lines) == 1 and lines[0] in request.lines else "them"
    rank = search.rank_of(cover)
    assert rank is not None
    rest = sum(1 << i for i in cover if i != index)
    runner: tuple[Rank, Candidate, Cover, bool] | None = None
    for i in search.completions(rest, rest | 1 << index):
        other = search.ranked[i]
        holds = other.holds(needs)
        # It takes the place with this shipment's units, or (a split) with the units shared out anew.
        swapped = _moved(cover, index, i) if holds else search.assign(rest | 1 << i)
        if (other_rank := search.rank_of(swapped, runner and runner[0])) is not None:
            runner = (other_rank, other, swapped, holds)
    # A source at its capacity is named only when it would have won had it room today.
    blocked: tuple[Rank, Candidate] | None = None
    for i, other in enumerate(search.ranked):
        if other.at_capacity and other.holds(needs):
            other_rank = search.rank_of(_moved(cover, index, i), blocked[0] if blocked else rank)
            if other_rank is not None:
                blocked = (other_rank, other)
    if runner is None:
        text += f"; the only source with {them}"
    else:
        other_rank, other, swapped, holds = runner
        keyed = [r for r, _ in search.keyed]
        rule = next((r for r, a, b in zip(keyed, rank[0], other_rank[0], strict=True) if a != b), None)
        costs = (search.cost(cover), search.cost(swapped))
        ours, theirs = _decision(rule, won, other, costs, multi=len(cover) > 1)
        if ours:
            text += f", {ours}"
        text += f"; {other.code} {'also had ' + them if holds else 'could take its place'}"
        text += f", {theirs}" if theirs else ""
    if blocked is not None:
        other = blocked[1]
        text += f"; {other.code} at capacity ({_shipments_today(other)})"
    return text


def _moved(units: Cover, source: int, to: int) -> Cover:
    return {i: by_sku for i, by_sku in units.items() if i != source} | {to: units[source]}


def _unplanned(request: PlanRequest, left: Sequence[Line], found: Sequence[Candidate]) -> list[UnplannedLine]:
    """Each line (or the rest of one) that does not ship now, with why in a person's words."""
    order = request.order
    ordered = {line.line_id: line for line in request.lines}
    out = []
    for line in left:
        full = ordered[line.line_id]
        part = full.quantity - line.quantity
        if order.options.ship_complete:
            every = _items(len(request.lines)) if len(request.lines) > 1 else _whole(full)
            reason = f"ships complete, and no source has {every}"
        elif order.shipping_method is ShippingMethod.pickup:
            store = order.pickup_source or "(none named)"
            pickup = next((c for c in found if c.code == store), None)
            if pickup is not None and pickup.at_capacity:
                reason = f"pickup source {store} at capacity ({_shipments_today(pickup)})"
            elif part:
                reason = f"pickup source {store} has only {part} of {full.quantity}"
            else:
                reason = f"pickup source {store} cannot ship the item"
        elif part:
            reason = f"only {part} of {full.quantity} in stock now"
        else:
            reason = "no source has the item"
        if not order.options.ship_complete and order.shipping_method is not ShippingMethod.pickup:
            full_at = [c for c in found if c.at_capacity and c.stock.get(line.sku, 0) >= line.quantity]
            if full_at:
                reason += f"; {full_at[0].code} has it but is at capacity"
        out.append(UnplannedLine(line_id=line.line_id, sku=line.sku, quantity=line.quantity, reason=reason))
    return out


def _whole(line: Line) -> str:
    return "the item" if line.quantity == 1 else f"all {line.quantity} units"


# --- the network ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetworkChange:
    """What an edit of the network changes: sources new or different, and active sources deactivated. Every change
    makes a new version of the network (what `If-Match` is checked against); an edit that changes nothing does
    not."""

    upserted: list[Source]
    deactivated: list[str]

    def __bool__(self) -> bool:
        return bool(self.upserted or self.deactivated)


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


def source_change(current: Source | None, wanted: Source) -> NetworkChange:
    """Creating or replacing one source: the source as given, whatever it was; no other source is touched, so two
    clients that each edit their own sources never undo each other's edits."""
    return NetworkChange(upserted=[wanted] if current != wanted else [], deactivated=[])


def source_removal(current: Source) -> NetworkChange:
    """Removing one source from the network: deactivated, never forgotten (as `network_change` does with a source
    left out); removing an inactive one changes nothing."""
    return NetworkChange(upserted=[], deactivated=[current.code] if current.active else [])
