"""The order: its lifecycle, its lines counted in units, its fulfillments with their parcels, cancellations, refunds,
returns, and the audit trail.

Pure: no I/O. Handlers load orders, call one method per message, save what changed and translate what the order
recorded (`Order.events`) into contracts. Three tables guard every change, each through one method that refuses
anything else:
- `TRANSITIONS`, the order's status (`Order.transition`, which also records the audit row);
- `UNIT_MOVES`, where a line's units may go (`Order._move`): a line of 5 may have 2 units in one fulfillment, 3
  backordered; its summary `state` is the least advanced state any of its non-cancelled units is in;
- `FULFILLMENT_TRANSITIONS`, a fulfillment's status (`Fulfillment.move`). A fulfillment may leave in several parcels;
  it stays `requested`/`accepted` while some of its units are still to ship, and is `shipped` once all that will
  leave has left.

The order's status follows its units (`Order._follow_units`): `awaiting_fulfillment` once a shipment is requested or
every unit waits in a backorder queue; `partially_fulfilled` while some units shipped and others remain;
`fulfilled` when every unit that is not cancelled shipped; `delivered` when every shipped unit is delivered and
nothing is left to ship; `cancelled` when every unit is cancelled; `refunded` when every unit is cancelled or
returned (and so all of the payment is back).

After the sale the order decides every cancellation, refund and return (`request_cancellation`, `receive_return`,
and the sources' answers). A cancellation takes the least advanced units first; units a source (or inventory) holds
are cancelled only when it answers: they are *pending* on their fulfillment until then. Money is `money.py`'s.

Routing's plans (`oms.routing.plans.v1`) and inventory's answers (`oms.inventory.allocations.v1`) travel on different
topics and overtake each other, and so do the order's own cancellations (`oms.order.events.v1`); the order ends in
the same state whichever comes first. Inventory's answers about one order keep their order (one partition): the
reservation of each planned shipment, then `backorder_queued`, then any `backorder_allocated` of those units. Each
tolerance this needs says, where it is made, why it is safe.
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

from oms_contracts.order import OrderStatus, UnitsFrom

from . import money
from .money import Totals

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
FOLLOWS_UNITS = (S.paid, S.awaiting_fulfillment, S.partially_fulfilled, S.fulfilled, S.delivered, S.refunded)


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

# Where a line's units may move: nothing shipped is ever cancelled, only shipped or delivered units are returned.
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
# Units a return may take back: out of the door, not back yet. Delivered ones first (see `receive_return`).
RETURNABLE = (L.delivered, L.shipped)
# Units a cancellation may take, least advanced first (see `request_cancellation`).
CANCELLABLE = (L.open, L.backordered, L.reserved, L.requested)


class FulfillmentStatus(StrEnum):
    planned = "planned"  # routing chose the source; inventory has not reserved yet
    requested = "requested"  # reserved, and the request is on the source's topic
    accepted = "accepted"
    rejected = "rejected"  # by inventory (short) or by the source; routing re-plans the lines
    shipped = "shipped"  # every unit that will leave it left, in one parcel or several
    delivered = "delivered"  # every parcel delivered
    cancelled = "cancelled"  # nothing of it will leave: every unit cancelled, at a customer's request or the source's


F = FulfillmentStatus

FULFILLMENT_TRANSITIONS: dict[FulfillmentStatus, frozenset[FulfillmentStatus]] = {
    F.planned: frozenset({F.requested, F.rejected, F.cancelled}),
    F.requested: frozenset({F.accepted, F.shipped, F.rejected, F.cancelled}),
    F.accepted: frozenset({F.shipped, F.rejected, F.cancelled}),
    F.shipped: frozenset({F.delivered}),
    F.delivered: frozenset(),
    F.rejected: frozenset(),
    F.cancelled: frozenset(),
}

# A source may ship (part of) a fulfillment in these; a partly shipped fulfillment stays in them.
SHIPPABLE = frozenset({F.requested, F.accepted})
# Fulfillments that hold units of their lines (a rejected or cancelled one gave them back).
LIVE = frozenset({F.planned, F.requested, F.accepted, F.shipped, F.delivered})

# parcel_id = UUIDv5(PARCELS, "{fulfillment_id}:{tracking_number}"): the same parcel reported twice is one parcel.
PARCELS = uuid.UUID("a5d0e0c2-7a43-4f57-8d0c-3f5b9e2c61d4")

# Who the order service itself is, on the timeline and on what it announces of its own accord.
ORDER_SERVICE = "service:order"


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


class UnknownLine(OrderRefusal):
    """A request names a line the order does not have."""


class CancellationRefused(OrderRefusal):
    """A cancellation that cannot be done as asked: nothing of it is done. `lines` are what it asked for."""

    def __init__(self, reason: str, lines: list[tuple[str, int]]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.lines = lines


class CancellationConflict(OrderRefusal):
    """The same cancellation id (an idempotency key) arrived again with a different request."""


@dataclass(frozen=True, slots=True)
class Cause:
    """Who or what asked for a change: the audit row's actor, the event (or request) behind it and its type."""

    actor: str
    at: datetime
    event_id: uuid.UUID | None = None
    trace_id: str | None = None
    type: str | None = None  # the causing event's type, or "http", "link", "stuck-check"


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
    cause_type: str | None = None


class EntryKind(StrEnum):
    """What a timeline entry records."""

    status = "status"  # a status change (from, to)
    note = "note"  # customer service wrote something down
    cancellation_requested = "cancellation_requested"
    cancellation_pending = "cancellation_pending"  # units asked of their source (or inventory); its answer awaited
    units_cancelled = "units_cancelled"
    cancellation_refused = "cancellation_refused"
    refund = "refund"
    return_received = "return_received"
    replan_requested = "replan_requested"  # a source will not ship units: routing plans them again
    stuck = "stuck"  # the periodic check raised an alert


@dataclass(frozen=True, slots=True)
class Entry:
    """One row of the order's timeline, in the order things happened, with who did it."""

    order_id: uuid.UUID
    kind: EntryKind
    actor: str
    note: str | None
    at: datetime
    cause_event_id: uuid.UUID | None = None
    trace_id: str | None = None
    cause_type: str | None = None
    from_status: OrderStatus | None = None
    to_status: OrderStatus | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, t: Transition) -> Entry:
        return cls(
            t.order_id,
            EntryKind.status,
            t.actor,
            t.note,
            t.at,
            t.cause_event_id,
            t.trace_id,
            t.cause_type,
            t.from_status,
            t.to_status,
        )


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
    # When inventory expects to serve its backordered units (from `backorder_queued`); the stuck check's yardstick.
    expected_date: date | None = None

    def __post_init__(self) -> None:
        if not self.units:
            self.units = dict.fromkeys(ADVANCEMENT, 0)
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

    @property
    def live(self) -> int:
        """Units the order still sells: neither cancelled nor returned."""
        return self.quantity - self.units[L.cancelled] - self.units[L.returned]


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


