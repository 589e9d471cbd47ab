"""Inventory's rules: stock per (sku, source), all-or-nothing shipment reservations, settling them when a source
ships or gives a fulfillment back, expected receipts, and the per-SKU backorder queue released FIFO on every increase
of available stock (the rule is written out above `release_backorders`). Pure: no I/O, plain values in and out."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

StockKey = tuple[str, str]
"""(sku, source_code): where a quantity of stock sits."""


@dataclass(frozen=True, slots=True)
class Stock:
    """What one source holds of one SKU. `reserved` is promised to shipments and not yet shipped; `set_aside` is
    held for waiting lines that must ship whole (claims, see `release_backorders`): not promised to a shipment yet,
    but not available to anyone else either."""

    sku: str
    source_code: str
    on_hand: int = 0
    reserved: int = 0
    set_aside: int = 0
    # The as-of time of the last count applied here (None: never counted).
    counted_at: datetime | None = None

    @property
    def key(self) -> StockKey:
        return (self.sku, self.source_code)

    @property
    def available(self) -> int:
        """What a new reservation or claim may take. Never negative, even after a count below what is reserved."""
        return max(self.on_hand - self.reserved - self.set_aside, 0)

    @property
    def held(self) -> int:
        """Units nobody else may take: reserved for shipments plus set aside for waiting lines. Published as
        `reserved` in stock levels, so that readers who know nothing of claims still see the right availability."""
        return self.reserved + self.set_aside

    def same_level(self, other: Stock) -> bool:
        """Whether `other` holds the same units, whatever its count's as-of time: a count that confirmed the books."""
        return (self.on_hand, self.reserved, self.set_aside) == (other.on_hand, other.reserved, other.set_aside)

    @property
    def over_claimed(self) -> int:
        """Units set aside beyond what is physically here and not reserved (after a count came in short)."""
        return max(self.set_aside - max(self.on_hand - self.reserved, 0), 0)

    def receive(self, quantity: int) -> Stock:
        """Units arrived (restock, return, transfer)."""
        _positive(quantity)
        return replace(self, on_hand=self.on_hand + quantity)

    def count(self, on_hand: int, counted_at: datetime | None = None) -> Stock:
        """A source's absolute count as of `counted_at` replaces what we believed it holds (see `is_newer_count`)."""
        if on_hand < 0:
            raise ValueError(f"a count cannot be negative, got {on_hand}")
        # A count below what is reserved leaves the reservations in place (available shows 0): each is a promise
        # to an order whose fulfillment may already be requested or picked, and only its source knows which units
        # are really gone. Dropping them here would strand those orders silently; instead the source rejects or
        # cancels what it cannot ship, which releases the reservation, and routing re-plans that shipment.
        return replace(self, on_hand=on_hand, counted_at=counted_at or self.counted_at)

    def is_newer_count(self, counted_at: datetime | None) -> bool:
        """Whether a count as of `counted_at` may replace on hand here: only one later than the last count applied.

        A count as of T is the source's whole truth at T — it includes every receipt and shipment the source
        recorded before T — and what inventory applied after the last count (receipts, shipments) came after that
        count's T. A count as of an earlier (or the same) T arriving late describes a state that the last count
        already replaced: applying it would undo the later count and every movement since. (A count without an
        as-of is applied as it comes.)"""
        return counted_at is None or self.counted_at is None or counted_at > self.counted_at

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

    def write_off(self, quantity: int) -> Stock:
        """Reserved units their source reports are not there (not found, damaged): the reservation ends and they
        leave on hand, as a shipment's would, so none becomes available. The source's next count sets the truth."""
        return self.ship(quantity)

    def set_aside_for_line(self, quantity: int) -> Stock:
        """Hold available units for a waiting line that must ship whole (a claim)."""
        _positive(quantity)
        if quantity > self.available:
            raise ValueError(
                f"cannot set aside {quantity} of {self.sku} at {self.source_code}: {self.available} available"
            )
        return replace(self, set_aside=self.set_aside + quantity)

    def give_back(self, quantity: int) -> Stock:
        """A claim ends (its line was served, cancelled, or the units are not there): they are available again."""
        _positive(quantity)
        if quantity > self.set_aside:
            raise ValueError(f"only {self.set_aside} of {self.sku} set aside at {self.source_code}, not {quantity}")
        return replace(self, set_aside=self.set_aside - quantity)

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
class ReleaseTerms:
    """What a waiting line's release must respect, copied from its plan. The defaults are those of plans made
    before plans carried them: any active source may serve the line, and it may be served in parts."""

    ship_to_country: str | None = None
    pickup_source: str | None = None
    ship_complete: bool = False


ANY_SOURCE = ReleaseTerms()


@dataclass(frozen=True, slots=True)
class SourceState:
    """What inventory keeps of a source in the network: enough to accept or refuse its receipts, to know which
    waiting lines it may serve, and when a shipment released there should leave."""

    code: str
    name: str
    type: str
    active: bool
    # None: not known (a source inventory heard of before sources carried their countries); it serves only lines
    # whose plan named no country, until routing publishes it again.
    countries: frozenset[str] | None = None
    handling_days: int = 1
    timezone: str = "UTC"

    def serves(self, terms: ReleaseTerms) -> bool:
        """Whether this source may ship a line with these terms: active; a pickup line only at its store (nothing
        travels, so countries do not matter); any other line only to a country the source ships to."""
        if not self.active:
            return False
        if terms.pickup_source is not None:
            return terms.pickup_source == self.code
        if terms.ship_to_country is None:
            return True
        return self.countries is not None and terms.ship_to_country in self.countries

    def ship_by(self, now: datetime) -> date:
        """When a shipment released now should leave: today where the source is, plus its handling days."""
        return now.astimezone(ZoneInfo(self.timezone)).date() + timedelta(days=self.handling_days)


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
class AtSource:
    """Something a WMS or purchasing reports about one SKU at one source."""

    sku: str
    source_code: str

    @property
    def key(self) -> StockKey:
        return (self.sku, self.source_code)


