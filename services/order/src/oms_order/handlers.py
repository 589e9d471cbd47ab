"""What comes in on each topic and what goes out: load the batch's orders, apply the domain, save, emit."""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from dataclasses import replace
from datetime import date
from decimal import Decimal

from pydantic import ValidationError

from oms_contracts import channel, fulfillment, inventory, order_id_for, routing
from oms_contracts.common import Address, Customer, Line, LineQuantity, OrderOptions, Recipient, ReturnCondition
from oms_contracts.envelope import CloudEvent
from oms_contracts.order import (
    CancellationRejected,
    CancellationRejectedData,
    CancelledUnits,
    FieldError,
    LinesCancelled,
    LinesCancelledData,
    LinesReturned,
    LinesReturnedData,
    OrderAccepted,
    OrderAcceptedData,
    OrderFulfillmentDelivered,
    OrderFulfillmentDeliveredData,
    OrderFulfillmentShipped,
    OrderFulfillmentShippedData,
    OrderPaid,
    OrderPaidData,
    OrderRejected,
    OrderRejectedData,
    RefundCause,
    RefundIssued,
    RefundIssuedData,
    ReplanRequested,
    ReplanRequestedData,
    ReturnedUnits,
    StatusChanged,
    StatusChangedData,
)
from oms_contracts.topics import CHANNEL_ORDERS, FULFILLMENT_UPDATES, INVENTORY_ALLOCATIONS, ROUTING_PLANS
from oms_contracts.types import utc_now
from oms_runtime import Incoming, Invalid, Refused, Service, Transaction, telemetry

from . import domain, metrics, store
from .domain import Cause, Order, OrderRefusal

log = logging.getLogger(__name__)

SOURCE = "/oms/order"


def register(service: Service) -> None:
    service.consumer(CHANNEL_ORDERS, on_invalid=reject_invalid_submission)(on_channel_orders)
    service.consumer(ROUTING_PLANS)(on_fulfillment_plans)
    service.consumer(INVENTORY_ALLOCATIONS)(on_inventory_allocations)
    service.consumer(FULFILLMENT_UPDATES)(on_fulfillment_updates)


def _cause(message: Incoming, actor: str, order: Order | None = None) -> Cause:
    trace_id = trace_id_of(order.traceparent) if order and order.traceparent else None
    if trace_id is None:
        trace_id = format(message.span.get_span_context().trace_id, "032x")
    return Cause(actor=actor, at=utc_now(), event_id=message.event.id, trace_id=trace_id, type=message.event.type)


def trace_id_of(traceparent: str) -> str | None:
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else None


async def _apply(tx: Transaction, messages: list[Incoming], order_id_of, apply) -> None:
    """Lock and load the batch's orders, apply each message in order, save everything in one go.

    `apply(message, order, orders, outgoing)` makes one domain call; what the order records (status changes, then
    the facts they follow from) is translated into contracts here, in the order's trace. `outgoing` is for events
    made from the message itself (the accepted order)."""
    orders = await store.load(await tx.pg(), (order_id_of(m) for m in messages))
    for message in messages:
        order_id = order_id_of(message)
        with telemetry.order_context(order_id):
            order = orders.get(order_id)
            announced = len(order.transitions) if order else 0
            recorded = len(order.events) if order else 0
            outgoing: list[CloudEvent] = []
            try:
                order = apply(message, order, orders, outgoing)
            except OrderRefusal as refusal:
                # The whole batch is replayed one message at a time and only this one is dead-lettered.
                raise Refused(str(refusal)) from refusal
            announce(tx, order, order.transitions[announced:], order.events[recorded:], outgoing)
    metrics.observe(tx, orders.values())  # before the writes are made, which clears what the orders recorded
    # The batch's last writes: they go with its inbox record and outbox rows, in one statement.
    for statement, args in store.writes(orders.values()):
        await tx.write(statement, *args)


