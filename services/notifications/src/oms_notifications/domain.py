"""What the notifications service decides, without I/O: which message an event calls for and to whom, what goes
into it, in which language, in which order an order's messages go out, and how one message moves from pending to
sent or failed (with retries on a capped exponential schedule), and when its outcome is unknown.

Which event calls for which message (`template_for`):
- `order.accepted` -> the order confirmation, to the customer the order names;
- the FIRST plan of an order (attempt 1) with more than one shipment -> the split pre-warning (how many parcels,
  what is in each, when each should arrive, what follows later); a re-plan never warns again;
- `inventory.backorder_queued` -> the backorder notice (which items wait, when they are expected, that the
  customer may cancel them);
- `order.fulfillment_shipped` -> a shipped mail for that parcel (its items, what is still to come, tracking);
- `order.fulfillment_delivered` -> a delivered mail;
- `order.lines_cancelled` -> the lines cancelled mail (items, refund, new total), or "order cancelled" when nothing
  is left of the order (its `status` after it is cancelled); but not the order service's give-back of units
  cancelled before a plan or allocation placed them (`is_give_back`): the customer was told of that cancellation;
- `order.status_changed` to cancelled -> "payment failed" when a failed payment caused it, "order cancelled" when
  the order was cancelled before it was paid; a paid order's cancellation is told by its `lines_cancelled`
  (see `template_for`);
- `order.refund_issued` -> the refund mail (amount, everything refunded so far); a refund of nothing is not told;
- `order.lines_returned` -> "return processed" (items, their condition, the refund);
- `order.cancellation_rejected` -> "cancellation refused" (which items, why), when the customer or a channel asked;
  customer service sees its own refusals in its tool.

And to the operators (`alert`), outside any order's story: `order.stuck` and `inventory.low_stock`.

Every customer message but the confirmation goes to the contact remembered from the order's acceptance. Topics
overtake each other (a plan may be consumed before its order's acceptance), so an event whose order has no contact yet
is not a refusal: it waits for the contact (`tell` says which) and makes its message when the contact arrives.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

from oms_contracts.channel import PaymentFailed
from oms_contracts.common import Line, LineQuantity
from oms_contracts.inventory import BackorderQueued, LowStock
from oms_contracts.notification import NotificationChannel
from oms_contracts.order import (
    CancellationRejected,
    LinesCancelled,
    LinesCancelledData,
    LinesReturned,
    OrderAccepted,
    OrderAcceptedData,
    OrderFulfillmentDelivered,
    OrderFulfillmentShipped,
    OrderStatus,
    OrderStuck,
    RefundIssued,
    StatusChanged,
)
from oms_contracts.routing import FulfillmentPlanned
from oms_runtime import links as signed_links

# notification_id = UUIDv5(NOTIFICATION_NAMESPACE, "{cause_event_id}:{template}"): the same event never yields two
# messages with the same template, and a resent mail keeps its Message-ID so a mail system can drop the copy.
NOTIFICATION_NAMESPACE = uuid.UUID("0b3d9a5e-6f1c-4d3e-8b7a-2e5c9f4a1d60")

# The longest error text kept on a notification (what notification.failed.v1 can carry).
MAX_ERROR_LENGTH = 2000


class Template(StrEnum):
    order_confirmation = "order_confirmation"
    split_prewarning = "split_prewarning"
    backorder_notice = "backorder_notice"
    shipped = "shipped"
    delivered = "delivered"
    lines_cancelled = "lines_cancelled"
    order_cancelled = "order_cancelled"
    payment_failed = "payment_failed"
    cancellation_refused = "cancellation_refused"
    return_processed = "return_processed"
    refund_issued = "refund_issued"
    # To the operators
    order_stuck = "order_stuck"
    low_stock = "low_stock"


class Audience(StrEnum):
    """Who a message is for: the order's customer (in the order of its story), or the operators (at once)."""

    customer = "customer"
    operators = "operators"


OPERATOR_TEMPLATES = frozenset({Template.order_stuck, Template.low_stock})

# The messages that tell a customer their whole order is cancelled: one per order at most (see `template_for`; the
# store holds it with a unique index too).
ORDER_CANCELLED_TEMPLATES = frozenset({Template.order_cancelled, Template.payment_failed})

