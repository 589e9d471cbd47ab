"""Inventory's metrics: reservations made and rejected per source, and the backorder queues (waiting lines, units
and the age of the oldest waiting line) of the SKUs that wait longest.

Label cardinality: only the TOP_SKUS SKUs whose oldest line waits longest get a series of their own; every other
waiting SKU is summed into `oms.sku="(other)"` (its age: the oldest among them), so sums over all series are the
whole queue and a catalogue of a million SKUs still makes TOP_SKUS + 1 series. Cost: the queue is read by one
query per metrics refresh (`OMS_METRICS_REFRESH_S`), over waiting lines only; reservations are counted once per
batch."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from oms_runtime import Service, Transaction, metrics

from .domain import ReservationDecision

TOP_SKUS = 20
OTHER = "(other)"

_meter = metrics.meter("oms.inventory")

RESERVATIONS = _meter.create_counter(
    "oms.inventory.reservations",
    unit="{shipment}",
    description="Planned shipments inventory decided, per source; oms.outcome: reserved or rejected (short)",
)


def reservations(tx: Transaction, decisions: Iterable[ReservationDecision]) -> None:
    """Count a batch's reservation decisions; recorded once the batch commits."""
    counted = Counter(
        (d.shipment.source_code, "reserved" if d.reserved else "rejected") for d in decisions if not d.emptied
    )

    def record() -> None:
        for (source, outcome), n in counted.items():
            RESERVATIONS.add(n, {"oms.source": source, "oms.outcome": outcome})

    tx.after_commit(record)


# What the last refresh found: (sku, lines, units, oldest age in seconds) per series. One inventory service runs per
# process; in tests, the service refreshed last is the one shown.
_queues: list[tuple[str, int, int, float]] = []


def register(service: Service) -> None:
    """Refresh the backorder gauges every `metrics_refresh_s` (the runtime's refresh loop)."""

    @service.metrics_refresh
    async def read_backorder_queues() -> None:
        async with service.database.autocommit() as pg:
            rows = await pg.fetch(
                """
                WITH waiting AS (
                    SELECT sku, count(*) AS lines, sum(waiting) AS units, min(queued_at) AS oldest
                    FROM backorders WHERE state = 'waiting' GROUP BY sku
                ), ranked AS (
                    SELECT *, row_number() OVER (ORDER BY oldest, sku) AS rank FROM waiting
                )
                SELECT CASE WHEN rank <= $1 THEN sku ELSE $2 END AS sku, sum(lines) AS lines, sum(units) AS units,
                       extract(epoch FROM now() - min(oldest)) AS oldest_age
                FROM ranked GROUP BY 1
                """,
                TOP_SKUS,
                OTHER,
            )
        _queues[:] = [(r["sku"], int(r["lines"]), int(r["units"]), max(float(r["oldest_age"]), 0.0)) for r in rows]


for _name, _unit, _description, _field in (
    ("oms.inventory.backorder.lines", "{line}", "Order lines waiting in a SKU's backorder queue", 1),
    ("oms.inventory.backorder.units", "{unit}", "Units those waiting lines still wait for", 2),
    ("oms.inventory.backorder.oldest.age", "s", "How long the oldest waiting line of the SKU has been waiting", 3),
):
    metrics.observable_gauge(
        _meter,
        _name,
        lambda field=_field: [(q[field], {"oms.sku": q[0]}) for q in _queues],
        unit=_unit,
        description=f'{_description} (the {TOP_SKUS} SKUs waiting longest, the rest as oms.sku="{OTHER}")',
    )
