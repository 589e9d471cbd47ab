"""The order service's metrics, apart from its handlers so that they change in one place: status changes per
channel, the flow's steps, and the fulfillment KPIs (order-to-ship time, on-time shipping per channel and source),
plus the open orders by status and how long the oldest of each has not moved.

Wired with two lines: `register(service)` in app.py, and `await observe(tx, orders)` after a batch's domain calls and
before its save (which clears what the orders recorded). A batch is looked at once, and what it counts is recorded
only when its transaction commits (a replayed batch counts once). Cost per batch: one pass over the orders' new
transitions and facts, one counter call per (status, channel) and one histogram call per request, parcel and
completed fulfillment; one indexed query for the acceptance times when the batch requested or shipped something.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime

from oms_runtime import Service, Transaction, metrics

from . import domain

_meter = metrics.meter("oms.order")

STATUS_CHANGES = _meter.create_counter(
    "oms.order.status.changes",
    unit="{order}",
    description="Orders entering a status (pending is an order accepted), per channel: the status mix, and the "
    "cancellation rate as cancelled over pending",
)
ORDER_TO_SHIP = _meter.create_histogram(
    "oms.fulfillment.order_to_ship.duration",
    unit="s",
    description="From the order's placed_at (the channel's) to the last parcel of a fulfillment leaving its source "
    "(the source's shipped_at), per channel and source",
    explicit_bucket_boundaries_advisory=metrics.FLOW_BUCKETS,
)
RETURNS = _meter.create_counter(
    "oms.order.returns",
    unit="{return}",
    description="Returns the order service accepted, per channel and the source that received them",
)
SHIPMENTS = _meter.create_counter(
    "oms.fulfillment.shipments",
    unit="{fulfillment}",
    description="Fulfillments shipped complete, per channel and source; oms.on_time says whether the last parcel "
    "left by the promised ship_by date (UTC day)",
)

# Statuses an order is still moving through. Delivered, cancelled and refunded ones are done, and fulfilled ones wait
# only for the carrier (many sources never report delivery): counting those would grow with the history, not with
# the work in flight.
OPEN = (
    domain.S.pending,
    domain.S.payment_processing,
    domain.S.paid,
    domain.S.awaiting_fulfillment,
    domain.S.partially_fulfilled,
)


# Returns are applied by the after-the-sale work (issue 8, its `domain.Returned` fact); until that is merged no
# order records one, and the counter stays at the 0 it starts at.
_RETURNED = getattr(domain, "Returned", None)


# What the last refresh found, per open status: (orders, seconds since the least recently changed one changed). One
# order service runs per process; in tests, the service refreshed last is the one shown.
_open: dict[str, tuple[int, float]] = {}


def register(service: Service) -> None:
    """Refresh the open-orders gauges every `metrics_refresh_s` (the runtime's refresh loop); returns start at 0."""
    RETURNS.add(0)

    @service.metrics_refresh
    async def count_open_orders() -> None:
        # An index range scan of (status, updated_at) over open orders only: its cost follows the orders in flight.
        async with service.database.connect() as conn:
            pg = (await conn.get_raw_connection()).driver_connection
            rows = await pg.fetch(
                """
                SELECT status, count(*) AS orders, extract(epoch FROM now() - min(updated_at)) AS oldest
                FROM orders WHERE status = ANY($1::text[]) GROUP BY status
                """,
                [str(s) for s in OPEN],
            )
        seen = {row["status"]: (row["orders"], max(float(row["oldest"] or 0.0), 0.0)) for row in rows}
        # Every open status, with 0 when none is in it: an alert compares a value, not the absence of one.
        _open.clear()
        _open.update({str(s): seen.get(str(s), (0, 0.0)) for s in OPEN})


metrics.observable_gauge(
    _meter,
    "oms.orders",
    lambda: [(n, {"oms.order.status": status}) for status, (n, _) in _open.items()],
    unit="{order}",
    description="Open orders by status (pending to partially_fulfilled), as the last refresh counted them",
)
metrics.observable_gauge(
    _meter,
    "oms.orders.oldest.age",
    lambda: [(age, {"oms.order.status": status}) for status, (_, age) in _open.items()],
    unit="s",
    description="Per open status, how long its least recently changed order has not changed: a stuck order",
)


async def observe(tx: Transaction, orders: Iterable[domain.Order]) -> None:
    """Count what the batch's orders recorded; recorded once the batch commits."""
    changes: Counter[tuple[str, str]] = Counter()
    requested: list[uuid.UUID] = []
    shipped: list[uuid.UUID] = []
    done: list[tuple[domain.Order, domain.Fulfillment]] = []
    returns: Counter[tuple[str, str]] = Counter()
    for order in orders:
        for t in order.transitions:
            changes[(str(t.to_status), order.channel)] += 1
        for fact in order.events:
            if _RETURNED is not None and isinstance(fact, _RETURNED):
                returns[(order.channel, fact.ret.source_code)] += 1
            elif isinstance(fact, domain.FulfillmentRequested):
                requested.append(order.order_id)
            elif isinstance(fact, domain.ParcelShipped):
                shipped.append(order.order_id)
                f = fact.fulfillment
                # The parcel that completed its fulfillment (two parcels of one fulfillment may share a batch).
                if f.shipped_at is not None and fact.parcel is f.parcels[-1]:
                    done.append((order, f))
    accepted = await _accepted_at(tx, {*requested, *shipped}) if requested or shipped else {}
    now = datetime.now(UTC)

    def record() -> None:
        for (status, channel), n in changes.items():
            STATUS_CHANGES.add(n, {"oms.order.status": status, "oms.channel": channel})
        for step, order_ids in (("fulfillment_requested", requested), ("shipped", shipped)):
            for order_id in order_ids:
                if order_id in accepted:
                    metrics.FLOW.record(max((now - accepted[order_id]).total_seconds(), 0.0), metrics.flow_step(step))
        on_time: Counter[tuple[str, str, str]] = Counter()
        for order, f in done:
            labels = {"oms.channel": order.channel, "oms.source": f.source_code}
            ORDER_TO_SHIP.record(max((f.shipped_at - order.placed_at).total_seconds(), 0.0), labels)
            kept = "unknown" if f.ship_by is None else str(f.shipped_at.astimezone(UTC).date() <= f.ship_by).lower()
            on_time[(order.channel, f.source_code, kept)] += 1
        for (channel, source, kept), n in on_time.items():
            SHIPMENTS.add(n, {"oms.channel": channel, "oms.source": source, "oms.on_time": kept})
        for (channel, source), n in returns.items():
            RETURNS.add(n, {"oms.channel": channel, "oms.source": source})

    tx.after_commit(record)


async def _accepted_at(tx: Transaction, order_ids: set[uuid.UUID]) -> dict[uuid.UUID, datetime]:
    """When the OMS accepted each order: its row's creation, which the order rows keep and the domain does not."""
    rows = await (await tx.pg()).fetch(
        "SELECT order_id, created_at FROM orders WHERE order_id = ANY($1::uuid[])", list(order_ids)
    )
    return {row["order_id"]: row["created_at"] for row in rows}
