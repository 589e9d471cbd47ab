"""What the notifications service consumes, and what each event queues. Queued messages are sent by the sender
(sender.py) after the batch commits, so a slow or unreachable mail server never holds up a consumer.

Customer messages go through the same steps on every topic, in one transaction per batch: lock the batch's orders,
remember the contacts of accepted orders, take the events that waited for those contacts, decide (domain.tell), then
queue the messages and keep the events whose order has no contact yet. Operators' messages (domain.alert) wait for
nothing and take no order lock: they are queued at once, one per event."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from oms_contracts.inventory import LowStock
from oms_contracts.order import OrderAccepted, OrderStuck, StatusChanged
from oms_contracts.topics import INVENTORY_ALLOCATIONS, INVENTORY_STOCK, ORDER_EVENTS, ROUTING_PLANS
from oms_runtime import Incoming, Only, Service, Transaction
from oms_runtime.telemetry import traceparent_of

from . import domain, store
from .rendering import render


def register(service: Service, links: domain.Links, operators: Sequence[str], queued: Callable[[], None]) -> None:
    """Subscribe the consumers; `queued` is called after each batch that queued mail commits."""
    consumers = Consumers(links, tuple(operators), queued)
    # Events no template is for are skipped unread (by their ce-type header), and so are status changes to a status
    # no template is for (by the header naming it).
    statuses = Only(StatusChanged, StatusChanged.STATUS_HEADER, frozenset(s.value for s in domain.STATUSES_CALLED_FOR))
    service.consumer(ORDER_EVENTS, handles=domain.CALLED_FOR, only=(statuses,))(consumers.on_order_events)
    service.consumer(ROUTING_PLANS, handles=domain.CALLED_FOR)(consumers.on_fulfillment_plans)
    service.consumer(INVENTORY_ALLOCATIONS, handles=domain.CALLED_FOR)(consumers.on_inventory_allocations)
    service.consumer(INVENTORY_STOCK, handles=domain.CALLED_FOR)(consumers.on_stock_levels)


class Consumers:
    """The subscribers, with what they need from the settings (where links point, who the operators are) and whom to
    tell that mail was queued (the sender)."""

    def __init__(self, links: domain.Links, operators: tuple[str, ...], queued: Callable[[], None]) -> None:
        self.links = links
        self.operators = operators
        self.queued = queued

    async def on_order_events(self, tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Order accepted: remember the customer's contact, queue the order confirmation and the messages that
        waited for this contact. A parcel shipped or delivered, lines cancelled, the order cancelled (a failed
        payment), a refund, a return, a refused cancellation: its mail to the customer. An order stuck: a mail to
        the operators. Once per event, however often it is delivered."""
        # Rejected, paid, re-plan requests and other status changes call for nothing: skipped on purpose.
        await self._tell(tx, messages)
        await self._alert(tx, [m for m in messages if isinstance(m.event, OrderStuck)])

    async def on_fulfillment_plans(self, tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """The first plan of an order with more than one shipment: the split pre-warning. Other plans call for
        nothing."""
        await self._tell(tx, messages)

    async def on_inventory_allocations(self, tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Backorder queued: the backorder notice, with the customer's signed wait-or-cancel link. Reservations,
        rejections and allocations call for nothing (the shipped mail follows them)."""
        await self._tell(tx, messages)

    async def on_stock_levels(self, tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Low stock: a mail to the operators. Stock level changes, the bulk of this topic, call for nothing."""
        # One type check per record and nothing else: the runtime has already validated them, and a batch of level
        # changes alone touches no table of ours.
        await self._alert(tx, [m for m in messages if isinstance(m.event, LowStock)])

    async def _tell(self, tx: Transaction, messages: list[Incoming[Any]]) -> None:
        causes = [
            m
            for m in messages
            if (template := domain.template_for(m.event)) is not None and template not in domain.OPERATOR_TEMPLATES
        ]
        if not causes:
            return
        pg = await tx.pg()
        order_ids = {m.event.data.order_id for m in causes}
        await store.lock_orders(pg, order_ids)
        arrived = domain.latest_contacts(
            domain.contact_of(m.event.data) for m in causes if isinstance(m.event, OrderAccepted)
        )
        await store.remember_contacts(pg, arrived)
        waited = await store.take_awaiting_contact(pg, [c.order_id for c in arrived])
        contacts = await store.contacts_of(pg, order_ids - {c.order_id for c in arrived})
        contacts.update((c.order_id, c) for c in arrived)

        told = domain.tell([w.awaiting.event for w in waited] + [m.event for m in causes], contacts, self.links)

        traceparents = {w.awaiting.event.id: w.traceparent for w in waited}
        traceparents.update((m.event.id, traceparent_of(m.span)) for m in causes)
        await store.await_contact(pg, told.awaiting_contact, [traceparents[a.event.id] for a in told.awaiting_contact])
        await self._queue(tx, told.notices, traceparents)

    async def _alert(self, tx: Transaction, alarms: list[Incoming[Any]]) -> None:
        if not alarms or not self.operators:
            return
        pg = await tx.pg()
        # Only to name the order's number in the alert; an alert about an order without a contact goes out anyway.
        stuck = {m.event.data.order_id for m in alarms if isinstance(m.event, OrderStuck)}
        contacts = await store.contacts_of(pg, stuck)
        notices = domain.alert([m.event for m in alarms], self.operators, self.links, contacts)
        traceparents = {m.event.id: traceparent_of(m.span) for m in alarms}
        await self._queue(tx, notices, traceparents)

    async def _queue(
        self, tx: Transaction, notices: Sequence[domain.Notice], traceparents: Mapping[uuid.UUID, str | None]
    ) -> None:
        """Render and queue the notices, each in the trace of its cause; the sender is woken once they commit."""
        if not notices:
            return
        await store.queue(
            await tx.pg(),
            [render(notice) for notice in notices],
            [traceparents[notice.cause_event_id] for notice in notices],
            due=datetime.now(UTC),
        )
        tx.after_commit(self.queued)