def translate(order: Order, fact: domain.Event) -> list[CloudEvent]:
    """The contracts of what the order recorded (HTTP writes and consumers alike)."""
    match fact:
        case domain.Paid():
            return [_paid(order)]
        case domain.FulfillmentRequested(fulfillment=f):
            return [_request(order, f)]
        case domain.ParcelShipped():
            return [_parcel_shipped(order, fact)]
        case domain.FulfillmentDelivered():
            return [_fulfillment_delivered(order, fact)]
        case domain.UnitsCancelled():
            return [_lines_cancelled(order, fact), *_refund_issued(order, fact.refund)]
        case domain.CancelAskedOfSource():
            return [_cancel_requested(order, fact)]
        case domain.CancellationRefusal():
            return [_cancellation_rejected(order, fact)]
        case domain.ReplanAsked():
            return [_replan_requested(order, fact)]
        case domain.Returned():
            return [_lines_returned(order, fact), *_refund_issued(order, fact.refund)]
    raise TypeError(f"no contract for {fact!r}")


def announce(
    tx: Transaction,
    order: Order,
    transitions: list[domain.Transition],
    facts: list[domain.Event],
    made: list[CloudEvent] = (),
) -> None:
    """Emit, in the order's trace, its status changes, then events `made` from the message itself (the accepted
    order), then the facts the order recorded."""
    for t in transitions:
        tx.emit(
            StatusChanged(
                source=SOURCE,
                subject=str(order.order_id),
                data=StatusChangedData(
                    order_id=order.order_id,
                    from_status=t.from_status,
                    to_status=t.to_status,
                    actor=t.actor,
                    note=t.note,
                    at=t.at,
                    cause_event_id=t.cause_event_id,
                    cause_type=t.cause_type,
                ),
            ),
            traceparent=order.traceparent,
        )
    for event in [*made, *(event for fact in facts for event in translate(order, fact))]:
        tx.emit(event, traceparent=order.traceparent)


# -- channels ---------------------------------------------------------------------------------------------------


async def on_channel_orders(tx: Transaction, messages: list[Incoming[CloudEvent]]) -> None:
    """Orders, payments, cancellations and returns from sales channels. A new order is accepted as `pending`; a
    full capture makes it `paid` and publishes `order.paid.v1` for routing; a cancellation cancels what it may
    (`order.lines_cancelled.v1`, `order.refund_issued.v1`, `fulfillment.cancel_requested.v1` to a source) or is
    refused (`order.cancellation_rejected.v1`); a return is refunded (`order.lines_returned.v1`)."""
    await _apply(tx, messages, lambda m: m.event.data.order_id, _on_channel_event)


def _on_channel_event(message: Incoming, order: Order | None, orders, outgoing: list[CloudEvent]) -> Order:
    event, data = message.event, message.event.data
    actor = f"channel:{data.channel}"
    if isinstance(event, channel.OrderSubmitted):
        if order is not None:
            log.info("order %s:%s submitted again; it exists already", data.channel, data.external_order_id)
            return order
        order = _accept(message)
        orders[order.order_id] = order
        outgoing.append(_accepted(order, event))
        return order
    if order is None:
        raise OrderRefusal(f"no order {data.channel}:{data.external_order_id} ({data.order_id}) to apply {event.type}")
    cause = _cause(message, actor, order)
    match event:
        case channel.PaymentAuthorized():
            order.authorize_payment(data.amount, data.currency, cause)
        case channel.PaymentCaptured():
            order.capture_payment(data.amount, data.currency, data.payment_ref, cause)
        case channel.PaymentFailed():
            order.fail_payment(data.reason, cause)
        case channel.CancellationRequested():
            # The event id is the cancellation's: a redelivery is the inbox's, a resend under the same id applies once.
            requester = f"{actor}:{data.requested_by}"
            request = domain.CancellationRequest(
                cancellation_id=event.id,
                requested_by=requester,
                via="channel",
                reason=data.reason,
                lines=None
                if data.lines is None
                else tuple(domain.LineRequest(x.line_id, x.quantity) for x in data.lines),
            )
            # A refusal is recorded and announced (order.cancellation_rejected): the channel is told by event.
            order.request_cancellation(request, replace(cause, actor=requester))
        case channel.ReturnReceived():
            order.receive_return(
                event.id,
                data.source_code,
                [domain.ReturnedLine(x.line_id, x.quantity, str(x.condition)) for x in data.lines],
                data.reason,
                cause,
            )
    return order


