"""The order's single view for customer service and finance: lines, fulfillments, totals, and the timeline."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel

from oms_contracts.order import OrderStatus
from oms_contracts.types import Money
from oms_runtime import Principal

from . import store

router = APIRouter(tags=["orders"])


class LineView(BaseModel):
    line_id: str
    sku: str
    quantity: int
    unit_price: Money
    state: str


class FulfillmentView(BaseModel):
    fulfillment_id: uuid.UUID
    source_code: str
    status: str
    lines: list[dict[str, Any]]
    reason: str | None
    ship_by: date | None
    estimated_delivery: date | None
    carrier: str | None
    service: str | None
    tracking_number: str | None
    tracking_url: str | None
    requested_at: datetime | None
    shipped_at: datetime | None
    delivered_at: datetime | None
    rejection: str | None


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


class TimelineEntry(BaseModel):
    from_status: OrderStatus | None
    to_status: OrderStatus
    actor: str
    note: str | None
    occurred_at: datetime
    cause_event_id: uuid.UUID | None
    trace_id: str | None


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


@router.get("/orders/{order_id}", response_model=OrderView, summary="An order with its lines and fulfillments")
async def get_order(order_id: uuid.UUID, request: Request, who: Principal) -> Any:
    async with _database(request).connect() as conn:
        view = await store.order_view(conn, order_id)
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {order_id}")
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
