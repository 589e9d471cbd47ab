"""Inventory's rules: stock per (sku, source), all-or-nothing shipment reservations, settling them when a source
ships or gives a fulfillment back, and the per-SKU backorder queue. Pure: no I/O, plain values in and out."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

StockKey = tuple[str, str]
"""(sku, source_code): where a quantity of stock sits."""


@dataclass(frozen=True, slots=True)
class Stock:
    """What one source holds of one SKU. `reserved` is promised to shipments and not yet shipped."""

    sku: str
    source_code: str
    on_hand: int = 0
    reserved: int = 0

    @property
    def key(self) -> StockKey:
        return (self.sku, self.source_code)

    @property
    def available(self) -> int:
        """What a new reservation may take. Never negative, even after a count below what is reserved."""
        return max(self.on_hand - self.reserved, 0)

    def receive(self, quantity: int) -> Stock:
        """Units arrived (restock, return, transfer)."""
        _positive(quantity)
        return replace(self, on_hand=self.on_hand + quantity)

    def count(self, on_hand: int) -> Stock:
        """A source's absolute count replaces what we believed it holds."""
        if on_hand < 0:
            raise ValueError(f"a count cannot be negative, got {on_hand}")
        # A count below what is reserved leaves the reservations in place (available shows 0): each is a promise
        # to an order whose fulfillment may already be requested or picked, and only its source knows which units
        # are really gone. Dropping them here would strand those orders silently; instead the source rejects or
        # cancels what it cannot ship, which releases the reservation, and routing re-plans that shipment.
        return replace(self, on_hand=on_hand)

    def reserve(self, quantity: int) -> Stock:
        """Promise units to a shipment; never more than is available."""
        _positive(quantity)
        if quantity > self.available:
            raise ValueError(
                f"cannot reserve {quantity} of {self.sku} at {self.source_code}: {self.available} available"
            )
        return replace(self, reserved=self.reserved + quantity)

    def ship(self, quantity: int) -> Stock:
        """Reserved units left the building: both on hand and reserved fall."""
        self._check_reserved(quantity)
        # on_hand can be below reserved after a short count; the units shipped anyway, so it bottoms out at 0.
        return replace(self, on_hand=max(self.on_hand - quantity, 0), reserved=self.reserved - quantity)

    def release(self, quantity: int) -> Stock:
        """Reserved units go back to being available (fulfillment rejected or cancelled)."""
        self._check_reserved(quantity)
        return replace(self, reserved=self.reserved - quantity)

    def _check_reserved(self, quantity: int) -> None:
        _positive(quantity)
        if quantity > self.reserved:
            raise ValueError(f"only {self.reserved} of {self.sku} reserved at {self.source_code}, not {quantity}")


def _positive(quantity: int) -> None:
    if quantity <= 0:
        raise ValueError(f"a quantity must be greater than zero, got {quantity}")


def stock_at(stock: Mapping[StockKey, Stock], key: StockKey) -> Stock:
    """The stock at a key; a (sku, source) inventory has no row for holds nothing."""
    found = stock.get(key)
    return found if found is not None else Stock(*key)


def fell_below_threshold(before: Stock, after: Stock, threshold: int) -> bool:
    """Low stock is announced once, when availability crosses below the threshold, not on every later change."""
    return before.available >= threshold > after.available


def _changed(before: Mapping[StockKey, Stock], after: Mapping[StockKey, Stock]) -> dict[StockKey, Stock]:
    return {key: stock for key, stock in after.items() if stock_at(before, key) != stock}


# --- the network -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceState:
    """What inventory keeps of a source in the network: enough to accept or refuse its receipts."""

    code: str
    name: str
    type: str
    active: bool


@dataclass(frozen=True, slots=True)
class SourceGone:
    code: str


@dataclass(frozen=True, slots=True)
class NetworkChanges:
    upserts: dict[str, SourceState]
    # Sources deactivated without an upsert in the same batch: only their flag changes.
    deactivations: list[str]