def _accept(message: Incoming[channel.OrderSubmitted]) -> Order:
    data = message.event.data
    return domain.accept(
        data.order_id,
        channel=data.channel,
        external_order_id=data.external_order_id,
        currency=data.currency,
        placed_at=data.placed_at,
        customer=data.customer.model_dump(mode="json"),
        shipping_address=data.shipping_address.model_dump(mode="json"),
        shipping_method=str(data.shipping_method),
        pickup_source=data.pickup_source,
        options=data.options.model_dump(mode="json"),
        lines=[domain.Line(x.line_id, x.sku, x.quantity, x.unit_price) for x in data.lines],
        shipping_total=data.shipping_total,
        tax_total=data.tax_total,
        discount_total=data.discount_total,
        grand_total=data.grand_total,
        cause=_cause(message, f"channel:{data.channel}"),
        traceparent=telemetry.traceparent_of(message.span),
    )


def _accepted(order: Order, submitted: channel.OrderSubmitted) -> OrderAccepted:
    data = submitted.data
    return OrderAccepted(
        source=SOURCE,
        subject=str(order.order_id),
        data=OrderAcceptedData(
            order_id=order.order_id,
            channel=data.channel,
            external_order_id=data.external_order_id,
            placed_at=data.placed_at,
            currency=data.currency,
            customer=data.customer,
            shipping_address=data.shipping_address,
            shipping_method=data.shipping_method,
            pickup_source=data.pickup_source,
            lines=data.lines,
            subtotal=data.subtotal,
            shipping_total=data.shipping_total,
            tax_total=data.tax_total,
            discount_total=data.discount_total,
            grand_total=data.grand_total,
            options=data.options,
        ),
    )


def _paid(order: Order) -> OrderPaid:
    return OrderPaid(
        source=SOURCE,
        subject=str(order.order_id),
        data=OrderPaidData(
            order_id=order.order_id,
            channel=order.channel,
            placed_at=order.placed_at,
            currency=order.currency,
            amount=order.paid_amount,
            lines=[Line(line_id=x.line_id, sku=x.sku, quantity=x.quantity) for x in order.lines.values()],
            shipping_address=Address.model_validate(order.shipping_address),
            shipping_method=order.shipping_method,
            pickup_source=order.pickup_source,
            options=OrderOptions.model_validate(order.options),
        ),
    )


# What a rejection echoes back of a submission is bounded, whatever the submission holds: anyone may publish on the
# channel topic, and an echo as large as the broker's limit would be parked instead of reaching the channel.
_ECHOED_ID_MAX = 200  # channel and external order id (the contract allows 64 and 100): longer ones are not echoed
_ERRORS_LISTED = 50
_FIELD_MAX = 200
_MESSAGE_MAX = 500


def _bounded(errors: list[FieldError]) -> list[FieldError]:
    return [
        FieldError(field=e.field[:_FIELD_MAX], message=e.message[:_MESSAGE_MAX], type=e.type[:_FIELD_MAX])
        for e in errors[:_ERRORS_LISTED]
    ]


async def reject_invalid_submission(tx: Transaction, invalid: Invalid) -> bool:
    """An order_submitted that fails validation gets `order.rejected.v1` with every field error; no order is made.
    Anything else invalid (undecodable bytes, another type) goes to the dead-letter topic."""
    try:
        document = json.loads(invalid.record.value or b"")
    except ValueError:
        return False
    if not isinstance(document, dict) or document.get("type") != channel.OrderSubmitted.TYPE:
        return False
    if not isinstance(invalid.error, ValidationError):
        return False
    data = document.get("data") if isinstance(document.get("data"), dict) else {}
    channel_name, external_id = (
        value if isinstance(value, str) and len(value) <= _ECHOED_ID_MAX else None
        for value in (data.get("channel"), data.get("external_order_id"))
    )
    named = channel_name and external_id
    order_id = order_id_for(channel_name, external_id) if named else None
    try:
        rejected_event_id = uuid.UUID(str(document.get("id")))
    except ValueError:
        rejected_event_id = None
    errors = FieldError.all_of(invalid.error)
    listed = _bounded(errors)
    tx.emit(
        OrderRejected(
            source=SOURCE,
            subject=str(order_id) if order_id else None,
            data=OrderRejectedData(
                order_id=order_id,
                channel=channel_name,
                external_order_id=external_id,
                rejected_event_id=rejected_event_id,
                reason=(
                    f"order_submitted failed validation with {len(errors)} error(s): "
                    + "; ".join(f"{e.field}: {e.message}" for e in listed[:10])
                )[:1800],
                errors=listed,
                errors_omitted=len(errors) - len(listed),
            ),
        ),
        traceparent=telemetry.traceparent_of(invalid.span),
    )
    log.info("rejected order submission %s:%s with %d field error(s)", channel_name, external_id, len(errors))
    return True


