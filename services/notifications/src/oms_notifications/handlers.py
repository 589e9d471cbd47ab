"""What the notifications service consumes, and what each event queues. Queued messages are sent by the sender
(sender.py) after the batch commits, so a slow or unreachable mail server never holds up a consumer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from oms_contracts.order import OrderAccepted
from oms_runtime import Incoming, Transaction
from oms_runtime.telemetry import traceparent_of

from . import domain, store
from .rendering import render


async def on_order_event(tx: Transaction, messages: list[Incoming[Any]]) -> None:
    """Order accepted: remember the customer's contact for the order's later notifications, and queue the order
    confirmation email (once per accepted event, however often it is delivered)."""
    # Only acceptance calls for a message so far; the other order events (rejected, status changed, paid, lines
    # cancelled, refund issued, stuck) are skipped on purpose until their notifications exist.
    accepted = [m for m in messages if isinstance(m.event, OrderAccepted)]
    if not accepted:
        return
    confirmations = [render(domain.order_confirmation(m.event)) for m in accepted]
    pg = await tx.pg()
    await store.remember_contacts(pg, domain.latest_contacts(domain.contact_of(m.event.data) for m in accepted))
    await store.queue(pg, confirmations, [traceparent_of(m.span) for m in accepted], due=datetime.now(UTC))