# Where each message stands in the story of one order. An order's messages go out in this order, and within a
# stage in the order their causes happened (`Notice.sequence`): the confirmation always first, even when the plan
# was consumed before the acceptance; a pre-warning before the backorder notice of the same plan, whatever the
# clocks of routing and inventory say; parcels shipped and delivered, cancellations, refusals and returns as they
# happened; a refund after what it pays for, even when both were published at the same instant. Operators' messages
# stand outside every story: their stage is never compared.
STAGES: Mapping[Template, int] = {
    Template.order_confirmation: 0,
    Template.split_prewarning: 1,
    Template.backorder_notice: 2,
    Template.shipped: 3,
    Template.delivered: 3,
    Template.lines_cancelled: 3,
    Template.order_cancelled: 3,
    Template.payment_failed: 3,
    Template.cancellation_refused: 3,
    Template.return_processed: 3,
    Template.refund_issued: 4,
    Template.order_stuck: 0,
    Template.low_stock: 0,
}

# Statuses in which nothing has been paid: a cancellation then refunds nothing and may come without lines_cancelled.
UNPAID = frozenset({OrderStatus.pending, OrderStatus.payment_processing})

# The order service's own actor. It cancels nothing on its own account: a `lines_cancelled` it signs with nothing
# refunded and no cancellation behind it only gives inventory back what a plan or an allocation placed after the units
# were cancelled (docs/architecture.md, "Messages overtaken by a cancellation").
ORDER_SERVICE = "service:order"

# Who may be told that their cancellation was refused by mail: the customer (`customer:...`, the signed link) or a
# channel on the customer's behalf (`channel:...`). Customer service sees refusals in its own tool.
TOLD_OF_REFUSALS = ("customer:", "channel:")


class Language(StrEnum):
    en = "en"
    de = "de"


def language_of(locale: str) -> Language:
    """German for a German locale (`de`, `de-DE`, `de_AT`), English for every other: the languages we write in."""
    if locale[:2].lower() == "de" and locale[2:3] in ("", "-", "_"):
        return Language.de
    return Language.en


class Status(StrEnum):
    pending = "pending"  # waiting for its first or next try
    sending = "sending"  # claimed by a sender: being handed to the mail server, its outcome not recorded yet
    sent = "sent"
    failed = "failed"
    # The sender lost track of a try that may have reached the mail server (it stopped between handing the message
    # over and recording the answer, or the connection broke after the message went out): never tried again, so
    # that no customer gets a mail twice; an operator finds it by this status.
    unknown = "unknown"


# A message in one of these states is never tried again.
FINAL = frozenset({Status.sent, Status.failed, Status.unknown})


class Outcome(StrEnum):
    """How one try to hand a message to the mail server ended."""

    delivered = "delivered"
    transient = "transient"  # worth another try later: server unreachable, timed out, 4xx
    permanent = "permanent"  # another try would fail the same way: 5xx, an address that cannot be sent to
    unknown = "unknown"  # the server may have taken it: a retry could send it twice


@dataclass(frozen=True, slots=True)
class Contact:
    """Who to tell about an order, remembered from its acceptance for the notifications that follow, with the SKU of
    each of its lines (events after the sale name lines by id; a customer knows them by what they are)."""

    order_id: uuid.UUID
    email: str
    name: str
    locale: str
    channel: str
    external_order_id: str
    line_skus: Mapping[str, str] = field(default_factory=dict)


# The events that may call for a message to a customer.
Cause = (
    OrderAccepted
    | FulfillmentPlanned
    | BackorderQueued
    | OrderFulfillmentShipped
    | OrderFulfillmentDelivered
    | LinesCancelled
    | StatusChanged
    | RefundIssued
    | LinesReturned
    | CancellationRejected
)

# The events that call for a message to the operators.
Alarm = OrderStuck | LowStock