# -- routing and inventory ----------------------------------------------------------------------------------------


async def on_fulfillment_plans(tx: Transaction, messages: list[Incoming[routing.FulfillmentPlanned]]) -> None:
    """Routing's plans: a planned fulfillment per shipment; backordered and unfulfillable lines marked."""
    await _apply(tx, messages, lambda m: m.event.data.order_id, _on_plan)


def _on_plan(message: Incoming, order: Order | None, _orders, _outgoing: list[CloudEvent]) -> Order:
    plan = message.event.data
    order = _known(order, plan.order_id)
    order.apply_plan(
        plan.plan_id,
        [
            domain.PlannedShipment(
                shipment_id=s.shipment_id,
                source_code=s.source_code,
                lines=[domain.ShipmentLine(x.line_id, x.sku, x.quantity) for x in s.lines],
                ship_by=s.estimated_ship_date,
                estimated_delivery=s.estimated_delivery_date,
                reason=s.reason,
            )
            for s in plan.shipments
        ],
        [domain.ShipmentLine(x.line_id, x.sku, x.quantity) for x in plan.backordered_lines],
        [domain.ShipmentLine(x.line_id, x.sku, x.quantity) for x in plan.unfulfillable_lines],
        _cause(message, "service:routing", order),
        plan.attempt,
        {x.line_id: x.reason for x in plan.unfulfillable_lines},
    )
    return order


async def on_inventory_allocations(tx: Transaction, messages: list[Incoming[CloudEvent]]) -> None:
    """A reserved shipment, or stock allocated to backordered units, becomes a fulfillment request on its source's
    own topic (and the order awaits fulfillment); a refused reservation waits for routing's re-plan. Units queued
    for stock are backordered (when the plan has not said so yet), so that their allocation, which follows on the
    same partition, finds them there."""
    await _apply(tx, messages, lambda m: m.event.data.order_id, _on_allocation)


def _on_allocation(message: Incoming, order: Order | None, _orders, _outgoing: list[CloudEvent]) -> Order:
    event, data = message.event, message.event.data
    order = _known(order, data.order_id)
    cause = _cause(message, "service:inventory", order)
    lines = [domain.ShipmentLine(x.line_id, x.sku, x.quantity) for x in data.lines]
    match event:
        case inventory.BackorderQueued():
            order.queue_backorder(lines, cause, {x.line_id: x.expected_date for x in data.lines})
        case inventory.BackorderAllocated():
            order.allocate_backorder(domain.Allocation(data.shipment_id, data.source_code, lines, data.ship_by), cause)
        case inventory.ShipmentReserved():
            order.request_fulfillment(
                domain.Reservation(data.shipment_id, data.source_code, lines, data.plan_id, data.ship_by), cause
            )
        case inventory.ReservationRejected():
            short = ", ".join(f"{s.sku} {s.available}/{s.requested}" for s in data.shortages)
            order.reject_reservation(
                domain.Reservation(data.shipment_id, data.source_code, lines, data.plan_id),
                f"{data.source_code} short: {short}",
                cause,
            )
    return order


