"""What routing consumes and what it emits, per topic:

- order events: `order.paid` -> a plan (attempt 1) on `oms.routing.plans.v1`, ranked by the order's rule chain
  (its own, else its channel's, else the default); `order.replan_requested` (a source rejected or cancelled units
  the order service did not ask to cancel) -> a plan of those lines without that source, one attempt on;
- inventory allocations: `reservation_rejected` -> the projection lowered to what inventory reported, and a plan of
  the rejected shipment's lines without that source;
- stock levels: `stock_level_changed` -> the availability projection.

Routing does not read the sources' fulfillment updates: only the order service can tell a source's own cancellation
(planned again, through `replan_requested`) from its answer to a customer's (not planned again).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from oms_contracts.common import Line
from oms_contracts.inventory import ReservationRejected, StockLevelChanged
from oms_contracts.order import OrderPaid, OrderPaidData, ReplanRequested
from oms_contracts.routing import FulfillmentPlanned, FulfillmentPlannedData
from oms_contracts.topics import INVENTORY_ALLOCATIONS, INVENTORY_STOCK, ORDER_EVENTS
from oms_runtime import Incoming, Refused, Service, Transaction

from . import domain, metrics, store
from .settings import RoutingSettings

log = logging.getLogger(__name__)

SOURCE = "/oms/routing"


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """Lines of a fulfillment its source will not ship, whichever event said so, and the domain rule that decides
    what is planned again (`RoutedOrder.replan` or `RoutedOrder.reservation_rejected`)."""

    message: Incoming[Any]
    order_id: uuid.UUID
    fulfillment_id: uuid.UUID
    source_code: str
    lines: Sequence[Line]
    decide: Callable[[domain.RoutedOrder, domain.Fulfillment, str, Sequence[Line]], domain.Replan]


def register(service: Service) -> None:
    settings: RoutingSettings = service.settings  # type: ignore[assignment]

    @service.consumer(ORDER_EVENTS, handles=(OrderPaid, ReplanRequested))
    async def on_order_events(tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Plans every paid order once: the fewest shipments that ship what is in stock now (one when a source has
        everything), ranked by the order's rule chain; what cannot ship now is backordered or unfulfillable. Plans
        again the lines of a fulfillment the order service asks for, without the source that will not ship them."""
        # Only paid orders and re-plan requests are routing's business; the other order events are skipped on purpose.
        paid: dict[uuid.UUID, Incoming[Any]] = {}
        asked: list[Withdrawal] = []
        for message in messages:
            if isinstance(message.event, OrderPaid):
                paid.setdefault(message.event.data.order_id, message)
            elif isinstance(message.event, ReplanRequested):
                data = message.event.data
                asked.append(
                    Withdrawal(
                        message,
                        data.order_id,
                        data.fulfillment_id,
                        data.source_code,
                        data.lines,
                        domain.RoutedOrder.replan,
                    )
                )
        if paid:
            await _plan_paid(tx, list(paid.values()), settings)
        # After the paid orders of the batch, so that a re-plan finds its order even when both came in one batch.
        if asked:
            await _replan(tx, asked, settings)

    @service.consumer(INVENTORY_ALLOCATIONS, handles=(ReservationRejected,))
    async def on_allocations(tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Re-plans a shipment inventory could not reserve, without that source, and lowers the projection to the
        availability inventory reported so that other orders do not pick that stock either."""
        # Reservations made and backorders queued or allocated need nothing from routing; skipped on purpose.
        rejected = [m for m in messages if isinstance(m.event, ReservationRejected)]
        if not rejected:
            return
        shortages: dict[tuple[str, str], store.ReportedShortage] = {}
        for message in rejected:
            data = message.event.data
            for shortage in data.shortages:
                shortages[(shortage.sku, data.source_code)] = store.ReportedShortage(
                    shortage.sku, data.source_code, shortage.available, message.event.time
                )
        await store.record_shortages(await tx.pg(), list(shortages.values()))
        withdrawals = []
        for message in rejected:
            data = message.event.data
            withdrawals.append(
                Withdrawal(
                    message,
                    data.order_id,
                    data.shipment_id,
                    data.source_code,
                    data.lines,
                    domain.RoutedOrder.reservation_rejected,
                )
            )
        await _replan(tx, withdrawals, settings)

    @service.consumer(INVENTORY_STOCK, handles=(StockLevelChanged,))
    async def on_stock_levels(tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Keeps the availability projection: the latest stock level per (sku, source)."""
        # Low-stock alerts are for people and dashboards; the levels themselves come as stock_level_changed.
        latest = {}
        for message in messages:
            if isinstance(message.event, StockLevelChanged):
                data = message.event.data
                latest[(data.sku, data.source_code)] = data
        await store.record_stock_levels(tx, list(latest.values()))


async def _plan_paid(tx: Transaction, paid: list[Incoming[Any]], settings: RoutingSettings) -> None:
    pg = await tx.pg()
    new = await store.claim_orders(pg, [m.event.data for m in paid])
    causes = [m for m in paid if m.event.data.order_id in new]
    if not causes:
        return
    made, network = await _plan(tx, [domain.RoutedOrder(m.event.data).first_plan() for m in causes], settings)
    await store.save_plans(pg, made, _days(network))
    _emit_plans(tx, made, causes)


async def _replan(tx: Transaction, withdrawals: list[Withdrawal], settings: RoutingSettings) -> None:
    pg = await tx.pg()
    # The orders first: their row locks make re-plans of one order take turns, and what is read after them is
    # what the turn before left.
    routed = await store.lock_orders(pg, (w.order_id for w in withdrawals))
    known = await store.fulfillments_of(pg, (w.fulfillment_id for w in withdrawals))
    replans: list[domain.Replan] = []
    causes: list[Incoming[Any]] = []
    for w in withdrawals:
        order = routed.get(w.order_id)
        if order is None:
            raise Refused(
                f"order {w.order_id} was never paid to routing: nothing to plan fulfillment {w.fulfillment_id} with"
            )
        fulfillment = known.get(w.fulfillment_id) or domain.Fulfillment(w.fulfillment_id, w.order_id)
        try:
            replan = w.decide(order, fulfillment, w.source_code, w.lines)
        except domain.ReplanRefused as refused:
            raise Refused(str(refused)) from refused
        routed[w.order_id], known[w.fulfillment_id] = replan.order, replan.fulfillment
        if replan.request is None:
            log.info(
                "fulfillment %s: its lines were planned again before",
                w.fulfillment_id,
                extra={"order_id": str(w.order_id)},
            )
            continue
        replans.append(replan)
        causes.append(w.message)
    made: list[FulfillmentPlannedData] = []
    planned_on: dict[str, date] = {}
    if replans:
        made, network = await _plan(tx, [r.request for r in replans if r.request is not None], settings)
        planned_on = _days(network)
    await store.save_plans(
        pg,
        made,
        planned_on,
        replans=replans,
        # Also a shipment whose rejection had nothing left to plan: it no longer leaves its source.
        withdrawn=[f.fulfillment_id for f in known.values() if f.planned and f.withdrawn],
        # Each order as its last re-plan of the batch left it.
        routed={r.order.paid.order_id: r.order for r in replans}.values(),
    )
    _emit_plans(tx, made, causes)


@dataclass(frozen=True, slots=True)
class Planning:
    """What the engine plans a batch with, loaded in three statements whatever the batch's size."""

    network: domain.PlanningNetwork
    availability: domain.Availability
    chains: domain.RuleChains


async def load_planning(
    pg: asyncpg.Connection, orders: Iterable[OrderPaidData], settings: RoutingSettings, planned_at: datetime
) -> Planning:
    """The active network with each source's shipments planned today, the availability of the orders' SKUs, and
    the rule chains of their channels."""
    orders = list(orders)
    sources, planned_today = await store.planning_network(pg, planned_at)
    stock = await store.availability_of(pg, (line.sku for order in orders for line in order.lines))
    stored = await store.stored_rule_chains(pg, [domain.DEFAULT_CHANNEL, *(order.channel for order in orders)])
    return Planning(
        domain.PlanningNetwork(sources, planned_at, planned_today),
        stock,
        domain.RuleChains.of({c.channel: c.rules for c in stored.values()}, settings.default_rule_chain),
    )


async def _plan(
    tx: Transaction, requests: list[domain.PlanRequest], settings: RoutingSettings
) -> tuple[list[FulfillmentPlannedData], domain.PlanningNetwork]:
    planned_at = datetime.now(UTC)
    loaded = await load_planning(await tx.pg(), (r.order for r in requests), settings, planned_at)
    started = time.perf_counter()
    made = domain.plan_all(
        requests,
        loaded.network,
        loaded.availability,
        planned_at=planned_at,
        max_attempts=settings.max_plan_attempts,
        chains=loaded.chains,
    )
    metrics.planned(tx, requests, made, time.perf_counter() - started)
    return made, loaded.network


def _days(network: domain.PlanningNetwork) -> dict[str, date]:
    # Each shipment is stored on its source's local day, the day its daily capacity counts it.
    return {code: today.day for code, today in network.sources.items()}


def _emit_plans(tx: Transaction, made: list[FulfillmentPlannedData], causes: list[Incoming[Any]]) -> None:
    # Plans come back in the order of their requests, so each continues the trace of the event that asked for it.
    for plan, cause in zip(made, causes, strict=True):
        tx.emit(FulfillmentPlanned(source=SOURCE, subject=str(plan.order_id), data=plan), cause=cause)