@dataclass(frozen=True, slots=True)
class PendingCancellation:
    """Units of a fulfillment a cancellation asked to take out; its source's (or inventory's) answer decides."""

    cancellation_id: uuid.UUID
    line_id: str
    quantity: int


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
    accepted_at: datetime | None = None
    # Units of its lines that will not leave from it: cancelled (at a customer's request or the source's) or given
    # back before it was requested. They count neither as to ship nor as requested.
    withdrawn: dict[str, int] = field(default_factory=dict)
    # Units on it a cancellation asked to take out, oldest first; they are still to ship until the answer.
    pending: list[PendingCancellation] = field(default_factory=list)
    # Withdrawn units inventory is reserving for it while it is planned: given back (lines_cancelled from=reserved)
    # with its reservation, so inventory never holds stock for units nobody will ship.
    to_release: dict[str, int] = field(default_factory=dict)

    def move(self, to: FulfillmentStatus) -> None:
        """The one guard of a fulfillment's status."""
        if to not in FULFILLMENT_TRANSITIONS[self.status]:
            raise InvalidFulfillmentTransition(self.fulfillment_id, self.status, to)
        self.status = to

    def ordered(self, line_id: str) -> int:
        return sum(x.quantity for x in self.lines if x.line_id == line_id)

    def shipped(self, line_id: str) -> int:
        return sum(x.quantity for p in self.parcels for x in p.lines if x.line_id == line_id)

    def still_to_ship(self, line_id: str) -> int:
        return self.ordered(line_id) - self.shipped(line_id) - self.withdrawn.get(line_id, 0)

    def pending_units(self, line_id: str) -> int:
        return sum(p.quantity for p in self.pending if p.line_id == line_id)

    def requestable(self) -> list[ShipmentLine]:
        """What its source is asked to ship: its lines without what was withdrawn before the request."""
        wanted = [
            ShipmentLine(x.line_id, x.sku, x.quantity - self.withdrawn.get(x.line_id, 0)) for x in _merged(self.lines)
        ]
        return [x for x in wanted if x.quantity > 0]

    def parcel(self, tracking_number: str) -> Parcel | None:
        return next((p for p in self.parcels if p.tracking_number == tracking_number), None)

    def take_pending(self, line_id: str, quantity: int) -> list[PendingCancellation]:
        """Take up to `quantity` pending units of a line off the fulfillment, oldest request first; returns what was
        taken, per request."""
        taken: list[PendingCancellation] = []
        kept: list[PendingCancellation] = []
        for pending in self.pending:
            n = min(quantity, pending.quantity) if pending.line_id == line_id else 0
            quantity -= n
            if n:
                taken.append(replace(pending, quantity=n))
            if pending.quantity - n:
                kept.append(replace(pending, quantity=pending.quantity - n))
        self.pending = kept
        return taken

    def take_pending_all(self) -> list[PendingCancellation]:
        taken, self.pending = self.pending, []
        return taken

    def withdraw(self, line_id: str, quantity: int) -> None:
        self.withdrawn[line_id] = self.withdrawn.get(line_id, 0) + quantity


# -- cancellations, refunds, returns ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineRequest:
    """Units of a line a cancellation asks for; `quantity` None: all that may still be cancelled."""

    line_id: str
    quantity: int | None = None


@dataclass(frozen=True, slots=True)
class CancellationRequest:
    """What someone asked to cancel. The id makes a repeated request apply once: a channel's event id, an
    `Idempotency-Key`, a customer link's signature."""

    cancellation_id: uuid.UUID
    requested_by: str
    via: str  # channel | http | link
    reason: str
    lines: tuple[LineRequest, ...] | None = None  # None: every unit of the order that is not shipped yet
    only: LineState | None = None  # take only units in this state (a customer's link cancels what waits)

    def asked(self) -> list[tuple[str, int | None]] | None:
        if self.lines is None:
            return None
        merged: dict[str, int | None] = {}
        for x in self.lines:
            known = merged.get(x.line_id, 0)
            merged[x.line_id] = None if x.quantity is None or known is None else known + x.quantity
        return list(merged.items())


@dataclass(slots=True)
class CancellationLine:
    """One line of a cancellation: what it asked and what became of it."""

    line_id: str
    sku: str
    asked: int | None  # None: all that could be cancelled
    cancelled: int = 0
    pending: int = 0
    refused: int = 0


class CancellationStatus(StrEnum):
    pending = "pending"  # some units wait for their source's (or inventory's) answer
    cancelled = "cancelled"  # everything asked is cancelled
    partly_cancelled = "partly_cancelled"  # some units are cancelled, others could not be (they left)
    refused = "refused"  # nothing could be cancelled


@dataclass(slots=True)
class Cancellation:
    """A request to cancel (some of) an order and its outcome per line: the record behind every cancellation."""

    cancellation_id: uuid.UUID
    order_id: uuid.UUID
    requested_by: str
    via: str
    reason: str
    asked: list[tuple[str, int | None]] | None
    only: LineState | None
    requested_at: datetime
    lines: dict[str, CancellationLine] = field(default_factory=dict)
    refusal: str | None = None  # why units could not be cancelled
    refunded: Decimal = Decimal(0)
    updated_at: datetime | None = None

    @property
    def status(self) -> CancellationStatus:
        lines = self.lines.values()
        if any(x.pending for x in lines):
            return CancellationStatus.pending
        if not any(x.cancelled for x in lines):
            return CancellationStatus.refused
        if any(x.refused for x in lines):
            return CancellationStatus.partly_cancelled
        return CancellationStatus.cancelled

    def answers(self, request: CancellationRequest) -> bool:
        """Whether `request` is this cancellation asked again (same lines, reason and requester)."""
        return (self.asked, self.reason, self.only, self.requested_by) == (
            request.asked(),
            request.reason,
            request.only,
            request.requested_by,
        )


class RefundCause(StrEnum):
    cancellation = "cancellation"
    return_ = "return"


@dataclass(frozen=True, slots=True)
class Refund:
    """Money going back to the customer, once, for units cancelled after payment or returned."""

    refund_id: uuid.UUID
    order_id: uuid.UUID
    amount: Decimal
    cause: RefundCause
    reason: str
    lines: tuple[ShipmentLine, ...]
    refunded_total: Decimal  # everything refunded on the order, this included
    at: datetime
    cancellation_id: uuid.UUID | None = None
    return_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class ReturnedLine:
    line_id: str
    quantity: int
    condition: str  # resellable | damaged


@dataclass(frozen=True, slots=True)
class Return:
    """Units that came back to a source and were accepted."""

    return_id: uuid.UUID
    order_id: uuid.UUID
    source_code: str
    lines: tuple[tuple[ShipmentLine, str], ...]  # (units, condition)
    reason: str
    refund_amount: Decimal
    at: datetime


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


@dataclass(frozen=True, slots=True)
class CancelledUnits:
    """Units cancelled, and where they were for inventory (`UnitsFrom`): what it must give back for them."""

    line_id: str
    sku: str
    quantity: int
    was: UnitsFrom
    fulfillment_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class UnitsCancelled:
    """Units are cancelled (`order.lines_cancelled.v1`), with their refund when something was paid. With `released`,
    the units were cancelled before and only what inventory holds for them is given back (no money moves)."""

    units: tuple[CancelledUnits, ...]
    reason: str
    actor: str
    grand_total: Decimal
    status: OrderStatus
    refund: Refund | None = None
    cancellation_id: uuid.UUID | None = None
    released: bool = False