@dataclass(frozen=True, slots=True)
class Links:
    """Where a message may point: the order service's public address (the customer's wait-or-cancel page, an
    order's single view for operators) and the key that signs a customer's links (none: the notice has no link)."""

    order_url: str = "http://127.0.0.1:8081"
    key: bytes | None = field(default=None, repr=False)
    lifetime: timedelta = timedelta(days=14)

    def wait_or_cancel(self, order_id: uuid.UUID, line_ids: Iterable[str], issued_at: datetime) -> str | None:
        """The signed page where the customer chooses to wait for these backordered lines or cancel them; valid for
        `lifetime` from when the backorder was queued (so the same event always makes the same link)."""
        if self.key is None:
            return None
        params = signed_links.query(self.key, order_id, line_ids, issued_at + self.lifetime)
        return f"{self.base}/customer/orders/{order_id}/backorders?{urlencode(params, safe=',')}"

    def order_view(self, order_id: uuid.UUID) -> str:
        """The order's single view in the order service (an operator's bearer token reads it)."""
        return f"{self.base}/orders/{order_id}"

    @property
    def base(self) -> str:
        return self.order_url.rstrip("/")


NO_LINKS = Links()


@dataclass(frozen=True, slots=True)
class Notice:
    """A message decided on but not rendered yet: which template, to whom, about what, with which values."""

    notification_id: uuid.UUID
    order_id: uuid.UUID | None
    cause_event_id: uuid.UUID
    template: Template
    channel: NotificationChannel
    recipient: str
    recipient_name: str
    locale: str
    values: Mapping[str, Any]
    # When the cause happened: orders the messages of one stage (see STAGES).
    cause_at: datetime

    @property
    def stage(self) -> int:
        return STAGES[self.template]

    @property
    def audience(self) -> Audience:
        return Audience.operators if self.template in OPERATOR_TEMPLATES else Audience.customer

    @property
    def language(self) -> Language:
        return language_of(self.locale)


@dataclass(frozen=True, slots=True)
class AwaitingContact:
    """An event that calls for a message about an order whose contact is not known yet."""

    event: Cause
    template: Template

    @property
    def order_id(self) -> uuid.UUID:
        return self.event.data.order_id


@dataclass(frozen=True, slots=True)
class Told:
    """What a batch of events calls for: messages ready to render, and events that wait for their order's contact."""

    notices: list[Notice]
    awaiting_contact: list[AwaitingContact]


def notification_id(cause_event_id: uuid.UUID, template: Template) -> uuid.UUID:
    return uuid.uuid5(NOTIFICATION_NAMESPACE, f"{cause_event_id}:{template.value}")


def contact_of(order: OrderAcceptedData) -> Contact:
    return Contact(
        order_id=order.order_id,
        email=str(order.customer.email),
        name=order.customer.name,
        locale=order.customer.locale,
        channel=order.channel,
        external_order_id=order.external_order_id,
        line_skus={line.line_id: line.sku for line in order.lines},
    )


def latest_contacts(contacts: Iterable[Contact]) -> list[Contact]:
    """One contact per order, the last one seen winning: a batch may carry the same order twice."""
    return list({contact.order_id: contact for contact in contacts}.values())


# Every event type template_for may answer for: the consumers skip the others unread (by their ce-type header).
CALLED_FOR = (
    OrderAccepted,
    FulfillmentPlanned,
    BackorderQueued,
    OrderFulfillmentShipped,
    OrderFulfillmentDelivered,
    LinesCancelled,
    StatusChanged,
    RefundIssued,
    LinesReturned,
    CancellationRejected,
    OrderStuck,
    LowStock,
)


# Of the status changes, those a template may be for (see template_for): the others are passed over unread.
STATUSES_CALLED_FOR = frozenset({OrderStatus.cancelled})


def is_give_back(cancelled: LinesCancelledData) -> bool:
    """Units already cancelled (and mailed, with their refund), given back to inventory because a plan or an
    allocation placed them after the cancellation: no news to the customer, who would read it as a second "items
    cancelled" with nothing refunded."""
    return cancelled.actor == ORDER_SERVICE and cancelled.refund_amount == 0 and cancelled.cancellation_id is None