@dataclass(frozen=True, slots=True)
class Receipt(AtSource):
    quantity: int
    reference: str | None = None
    # Units a customer sent back: not the delivery purchasing announced, so they settle no expected receipt (which
    # would date waiting lines by a delivery still to come as if it had arrived).
    returned: bool = False


@dataclass(frozen=True, slots=True)
class Count(AtSource):
    on_hand: int
    # The source's as-of time for the count (the contract's `counted_at`).
    counted_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Expectation(AtSource):
    """Stock announced by purchasing or a WMS: not here yet, but it dates the lines waiting for it."""

    quantity: int
    expected_date: date
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class ExpectedReceipt:
    """An announced receipt and how much of it is still to come. `id` is None until it is stored; it orders
    announcements of the same date."""

    id: int | None
    sku: str
    source_code: str
    quantity: int
    outstanding: int
    expected_date: date
    reference: str | None = None

    @property
    def key(self) -> StockKey:
        return (self.sku, self.source_code)


@dataclass(frozen=True, slots=True)
class StockChanges:
    """The rows a batch changed (final values) and, per row, the index of the last input that changed it; the
    expected receipts it announced (id None) or changed; and the indexes of counts not applied because a later
    count had been applied already (`Stock.is_newer_count`)."""

    stock: dict[StockKey, Stock]
    causes: dict[StockKey, int]
    expected: list[ExpectedReceipt] = field(default_factory=list)
    stale_counts: list[int] = field(default_factory=list)


def apply_receipts(
    stock: Mapping[StockKey, Stock],
    movements: Sequence[Receipt | Count | Expectation],
    expected: Iterable[ExpectedReceipt] = (),
) -> StockChanges:
    """Receipts add to on hand, counts replace it, announcements are recorded, in arrival order. A count no later
    than the last count applied at its (sku, source) changes nothing and is reported stale.

    A receipt settles the open announcement of its (sku, source) with the same reference, whatever it brought;
    without one, it uses up open announcements there, the earliest expected first (then the first announced). A
    return settles none. An announcement with the reference of an open one at its (sku, source) replaces it (a new
    date or quantity)."""
    current = dict(stock)
    causes: dict[StockKey, int] = {}
    stale: list[int] = []
    announced = _Announcements(expected)
    for index, movement in enumerate(movements):
        if isinstance(movement, Expectation):
            announced.announce(movement)
            continue
        held = stock_at(current, movement.key)
        if isinstance(movement, Receipt):
            after = held.receive(movement.quantity)
        elif held.is_newer_count(movement.counted_at):
            after = held.count(movement.on_hand, movement.counted_at)
        else:
            stale.append(index)
            continue
        if after != held:
            current[movement.key] = after
            causes[movement.key] = index
        if isinstance(movement, Receipt):
            announced.receive(movement)
    changed = _changed(stock, current)
    return StockChanges(changed, {key: causes[key] for key in changed}, announced.changed(), stale)


class _Announcements:
    """Open expected receipts while a batch of receipts is applied."""

    def __init__(self, expected: Iterable[ExpectedReceipt]) -> None:
        self.open = [e for e in expected if e.outstanding > 0]
        self.touched: dict[int, None] = {}

    def announce(self, movement: Expectation) -> None:
        for i, e in enumerate(self.open):
            if movement.reference is not None and e.key == movement.key and e.reference == movement.reference:
                self._set(
                    i,
                    replace(
                        e,
                        quantity=movement.quantity,
                        outstanding=movement.quantity,
                        expected_date=movement.expected_date,
                    ),
                )
                return
        m = movement
        self.open.append(
            ExpectedReceipt(None, m.sku, m.source_code, m.quantity, m.quantity, m.expected_date, m.reference)
        )
        self.touched[len(self.open) - 1] = None

    def receive(self, receipt: Receipt) -> None:
        if receipt.returned:
            return
        here = [i for i, e in enumerate(self.open) if e.key == receipt.key and e.outstanding > 0]
        settled = next((i for i in here if receipt.reference and self.open[i].reference == receipt.reference), None)
        if settled is not None:
            self._set(settled, replace(self.open[settled], outstanding=0))
            return
        units = receipt.quantity
        # Stored announcements keep their announcement order by id; this batch's new ones (id None) follow, in order.
        for i in sorted(
            here, key=lambda i: (self.open[i].expected_date, self.open[i].id is None, self.open[i].id or i)
        ):
            used = min(units, self.open[i].outstanding)
            if used == 0:
                break
            self._set(i, replace(self.open[i], outstanding=self.open[i].outstanding - used))
            units -= used

    def _set(self, i: int, expected: ExpectedReceipt) -> None:
        self.open[i] = expected
        self.touched[i] = None

    def changed(self) -> list[ExpectedReceipt]:
        return [self.open[i] for i in self.touched]


