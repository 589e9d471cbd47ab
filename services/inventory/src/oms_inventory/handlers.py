"""Inventory's consumers, one per topic: load what the batch needs (locking stock rows), let the domain decide,
save in set-based statements, emit. Every consumer runs inside the runtime's batch transaction."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from oms_contracts.common import Line as LineData
from oms_contracts.fulfillment import FulfillmentCancelled, FulfillmentRejected, FulfillmentShipped
from oms_contracts.inventory import (
    BackorderQueued,
    BackorderQueuedData,
    LowStock,
    LowStockData,
    ReservationRejected,
    ReservationRejectedData,
    ShipmentReserved,
    ShipmentReservedData,
    StockCounted,
    StockLevelChanged,
    StockLevelChangedData,
    StockReceived,
)
from oms_contracts.inventory import Shortage as ShortageData
from oms_contracts.routing import SourceDeactivated, SourceUpserted
from oms_contracts.topics import (
    FULFILLMENT_UPDATES,
    INVENTORY_ALLOCATIONS,
    INVENTORY_RECEIPTS,
    INVENTORY_STOCK,
    ROUTING_NETWORK,
    ROUTING_PLANS,
)
from oms_inventory import store
from oms_inventory.domain import (
    Count,
    FulfillmentUpdate,
    InvalidShipment,
    Line,
    Receipt,
    ReservationDecision,
    ShipmentRequest,
    SourceGone,
    SourceState,
    Stock,
    StockKey,
    apply_receipts,
    fell_below_threshold,
    network_changes,
    reserve_shipments,
    settle_fulfillments,
    stock_at,
)
from oms_inventory.settings import InventorySettings
from oms_runtime import Incoming, Refused, Service, Transaction

log = logging.getLogger(__name__)

SOURCE = "/oms/inventory"


def subscribe(service: Service, settings: InventorySettings) -> None:
    """Register inventory's consumers and the topics it publishes on."""
    threshold = settings.low_stock_threshold
    service.publishes(INVENTORY_ALLOCATIONS)
    service.publishes(INVENTORY_STOCK)

    @service.consumer(ROUTING_NETWORK)
    async def on_network(tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Sources upserted or deactivated in the fulfillment network: inventory accepts receipts only for active
        sources it learnt of here."""
        changes = network_changes(_network_event(m.event) for m in messages)
        pg = await tx.pg()
        await store.upsert_sources(pg, list(changes.upserts.values()))
        deactivated = await store.deactivate_sources(pg, changes.deactivations)
        for code in set(changes.deactivations) - deactivated:
            log.info("source %s deactivated before inventory heard of it; nothing to do", code)

    @service.consumer(INVENTORY_RECEIPTS)
    async def on_receipts(tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Stock received (on hand rises) or counted (on hand replaced) at a source of the network; publishes the
        new stock levels, and a low-stock alert when availability drops below the threshold. A receipt for a
        source that is unknown or inactive is refused to the dead-letter topic and changes nothing."""
        # The topic carries exactly these two types, so movements[i] is messages[i].
        movements = [_movement(m.event) for m in messages]
        pg = await tx.pg()
        before = await store.lock_stock_at_active_sources(pg, (mv.key for mv in movements))
        refused = [mv.source_code for mv in movements if mv.key not in before]
        if refused:
            # Nothing is written before this point except zero rows at active sources, which the refusal rolls
            # back with the batch; the runtime then replays the messages one by one and dead-letters this one.
            raise Refused(_refusal(refused[0], await store.source_activity(pg, {refused[0]})))
        changes = apply_receipts(before, movements)
        await store.save_stock(pg, list(changes.stock.values()))
        _emit_stock_levels(tx, before, changes.stock, {k: messages[i] for k, i in changes.causes.items()}, threshold)

    @service.consumer(ROUTING_PLANS)
    async def on_plans(tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Fulfillment plans: each planned shipment is reserved at its source all or nothing (shipment_reserved,
        or reservation_rejected with the shortages); backordered lines join their SKU's FIFO queue
        (backorder_queued). Unfulfillable lines are the order service's business. Publishes the new stock levels."""
        shipments: list[ShipmentRequest] = []
        cause_of_shipment: list[Incoming[Any]] = []
        for m in messages:
            plan = m.event.data
            for s in plan.shipments:
                lines = (Line(line.line_id, line.sku, line.quantity) for line in s.lines)
                try:
                    shipments.append(
                        ShipmentRequest.of(s.shipment_id, plan.order_id, plan.plan_id, s.source_code, lines)
                    )
                except InvalidShipment as error:
                    raise Refused(str(error)) from error
                cause_of_shipment.append(m)
        pg = await tx.pg()
        before = await store.lock_stock(pg, (key for s in shipments for key in s.stock_keys()))
        # After the locks: a concurrent batch deciding the same shipment has committed by now.
        decided = await store.decided_shipments(pg, {s.shipment_id for s in shipments})
        for s in shipments:
            if s.shipment_id in decided:
                # Its decision and event were committed together before; the outbox publishes that one.
                log.info("shipment %s of order %s already decided; not reserved again", s.shipment_id, s.order_id)
        result = reserve_shipments(before, shipments, decided)
        await store.save_stock(pg, list(result.stock.values()))
        await store.insert_reservations(pg, result.reservations())

        newly_queued = await store.queue_backorders(
            pg,
            [
                (m.event.data.order_id, m.event.data.plan_id, line.line_id, line.sku, line.quantity)
                for m in messages
                for line in m.event.data.backordered_lines
            ],
        )

        plan_of_shipment: dict[uuid.UUID, Incoming[Any]] = {}
        for s, cause in zip(shipments, cause_of_shipment, strict=True):
            plan_of_shipment.setdefault(s.shipment_id, cause)
        ship_by = {s.shipment_id: s.estimated_ship_date for m in messages for s in m.event.data.shipments}
        for decision in result.decisions:
            shipment_id = decision.shipment.shipment_id
            tx.emit(_allocation(decision, ship_by[shipment_id]), cause=plan_of_shipment[shipment_id])
        for m in messages:
            plan = m.event.data
            joined = [line for line in plan.backordered_lines if (plan.order_id, line.line_id) in newly_queued]
            if joined:
                newly_queued.difference_update((plan.order_id, line.line_id) for line in joined)
                lines = [LineData(line_id=line.line_id, sku=line.sku, quantity=line.quantity) for line in joined]
                data = BackorderQueuedData(order_id=plan.order_id, lines=lines)
                tx.emit(BackorderQueued(source=SOURCE, subject=str(plan.order_id), data=data), cause=m)
        _emit_stock_levels(
            tx, before, result.stock, {k: cause_of_shipment[i] for k, i in result.causes.items()}, threshold
        )

    @service.consumer(FULFILLMENT_UPDATES)
    async def on_fulfillment_updates(tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Sources report on fulfillments (each one a planned shipment): shipped lowers on hand and reserved by the
        shipped lines; rejected releases the whole reservation, cancelled the cancelled lines. Publishes the new
        stock levels."""
        updates: list[FulfillmentUpdate] = []
        causes: list[Incoming[Any]] = []
        for m in messages:
            e = m.event
            if isinstance(e, FulfillmentShipped):
                updates.append(FulfillmentUpdate.shipment_left(e.data.fulfillment_id, _line_units(e.data.lines)))
            elif isinstance(e, FulfillmentCancelled):
                updates.append(FulfillmentUpdate.lines_given_back(e.data.fulfillment_id, _line_units(e.data.lines)))
            elif isinstance(e, FulfillmentRejected):
                updates.append(FulfillmentUpdate.all_given_back(e.data.fulfillment_id))
            else:
                # accepted and delivered move no stock: the units stay reserved until shipped, and a delivery
                # follows a shipment inventory has already taken off the books.
                continue
            causes.append(m)
        if not updates:
            return
        pg = await tx.pg()
        # Reservations first, then stock: every consumer that takes both locks takes them in this order.
        reservations = await store.lock_reservations(pg, {u.shipment_id for u in updates})
        before = await store.lock_stock(pg, (r.key for r in reservations))
        settlement = settle_fulfillments(before, reservations, updates)
        for index in settlement.never_reserved:
            # Not refused: a fulfillment inventory never reserved (a source that keeps no stock here, a shipment
            # refused for lack of stock) has no units to move, so there is nothing to apply and nothing to repair.
            m = causes[index]
            log.info(
                "%s for fulfillment %s: inventory holds no reservation for it; no stock moves",
                m.event.type,
                m.event.data.fulfillment_id,
                extra={"order_id": str(m.event.data.order_id)},
            )
        await store.save_reservations(pg, list(settlement.reservations.values()))
        await store.save_stock(pg, list(settlement.stock.values()))
        _emit_stock_levels(
            tx, before, settlement.stock, {k: causes[i] for k, i in settlement.causes.items()}, threshold
        )


def _network_event(event: SourceUpserted | SourceDeactivated) -> SourceState | SourceGone:
    d = event.data
    if isinstance(event, SourceUpserted):
        return SourceState(d.code, d.name, d.type.value, d.active)
    return SourceGone(d.code)


def _movement(event: StockReceived | StockCounted) -> Receipt | Count:
    d = event.data
    if isinstance(event, StockReceived):
        return Receipt(d.sku, d.source_code, d.quantity)
    return Count(d.sku, d.source_code, d.on_hand)


def _refusal(code: str, activity: Mapping[str, bool]) -> str:
    if code in activity:
        return (
            f"inactive source {code!r}: receipts are accepted only for active sources in the network "
            "(oms.routing.network.v1)"
        )
    return f"unknown source {code!r}: receipts are accepted only for sources in the network (oms.routing.network.v1)"


def _line_units(lines: Sequence[Any]) -> list[tuple[str, int]]:
    return [(line.line_id, line.quantity) for line in lines]


def _allocation(decision: ReservationDecision, ship_by: date) -> ShipmentReserved | ReservationRejected:
    s = decision.shipment
    lines = [LineData(line_id=line.line_id, sku=line.sku, quantity=line.quantity) for line in s.lines]
    ref = {"order_id": s.order_id, "shipment_id": s.shipment_id, "source_code": s.source_code, "lines": lines}
    if decision.reserved:
        data = ShipmentReservedData(**ref, plan_id=s.plan_id, ship_by=ship_by)
        return ShipmentReserved(source=SOURCE, subject=str(s.order_id), data=data)
    shortages = [ShortageData(sku=x.sku, requested=x.requested, available=x.available) for x in decision.shortages]
    data = ReservationRejectedData(**ref, plan_id=s.plan_id, shortages=shortages)
    return ReservationRejected(source=SOURCE, subject=str(s.order_id), data=data)


def _emit_stock_levels(
    tx: Transaction,
    before: Mapping[StockKey, Stock],
    after: Mapping[StockKey, Stock],
    causes: Mapping[StockKey, Incoming[Any]],
    threshold: int,
) -> None:
    """One level per changed (sku, source) per batch, its final value: routing's projection wants the latest."""
    changed_at = datetime.now(UTC)
    for key, stock in after.items():
        level = StockLevelChangedData(
            sku=stock.sku,
            source_code=stock.source_code,
            on_hand=stock.on_hand,
            reserved=stock.reserved,
            available=stock.available,
            changed_at=changed_at,
        )
        tx.emit(StockLevelChanged(source=SOURCE, subject=stock.sku, data=level), cause=causes[key])
        if fell_below_threshold(stock_at(before, key), stock, threshold):
            alert = LowStockData(
                sku=stock.sku, source_code=stock.source_code, available=stock.available, threshold=threshold
            )
            tx.emit(LowStock(source=SOURCE, subject=stock.sku, data=alert), cause=causes[key])
