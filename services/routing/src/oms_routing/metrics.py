"""Routing's metrics: plans by channel and shape (the split and backorder rates), shipments per source, and how
long the planning of a batch takes.

Recorded once per batch after its transaction commits, one counter call per label set: shipments per plan is the
ratio of the two counters, and `oms.plan.split` tells a plan of one shipment from one of several, so nothing is
recorded per plan."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from oms_contracts.routing import FulfillmentPlannedData
from oms_runtime import Transaction, metrics

from . import domain

_meter = metrics.meter("oms.routing")

PLANS = _meter.create_counter(
    "oms.routing.plans",
    unit="{plan}",
    description="Plans made, per channel and attempt (first, replan); oms.plan.split: more than one shipment; "
    "oms.plan.backorder: some units wait for stock; oms.plan.unfulfillable: some units no source can serve",
)
SHIPMENTS = _meter.create_counter(
    "oms.routing.shipments", unit="{shipment}", description="Shipments planned, per source"
)
PLANNING = _meter.create_histogram(
    "oms.routing.planning.duration",
    unit="s",
    description="Planning one batch of requests (the engine alone, without loading or saving): one observation per "
    "batch, with the batch's plans in oms_routing_plans_total",
    explicit_bucket_boundaries_advisory=metrics.DURATION_BUCKETS,
)


def planned(
    tx: Transaction, requests: Sequence[domain.PlanRequest], made: Sequence[FulfillmentPlannedData], seconds: float
) -> None:
    """Count a batch's plans (made in the order of their requests); recorded once the batch commits."""
    plans: Counter[tuple[str, str, str, str, str]] = Counter()
    shipments: Counter[str] = Counter()
    for request, plan in zip(requests, made, strict=True):
        shape = (len(plan.shipments) > 1, bool(plan.backordered_lines), bool(plan.unfulfillable_lines))
        attempt = "first" if plan.attempt == 1 else "replan"
        plans[(request.order.channel, attempt, *(str(flag).lower() for flag in shape))] += 1
        shipments.update(s.source_code for s in plan.shipments)

    def record() -> None:
        PLANNING.record(seconds)
        for (channel, attempt, split, backorder, unfulfillable), n in plans.items():
            PLANS.add(
                n,
                {
                    "oms.channel": channel,
                    "oms.plan.attempt": attempt,
                    "oms.plan.split": split,
                    "oms.plan.backorder": backorder,
                    "oms.plan.unfulfillable": unfulfillable,
                },
            )
        for source, n in shipments.items():
            SHIPMENTS.add(n, {"oms.source": source})

    tx.after_commit(record)
