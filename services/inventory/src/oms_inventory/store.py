"""Inventory's tables and every statement it runs. Consumers' statements are set-based (one per batch, through
asyncpg on the batch's transaction); stock rows are always locked in (sku, source_code) order, so two instances
locking overlapping rows queue behind each other instead of deadlocking."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from oms_inventory.domain import Backorder, Reservation, ReservationState, SourceState, Stock, StockKey
from oms_runtime import add_messaging_tables

metadata = sa.MetaData()
outbox, inbox = add_messaging_tables(metadata)

_now = sa.func.now()

sources = sa.Table(
    "sources",
    metadata,
    sa.Column("code", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
)

stock = sa.Table(
    "stock",
    metadata,
    sa.Column("sku", sa.Text, primary_key=True),
    sa.Column("source_code", sa.Text, sa.ForeignKey("sources.code"), primary_key=True),
    sa.Column("on_hand", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("reserved", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.CheckConstraint("on_hand >= 0", name="stock_on_hand_not_negative"),
    # No `reserved <= on_hand`: a count below what is reserved keeps the reservations (see domain.Stock.count).
    sa.CheckConstraint("reserved >= 0", name="stock_reserved_not_negative"),
)

reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("shipment_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("line_id", sa.Text, primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True), nullable=False),
    sa.Column("plan_id", UUID(as_uuid=True), nullable=False),
    sa.Column("sku", sa.Text, nullable=False),
    sa.Column("source_code", sa.Text, nullable=False),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("shipped", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("released", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.CheckConstraint("state IN ('reserved', 'shipped', 'released', 'rejected')", name="reservations_state_known"),
    sa.CheckConstraint("shipped + released <= quantity", name="reservations_settle_at_most_quantity"),
)

backorders = sa.Table(
    "backorders",
    metadata,
    # Arrival order: the queue of a SKU is its waiting rows by id.
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("sku", sa.Text, nullable=False),
    sa.Column("order_id", UUID(as_uuid=True), nullable=False),
    sa.Column("line_id", sa.Text, nullable=False),
    sa.Column("plan_id", UUID(as_uuid=True), nullable=False),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("state", sa.Text, nullable=False, server_default=sa.text("'waiting'")),
    sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.CheckConstraint("state IN ('waiting', 'allocated', 'cancelled')", name="backorders_state_known"),
    sa.Index("backorders_by_sku", "sku", "id"),
    # A line waits at most once: a plan delivered again (or re-planned with the line still waiting) keeps the
    # line's original place instead of queueing it a second time behind younger lines.
    sa.Index(
        "backorders_one_waiting_per_line",
        "order_id",
        "line_id",
        unique=True,
        postgresql_where=sa.text("state = 'waiting'"),
    ),
)


def _stock(row: Any) -> Stock:
    return Stock(row["sku"], row["source_code"], row["on_hand"], row["reserved"])


def _sorted_keys(keys: Iterable[StockKey]) -> tuple[list[str], list[str]]:
    # Distinct keys: the locking statements order rows themselves; duplicates would only repeat work.
    unique = sorted(set(keys))
    return [sku for sku, _ in unique], [source for _, source in unique]


# --- the network -------------------------------------------------------------------------------------------------


async def upsert_sources(pg: asyncpg.Connection, states: Collection[SourceState]) -> None:
    if not states:
        return
    await pg.execute(
        """
        INSERT INTO sources (code, name, type, active)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[])
        ON CONFLICT (code) DO UPDATE
            SET name = EXCLUDED.name, type = EXCLUDED.type, active = EXCLUDED.active, updated_at = now()
        """,
        [s.code for s in states],
        [s.name for s in states],
        [s.type for s in states],
        [s.active for s in states],
    )


async def deactivate_sources(pg: asyncpg.Connection, codes: Collection[str]) -> set[str]:
    """Deactivate the known ones among `codes`; returns those."""
    if not codes:
        return set()
    rows = await pg.fetch(
        "UPDATE sources SET active = false, updated_at = now() WHERE code = ANY($1::text[]) RETURNING code",
        list(codes),
    )
    return {row["code"] for row in rows}


async def source_activity(pg: asyncpg.Connection, codes: Collection[str]) -> dict[str, bool]:
    """Whether each known source among `codes` is active."""
    rows = await pg.fetch("SELECT code, active FROM sources WHERE code = ANY($1::text[])", list(codes))
    return {row["code"]: row["active"] for row in rows}


# --- stock -------------------------------------------------------------------------------------------------------


async def lock_stock_at_active_sources(pg: asyncpg.Connection, keys: Iterable[StockKey]) -> dict[StockKey, Stock]:
    """Lock the stock rows of `keys` whose source is in the network and active, creating missing ones at zero.

    Keys left out of the result name a source that is unknown or inactive. Creating and locking in one statement
    means two instances receiving the first units of a new (sku, source) cannot both insert it and lose one."""
    skus, sources_ = _sorted_keys(keys)
    if not skus:
        return {}
    rows = await pg.fetch(
        """
        INSERT INTO stock AS s (sku, source_code)
        SELECT w.sku, w.source_code
        FROM unnest($1::text[], $2::text[]) AS w(sku, source_code)
        JOIN sources ON sources.code = w.source_code AND sources.active
        ORDER BY w.sku, w.source_code
        ON CONFLICT (sku, source_code) DO UPDATE SET on_hand = s.on_hand
        RETURNING s.sku, s.source_code, s.on_hand, s.reserved
        """,
        skus,
        sources_,
    )
    return {(row["sku"], row["source_code"]): _stock(row) for row in rows}


async def lock_stock(pg: asyncpg.Connection, keys: Iterable[StockKey]) -> dict[StockKey, Stock]:
    """Lock the existing stock rows of `keys` (a key without a row holds nothing and needs no lock)."""
    skus, sources_ = _sorted_keys(keys)
    if not skus:
        return {}
    # ORDER BY is applied before the rows are locked, so every transaction takes the locks in the same order.
    rows = await pg.fetch(
        """
        SELECT s.sku, s.source_code, s.on_hand, s.reserved
        FROM stock s
        JOIN unnest($1::text[], $2::text[]) AS w(sku, source_code) USING (sku, source_code)
        ORDER BY s.sku, s.source_code
        FOR UPDATE OF s
        """,
        skus,
        sources_,
    )
    return {(row["sku"], row["source_code"]): _stock(row) for row in rows}


async def save_stock(pg: asyncpg.Connection, changed: Collection[Stock]) -> None:
    """Write the new levels of rows this transaction has locked."""
    if not changed:
        return
    await pg.execute(
        """
        UPDATE stock s SET on_hand = v.on_hand, reserved = v.reserved, updated_at = now()
        FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[]) AS v(sku, source_code, on_hand, reserved)
        WHERE s.sku = v.sku AND s.source_code = v.source_code
        """,
        [s.sku for s in changed],
        [s.source_code for s in changed],
        [s.on_hand for s in changed],
        [s.reserved for s in changed],
    )


# --- reservations ------------------------------------------------------------------------------------------------


async def decided_shipments(pg: asyncpg.Connection, shipment_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """Shipments already reserved or rejected. Run after locking their stock: a plan another instance was
    deciding at the same time has committed by then, and this statement's snapshot sees it."""
    if not shipment_ids:
        return set()
    rows = await pg.fetch(
        "SELECT DISTINCT shipment_id FROM reservations WHERE shipment_id = ANY($1::uuid[])", list(shipment_ids)
    )
    return {row["shipment_id"] for row in rows}


