"""One order changed outside a consumer (customer service over HTTP, the customer's link), exactly as a consumer
changes it: its row locked (`store.load`, FOR UPDATE), one domain call, saved, and what it recorded announced through
the outbox, all in one transaction; the relay is woken after the commit. Consumers and HTTP take turns on the row
lock, so neither loses the other's update."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TypeVar

from opentelemetry import trace

from oms_contracts.types import utc_now
from oms_runtime import Service, Transaction
from oms_runtime.outbox import append

from . import handlers, store
from .domain import Cause, Order

T = TypeVar("T")


class UnknownOrder(LookupError):
    pass


async def change(service: Service, order_id: uuid.UUID, apply: Callable[[Order], T]) -> T:
    """Apply `apply(order)` to the locked order and commit it with its announcements; what it raises rolls back
    everything (nothing changes). `UnknownOrder` when there is no such order."""
    async with service.database.transaction() as conn:
        tx = Transaction(conn, service.name)
        pg = await tx.pg()
        order = (await store.load(pg, [order_id])).get(order_id)
        if order is None:
            raise UnknownOrder(f"no order {order_id}")
        announced, recorded = len(order.transitions), len(order.events)
        result = apply(order)
        handlers.announce(tx, order, order.transitions[announced:], order.events[recorded:])
        await store.save(pg, [order])
        await append(conn, tx.outbox)
    service.relay.wake()
    return result


def cause(order: Order, actor: str, kind: str) -> Cause:
    """Who changes the order over HTTP (`kind` http or link), in the order's trace like every event about it."""
    trace_id = handlers.trace_id_of(order.traceparent) if order.traceparent else None
    if trace_id is None:
        trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
    return Cause(actor=actor, at=utc_now(), trace_id=trace_id, type=kind)
