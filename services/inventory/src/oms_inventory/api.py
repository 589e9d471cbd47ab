"""Inventory's HTTP surface: stock per source and the backorder queue of a SKU. Read-only; bearer auth."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel

from oms_inventory import store
from oms_inventory.domain import BackorderQueue
from oms_runtime import Database, Principal

router = APIRouter(tags=["inventory"])


class SourceStock(BaseModel):
    source_code: str
    on_hand: int
    reserved: int
    available: int


class SkuStock(BaseModel):
    sku: str
    sources: list[SourceStock]
    available: int


class WaitingLine(BaseModel):
    position: int
    order_id: uuid.UUID
    line_id: str
    quantity: int
    queued_at: datetime


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
@router.get("/stock/{sku:path}", summary="Stock of a SKU at every source that holds or held it")
async def get_stock(sku: str, who: Principal, request: Request) -> SkuStock:
    async with _database(request).connect() as conn:
        levels = await store.stock_of_sku(conn, sku)
        if not levels and not await store.sku_known(conn, sku):
            raise _unknown(sku)
    sources = [
        SourceStock(source_code=s.source_code, on_hand=s.on_hand, reserved=s.reserved, available=s.available)
        for s in levels
    ]
    return SkuStock(sku=sku, sources=sources, available=sum(s.available for s in sources))


@router.get("/backorders/{sku:path}", summary="Lines waiting for a SKU, first to be served first")
async def get_backorders(sku: str, who: Principal, request: Request) -> list[WaitingLine]:
    async with _database(request).connect() as conn:
        queue = BackorderQueue.of(sku, await store.waiting_backorders(conn, sku))
        if not queue.waiting and not await store.sku_known(conn, sku):
            raise _unknown(sku)
    return [
        WaitingLine(position=p, order_id=b.order_id, line_id=b.line_id, quantity=b.quantity, queued_at=b.queued_at)
        for p, b in queue.positions()
    ]