def network_changes(events: Iterable[SourceState | SourceGone]) -> NetworkChanges:
    """The net effect of a batch of network events, in order: the last word on each source wins."""
    upserts: dict[str, SourceState] = {}
    deactivations: dict[str, None] = {}
    for event in events:
        if isinstance(event, SourceState):
            upserts[event.code] = event
            deactivations.pop(event.code, None)
        elif event.code in upserts:
            upserts[event.code] = replace(upserts[event.code], active=False)
        else:
            deactivations[event.code] = None
    return NetworkChanges(upserts, list(deactivations))


# --- receipts and counts -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Receipt:
    sku: str
    source_code: str
    quantity: int

    @property
    def key(self) -> StockKey:
        return (self.sku, self.source_code)


@dataclass(frozen=True, slots=True)
class Count:
    sku: str
    source_code: str
    on_hand: int

    @property
    def key(self) -> StockKey:
        return (self.sku, self.source_code)


@dataclass(frozen=True, slots=True)
class StockChanges:
    """The rows a batch changed (final values) and, per row, the index of the last input that changed it."""

    stock: dict[StockKey, Stock]
    causes: dict[StockKey, int]


def apply_receipts(stock: Mapping[StockKey, Stock], movements: Sequence[Receipt | Count]) -> StockChanges:
    """Receipts add to on hand, counts replace it, in arrival order."""
    current = dict(stock)
    causes: dict[StockKey, int] = {}
    for index, movement in enumerate(movements):
        held = stock_at(current, movement.key)
        after = held.receive(movement.quantity) if isinstance(movement, Receipt) else held.count(movement.on_hand)
        if after != held:
            current[movement.key] = after
            causes[movement.key] = index
    changed = _changed(stock, current)
    return StockChanges(changed, {key: causes[key] for key in changed})


# --- reservations ------------------------------------------------------------------------------------------------


class InvalidShipment(ValueError):
    """A planned shipment that can never be reserved as given."""


@dataclass(frozen=True, slots=True)
class Line:
    line_id: str
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class ShipmentRequest:
    """A planned shipment: lines to reserve together at one source."""

    shipment_id: uuid.UUID
    order_id: uuid.UUID
    plan_id: uuid.UUID
    source_code: str
    lines: tuple[Line, ...]

    @classmethod
    def of(
        cls, shipment_id: uuid.UUID, order_id: uuid.UUID, plan_id: uuid.UUID, source_code: str, lines: Iterable[Line]
    ) -> ShipmentRequest:
        """A shipment with one line per line_id (repeats are added up); refuses a line_id given two SKUs."""
        merged: dict[str, Line] = {}
        for line in lines:
            seen = merged.get(line.line_id)
            if seen is None:
                merged[line.line_id] = line
            elif seen.sku != line.sku:
                raise InvalidShipment(
                    f"shipment {shipment_id} lists line {line.line_id!r} with two SKUs ({seen.sku!r}, {line.sku!r})"
                )
            else:
                merged[line.line_id] = replace(seen, quantity=seen.quantity + line.quantity)
        if not merged:
            raise InvalidShipment(f"shipment {shipment_id} has no lines")
        return cls(shipment_id, order_id, plan_id, source_code, tuple(merged.values()))

    def needs(self) -> dict[str, int]:
        """Units per SKU: two lines of one SKU draw on the same stock."""
        needs: dict[str, int] = {}
        for line in self.lines:
            needs[line.sku] = needs.get(line.sku, 0) + line.quantity
        return needs

    def stock_keys(self) -> list[StockKey]:
        return [(sku, self.source_code) for sku in self.needs()]


@dataclass(frozen=True, slots=True)
class Shortage:
    sku: str
    requested: int
    available: int


class ReservationState(StrEnum):
    reserved = "reserved"
    shipped = "shipped"
    released = "released"
    # Kept so that a plan delivered again is recognised and never reserved on a second try.
    rejected = "rejected"


