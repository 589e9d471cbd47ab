"""Customer service and finance over HTTP: the order's single view (lines, fulfillments, cancellations, refunds,
returns, totals), its timeline, the orders list, and the two things customer service does: cancel and note.

Every route needs a bearer token whose roles allow it (runtime's `require_role`): reads any role, cancellations
`cs`, notes `cs` or `finance`; `admin` everything. The token's principal is the actor; writes go through
`writes.change`, as consumers do."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, Field

from oms_contracts.order import OrderStatus
from oms_contracts.types import LineId, Money, Quantity, Text
from oms_runtime import Role, require_role

from . import backorders, domain, store, writes
from .domain import EntryKind, LineState

router = APIRouter(tags=["orders"])

# Cancellations asked over HTTP: uuid5 of the order, the principal and its Idempotency-Key is the cancellation's id.
HTTP_CANCELLATIONS = uuid.UUID("4b1f6d0e-2f53-4c8a-9a57-7e0f3c1d2b64")

Reader = Annotated[str, require_role(Role.viewer, Role.cs, Role.finance)]
CustomerService = Annotated[str, require_role(Role.cs)]
NoteTaker = Annotated[str, require_role(Role.cs, Role.finance)]
OrderId = Annotated[uuid.UUID, Path(description="The order's id (UUIDv5 of channel and external order id)")]


class Problem(BaseModel):
    detail: str


_ERRORS: dict[int, dict[str, Any]] = {
    401: {"model": Problem, "description": "No bearer token, or one that is not known"},
    403: {"model": Problem, "description": "The token's roles do not allow this"},
    404: {"model": Problem, "description": "No such order"},
    409: {"model": Problem, "description": "Refused, nothing changed: shipped units, nothing left, a reused key"},
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error responses of a route, for its OpenAPI (422 is FastAPI's own for every validated input)."""
    return {code: _ERRORS[code] for code in codes}


class Quantities(BaseModel):
    """A line's units by state; they add up to its quantity."""

    open: int
    backordered: int
    reserved: int
    requested: int
    shipped: int
    delivered: int
    returned: int
    cancelled: int


class BackorderView(BaseModel):
    quantity: int = Field(description="Units of the line waiting for stock")
    position: int | None = Field(
        None, description="Live place in the SKU's queue at inventory (1 is served next); null when not known"
    )
    expected_date: date | None = Field(None, description="When announced receipts should serve it; null when not known")


class LineView(BaseModel):
    line_id: str
    sku: str
    quantity: int
    unit_price: Money
    state: LineState = Field(description="The least advanced state of the line's units that are not cancelled")
    quantities: Quantities
    backorder: BackorderView | None = Field(None, description="Present while some units are backordered")


class ShipmentLineView(BaseModel):
    line_id: str
    sku: str
    quantity: int


class ParcelView(BaseModel):
    parcel_id: uuid.UUID
    carrier: str
    service: str | None
    tracking_number: str
    tracking_url: str | None
    shipped_at: datetime
    delivered_at: datetime | None
    lines: list[ShipmentLineView]


class FulfillmentView(BaseModel):
    fulfillment_id: uuid.UUID
    source_code: str
    status: str
    lines: list[ShipmentLineView]
    reason: str | None
    ship_by: date | None
    estimated_delivery: date | None
    requested_at: datetime | None
    shipped_at: datetime | None
    delivered_at: datetime | None
    rejection: str | None
    parcels: list[ParcelView] = Field(description="What left the source, one entry per parcel, oldest first")
    # One carrier and tracking per fulfillment was the view before parcels: kept, as the latest parcel's.
    carrier: str | None = Field(None, description="The latest parcel's")
    service: str | None = Field(None, description="The latest parcel's")
    tracking_number: str | None = Field(None, description="The latest parcel's")
    tracking_url: str | None = Field(None, description="The latest parcel's")


class CancellationLineView(BaseModel):
    line_id: str
    sku: str
    asked: int | None = Field(description="Units asked; null: all that could still be cancelled")
    cancelled: int
    pending: int = Field(description="Units waiting for their source's (or inventory's) answer")
    refused: int = Field(description="Units that could not be cancelled (shipped, left anyway)")


class CancellationView(BaseModel):
    cancellation_id: uuid.UUID
    status: domain.CancellationStatus
    requested_by: str
    via: str = Field(description="channel, http or link")
    reason: str
    requested_at: datetime
    whole_order: bool = Field(description="Asked for the whole order rather than named lines")
    lines: list[CancellationLineView]
    refusal: str | None = Field(description="Why units could not be cancelled")
    refunded: Money = Field(description="What this cancellation refunded so far")


class RefundView(BaseModel):
    refund_id: uuid.UUID
    amount: Money
    currency: str
    cause: str = Field(description="cancellation or return")
    reason: str
    lines: list[ShipmentLineView]
    refunded_total: Money
    cancellation_id: uuid.UUID | None
    return_id: uuid.UUID | None
    issued_at: datetime