# --- cancellations that overtake their plan ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tombstone:
    """Units the order service cancelled before inventory held them: its `lines_cancelled` travels on the order
    events topic and may overtake the plan (on the routing topic) that queues or reserves them. Remembered, and
    subtracted when that plan comes, so that nothing is held for units nobody will ship.

    `shipment_id` None: backordered units of the line, subtracted when a plan made before `cancelled_at` queues the
    line (`join_queues`). Else: reserved units of that planned shipment, subtracted when it is reserved
    (`reserve_shipments`). `id` is None until stored."""

    order_id: uuid.UUID
    line_id: str
    quantity: int
    cancelled_at: datetime
    shipment_id: uuid.UUID | None = None
    id: int | None = None


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
    # Units per line the order service cancelled before the shipment was reserved (tombstones): never reserved.
    cancelled: Mapping[str, int] = field(default_factory=dict)

    @property
    def reserved(self) -> bool:
        return not self.shortages

    @property
    def lines(self) -> tuple[Line, ...]:
        """What the shipment asks of its source once cancelled units are taken out: what `reserved` holds."""
        rest = self.shipment.lines
        if self.cancelled:
            rest = [replace(line, quantity=line.quantity - self.cancelled.get(line.line_id, 0)) for line in rest]
        return tuple(line for line in rest if line.quantity > 0)

    @property
    def emptied(self) -> bool:
        """Every unit was cancelled before the shipment was reserved: nothing is held, nothing to request."""
        return not self.lines

    def reservations(self) -> list[Reservation]:
        """One row per planned line, with the planned quantity: units cancelled ahead count as released at once, so
        the row says what became of every unit the plan asked for, and a plan delivered again finds it decided."""
        s = self.shipment
        rows = []
        for line in s.lines:
            row = Reservation(
                s.shipment_id,
                line.line_id,
                s.order_id,
                s.plan_id,
                line.sku,
                s.source_code,
                line.quantity,
                ReservationState.reserved if self.reserved else ReservationState.rejected,
            )
            cancelled = self.cancelled.get(line.line_id, 0)
            rows.append(row.release(cancelled) if self.reserved and cancelled else row)
        return rows


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
    cancelled: Iterable[Tombstone] = (),
) -> Reservations:
    """Reserve each shipment's lines all or nothing, in order, each drawing on what the earlier ones left.

    A shipment short of any SKU reserves nothing and reports, per short SKU, what it asked and what was there, so
    an earlier shipment is never refused stock a later one gets. A shipment already `decided` (or repeated in the
    batch) is skipped: its units are never reserved twice.

    Units of a shipment the order service cancelled before it was reserved (`cancelled`: tombstones naming the
    shipment; its cancellation overtook the plan) are taken out first: only the rest is reserved, or checked for
    shortages. A shipment left with nothing holds nothing (`ReservationDecision.emptied`)."""
    current = dict(stock)
    seen = set(decided)
    decisions: list[ReservationDecision] = []
    causes: dict[StockKey, int] = {}
    ahead: dict[uuid.UUID, dict[str, int]] = {}
    for tombstone in cancelled:
        if tombstone.shipment_id is not None:
            lines = ahead.setdefault(tombstone.shipment_id, {})
            lines[tombstone.line_id] = lines.get(tombstone.line_id, 0) + tombstone.quantity
    for index, shipment in enumerate(shipments):
        if shipment.shipment_id in seen:
            continue
        seen.add(shipment.shipment_id)
        cancelled_here = {
            line.line_id: min(ahead[shipment.shipment_id][line.line_id], line.quantity)
            for line in shipment.lines
            if ahead.get(shipment.shipment_id, {}).get(line.line_id)
        }
        needs: dict[str, int] = {}
        for line in ReservationDecision(shipment, (), cancelled_here).lines:
            needs[line.sku] = needs.get(line.sku, 0) + line.quantity
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
        decisions.append(ReservationDecision(shipment, tuple(shortages), cancelled_here))
    changed = _changed(stock, current)
    return Reservations(decisions, changed, {key: causes[key] for key in changed})


# --- settling reservations: shipped, rejected, cancelled ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FulfillmentUpdate:
    """What a source reports about a fulfillment (= a planned shipment) that moves reserved stock.

    `lines` maps line_id to units; None means every line still open (a rejected fulfillment). `missing`: the units
    given back are not on the shelf (the source found it empty, or them damaged), so they are written off, not
    made available again."""

    shipment_id: uuid.UUID
    shipped: bool
    lines: Mapping[str, int] | None = None
    missing: bool = False

    @classmethod
    def shipment_left(cls, shipment_id: uuid.UUID, lines: Iterable[tuple[str, int]]) -> FulfillmentUpdate:
        return cls(shipment_id, True, _by_line(lines))

    @classmethod
    def lines_given_back(
        cls, shipment_id: uuid.UUID, lines: Iterable[tuple[str, int]], *, missing: bool = False
    ) -> FulfillmentUpdate:
        return cls(shipment_id, False, _by_line(lines), missing)

    @classmethod
    def all_given_back(cls, shipment_id: uuid.UUID, *, missing: bool = False) -> FulfillmentUpdate:
        return cls(shipment_id, False, None, missing)


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
    # Of those, the updates for fulfillments inventory has not decided at all (no row, not even a rejected one).
    unknown: list[int] = field(default_factory=list)
    # Cancelled reserved units of shipments not reserved yet (see `release_cancelled_units`).
    tombstones: list[Tombstone] = field(default_factory=list)
    # Units written off per stock row: given back by their source as not there (`FulfillmentUpdate.missing`).
    written_off: dict[StockKey, int] = field(default_factory=dict)
    # Per SKU, the last update about a fulfillment holding a reservation of it, settled or not.
    sku_causes: dict[str, int] = field(default_factory=dict)