@dataclass(frozen=True, slots=True)
class CancelAskedOfSource:
    """A source is asked not to ship units of its fulfillment (`fulfillment.cancel_requested.v1`)."""

    fulfillment: Fulfillment
    lines: tuple[ShipmentLine, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class CancellationRefusal:
    """Units a cancellation could not take (`order.cancellation_rejected.v1`): they stay on the order."""

    cancellation_id: uuid.UUID
    requested_by: str
    lines: tuple[tuple[str, int], ...]
    reason: str


@dataclass(frozen=True, slots=True)
class ReplanAsked:
    """A source will not ship these units of its fulfillment: routing plans them again without it."""

    fulfillment: Fulfillment
    lines: tuple[ShipmentLine, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Returned:
    """A return was accepted (`order.lines_returned.v1`), with its refund."""

    ret: Return
    refund: Refund | None


Event = (
    Paid
    | FulfillmentRequested
    | ParcelShipped
    | FulfillmentDelivered
    | UnitsCancelled
    | CancelAskedOfSource
    | CancellationRefusal
    | ReplanAsked
    | Returned
)


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
    # What the order costs now: lowered by each cancellation (`money.taken_off`); the goods follow from the units.
    shipping_total: Decimal
    tax_total: Decimal
    discount_total: Decimal
    grand_total: Decimal
    traceparent: str | None = None
    paid_amount: Decimal | None = None
    payment_ref: str | None = None
    # As the channel submitted them (None: as the totals above); the base of every share of tax and discount.
    submitted_shipping_total: Decimal | None = None
    submitted_tax_total: Decimal | None = None
    submitted_discount_total: Decimal | None = None
    refunded_total: Decimal = Decimal(0)
    status_since: datetime | None = None  # when the order entered its status
    accepted_at: datetime | None = None  # when the OMS accepted it (its row's creation); None until first saved
    fulfillments: dict[uuid.UUID, Fulfillment] = field(default_factory=dict)
    cancellations: dict[uuid.UUID, Cancellation] = field(default_factory=dict)
    # What changed since load, for the store to save and the handler to announce.
    transitions: list[Transition] = field(default_factory=list)
    timeline: list[Entry] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    refunds: list[Refund] = field(default_factory=list)
    returns: list[Return] = field(default_factory=list)
    changed_fulfillments: set[uuid.UUID] = field(default_factory=set)
    changed_cancellations: set[uuid.UUID] = field(default_factory=set)
    changed: bool = False
    new: bool = False

    def __post_init__(self) -> None:
        if self.submitted_shipping_total is None:
            self.submitted_shipping_total = self.shipping_total
        if self.submitted_tax_total is None:
            self.submitted_tax_total = self.tax_total
        if self.submitted_discount_total is None:
            self.submitted_discount_total = self.discount_total

    @property
    def subtotal(self) -> Decimal:
        """The goods as submitted: every unit ordered at its price."""
        return sum((line.unit_price * line.quantity for line in self.lines.values()), Decimal(0))

    @property
    def submitted(self) -> Totals:
        return Totals(
            self.subtotal, self.submitted_shipping_total, self.submitted_tax_total, self.submitted_discount_total
        )

    @property
    def left(self) -> Totals:
        """What the order costs now: its units that are not cancelled, and the totals cancellations left."""
        goods = sum(
            (line.unit_price * (line.quantity - line.units[L.cancelled]) for line in self.lines.values()), Decimal(0)
        )
        return Totals(goods, self.shipping_total, self.tax_total, self.discount_total)

    def transition(self, to: OrderStatus, cause: Cause, note: str | None = None) -> Transition:
        """Move to `to` if the state machine allows it; the returned transition is the audit row."""
        if to not in TRANSITIONS[self.status]:
            raise InvalidTransition(self.order_id, self.status, to)
        done = Transition(
            self.order_id, self.status, to, cause.actor, note, cause.at, cause.event_id, cause.trace_id, cause.type
        )
        self.status = to
        self.status_since = cause.at
        self.transitions.append(done)
        self.timeline.append(Entry.of(done))
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

    def add_note(self, text: str, cause: Cause) -> Entry:
        """Customer service writes something down: a timeline entry with its author, nothing else changes."""
        return self._record(EntryKind.note, cause, text)

    def _record(self, kind: EntryKind, cause: Cause, note: str | None, actor: str | None = None, /, **details) -> Entry:
        entry = Entry(
            self.order_id,
            kind,
            actor or cause.actor,
            note,
            cause.at,
            cause.event_id,
            cause.trace_id,
            cause.type,
            details=details,
        )
        self.timeline.append(entry)
        return entry

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
        paid order changes nothing. The total is what the order costs now: lines cancelled before payment are not
        charged."""
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
        """The payment failed: the order is cancelled, every unit with it; nothing was charged, nothing is refunded.
        The status change says why (its cause is the failed payment); no cancellation is announced beside it."""
        if self.status not in UNPAID:
            raise OrderRefusal(f"order {self.order_id} is {self.status}; a payment failure cannot cancel it now")
        self.transition(S.cancelled, cause, f"payment failed: {reason}")
        # Before payment nothing is planned, so every unit is open; an unpaid order costs nothing once cancelled.
        self._move([(line, line.units[L.open], L.open, L.cancelled) for line in self.lines.values()])
        self._set_left(money.NOTHING)

    def _check_amount(self, amount: Decimal, currency: str, what: str) -> None:
        if currency != self.currency or amount != self.grand_total:
            raise OrderRefusal(
                f"order {self.order_id}: {what} {amount} {currency} does not match the order total "
                f"{self.grand_total} {self.currency}"
            )

    # -- cancellations --------------------------------------------------------------------------------------------

    def request_cancellation(
        self, request: CancellationRequest, cause: Cause, *, record_refusal: bool = True
    ) -> Cancellation:
        """Cancel what `request` asks, least advanced units first: open, then backordered (both cancelled at once,
        refunded when paid: `UnitsCancelled`), then reserved in a planned fulfillment (pending until inventory's
        reservation or rejection answers), then requested from a source (pending until the source answers; it is
        asked at once: `CancelAskedOfSource`). Shipped units are never cancelled.

        Asking for more units of a line than may still be cancelled refuses the whole request, nothing changes: with
        `record_refusal` it is recorded as refused (`CancellationRefusal`, for a requester who is told by event),
        else `CancellationRefused` is raised (for one told at once). A request for the whole order (`lines` None)
        cancels what may still be cancelled and refuses only what left already. The same request again (same id)
        is the recorded cancellation; the same id with another request is refused (`CancellationConflict`). A line
        the order does not have: `UnknownLine`."""
        known = self.cancellations.get(request.cancellation_id)
        if known is not None:
            if known.answers(request):
                return known
            raise CancellationConflict(
                f"cancellation {request.cancellation_id} of order {self.order_id} was asked before with other lines, "
                "reason or requester; a new request needs a new key"
            )
        asked = request.asked()
        wanted = self._lines_asked(asked)
        takes: list[tuple[Line, LineState, Fulfillment | None, int]] = []
        problems: list[str] = []
        stays: list[tuple[Line, int]] = []  # units of a whole-order request that left already
        for line, quantity in wanted:
            free = self._cancellable(line, request.only)
            can = sum(n for _, _, n in free)
            if quantity is None:
                quantity = can
                if request.only is None and line.units[L.shipped] + line.units[L.delivered]:
                    stays.append((line, line.units[L.shipped] + line.units[L.delivered]))
            elif quantity > can:
                problems.append(self._why_not(line, quantity, can))
                continue
            for state, fulfillment, n in free:
                take = min(n, quantity)
                if take:
                    takes.append((line, state, fulfillment, take))
                quantity -= take
        refused = [(line.line_id, n or line.quantity) for line, n in wanted] if problems or not takes else []
        if refused:
            reason = "; ".join(problems) or self._nothing_to_cancel(request, [line for line, _ in wanted])
            if not record_refusal:
                raise CancellationRefused(reason, refused)
        record = Cancellation(
            cancellation_id=request.cancellation_id,
            order_id=self.order_id,
            requested_by=request.requested_by,
            via=request.via,
            reason=request.reason,
            asked=asked,
            only=request.only,
            requested_at=cause.at,
            lines={line.line_id: CancellationLine(line.line_id, line.sku, n) for line, n in wanted},
            updated_at=cause.at,
        )
        self.cancellations[record.cancellation_id] = record
        self.changed_cancellations.add(record.cancellation_id)
        self.changed = True
        self._record(
            EntryKind.cancellation_requested,
            cause,
            request.reason,
            request.requested_by,
            cancellation_id=str(record.cancellation_id),
            lines=[{"line_id": line_id, "quantity": n} for line_id, n in asked] if asked is not None else None,
            via=request.via,
        )
        if refused:
            self._refuse(record, refused, reason, cause)
            return record
        cancel_now = [
            (CancelledUnits(line.line_id, line.sku, n, UnitsFrom(state)), state)
            for line, state, fulfillment, n in takes
            if fulfillment is None
        ]
        if cancel_now:
            self._cancel(cancel_now, request.reason, cause, record, actor=request.requested_by)
        held: dict[uuid.UUID, list[tuple[Line, int]]] = {}
        for line, _, fulfillment, n in takes:
            if fulfillment is not None:
                held.setdefault(fulfillment.fulfillment_id, []).append((line, n))
        for fulfillment_id, items in held.items():
            self._ask_to_cancel(self.fulfillments[fulfillment_id], record, items, cause)
        if stays:
            self._refuse(
                record, [(line.line_id, n) for line, n in stays], "already shipped: it cannot be cancelled", cause
            )
        return record

    def _lines_asked(self, asked: list[tuple[str, int | None]] | None) -> list[tuple[Line, int | None]]:
        if asked is None:
            return [(line, None) for line in self.lines.values()]
        missing = [line_id for line_id, _ in asked if line_id not in self.lines]
        if missing:
            raise UnknownLine(f"order {self.order_id} has no line {', '.join(missing)}")
        return [(self.lines[line_id], n) for line_id, n in asked]

    def _cancellable(self, line: Line, only: LineState | None) -> list[tuple[LineState, Fulfillment | None, int]]:
        """The units of a line a cancellation may take, least advanced first: open, backordered, reserved in a
        planned fulfillment, requested from a source (not yet accepted before accepted ones); units already pending
        cancellation are not offered twice."""
        free: list[tuple[LineState, Fulfillment | None, int]] = [
            (L.open, None, line.units[L.open]),
            (L.backordered, None, line.units[L.backordered]),
        ]
        rank = {F.planned: 0, F.requested: 1, F.accepted: 2}
        # In the order the fulfillments were made (as loaded: by request time), so the same request takes the same
        # units wherever it is decided.
        held = sorted((f for f in self.fulfillments.values() if f.status in rank), key=lambda f: rank[f.status])
        for f in held:
            n = f.still_to_ship(line.line_id) - f.pending_units(line.line_id)
            free.append((L.reserved if f.status is F.planned else L.requested, f, n))
        return [(state, f, n) for state, f, n in free if n > 0 and (only is None or state is only)]

    def _why_not(self, line: Line, asked: int, can: int) -> str:
        pending = sum(f.pending_units(line.line_id) for f in self.fulfillments.values())
        why = [
            f"{n} {what}"
            for n, what in (
                (line.units[L.shipped] + line.units[L.delivered], "already shipped"),
                (line.units[L.returned], "returned"),
                (line.units[L.cancelled], "cancelled already"),
                (pending, "being cancelled already"),
            )
            if n
        ]
        return f"line {line.line_id} ({line.sku}): {asked} units asked, only {can} can still be cancelled" + (
            f" ({', '.join(why)})" if why else ""
        )

    def _nothing_to_cancel(self, request: CancellationRequest, lines: list[Line]) -> str:
        if self.status is S.cancelled:
            return f"order {self.order_id} is cancelled already"
        if request.only is L.backordered:
            return "nothing of these items waits for stock any more: they are on their way or cancelled"
        if any(line.to_ship for line in lines):
            return "every unit left is being cancelled already"
        return "nothing is left to cancel: every unit is shipped, returned or cancelled"

    def _ask_to_cancel(
        self, fulfillment: Fulfillment, record: Cancellation, items: list[tuple[Line, int]], cause: Cause
    ) -> None:
        """Units held by a fulfillment: pending on it until its source (requested) or inventory (planned) answers."""
        for line, n in items:
            fulfillment.pending.append(PendingCancellation(record.cancellation_id, line.line_id, n))
            record.lines[line.line_id].pending += n
        self.changed_fulfillments.add(fulfillment.fulfillment_id)
        lines = tuple(ShipmentLine(line.line_id, line.sku, n) for line, n in items)
        if fulfillment.status is F.planned:
            note = f"waits for inventory's reservation at {fulfillment.source_code}: {_describe(lines)}"
        else:
            note = f"{fulfillment.source_code} asked not to ship {_describe(lines)}"
            self.events.append(CancelAskedOfSource(fulfillment, lines, record.reason))
        self._record(
            EntryKind.cancellation_pending,
            cause,
            note,
            record.requested_by,
            cancellation_id=str(record.cancellation_id),
            fulfillment_id=str(fulfillment.fulfillment_id),
            lines=_lines_detail(lines),
        )

    def _refuse(self, record: Cancellation, lines: list[tuple[str, int]], reason: str, cause: Cause) -> None:
        """Units a cancellation could not take stay on the order; its requester is told why."""
        for line_id, n in lines:
            record.lines[line_id].refused += n
        record.refusal = reason
        record.updated_at = cause.at
        self.changed_cancellations.add(record.cancellation_id)
        self.changed = True
        self.events.append(CancellationRefusal(record.cancellation_id, record.requested_by, tuple(lines), reason))
        self._record(
            EntryKind.cancellation_refused,
            cause,
            reason,
            cause.actor,
            cancellation_id=str(record.cancellation_id),
            requested_by=record.requested_by,
            lines=[{"line_id": line_id, "quantity": n} for line_id, n in lines],
        )

    def _cancel(
        self,
        units: list[tuple[CancelledUnits, LineState]],
        reason: str,
        cause: Cause,
        record: Cancellation | None = None,
        *,
        actor: str | None = None,
    ) -> None:
        """Cancel units (each moved from the given state): taken off the order's totals, refunded when paid, the
        status following (`cancelled` when nothing is left); `UnitsCancelled`."""
        before = self.left
        self._move([(self.lines[u.line_id], u.quantity, state, L.cancelled) for u, state in units])
        counts = self.units()
        goods = sum((self.lines[u.line_id].unit_price * u.quantity for u, _ in units), Decimal(0))
        taken = money.taken_off(self.submitted, before, goods, everything=counts[L.cancelled] == counts.total())
        self._set_left(before - taken)
        actor = actor or cause.actor
        cancelled = tuple(u for u, _ in units)
        lines = tuple(_merged(ShipmentLine(u.line_id, u.sku, u.quantity) for u in cancelled))
        self._record(
            EntryKind.units_cancelled,
            cause,
            f"{_describe(lines)} cancelled: {reason}",
            actor,
            cancellation_id=str(record.cancellation_id) if record else None,
            units=[
                {
                    "line_id": u.line_id,
                    "sku": u.sku,
                    "quantity": u.quantity,
                    "from": str(u.was),
                    "fulfillment_id": str(u.fulfillment_id) if u.fulfillment_id else None,
                }
                for u in cancelled
            ],
            grand_total=str(self.grand_total),
        )
        refund = self._refund(
            taken.grand,
            RefundCause.cancellation,
            reason,
            lines,
            cause,
            actor,
            cancellation_id=record.cancellation_id if record else None,
        )
        if record is not None:
            for u in cancelled:
                record.lines[u.line_id].cancelled += u.quantity
            record.refunded += refund.amount if refund else 0
            record.updated_at = cause.at
            self.changed_cancellations.add(record.cancellation_id)
        self._follow_units(cause, f"the rest cancelled: {reason}", cancelled_note=f"cancelled: {reason}")
        self.events.append(
            UnitsCancelled(
                cancelled,
                reason,
                actor,
                self.grand_total,
                self.status,
                refund,
                record.cancellation_id if record else None,
            )
        )

    def _release(self, fulfillment: Fulfillment | None, units: dict[str, int], was: UnitsFrom, cause: Cause) -> None:
        """Units cancelled before inventory placed them for this order (a plan or allocation overtaken by the
        cancellation): inventory is told to give back what it holds for them. No unit moves, no money."""
        released = tuple(
            CancelledUnits(
                line_id, self.lines[line_id].sku, n, was, fulfillment.fulfillment_id if fulfillment else None
            )
            for line_id, n in units.items()
            if n
        )
        if not released:
            return
        where = f" at {fulfillment.source_code}" if fulfillment else ""
        reason = f"cancelled before it was placed{where}: given back"
        self.events.append(
            UnitsCancelled(released, reason, ORDER_SERVICE, self.grand_total, self.status, released=True)
        )
        self._record(
            EntryKind.units_cancelled,
            cause,
            f"{_describe(released)} {reason}",
            ORDER_SERVICE,
            released=True,
            units=[{"line_id": u.line_id, "quantity": u.quantity, "from": str(u.was)} for u in released],
        )
        self.changed = True

    def _refund(
        self,
        value: Decimal,
        cause_of: RefundCause,
        reason: str,
        lines: tuple[ShipmentLine, ...],
        cause: Cause,
        actor: str,
        *,
        cancellation_id: uuid.UUID | None = None,
        return_id: uuid.UUID | None = None,
    ) -> Refund | None:
        """Refund units worth `value` (`money.refund`): nothing before payment, at most what is left of it, all that
        is left with the last units."""
        counts = self.units()
        last = counts[L.cancelled] + counts[L.returned] == counts.total()
        amount = money.refund(value, paid=self.paid_amount, refunded=self.refunded_total, last=last)
        if amount <= 0:
            return None
        self.refunded_total += amount
        refund = Refund(
            uuid.uuid4(),
            self.order_id,
            amount,
            cause_of,
            reason,
            lines,
            self.refunded_total,
            cause.at,
            cancellation_id,
            return_id,
        )
        self.refunds.append(refund)
        self.changed = True
        self._record(
            EntryKind.refund,
            cause,
            f"{amount} {self.currency} refunded for {_describe(lines)} ({cause_of.value}); "
            f"{self.refunded_total} {self.currency} in all",
            actor,
            refund_id=str(refund.refund_id),
            amount=str(amount),
            refunded_total=str(self.refunded_total),
            cause=cause_of.value,
        )
        return refund

    def _set_left(self, left: Totals) -> None:
        self.shipping_total, self.tax_total, self.discount_total = left.shipping, left.tax, left.discount
        self.grand_total = left.grand
        self.changed = True

    def _settle(
        self, fulfillment: Fulfillment, taken: list[PendingCancellation], state: LineState, was: UnitsFrom, cause: Cause
    ) -> None:
        """Pending cancellations answered yes: their units leave the fulfillment and are cancelled, per request."""
        by_request: dict[uuid.UUID, list[PendingCancellation]] = {}
        for pending in taken:
            by_request.setdefault(pending.cancellation_id, []).append(pending)
            fulfillment.withdraw(pending.line_id, pending.quantity)
        self.changed_fulfillments.add(fulfillment.fulfillment_id)
        for cancellation_id, items in by_request.items():
            record = self.cancellations.get(cancellation_id)
            if record is not None:
                for pending in items:
                    record.lines[pending.line_id].pending -= pending.quantity
            units = [
                (
                    CancelledUnits(p.line_id, self.lines[p.line_id].sku, p.quantity, was, fulfillment.fulfillment_id),
                    state,
                )
                for p in items
            ]
            reason = record.reason if record else "cancelled at the customer's request"
            self._cancel(units, reason, cause, record, actor=record.requested_by if record else None)

    def _turn_down(self, fulfillment: Fulfillment, taken: list[PendingCancellation], reason: str, cause: Cause) -> None:
        """Pending cancellations answered no (the units left): each requester is told; the units stay."""
        by_request: dict[uuid.UUID, list[PendingCancellation]] = {}
        for pending in taken:
            by_request.setdefault(pending.cancellation_id, []).append(pending)
        self.changed_fulfillments.add(fulfillment.fulfillment_id)
        for cancellation_id, items in by_request.items():
            record = self.cancellations.get(cancellation_id)
            if record is None:
                continue
            for pending in items:
                record.lines[pending.line_id].pending -= pending.quantity
            self._refuse(record, [(p.line_id, p.quantity) for p in items], reason, cause)

    # -- plans, reservations, allocations -----------------------------------------------------------------------

    def apply_plan(
        self,
        plan_id: uuid.UUID,
        shipments: list[PlannedShipment],
        backordered: list[ShipmentLine],
        unfulfillable: list[ShipmentLine],
        cause: Cause,
        attempt: int = 1,
        reasons: dict[str, str] | None = None,
    ) -> None:
        """Record routing's plan: a planned fulfillment per shipment, backordered units into the queue's care,
        unfulfillable units cancelled and refunded (`UnitsCancelled`, with the plan's `reasons` per line). Refused:
        a line the order does not have (or of another SKU), shipments placing more units than are open (and than
        cancellations explain, below).

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
          lines, with nothing shipped or pending cancellation, is that shipment: it is rejected now ("superseded"),
          and its late rejection changes nothing.
        A plan may also come after units it places were cancelled (routing plans the paid order, or the lines a
        source gave back, not knowing of the cancellation; a re-plan may cover only some of the open units, which
        are matched by line). It places what is open; the rest, as far as cancelled units account for it, is given
        back to inventory: a shipment's with its reservation (`Fulfillment.to_release`), the backorder's at once."""
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
            moves += [
                (self.lines[x.line_id], superseded.still_to_ship(x.line_id), held, L.open)
                for x in _merged(superseded.lines)
            ]
        # Open units as they will be once the superseded shipment gave its units back.
        open_left = {x.line_id: x.units[L.open] for x in self.lines.values()}
        for line, n, _, _ in moves:
            open_left[line.line_id] += n
        explained = {x.line_id: x.units[L.cancelled] for x in self.lines.values()}
        surplus: dict[uuid.UUID, dict[str, int]] = {}
        for shipment in new:
            for x in shipment.lines:
                n = min(x.quantity, open_left[x.line_id])
                extra = x.quantity - n
                if extra > explained[x.line_id]:
                    raise OrderRefusal(
                        f"order {self.order_id}: {x.quantity} units of line {x.line_id} should leave open, "
                        f"but {open_left[x.line_id]} are open"
                    )
                explained[x.line_id] -= extra
                moves.append((self.lines[x.line_id], n, L.open, L.reserved))
                open_left[x.line_id] -= n
                if extra:
                    into = surplus.setdefault(shipment.shipment_id, {})
                    into[x.line_id] = into.get(x.line_id, 0) + extra
        moves += self._enter_backorder(counts, open_left)
        waiting_surplus = self._cancelled_while_due(counts, explained, moves)
        gone = [(x, max(0, min(x.quantity, open_left[x.line_id]))) for x in unfulfillable]
        if any(n for _, n, _, _ in moves) or any(n for _, n in gone) or self.status in UNPAID:
            self._takes_fulfillment()
        self._move(moves)
        self._count(counts)
        if superseded is not None:
            superseded.move(F.rejected)
            superseded.rejection = f"superseded by plan {plan_id} (attempt {attempt}); its rejection is on its way"
            self.changed_fulfillments.add(superseded.fulfillment_id)
        for shipment in new:
            fulfillment = self._add_fulfillment(
                shipment.shipment_id, shipment.source_code, shipment.lines, plan_id, F.planned
            )
            for line_id, n in surplus.get(shipment.shipment_id, {}).items():
                fulfillment.withdraw(line_id, n)
                fulfillment.to_release[line_id] = fulfillment.to_release.get(line_id, 0) + n
        for shipment in shipments:
            known = self.fulfillments[shipment.shipment_id]
            known.ship_by = known.ship_by or shipment.ship_by
            known.estimated_delivery, known.reason = shipment.estimated_delivery, shipment.reason
            self.changed_fulfillments.add(shipment.shipment_id)
        self.changed = True
        self._release(None, waiting_surplus, UnitsFrom.backordered, cause)
        cancelled = [
            (CancelledUnits(x.line_id, x.sku, n, UnitsFrom.open), L.open) for x, n in _merged_counts(gone) if n
        ]
        if cancelled:
            self._cancel(cancelled, _plan_reason(cancelled, reasons or {}), cause)
        self._follow_units(cause, "every line backordered until stock arrives")

    def _cancelled_while_due(
        self, counts: dict[str, BackorderCount], explained: dict[str, int], moves: list[Move]
    ) -> dict[str, int]:
        """Units said to be backordered that cannot enter the backorder because they were cancelled before (a plan
        or `backorder_queued` overtaken by the cancellation): they count as entered, and are given back to inventory's
        queue. Units a shipment still holds (its rejection on its way) are not taken for cancelled ones."""
        held_after = Counter[str]()
        for line, n, from_state, to_state in moves:
            for state, sign in ((from_state, -1), (to_state, 1)):
                if state in (L.reserved, L.requested):
                    held_after[line.line_id] += sign * n
        gone: dict[str, int] = {}
        for line_id, count in counts.items():
            line = self.lines[line_id]
            held = line.units[L.reserved] + line.units[L.requested] + held_after[line_id]
            n = max(0, min(count.due - held, explained[line_id]))
            if n:
                counts[line_id] = replace(count, entered=count.entered + n)
                explained[line_id] -= n
                gone[line_id] = n
        return gone

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
            and not f.pending
            and not f.withdrawn
            and f.plan_id != plan_id
            and sorted((x.line_id, x.quantity) for x in _merged(f.lines)) == replanned
        ]
        return candidates[0] if len(candidates) == 1 else None

    def queue_backorder(
        self, items: list[ShipmentLine], cause: Cause, expected: dict[str, date | None] | None = None
    ) -> None:
        """Inventory says these units joined their SKUs' queues (`backorder_queued`): make sure they are backordered,
        and remember when inventory expects to serve them (`expected`, by line), the stuck check's yardstick.

        It repeats what the plan said when the plan came first (then nothing moves, see `BackorderCount`); when it
        overtook the plan, it backorders the units now, from units still open, so that the allocation that may follow
        it on the same partition finds them backordered and the order awaits fulfillment as soon as every unit
        waits; units cancelled meanwhile are given back to the queue. Refused: a line the order does not have, or of
        another SKU (inventory and the order disagree about the order; an operator looks)."""
        self._known_lines(items)
        counts = self._counted(items, "announced")
        open_left = {x.line_id: x.units[L.open] for x in self.lines.values()}
        moves = self._enter_backorder(counts, open_left)
        if any(n for _, n, _, _ in moves):
            # Units only move while the order takes fulfillment; a late announcement with nothing to move is fine.
            self._takes_fulfillment()
        explained = {x.line_id: x.units[L.cancelled] for x in self.lines.values()}
        gone = self._cancelled_while_due(counts, explained, moves)
        self._move(moves)
        self._count(counts)
        for line_id, when in (expected or {}).items():
            if when is not None and self.lines[line_id].expected_date != when:
                self.lines[line_id].expected_date = when
                self.changed = True
        self._release(None, gone, UnitsFrom.backordered, cause)
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
        """Inventory reserved a planned shipment: it becomes a request to its source (`FulfillmentRequested`) for
        all of it that is not cancelled. Cancellations pending on it are done now (its units cancelled from
        `reserved`), and units cancelled before it was planned are given back, so inventory releases exactly what
        it reserved; nothing left to request cancels the fulfillment. A repeated reservation changes nothing.

        The reservation may overtake the plan (another topic); it carries what the request needs."""
        fulfillment = self.fulfillments.get(reservation.fulfillment_id)
        if fulfillment is None:
            self._known_lines(reservation.lines)
            placed, surplus = self._placeable(reservation.lines, (L.open,))
            if placed:
                self._takes_fulfillment()
            self._move([(self.lines[line_id], n, L.open, L.requested) for line_id, n in placed.items()])
            fulfillment = self._add_fulfillment(
                reservation.fulfillment_id, reservation.source_code, reservation.lines, reservation.plan_id, F.planned
            )
            for line_id, n in surplus.items():
                fulfillment.withdraw(line_id, n)
            self._release(fulfillment, surplus, UnitsFrom.reserved, cause)
        elif fulfillment.status is F.planned:
            answered = fulfillment.take_pending_all()
            self._settle(fulfillment, answered, L.reserved, UnitsFrom.reserved, cause)
            release, fulfillment.to_release = fulfillment.to_release, {}
            self._release(fulfillment, release, UnitsFrom.reserved, cause)
            self._move(
                [(self.lines[x.line_id], x.quantity, L.reserved, L.requested) for x in fulfillment.requestable()]
            )
        else:
            return
        fulfillment.ship_by = fulfillment.ship_by or reservation.ship_by
        if not fulfillment.requestable():
            fulfillment.move(F.cancelled)
            self.changed_fulfillments.add(fulfillment.fulfillment_id)
            return
        self._request(fulfillment, cause)

    def _placeable(
        self, items: list[ShipmentLine], states: tuple[LineState, ...]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Of the units `items` place, those that are in `states` now (by line) and the rest, which units
        cancelled before must account for (a message overtaken by the cancellation); else it is refused."""
        placed: dict[str, int] = {}
        surplus: dict[str, int] = {}
        for x in _merged(items):
            line = self.lines[x.line_id]
            there = sum(line.units[s] for s in states)
            n = min(x.quantity, there)
            extra = x.quantity - n
            if extra > line.units[L.cancelled]:
                raise OrderRefusal(
                    f"order {self.order_id}: {x.quantity} units of line {x.line_id} should leave "
                    f"{'/'.join(states)}, but {there} are {'/'.join(states)}"
                )
            if n:
                placed[x.line_id] = n
            if extra:
                surplus[x.line_id] = extra
        return placed, surplus

    def allocate_backorder(self, allocation: Allocation, cause: Cause) -> None:
        """Stock that arrived was reserved for backordered units: a new fulfillment, requested at once. A repeated
        allocation (same shipment) changes nothing.

        Units come out of the backorder first. Inventory announces units queued (`backorder_queued`) before it
        allocates them, on the same partition, so they are normally backordered by then; units still open count as
        waiting too, and are counted as having entered the backorder (`BackorderCount`), because the allocation can
        still come first: inventory's outbox relay publishes a row committed out of id order at its next sweep, so
        an allocation committed by a later transaction may be published before the announcement of an earlier one;
        and units the plan could not backorder (held by a shipment whose rejection came after the plan) wait open.
        Safe: inventory allocates only units it queued for this line, so the announcement or plan that follows
        finds them entered and moves nothing more. Units cancelled while inventory was allocating them (the
        cancellation had not reached it) are given back at once and not requested; nothing left to request
        cancels the fulfillment.

        Refused when it names a line the order does not have, or more units than wait and than cancellations
        account for (an already shipped line, say)."""
        if allocation.fulfillment_id in self.fulfillments:
            return
        self._known_lines(allocation.lines)
        for item in _merged(allocation.lines):
            line = self.lines[item.line_id]
            waiting = line.units[L.backordered] + line.units[L.open]
            if item.quantity - waiting > line.units[L.cancelled]:
                if line.to_ship == 0:
                    raise OrderRefusal(f"order {self.order_id}: line {line.line_id} already shipped; nothing waits")
                raise OrderRefusal(
                    f"order {self.order_id}: allocation of {item.quantity} units of line {line.line_id} "
                    f"({line.sku}), but only {line.units[L.backordered]} are backordered"
                    + (f" and {line.units[L.open]} not placed yet" if line.units[L.open] else "")
                )
        placed, surplus = self._placeable(allocation.lines, (L.backordered, L.open))
        if placed:
            self._takes_fulfillment()
        moves: list[Move] = []
        for line_id, n in placed.items():
            line = self.lines[line_id]
            from_queue = min(n, line.units[L.backordered])
            moves += [(line, from_queue, L.backordered, L.requested), (line, n - from_queue, L.open, L.requested)]
        self._move(moves)
        for line, n, from_state, _ in moves:
            if from_state is L.open and n:
                line.backorder = replace(line.backorder, entered=line.backorder.entered + n)
        fulfillment = self._add_fulfillment(
            allocation.fulfillment_id, allocation.source_code, allocation.lines, None, F.requested
        )
        for line_id, n in surplus.items():
            fulfillment.withdraw(line_id, n)
        self._release(fulfillment, surplus, UnitsFrom.reserved, cause)
        # A source needs a date to ship by; without one from inventory, the day the stock was allocated.
        fulfillment.ship_by = allocation.ship_by or cause.at.date()
        if not fulfillment.requestable():
            fulfillment.move(F.cancelled)
            return
        fulfillment.requested_at = cause.at
        self.events.append(FulfillmentRequested(fulfillment))
        self._follow_units(cause, f"fulfillment {fulfillment.fulfillment_id} requested from {fulfillment.source_code}")

    def reject_reservation(self, reservation: Reservation, reason: str, cause: Cause) -> None:
        """Inventory could not reserve a shipment (possibly before the plan arrived): routing re-plans its lines
        (from inventory's rejection, so nothing is asked of it here). Cancellations pending on it are done now:
        inventory holds nothing for those units."""
        if reservation.fulfillment_id not in self.fulfillments:
            if self.status in UNPAID:
                self._takes_fulfillment()  # nothing of an unpaid order is ever planned
            self._known_lines(reservation.lines)
            # Never placed here, so its units stay where they are (open): a fulfillment that holds none. (Also for an
            # order cancelled meanwhile: nothing is held, nothing moves.)
            fulfillment = self._add_fulfillment(
                reservation.fulfillment_id, reservation.source_code, reservation.lines, reservation.plan_id, F.planned
            )
            fulfillment.move(F.rejected)
            fulfillment.rejection = reason
            return
        self.reject_fulfillment(reservation.fulfillment_id, reservation.source_code, reason, cause, by_source=False)

    # -- what sources report ------------------------------------------------------------------------------------

    def accept_fulfillment(self, fulfillment_id: uuid.UUID, source_code: str, cause: Cause | None = None) -> None:
        """The source will ship. Stale acceptances (after a parcel or a rejection) change nothing."""
        fulfillment = self._fulfillment(fulfillment_id, source_code)
        if fulfillment.status is F.requested:
            fulfillment.move(F.accepted)
            fulfillment.accepted_at = cause.at if cause else None
            self.changed_fulfillments.add(fulfillment_id)
            self.changed = True

    def reject_fulfillment(
        self,
        fulfillment_id: uuid.UUID,
        source_code: str,
        reason: str,
        cause: Cause,
        *,
        by_source: bool = True,
        reason_code: str | None = None,
    ) -> None:
        """Inventory could not reserve, or the source refused: units pending cancellation on it are cancelled (and
        refunded: nothing of them will leave), the rest are open again for a re-plan, which the order asks of
        routing when the source refused (`ReplanAsked`; routing re-plans inventory's rejections by itself).
        `reason_code` is the source's (out_of_stock, damaged, ...), shown on the timeline."""
        fulfillment = self._fulfillment(fulfillment_id, source_code)
        if fulfillment.status in (F.rejected, F.cancelled):
            return
        if fulfillment.parcels:
            raise OrderRefusal(
                f"fulfillment {fulfillment_id} has shipped {len(fulfillment.parcels)} parcel(s); what is left of it is "
                "cancelled by the source (fulfillment.cancelled), not rejected"
            )
        planned = fulfillment.status is F.planned
        held = L.reserved if planned else L.requested
        fulfillment.move(F.rejected)
        fulfillment.rejection = reason
        fulfillment.to_release = {}  # nothing is reserved for a rejected fulfillment
        answered = fulfillment.take_pending_all()
        reopened = [
            ShipmentLine(x.line_id, x.sku, fulfillment.still_to_ship(x.line_id) - _units(answered, x.line_id))
            for x in _merged(fulfillment.lines)
        ]
        reopened = [x for x in reopened if x.quantity > 0]
        self._move([(self.lines[x.line_id], x.quantity, held, L.open) for x in reopened])
        self.changed_fulfillments.add(fulfillment_id)
        self.changed = True
        # Nothing of it was reserved (planned: inventory's rejection) or the source's rejection released it.
        self._settle(fulfillment, answered, held, UnitsFrom.open if planned else UnitsFrom.requested, cause)
        if by_source and reopened:
            self._replan(fulfillment, tuple(reopened), reason, cause, reason_code)
        self._follow_units(cause, f"{source_code} rejected fulfillment {fulfillment_id}")

    def cancel_at_source(
        self,
        fulfillment_id: uuid.UUID,
        source_code: str,
        lines: dict[str, int],
        reason: str | None,
        cause: Cause,
        *,
        reason_code: str | None = None,
    ) -> None:
        """The source will not ship these units (`fulfillment.cancelled`). As far as cancellations are pending for
        them, this is its answer: they are cancelled and refunded. The rest is the source's own decision (a shelf
        found empty): those units are open again and routing is asked to plan them elsewhere (`ReplanAsked`).
        Once nothing of the fulfillment is left to ship it is `cancelled`, or `shipped` when parcels of it left.
        Refused (nothing changes): an unknown fulfillment, another source, one that is not requested or accepted,
        a line not in it, more units than are still to ship on it (a repeated answer, say)."""
        fulfillment = self._fulfillment(fulfillment_id, source_code)
        if fulfillment.status not in SHIPPABLE:
            raise OrderRefusal(f"fulfillment {fulfillment_id} is {fulfillment.status}; nothing of it can be cancelled")
        in_it = {x.line_id: x for x in fulfillment.lines}
        for line_id, n in lines.items():
            if line_id not in in_it:
                raise OrderRefusal(f"fulfillment {fulfillment_id} has no line {line_id}")
            left = fulfillment.still_to_ship(line_id)
            if n > left:
                raise OrderRefusal(
                    f"fulfillment {fulfillment_id}: {source_code} cancels {n} units of line {line_id}, but only "
                    f"{left} of it are still to ship"
                )
        answered: list[PendingCancellation] = []
        reopened: list[ShipmentLine] = []
        for line_id, n in lines.items():
            taken = fulfillment.take_pending(line_id, n)
            answered += taken
            rest = n - sum(p.quantity for p in taken)
            if rest:
                reopened.append(ShipmentLine(line_id, in_it[line_id].sku, rest))
                fulfillment.withdraw(line_id, rest)
        self._move([(self.lines[x.line_id], x.quantity, L.requested, L.open) for x in reopened])
        self.changed_fulfillments.add(fulfillment_id)
        self.changed = True
        said = f"{source_code}: {reason}" if reason else f"{source_code} cancelled them"
        # The source's cancellation released what inventory held for these units.
        self._settle(fulfillment, answered, L.requested, UnitsFrom.requested, cause)
        if all(fulfillment.still_to_ship(x.line_id) == 0 for x in fulfillment.lines):
            if fulfillment.parcels:
                fulfillment.move(F.shipped)
                fulfillment.shipped_at = max(p.shipped_at for p in fulfillment.parcels)
            else:
                fulfillment.move(F.cancelled)
        if reopened:
            self._replan(fulfillment, tuple(reopened), said, cause, reason_code)
        self._follow_units(cause, f"{said}; the rest of the order shipped")

    def _replan(
        self,
        fulfillment: Fulfillment,
        lines: tuple[ShipmentLine, ...],
        reason: str,
        cause: Cause,
        reason_code: str | None = None,
    ) -> None:
        self.events.append(ReplanAsked(fulfillment, lines, reason))
        # The source's reason code says whether the units are still on its shelf (inventory acts on it): shown too.
        code = f" [{reason_code}]" if reason_code else ""
        self._record(
            EntryKind.replan_requested,
            cause,
            f"{_describe(lines)} open again, routing plans them without {fulfillment.source_code}: {reason}{code}",
            fulfillment_id=str(fulfillment.fulfillment_id),
            lines=_lines_detail(lines),
            **({"reason_code": reason_code} if reason_code else {}),
        )

    def ship_parcel(self, fulfillment_id: uuid.UUID, source_code: str, shipment: Shipment, cause: Cause) -> None:
        """A parcel left the source: part of the fulfillment or all that is left of it (`ParcelShipped`). Units that
        cancellations were pending for and that left anyway are refused to those cancellations ("already left"):
        their requesters are told.

        The same parcel reported again (same tracking number, same lines, even under a new event id) is the parcel
        already recorded and changes nothing. Refused: an unknown fulfillment or line, a fulfillment that is not
        requested or accepted, more units than are still to ship, a known tracking number with other lines."""
        fulfillment = self._fulfillment(fulfillment_id, source_code)
        quantities = shipment.lines
        if quantities is None:
            quantities = {x.line_id: fulfillment.still_to_ship(x.line_id) for x in _merged(fulfillment.lines)}
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
        # Units not pending cancellation leave first; only what the parcel holds beyond them left despite a request.
        left_anyway = [
            pending
            for line_id, n in quantities.items()
            for pending in fulfillment.take_pending(
                line_id, max(0, n - (fulfillment.still_to_ship(line_id) - fulfillment.pending_units(line_id)))
            )
        ]
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
        if left_anyway:
            self._turn_down(
                fulfillment,
                left_anyway,
                f"already left {source_code} (parcel {shipment.carrier} {shipment.tracking_number})",
                cause,
            )

    def deliver_fulfillment(
        self, fulfillment_id: uuid.UUID, source_code: str, delivered_at: datetime, cause: Cause
    ) -> None:
        """Every parcel of the fulfillment that has shipped is delivered (`FulfillmentDelivered`); the fulfillment is
        delivered once nothing of it is left to ship. Refused when nothing of it has shipped; repeated, it changes
        nothing. Units returned before their parcel was reported delivered stay returned."""
        fulfillment = self._fulfillment(fulfillment_id, source_code)
        if not fulfillment.parcels:
            raise OrderRefusal(f"fulfillment {fulfillment_id} is {fulfillment.status}; nothing of it has shipped")
        arrived = tuple(p for p in fulfillment.parcels if p.delivered_at is None)
        if not arrived:
            return
        arriving = Counter[str]()
        for parcel in arrived:
            for x in parcel.lines:
                arriving[x.line_id] += x.quantity
        self._move(
            [
                (self.lines[line_id], min(n, self.lines[line_id].units[L.shipped]), L.shipped, L.delivered)
                for line_id, n in arriving.items()
            ]
        )
        for parcel in arrived:
            parcel.delivered_at = delivered_at
        if fulfillment.status is F.shipped:
            fulfillment.move(F.delivered)
            fulfillment.delivered_at = delivered_at
        self.changed_fulfillments.add(fulfillment_id)
        self.changed = True
        self._follow_units(cause, "every shipped unit delivered")
        self.events.append(FulfillmentDelivered(fulfillment, arrived, self.status))

    # -- returns ----------------------------------------------------------------------------------------------------

    def receive_return(
        self, return_id: uuid.UUID, source_code: str, lines: list[ReturnedLine], reason: str, cause: Cause
    ) -> Return:
        """Units came back to `source_code` (`Returned`): only shipped or delivered units not returned yet, delivered
        ones first. Each is refunded (its price with its share of tax and discount, no shipping; all that is left of
        the payment when nothing of the order is kept), and the order is `refunded` once every unit is cancelled or
        returned. Refused (nothing changes): a line the order does not have, more units than shipped and not
        returned (a second return of the same units, say)."""
        asked = Counter[str]()
        for x in lines:
            asked[x.line_id] += x.quantity
        missing = [line_id for line_id in asked if line_id not in self.lines]
        if missing:
            raise UnknownLine(f"order {self.order_id} has no line {', '.join(missing)}")
        moves: list[Move] = []
        for line_id, n in asked.items():
            line = self.lines[line_id]
            out = sum(line.units[s] for s in RETURNABLE)
            if n > out:
                raise OrderRefusal(
                    f"order {self.order_id}: return of {n} units of line {line_id} ({line.sku}), but only {out} "
                    f"shipped and not returned"
                    + (f" ({line.units[L.returned]} returned already)" if line.units[L.returned] else "")
                )
            for state in RETURNABLE:
                take = min(n, line.units[state])
                moves.append((line, take, state, L.returned))
                n -= take
        self._move(moves)
        units = tuple((ShipmentLine(x.line_id, self.lines[x.line_id].sku, x.quantity), x.condition) for x in lines)
        back = tuple(_merged(x for x, _ in units))
        goods = sum((self.lines[x.line_id].unit_price * x.quantity for x in back), Decimal(0))
        value = money.share(self.submitted, goods).grand
        self._record(
            EntryKind.return_received,
            cause,
            f"{_describe(back)} came back to {source_code}: {reason}",
            return_id=str(return_id),
            source_code=source_code,
            lines=[{"line_id": x.line_id, "quantity": x.quantity, "condition": c} for x, c in units],
        )
        refund = self._refund(value, RefundCause.return_, reason, back, cause, cause.actor, return_id=return_id)
        received = Return(
            return_id, self.order_id, source_code, units, reason, refund.amount if refund else Decimal(0), cause.at
        )
        self.returns.append(received)
        self._follow_units(cause, f"every unit cancelled or returned: {reason}")
        self.events.append(Returned(received, refund))
        return received

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

    def _follow_units(self, cause: Cause, note: str, *, cancelled_note: str | None = None) -> None:
        """Move the status forward to what the units say (never back), along edges of the state machine: `cancelled`
        when every unit is cancelled, `refunded` when every unit is cancelled or returned."""
        units = self.units()
        total = units.total()
        if units[L.cancelled] == total:
            if S.cancelled in TRANSITIONS[self.status]:
                self.transition(S.cancelled, cause, cancelled_note or note)
            return
        if self.status not in FOLLOWS_UNITS:
            return
        live = total - units[L.cancelled]
        to_ship = sum(units[s] for s in TO_SHIP)
        has_shipped = sum(units[s] for s in HAS_SHIPPED)
        if units[L.returned] == live:
            target = S.refunded
        elif has_shipped and not to_ship:
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


def _merged_counts(items: Iterable[tuple[ShipmentLine, int]]) -> list[tuple[ShipmentLine, int]]:
    """(line, units) pairs with each line once."""
    merged: dict[str, tuple[ShipmentLine, int]] = {}
    for x, n in items:
        known = merged.get(x.line_id)
        merged[x.line_id] = (x, n + (known[1] if known else 0))
    return list(merged.values())


def _units(pending: Iterable[PendingCancellation], line_id: str) -> int:
    return sum(p.quantity for p in pending if p.line_id == line_id)


def _describe(lines: Iterable[ShipmentLine | CancelledUnits]) -> str:
    return ", ".join(f"{x.quantity}x {x.sku}" for x in lines)


def _lines_detail(lines: Iterable[ShipmentLine]) -> list[dict[str, Any]]:
    return [{"line_id": x.line_id, "sku": x.sku, "quantity": x.quantity} for x in lines]


def _plan_reason(cancelled: list[tuple[CancelledUnits, LineState]], reasons: dict[str, str]) -> str:
    """Why routing could not place these lines, in its words: one reason, or one per item."""
    said = {u.line_id: reasons.get(u.line_id) or "no source can fulfil it" for u, _ in cancelled}
    if len(set(said.values())) == 1:
        return next(iter(said.values()))
    return "; ".join(f"{u.sku}: {said[u.line_id]}" for u, _ in cancelled)


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
        status_since=cause.at,
        changed=True,
        new=True,
    )
    created = Transition(
        order_id,
        None,
        S.pending,
        cause.actor,
        f"accepted from {channel}",
        cause.at,
        cause.event_id,
        cause.trace_id,
        cause.type,
    )
    order.transitions.append(created)
    order.timeline.append(Entry.of(created))
    return order
