"""The order: its lifecycle, its lines counted in units, its fulfillments with their parcels, and the audit trail.

Pure: no I/O. Handlers load orders, call one method per message, save what changed and translate what the order
recorded (`Order.events`) into contracts. Three tables guard every change, each through one method that refuses
anything else:
- `TRANSITIONS`, the order's status (`Order.transition`, which also records the audit row);
- `UNIT_MOVES`, where a line's units may go (`Order._move`): a line of 5 may have 2 units in one fulfillment, 3
  backordered; its summary `state` is the least advanced state any of its non-cancelled units is in;
- `FULFILLMENT_TRANSITIONS`, a fulfillment's status (`Fulfillment.move`). A fulfillment may leave in several parcels;
  it stays `requested`/`accepted` while some of its units are still to ship, and is `shipped` once all are.

The order's status follows its units (`Order._follow_units`): `awaiting_fulfillment` once a shipment is requested or
every unit waits in a backorder queue; `partially_fulfilled` while some units shipped and others remain;
`fulfilled` when every unit that is not cancelled shipped; `delivered` when every shipped unit is delivered and
nothing is left to ship.

Routing's plans (`oms.routing.plans.v1`) and inventory's answers (`oms.inventory.allocations.v1`) travel on different
topics and overtake each other; the order ends in the same state whichever comes first. Inventory's answers about
one order keep their order (one partition): the reservation of each planned shipment, then `backorder_queued`, then
any `backorder_allocated` of those units. Each tolerance this needs says, where it is made, why it is safe.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from oms_contracts.order import OrderStatus

S = OrderStatus

# The reference state machine (DESIGN.md "Order lifecycle"): status -> statuses it may move to.
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.pending: frozenset({S.payment_processing, S.cancelled}),
    S.payment_processing: frozenset({S.paid, S.cancelled}),
    S.paid: frozenset({S.awaiting_fulfillment, S.cancelled}),
    S.awaiting_fulfillment: frozenset({S.partially_fulfilled, S.fulfilled, S.cancelled}),
    S.partially_fulfilled: frozenset({S.fulfilled}),
    S.fulfilled: frozenset({S.delivered, S.refunded}),
    S.delivered: frozenset({S.refunded}),
    S.cancelled: frozenset(),
    S.refunded: frozenset(),
}

UNPAID = frozenset({S.pending, S.payment_processing})
# Statuses in which plans, reservations and allocations may still add or change fulfillments.
TAKES_FULFILLMENT = frozenset({S.paid, S.awaiting_fulfillment, S.partially_fulfilled})
# The statuses an order's units decide, in the order they are reached; `_follow_units` only ever moves forward.
FOLLOWS_UNITS = (S.paid, S.awaiting_fulfillment, S.partially_fulfilled, S.fulfilled, S.delivered)


class LineState(StrEnum):
    """Where a unit of a line is. Declared from the least to the most advanced: a line's summary state is the first
    of these that holds one of its units (cancelled units aside)."""

    open = "open"  # placed nowhere: not planned yet, or its shipment was rejected and routing re-plans it
    backordered = "backordered"  # waiting in its SKU's queue at inventory
    reserved = "reserved"  # in a fulfillment routing planned; inventory is reserving it
    requested = "requested"  # reserved, and requested from its source; not shipped yet
    shipped = "shipped"
    delivered = "delivered"
    returned = "returned"
    cancelled = "cancelled"


L = LineState
ADVANCEMENT = tuple(LineState)

# Where a line's units may move. The edges into `cancelled` and `returned` belong to cancellations and returns
# (issue 8); the table already says which units those may touch: nothing shipped is cancelled, only shipped or
# delivered units are returned.
UNIT_MOVES: dict[LineState, frozenset[LineState]] = {
    L.open: frozenset({L.backordered, L.reserved, L.requested, L.cancelled}),
    L.backordered: frozenset({L.requested, L.cancelled}),
    L.reserved: frozenset({L.requested, L.open, L.cancelled}),
    L.requested: frozenset({L.shipped, L.open, L.cancelled}),
    L.shipped: frozenset({L.delivered, L.returned}),
    L.delivered: frozenset({L.returned}),
    L.returned: frozenset(),
    L.cancelled: frozenset(),
}

TO_SHIP = frozenset({L.open, L.backordered, L.reserved, L.requested})
HAS_SHIPPED = frozenset({L.shipped, L.delivered, L.returned})


class FulfillmentStatus(StrEnum):
    planned = "planned"  # routing chose the source; inventory has not reserved yet
    requested = "requested"  # reserved, and the request is on the source's topic
    accepted = "accepted"
    rejected = "rejected"  # by inventory (short) or by the source; routing re-plans the lines
    shipped = "shipped"  # every unit left, in one parcel or several
    delivered = "delivered"  # every parcel delivered


F = FulfillmentStatus

FULFILLMENT_TRANSITIONS: dict[FulfillmentStatus, frozenset[FulfillmentStatus]] = {
    F.planned: frozenset({F.requested, F.rejected}),
    F.requested: frozenset({F.accepted, F.shipped, F.rejected}),
    F.accepted: frozenset({F.shipped, F.rejected}),
    F.shipped: frozenset({F.delivered}),
    F.delivered: frozenset(),
    F.rejected: frozenset(),
}

# A source may ship (part of) a fulfillment in these; a partly shipped fulfillment stays in them.
SHIPPABLE = frozenset({F.requested, F.accepted})
# Fulfillments that hold units of their lines (a rejected one gave them back).
LIVE = frozenset({F.planned, F.requested, F.accepted, F.shipped, F.delivered})

# parcel_id = UUIDv5(PARCELS, "{fulfillment_id}:{tracking_number}"): the same parcel reported twice is one parcel.
PARCELS = uuid.UUID("a5d0e0c2-7a43-4f57-8d0c-3f5b9e2c61d4")


class OrderRefusal(Exception):
    """A message asks for something this order cannot do; nothing changes."""


class InvalidTransition(OrderRefusal):
    def __init__(self, order_id: uuid.UUID, from_status: OrderStatus, to_status: OrderStatus) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[from_status])) or "nothing (final status)"
        super().__init__(
            f"order {order_id}: invalid transition {from_status} -> {to_status}; from {from_status} only: {allowed}"
        )


class InvalidFulfillmentTransition(OrderRefusal):
    def __init__(self, fulfillment_id: uuid.UUID, from_status: FulfillmentStatus, to: FulfillmentStatus) -> None:
        allowed = ", ".join(sorted(FULFILLMENT_TRANSITIONS[from_status])) or "nothing (final status)"
        super().__init__(
            f"fulfillment {fulfillment_id} is {from_status}; it cannot become {to} (from {from_status} only: {allowed})"
        )


@dataclass(frozen=True, slots=True)
class Cause:
    """Who or what asked for a change: the audit row's actor, and the event behind it."""

    actor: str
    at: datetime
    event_id: uuid.UUID | None = None
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    order_id: uuid.UUID
    from_status: OrderStatus | None
    to_status: OrderStatus
    actor: str
    note: str | None
    at: datetime
    cause_event_id: uuid.UUID | None
    trace_id: str | None