class ReturnedLineView(ShipmentLineView):
    condition: str


class ReturnView(BaseModel):
    return_id: uuid.UUID
    source_code: str
    lines: list[ReturnedLineView]
    reason: str
    refund_amount: Money
    received_at: datetime


class Totals(BaseModel):
    subtotal: Money
    shipping_total: Money
    tax_total: Money
    discount_total: Money
    grand_total: Money


class OrderView(BaseModel):
    order_id: uuid.UUID
    channel: str
    external_order_id: str
    status: OrderStatus
    placed_at: datetime
    currency: str
    customer: dict[str, Any]
    shipping_address: dict[str, Any]
    shipping_method: str
    pickup_source: str | None
    options: dict[str, Any]
    lines: list[LineView]
    fulfillments: list[FulfillmentView]
    cancellations: list[CancellationView] = Field(description="Every request to cancel, oldest first")
    refunds: list[RefundView] = Field(description="Every refund, oldest first")
    returns: list[ReturnView] = Field(description="Every return, oldest first")
    subtotal: Money = Field(description="Now: the units that are not cancelled, at their prices")
    shipping_total: Money = Field(description="Now (cancellations lower the totals)")
    tax_total: Money
    discount_total: Money
    grand_total: Money = Field(description="What the order costs now")
    submitted: Totals = Field(description="The totals as the channel submitted them")
    paid_amount: Money | None
    payment_ref: str | None
    refunded_total: Money = Field(description="Everything refunded so far, never more than paid_amount")
    created_at: datetime
    updated_at: datetime
    warnings: list[str] = Field(
        default_factory=list,
        description="What this view could not show, e.g. backorder positions when inventory is down",
    )


class TimelineEntry(BaseModel):
    """One entry of the order's story. Status changes have `from_status` and `to_status`, as before kinds existed."""

    kind: EntryKind = Field(description="What the entry records")
    from_status: OrderStatus | None = Field(description="Status changes only; null for a new order")
    to_status: OrderStatus | None = Field(description="Status changes only")
    actor: str = Field(description="Who: a principal, channel:…, customer:…, source:…, service:…")
    note: str | None
    occurred_at: datetime
    cause_event_id: uuid.UUID | None
    cause_type: str | None = Field(description="The type of the event behind it, or http, link, stuck-check")
    trace_id: str | None
    details: dict[str, Any] = Field(description="Ids, lines and amounts, by kind")


class OrderSummary(BaseModel):
    order_id: uuid.UUID
    channel: str
    external_order_id: str
    status: OrderStatus
    grand_total: Money
    currency: str
    placed_at: datetime
    updated_at: datetime


class CancellationLineBody(BaseModel):
    line_id: LineId
    quantity: Quantity


class CancellationBody(BaseModel):
    lines: list[CancellationLineBody] | None = Field(
        default=None, min_length=1, description="Lines and units to cancel; null cancels everything not shipped yet"
    )
    reason: Annotated[Text, Field(min_length=1)]


class NoteBody(BaseModel):
    text: Annotated[Text, Field(min_length=1)]


def _database(request: Request):
    return request.app.state.service.database


def cancellation_view(record: domain.Cancellation) -> CancellationView:
    return CancellationView(
        cancellation_id=record.cancellation_id,
        status=record.status,
        requested_by=record.requested_by,
        via=record.via,
        reason=record.reason,
        requested_at=record.requested_at,
        whole_order=record.asked is None,
        lines=[_line(x) for x in record.lines.values()],
        refusal=record.refusal,
        refunded=record.refunded,
    )


def _line(x: domain.CancellationLine) -> CancellationLineView:
    return CancellationLineView(
        line_id=x.line_id, sku=x.sku, asked=x.asked, cancelled=x.cancelled, pending=x.pending, refused=x.refused
    )


def _stored_cancellation(row: dict[str, Any]) -> CancellationView:
    return CancellationView(
        cancellation_id=row["cancellation_id"],
        status=row["status"],
        requested_by=row["requested_by"],
        via=row["via"],
        reason=row["reason"],
        requested_at=row["requested_at"],
        whole_order=row["asked"] is None,
        lines=[CancellationLineView(line_id=line_id, **x) for line_id, x in row["lines"].items()],
        refusal=row["refusal"],
        refunded=row["refunded"],
    )