def template_for(event: object) -> Template | None:
    """The message an event calls for, if any (see the module's docstring).

    One cancellation of a whole order is told once. After payment the order service cancels an order only by
    cancelling its units, so the cancellation arrives as `lines_cancelled` with the order's status after it
    `cancelled`, and that event carries "order cancelled": it has what the customer needs (the items, the refund),
    which the `status_changed` beside it lacks; that status change is skipped. Before payment a cancellation may
    come as a status change alone (a channel cancelling the whole order, a failed payment): there the status
    change carries it, as "payment failed" when its cause was a failed payment. Should an unpaid order's
    cancellation come both ways, the store keeps the first message of the two (one per order)."""
    match event:
        case OrderAccepted():
            return Template.order_confirmation
        case FulfillmentPlanned(data=plan) if plan.attempt == 1 and len(plan.shipments) > 1:
            return Template.split_prewarning
        case BackorderQueued():
            return Template.backorder_notice
        case OrderFulfillmentShipped():
            return Template.shipped
        case OrderFulfillmentDelivered():
            return Template.delivered
        case LinesCancelled(data=cancelled) if is_give_back(cancelled):
            return None
        case LinesCancelled(data=cancelled):
            return Template.order_cancelled if cancelled.status is OrderStatus.cancelled else Template.lines_cancelled
        case StatusChanged(data=change) if change.to_status is OrderStatus.cancelled:
            if change.cause_type == PaymentFailed.TYPE:
                return Template.payment_failed
            if change.from_status is None or change.from_status in UNPAID:
                return Template.order_cancelled
        case RefundIssued(data=refund) if refund.amount > 0:
            return Template.refund_issued
        case LinesReturned():
            return Template.return_processed
        case CancellationRejected(data=refusal) if refusal.requested_by.startswith(TOLD_OF_REFUSALS):
            return Template.cancellation_refused
        case OrderStuck():
            return Template.order_stuck
        case LowStock():
            return Template.low_stock
    return None


def tell(events: Iterable[Cause], contacts: Mapping[uuid.UUID, Contact], links: Links = NO_LINKS) -> Told:
    """The messages `events` call for, each to its order's contact in `contacts`; the confirmation goes to the
    customer its acceptance names. An event about an order without a known contact waits for it (never dropped).
    Operators' messages are `alert`'s."""
    notices: list[Notice] = []
    awaiting: list[AwaitingContact] = []
    # One "your order is cancelled" per order, also when a batch holds both events of an unpaid order's cancellation.
    cancelled: set[uuid.UUID] = set()
    for event in events:
        template = template_for(event)
        if template is None or template in OPERATOR_TEMPLATES:
            continue
        if isinstance(event, OrderAccepted):
            notices.append(order_confirmation(event))
            continue
        order_id = event.data.order_id
        if template in ORDER_CANCELLED_TEMPLATES:
            if order_id in cancelled:
                continue
            cancelled.add(order_id)
        contact = contacts.get(order_id)
        if contact is None:
            awaiting.append(AwaitingContact(event, template))
        else:
            notices.append(_WRITERS[template](event, contact, links))
    return Told(notices, awaiting)


def alert(
    events: Iterable[object], operators: Sequence[str], links: Links, contacts: Mapping[uuid.UUID, Contact]
) -> list[Notice]:
    """The operators' messages `events` call for: one each, to every operator at once. None when no operator is
    configured. An order's contact, when known, only names its order number: an alert never waits for it."""
    if not operators:
        return []
    notices = []
    for event in events:
        match event:
            case OrderStuck():
                notices.append(order_stuck(event, operators, links, contacts.get(event.data.order_id)))
            case LowStock():
                notices.append(low_stock(event, operators))
    return notices


def _notice(event: Cause, template: Template, contact: Contact, values: Mapping[str, Any]) -> Notice:
    return Notice(
        notification_id=notification_id(event.id, template),
        order_id=contact.order_id,
        cause_event_id=event.id,
        template=template,
        channel=NotificationChannel.email,
        recipient=contact.email,
        recipient_name=contact.name,
        locale=contact.locale,
        values={"order_number": contact.external_order_id, "customer_name": contact.name, **values},
        cause_at=event.time,
    )


def _items(lines: Iterable[Line]) -> list[dict[str, Any]]:
    return [{"sku": line.sku, "quantity": line.quantity} for line in lines]


