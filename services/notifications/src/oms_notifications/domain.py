"""What the notifications service decides, without I/O: which message an event calls for and to whom, what goes
into it, and how one message moves from pending to sent or failed (with retries on a capped exponential schedule).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from oms_contracts.common import ShippingMethod
from oms_contracts.notification import NotificationChannel
from oms_contracts.order import OrderAccepted, OrderAcceptedData

# notification_id = UUIDv5(NOTIFICATION_NAMESPACE, "{cause_event_id}:{template}"): the same event never yields two
# messages with the same template, and a resent mail keeps its Message-ID so a mail system can drop the copy.
NOTIFICATION_NAMESPACE = uuid.UUID("0b3d9a5e-6f1c-4d3e-8b7a-2e5c9f4a1d60")

# The longest error text kept on a notification (what notification.failed.v1 can carry).
MAX_ERROR_LENGTH = 2000


class Template(StrEnum):
    order_confirmation = "order_confirmation"


class Status(StrEnum):
    pending = "pending"
    sent = "sent"
    failed = "failed"


class Outcome(StrEnum):
    """How one try to hand a message to the mail server ended."""

    delivered = "delivered"
    transient = "transient"  # worth another try later: server unreachable, timed out, 4xx
    permanent = "permanent"  # another try would fail the same way: 5xx, an address that cannot be sent to


@dataclass(frozen=True, slots=True)
class Contact:
    """Who to tell about an order, remembered from its acceptance for the notifications that follow."""

    order_id: uuid.UUID
    email: str
    name: str
    locale: str
    channel: str
    external_order_id: str


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
    )


def latest_contacts(contacts: Iterable[Contact]) -> list[Contact]:
    """One contact per order, the last one seen winning: a batch may carry the same order twice."""
    return list({contact.order_id: contact for contact in contacts}.values())


_SHIPPING = {
    ShippingMethod.standard: "Standard delivery",
    ShippingMethod.express: "Express delivery",
    ShippingMethod.pickup: "Pickup in store",
}


def order_confirmation(event: OrderAccepted) -> Notice:
    """The customer's confirmation of an accepted order: what they bought, what it costs, where it goes."""
    order = event.data
    address = order.shipping_address
    values = {
        "order_number": order.external_order_id,
        "order_id": str(order.order_id),
        "channel": order.channel,
        "placed_at": order.placed_at,
        "customer_name": order.customer.name,
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
        "shipping_method": _SHIPPING[order.shipping_method],
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
    return Notice(
        notification_id=notification_id(event.id, Template.order_confirmation),
        order_id=order.order_id,
        cause_event_id=event.id,
        template=Template.order_confirmation,
        channel=NotificationChannel.email,
        recipient=str(order.customer.email),
        recipient_name=order.customer.name,
        locale=order.customer.locale,
        values=values,
    )


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


class NotPending(ValueError):
    """A sent or failed notification is final: it is never tried again."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where one notification stands: pending (new, or waiting for its next try), sent, or failed."""

    status: Status = Status.pending
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    sent_at: datetime | None = None
    failed_at: datetime | None = None

    def after(self, outcome: Outcome, at: datetime, policy: RetryPolicy, error: str | None = None) -> Delivery:
        """The state after one more try that ended with `outcome` at `at`."""
        if self.status is not Status.pending:
            raise NotPending(f"a {self.status} notification is not tried again")
        attempts = self.attempts + 1
        if outcome is Outcome.delivered:
            return replace(self, status=Status.sent, attempts=attempts, next_attempt_at=None, sent_at=at)
        error = (error or outcome.value)[:MAX_ERROR_LENGTH]
        if outcome is Outcome.permanent or attempts >= policy.max_attempts:
            return replace(
                self, status=Status.failed, attempts=attempts, next_attempt_at=None, last_error=error, failed_at=at
            )
        return replace(self, attempts=attempts, next_attempt_at=at + policy.delay_after(attempts), last_error=error)
