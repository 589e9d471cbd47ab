"""The order: its lifecycle, its lines, its fulfillments and the audit trail of every status change.

Pure: no I/O. Handlers load orders, call these methods, and save what changed. Every status change goes through
`Order.transition`, which refuses an edge the state machine does not allow and records the audit row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
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


class LineState(StrEnum):
    open = "open"
    reserved = "reserved"
    backordered = "backordered"
    requested = "requested"
    shipped = "shipped"
    delivered = "delivered"
    cancelled = "cancelled"
    returned = "returned"


class FulfillmentStatus(StrEnum):
    planned = "planned"  # routing chose the source; inventory has not reserved yet
    requested = "requested"  # reserved, and the request is on the source's topic
    accepted = "accepted"
    rejected = "rejected"  # by inventory (short) or by the source; routing re-plans the lines
    shipped = "shipped"
    delivered = "delivered"


class OrderRefusal(Exception):
    """A message asks for something this order cannot do; nothing changes."""


class InvalidTransition(OrderRefusal):
    def __init__(self, order_id: uuid.UUID, from_status: OrderStatus, to_status: OrderStatus) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[from_status])) or "nothing (final status)"
        super().__init__(
            f"order {order_id}: invalid transition {from_status} -> {to_status}; from {from_status} only: {allowed}"
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


@dataclass(slots=True)
class Line:
    line_id: str
    sku: str
    quantity: int
    unit_price: Decimal
    state: LineState = LineState.open


@dataclass(frozen=True, slots=True)
class ShipmentLine:
    line_id: str
    sku: str
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
    carrier: str | None = None
    service: str | None = None
    tracking_number: str | None = None
    tracking_url: str | None = None
    requested_at: datetime | None = None
    shipped_at: datetime | None = None
    delivered_at: datetime | None = None
    rejection: str | None = None


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

    # -- payments -----------------------------------------------------------------------------------------------

    def authorize_payment(self, amount: Decimal, currency: str, cause: Cause) -> None:
        """An authorization starts payment processing; once past `pending` it changes nothing."""
        self._check_amount(amount, currency, "authorized")
        if self.status is S.pending:
            self.transition(S.payment_processing, cause, f"payment of {amount} {currency} authorized")
        elif self.status is S.cancelled:
            raise OrderRefusal(f"order {self.order_id} is cancelled; void the authorization of {amount} {currency}")

    def capture_payment(self, amount: Decimal, currency: str, payment_ref: str, cause: Cause) -> bool:
        """A capture of the full total makes the order paid. True when this capture paid the order (a repeated
        capture of an already paid order changes nothing)."""
        self._check_amount(amount, currency, "captured")
        if self.status is S.cancelled:
            raise OrderRefusal(f"order {self.order_id} is cancelled; refund the capture {payment_ref}")
        if self.status not in (S.pending, S.payment_processing):
            return False
        if self.status is S.pending:
            self.transition(S.payment_processing, cause, f"payment {payment_ref} captured")
        self.transition(S.paid, cause, f"{amount} {currency} captured ({payment_ref})")
        self.paid_amount, self.payment_ref = amount, payment_ref
        return True

    def fail_payment(self, reason: str, cause: Cause) -> None:
        if self.status not in (S.pending, S.payment_processing):
            raise OrderRefusal(f"order {self.order_id} is {self.status}; a payment failure cannot cancel it now")
        self.transition(S.cancelled, cause, f"payment failed: {reason}")
        for line in self.lines.values():
            line.state = LineState.cancelled

    def cancel_before_payment(self, reason: str, cause: Cause) -> None:
        """A whole-order cancellation while no money is captured and nothing is reserved."""
        if self.status not in (S.pending, S.payment_processing):
            raise OrderRefusal(
                f"order {self.order_id} is {self.status}: cancelling after payment needs the refund flow, "
                "which this version does not have yet"
            )
        self.transition(S.cancelled, cause, f"cancelled: {reason}")
        for line in self.lines.values():
            line.state = LineState.cancelled

    def _check_amount(self, amount: Decimal, currency: str, what: str) -> None:
        if currency != self.currency or amount != self.grand_total:
            raise OrderRefusal(
                f"order {self.order_id}: {what} {amount} {currency} does not match the order total "
                f"{self.grand_total} {self.currency}"
            )

    # -- fulfillment --------------------------------------------------------------------------------------------

    def apply_plan(
        self,
        plan_id: uuid.UUID,
        shipments: list[PlannedShipment],
        backordered: list[ShipmentLine],
        unfulfillable: list[ShipmentLine],
        cause: Cause,
    ) -> None:
        """Record routing's plan: a planned fulfillment per shipment; backordered and unfulfillable lines marked."""
        self._takes_fulfillment()
        for shipment in shipments:
            self._known_lines(shipment.lines)
            known = self.fulfillments.get(shipment.shipment_id)
            if known is None:
                known = self._add_fulfillment(shipment.shipment_id, shipment.source_code, shipment.lines, plan_id)
            # Inventory's answer travels on another topic and may have arrived first: keep its status, add the plan's
            # dates and reason.
            known.ship_by = known.ship_by or shipment.ship_by
            known.estimated_delivery, known.reason = shipment.estimated_delivery, shipment.reason
            self.changed_fulfillments.add(shipment.shipment_id)
        for line in self._known_lines(backordered):
            line.state = LineState.backordered
        for line in self._known_lines(unfulfillable):
            line.state = LineState.cancelled
        self.changed = True
        if self.status is S.paid and not shipments:
            if all(line.state is LineState.cancelled for line in self.lines.values()):
                self.transition(S.cancelled, cause, "no source can fulfil any line")
            else:
                self.transition(S.awaiting_fulfillment, cause, "every line backordered until stock arrives")

    def request_fulfillment(self, reservation: Reservation, cause: Cause) -> Fulfillment | None:
        """Inventory reserved a planned shipment: it becomes a request to its source. None when already requested.

        The reservation may overtake the plan (another topic); it carries what the request needs."""
        fulfillment = self.fulfillments.get(reservation.fulfillment_id)
        if fulfillment is None:
            self._takes_fulfillment()
            self._known_lines(reservation.lines)
            fulfillment = self._add_fulfillment(
                reservation.fulfillment_id, reservation.source_code, reservation.lines, reservation.plan_id
            )
        if fulfillment.status is not FulfillmentStatus.planned:
            return None
        fulfillment.ship_by = fulfillment.ship_by or reservation.ship_by
        fulfillment.status = FulfillmentStatus.requested
        fulfillment.requested_at = cause.at
        self.changed_fulfillments.add(fulfillment.fulfillment_id)
        for line in self._known_lines(fulfillment.lines):
            line.state = LineState.requested
        self.changed = True
        if self.status is S.paid:
            note = f"fulfillment {fulfillment.fulfillment_id} requested from {fulfillment.source_code}"
            self.transition(S.awaiting_fulfillment, cause, note)
        return fulfillment

    def reject_reservation(self, reservation: Reservation, reason: str, cause: Cause) -> None:
        """Inventory could not reserve a shipment (possibly before the plan arrived): routing re-plans its lines."""
        if reservation.fulfillment_id not in self.fulfillments:
            self._takes_fulfillment()
            self._known_lines(reservation.lines)
            self._add_fulfillment(
                reservation.fulfillment_id, reservation.source_code, reservation.lines, reservation.plan_id
            )
        self.reject_fulfillment(reservation.fulfillment_id, reason, cause)

    def reject_fulfillment(self, fulfillment_id: uuid.UUID, reason: str, cause: Cause) -> None:
        """Inventory could not reserve, or the source refused: the lines wait for routing's re-plan."""
        fulfillment = self._fulfillment(fulfillment_id)
        if fulfillment.status in (FulfillmentStatus.shipped, FulfillmentStatus.delivered):
            raise OrderRefusal(f"fulfillment {fulfillment_id} already {fulfillment.status}; it cannot be rejected")
        if fulfillment.status is FulfillmentStatus.rejected:
            return
        fulfillment.status = FulfillmentStatus.rejected
        fulfillment.rejection = reason
        self.changed_fulfillments.add(fulfillment_id)
        for line in self._known_lines(fulfillment.lines):
            line.state = LineState.open
        self.changed = True

    def accept_fulfillment(self, fulfillment_id: uuid.UUID) -> None:
        fulfillment = self._fulfillment(fulfillment_id)
        if fulfillment.status is FulfillmentStatus.requested:
            fulfillment.status = FulfillmentStatus.accepted
            self.changed_fulfillments.add(fulfillment_id)
            self.changed = True

    def ship_fulfillment(self, fulfillment_id: uuid.UUID, shipment: Shipment, cause: Cause) -> None:
        """The source shipped: record carrier and tracking; the order is fulfilled once every live line shipped."""
        fulfillment = self._fulfillment(fulfillment_id)
        if fulfillment.status in (FulfillmentStatus.shipped, FulfillmentStatus.delivered):
            return
        if fulfillment.status not in (FulfillmentStatus.requested, FulfillmentStatus.accepted):
            raise OrderRefusal(f"fulfillment {fulfillment_id} is {fulfillment.status}; it cannot ship")
        fulfillment.status = FulfillmentStatus.shipped
        fulfillment.carrier, fulfillment.service = shipment.carrier, shipment.service
        fulfillment.tracking_number, fulfillment.tracking_url = shipment.tracking_number, shipment.tracking_url
        fulfillment.shipped_at = shipment.shipped_at
        self.changed_fulfillments.add(fulfillment_id)
        for line in self._known_lines(fulfillment.lines):
            line.state = LineState.shipped
        self.changed = True
        live = [line for line in self.lines.values() if line.state is not LineState.cancelled]
        everything_shipped = all(line.state in (LineState.shipped, LineState.delivered) for line in live)
        target = S.fulfilled if everything_shipped else S.partially_fulfilled
        if target is not self.status:
            note = f"{fulfillment.source_code} shipped {shipment.carrier} {shipment.tracking_number}"
            self.transition(target, cause, note)

    def deliver_fulfillment(self, fulfillment_id: uuid.UUID, delivered_at: datetime, cause: Cause) -> None:
        fulfillment = self._fulfillment(fulfillment_id)
        if fulfillment.status is FulfillmentStatus.delivered:
            return
        if fulfillment.status is not FulfillmentStatus.shipped:
            raise OrderRefusal(f"fulfillment {fulfillment_id} is {fulfillment.status}; only a shipment is delivered")
        fulfillment.status = FulfillmentStatus.delivered
        fulfillment.delivered_at = delivered_at
        self.changed_fulfillments.add(fulfillment_id)
        for line in self._known_lines(fulfillment.lines):
            line.state = LineState.delivered
        self.changed = True
        shipped = [f for f in self.fulfillments.values() if f.status is not FulfillmentStatus.rejected]
        if self.status is S.fulfilled and all(f.status is FulfillmentStatus.delivered for f in shipped):
            self.transition(S.delivered, cause, "every shipment delivered")

    def _takes_fulfillment(self) -> None:
        if self.status not in (S.paid, S.awaiting_fulfillment, S.partially_fulfilled):
            raise OrderRefusal(f"order {self.order_id} is {self.status}; it takes no fulfillment")

    def _add_fulfillment(
        self, fulfillment_id: uuid.UUID, source_code: str, lines: Any, plan_id: uuid.UUID | None
    ) -> Fulfillment:
        fulfillment = Fulfillment(
            fulfillment_id=fulfillment_id,
            order_id=self.order_id,
            source_code=source_code,
            lines=tuple(lines),
            status=FulfillmentStatus.planned,
            plan_id=plan_id,
        )
        self.fulfillments[fulfillment_id] = fulfillment
        self.changed_fulfillments.add(fulfillment_id)
        self.changed = True
        return fulfillment

    def _fulfillment(self, fulfillment_id: uuid.UUID) -> Fulfillment:
        try:
            return self.fulfillments[fulfillment_id]
        except KeyError:
            raise OrderRefusal(f"order {self.order_id} has no fulfillment {fulfillment_id}") from None

    def _known_lines(self, lines: Any) -> list[Line]:
        found = []
        for item in lines:
            line = self.lines.get(item.line_id)
            if line is None or line.sku != item.sku:
                raise OrderRefusal(f"order {self.order_id} has no line {item.line_id} of {item.sku}")
            found.append(line)
        return found


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
class Shipment:
    carrier: str
    service: str | None
    tracking_number: str
    tracking_url: str | None
    shipped_at: datetime


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