def order_confirmation(event: OrderAccepted) -> Notice:
    """The customer's confirmation of an accepted order: what they bought, what it costs, where it goes."""
    order = event.data
    address = order.shipping_address
    values = {
        "order_id": str(order.order_id),
        "channel": order.channel,
        "placed_at": order.placed_at,
        "currency": order.currency,
        "lines": [
            {
                "sku": line.sku,
                "quantity": line.quantity,
                "unit_price": line.unit_price,
                "line_total": line.unit_price * line.quantity,
            }
            for line in order.lines
        ],
        "subtotal": order.subtotal,
        "shipping_total": order.shipping_total,
        "tax_total": order.tax_total,
        "discount_total": order.discount_total,
        "grand_total": order.grand_total,
        # The method's name is the templates' business: each language says it in its own words.
        "shipping_method": order.shipping_method.value,
        "pickup_source": order.pickup_source,
        "shipping_address": {
            "name": address.name,
            "lines": [
                part
                for part in (
                    address.line1,
                    address.line2,
                    " ".join(p for p in (address.postal_code, address.city) if p),
                    address.region,
                    address.country,
                )
                if part
            ],
        },
    }
    return _notice(event, Template.order_confirmation, contact_of(order), values)


def split_prewarning(event: FulfillmentPlanned, contact: Contact, links: Links = NO_LINKS) -> Notice:
    """Before the first parcel leaves: the order comes in several parcels, what is in each and when each should
    arrive (earliest first), what follows later, and what cannot be supplied at all."""
    plan = event.data
    shipments = sorted(plan.shipments, key=lambda s: s.estimated_delivery_date)
    values = {
        "parcels": [{"contents": _items(s.lines), "estimated_delivery": s.estimated_delivery_date} for s in shipments],
        "to_follow": _items(plan.backordered_lines),
        "not_supplied": _items(plan.unfulfillable_lines),
    }
    return _notice(event, Template.split_prewarning, contact, values)


def backorder_notice(event: BackorderQueued, contact: Contact, links: Links = NO_LINKS) -> Notice:
    """Items wait for stock: which, when they are expected (when known), and the signed link where the customer
    chooses to wait or cancel them (without a link key: that they may reply to cancel)."""
    lines = event.data.lines
    cancel_url = links.wait_or_cancel(event.data.order_id, [line.line_id for line in lines], event.time)
    values = {
        "items": [{"sku": line.sku, "quantity": line.quantity, "expected": line.expected_date} for line in lines],
        "cancel_url": cancel_url,
        "cancel_until": event.time + links.lifetime if cancel_url else None,
    }
    return _notice(event, Template.backorder_notice, contact, values)


def shipped(event: OrderFulfillmentShipped, contact: Contact, links: Links = NO_LINKS) -> Notice:
    """A parcel left: what is in it, what is still to come, and how to follow it."""
    parcel = event.data
    values = {
        "items": _items(parcel.lines),
        "to_come": _items(parcel.to_come),
        "carrier": parcel.carrier,
        "service": parcel.service,
        "tracking_number": parcel.tracking_number,
        "tracking_url": str(parcel.tracking_url) if parcel.tracking_url else None,
    }
    return _notice(event, Template.shipped, contact, values)


class Rest(StrEnum):
    """What is left of an order after a delivery, as the delivered mail tells it."""

    nothing = "nothing"  # every unit delivered: the order is complete
    on_its_way = "on_its_way"  # everything shipped, other parcels still travelling
    to_ship = "to_ship"  # some units have not shipped yet


def delivered(event: OrderFulfillmentDelivered, contact: Contact, links: Links = NO_LINKS) -> Notice:
    """A shipment arrived: what was in it, and whether the rest of the order is still on its way or to ship."""
    delivery = event.data
    if delivery.status is OrderStatus.delivered:
        rest = Rest.nothing
    elif delivery.status is OrderStatus.fulfilled:
        rest = Rest.on_its_way
    else:
        rest = Rest.to_ship
    values = {
        "items": _items(delivery.lines),
        "tracking_numbers": list(delivery.tracking_numbers),
        "rest": rest.value,
    }
    return _notice(event, Template.delivered, contact, values)


