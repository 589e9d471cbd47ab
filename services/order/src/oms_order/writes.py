"""Writes outside a consumer: an order changed by customer service over HTTP or by the customer's link, exactly as a
consumer changes it (its row locked with `store.load`, FOR UPDATE; one domain call; saved; what it recorded announced
through the outbox; one transaction; the relay woken after the commit), so consumers and HTTP take turns on the row
lock and neither loses the other's update; and the periodic stuck-order check."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import TypeVar

import asyncpg
from opentelemetry import trace

from oms_contracts.order import OrderStuck, OrderStuckData
from oms_contracts.types import utc_now
from oms_runtime import Service, Transaction
from oms_runtime.outbox import append

from . import handlers, metrics, store
from .domain import Cause, Order
from .stuck import Waits

T = TypeVar("T")


class UnknownOrder(LookupError):
    pass


@contextlib.asynccontextmanager
async def _publishing(service: Service) -> AsyncIterator[tuple[asyncpg.Connection, Transaction]]:
    """One transaction whose emitted events go to the outbox with it; the relay is woken after the commit."""
    async with service.database.transaction() as conn:
        tx = Transaction(conn, service.name)
        yield await tx.pg(), tx
        await append(conn, tx.outbox)
    tx.has_committed()
    service.relay.wake()


async def change(service: Service, order_id: uuid.UUID, apply: Callable[[Order], T]) -> T:
    """Apply `apply(order)` to the locked order and commit it with its announcements; what it raises rolls back
    everything (nothing changes). `UnknownOrder` when there is no such order."""
    async with _publishing(service) as (pg, tx):
        order = (await store.load(pg, [order_id])).get(order_id)
        if order is None:
            raise UnknownOrder(f"no order {order_id}")
        announced, recorded = len(order.transitions), len(order.events)
        result = apply(order)
        handlers.announce(tx, order, order.transitions[announced:], order.events[recorded:])
        metrics.observe(tx, [order])  # before the save, which clears what the order recorded
        await store.save(pg, [order])
    return result


async def check_stuck(service: Service, waits: Waits, now: datetime) -> int:
    """One pass of the stuck-order check (set-based: find, raise what is new, clear what is over, one statement
    each): `order.stuck.v1` and a timeline entry for each episode raised now. Returns how many."""
    async with _publishing(service) as (pg, tx):
        found = await store.stuck_candidates(pg, now, waits)
        raised = await store.raise_stuck(pg, found, now)
        await store.clear_stuck(pg, found, now)
        entries = []
        for stuck in raised:
            trace_id = handlers.trace_id_of(stuck.traceparent) if stuck.traceparent else None
            entries.append(stuck.entry(now, trace_id))
            tx.emit(
                OrderStuck(
                    source=handlers.SOURCE,
                    subject=str(stuck.order_id),
                    data=OrderStuckData(
                        order_id=stuck.order_id,
                        status=stuck.status,
                        since=stuck.since,
                        age_hours=stuck.age_hours(now),
                        kind=stuck.kind,
                        reason=stuck.reason(now),
                        fulfillment_id=stuck.fulfillment_id,
                    ),
                ),
                traceparent=stuck.traceparent,
            )
        await store.insert_timeline(pg, entries)
    return len(raised)


def cause(order: Order, actor: str, kind: str) -> Cause:
    """Who changes the order over HTTP (`kind` http or link), in the order's trace like every event about it."""
    trace_id = handlers.trace_id_of(order.traceparent) if order.traceparent else None
    if trace_id is None:
        trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
    return Cause(actor=actor, at=utc_now(), trace_id=trace_id, type=kind)