def _request(order: Order, f: domain.Fulfillment) -> fulfillment.FulfillmentRequested:
    address = Address.model_validate(order.shipping_address)
    customer = Customer.model_validate(order.customer)
    return fulfillment.FulfillmentRequested(
        source=SOURCE,
        subject=str(order.order_id),
        data=fulfillment.FulfillmentRequestedData(
            fulfillment_id=f.fulfillment_id,
            order_id=order.order_id,
            source_code=f.source_code,
            lines=_lines(f.requestable()),
            ship_to=address,
            recipient=Recipient(name=address.name, phone=customer.phone),
            shipping_method=order.shipping_method,
            requested_at=f.requested_at,
            ship_by=f.ship_by or date.today(),
        ),
    )


# -- sources ----------------------------------------------------------------------------------------------------


async def on_fulfillment_updates(tx: Transaction, messages: list[Incoming[CloudEvent]]) -> None:
    """What sources report: accepted, rejected or cancelled (units a cancellation waited for are cancelled and
    refunded; the rest is planned again: `order.replan_requested.v1`), shipped (a parcel: all of a fulfillment or
    part of it; `order.fulfillment_shipped.v1`; a cancellation it overtook is refused), delivered
    (`order.fulfillment_delivered.v1`)."""
    await _apply(tx, messages, lambda m: m.event.data.order_id, _on_fulfillment_update)


def _on_fulfillment_update(message: Incoming, order: Order | None, _orders, _outgoing: list[CloudEvent]) -> Order:
    event, data = message.event, message.event.data
    order = _known(order, data.order_id)
    cause = _cause(message, f"source:{data.source_code}", order)
    match event:
        case fulfillment.FulfillmentAccepted():
            order.accept_fulfillment(data.fulfillment_id, data.source_code, cause)
        case fulfillment.FulfillmentRejected():
            order.reject_fulfillment(
                data.fulfillment_id, data.source_code, data.reason, cause, reason_code=data.reason_code.value
            )
        case fulfillment.FulfillmentShipped():
            units = Counter()
            for x in data.lines:
                units[x.line_id] += x.quantity
            parcel = domain.Shipment(
                data.carrier,
                data.service,
                data.tracking_number,
                str(data.tracking_url) if data.tracking_url else None,
                data.shipped_at,
                dict(units),
            )
            order.ship_parcel(data.fulfillment_id, data.source_code, parcel, cause)
        case fulfillment.FulfillmentDelivered():
            order.deliver_fulfillment(data.fulfillment_id, data.source_code, data.delivered_at, cause)
        case fulfillment.FulfillmentCancelled():
            units: Counter[str] = Counter()
            for x in data.lines:
                units[x.line_id] += x.quantity
            order.cancel_at_source(
                data.fulfillment_id,
                data.source_code,
                dict(units),
                data.reason,
                cause,
                reason_code=data.reason_code.value,
            )
    return order


def _lines(lines) -> list[Line]:
    return [Line(line_id=x.line_id, sku=x.sku, quantity=x.quantity) for x in lines]


def _parcel_shipped(order: Order, fact: domain.ParcelShipped) -> OrderFulfillmentShipped:
    parcel = fact.parcel
    return OrderFulfillmentShipped(
        source=SOURCE,
        subject=str(order.order_id),
        data=OrderFulfillmentShippedData(
            order_id=order.order_id,
            fulfillment_id=fact.fulfillment.fulfillment_id,
            source_code=fact.fulfillment.source_code,
            carrier=parcel.carrier,
            service=parcel.service,
            tracking_number=parcel.tracking_number,
            tracking_url=parcel.tracking_url,
            shipped_at=parcel.shipped_at,
            lines=_lines(parcel.lines),
            to_come=_lines(fact.to_come),
            status=fact.status,
        ),
    )


def _fulfillment_delivered(order: Order, fact: domain.FulfillmentDelivered) -> OrderFulfillmentDelivered:
    return OrderFulfillmentDelivered(
        source=SOURCE,
        subject=str(order.order_id),
        data=OrderFulfillmentDeliveredData(
            order_id=order.order_id,
            fulfillment_id=fact.fulfillment.fulfillment_id,
            source_code=fact.fulfillment.source_code,
            delivered_at=fact.parcels[-1].delivered_at,
            lines=_lines(fact.lines),
            tracking_numbers=[p.tracking_number for p in fact.parcels],
            status=fact.status,
        ),
    )