@dataclass(frozen=True, slots=True)
class BackorderCount:
    """How many units of a line were backordered, as each of the two messages that say so counted them, and how
    many entered the backorder here.

    Routing's plan says which units of a line wait (`backordered_lines`); inventory's `backorder_queued` says which
    units joined its queue. Either may arrive first, and between the two other messages may reopen units of the
    same line (a rejected shipment of the plan: its units become open for the re-plan) or take units out of the
    backorder (an allocation). So neither may simply move "n units, as far as there are open ones": whichever came
    second would backorder the reopened units a second time. Each adds to its own total instead (`planned`,
    `announced`); both describe the same units, so what should have entered the backorder is the larger of the two,
    and what moves is what that says minus what already `entered` (`due`). Whichever message comes second finds its
    units there and moves nothing.

    Inventory announces exactly the lines a plan backordered, with the plan's quantities, and only once per waiting
    line; so once every plan is in, `announced <= planned`, and the announcements alone never move more than routing
    planned to wait."""

    planned: int = 0
    announced: int = 0
    entered: int = 0

    @property
    def due(self) -> int:
        """Units said to be backordered that have not entered the backorder here yet (never below 0)."""
        return max(max(self.planned, self.announced) - self.entered, 0)


@dataclass(slots=True)
class Line:
    line_id: str
    sku: str
    quantity: int
    unit_price: Decimal
    # Units by state; they always add up to `quantity` (a check constraint says so in the database too).
    units: dict[LineState, int] = field(default_factory=dict)
    backorder: BackorderCount = field(default_factory=BackorderCount)

    def __post_init__(self) -> None:
        if not self.units:
            self.units = {state: 0 for state in LineState}
            self.units[L.open] = self.quantity

    @property
    def state(self) -> LineState:
        """The least advanced state any unit that is not cancelled is in; `cancelled` when every unit is."""
        return next((s for s in ADVANCEMENT if s is not L.cancelled and self.units[s]), L.cancelled)

    @property
    def to_ship(self) -> int:
        return sum(self.units[s] for s in TO_SHIP)

    @property
    def has_shipped(self) -> int:
        return sum(self.units[s] for s in HAS_SHIPPED)


@dataclass(frozen=True, slots=True)
class ShipmentLine:
    line_id: str
    sku: str
    quantity: int


@dataclass(slots=True)
class Parcel:
    """What left a source in one box, with its carrier and tracking; part of a fulfillment or all of it."""

    parcel_id: uuid.UUID
    fulfillment_id: uuid.UUID
    carrier: str
    service: str | None
    tracking_number: str
    tracking_url: str | None
    shipped_at: datetime
    lines: tuple[ShipmentLine, ...]
    delivered_at: datetime | None = None

    def same_contents(self, quantities: dict[str, int]) -> bool:
        return {x.line_id: x.quantity for x in self.lines} == quantities


