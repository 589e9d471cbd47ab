"""The order's single view for customer service and finance: lines, fulfillments, totals, and the timeline."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from oms_contracts.order import OrderStatus
from oms_contracts.types import Money
from oms_runtime import Principal

from . import backorders, store
from .domain import EntryKind, LineState

router = APIRouter(tags=["orders"])


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
    refunds: list[dict[str, Any]] = []
    subtotal: Money
    shipping_total: Money
    tax_total: Money
    discount_total: Money
    grand_total: Money
    paid_amount: Money | None
    payment_ref: str | None
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


def _database(request: Request):
    return request.app.state.service.database


@router.get(
    "/orders/{order_id}",
    response_model=OrderView,
    summary="An order with its lines (units by state, backorder positions) and fulfillments (parcels)",
)
async def get_order(order_id: uuid.UUID, request: Request, who: Principal) -> Any:
    async with _database(request).connect() as conn:
        view = await store.order_view(conn, order_id)
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {order_id}")
    view["warnings"] = []
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
    "/orders/{order_id}/timeline", response_model=list[TimelineEntry], summary="Every status change, oldest first"
)
async def get_timeline(order_id: uuid.UUID, request: Request, who: Principal) -> Any:
    async with _database(request).connect() as conn:
        rows = await store.timeline(conn, order_id)
    if rows is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {order_id}")
    return rows


@router.get("/orders", response_model=list[OrderSummary], summary="Orders, most recently changed first")
async def list_orders(
    request: Request,
    who: Principal,
    status_: Annotated[OrderStatus | None, Query(alias="status")] = None,
    channel: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Any:
    async with _database(request).connect() as conn:
        return await store.order_list(conn, status=status_, channel=channel, limit=limit)