def settle_fulfillments(
    stock: Mapping[StockKey, Stock],
    reservations: Iterable[Reservation],
    updates: Sequence[FulfillmentUpdate],
) -> Settlement:
    """Ship or release reserved units as sources report them, in order; units reported missing are written off
    (released and off on hand), so no waiting line is served from units that are not there.

    Only open units move: a line shipped or released twice (or reported beyond what was reserved) moves what is
    left of it and no more, so a repeated or exaggerated report never drives reserved below what others hold."""
    current = dict(stock)
    by_shipment: dict[uuid.UUID, dict[str, Reservation]] = {}
    for reservation in reservations:
        by_shipment.setdefault(reservation.shipment_id, {})[reservation.line_id] = reservation
    changed_lines: dict[tuple[uuid.UUID, str], Reservation] = {}
    causes: dict[StockKey, int] = {}
    never_reserved: list[int] = []
    unknown: list[int] = []
    written_off: dict[StockKey, int] = {}
    sku_causes: dict[str, int] = {}
    for index, update in enumerate(updates):
        lines = by_shipment.get(update.shipment_id, {})
        sku_causes.update((r.sku, index) for r in lines.values())
        if not any(r.state is not ReservationState.rejected for r in lines.values()):
            never_reserved.append(index)
            if not lines:
                unknown.append(index)
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
            elif update.missing:
                current[reservation.key], after = held.write_off(moved), reservation.release(moved)
                written_off[reservation.key] = written_off.get(reservation.key, 0) + moved
            else:
                current[reservation.key], after = held.release(moved), reservation.release(moved)
            lines[line_id] = changed_lines[(after.shipment_id, line_id)] = after
            causes[reservation.key] = index
    changed = _changed(stock, current)
    causes = {key: causes[key] for key in changed}
    return Settlement(
        changed, changed_lines, causes, never_reserved, unknown, written_off=written_off, sku_causes=sku_causes
    )


@dataclass(frozen=True, slots=True)
class ReservedUnitsCancelled:
    """Reserved units of a planned shipment the order service cancelled before asking the source for them."""

    order_id: uuid.UUID
    shipment_id: uuid.UUID
    line_id: str
    quantity: int
    cancelled_at: datetime


def release_cancelled_units(
    stock: Mapping[StockKey, Stock],
    reservations: Iterable[Reservation],
    cancelled: Sequence[ReservedUnitsCancelled],
) -> Settlement:
    """Give back reserved units the order service cancelled, as a source's cancellation of those lines would.

    A shipment inventory has not decided yet (its plan, on another topic, is on its way) gets a tombstone instead:
    it is reserved without those units when it comes (`reserve_shipments`). A shipment inventory refused holds
    nothing to give back. Units beyond what is still reserved of a line move nothing more."""
    updates = [FulfillmentUpdate.lines_given_back(c.shipment_id, [(c.line_id, c.quantity)]) for c in cancelled]
    settled = settle_fulfillments(stock, reservations, updates)
    tombstones = [
        Tombstone(c.order_id, c.line_id, c.quantity, c.cancelled_at, c.shipment_id)
        for c in (cancelled[i] for i in settled.unknown)
    ]
    return replace(settled, tombstones=tombstones)


# --- backorders --------------------------------------------------------------------------------------------------

NO_PLAN = uuid.UUID(int=0)


class BackorderState(StrEnum):
    waiting = "waiting"
    allocated = "allocated"  # left the queue: its last waiting units were released to a shipment
    cancelled = "cancelled"  # left the queue: its last waiting units were cancelled


@dataclass(frozen=True, slots=True)
class Backorder:
    """An order line waiting for stock of its SKU. `arrival` orders the queue: lower came first.

    `waiting` is what is still to be served. A line that must ship whole (its order is ship_complete) may hold a
    claim: `set_aside` of those units held for it at `anchor`, the one source where its order gathers stock."""

    arrival: int
    order_id: uuid.UUID
    line_id: str
    sku: str
    waiting: int
    terms: ReleaseTerms = ANY_SOURCE
    set_aside: int = 0
    anchor: str | None = None
    plan_id: uuid.UUID = NO_PLAN
    queued_at: datetime | None = None
    state: BackorderState = BackorderState.waiting

    @property
    def whole(self) -> bool:
        return self.terms.ship_complete

    @property
    def missing(self) -> int:
        """Units still to be found for the line: what waits and is not set aside for it."""
        return self.waiting - self.set_aside


@dataclass(frozen=True, slots=True)
class LineCancellation:
    """Waiting units of a line the order service cancelled. `cancelled_at`: when, if it said the units were
    backordered; units it names that do not wait (yet) are then remembered (`Release.tombstones`). None: an older
    event that did not say where the units were, whose units not waiting are only reported."""

    order_id: uuid.UUID
    line_id: str
    quantity: int
    cancelled_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class NewBackorder:
    """Backordered units of a line that a plan sends to its SKU's queue, with the plan's terms."""

    order_id: uuid.UUID
    plan_id: uuid.UUID
    line_id: str
    sku: str
    quantity: int
    terms: ReleaseTerms = ANY_SOURCE
    # When routing made the plan: only a cancellation after it can be of these units. None: not known (any is).
    planned_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Joining:
    """What a batch of plans adds to the queues: one entry per line (`lines`, none at 0), and the tombstones it
    used (`tombstones`, each with what is left of it: 0 when used up)."""

    lines: list[NewBackorder]
    tombstones: list[Tombstone]