@dataclass(slots=True)
class Fulfillment:
    fulfillment_id: uuid.UUID
    order_id: uuid.UUID
    source_code: str
    lines: tuple[ShipmentLine, ...]
    status: FulfillmentStatus
    plan_id: uuid.UUID | None = None
    ship_by: date | None = None
    estimated_delivery: date | None = None
    reason: str | None = None
    requested_at: datetime | None = None
    shipped_at: datetime | None = None  # when its last unit left
    delivered_at: datetime | None = None  # when its last parcel arrived
    rejection: str | None = None
    parcels: list[Parcel] = field(default_factory=list)

    def move(self, to: FulfillmentStatus) -> None:
        """The one guard of a fulfillment's status."""
        if to not in FULFILLMENT_TRANSITIONS[self.status]:
            raise InvalidFulfillmentTransition(self.fulfillment_id, self.status, to)
        self.status = to

    def shipped(self, line_id: str) -> int:
        return sum(x.quantity for p in self.parcels for x in p.lines if x.line_id == line_id)

    def still_to_ship(self, line_id: str) -> int:
        return sum(x.quantity for x in self.lines if x.line_id == line_id) - self.shipped(line_id)

    def parcel(self, tracking_number: str) -> Parcel | None:
        return next((p for p in self.parcels if p.tracking_number == tracking_number), None)


# -- what an order records for the handler to announce ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Paid:
    """The order was paid: routing may plan it."""


@dataclass(frozen=True, slots=True)
class FulfillmentRequested:
    """A reserved shipment is to be requested from its source."""

    fulfillment: Fulfillment


@dataclass(frozen=True, slots=True)
class ParcelShipped:
    fulfillment: Fulfillment
    parcel: Parcel
    to_come: tuple[ShipmentLine, ...]  # every unit of the order neither shipped nor cancelled
    status: OrderStatus


@dataclass(frozen=True, slots=True)
class FulfillmentDelivered:
    fulfillment: Fulfillment
    parcels: tuple[Parcel, ...]  # the parcels this delivery covered
    status: OrderStatus

    @property
    def lines(self) -> list[ShipmentLine]:
        return _merged(x for p in self.parcels for x in p.lines)


Event = Paid | FulfillmentRequested | ParcelShipped | FulfillmentDelivered


@dataclass(frozen=True, slots=True)
class PlannedShipment:
    shipment_id: uuid.UUID
    source_code: str
    lines: list[ShipmentLine]
    ship_by: date
    estimated_delivery: date
    reason: str


@dataclass(frozen=True, slots=True)
class Reservation:
    """Inventory's answer for one planned shipment, with what is needed to act on it without the plan."""

    fulfillment_id: uuid.UUID
    source_code: str
    lines: list[ShipmentLine]
    plan_id: uuid.UUID
    ship_by: date | None = None


@dataclass(frozen=True, slots=True)
class Allocation:
    """Stock that arrived went to backordered units: a new shipment, already reserved at `source_code`."""

    fulfillment_id: uuid.UUID
    source_code: str
    lines: list[ShipmentLine]
    ship_by: date | None = None


@dataclass(frozen=True, slots=True)
class Shipment:
    """A source's report of one parcel: its carrier, tracking, and how many units of which lines are in it."""

    carrier: str
    service: str | None
    tracking_number: str
    tracking_url: str | None
    shipped_at: datetime
    lines: dict[str, int] | None = None  # line_id -> units; None: everything still to ship in the fulfillment