def _named(
    lines: Iterable[LineQuantity], contact: Contact, known: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Lines named by id, as items a customer recognises: the SKU the event gives, else the one the order was
    accepted with, else (a contact remembered before SKUs were) the line's id."""
    known = known or {}
    return [
        {
            "sku": known.get(line.line_id) or contact.line_skus.get(line.line_id) or f"#{line.line_id}",
            "quantity": line.quantity,
        }
        for line in lines
    ]


def _reason(note: str | None, said: str) -> str | None:
    """The reason in a status change's note. The order service writes notes for its timeline, starting with what
    happened ("payment failed: card declined"); the mail's sentence already says that part."""
    if not note:
        return None
    head, sep, rest = note.partition(":")
    if sep and head.strip().lower() == said:
        return rest.strip() or None
    return note


def lines_cancelled(event: LinesCancelled, contact: Contact, links: Links = NO_LINKS) -> Notice:
    """Some items are cancelled: which, why, what is refunded for them (nothing when nothing was paid), and what
    the order costs now."""
    data = event.data
    values = {
        "items": _named(data.lines, contact, {unit.line_id: unit.sku for unit in data.units}),
        "reason": data.reason,
        "refund": data.refund_amount,
        "grand_total": data.grand_total,
        "currency": data.currency,
    }
    return _notice(event, Template.lines_cancelled, contact, values)


def order_cancelled(event: LinesCancelled | StatusChanged, contact: Contact, links: Links = NO_LINKS) -> Notice:
    """The whole order is cancelled: why, and the refund when something was paid. From the last units cancelled,
    or from a status change before payment (which refunds nothing)."""
    match event:
        case LinesCancelled(data=data):
            values = {
                "items": _named(data.lines, contact, {unit.line_id: unit.sku for unit in data.units}),
                "reason": data.reason,
                "refund": data.refund_amount,
                "currency": data.currency,
            }
        case StatusChanged(data=data):
            values = {"items": [], "reason": _reason(data.note, "cancelled"), "refund": None, "currency": None}
    return _notice(event, Template.order_cancelled, contact, values)


def payment_failed(event: StatusChanged, contact: Contact, links: Links = NO_LINKS) -> Notice:
    """The payment failed, so the order is cancelled: why (the payment provider's words); nothing was charged."""
    return _notice(event, Template.payment_failed, contact, {"reason": _reason(event.data.note, "payment failed")})


def cancellation_refused(event: CancellationRejected, contact: Contact, links: Links = NO_LINKS) -> Notice:
    """Items the customer asked to cancel that could not be: which, and why (they already left)."""
    values = {"items": _named(event.data.lines, contact), "reason": event.data.reason}
    return _notice(event, Template.cancellation_refused, contact, values)


def return_processed(event: LinesReturned, contact: Contact, links: Links = NO_LINKS) -> Notice:
    """A return arrived and was accepted: the items with the condition they came back in, and the refund."""
    data = event.data
    values = {
        "items": [
            {"sku": line.sku, "quantity": line.quantity, "condition": line.condition.value} for line in data.lines
        ],
        "refund": data.refund_amount,
        "currency": data.currency,
    }
    return _notice(event, Template.return_processed, contact, values)


def refund_issued(event: RefundIssued, contact: Contact, links: Links = NO_LINKS) -> Notice:
    """Money goes back to the customer: how much, what for (a cancellation or a return), and how much in all."""
    data = event.data
    values = {
        "amount": data.amount,
        "currency": data.currency,
        "cause": data.cause.value if data.cause else None,
        "refunded_total": data.refunded_total,
    }
    return _notice(event, Template.refund_issued, contact, values)


def _operators_notice(
    event: Alarm, template: Template, operators: Sequence[str], order_id: uuid.UUID | None, values: Mapping[str, Any]
) -> Notice:
    return Notice(
        notification_id=notification_id(event.id, template),
        order_id=order_id,
        cause_event_id=event.id,
        template=template,
        channel=NotificationChannel.email,
        # One mail to every operator: the same alert in each inbox, recorded once.
        recipient=", ".join(operators),
        recipient_name=None,
        locale=Language.en.value,
        values=values,
        cause_at=event.time,
    )


def order_stuck(event: OrderStuck, operators: Sequence[str], links: Links, contact: Contact | None) -> Notice:
    """An order sits without progress: what has not happened, for how long, and where to look at it."""
    data = event.data
    values = {
        "order_id": str(data.order_id),
        "order_number": contact.external_order_id if contact else None,
        "channel": contact.channel if contact else None,
        "kind": data.kind.value if data.kind else None,
        "reason": data.reason,
        "status": data.status.value,
        "since": data.since,
        "age_hours": data.age_hours,
        "fulfillment_id": str(data.fulfillment_id) if data.fulfillment_id else None,
        "order_url": links.order_view(data.order_id),
    }
    return _operators_notice(event, Template.order_stuck, operators, data.order_id, values)


def low_stock(event: LowStock, operators: Sequence[str]) -> Notice:
    """A SKU runs low at a source: what is left against the threshold."""
    data = event.data
    values = {
        "sku": data.sku,
        "source_code": data.source_code,
        "available": data.available,
        "threshold": data.threshold,
    }
    return _operators_notice(event, Template.low_stock, operators, None, values)


_WRITERS = {
    Template.split_prewarning: split_prewarning,
    Template.backorder_notice: backorder_notice,
    Template.shipped: shipped,
    Template.delivered: delivered,
    Template.lines_cancelled: lines_cancelled,
    Template.order_cancelled: order_cancelled,
    Template.payment_failed: payment_failed,
    Template.cancellation_refused: cancellation_refused,
    Template.return_processed: return_processed,
    Template.refund_issued: refund_issued,
}


def outcome_of_reply(code: int | None) -> Outcome:
    """A refused message by the server's reply code: 5xx is final, 4xx (or no reply at all) may pass later."""
    if code is not None and 500 <= code <= 599:
        return Outcome.permanent
    return Outcome.transient


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: 2^attempts seconds after the n-th failed try, capped; `max_attempts` tries in all."""

    max_attempts: int = 8
    cap: timedelta = timedelta(minutes=15)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.cap <= timedelta(0):
            raise ValueError("the backoff cap must be positive")

    def delay_after(self, attempts: int) -> timedelta:
        """How long to wait before the next try once `attempts` tries have failed."""
        # The exponent is bounded so that 2^attempts never overflows a timedelta; the cap is reached long before.
        return min(self.cap, timedelta(seconds=2 ** min(max(attempts, 0), 40)))


@dataclass(frozen=True, slots=True)
class ClaimPolicy:
    """How long a message may stay claimed (`sending`) before another sender judges its outcome unknown.

    A sender hands a claimed message to the mail server only during the first half of that time, so the answer is
    recorded (or the message given back) before anyone may take the claim for lost: a claim older than `timeout`
    belongs to a sender that stopped or lost its database, and what it did with the message cannot be known."""

    timeout: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        if self.timeout <= timedelta(0):
            raise ValueError("the claim timeout must be positive")

    def may_start(self, claimed_at: datetime, now: datetime) -> bool:
        """Whether a message claimed at `claimed_at` may still be handed to the mail server at `now`."""
        return now - claimed_at < self.timeout / 2

    def lost_before(self, now: datetime) -> datetime:
        """Claims made before this are lost: their outcome is unknown."""
        return now - self.timeout


class NotPending(ValueError):
    """A sent, failed or unknown notification is final: it is never tried again."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where one notification stands: pending (new, or waiting for its next try), sending (claimed by a sender),
    sent, failed, or unknown (a try whose outcome was lost)."""

    status: Status = Status.pending
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    sent_at: datetime | None = None
    failed_at: datetime | None = None

    def after(self, outcome: Outcome, at: datetime, policy: RetryPolicy, error: str | None = None) -> Delivery:
        """The state after one more try that ended with `outcome` at `at`."""
        if self.status in FINAL:
            raise NotPending(f"a {self.status} notification is not tried again")
        attempts = self.attempts + 1
        if outcome is Outcome.delivered:
            return replace(self, status=Status.sent, attempts=attempts, next_attempt_at=None, sent_at=at)
        error = (error or outcome.value)[:MAX_ERROR_LENGTH]
        if outcome is Outcome.unknown:
            # At most once: a message that may have gone out is not sent again, whatever the retry policy allows.
            return replace(
                self, status=Status.unknown, attempts=attempts, next_attempt_at=None, last_error=error, failed_at=at
            )
        if outcome is Outcome.permanent or attempts >= policy.max_attempts:
            return replace(
                self, status=Status.failed, attempts=attempts, next_attempt_at=None, last_error=error, failed_at=at
            )
        return replace(
            self,
            status=Status.pending,
            attempts=attempts,
            next_attempt_at=at + policy.delay_after(attempts),
            last_error=error,
        )

    def given_back(self) -> Delivery:
        """A claimed message that was never handed to the mail server (its sender was stopping, or its claim grew
        too old to start): pending again as it was, the try not counted."""
        if self.status in FINAL:
            raise NotPending(f"a {self.status} notification is not given back")
        return replace(self, status=Status.pending)