async def insert_reservations(pg: asyncpg.Connection, rows: Sequence[Reservation]) -> None:
    # No ON CONFLICT: a conflict would mean this batch reserved stock for a shipment already decided. The primary
    # key then fails the batch, which the runtime replays message by message, and the replay sees the decision.
    if not rows:
        return
    await pg.execute(
        """
        INSERT INTO reservations (shipment_id, line_id, order_id, plan_id, sku, source_code, quantity, state)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::int8[],
                             $8::text[])
        """,
        [r.shipment_id for r in rows],
        [r.line_id for r in rows],
        [r.order_id for r in rows],
        [r.plan_id for r in rows],
        [r.sku for r in rows],
        [r.source_code for r in rows],
        [r.quantity for r in rows],
        [r.state.value for r in rows],
    )


async def lock_reservations(pg: asyncpg.Connection, shipment_ids: Collection[uuid.UUID]) -> list[Reservation]:
    if not shipment_ids:
        return []
    rows = await pg.fetch(
        """
        SELECT shipment_id, line_id, order_id, plan_id, sku, source_code, quantity, state, shipped, released
        FROM reservations WHERE shipment_id = ANY($1::uuid[])
        ORDER BY shipment_id, line_id
        FOR UPDATE
        """,
        list(shipment_ids),
    )
    return [
        Reservation(
            row["shipment_id"],
            row["line_id"],
            row["order_id"],
            row["plan_id"],
            row["sku"],
            row["source_code"],
            row["quantity"],
            ReservationState(row["state"]),
            row["shipped"],
            row["released"],
        )
        for row in rows
    ]