@dataclass(slots=True)
class Order:
    order_id: uuid.UUID
    channel: str
    external_order_id: str
    status: OrderStatus
    currency: str
    placed_at: datetime
    customer: dict[str, Any]
    shipping_address: dict[str, Any]
    shipping_method: str
    pickup_source: str | None
    options: dict[str, Any]
    lines: dict[str, Line]
    shipping_total: Decimal
    tax_total: Decimal
    discount_total: Decimal
    grand_total: Decimal
    traceparent: str | None = None
    paid_amount: Decimal | None = None
    payment_ref: str | None = None
    fulfillments: dict[uuid.UUID, Fulfillment] = field(default_factory=dict)
    # What changed since load, for the store to save and the handler to announce.
    transitions: list[Transition] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    changed_fulfillments: set[uuid.UUID] = field(default_factory=set)
    changed: bool = False
    new: bool = False

    @property
    def subtotal(self) -> Decimal:
        return sum((line.unit_price * line.quantity for line in self.lines.values()), Decimal(0))

    def transition(self, to: OrderStatus, cause: Cause, note: str | None = None) -> Transition:
        """Move to `to` if the state machine allows it; the returned transition is the audit row."""
        if to not in TRANSITIONS[self.status]:
            raise InvalidTransition(self.order_id, self.status, to)
        done = Transition(self.order_id, self.status, to, cause.actor, note, cause.at, cause.event_id, cause.trace_id)
        self.status = to
        self.transitions.append(done)
        self.changed = True
        return done

    def units(self) -> Counter[LineState]:
        """Units of the whole order by state."""
        total: Counter[LineState] = Counter()
        for line in self.lines.values():
            total.update(line.units)
        return total

    def to_come(self) -> tuple[ShipmentLine, ...]:
        """Every unit neither shipped nor cancelled, by line."""
        return tuple(ShipmentLine(x.line_id, x.sku, x.to_ship) for x in self.lines.values() if x.to_ship)

    # -- payments -----------------------------------------------------------------------------------------------

    def authorize_payment(self, amount: Decimal, currency: str, cause: Cause) -> None:
        """An authorization starts payment processing; once past `pending` it changes nothing."""
        self._check_amount(amount, currency, "authorized")
        if self.status is S.pending:
            self.transition(S.payment_processing, cause, f"payment of {amount} {currency} authorized")
        elif self.status is S.cancelled:
            raise OrderRefusal(f"order {self.order_id} is cancelled; void the authorization of {amount} {currency}")

    def capture_payment(self, amount: Decimal, currency: str, payment_ref: str, cause: Cause) -> None:
        """A capture of the full total makes the order paid (and records `Paid`); a repeated capture of an already
        paid order changes nothing."""
        self._check_amount(amount, currency, "captured")
        if self.status is S.cancelled:
            raise OrderRefusal(f"order {self.order_id} is cancelled; refund the capture {payment_ref}")
        if self.status not in UNPAID:
            return
        if self.status is S.pending:
            self.transition(S.payment_processing, cause, f"payment {payment_ref} captured")
        self.transition(S.paid, cause, f"{amount} {currency} captured ({payment_ref})")
        self.paid_amount, self.payment_ref = amount, payment_ref
        self.events.append(Paid())

    def fail_payment(self, reason: str, cause: Cause) -> None:
        if self.status not in UNPAID:
            raise OrderRefusal(f"order {self.order_id} is {self.status}; a payment failure cannot cancel it now")
        self.transition(S.cancelled, cause, f"payment failed: {reason}")
        self._cancel_open_units()

    def cancel_before_payment(self, reason: str, cause: Cause) -> None:
        """A whole-order cancellation while no money is captured and nothing is reserved."""
        if self.status not in UNPAID:
            raise OrderRefusal(
                f"order {self.order_id} is {self.status}: cancelling after payment needs the refund flow, "
                "which this version does not have yet"
            )
        self.transition(S.cancelled, cause, f"cancelled: {reason}")
        self._cancel_open_units()

    def _cancel_open_units(self) -> None:
        # Before payment nothing is planned, so every unit is open.
        self._move([(line, line.units[L.open], L.open, L.cancelled) for line in self.lines.values()])

    def _check_amount(self, amount: Decimal, currency: str, what: str) -> None:
        if currency != self.currency or amount != self.grand_total:
            raise OrderRefusal(
                f"order {self.order_id}: {what} {amount} {currency} does not match the order total "
                f"{self.grand_total} {self.currency}"
            )

    # -- plans, reservations, allocations -----------------------------------------------------------------------

    def apply_plan(
        self,
        plan_id: uuid.UUID,
        shipments: list[PlannedShipment],
        backordered: list[ShipmentLine],
        unfulfillable: list[ShipmentLine],
        cause: Cause,
        attempt: int = 1,
    ) -> None:
        """Record routing's plan: a planned fulfillment per shipment, backordered units into the queue's care,
        unfulfillable units cancelled. Refused: a line the order does not have (or of another SKU), shipments
        placing more units than are open.

        Plans and inventory's answers travel on different topics, so either may be applied first:
        - a shipment inventory already reserved keeps its status and gains the plan's dates and reason;
        - backordered units that inventory's `backorder_queued` or an allocation already put in (or took out of) the
          backorder are not backordered again (`BackorderCount`); only units still open move;
        - unfulfillable units are cancelled only as far as they are still open. Safe: no other message places units
          routing could not place, so units of such a line that are not open were placed by this same plan's other
          parts (or wait for the rejection a re-plan answers, below), and cancelling them would cancel units that
          are on their way;
        - a re-plan (attempt > 1) may arrive before the rejection that caused it. Routing re-plans exactly the lines
          of the shipment that was rejected, so the one live fulfillment of an earlier plan holding exactly those
          lines, with nothing shipped, is that shipment: it is rejected now ("superseded"), and its late rejection
          changes nothing."""
        self._takes_fulfillment()
        new = [s for s in shipments if s.shipment_id not in self.fulfillments]
        for shipment in shipments:
            self._known_lines(shipment.lines)
        self._known_lines([*backordered, *unfulfillable])
        counts = self._counted(backordered, "planned")
        placed = [x for s in new for x in s.lines]
        superseded = self._superseded(plan_id, attempt, placed, backordered, unfulfillable, counts)
        moves: list[Move] = []
        if superseded is not None:
            held = L.reserved if superseded.status is F.planned else L.requested
            moves += [(self.lines[x.line_id], x.quantity, held, L.open) for x in superseded.lines]
        # Open units as they will be once the superseded shipment gave its units back.
        open_left = {x.line_id: x.units[L.open] for x in self.lines.values()}
        for line, n, _, _ in moves:
            open_left[line.line_id] += n
        for x in placed:
            moves.append((self.lines[x.line_id], x.quantity, L.open, L.reserved))
            open_left[x.line_id] -= x.quantity
        moves += self._enter_backorder(counts, open_left)
        for x in unfulfillable:
            n = max(0, min(x.quantity, open_left[x.line_id]))
            moves.append((self.lines[x.line_id], n, L.open, L.cancelled))
            open_left[x.line_id] -= n
        self._move(moves)
        self._count(counts)
        if superseded is not None:
            superseded.move(F.rejected)
            superseded.rejection = f"superseded by plan {plan_id} (attempt {attempt}); its rejection is on its way"
            self.changed_fulfillments.add(superseded.fulfillment_id)
        for shipment in new:
            self._add_fulfillment(shipment.shipment_id, shipment.source_code, shipment.lines, plan_id, F.planned)
        for shipment in shipments:
            known = self.fulfillments[shipment.shipment_id]
            known.ship_by = known.ship_by or shipment.ship_by
            known.estimated_delivery, known.reason = shipment.estimated_delivery, shipment.reason
            self.changed_fulfillments.add(shipment.shipment_id)
        self.changed = True
        units = self.units()
        if units[L.cancelled] == units.total() and S.cancelled in TRANSITIONS[self.status]:
            self.transition(S.cancelled, cause, "no source can fulfil any line")
            return
        self._follow_units(cause, "every line backordered until stock arrives")

    def _superseded(
        self,
        plan_id: uuid.UUID,
        attempt: int,
        placed: list[ShipmentLine],
        backordered: list[ShipmentLine],
        unfulfillable: list[ShipmentLine],
        counts: dict[str, BackorderCount],
    ) -> Fulfillment | None:
        """The shipment a re-plan replaces, when its rejection has not arrived yet (see `apply_plan`)."""
        if attempt < 2:
            return None
        # What the re-plan must take from open units: its new shipments, the backordered units inventory has not
        # already put in the backorder (its backorder_queued may have come first), its unfulfillable units.
        needs = Counter({line_id: count.due for line_id, count in counts.items()})
        for x in (*placed, *unfulfillable):
            needs[x.line_id] += x.quantity
        if all(n <= self.lines[line_id].units[L.open] for line_id, n in needs.items()):
            return None
        replanned = sorted((x.line_id, x.quantity) for x in _merged([*placed, *backordered, *unfulfillable]))
        candidates = [
            f
            for f in self.fulfillments.values()
            if f.status in (F.planned, *SHIPPABLE)
            and not f.parcels
            and f.plan_id != plan_id
            and sorted((x.line_id, x.quantity) for x in _merged(f.lines)) == replanned
        ]
        return candidates[0] if len(candidates) == 1 else None

    def queue_backorder(self, items: list[ShipmentLine], cause: Cause) -> None:
        """Inventory says these units joined their SKUs' queues (`backorder_queued`): make sure they are backordered.

        It repeats what the plan said when the plan came first (then nothing moves, see `BackorderCount`); when it
        overtook the plan, it backorders the units now, from units still open, so that the allocation that may follow
        it on the same partition finds them backordered and the order awaits fulfillment as soon as every unit
        waits. Refused: a line the order does not have, or of another SKU (inventory and the order disagree about
        the order; an operator looks)."""
        self._known_lines(items)
        counts = self._counted(items, "announced")
        open_left = {x.line_id: x.units[L.open] for x in self.lines.values()}
        moves = self._enter_backorder(counts, open_left)
        if any(n for _, n, _, _ in moves):
            # Units only move while the order takes fulfillment; a late announcement with nothing to move is fine.
            self._takes_fulfillment()
        self._move(moves)
        self._count(counts)
        self._follow_units(cause, "every line backordered until stock arrives")

    def _counted(self, items: list[ShipmentLine], said_by: str) -> dict[str, BackorderCount]:
        """Each named line's backorder count with these units added to the total of `said_by`."""
        counts: dict[str, BackorderCount] = {}
        for x in items:
            count = counts.get(x.line_id, self.lines[x.line_id].backorder)
            counts[x.line_id] = replace(count, **{said_by: getattr(count, said_by) + x.quantity})
        return counts

    def _enter_backorder(self, counts: dict[str, BackorderCount], open_left: dict[str, int]) -> list[Move]:
        """Moves of what is due into the backorder, from open units only; `counts` and `open_left` are updated.

        Units due that are not open (still held by a shipment whose rejection is on its way) stay due: the plan
        that replaces that shipment moves them, and an allocation of them takes them from open units (see
        `allocate_backorder`)."""
        moves: list[Move] = []
        for line_id, count in counts.items():
            n = max(0, min(count.due, open_left[line_id]))
            moves.append((self.lines[line_id], n, L.open, L.backordered))
            open_left[line_id] -= n
            counts[line_id] = replace(count, entered=count.entered + n)
        return moves

    def _count(self, counts: dict[str, BackorderCount]) -> None:
        for line_id, count in counts.items():
            self.lines[line_id].backorder = count
        self.changed = True

    def request_fulfillment(self, reservation: Reservation, cause: Cause) -> None:
        """Inventory reserved a planned shipment: it becomes a request to its source (`FulfillmentRequested`). A
        repeated reservation changes nothing.

        The reservation may overtake the plan (another topic); it carries what the request needs."""
        fulfillment = self.fulfillments.get(reservation.fulfillment_id)
        if fulfillment is None:
            self._takes_fulfillment()
            lines = self._known_lines(reservation.lines)
            self._move(
                [(line, x.quantity, L.open, L.requested) for line, x in zip(lines, reservation.lines, strict=True)]
            )
            fulfillment = self._add_fulfillment(
                reservation.fulfillment_id, reservation.source_code, reservation.lines, reservation.plan_id, F.planned
            )
        elif fulfillment.status is F.planned:
            self._move([(self.lines[x.line_id], x.quantity, L.reserved, L.requested) for x in fulfillment.lines])
        else:
            return
        fulfillment.ship_by = fulfillment.ship_by or reservation.ship_by
        self._request(fulfillment, cause)

    def allocate_backorder(self, allocation: Allocation, cause: Cause) -> None:
        """Stock that arrived was reserved for backordered units: a new fulfillment, requested at once. A repeated
        allocation (same shipment) changes nothing.

        Refused when it names a line the order does not have, a cancelled or already shipped line, or more units than
        wait. Units come out of the backorder first. Inventory announces units queued (`backorder_queued`) before it
        allocates them, on the same partition, so they are normally backordered by then; units still open count as
        waiting too, and are counted as having entered the backorder (`BackorderCount`), because the allocation can
        still come first: inventory's outbox relay publishes a row committed out of id order at its next sweep, so
        an allocation committed by a later transaction may be published before the announcement of an earlier one;
        and units the plan could not backorder (held by a shipment whose rejection came after the plan) wait open.
        Safe: inventory allocates only units it queued for this line, so the announcement or plan that follows
        finds them entered and moves nothing more."""
        if allocation.fulfillment_id in self.fulfillments:
            return
        self._takes_fulfillment()
        self._known_lines(allocation.lines)
        wanted = _merged(allocation.lines)
        moves: list[Move] = []
        for item in wanted:
            line = self.lines[item.line_id]
            waiting = line.units[L.backordered] + line.units[L.open]
            if line.state is L.cancelled:
                raise OrderRefusal(f"order {self.order_id}: line {line.line_id} is cancelled; nothing may be allocated")
            if line.to_ship == 0:
                raise OrderRefusal(f"order {self.order_id}: line {line.line_id} already shipped; nothing waits")
            if item.quantity > waiting:
                raise OrderRefusal(
                    f"order {self.order_id}: allocation of {item.quantity} units of line {line.line_id} "
                    f"({line.sku}), but only {line.units[L.backordered]} are backordered"
                    + (f" and {line.units[L.open]} not placed yet" if line.units[L.open] else "")
                )
            from_queue = min(item.quantity, line.units[L.backordered])
            moves += [
                (line, from_queue, L.backordered, L.requested),
                (line, item.quantity - from_queue, L.open, L.requested),
            ]
        self._move(moves)
        for line, n, from_state, _ in moves:
            if from_state is L.open and n:
                line.backorder = replace(line.backorder, entered=line.backorder.entered + n)
        fulfillment = self._add_fulfillment(
            allocation.fulfillment_id, allocation.source_code, allocation.lines, None, F.requested
        )
        # A source needs a date to ship by; without one from inventory, the day the stock was allocated.
        fulfillment.ship_by = allocation.ship_by or cause.at.date()
        fulfillment.requested_at = cause.at
        self.events.append(FulfillmentRequested(fulfillment))
        self._follow_units(cause, f"fulfillment {fulfillment.fulfillment_id} requested from {fulfillment.source_code}")

    def reject_reservation(self, reservation: Reservation, reason: str, cause: Cause) -> None:
        """Inventory could not reserve a shipment (possibly before the plan arrived): routing re-plans its lines."""
        if reservation.fulfillment_id not in self.fulfillments:
            self._takes_fulfillment()
            self._known_lines(reservation.lines)
            # Never placed here, so its units stay where they are (open): a fulfillment that holds none.
            fulfillment = self._add_fulfillment(
                reservation.fulfillment_id, reservation.source_code, reservation.lines, reservation.plan_id, F.planned
            )
            fulfillment.move(F.rejected)
            fulfillment.rejection = reason
            return
        self.reject_fulfillment(reservation.fulfillment_id, reservation.source_code, reason, cause)

    # -- what sources report ------------------------------------------------------------------------------------

    def accept_fulfillment(self, fulfillment_id: uuid.UUID, source_code: str) -> None:
        """The source will ship. Stale acceptances (after a parcel or a rejection) change nothing."""
        fulfillment = self._fulfillment(fulfillment_id, source_code)
        if fulfillment.status is F.requested:
            fulfillment.move(F.accepted)
            self.changed_fulfillments.add(fulfillment_id)
            self.changed = True

    def reject_fulfillment(self, fulfillment_id: uuid.UUID, source_code: str, reason: str, cause: Cause) -> None:
        """Inventory could not reserve, or the source refused: the units are open again for routing's re-plan."""
        fulfillment = self._fulfillment(fulfillment_id, source_code)
        if fulfillment.status is F.rejected:
            return
        if fulfillment.parcels:
            raise OrderRefusal(
                f"fulfillment {fulfillment_id} has shipped {len(fulfillment.parcels)} parcel(s); what is left of it is "
                "cancelled by the source (fulfillment.cancelled), not rejected"
            )
        held = L.reserved if fulfillment.status is F.planned else L.requested
        fulfillment.move(F.rejected)
        self._move([(self.lines[x.line_id], x.quantity, held, L.open) for x in fulfillment.lines])
        fulfillment.rejection = reason
        self.changed_fulfillments.add(fulfillment_id)
        self.changed = True

    def ship_parcel(self, fulfillment_id: uuid.UUID, source_code: str, shipment: Shipment, cause: Cause) -> None:
        """A parcel left the source: part of the fulfillment or all that is left of it (`ParcelShipped`).

        The same parcel reported again (same tracking number, same lines, even under a new event id) is the parcel
        already recorded and changes nothing. Refused: an unknown fulfillment or line, a fulfillment that is not
        requested or accepted, more units than are still to ship, a known tracking number with other lines."""
        fulfillment = self._fulfillment(fulfillment_id, source_code)
        quantities = shipment.lines
        if quantities is None:
            quantities = {x.line_id: fulfillment.still_to_ship(x.line_id) for x in fulfillment.lines}
            quantities = {line_id: n for line_id, n in quantities.items() if n}
        known = fulfillment.parcel(shipment.tracking_number)
        if known is not None:
            if known.same_contents(quantities):
                return
            raise OrderRefusal(
                f"fulfillment {fulfillment_id}: parcel {shipment.tracking_number} was recorded with "
                f"{_describe(known.lines)}; it cannot now hold {quantities}"
            )
        if fulfillment.status not in SHIPPABLE:
            raise OrderRefusal(f"fulfillment {fulfillment_id} is {fulfillment.status}; nothing of it can ship")
        if not quantities:
            raise OrderRefusal(f"fulfillment {fulfillment_id}: a parcel with no units")
        in_fulfillment = {x.line_id: x for x in fulfillment.lines}
        for line_id, n in quantities.items():
            if line_id not in in_fulfillment:
                raise OrderRefusal(f"fulfillment {fulfillment_id} has no line {line_id}")
            left = fulfillment.still_to_ship(line_id)
            if n > left:
                raise OrderRefusal(
                    f"fulfillment {fulfillment_id}: parcel {shipment.tracking_number} ships {n} units of line "
                    f"{line_id}, but only {left} of it are still to ship"
                )
        self._move([(self.lines[line_id], n, L.requested, L.shipped) for line_id, n in quantities.items()])
        parcel = Parcel(
            parcel_id=uuid.uuid5(PARCELS, f"{fulfillment_id}:{shipment.tracking_number}"),
            fulfillment_id=fulfillment_id,
            carrier=shipment.carrier,
            service=shipment.service,
            tracking_number=shipment.tracking_number,
            tracking_url=shipment.tracking_url,
            shipped_at=shipment.shipped_at,
            lines=tuple(ShipmentLine(line_id, in_fulfillment[line_id].sku, n) for line_id, n in quantities.items()),
        )
        fulfillment.parcels.append(parcel)
        if all(fulfillment.still_to_ship(x.line_id) == 0 for x in fulfillment.lines):
            fulfillment.move(F.shipped)
            fulfillment.shipped_at = shipment.shipped_at
        self.changed_fulfillments.add(fulfillment_id)
        self.changed = True
        self._follow_units(
            cause, f"{source_code} shipped {_describe(parcel.lines)} ({shipment.carrier} {shipment.tracking_number})"
        )
        self.events.append(ParcelShipped(fulfillment, parcel, self.to_come(), self.status))

    def deliver_fulfillment(
        self, fulfillment_id: uuid.UUID, source_code: str, delivered_at: datetime, cause: Cause
    ) -> None:
        """Every parcel of the fulfillment that has shipped is delivered (`FulfillmentDelivered`); the fulfillment is
        delivered once nothing of it is left to ship. Refused when nothing of it has shipped; repeated, it changes
        nothing."""
        fulfillment = self._fulfillment(fulfillment_id, source_code)
        if not fulfillment.parcels:
            raise OrderRefusal(f"fulfillment {fulfillment_id} is {fulfillment.status}; nothing of it has shipped")
        arrived = tuple(p for p in fulfillment.parcels if p.delivered_at is None)
        if not arrived:
            return
        self._move([(self.lines[x.line_id], x.quantity, L.shipped, L.delivered) for p in arrived for x in p.lines])
        for parcel in arrived:
            parcel.delivered_at = delivered_at
        if fulfillment.status is F.shipped:
            fulfillment.move(F.delivered)
            fulfillment.delivered_at = delivered_at
        self.changed_fulfillments.add(fulfillment_id)
        self.changed = True
        self._follow_units(cause, "every shipped unit delivered")
        self.events.append(FulfillmentDelivered(fulfillment, arrived, self.status))

    # -- the rules every change goes through --------------------------------------------------------------------

    def _move(self, moves: list[Move]) -> None:
        """The one guard of line units: every move along `UNIT_MOVES`, in order, from units that are there. All
        moves are made on a copy first, so a refusal changes nothing."""
        after = {line.line_id: dict(line.units) for line, *_ in moves}
        for line, quantity, from_state, to_state in moves:
            if quantity < 0 or to_state not in UNIT_MOVES[from_state]:
                raise OrderRefusal(
                    f"order {self.order_id}: units of line {line.line_id} cannot move from {from_state} to {to_state}"
                )
            units = after[line.line_id]
            if quantity > units[from_state]:
                raise OrderRefusal(
                    f"order {self.order_id}: {quantity} units of line {line.line_id} should leave {from_state}, "
                    f"but {units[from_state]} are {from_state}"
                )
            units[from_state] -= quantity
            units[to_state] += quantity
        for line, *_ in moves:
            line.units = after[line.line_id]
        self.changed = True

    def _follow_units(self, cause: Cause, note: str) -> None:
        """Move the status forward to what the units say (never back), along edges of the state machine."""
        if self.status not in FOLLOWS_UNITS:
            return
        units = self.units()
        live = sum(units.values()) - units[L.cancelled]
        to_ship = sum(units[s] for s in TO_SHIP)
        has_shipped = sum(units[s] for s in HAS_SHIPPED)
        if live == 0:
            return
        if has_shipped and not to_ship:
            target = S.fulfilled if units[L.shipped] else S.delivered
        elif has_shipped:
            target = S.partially_fulfilled
        elif units[L.requested] or units[L.backordered] == live:
            target = S.awaiting_fulfillment
        else:
            return
        while FOLLOWS_UNITS.index(self.status) < FOLLOWS_UNITS.index(target):
            reachable = [s for s in FOLLOWS_UNITS if s in TRANSITIONS[self.status]]
            step = max(
                (s for s in reachable if FOLLOWS_UNITS.index(s) <= FOLLOWS_UNITS.index(target)), key=FOLLOWS_UNITS.index
            )
            self.transition(step, cause, note)

    def _request(self, fulfillment: Fulfillment, cause: Cause) -> None:
        fulfillment.move(F.requested)
        fulfillment.requested_at = cause.at
        self.changed_fulfillments.add(fulfillment.fulfillment_id)
        self.events.append(FulfillmentRequested(fulfillment))
        self._follow_units(cause, f"fulfillment {fulfillment.fulfillment_id} requested from {fulfillment.source_code}")

    def _takes_fulfillment(self) -> None:
        if self.status not in TAKES_FULFILLMENT:
            raise OrderRefusal(f"order {self.order_id} is {self.status}; it takes no fulfillment")

    def _add_fulfillment(
        self,
        fulfillment_id: uuid.UUID,
        source_code: str,
        lines: Iterable[ShipmentLine],
        plan_id: uuid.UUID | None,
        status: FulfillmentStatus,
    ) -> Fulfillment:
        fulfillment = Fulfillment(
            fulfillment_id=fulfillment_id,
            order_id=self.order_id,
            source_code=source_code,
            lines=tuple(lines),
            status=status,
            plan_id=plan_id,
        )
        self.fulfillments[fulfillment_id] = fulfillment
        self.changed_fulfillments.add(fulfillment_id)
        self.changed = True
        return fulfillment

    def _fulfillment(self, fulfillment_id: uuid.UUID, source_code: str | None = None) -> Fulfillment:
        fulfillment = self.fulfillments.get(fulfillment_id)
        if fulfillment is None:
            raise OrderRefusal(f"order {self.order_id} has no fulfillment {fulfillment_id}")
        if source_code is not None and fulfillment.source_code != source_code:
            raise OrderRefusal(
                f"fulfillment {fulfillment_id} was requested from {fulfillment.source_code}, not {source_code}"
            )
        return fulfillment

    def _known_lines(self, items: Iterable[ShipmentLine]) -> list[Line]:
        found = []
        for item in items:
            line = self.lines.get(item.line_id)
            if line is None or line.sku != item.sku:
                raise OrderRefusal(f"order {self.order_id} has no line {item.line_id} of {item.sku}")
            found.append(line)
        return found


