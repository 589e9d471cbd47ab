"""Inventory's consumers, one per topic: load what the batch needs (locking queues and stock rows), let the domain
decide, save in set-based statements, emit. Every consumer runs inside the runtime's batch transaction.

Whatever raises available stock (receipts, counts, returns, reservations given back, claims released by cancelled
lines) goes through `_serve_backorders`: the SKU's waiting lines are served FIFO before anyone else sees the units.
So do plans whose backordered lines join a queue while a source already holds available units of that SKU."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from oms_contracts.common import Line as LineData
from oms_contracts.common import ReturnCondition
from oms_contracts.fulfillment import FulfillmentCancelled, FulfillmentRejected, FulfillmentShipped, ReasonCode
from oms_contracts.inventory import (
    BackorderAllocated,
    BackorderAllocatedData,
    BackorderedLine,
    BackorderQueued,
    BackorderQueuedData,
    LowStock,
    LowStockData,
    ReceiptExpected,
    ReceiptReason,
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
from oms_contracts.order import LinesCancelled, LinesReturned, UnitsFrom
from oms_contracts.routing import SourceDeactivated, SourceUpserted
from oms_contracts.topics import (
    FULFILLMENT_UPDATES,
    INVENTORY_ALLOCATIONS,
    INVENTORY_RECEIPTS,
    INVENTORY_STOCK,
    ORDER_EVENTS,
    ROUTING_NETWORK,
    ROUTING_PLANS,
)
from oms_inventory import held, metrics, store
from oms_inventory.domain import (
    Allocation,
    Count,
    Expectation,
    FulfillmentUpdate,
    InvalidShipment,
    Line,
    LineCancellation,
    NewBackorder,
    QueueView,
    Receipt,
    Release,
    ReleaseTerms,
    ReservationDecision,
    ReservedUnitsCancelled,
    ShipmentRequest,
    SourceGone,
    SourceState,
    Stock,
    StockKey,
    apply_receipts,
    expected_dates,
    fell_below_threshold,
    join_queues,
    network_changes,
    release_backorders,
    release_cancelled_units,
    reserve_shipments,
    settle_fulfillments,
    stock_at,
    where_new_lines_may_be_served,
)
from oms_inventory.settings import InventorySettings
from oms_runtime import Incoming, Refused, Service, Transaction, telemetry
from oms_runtime.loop import run_when_woken

log = logging.getLogger(__name__)

SOURCE = "/oms/inventory"

# A source that gives units back for these reasons says they are not on its shelf: written off, never available.
NOT_THERE = frozenset({ReasonCode.out_of_stock, ReasonCode.damaged})

# How many waiting lines of a SKU a release reads first: at least this many, and twice the units that came in (a
# line takes one unit at least, and some lines are passed over). When the domain says it needs more, twice as many.
FIRST_READ = 256
MOST_AT_ONCE = 20_000


def subscribe(service: Service, settings: InventorySettings) -> None:
    """Register inventory's consumers and the topics it publishes on."""
    threshold = settings.low_stock_threshold
    service.publishes(INVENTORY_ALLOCATIONS)
    service.publishes(INVENTORY_STOCK)

    @service.worker
    async def let_go_of_expired_receipts() -> None:
        """Records held for a source the network has not announced within the grace period go to the dead-letter
        topic with the reason."""
        grace = timedelta(seconds=settings.held_receipt_grace_s)

        async def expire() -> None:
            while await held.dead_letter_expired(service, grace, datetime.now(UTC)):
                pass

        wake = asyncio.Event()
        await run_when_woken(wake, expire, interval=settings.held_receipt_check_s, what="held receipts")

    @service.consumer(ROUTING_NETWORK, handles=(SourceUpserted, SourceDeactivated))
    async def on_network(tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Sources upserted or deactivated in the fulfillment network: inventory accepts receipts only for active
        sources it learnt of here, and applies now what waited for a source it had not heard of (dead-letters it,
        when the source is announced inactive); it releases a waiting line only at a source that ships to its
        country; a
        release's ship-by date counts the source's handling days in its time zone. When what a source serves
        changes, units it set aside for orders it can no longer serve go back, and its available stock serves the
        lines it now may. Rule chains are routing's own business and are skipped."""
        await receive_network(tx, messages, threshold)

    @service.consumer(INVENTORY_RECEIPTS)
    async def on_receipts(tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Stock received (on hand rises), counted (on hand replaced) or announced (an expected receipt) at a source
        of the network. Units that become available serve the SKU's waiting lines first, oldest first
        (backorder_allocated, one per order and source); then the new stock levels are published, and a low-stock
        alert when availability drops below the threshold. A receipt settles the announcement with its reference,
        else uses up the earliest ones. A receipt, count or announcement for a source inventory has not heard of
        yet waits for the network to announce it (then it is applied in that transaction) for a grace period, and is
        dead-lettered with the reason after it; one for a source known as inactive is refused to the dead-letter
        topic at once and changes nothing."""
        await receive_stock(tx, messages, threshold)

    @service.consumer(ROUTING_PLANS)
    async def on_plans(tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Fulfillment plans: each planned shipment is reserved at its source all or nothing (shipment_reserved,
        or reservation_rejected with the shortages); backordered lines join their SKU's FIFO queue with the plan's
        terms (country, pickup store, ship complete), and units of a line that still waits are added to it at its
        place. Units the order service cancelled before the plan arrived are neither reserved nor queued, and a plan
        delivered again adds nothing. Where a source already holds available units of a SKU that gained waiting
        lines (routing planned on a view of stock that lagged), it serves that queue at once, oldest line first
        (backorder_allocated); units still waiting after that are announced with their place and expected date
        (backorder_queued, before the allocations of the same order). Unfulfillable lines are the order service's
        business. Publishes the new stock levels."""
        await receive_plans(tx, messages, threshold)

    @service.consumer(FULFILLMENT_UPDATES, handles=(FulfillmentShipped, FulfillmentRejected, FulfillmentCancelled))
    async def on_fulfillment_updates(tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Sources report on fulfillments (each one a planned or released shipment): shipped lowers on hand and
        reserved by the shipped lines; rejected releases the whole reservation, cancelled the cancelled lines, and
        the units given back serve the SKU's waiting lines first, unless the source says they are not there
        (reason_code out_of_stock or damaged): then they are written off its on hand. Publishes the new stock
        levels."""
        await receive_fulfillment_updates(tx, messages, threshold)

    @service.consumer(ORDER_EVENTS, handles=(LinesCancelled, LinesReturned))
    async def on_order_events(tx: Transaction, messages: list[Incoming[Any]]) -> None:
        """Facts the order service decided after the sale. Lines cancelled: backordered units leave the backorder
        queue (a line at 0 leaves it) and units set aside for them serve the next waiting lines; reserved units are
        released from their shipment's reservation and serve the SKU's waiting lines at that source first (FIFO);
        requested and open units hold nothing here. Units cancelled before the plan that queues or reserves them
        arrived are remembered and never queued or reserved. Lines returned: resellable units are restocked at the
        source that received them (on hand up, the SKU's waiting lines served first, stock level published); damaged
        units are not; a return to restock at a source not heard of yet waits for it as a receipt does, one at an
        inactive source is refused to the dead-letter topic and changes nothing. Every other order event is
        skipped."""
        await receive_order_events(tx, messages, settings)


# --- the network -------------------------------------------------------------------------------------------------


async def receive_network(tx: Transaction, messages: list[Incoming[Any]], threshold: int) -> None:
    sourced = [m for m in messages if isinstance(m.event, SourceUpserted | SourceDeactivated)]
    if not sourced:
        return
    changes = network_changes(_network_event(m.event) for m in sourced)
    pg = await tx.pg()
    known = await store.all_sources(pg)
    await store.upsert_sources(pg, list(changes.upserts.values()))
    deactivated = await store.deactivate_sources(pg, changes.deactivations)
    for code in set(changes.deactivations) - deactivated:
        log.info("source %s deactivated before inventory heard of it; nothing to do", code)
    # What waited for these sources goes now, in this transaction: applied at an active source, dead-lettered at one
    # announced inactive. Exclusive source locks: a batch that finds one of them unknown has held its records
    # before this looks, or waits and then finds the source.
    named = set(changes.upserts) | set(changes.deactivations)
    await store.lock_sources(pg, named, exclusive=True)
    let_go = [held.incoming(h) for h in await store.take_held(pg, named)]
    try:
        sources = await store.all_sources(pg)
        await held.dead_letter(
            tx,
            [m for m in let_go if not _active(sources, _held_for(m))],
            [_refused_now(m, sources) for m in let_go if not _active(sources, _held_for(m))],
        )
        applied = [m for m in let_go if _active(sources, _held_for(m))]
        for m in applied:
            log.info("%s held for source %s applied: the source joined the network", m.event.type, _held_for(m))
        movements, causes = _movements_of_held(applied, sources)
        # A source that now serves other lines than before (activated, deactivated, other countries) moves queues:
        # claims it can no longer honour go back, and stock it now may ship goes to the lines waiting for it.
        moved = {code for code in sources if _serving_terms(known.get(code)) != _serving_terms(sources[code])}
        skus = await store.skus_to_reconsider(pg, moved)
        await _apply_movements(
            tx, pg, sources, movements, causes, threshold, fallback=sourced[-1], reconsidered=moved, read=skus
        )
    finally:
        for m in let_go:
            m.span.end()


def _active(sources: Mapping[str, SourceState], code: str) -> bool:
    known = sources.get(code)
    return known is not None and known.active


def _held_for(message: Incoming[Any]) -> str:
    """The source a held record names."""
    return message.event.data.source_code


def _refused_now(message: Incoming[Any], sources: Mapping[str, SourceState]) -> str:
    code = _held_for(message)
    state = "inactive" if code in sources else "deactivated"
    return (
        f"{state} source {code!r}: {held.what(message)} are accepted only for active sources in the network "
        "(oms.routing.network.v1); it was announced inactive while they waited for it"
    )


def _movements_of_held(
    messages: Sequence[Incoming[Any]], sources: Mapping[str, SourceState]
) -> tuple[list[Receipt | Count | Expectation], list[Incoming[Any]]]:
    """Held records as the movements they are, each with the message it comes from: a receipt, count or expected
    receipt as such; a return as a receipt of its resellable units."""
    movements: list[Receipt | Count | Expectation] = []
    causes: list[Incoming[Any]] = []
    for m in messages:
        if isinstance(m.event, LinesReturned):
            receipts, of = _returns([m], sources)
            movements += receipts
            causes += of
        else:
            movements.append(_movement(m.event))
            causes.append(m)
    return movements, causes


def _serving_terms(source: SourceState | None) -> tuple[bool, frozenset[str] | None] | None:
    return None if source is None else (source.active, source.countries)


def _network_event(event: SourceUpserted | SourceDeactivated) -> SourceState | SourceGone:
    d = event.data
    if isinstance(event, SourceUpserted):
        return SourceState(d.code, d.name, d.type.value, d.active, frozenset(d.countries), d.handling_days, d.timezone)
    return SourceGone(d.code)


# --- receipts, counts, announcements -----------------------------------------------------------------------------


async def receive_stock(tx: Transaction, messages: list[Incoming[Any]], threshold: int) -> None:
    # The topic carries exactly these three types, so movements[i] is messages[i].
    movements = [_movement(m.event) for m in messages]
    pg = await tx.pg()
    sources = await _sources_for(pg, {mv.source_code for mv in movements})
    waiting: list[tuple[Incoming[Any], str]] = []
    applied: list[tuple[Receipt | Count | Expectation, Incoming[Any]]] = []
    for movement, m in zip(movements, messages, strict=True):
        known = sources.get(movement.source_code)
        if known is None:
            waiting.append((m, movement.source_code))
        elif not known.active:
            # Nothing is written yet; the runtime replays the batch one message at a time and dead-letters this one.
            raise Refused(_refusal(movement, known))
        else:
            applied.append((movement, m))
    await _hold(pg, waiting)
    if applied:
        await _apply_movements(
            tx, pg, sources, [mv for mv, _ in applied], [m for _, m in applied], threshold, fallback=messages[-1]
        )


async def _sources_for(pg: asyncpg.Connection, codes: Collection[str]) -> dict[str, SourceState]:
    """The network as this batch may act on it for records naming `codes`. A code not known yet is looked up again
    under its source lock (shared), which a batch of the network holds (exclusive) while it lets go of what waits
    for its sources: a record is then either held before that batch looks, or finds the source it committed."""
    sources = await store.all_sources(pg)
    unknown = set(codes) - set(sources)
    if unknown:
        await store.lock_sources(pg, unknown, exclusive=False)
        sources = await store.all_sources(pg)
    return sources


async def _hold(pg: asyncpg.Connection, waiting: Sequence[tuple[Incoming[Any], str]]) -> None:
    """Keep records for sources not heard of yet until the network announces them (or the grace period ends)."""
    if not waiting:
        return
    await store.hold(pg, [held.record_of(m, code) for m, code in waiting])
    for m, code in waiting:
        log.info(
            "%s for source %s held: inventory has not heard of the source yet (oms.routing.network.v1)",
            m.event.type,
            code,
            extra={"order_id": m.event.subject} if m.record.topic == ORDER_EVENTS.name else {},
        )


async def _apply_movements(
    tx: Transaction,
    pg: asyncpg.Connection,
    sources: Mapping[str, SourceState],
    movements: Sequence[Receipt | Count | Expectation],
    messages: Sequence[Incoming[Any]],
    threshold: int,
    *,
    fallback: Incoming[Any],
    reconsidered: Collection[str] = (),
    read: Collection[str] = (),
) -> None:
    """Receipts add to on hand, counts replace it, announcements are recorded (movements[i] comes from
    messages[i]); what becomes available serves waiting lines first, and so do sources whose terms changed
    (`reconsidered`, with the SKUs to `read` for them); stock levels are published."""
    moved_skus = {mv.sku for mv in movements}
    skus = moved_skus | set(read)
    if not skus:
        return
    creates = [mv.key for mv in movements if not isinstance(mv, Expectation)]
    batch = await _Batch.lock(pg, skus, sources, create=creates)
    expected = await store.open_expected_receipts(pg, moved_skus) if moved_skus else []
    changes = apply_receipts(batch.before, movements, expected)
    for index in changes.stale_counts:
        # Not refused: a late count is a normal hazard of a feed (a retry, a slow path), and it carries nothing
        # that a later count has not replaced.
        count = movements[index]
        log.info(
            "count of %s at %s as of %s not applied: a count as of %s was applied already",
            count.sku,
            count.source_code,
            count.counted_at.isoformat() if isinstance(count, Count) and count.counted_at else "?",
            _counted_at(changes.stock.get(count.key) or batch.before.get(count.key)),
        )
    batch.moved(changes.stock)
    release = await _serve_backorders(batch, reconsidered=reconsidered, read=read)
    await batch.save(tx, release)
    await store.save_expected_receipts(pg, changes.expected)
    by_sku = {mv.sku: m for mv, m in zip(movements, messages, strict=True)}
    causes = _Causes(fallback, by_sku, {key: messages[i] for key, i in changes.causes.items()})
    batch.emit(tx, release, causes, threshold)


def _movement(event: StockReceived | StockCounted | ReceiptExpected) -> Receipt | Count | Expectation:
    d = event.data
    if isinstance(event, StockReceived):
        return Receipt(d.sku, d.source_code, d.quantity, d.reference, returned=d.reason is ReceiptReason.return_)
    if isinstance(event, ReceiptExpected):
        return Expectation(d.sku, d.source_code, d.quantity, d.expected_date, d.reference)
    return Count(d.sku, d.source_code, d.on_hand, d.counted_at)


def _counted_at(stock: Stock | None) -> str:
    return stock.counted_at.isoformat() if stock is not None and stock.counted_at else "?"


def _refusal(movement: Receipt | Count | Expectation, known: SourceState | None) -> str:
    what = "expected receipts" if isinstance(movement, Expectation) else "receipts"
    code = movement.source_code
    if known is not None:
        return (
            f"inactive source {code!r}: {what} are accepted only for active sources in the network "
            "(oms.routing.network.v1)"
        )
    return f"unknown source {code!r}: {what} are accepted only for sources in the network (oms.routing.network.v1)"


# --- plans -------------------------------------------------------------------------------------------------------


async def receive_plans(tx: Transaction, messages: list[Incoming[Any]], threshold: int) -> None:
    shipments: list[ShipmentRequest] = []
    cause_of_shipment: list[Incoming[Any]] = []
    new_lines: list[NewBackorder] = []
    plan_cause: dict[uuid.UUID, Incoming[Any]] = {}
    for m in messages:
        plan = m.event.data
        for s in plan.shipments:
            lines = (Line(line.line_id, line.sku, line.quantity) for line in s.lines)
            try:
                shipments.append(ShipmentRequest.of(s.shipment_id, plan.order_id, plan.plan_id, s.source_code, lines))
            except InvalidShipment as error:
                raise Refused(str(error)) from error
            cause_of_shipment.append(m)
        if plan.plan_id in plan_cause:
            # The same plan twice in one batch (delivered again under another event id): its lines join once.
            continue
        plan_cause[plan.plan_id] = m
        terms = ReleaseTerms(plan.ship_to_country, plan.pickup_source, plan.ship_complete)
        new_lines += [
            NewBackorder(plan.order_id, plan.plan_id, x.line_id, x.sku, x.quantity, terms, plan.planned_at)
            for x in plan.backordered_lines
        ]
    pg = await tx.pg()
    # Lines join their queues under the queue locks of their SKUs (and every stock row of those SKUs is locked):
    # a release of one of them running at the same time has either committed its stock, which this batch then
    # offers the new lines, or waits and then finds the new lines in the queue. Reserving alone takes no queue
    # lock: it only takes units that are available, which no waiting line the source may serve wants (a release
    # served it first, or set the units aside). The shipment locks come first: a cancellation of reserved units
    # that finds no reservation writes its tombstone under them, so this batch sees the tombstone or the
    # cancellation sees the reservation.
    # The network, when lines join: a release needs it (which source may serve which line), and so do their dates.
    sources = await store.all_sources(pg) if new_lines else {}
    batch = await _Batch.lock(
        pg,
        {line.sku for line in new_lines},
        sources,
        keys=(key for s in shipments for key in s.stock_keys()),
        orders={line.order_id for line in new_lines if line.terms.ship_complete},
        shipments={s.shipment_id for s in shipments},
    )
    # After the locks: a concurrent batch deciding the same shipment has committed by now.
    decided = await store.decided_shipments(pg, {s.shipment_id for s in shipments})
    for s in shipments:
        if s.shipment_id in decided:
            # Its decision and event were committed together before; the outbox publishes that one.
            log.info("shipment %s of order %s already decided; not reserved again", s.shipment_id, s.order_id)
    recorded = await store.record_joins(pg, new_lines)
    for line in new_lines:
        if (line.plan_id, line.line_id) not in recorded:
            log.info(
                "line %s of order %s already joined its queue from plan %s", line.line_id, line.order_id, line.plan_id
            )
    new_lines = [line for line in new_lines if (line.plan_id, line.line_id) in recorded]
    tombstones = await store.tombstones_of(
        pg, {s.shipment_id for s in shipments} - decided, {(line.order_id, line.line_id) for line in new_lines}
    )
    result = reserve_shipments(batch.before, shipments, decided, tombstones)
    metrics.reservations(tx, result.decisions)
    joining = join_queues(new_lines, tombstones)
    reserved_now = {d.shipment.shipment_id for d in result.decisions}
    # A shipment's tombstones are used up by its decision, whatever it was: the units are not held either way.
    used = [*joining.tombstones, *(replace(t, quantity=0) for t in tombstones if t.shipment_id in reserved_now)]
    await store.use_tombstones(pg, used)
    batch.moved(result.stock)
    await store.insert_reservations(tx, result.reservations())

    queued = await store.queue_backorders(pg, joining.lines)
    # Routing may have backordered a line for which a source already holds stock (its view of stock lags): that
    # source serves the queue now, oldest line first, instead of leaving the line to wait for a receipt that may
    # never come.
    batch.offer(where_new_lines_may_be_served(batch.after, {line.sku for line in joining.lines}))
    release = await _serve_backorders(batch)
    await batch.save(tx, release)

    plan_of_shipment: dict[uuid.UUID, Incoming[Any]] = {}
    for s, cause in zip(shipments, cause_of_shipment, strict=True):
        plan_of_shipment.setdefault(s.shipment_id, cause)
    ship_by = {s.shipment_id: s.estimated_ship_date for m in messages for s in m.event.data.shipments}
    for decision in result.decisions:
        shipment_id = decision.shipment.shipment_id
        if decision.emptied:
            # shipment_reserved names at least one unit; the order service cancelled every one of them, so it has
            # nothing to request and waits for nothing (docs/architecture.md, "Cancelled units").
            log.info(
                "every unit of shipment %s was cancelled before it was reserved; nothing is held",
                shipment_id,
                extra={"order_id": str(decision.shipment.order_id)},
            )
            continue
        tx.emit(_reservation_event(decision, ship_by[shipment_id]), cause=plan_of_shipment[shipment_id])

    # Only units still waiting after the release are announced as queued: a line served at once is told by its
    # allocation alone (the order service accepts units it has not seen queued), and the customer is never mailed
    # to wait for units that ship now.
    arrival_of = {(x.order_id, x.line_id): queued[(x.order_id, x.line_id)].arrival for x in joining.lines}
    waiting = release.still_waiting(
        {arrival_of[(x.order_id, x.line_id)]: x.quantity for x in joining.lines},
        {q.arrival: q.waiting for q in queued.values()},
    )
    announced = [x for x in joining.lines if arrival_of[(x.order_id, x.line_id)] in waiting]
    places = await _places_of_lines(
        pg,
        {arrival_of[(x.order_id, x.line_id)]: x.sku for x in announced},
        {q.arrival for q in queued.values() if q.new},
        sources,
    )
    queued_by_sku: dict[str, Incoming[Any]] = {}
    by_plan: dict[uuid.UUID, list[BackorderedLine]] = {}
    for x in announced:
        arrival = arrival_of[(x.order_id, x.line_id)]
        position, expected = places[arrival]
        line = BackorderedLine(
            line_id=x.line_id, sku=x.sku, quantity=waiting[arrival], position=position, expected_date=expected
        )
        by_plan.setdefault(x.plan_id, []).append(line)
        queued_by_sku[x.sku] = plan_cause[x.plan_id]
    for plan_id, lines in by_plan.items():
        m = plan_cause[plan_id]
        data = BackorderQueuedData(order_id=m.event.data.order_id, lines=lines)
        tx.emit(BackorderQueued(source=SOURCE, subject=str(data.order_id), data=data), cause=m)
    # Allocations after every backorder_queued: both travel on the allocations topic keyed by order, so the order
    # service learns that units wait before it learns that they were served.
    reserved_by = {key: cause_of_shipment[i] for key, i in result.causes.items()}
    batch.emit(tx, release, _Causes(messages[-1], queued_by_sku, reserved_by), threshold)


async def _places_of_lines(
    pg: asyncpg.Connection, sku_of: Mapping[int, str], appended: Collection[int], sources: Mapping[str, SourceState]
) -> dict[int, tuple[int, date | None]]:
    """Each waiting line's live place in its SKU's queue (by arrival), and its expected date when announced
    receipts give one. Lines this batch `appended` stand together at the back of their queues (the batch holds
    their queue locks): what waits ahead of the first of them is counted once per SKU, and the rest follow in
    arrival order. A line that gained units stands where it stood, and is counted on its own."""
    if not sku_of:
        return {}
    firsts: dict[str, int] = {}
    counted_alone: dict[int, str] = {}
    for arrival in sorted(sku_of):
        if arrival in appended:
            firsts.setdefault(sku_of[arrival], arrival)
        else:
            counted_alone[arrival] = sku_of[arrival]
    ahead = await store.waiting_ahead(pg, {**counted_alone, **{arrival: sku for sku, arrival in firsts.items()}})
    places: dict[int, tuple[int, date | None]] = {}
    behind_first: dict[str, int] = {}
    for arrival in sorted(sku_of):
        sku = sku_of[arrival]
        if arrival in counted_alone:
            places[arrival] = (ahead[arrival] + 1, None)
        else:
            behind_first[sku] = behind_first.get(sku, 0) + 1
            places[arrival] = (ahead[firsts[sku]] + behind_first[sku], None)
    skus = set(sku_of.values())
    expected = await store.open_expected_receipts(pg, skus)
    if expected:
        # Dating a line means handing announced units to every line ahead of it first: read those queues whole, and
        # those of SKUs without announcements too (an order that ships complete waits for its last line).
        queue = await store.waiting_queue(pg, skus)
        dates = expected_dates(queue, expected, sources)
        for arrival, (position, _) in places.items():
            places[arrival] = (position, dates.get(arrival))
    return places


def _reservation_event(decision: ReservationDecision, ship_by: date) -> ShipmentReserved | ReservationRejected:
    s = decision.shipment
    # What was asked of the source once units cancelled ahead of the plan are taken out.
    lines = [LineData(line_id=line.line_id, sku=line.sku, quantity=line.quantity) for line in decision.lines]
    ref = {"order_id": s.order_id, "shipment_id": s.shipment_id, "source_code": s.source_code, "lines": lines}
    if decision.reserved:
        data = ShipmentReservedData(**ref, plan_id=s.plan_id, ship_by=ship_by)
        return ShipmentReserved(source=SOURCE, subject=str(s.order_id), data=data)
    shortages = [ShortageData(sku=x.sku, requested=x.requested, available=x.available) for x in decision.shortages]
    data = ReservationRejectedData(**ref, plan_id=s.plan_id, shortages=shortages)
    return ReservationRejected(source=SOURCE, subject=str(s.order_id), data=data)


# --- fulfillment updates -----------------------------------------------------------------------------------------


async def receive_fulfillment_updates(tx: Transaction, messages: list[Incoming[Any]], threshold: int) -> None:
    updates: list[FulfillmentUpdate] = []
    causes: list[Incoming[Any]] = []
    for m in messages:
        e = m.event
        if isinstance(e, FulfillmentShipped):
            updates.append(FulfillmentUpdate.shipment_left(e.data.fulfillment_id, _line_units(e.data.lines)))
        elif isinstance(e, FulfillmentCancelled):
            missing = e.data.reason_code in NOT_THERE
            updates.append(
                FulfillmentUpdate.lines_given_back(e.data.fulfillment_id, _line_units(e.data.lines), missing=missing)
            )
        elif isinstance(e, FulfillmentRejected):
            updates.append(
                FulfillmentUpdate.all_given_back(e.data.fulfillment_id, missing=e.data.reason_code in NOT_THERE)
            )
        else:
            # accepted and delivered move no stock: the units stay reserved until shipped, and a delivery
            # follows a shipment inventory has already taken off the books.
            continue
        causes.append(m)
    if not updates:
        return
    pg = await tx.pg()
    # Reservations first, then queues, then stock: every consumer that takes these locks takes them in this order.
    reservations = await store.lock_reservations(pg, {u.shipment_id for u in updates})
    if all(u.shipped for u in updates):
        # Shipping lowers on hand and reserved together: nothing becomes available, no queue is served.
        batch = _Batch(pg, {}, frozenset(), await store.lock_stock(pg, (r.key for r in reservations)))
    else:
        batch = await _Batch.lock(pg, {r.sku for r in reservations}, await store.all_sources(pg))
    settlement = settle_fulfillments(batch.before, reservations, updates)
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
    reasons = {}
    for (sku, source_code), units in settlement.written_off.items():
        # Not available again: a waiting line served from them would wait at a source that cannot ship it.
        reasons[(sku, source_code)] = (
            f"{source_code} reported {units} reserved unit(s) not there (out of stock or damaged): written off its "
            "on hand until its next count"
        )
        log.info("%s of %s: %s", units, sku, reasons[(sku, source_code)])
    await store.save_reservations(pg, list(settlement.reservations.values()))
    batch.moved(settlement.stock)
    release = await _serve_backorders(batch)
    await batch.save(tx, release)
    by_sku = {sku: causes[i] for sku, i in settlement.sku_causes.items()}
    emitted = _Causes(causes[-1], by_sku, {k: causes[i] for k, i in settlement.causes.items()})
    batch.emit(tx, release, emitted, threshold, reasons)


def _line_units(lines: Sequence[Any]) -> list[tuple[str, int]]:
    return [(line.line_id, line.quantity) for line in lines]


# --- order events ------------------------------------------------------------------------------------------------


async def receive_order_events(tx: Transaction, messages: list[Incoming[Any]], settings: InventorySettings) -> None:
    cancelled = [m for m in messages if isinstance(m.event, LinesCancelled)]
    returned = [m for m in messages if isinstance(m.event, LinesReturned)]
    if not cancelled and not returned:
        return
    pg = await tx.pg()
    sources = await _sources_for(pg, {m.event.data.source_code for m in returned if _restocks(m)})
    # A return to restock at a source not heard of yet waits for it, as a receipt does.
    await _hold(pg, [(m, m.event.data.source_code) for m in returned if _restocks(m) and not _known(sources, m)])
    returned = [m for m in returned if _known(sources, m)]
    receipts, receipt_causes = _returns(returned, sources)
    # Where the cancelled units were decides what inventory gives back (docs/architecture.md, "Cancelled units").
    waiting: list[LineCancellation] = []
    reserved: list[ReservedUnitsCancelled] = []
    reserved_causes: list[Incoming[Any]] = []
    skus_named: set[str] = set()
    for m in cancelled:
        d, at = m.event.data, m.event.time
        if not d.units:
            # An older event that does not say where the units were: its lines leave the queue as far as they wait.
            waiting += [LineCancellation(d.order_id, line.line_id, line.quantity) for line in d.lines]
            continue
        for u in d.units:
            if u.from_state is UnitsFrom.backordered:
                waiting.append(LineCancellation(d.order_id, u.line_id, u.quantity, at))
                skus_named.add(u.sku)
            elif u.from_state is UnitsFrom.reserved:
                if u.fulfillment_id is None:
                    raise Refused(
                        f"order {d.order_id}: {u.quantity} reserved unit(s) of line {u.line_id} cancelled without "
                        "the fulfillment_id of the shipment that holds them"
                    )
                reserved.append(ReservedUnitsCancelled(d.order_id, u.fulfillment_id, u.line_id, u.quantity, at))
                reserved_causes.append(m)
            # open: nothing was held. requested: the source's fulfillment.cancelled has already given them back.
    orders = {c.order_id for c in waiting}
    if waiting:
        # Read without locks to learn which queues to lock; read again under the locks below. A backordered unit
        # names its SKU: that queue is locked even when nothing waits, so that its tombstone and the plan that
        # queues the line never miss each other.
        wanted = {(c.order_id, c.line_id) for c in waiting}
        lines = await store.waiting_lines_of_orders(pg, orders)
        skus_named |= {line.sku for line in lines if (line.order_id, line.line_id) in wanted}
    if not skus_named and not reserved and not receipts:
        log.info("lines cancelled on %d order(s), none of them waiting for stock", len(orders))
        return
    # Shipment locks, then reservation rows, then queues and stock: the order every consumer takes them in.
    shipment_ids = {c.shipment_id for c in reserved}
    await store.lock_shipments(pg, shipment_ids)
    reservations = await store.lock_reservations(pg, shipment_ids)
    skus = skus_named | {r.sku for r in reservations} | {r.sku for r in receipts}
    batch = await _Batch.lock(pg, skus, sources, create=[r.key for r in receipts])
    settled = release_cancelled_units(batch.before, reservations, reserved)
    restocked = apply_receipts({**batch.before, **settled.stock}, receipts)
    batch.moved({**settled.stock, **restocked.stock})
    await store.save_reservations(pg, list(settled.reservations.values()))
    release = await _serve_backorders(batch, cancelled=waiting, orders=orders, read=skus_named)
    for c in release.unmatched:
        if c.cancelled_at is None:
            # Not waiting (served or never backordered), and the event does not say where the units were.
            log.info("line %s of order %s cancelled; it waits in no queue", c.line_id, c.order_id)
    for t in [*settled.tombstones, *release.tombstones]:
        where = f"shipment {t.shipment_id} not reserved yet" if t.shipment_id else "no queue yet"
        log.info(
            "%d unit(s) of line %s of order %s cancelled ahead of their plan (%s): remembered",
            t.quantity,
            t.line_id,
            t.order_id,
            where,
        )
    await store.add_tombstones(pg, [*settled.tombstones, *release.tombstones], settings.tombstone_days)
    await batch.save(tx, release)
    by_sku = {line.sku: m for m in cancelled for line in release.lines if line.order_id == m.event.data.order_id}
    by_sku |= {r.sku: receipt_causes[i] for i, r in enumerate(receipts)}
    by_key = {key: reserved_causes[i] for key, i in settled.causes.items()}
    by_key |= {key: receipt_causes[i] for key, i in restocked.causes.items()}
    batch.emit(tx, release, _Causes(messages[-1], by_sku, by_key), settings.low_stock_threshold)


def _restocks(message: Incoming[Any]) -> bool:
    """Whether a return has units to put back on a shelf."""
    return any(line.condition is ReturnCondition.resellable for line in message.event.data.lines)


def _known(sources: Mapping[str, SourceState], message: Incoming[Any]) -> bool:
    return message.event.data.source_code in sources or not _restocks(message)


def _returns(
    returned: list[Incoming[Any]], sources: Mapping[str, SourceState]
) -> tuple[list[Receipt], list[Incoming[Any]]]:
    """Resellable units of accepted returns, as receipts at the source that received them; damaged units are not
    restocked. A return with units to restock at a source inventory knows as inactive (or not at all: a caller
    holds those first) is refused: nothing is written yet, and the runtime replays the batch one message at a time
    and dead-letters it."""
    receipts: list[Receipt] = []
    causes: list[Incoming[Any]] = []
    for m in returned:
        d = m.event.data
        for line in d.lines:
            if line.condition is not ReturnCondition.resellable:
                log.info(
                    "return %s: %d %s of line %s came back %s; not restocked",
                    d.return_id,
                    line.quantity,
                    line.sku,
                    line.line_id,
                    line.condition.value,
                    extra={"order_id": str(d.order_id)},
                )
                continue
            known = sources.get(d.source_code)
            if known is None or not known.active:
                state = "unknown" if known is None else "inactive"
                raise Refused(
                    f"return {d.return_id}: {state} source {d.source_code!r}; returned units are restocked only at "
                    "active sources in the network (oms.routing.network.v1)"
                )
            receipts.append(Receipt(line.sku, d.source_code, line.quantity, returned=True))
            causes.append(m)
    return receipts, causes


# --- serving the queues ------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    """What a batch that may serve waiting lines holds: the queue locks of its SKUs, every stock row of them as it
    was locked (`before`) and as the batch's own movements left it (`after`), and the network."""

    pg: asyncpg.Connection
    sources: Mapping[str, SourceState]
    locked: frozenset[str]
    before: dict[StockKey, Stock]
    after: dict[StockKey, Stock] = field(default_factory=dict)
    # Where available units rose, in the order the batch raised them.
    increased: list[StockKey] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Until the batch moves stock itself (a cancellation moves none), it stands as locked.
        self.after = self.after or dict(self.before)

    @classmethod
    async def lock(
        cls,
        pg: asyncpg.Connection,
        skus: Collection[str],
        sources: Mapping[str, SourceState],
        create: Iterable[StockKey] = (),
        keys: Iterable[StockKey] = (),
        orders: Collection[uuid.UUID] = (),
        shipments: Collection[uuid.UUID] = (),
    ) -> _Batch:
        """Shipment locks of `shipments`, queue locks, then stock rows (see store's lock order), of `skus` and of
        the SKUs of orders that ship complete and wait for one of them (or are `orders`); and the stock rows of
        `keys`, in the same statement."""
        locked = frozenset(await store.queue_skus(pg, skus, orders))
        await store.lock_queues(pg, locked, shipments)
        return cls(pg, sources, locked, await store.lock_stock_of_skus(pg, locked, create, keys))

    def moved(self, changed: Mapping[StockKey, Stock]) -> None:
        self.after = {**self.before, **changed}
        self.increased = [key for key in changed if changed[key].available > stock_at(self.before, key).available]

    def offer(self, keys: Iterable[StockKey]) -> None:
        """These sources walk these SKUs' queues with what they have available, as if it had just arrived."""
        self.increased += [key for key in keys if key not in self.increased]

    async def lock_more(self, skus: Collection[str]) -> None:
        """A line of a SKU not locked yet: lock it now (out of the usual order; see store)."""
        more = await store.queue_skus(self.pg, skus) - self.locked
        await store.lock_queues(self.pg, more)
        rows = await store.lock_stock_of_skus(self.pg, more)
        self.before.update(rows)
        self.after = {**rows, **self.after}
        self.locked |= more

    async def save(self, tx: Transaction, release: Release) -> None:
        # The waiting lines at once (a plan's batch reads the queues after it); stock and reservations with the
        # batch's last statement.
        await store.save_backorders(self.pg, release.lines)
        await store.save_stock(tx, list(self.changed(release).values()))
        await store.insert_reservations(tx, [r for a in release.allocations for r in a.reservations()])

    def changed(self, release: Release) -> dict[StockKey, Stock]:
        final = {**self.after, **release.stock}
        return {key: row for key, row in final.items() if stock_at(self.before, key) != row}

    def emit(
        self,
        tx: Transaction,
        release: Release,
        causes: _Causes,
        threshold: int,
        reasons: Mapping[StockKey, str] | None = None,
    ) -> None:
        # A restock may release thousands of shipments from one message: its trace context is computed once.
        traceparents: dict[uuid.UUID, str | None] = {}
        for allocation in release.allocations:
            cause = causes.of_sku(allocation.lines[0].sku)
            if cause.id not in traceparents:
                traceparents[cause.id] = telemetry.traceparent_of(cause.span)
            tx.emit(_allocation_event(allocation), cause=cause, traceparent=traceparents[cause.id])
        changed = self.changed(release)
        _emit_stock_levels(tx, self.before, changed, {key: causes.of(key) for key in changed}, threshold, reasons)


@dataclass
class _Causes:
    """Which incoming message an outgoing event continues the trace of: the one that changed that stock row, else
    the last one about its SKU."""

    fallback: Incoming[Any]
    by_sku: dict[str, Incoming[Any]]
    by_key: dict[StockKey, Incoming[Any]] = field(default_factory=dict)

    def of_sku(self, sku: str) -> Incoming[Any]:
        return self.by_sku.get(sku) or self.fallback

    def of(self, key: StockKey) -> Incoming[Any]:
        return self.by_key.get(key) or self.of_sku(key[0])


async def _serve_backorders(
    batch: _Batch,
    cancelled: Sequence[LineCancellation] = (),
    orders: Collection[uuid.UUID] = (),
    read: Collection[str] = (),
    reconsidered: Collection[str] = (),
) -> Release:
    """Serve waiting lines from what became available: read the front of each queue, let the domain decide, and
    when it needs more of a queue (or a SKU not locked yet), read or lock it and decide again from the start. A
    restock of a SKU with 10,000 waiting lines is a few statements, not one per line."""
    over_claimed = any(row.over_claimed for row in batch.after.values())
    if not batch.increased and not cancelled and not over_claimed and not reconsidered:
        return Release({}, [], [])
    rose: dict[str, int] = {}
    for key in batch.increased:
        units = batch.after[key].available - stock_at(batch.before, key).available
        # Units offered to lines that just joined did not rise in this batch: all that is available is offered.
        units = units if units > 0 else batch.after[key].available
        rose[key[0]] = rose.get(key[0], 0) + units
    reader = _QueueReader(batch.pg)
    first = {sku: min(max(FIRST_READ, 2 * units), MOST_AT_ONCE) for sku, units in rose.items()}
    for sku in set(read) - set(first):
        first[sku] = FIRST_READ
    await reader.read(first, claimed=batch.locked, orders=orders)
    now = datetime.now(UTC)
    while True:
        release = release_backorders(
            batch.after,
            reader.view(batch.locked),
            batch.sources,
            increased=batch.increased,
            cancelled=cancelled,
            reconsidered=reconsidered,
            now=now,
        )
        if release.stands:
            return release
        if release.unlocked:
            await batch.lock_more(release.unlocked)
        await reader.read(reader.next_reads(release.short | release.unlocked), claimed=release.unlocked)


class _QueueReader:
    """The waiting lines read so far for one release, kept as the domain's `QueueView` asks: fronts of queues,
    lines with claims, and every waiting line of an order that ships complete with a line read."""

    def __init__(self, pg: asyncpg.Connection) -> None:
        self.pg = pg
        self.lines: dict[int, Any] = {}
        self.read_to: dict[str, int] = {}
        self.last_read: dict[str, int] = {}
        self.ended: set[str] = set()
        self.claims_of: set[str] = set()
        self.orders: set[uuid.UUID] = set()

    async def read(
        self, fronts: Mapping[str, int], claimed: Collection[str] = (), orders: Collection[uuid.UUID] = ()
    ) -> None:
        wanted = {sku: (self.read_to.get(sku, 0), n) for sku, n in fronts.items() if sku not in self.ended}
        claims = set(claimed) - self.claims_of
        if wanted or claims:
            read = await store.read_queues(self.pg, wanted, claims)
            self.lines.update((line.arrival, line) for line in read.lines)
            self.read_to.update(read.read_to)
            self.last_read.update({sku: n for sku, (_, n) in wanted.items()})
            self.ended |= read.ended
            self.claims_of |= claims
        missing = ({line.order_id for line in self.lines.values() if line.whole} | set(orders)) - self.orders
        if missing:
            self.lines.update((line.arrival, line) for line in await store.waiting_lines_of_orders(self.pg, missing))
            self.orders |= missing

    def next_reads(self, skus: Iterable[str]) -> dict[str, int]:
        return {sku: min(max(FIRST_READ, 2 * self.last_read.get(sku, 0)), MOST_AT_ONCE) for sku in skus}

    def view(self, locked: frozenset[str]) -> QueueView:
        return QueueView(tuple(self.lines.values()), dict(self.read_to), frozenset(self.ended), locked)


def _allocation_event(allocation: Allocation) -> BackorderAllocated:
    lines = [LineData(line_id=line.line_id, sku=line.sku, quantity=line.quantity) for line in allocation.lines]
    data = BackorderAllocatedData(
        order_id=allocation.order_id,
        shipment_id=allocation.shipment_id,
        source_code=allocation.source_code,
        lines=lines,
        ship_by=allocation.ship_by,
    )
    return BackorderAllocated(source=SOURCE, subject=str(allocation.order_id), data=data)


def _emit_stock_levels(
    tx: Transaction,
    before: Mapping[StockKey, Stock],
    after: Mapping[StockKey, Stock],
    causes: Mapping[StockKey, Incoming[Any]],
    threshold: int,
    reasons: Mapping[StockKey, str] | None = None,
) -> None:
    """One level per changed (sku, source) per batch, its final value: routing's projection wants the latest.
    Units set aside for waiting lines are published as reserved: nobody else may have them. `reasons` explains the
    changes that are not plain movements (a write-off)."""
    changed_at = datetime.now(UTC)
    for key, stock in after.items():
        if stock.same_level(stock_at(before, key)):
            # A count that confirmed the books: only its as-of time changed, which no reader of levels needs.
            continue
        level = StockLevelChangedData(
            sku=stock.sku,
            source_code=stock.source_code,
            on_hand=stock.on_hand,
            reserved=stock.held,
            available=stock.available,
            changed_at=changed_at,
            reason=(reasons or {}).get(key),
        )
        tx.emit(StockLevelChanged(source=SOURCE, subject=stock.sku, data=level), cause=causes[key])
        if fell_below_threshold(stock_at(before, key), stock, threshold):
            alert = LowStockData(
                sku=stock.sku, source_code=stock.source_code, available=stock.available, threshold=threshold
            )
            tx.emit(LowStock(source=SOURCE, subject=stock.sku, data=alert), cause=causes[key])
