"""The order service's metrics, apart from its handlers so that they change in one place: status changes per
channel, the flow's steps, and the fulfillment KPIs (order-to-ship time, on-time shipping per channel and source),
plus the open orders by status and how long the oldest of each has not moved.

Wired with one line each: `register(service)` in app.py, and `await observe(tx, orders)` after the domain calls of a
consumer's batch (handlers.py) or of an HTTP write (writes.py) and before the save (which clears what the orders
recorded). A batch is looked at once, and what it counts is recorded only when its transaction commits (a replayed
batch counts once). Cost per batch: one pass over the orders' new
transitions and facts, one counter call per (status, channel) and one histogram call per request, parcel and
completed fulfillment; one indexed query for the acceptance times when the batch requested or shipped something.
The gauges (open orders by status, open stuck episodes by kind) come from two grouped queries per metrics refresh.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime

from oms_contracts.order import StuckKind
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
# The source of cancelled units no fulfillment had been requested for yet.
NO_SOURCE = "(none)"
CANCELLATIONS = _meter.create_counter(
    "oms.order.cancellations",
    unit="{cancellation}",
    description="Cancellations that took units off an order, per channel and the source whose fulfillment held them "
    f"(oms.source={NO_SOURCE!r}: units no source was asked for yet); one that touches two sources counts for each",
)
REQUESTS = _meter.create_counter(
    "oms.fulfillment.requests",
    unit="{fulfillment}",
    description="Fulfillments requested from a source, per channel and source: the base of the per-source rates",
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


# What the last refresh found, per open status: (orders, seconds since the least recently changed one changed). One
# order service runs per process; in tests, the service refreshed last is the one shown.
_open: dict[str, tuple[int, float]] = {}
# What the last refresh found: open stuck episodes (the stuck-order check's, `GET /orders?stuck=true`) per kind.
_stuck: dict[str, int] = {}


def register(service: Service) -> None:
    """Refresh the open-orders gauges every `metrics_refresh_s` (the runtime's refresh loop); the after-the-sale
    counters start at 0, so that a rate over them has a series before the first return or cancellation."""
    RETURNS.add(0)
    CANCELLATIONS.add(0)

    @service.metrics_refresh
    async def count_open_orders() -> None:
        # An index range scan of (status, updated_at) over open orders only: its cost follows the orders in flight.
        async with service.database.autocommit() as pg:
            rows = await pg.fetch(
                """
                SELECT status, count(*) AS orders, extract(epoch FROM now() - min(updated_at)) AS oldest
                FROM orders WHERE status = ANY($1::text[]) GROUP BY status
                """,
                [str(s) for s in OPEN],
            )
            # Open episodes only: the stuck_alerts_open_idx partial index.
            stuck = await pg.fetch(
                "SELECT kind, count(*) AS n FROM stuck_alerts WHERE cleared_at IS NULL GROUP BY kind"
            )
        seen = {row["status"]: (row["orders"], max(float(row["oldest"] or 0.0), 0.0)) for row in rows}
        # Every open status, with 0 when none is in it: an alert compares a value, not the absence of one.
        _open.clear()
        _open.update({str(s): seen.get(str(s), (0, 0.0)) for s in OPEN})
        found = {row["kind"]: row["n"] for row in stuck}
        _stuck.clear()
        _stuck.update({str(kind): found.get(str(kind), 0) for kind in StuckKind})


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
metrics.observable_gauge(
    _meter,
    "oms.orders.stuck",
    lambda: [(n, {"oms.stuck.kind": kind}) for kind, n in _stuck.items()],
    unit="{order}",
    description="Open episodes of the order service's stuck-order check (order.stuck.v1), per kind",
)


def observe(tx: Transaction, orders: Iterable[domain.Order]) -> None:
    """Count what the batch's orders recorded; recorded once the batch commits."""
    changes: Counter[tuple[str, str]] = Counter()
    # When the OMS accepted each order requested or shipped from (its row's creation, loaded with it).
    requested: list[datetime] = []
    shipped: list[datetime] = []
    done: list[tuple[domain.Order, domain.Fulfillment]] = []
    returns: Counter[tuple[str, str]] = Counter()
    requests: Counter[tuple[str, str]] = Counter()
    cancellations: Counter[tuple[str, str]] = Counter()
    for order in orders:
        for t in order.transitions:
            changes[(str(t.to_status), order.channel)] += 1
        for fact in order.events:
            if isinstance(fact, domain.Returned):
                returns[(order.channel, fact.ret.source_code)] += 1
            elif isinstance(fact, domain.UnitsCancelled) and not fact.released:
                for source in {_source_of(order, units.fulfillment_id) for units in fact.units}:
                    cancellations[(order.channel, source)] += 1
            elif isinstance(fact, domain.FulfillmentRequested):
                if order.accepted_at is not None:
                    requested.append(order.accepted_at)
                requests[(order.channel, fact.fulfillment.source_code)] += 1
            elif isinstance(fact, domain.ParcelShipped):
                if order.accepted_at is not None:
                    shipped.append(order.accepted_at)
                f = fact.fulfillment
                # The parcel that completed its fulfillment (two parcels of one fulfillment may share a batch).
                if f.shipped_at is not None and fact.parcel is f.parcels[-1]:
                    done.append((order, f))
    now = datetime.now(UTC)

    def record() -> None:
        for (status, channel), n in changes.items():
            STATUS_CHANGES.add(n, {"oms.order.status": status, "oms.channel": channel})
        for step, accepted in (("fulfillment_requested", requested), ("shipped", shipped)):
            for at in accepted:
                metrics.FLOW.record(max((now - at).total_seconds(), 0.0), metrics.flow_step(step))
        on_time: Counter[tuple[str, str, str]] = Counter()
        for order, f in done:
            labels = {"oms.channel": order.channel, "oms.source": f.source_code}
            ORDER_TO_SHIP.record(max((f.shipped_at - order.placed_at).total_seconds(), 0.0), labels)
            kept = "unknown" if f.ship_by is None else str(f.shipped_at.astimezone(UTC).date() <= f.ship_by).lower()
            on_time[(order.channel, f.source_code, kept)] += 1
        for (channel, source, kept), n in on_time.items():
            SHIPMENTS.add(n, {"oms.channel": channel, "oms.source": source, "oms.on_time": kept})
        for counter, counts in ((RETURNS, returns), (REQUESTS, requests), (CANCELLATIONS, cancellations)):
            for (channel, source), n in counts.items():
                counter.add(n, {"oms.channel": channel, "oms.source": source})

    tx.after_commit(record)


def _source_of(order: domain.Order, fulfillment_id: uuid.UUID | None) -> str:
    fulfillment = order.fulfillments.get(fulfillment_id) if fulfillment_id is not None else None
    return fulfillment.source_code if fulfillment is not None else NO_SOURCE