@dataclass(frozen=True, slots=True)
class Reservation:
    """One line of one shipment at one source, and what became of its units."""

    shipment_id: uuid.UUID
    line_id: str
    order_id: uuid.UUID
    plan_id: uuid.UUID
    sku: str
    source_code: str
    quantity: int
    state: ReservationState
    shipped: int = 0
    released: int = 0

    @property
    def key(self) -> StockKey:
        return (self.sku, self.source_code)

    @property
    def open(self) -> int:
        """Units still held for this line."""
        if self.state is not ReservationState.reserved:
            return 0
        return self.quantity - self.shipped - self.released

    def ship(self, quantity: int) -> Reservation:
        return self._settled(shipped=self.shipped + quantity)

    def release(self, quantity: int) -> Reservation:
        return self._settled(released=self.released + quantity)

    def _settled(self, **moved: int) -> Reservation:
        after = replace(self, **moved)
        if after.quantity - after.shipped - after.released < 0:
            raise ValueError(f"line {self.line_id} of shipment {self.shipment_id} has only {self.open} open")
        if after.quantity == after.shipped + after.released:
            # A line partly shipped and the rest given back still counts as shipped.
            state = ReservationState.shipped if after.shipped else ReservationState.released
            after = replace(after, state=state)
        return after


@dataclass(frozen=True, slots=True)
class ReservationDecision:
    shipment: ShipmentRequest
    shortages: tuple[Shortage, ...]

    @property
    def reserved(self) -> bool:
        return not self.shortages

    def reservations(self) -> list[Reservation]:
        state = ReservationState.reserved if self.reserved else ReservationState.rejected
        s = self.shipment
        return [
            Reservation(
                s.shipment_id, line.line_id, s.order_id, s.plan_id, line.sku, s.source_code, line.quantity, state
            )
            for line in s.lines
        ]


@dataclass(frozen=True, slots=True)
class Reservations:
    """A batch's decisions in input order (shipments decided before are left out) and the stock they changed."""

    decisions: list[ReservationDecision]
    stock: dict[StockKey, Stock]
    # Per changed row, the index (in the input) of the last shipment that reserved there.
    causes: dict[StockKey, int] = field(default_factory=dict)

    def reservations(self) -> list[Reservation]:
        return [r for decision in self.decisions for r in decision.reservations()]


def reserve_shipments(
    stock: Mapping[StockKey, Stock],
    shipments: Sequence[ShipmentRequest],
    decided: Collection[uuid.UUID] = frozenset(),
) -> Reservations:
    """Reserve each shipment's lines all or nothing, in order, each drawing on what the earlier ones left.

    A shipment short of any SKU reserves nothing and reports, per short SKU, what it asked and what was there, so
    an earlier shipment is never refused stock a later one gets. A shipment already `decided` (or repeated in the
    batch) is skipped: its units are never reserved twice."""
    current = dict(stock)
    seen = set(decided)
    decisions: list[ReservationDecision] = []
    causes: dict[StockKey, int] = {}
    for index, shipment in enumerate(shipments):
        if shipment.shipment_id in seen:
            continue
        seen.add(shipment.shipment_id)
        needs = shipment.needs()
        shortages = []
        for sku, requested in needs.items():
            available = stock_at(current, (sku, shipment.source_code)).available
            if requested > available:
                shortages.append(Shortage(sku, requested, available))
        if not shortages:
            for sku, requested in needs.items():
                key = (sku, shipment.source_code)
                current[key] = stock_at(current, key).reserve(requested)
                causes[key] = index
        decisions.append(ReservationDecision(shipment, tuple(shortages)))
    changed = _changed(stock, current)
    return Reservations(decisions, changed, {key: causes[key] for key in changed})