def join_queues(lines: Sequence[NewBackorder], tombstones: Iterable[Tombstone] = ()) -> Joining:
    """Backordered lines of a batch of plans, as they join their queues (give it each plan's lines once: a plan
    delivered again is recognised by the caller, by plan and line).

    Units the order service cancelled before the plan arrived are taken out first: each line takes from the
    tombstones of its (order, line) that were cancelled at or after its plan was made (a cancellation older than the
    plan cannot be of the units it backorders: it answered an earlier plan, or units served meanwhile), the earliest
    cancelled first; what a line does not use stays for a later plan. A line named by several plans of the batch
    (a plan and its re-plan) joins once with all their units, under the first plan's terms; a line left with
    nothing does not join."""
    left = [t for t in tombstones if t.shipment_id is None]
    left.sort(key=lambda t: (t.cancelled_at, t.id or 0))
    used: dict[int, None] = {}
    joined: dict[tuple[uuid.UUID, str], NewBackorder] = {}
    for line in lines:
        units = line.quantity
        for i, tombstone in enumerate(left):
            if units == 0:
                break
            if (tombstone.order_id, tombstone.line_id) != (line.order_id, line.line_id) or tombstone.quantity == 0:
                continue
            if line.planned_at is not None and tombstone.cancelled_at < line.planned_at:
                continue
            taken = min(units, tombstone.quantity)
            left[i] = replace(tombstone, quantity=tombstone.quantity - taken)
            used[i] = None
            units -= taken
        if units == 0:
            continue
        key = (line.order_id, line.line_id)
        seen = joined.get(key)
        joined[key] = replace(line, quantity=units) if seen is None else replace(seen, quantity=seen.quantity + units)
    return Joining(list(joined.values()), [left[i] for i in used])


@dataclass(frozen=True, slots=True)
class AllocatedLine:
    line_id: str
    sku: str
    quantity: int
    plan_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Allocation:
    """Waiting units released to a new shipment: reserved at `source_code`, for the order service to request."""

    shipment_id: uuid.UUID
    order_id: uuid.UUID
    source_code: str
    lines: tuple[AllocatedLine, ...]
    ship_by: date

    def reservations(self) -> list[Reservation]:
        """The reservation rows it makes, settled later like those of any planned shipment."""
        return [
            Reservation(
                self.shipment_id,
                line.line_id,
                self.order_id,
                line.plan_id,
                line.sku,
                self.source_code,
                line.quantity,
                ReservationState.reserved,
            )
            for line in self.lines
        ]


@dataclass(frozen=True, slots=True)
class QueueView:
    """The waiting lines a release is given, which need not be whole queues.

    Per SKU, every waiting line up to `loaded_to[sku]` (every one for a SKU in `complete`) is here: that prefix is
    what a release may walk. Lines with a claim and every waiting line of an order that ships complete and has a line
    here are here as well, wherever they stand. `locked`: the SKUs whose queues and stock rows the caller holds
    locked; the release touches no other."""

    lines: tuple[Backorder, ...]
    loaded_to: Mapping[str, int] = field(default_factory=dict)
    complete: frozenset[str] = frozenset()
    locked: frozenset[str] = frozenset()

    @classmethod
    def whole(cls, lines: Iterable[Backorder], skus: Iterable[str] = ()) -> QueueView:
        """Whole queues: every waiting line of every SKU named (or met), all of them locked."""
        lines = tuple(lines)
        every = frozenset({*skus, *(line.sku for line in lines)})
        return cls(lines, {}, every, every)

    def reaches(self, line: Backorder) -> bool:
        """Whether every older waiting line of the line's SKU is here too."""
        return line.sku in self.complete or line.arrival <= self.loaded_to.get(line.sku, 0)


@dataclass(frozen=True, slots=True)
class Release:
    """What serving the queues decided: rows changed (final values), shipments released, and whether the decision
    stands. It stands only when nothing is `short` (a SKU whose queue must be read further: stock was left over at
    the end of what was read, or a line it had to weigh stands beyond) and nothing `unlocked` (a SKU of an order
    that ships complete whose queue the caller does not hold): otherwise the caller reads or locks more and asks
    again with the same inputs."""

    stock: dict[StockKey, Stock]
    lines: list[Backorder]
    allocations: list[Allocation]
    short: frozenset[str] = frozenset()
    unlocked: frozenset[str] = frozenset()
    # Cancelled units that found no waiting units of their line (all of a cancellation, or what exceeded the line).
    unmatched: list[LineCancellation] = field(default_factory=list)

    @property
    def stands(self) -> bool:
        return not self.short and not self.unlocked

    @property
    def tombstones(self) -> list[Tombstone]:
        """Backordered units the order service cancelled that wait nowhere yet: the plan that queues them may still
        be on its way (it travels on another topic), so they are remembered for it."""
        return [
            Tombstone(c.order_id, c.line_id, c.quantity, c.cancelled_at)
            for c in self.unmatched
            if c.cancelled_at is not None
        ]

    def still_waiting(self, joined: Mapping[int, int], waiting: Mapping[int, int]) -> dict[int, int]:
        """Of the units that just joined each line (by arrival), those still waiting after this release: what
        `backorder_queued` announces. `waiting` is what each line waited with before the release. A line served at
        once is left out: its allocation alone tells the order, which accepts units it has not seen queued, and the
        customer is never told to wait for units that already ship."""
        after = {line.arrival: line.waiting for line in self.lines}
        left = {arrival: min(units, after.get(arrival, waiting[arrival])) for arrival, units in joined.items()}
        return {arrival: units for arrival, units in left.items() if units > 0}