async def save_reservations(pg: asyncpg.Connection, changed: Collection[Reservation]) -> None:
    if not changed:
        return
    await pg.execute(
        """
        UPDATE reservations r
        SET shipped = v.shipped, released = v.released, state = v.state, updated_at = now()
        FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::int8[], $5::text[])
            AS v(shipment_id, line_id, shipped, released, state)
        WHERE r.shipment_id = v.shipment_id AND r.line_id = v.line_id
        """,
        [r.shipment_id for r in changed],
        [r.line_id for r in changed],
        [r.shipped for r in changed],
        [r.released for r in changed],
        [r.state.value for r in changed],
    )


# --- backorders --------------------------------------------------------------------------------------------------


async def queue_backorders(
    pg: asyncpg.Connection, lines: Sequence[tuple[uuid.UUID, uuid.UUID, str, str, int]]
) -> set[tuple[uuid.UUID, str]]:
    """Queue (order_id, plan_id, line_id, sku, quantity) lines in the given order; returns the (order_id, line_id)
    that joined, leaving out lines already waiting."""
    if not lines:
        return set()
    rows = await pg.fetch(
        """
        INSERT INTO backorders (order_id, plan_id, line_id, sku, quantity)
        SELECT order_id, plan_id, line_id, sku, quantity
        FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[])
            WITH ORDINALITY AS l(order_id, plan_id, line_id, sku, quantity, arrival)
        ORDER BY arrival
        ON CONFLICT (order_id, line_id) WHERE state = 'waiting' DO NOTHING
        RETURNING order_id, line_id
        """,
        [line[0] for line in lines],
        [line[1] for line in lines],
        [line[2] for line in lines],
        [line[3] for line in lines],
        [line[4] for line in lines],
    )
    return {(row["order_id"], row["line_id"]) for row in rows}


# --- reads for the HTTP API --------------------------------------------------------------------------------------


async def known_sources(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = await conn.execute(
        sa.select(sources.c.code, sources.c.name, sources.c.type, sources.c.active).order_by(sources.c.code)
    )
    return [dict(row) for row in rows.mappings()]


async def stock_of_sku(conn: AsyncConnection, sku: str) -> list[Stock]:
    rows = await conn.execute(
        sa.select(stock.c.sku, stock.c.source_code, stock.c.on_hand, stock.c.reserved)
        .where(stock.c.sku == sku)
        .order_by(stock.c.source_code)
    )
    return [_stock(row._mapping) for row in rows]


async def sku_known(conn: AsyncConnection, sku: str) -> bool:
    """Whether inventory has ever heard of the SKU: stock was received or counted, or a line waited for it."""
    query = sa.select(
        sa.or_(
            sa.exists().where(stock.c.sku == sku),
            sa.exists().where(backorders.c.sku == sku),
        )
    )
    return bool(await conn.scalar(query))


async def waiting_backorders(conn: AsyncConnection, sku: str) -> list[Backorder]:
    rows = await conn.execute(
        sa.select(
            backorders.c.id,
            backorders.c.order_id,
            backorders.c.line_id,
            backorders.c.sku,
            backorders.c.quantity,
            backorders.c.queued_at,
        )
        .where(backorders.c.sku == sku, backorders.c.state == "waiting")
        .order_by(backorders.c.id)
    )
    return [Backorder(r.id, r.order_id, r.line_id, r.sku, r.quantity, r.queued_at) for r in rows]