# --- settling reservations: shipped, rejected, cancelled ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FulfillmentUpdate:
    """What a source reports about a fulfillment (= a planned shipment) that moves reserved stock.

    `lines` maps line_id to units; None means every line still open (a rejected fulfillment)."""

    shipment_id: uuid.UUID
    shipped: bool
    lines: Mapping[str, int] | None = None

    @classmethod
    def shipment_left(cls, shipment_id: uuid.UUID, lines: Iterable[tuple[str, int]]) -> FulfillmentUpdate:
        return cls(shipment_id, True, _by_line(lines))

    @classmethod
    def lines_given_back(cls, shipment_id: uuid.UUID, lines: Iterable[tuple[str, int]]) -> FulfillmentUpdate:
        return cls(shipment_id, False, _by_line(lines))

    @classmethod
    def all_given_back(cls, shipment_id: uuid.UUID) -> FulfillmentUpdate:
        return cls(shipment_id, False, None)


def _by_line(lines: Iterable[tuple[str, int]]) -> dict[str, int]:
    units: dict[str, int] = {}
    for line_id, quantity in lines:
        units[line_id] = units.get(line_id, 0) + quantity
    return units


@dataclass(frozen=True, slots=True)
class Settlement:
    stock: dict[StockKey, Stock]
    reservations: dict[tuple[uuid.UUID, str], Reservation]
    causes: dict[StockKey, int]
    # Indexes of updates for fulfillments inventory never reserved (or rejected): nothing to settle.
    never_reserved: list[int]


def settle_fulfillments(
    stock: Mapping[StockKey, Stock],
    reservations: Iterable[Reservation],
    updates: Sequence[FulfillmentUpdate],
) -> Settlement:
    """Ship or release reserved units as sources report them, in order.

    Only open units move: a line shipped or released twice (or reported beyond what was reserved) moves what is
    left of it and no more, so a repeated or exaggerated report never drives reserved below what others hold."""
    current = dict(stock)
    by_shipment: dict[uuid.UUID, dict[str, Reservation]] = {}
    for reservation in reservations:
        by_shipment.setdefault(reservation.shipment_id, {})[reservation.line_id] = reservation
    changed_lines: dict[tuple[uuid.UUID, str], Reservation] = {}
    causes: dict[StockKey, int] = {}
    never_reserved: list[int] = []
    for index, update in enumerate(updates):
        lines = by_shipment.get(update.shipment_id, {})
        if not any(r.state is not ReservationState.rejected for r in lines.values()):
            never_reserved.append(index)
            continue
        wanted = update.lines if update.lines is not None else {line_id: r.open for line_id, r in lines.items()}
        for line_id, quantity in wanted.items():
            reservation = lines.get(line_id)
            if reservation is None:
                continue
            moved = min(quantity, reservation.open)
            if moved <= 0:
                continue
            held = stock_at(current, reservation.key)
            if update.shipped:
                current[reservation.key], after = held.ship(moved), reservation.ship(moved)
            else:
                current[reservation.key], after = held.release(moved), reservation.release(moved)
            lines[line_id] = changed_lines[(after.shipment_id, line_id)] = after
            causes[reservation.key] = index
    changed = _changed(stock, current)
    return Settlement(changed, changed_lines, {key: causes[key] for key in changed}, never_reserved)


# --- backorders --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backorder:
    """An order line waiting for stock of its SKU. `arrival` orders the queue: lower came first."""

    arrival: int
    order_id: uuid.UUID
    line_id: str
    sku: str
    quantity: int
    queued_at: datetime


@dataclass(frozen=True, slots=True)
class BackorderQueue:
    """One SKU's waiting lines, oldest first: when stock comes in, the front of the queue is served first, so a
    younger line never gets stock an older waiting line could have used."""

    sku: str
    waiting: tuple[Backorder, ...] = ()

    @classmethod
    def of(cls, sku: str, backorders: Iterable[Backorder]) -> BackorderQueue:
        return cls(sku, tuple(sorted((b for b in backorders if b.sku == sku), key=lambda b: b.arrival)))

    def positions(self) -> list[tuple[int, Backorder]]:
        """Each waiting line with its place in the queue, 1 for the next to be served."""
        return list(enumerate(self.waiting, start=1))