@router.get(
    "/orders/{order_id}",
    response_model=OrderView,
    summary="An order with its lines (units by state, backorder positions), fulfillments (parcels), cancellations, "
    "refunds and returns",
    responses=errors(401, 403, 404),
)
async def get_order(order_id: OrderId, request: Request, who: Reader) -> Any:
    async with _database(request).connect() as conn:
        view = await store.order_view(conn, order_id)
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {order_id}")
    view["warnings"] = []
    view["cancellations"] = [_stored_cancellation(x) for x in view["cancellations"]]
    waiting = [line for line in view["lines"] if line["quantities"]["backordered"]]
    if waiting:
        settings = request.app.state.service.settings
        try:
            places = await backorders.places(
                settings.inventory_url, order_id, request.headers.get("authorization"), settings.inventory_timeout_s
            )
        except backorders.Unavailable as why:
            places = {}
            view["warnings"].append(f"backorder positions and expected dates are not shown: {why}")
        for line in waiting:
            place = places.get(line["line_id"])
            line["backorder"] = {
                "quantity": line["quantities"]["backordered"],
                "position": place.position if place else None,
                "expected_date": place.expected_date if place else None,
            }
    for fulfillment in view["fulfillments"]:
        if fulfillment["parcels"]:
            latest = fulfillment["parcels"][-1]
            fulfillment.update({k: latest[k] for k in ("carrier", "service", "tracking_number", "tracking_url")})
    return view


@router.get(
    "/orders/{order_id}/timeline",
    response_model=list[TimelineEntry],
    summary="Every entry of the order's story, oldest first, each with its actor: status changes, notes, "
    "cancellations (asked, pending, done, refused), refunds, returns, re-plans, stuck alerts",
    responses=errors(401, 403, 404),
)
async def get_timeline(order_id: OrderId, request: Request, who: Reader) -> Any:
    async with _database(request).connect() as conn:
        rows = await store.timeline(conn, order_id)
    if rows is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {order_id}")
    return rows


@router.get(
    "/orders",
    response_model=list[OrderSummary],
    summary="Orders, most recently changed first",
    responses=errors(401, 403),
)
async def list_orders(
    request: Request,
    who: Reader,
    status_: Annotated[OrderStatus | None, Query(alias="status")] = None,
    channel: Annotated[str | None, Query(max_length=64)] = None,
    stuck: Annotated[
        bool | None, Query(description="true: only orders with a stuck alert still open (the order has not moved on)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Any:
    async with _database(request).connect() as conn:
        return await store.order_list(conn, status=status_, channel=channel, stuck=stuck, limit=limit)


@router.post(
    "/orders/{order_id}/cancellations",
    response_model=CancellationView,
    summary="Cancel lines (or everything not shipped yet) for the customer",
    description="Units are taken least advanced first: not yet placed and backordered ones are cancelled (and "
    "refunded when paid) at once; units inventory is reserving or a source holds are asked of it (status "
    "`pending`, per line `pending`) and cancelled when it answers, or refused when they left anyway. Asking for more "
    "units of a line than may still be cancelled (shipped, cancelled already) is refused with 409 and changes "
    "nothing. The same `Idempotency-Key` (per principal) applies once and answers the same cancellation.",
    responses=errors(401, 403, 404, 409),
)
async def post_cancellation(
    order_id: OrderId,
    body: CancellationBody,
    request: Request,
    who: CustomerService,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=200, description="Repeat a request with the same key and it applies once"),
    ] = None,
) -> Any:
    cancellation_id = (
        uuid.uuid5(HTTP_CANCELLATIONS, f"{order_id}:{who}:{idempotency_key}") if idempotency_key else uuid.uuid4()
    )
    request_ = domain.CancellationRequest(
        cancellation_id=cancellation_id,
        requested_by=who,
        via="http",
        reason=body.reason,
        lines=None if body.lines is None else tuple(domain.LineRequest(x.line_id, x.quantity) for x in body.lines),
    )

    def cancel(order: domain.Order) -> domain.Cancellation:
        # Refused as a whole: 409 and nothing written, not even the refusal (customer service sees it right here).
        return order.request_cancellation(request_, writes.cause(order, who, "http"), record_refusal=False)

    try:
        record = await writes.change(request.app.state.service, order_id, cancel)
    except writes.UnknownOrder as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except domain.UnknownLine as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
    except domain.OrderRefusal as error:  # shipped units, nothing left, a key reused for another request
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    return cancellation_view(record)


@router.post(
    "/orders/{order_id}/notes",
    response_model=TimelineEntry,
    status_code=status.HTTP_201_CREATED,
    summary="Write a note on the order's timeline (the token's principal is its author)",
    responses=errors(401, 403, 404),
)
async def post_note(order_id: OrderId, body: NoteBody, request: Request, who: NoteTaker) -> Any:
    def note(order: domain.Order) -> domain.Entry:
        return order.add_note(body.text, writes.cause(order, who, "http"))

    try:
        entry = await writes.change(request.app.state.service, order_id, note)
    except writes.UnknownOrder as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    return TimelineEntry(
        kind=entry.kind,
        from_status=None,
        to_status=None,
        actor=entry.actor,
        note=entry.note,
        occurred_at=entry.at,
        cause_event_id=None,
        cause_type=entry.cause_type,
        trace_id=entry.trace_id,
        details=entry.details,
    )