# (line, units, from, to)
Move = tuple[Line, int, LineState, LineState]


def _merged(items: Iterable[ShipmentLine]) -> list[ShipmentLine]:
    """The same line named twice counts once, with both quantities."""
    merged: dict[str, ShipmentLine] = {}
    for x in items:
        known = merged.get(x.line_id)
        merged[x.line_id] = ShipmentLine(x.line_id, x.sku, x.quantity + (known.quantity if known else 0))
    return list(merged.values())


def _describe(lines: Iterable[ShipmentLine]) -> str:
    return ", ".join(f"{x.quantity}x {x.sku}" for x in lines)


def accept(
    order_id: uuid.UUID,
    *,
    channel: str,
    external_order_id: str,
    currency: str,
    placed_at: datetime,
    customer: dict[str, Any],
    shipping_address: dict[str, Any],
    shipping_method: str,
    pickup_source: str | None,
    options: dict[str, Any],
    lines: list[Line],
    shipping_total: Decimal,
    tax_total: Decimal,
    discount_total: Decimal,
    grand_total: Decimal,
    cause: Cause,
    traceparent: str | None,
) -> Order:
    """A new order, `pending`, with the audit row of its creation."""
    order = Order(
        order_id=order_id,
        channel=channel,
        external_order_id=external_order_id,
        status=S.pending,
        currency=currency,
        placed_at=placed_at,
        customer=customer,
        shipping_address=shipping_address,
        shipping_method=shipping_method,
        pickup_source=pickup_source,
        options=options,
        lines={line.line_id: line for line in lines},
        shipping_total=shipping_total,
        tax_total=tax_total,
        discount_total=discount_total,
        grand_total=grand_total,
        traceparent=traceparent,
        changed=True,
        new=True,
    )
    order.transitions.append(
        Transition(
            order_id, None, S.pending, cause.actor, f"accepted from {channel}", cause.at, cause.event_id, cause.trace_id
        )
    )
    return order