def release_backorders(
    stock: Mapping[StockKey, Stock],
    queue: QueueView,
    sources: Mapping[str, SourceState],
    *,
    increased: Iterable[StockKey] = (),
    cancelled: Sequence[LineCancellation] = (),
    reconsidered: Collection[str] = (),
    now: datetime,
    new_shipment_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> Release:
    """Serve the backorder queues from stock that became available, first come first served.

    The rule. Whenever the available units of a SKU at a source S rise (a receipt, a count upwards, a return, a
    reservation released by a rejected or cancelled fulfillment, a claim released), and whenever lines join the
    SKU's queue while S holds available units of it (`where_new_lines_may_be_served`), S walks that SKU's waiting
    lines in arrival order, among the lines S may serve (`SourceState.serves`: active; ships to the line's country;
    a pickup line only at its store), and:
    * a line that may be split (its order is not ship_complete) gets min(available, waiting); what it still lacks
      waits at its place;
    * an order that ships complete is one group of all its waiting lines, decided at the place of its oldest line
      met in the walk. If S covers every line of the group whole, each from what is set aside for it at S plus what
      is available at S, the group is released at S as one shipment, and claims it held at another source go back
      there (an increase: that source walks its queues). Else, if the group is anchored at S or nowhere, S sets its
      available units aside for the group's lines (a claim: counted as reserved, so neither younger lines nor new
      plans get them) and the group is anchored at S. A group anchored elsewhere is passed over: S's units go on to
      younger lines, unless S covers the group whole at once.
    * the walk ends when S's units run out or the lines do.
    So a younger line never receives stock that an older waiting line S may serve still wants. A walk covers
    every SKU that rose at S, merged in arrival order, plus the SKUs of groups met on the way that S has available,
    so that older lines of those SKUs are served before a group takes their units. Lines of one order released at
    one source in one call become one shipment (`Allocation`), its ship-by date today at the source plus its
    handling days.

    Before walking, claims larger than what a source still holds (a count came in short) shrink, youngest line
    first; the group keeps its anchor. A group anchored at a source that can no longer serve it (deactivated, or no
    longer shipping to its country) gives its claims back there and is anchored nowhere again; every source that
    has units of its SKUs available walks. `cancelled` lowers waiting quantities (a line leaves the queue at 0) and
    gives back the claims the lines no longer need, which is an increase like any other; a group that lost a line
    is looked at again at its anchor; cancelled units that find nothing waiting are reported (`Release.unmatched`).
    `reconsidered` sources (whose terms changed: activated, new countries) walk every SKU they have available, as if
    it had just arrived."""
    release = _Release(stock, queue, sources, now, new_shipment_id)
    release.shrink_claims()
    release.unanchor_where_unservable()
    for cancellation in cancelled:
        release.cancel(cancellation)
    for key in increased:
        release.rose(key)
    for key, row in stock.items():
        if key[1] in reconsidered and row.available > 0:
            release.rose(key)
    release.serve()
    return release.outcome()


class _Release:
    """The working state of one `release_backorders` call."""

    def __init__(
        self,
        stock: Mapping[StockKey, Stock],
        queue: QueueView,
        sources: Mapping[str, SourceState],
        now: datetime,
        new_shipment_id: Callable[[], uuid.UUID],
    ) -> None:
        self.before = stock
        self.stock = dict(stock)
        self.queue = queue
        self.sources = sources
        self.now = now
        self.new_shipment_id = new_shipment_id
        self.lines = {line.arrival: line for line in queue.lines if line.state is BackorderState.waiting}
        self.original = dict(self.lines)
        self.by_sku: dict[str, list[int]] = {}
        self.by_line: dict[tuple[uuid.UUID, str], int] = {}
        self.groups: dict[uuid.UUID, list[int]] = {}
        for arrival in sorted(self.lines):
            line = self.lines[arrival]
            self.by_sku.setdefault(line.sku, []).append(arrival)
            self.by_line[(line.order_id, line.line_id)] = arrival
            if line.whole:
                self.groups.setdefault(line.order_id, []).append(arrival)
        for order_id in self.groups:
            # A line that joined an order already gathering somewhere (a re-plan of one of its lines) gathers there
            # too: the group has one anchor, and every stored line of it says where.
            members = self._members(order_id)
            anchor = next((m.anchor for m in members if m.anchor), None)
            for member in members:
                if anchor is not None and member.anchor is None:
                    self._put(replace(member, anchor=anchor))
        # Sources with something to walk, in the order their stock rose, and the SKUs that rose there.
        self.pending: dict[str, dict[str, None]] = {}
        self.shipments: dict[tuple[uuid.UUID, str], dict[str, AllocatedLine]] = {}
        self.rechecks: set[uuid.UUID] = set()
        self.short: set[str] = set()
        self.unlocked: set[str] = set()
        self.unmatched: list[LineCancellation] = []

    # --- what starts a walk ---

    def rose(self, key: StockKey) -> None:
        sku, source = key
        self.pending.setdefault(source, {})[sku] = None

    def shrink_claims(self) -> None:
        for key, row in list(self.stock.items()):
            excess = row.over_claimed
            if not excess:
                continue
            sku, source = key
            for arrival in reversed(self.by_sku.get(sku, [])):
                line = self.lines[arrival]
                if excess == 0:
                    break
                if line.anchor == source and line.set_aside:
                    back = min(excess, line.set_aside)
                    self._give_back(line, back)
                    excess -= back

    def unanchor_where_unservable(self) -> None:
        for order_id in list(self.groups):
            members = self._members(order_id)
            anchor = next((m.anchor for m in members if m.anchor), None)
            if anchor is None:
                continue
            here = self.sources.get(anchor)
            if here is not None and all(here.serves(m.terms) for m in members):
                continue
            if any(m.sku not in self.queue.locked for m in members):
                # Its claims sit in stock rows this call does not hold; the caller locks them and asks again.
                self.unlocked.update(m.sku for m in members if m.sku not in self.queue.locked)
                continue
            for member in members:
                if member.set_aside:
                    self.rose((member.sku, anchor))
                    member = self._give_back(member, member.set_aside)
                self._put(replace(member, anchor=None))
                for key, row in self.stock.items():
                    if key[0] == member.sku and row.available > 0:
                        self.rose(key)

    def cancel(self, cancellation: LineCancellation) -> None:
        arrival = self.by_line.get((cancellation.order_id, cancellation.line_id))
        line = self.lines[arrival] if arrival is not None else None
        if line is None or line.state is not BackorderState.waiting:
            self.unmatched.append(cancellation)
            return
        if cancellation.quantity > line.waiting:
            # More was cancelled than waits: the rest has not joined yet (its plan is on its way) or left meanwhile.
            self.unmatched.append(replace(cancellation, quantity=cancellation.quantity - line.waiting))
        waiting = line.waiting - min(cancellation.quantity, line.waiting)
        excess = max(line.set_aside - waiting, 0)
        if excess:
            assert line.anchor is not None
            self.rose((line.sku, line.anchor))
            line = self._give_back(line, excess)
        if waiting == 0:
            line = self._put(replace(line, waiting=0, set_aside=0, anchor=None, state=BackorderState.cancelled))
        else:
            line = self._put(replace(line, waiting=waiting))
        if line.whole:
            # The rest of its order may now be covered where it gathers stock.
            members = self._members(line.order_id)
            anchor = next((m.anchor for m in members if m.anchor), None)
            if anchor is not None:
                self.rechecks.add(line.order_id)
                for member in members:
                    self.rose((member.sku, anchor))

    # --- walking ---

    def serve(self) -> None:
        while self.pending:
            source = next(iter(self.pending))
            rose = self.pending.pop(source)
            self.walk(source, rose)

    def walk(self, source: str, rose: Mapping[str, None]) -> None:
        here = self.sources.get(source)
        if here is None or not here.active:
            return
        walked = self._walked_skus(source, set(rose))
        lines = sorted(
            arrival for sku in walked for arrival in self.by_sku.get(sku, []) if self.queue.reaches(self.lines[arrival])
        )
        decided: set[uuid.UUID] = set()
        for order_id in self.rechecks:
            # A group looked at again must be reached, or the walk cannot tell whether it is covered.
            members = self._members(order_id)
            if any(m.anchor == source for m in members):
                self.short.update(m.sku for m in members if m.sku in walked and not self.queue.reaches(m))
        for arrival in lines:
            line = self.lines[arrival]
            if line.state is not BackorderState.waiting or not here.serves(line.terms):
                continue
            if not line.whole:
                units = min(self._available(line.sku, source), line.waiting)
                if units:
                    self._allocate(line, here, units)
                continue
            if line.order_id not in decided:
                decided.add(line.order_id)
                self._decide_group(line.order_id, here, walked)
        for sku in walked:
            if sku not in self.queue.complete and self._available(sku, source) > 0:
                self.short.add(sku)

    def _walked_skus(self, source: str, rose: set[str]) -> set[str]:
        """The SKUs that rose, and those of groups met in their queues that the source has available: their older
        lines must come first."""
        walked = set(rose)
        grown = True
        while grown:
            grown = False
            for sku in list(walked):
                for arrival in self.by_sku.get(sku, []):
                    line = self.lines[arrival]
                    if not line.whole or not self.queue.reaches(line):
                        continue
                    for member in self._members(line.order_id):
                        if member.sku not in walked and self._available(member.sku, source) > 0:
                            walked.add(member.sku)
                            grown = True
        return walked

    def _decide_group(self, order_id: uuid.UUID, here: SourceState, walked: set[str]) -> None:
        members = self._members(order_id)
        for member in members:
            if member.sku not in self.queue.locked:
                self.unlocked.add(member.sku)
                return
            if member.sku in walked and not self.queue.reaches(member):
                self.short.add(member.sku)
                return
        if not all(here.serves(member.terms) for member in members):
            return
        source = here.code
        anchor = next((m.anchor for m in members if m.anchor), None)
        need: dict[str, int] = {}
        have: dict[str, int] = {}
        for member in members:
            need[member.sku] = need.get(member.sku, 0) + member.waiting
            if member.anchor == source:
                have[member.sku] = have.get(member.sku, 0) + member.set_aside
        if all(units <= have.get(sku, 0) + self._available(sku, source) for sku, units in need.items()):
            for member in members:
                self._allocate_whole(member, here)
            return
        if anchor not in (None, source):
            return
        for member in members:
            units = min(self._available(member.sku, source), member.missing)
            if units:
                self.stock[(member.sku, source)] = self._row(member.sku, source).set_aside_for_line(units)
                self._put(replace(member, set_aside=member.set_aside + units))
                anchor = source
        if anchor == source:
            # The whole order gathers its units here from now on; other sources pass it over unless they cover it.
            for member in self._members(order_id):
                self._put(replace(member, anchor=source))

    # --- moving units ---

    def _allocate(self, line: Backorder, here: SourceState, units: int) -> None:
        key = (line.sku, here.code)
        self.stock[key] = self._row(*key).reserve(units)
        waiting = line.waiting - units
        state = BackorderState.waiting if waiting else BackorderState.allocated
        self._put(replace(line, waiting=waiting, state=state))
        self._ship(line, here, units)

    def _allocate_whole(self, line: Backorder, here: SourceState) -> None:
        if line.set_aside:
            assert line.anchor is not None
            claimed = (line.sku, line.anchor)
            self.stock[claimed] = self._row(*claimed).give_back(line.set_aside)
            if line.anchor != here.code:
                # The claim goes back to where it was held: more available there, so that source walks again.
                self.rose(claimed)
        key = (line.sku, here.code)
        self.stock[key] = self._row(*key).reserve(line.waiting)
        self._put(replace(line, waiting=0, set_aside=0, anchor=None, state=BackorderState.allocated))
        self._ship(line, here, line.waiting)

    def _give_back(self, line: Backorder, units: int) -> Backorder:
        assert line.anchor is not None
        key = (line.sku, line.anchor)
        self.stock[key] = self._row(*key).give_back(units)
        return self._put(replace(line, set_aside=line.set_aside - units))

    def _ship(self, line: Backorder, here: SourceState, units: int) -> None:
        lines = self.shipments.setdefault((line.order_id, here.code), {})
        before = lines.get(line.line_id)
        total = units + (before.quantity if before else 0)
        lines[line.line_id] = AllocatedLine(line.line_id, line.sku, total, line.plan_id)

    # --- bookkeeping ---

    def _members(self, order_id: uuid.UUID) -> list[Backorder]:
        return [self.lines[a] for a in self.groups.get(order_id, []) if self.lines[a].state is BackorderState.waiting]

    def _row(self, sku: str, source: str) -> Stock:
        return stock_at(self.stock, (sku, source))

    def _available(self, sku: str, source: str) -> int:
        return self._row(sku, source).available

    def _put(self, line: Backorder) -> Backorder:
        self.lines[line.arrival] = line
        return line

    def outcome(self) -> Release:
        allocations = []
        for (order_id, source), lines in self.shipments.items():
            here = self.sources[source]
            allocations.append(
                Allocation(self.new_shipment_id(), order_id, source, tuple(lines.values()), here.ship_by(self.now))
            )
        changed = _changed(self.before, self.stock)
        lines = [line for arrival, line in self.lines.items() if self.original.get(arrival) != line]
        return Release(
            changed,
            lines,
            allocations,
            frozenset(self.short),
            frozenset(self.unlocked),
            self.unmatched,
        )


def where_new_lines_may_be_served(stock: Mapping[StockKey, Stock], skus: Collection[str]) -> list[StockKey]:
    """Where lines that just joined the queues of `skus` may find units at once: every (sku, source) of `stock`
    with units of one of them available, in key order.

    Routing plans from its own view of stock levels, which lags behind inventory's, so it may backorder a line while
    a source already holds available units for it (a receipt routing has not heard of yet, a reservation given back
    a moment ago). No increase of stock is coming to serve such a line: each of these sources therefore walks the
    SKU's queue from its front, exactly as if the units had just arrived (`release_backorders`, `increased`). So
    older lines the source may serve still come first, a line the source may not serve is passed over, and claims
    and the groups of orders that ship complete keep their rules."""
    return sorted(key for key, row in stock.items() if key[0] in skus and row.available > 0)


def queue_positions(lines: Iterable[Backorder]) -> dict[int, int]:
    """Each waiting line's place in its SKU's queue, 1 for the first to be served, by arrival.

    Correct for a line when every older waiting line of its SKU is among `lines`."""
    positions: dict[int, int] = {}
    seen: dict[str, int] = {}
    for line in sorted(lines, key=lambda line: line.arrival):
        if line.state is BackorderState.waiting:
            seen[line.sku] = seen.get(line.sku, 0) + 1
            positions[line.arrival] = seen[line.sku]
    return positions


def expected_dates(
    lines: Iterable[Backorder], expected: Iterable[ExpectedReceipt], sources: Mapping[str, SourceState]
) -> dict[int, date]:
    """When announced receipts should serve each waiting line: the date of the announced receipt that, handed out
    the way a receipt is (earliest expected first; each to the oldest lines its source may serve, a line that
    gathers its units at an anchor only from there), completes what the line still misses. A line that no
    announcement completes has no date. A line of an order that ships complete takes the latest date of its order's
    lines that still miss units, and none if one of them has none (as far as `lines` show them).

    Correct for a line when every older waiting line of its SKU is among `lines`."""
    waiting = sorted((line for line in lines if line.state is BackorderState.waiting), key=lambda x: x.arrival)
    missing = {line.arrival: line.missing for line in waiting}
    # Where each order that ships complete gathers: a line that joined it later may not say so yet.
    anchors: dict[uuid.UUID, str] = {}
    for line in waiting:
        if line.whole and line.anchor is not None:
            anchors.setdefault(line.order_id, line.anchor)
    dates: dict[int, date] = {}
    announced = sorted(
        (e for e in expected if e.outstanding > 0), key=lambda e: (e.expected_date, e.id if e.id is not None else 0)
    )
    for receipt in announced:
        source = sources.get(receipt.source_code)
        if source is None:
            continue
        units = receipt.outstanding
        for line in waiting:
            if units == 0:
                break
            if line.sku != receipt.sku or missing[line.arrival] == 0 or not source.serves(line.terms):
                continue
            if line.whole and anchors.get(line.order_id) not in (None, receipt.source_code):
                continue
            used = min(units, missing[line.arrival])
            missing[line.arrival] -= used
            units -= used
            if missing[line.arrival] == 0:
                dates[line.arrival] = receipt.expected_date
    groups: dict[uuid.UUID, list[Backorder]] = {}
    for line in waiting:
        if line.whole:
            groups.setdefault(line.order_id, []).append(line)
    for members in groups.values():
        needing = [m for m in members if m.missing > 0]
        known = [dates.get(m.arrival) for m in needing]
        latest = None if None in known or not known else max(d for d in known if d is not None)
        for member in members:
            if latest is None:
                dates.pop(member.arrival, None)
            else:
                dates[member.arrival] = latest
    return dates
