"""What routing consumes and what it emits, per topic:

- order events: `order.paid` -> a plan (attempt 1) on `oms.routing.plans.v1`, ranked by the order's rule chain
  (its own, else its channel's, else the default);
- inventory allocations: `reservation_rejected` -> the projection lowered to what inventory reported, and a re-plan
  of the rejected shipment's lines without that source;
- fulfillment updates: `fulfillment.rejected` -> a re-plan of that shipment's lines without that source;
- stock levels: `stock_level_changed` -> the availability projection.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from oms_contracts.fulfillment import FulfillmentRejected
from oms_contracts.inventory import ReservationRejected, StockLevelChanged
from oms_contracts.order import OrderPaid, OrderPaidData
from oms_contracts.routing import FulfillmentPlanned, FulfillmentPlannedData
from oms_contracts.topics import FULFILLMENT_UPDATES, INVENTORY_ALLOCATIONS, INVENTORY_STOCK, ORDER_EVENTS
from oms_runtime import Incoming, Refused, Service, Transaction

from . import domain, store
from .settings import RoutingSettings

log = logging.getLogger(__name__)

SOURCE = "/oms/routing"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A shipment that inventory or its source turned down, whichever topic said so."""

    message: Incoming[Any]
    order_id: uuid.UUID
    shipment_id: uuid.UUID


def register(service: Service) -> None:
    settings: RoutingSettings = service.settings  # type: ignore[assignment]

    @service.consumer(ORDER_EVENTS)
    async def on_order_events(tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Plans every paid order once: the fewest shipments that ship what is in stock now (one when a source has
        everything), ranked by the order's rule chain; what cannot ship now is backordered or unfulfillable."""
        # Only a paid order is routing's business; the other order events are skipped on purpose.
        paid: dict[uuid.UUID, Incoming[Any]] = {}
        for message in messages:
            if isinstance(message.event, OrderPaid):
                paid.setdefault(message.event.data.order_id, message)
        if not paid:
            return
        pg = await tx.pg()
        new = await store.claim_orders(pg, [m.event.data for m in paid.values()])
        causes = [m for order_id, m in paid.items() if order_id in new]
        if not causes:
            return
        made, network = await _plan(tx, [domain.RoutedOrder(m.event.data).first_plan() for m in causes], settings)
        await store.save_plans(pg, made, _days(network))
        _emit_plans(tx, made, causes)

    @service.consumer(INVENTORY_ALLOCATIONS)
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
        await _replan(tx, [Rejection(m, m.event.data.order_id, m.event.data.shipment_id) for m in rejected], settings)

    @service.consumer(FULFILLMENT_UPDATES)
    async def on_fulfillment_updates(tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Re-plans a shipment its source rejected, without that source."""
        # Accepted, shipped, delivered and cancelled fulfillments need nothing from routing; skipped on purpose.
        rejected = [m for m in messages if isinstance(m.event, FulfillmentRejected)]
        if rejected:
            await _replan(
                tx, [Rejection(m, m.event.data.order_id, m.event.data.fulfillment_id) for m in rejected], settings
            )

    @service.consumer(INVENTORY_STOCK)
    async def on_stock_levels(tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Keeps the availability projection: the latest stock level per (sku, source)."""
        # Low-stock alerts are for people and dashboards; the levels themselves come as stock_level_changed.
        latest = {}
        for message in messages:
            if isinstance(message.event, StockLevelChanged):
                data = message.event.data
                latest[(data.sku, data.source_code)] = data
        await store.record_stock_levels(await tx.pg(), list(latest.values()))


async def _replan(tx: Transaction, rejections: list[Rejection], settings: RoutingSettings) -> None:
    pg = await tx.pg()
    planned = await store.lock_shipments(pg, [r.shipment_id for r in rejections])
    routed: dict[uuid.UUID, domain.RoutedOrder] = {}
    requests: list[domain.PlanRequest] = []
    causes: list[Incoming[Any]] = []
    replanned: set[uuid.UUID] = set()
    for rejection in rejections:
        shipment, order_id = planned.get(rejection.shipment_id), rejection.order_id
        if shipment is None or shipment.order.paid.order_id != order_id:
            raise Refused(f"shipment {rejection.shipment_id} of order {order_id} was not planned by routing")
        if shipment.rejected or shipment.shipment_id in replanned:
            # Inventory and the source may both turn the same shipment down: its lines are re-planned once.
            log.info(
                "shipment %s already re-planned", rejection.shipment_id, extra={"order_id": str(rejection.order_id)}
            )
            continue
        order = routed.get(order_id, shipment.order)
        routed[order_id], request = order.rejected(shipment.source_code, shipment.lines)
        requests.append(request)
        causes.append(rejection.message)
        replanned.add(shipment.shipment_id)
    if not requests:
        return
    made, network = await _plan(tx, requests, settings)
    await store.save_plans(pg, made, _days(network), rejected=replanned, routed=routed.values())
    _emit_plans(tx, made, causes)


@dataclass(frozen=True, slots=True)
class Planning:
    """What the engine plans a batch with, loaded in four statements whatever the batch's size."""

    network: domain.PlanningNetwork
    availability: domain.Availability
    chains: domain.RuleChains


async def load_planning(
    pg: asyncpg.Connection, orders: Iterable[OrderPaidData], settings: RoutingSettings, planned_at: datetime
) -> Planning:
    """The active network with each source's shipments planned today, the availability of the orders' SKUs, and
    the rule chains of their channels."""
    orders = list(orders)
    sources = await store.active_network(pg)
    planned_today = await store.shipments_planned_on(pg, domain.capacity_days(sources, planned_at))
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
    made = domain.plan_all(
        requests,
        loaded.network,
        loaded.availability,
        planned_at=planned_at,
        max_attempts=settings.max_plan_attempts,
        chains=loaded.chains,
    )
    return made, loaded.network


def _days(network: domain.PlanningNetwork) -> dict[str, date]:
    # Each shipment is stored on its source's local day, the day its daily capacity counts it.
    return {code: today.day for code, today in network.sources.items()}


def _emit_plans(tx: Transaction, made: list[FulfillmentPlannedData], causes: list[Incoming[Any]]) -> None:
    # Plans come back in the order of their requests, so each continues the trace of the event that asked for it.
    for plan, cause in zip(made, causes, strict=True):
        tx.emit(FulfillmentPlanned(source=SOURCE, subject=str(plan.order_id), data=plan), cause=cause)
