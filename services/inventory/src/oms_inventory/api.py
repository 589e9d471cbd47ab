"""Inventory's HTTP surface: stock per source, the backorder queue of a SKU, an order's waiting lines. Read-only;
bearer auth."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import date, datetime

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from oms_inventory import store
from oms_inventory.domain import Backorder, ExpectedReceipt, SourceState, expected_dates, queue_positions
from oms_runtime import Database, Principal
from oms_runtime.database import driver


class Problem(BaseModel):
    detail: str


router = APIRouter(
    tags=["inventory"],
    responses={status.HTTP_401_UNAUTHORIZED: {"model": Problem, "description": "No bearer token, or an unknown one"}},
)
_UNKNOWN_SKU = {status.HTTP_404_NOT_FOUND: {"model": Problem, "description": "Inventory has never heard of the SKU"}}


class SourceStock(BaseModel):
    source_code: str
    on_hand: int
    reserved: int = Field(description="Promised to shipments, not shipped yet")
    set_aside: int = Field(description="Held for waiting lines that ship whole (their orders are ship_complete)")
    available: int = Field(description="What a new reservation or a waiting line may take")
    counted_at: datetime | None = Field(
        description="As of when the source's last count applied here was taken; a count no later than this is not "
        "applied. Null: never counted"
    )


class SkuStock(BaseModel):
    sku: str
    sources: list[SourceStock]
    available: int


class WaitingLine(BaseModel):
    """A line waiting for stock, where it stands now."""

    position: int = Field(ge=1, description="Place in the SKU's queue now; 1 is served next")
    order_id: uuid.UUID
    line_id: str
    sku: str
    quantity: int = Field(ge=1, description="Units still waiting")
    set_aside: int = Field(ge=0, description="Of those, units already held for the line at `set_aside_at`")
    set_aside_at: str | None = Field(description="The source where the line's order gathers its units, if any")
    expected_date: date | None = Field(description="When announced receipts should serve it; null: not known")
    queued_at: datetime
    ship_to_country: str | None
    pickup_source: str | None
    ship_complete: bool = Field(description="The order ships whole: the line is never served in parts")


class KnownSource(BaseModel):
    code: str
    name: str
    type: str
    active: bool


def _database(request: Request) -> Database:
    return request.app.state.service.database


def _unknown(sku: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"inventory has never heard of sku {sku!r}")


@router.get("/sources", summary="The sources inventory knows from the network topic; receipts for others are refused")
async def get_sources(who: Principal, request: Request) -> list[KnownSource]:
    async with _database(request).connect() as conn:
        return [KnownSource(**row) for row in await store.known_sources(conn)]


# `:path` because a SKU may contain a slash.
@router.get("/stock/{sku:path}", summary="Stock of a SKU at every source that holds or held it", responses=_UNKNOWN_SKU)
async def get_stock(sku: str, who: Principal, request: Request) -> SkuStock:
    async with _database(request).connect() as conn:
        levels = await store.stock_of_sku(conn, sku)
        if not levels and not await store.sku_known(conn, sku):
            raise _unknown(sku)
    sources = [
        SourceStock(
            source_code=s.source_code,
            on_hand=s.on_hand,
            reserved=s.reserved,
            set_aside=s.set_aside,
            available=s.available,
            counted_at=s.counted_at,
        )
        for s in levels
    ]
    return SkuStock(sku=sku, sources=sources, available=sum(s.available for s in sources))


@router.get(
    "/backorders/{sku:path}",
    summary="Lines waiting for a SKU, first to be served first, with what is set aside and the expected date",
    responses=_UNKNOWN_SKU,
)
async def get_backorders(sku: str, who: Principal, request: Request) -> list[WaitingLine]:
    async with _database(request).connect() as conn:
        pg = await driver(conn)
        queue = await store.waiting_queue(pg, [sku])
        if not queue and not await store.sku_known(conn, sku):
            raise _unknown(sku)
        lines = _waiting(queue, queue, await store.open_expected_receipts(pg, [sku]), await store.all_sources(pg))
    return lines


@router.get(
    "/backorders",
    summary="An order's lines waiting for stock, each with its place in its SKU's queue now and its expected date",
    description="Empty when nothing of the order waits (never backordered, or every waiting unit served or "
    "cancelled). The order service shows these in an order's single view.",
)
async def get_order_backorders(
    who: Principal, request: Request, order_id: uuid.UUID = Query(description="The order")
) -> list[WaitingLine]:
    async with _database(request).connect() as conn:
        pg = await driver(conn)
        last = await store.order_waiting_skus(pg, order_id)
        if not last:
            return []
        # A line's place and date depend only on the lines ahead of it: read each queue up to the order's lines.
        queue = await store.waiting_queue(pg, list(last), up_to=max(last.values()))
        mine = [line for line in queue if line.order_id == order_id]
        expected = await store.open_expected_receipts(pg, list(last))
        return _waiting(mine, queue, expected, await store.all_sources(pg))


def _waiting(
    shown: Sequence[Backorder],
    queue: Sequence[Backorder],
    expected: Sequence[ExpectedReceipt],
    sources: dict[str, SourceState],
) -> list[WaitingLine]:
    positions = queue_positions(queue)
    dates = expected_dates(queue, expected, sources) if expected else {}
    return [
        WaitingLine(
            position=positions[b.arrival],
            order_id=b.order_id,
            line_id=b.line_id,
            sku=b.sku,
            quantity=b.waiting,
            set_aside=b.set_aside,
            set_aside_at=b.anchor,
            expected_date=dates.get(b.arrival),
            queued_at=b.queued_at,
            ship_to_country=b.terms.ship_to_country,
            pickup_source=b.terms.pickup_source,
            ship_complete=b.terms.ship_complete,
        )
        for b in sorted(shown, key=lambda b: b.arrival)
    ]