def _units_from(units) -> list[CancelledUnits]:
    return [
        CancelledUnits(
            line_id=u.line_id, sku=u.sku, quantity=u.quantity, from_state=u.was, fulfillment_id=u.fulfillment_id
        )
        for u in units
    ]


def _quantities(pairs) -> list[LineQuantity]:
    merged: Counter[str] = Counter()
    for line_id, n in pairs:
        merged[line_id] += n
    return [LineQuantity(line_id=line_id, quantity=n) for line_id, n in merged.items()]


def _lines_cancelled(order: Order, fact: domain.UnitsCancelled) -> LinesCancelled:
    return LinesCancelled(
        source=SOURCE,
        subject=str(order.order_id),
        data=LinesCancelledData(
            order_id=order.order_id,
            lines=_quantities((u.line_id, u.quantity) for u in fact.units),
            reason=fact.reason[:2000],
            actor=fact.actor[:200],
            refund_amount=fact.refund.amount if fact.refund else Decimal("0.00"),
            currency=order.currency,
            grand_total=fact.grand_total,
            cancellation_id=fact.cancellation_id,
            units=_units_from(fact.units),
            status=fact.status,
        ),
    )


def _refund_issued(order: Order, refund: domain.Refund | None) -> list[RefundIssued]:
    if refund is None:
        return []
    return [
        RefundIssued(
            source=SOURCE,
            subject=str(order.order_id),
            data=RefundIssuedData(
                order_id=order.order_id,
                refund_id=refund.refund_id,
                amount=refund.amount,
                currency=order.currency,
                reason=refund.reason[:2000],
                lines=_quantities((x.line_id, x.quantity) for x in refund.lines),
                cause=RefundCause(refund.cause.value),
                cancellation_id=refund.cancellation_id,
                return_id=refund.return_id,
                refunded_total=refund.refunded_total,
            ),
        )
    ]


def _cancel_requested(order: Order, fact: domain.CancelAskedOfSource) -> fulfillment.FulfillmentCancelRequested:
    f = fact.fulfillment
    return fulfillment.FulfillmentCancelRequested(
        source=SOURCE,
        subject=str(order.order_id),
        data=fulfillment.FulfillmentCancelRequestedData(
            fulfillment_id=f.fulfillment_id,
            order_id=order.order_id,
            source_code=f.source_code,
            lines=_quantities((x.line_id, x.quantity) for x in fact.lines),
            reason=fact.reason[:2000],
        ),
    )


def _cancellation_rejected(order: Order, fact: domain.CancellationRefusal) -> CancellationRejected:
    return CancellationRejected(
        source=SOURCE,
        subject=str(order.order_id),
        data=CancellationRejectedData(
            order_id=order.order_id,
            cancellation_id=fact.cancellation_id,
            lines=_quantities(fact.lines),
            reason=fact.reason[:2000],
            requested_by=fact.requested_by[:200],
        ),
    )


def _replan_requested(order: Order, fact: domain.ReplanAsked) -> ReplanRequested:
    return ReplanRequested(
        source=SOURCE,
        subject=str(order.order_id),
        data=ReplanRequestedData(
            order_id=order.order_id,
            fulfillment_id=fact.fulfillment.fulfillment_id,
            source_code=fact.fulfillment.source_code,
            lines=_lines(fact.lines),
            reason=fact.reason[:2000],
        ),
    )


def _lines_returned(order: Order, fact: domain.Returned) -> LinesReturned:
    ret = fact.ret
    return LinesReturned(
        source=SOURCE,
        subject=str(order.order_id),
        data=LinesReturnedData(
            order_id=order.order_id,
            return_id=ret.return_id,
            source_code=ret.source_code,
            lines=[
                ReturnedUnits(line_id=x.line_id, sku=x.sku, quantity=x.quantity, condition=ReturnCondition(condition))
                for x, condition in ret.lines
            ],
            reason=ret.reason[:2000],
            refund_amount=ret.refund_amount,
            currency=order.currency,
        ),
    )


def _known(order: Order | None, order_id: uuid.UUID) -> Order:
    if order is None:
        raise OrderRefusal(f"unknown order {order_id}")
    return order
