"""Micro-benchmark: routing plans a 10-line order over a 50-source network (target: under 1 ms per plan).

Pure domain, no database or broker: what the handler's `plan_all` does per paid order once the batch has loaded the
network, the availability projection and the rule chains. Two networks:

- `mixed`: 5 own warehouses holding most of the catalogue, 25 stores, 10 3PLs, 10 dropship suppliers holding less;
  most orders have one source with everything, some need a split.
- `scattered`: every source holds a random 40 % of the catalogue, so no source has all ten SKUs and every plan is
  a search for the fewest shipments (two or three).

    .venv/bin/python bench/routing_plan.py [--orders 2000] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal

from oms_contracts.common import Address, Line, OrderOptions, ShippingMethod, SourceType
from oms_contracts.order import OrderPaidData
from oms_contracts.routing import Source
from oms_routing.domain import Availability, PlanningNetwork, RoutedOrder, plan_all

CATALOGUE = [f"SKU-{n:04d}" for n in range(300)]
NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
KINDS = [
    (SourceType.warehouse, 5),
    (SourceType.store, 25),
    (SourceType.third_party_logistics, 10),
    (SourceType.dropship, 10),
]
HELD = {
    SourceType.warehouse: 0.9,
    SourceType.store: 0.3,
    SourceType.third_party_logistics: 0.5,
    SourceType.dropship: 0.15,
}


def network(rng: random.Random) -> list[Source]:
    sources = []
    for kind, count in KINDS:
        for n in range(count):
            sources.append(
                Source(
                    code=f"{kind.value.upper()}-{n}",
                    name=f"{kind.value} {n}",
                    type=kind,
                    lat=rng.uniform(47.5, 54.5),
                    lon=rng.uniform(6.0, 15.0),
                    countries=["DE", "AT"],
                    priority=rng.choice([10, 20, 50, 100]),
                    cost_per_shipment=Decimal(rng.choice(["3.90", "4.20", "4.90", "6.50"])),
                    cost_per_unit=Decimal(rng.choice(["0.20", "0.35", "0.50"])),
                    handling_days=rng.choice([0, 1, 1, 2]),
                    timezone="Europe/Berlin",
                    daily_capacity=rng.choice([None, None, 500]),
                )
            )
    return sources


def stock(rng: random.Random, sources: list[Source], scattered: bool) -> Availability:
    levels = {}
    for source in sources:
        share = 0.4 if scattered else HELD[source.type]
        for sku in CATALOGUE:
            if rng.random() < share:
                levels[(source.code, sku)] = rng.randint(1, 40)
    return Availability(levels)


def order(rng: random.Random) -> OrderPaidData:
    skus = rng.sample(CATALOGUE, 10)
    return OrderPaidData(
        order_id=uuid.uuid4(),
        channel="web-eu",
        placed_at=NOW,
        currency="EUR",
        amount=Decimal("100"),
        lines=[Line(line_id=str(n + 1), sku=sku, quantity=rng.randint(1, 3)) for n, sku in enumerate(skus)],
        shipping_address=Address(
            name="Ada L", line1="Unter den Linden 1", city="Berlin", country="DE", lat=52.517, lon=13.389
        ),
        shipping_method=ShippingMethod.standard,
        options=OrderOptions(),
    )


def run(name: str, scattered: bool, orders: int, seed: int) -> None:
    rng = random.Random(seed)
    sources = network(rng)
    availability = stock(rng, sources, scattered)
    requests = [RoutedOrder(order(rng)).first_plan() for _ in range(orders)]
    prepared = PlanningNetwork(sources, NOW)
    # Each order planned alone against the same stock (a batch of one), so every plan sees the same network.
    times, shipments = [], Counter()
    for request in requests:
        started = time.perf_counter()
        (made,) = plan_all([request], prepared, availability, planned_at=NOW, max_attempts=3)
        times.append(time.perf_counter() - started)
        shipments[len(made.shipments)] += 1
    times.sort()
    ms = [t * 1000 for t in times]
    print(
        f"{name:>9}: {orders} plans of 10 lines over {len(sources)} sources: "
        f"mean {statistics.fmean(ms):.3f} ms, median {ms[len(ms) // 2]:.3f} ms, "
        f"p95 {ms[int(len(ms) * 0.95)]:.3f} ms, max {ms[-1]:.3f} ms; "
        f"shipments per plan {dict(sorted(shipments.items()))}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    run("mixed", False, args.orders, args.seed)
    run("scattered", True, args.orders, args.seed)


if __name__ == "__main__":
    main()
