"""Inventory's tables and every statement it runs. Consumers' statements are set-based (one per batch, through
asyncpg on the batch's transaction), never one per line.

Locks, always taken in this order, so that two instances queue behind each other instead of deadlocking:
00. the source lock of each source whose receipts may be held or let go (`lock_sources`: a transaction-level
   advisory lock per source code, in key order): shared by a batch that finds a source unknown and holds its
   receipts, exclusive for a batch of the network that takes what waits for its sources — so a receipt is either
   held before the network's batch looks, or finds the source the network's batch committed;
0. the shipment lock of each planned shipment whose units a cancellation may name before it is reserved (a
   transaction-level advisory lock per shipment id, in key order): a batch of plans holds it while it reads the
   shipment's tombstones and reserves it, a batch of cancellations while it finds no reservation and writes the
   tombstone, so a tombstone is never written beside a reservation that missed it;
1. reservation rows (fulfillment updates and cancellations of reserved units), by (shipment_id, line_id);
2. the queue lock of each SKU whose waiting lines the transaction will change or join (`lock_queues`: a
   transaction-level advisory lock per SKU, in the order of its key). Whoever reads waiting lines to change them
   holds it, so two releases never serve the same line twice; a plan that queues lines holds it too, so that a
   release serving that SKU at the same time either sees the new line or has committed the stock the plan then
   sees (a line never waits beside stock nobody offered it);
3. stock rows, in (sku, source_code) order, in one statement (a release, and a plan that queues lines, locks every
   row of those SKUs: claims and shipments may move at any source of them).
Waiting lines are then read and written under the queue lock, without row locks of their own. A release that meets
an order that ships complete with a line of a SKU it did not foresee locks that SKU late; the rare deadlock this
allows is detected by PostgreSQL and the batch retried (the runtime treats it as transient)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from oms_inventory.domain import (
    Backorder,
    BackorderState,
    ExpectedReceipt,
    NewBackorder,
    ReleaseTerms,
    Reservation,
    ReservationState,
    SourceState,
    Stock,
    StockKey,
    Tombstone,
)
from oms_runtime import Transaction, add_messaging_tables
from oms_runtime.database import json_text

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
    # NULL: not known (heard of before sources carried their countries).
    sa.Column("countries", ARRAY(sa.Text), nullable=True),
    sa.Column("handling_days", sa.Integer, nullable=False, server_default=sa.text("1")),
    sa.Column("timezone", sa.Text, nullable=False, server_default=sa.text("'UTC'")),
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
    # Held for waiting lines that ship whole (claims); counted with `reserved` wherever availability is shown.
    sa.Column("set_aside", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.CheckConstraint("set_aside >= 0", name="stock_set_aside_not_negative"),
    # The as-of time of the last count applied here: a count no later than it is not applied (domain.Stock).
    sa.Column("counted_at", sa.DateTime(timezone=True), nullable=True),
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
    # What joined the queue; `waiting` is what still waits of it.
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("state", sa.Text, nullable=False, server_default=sa.text("'waiting'")),
    sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("waiting", sa.BigInteger, nullable=False),
    # The plan's terms, which every release of the line respects.
    sa.Column("ship_to_country", sa.Text, nullable=True),
    sa.Column("pickup_source", sa.Text, nullable=True),
    sa.Column("ship_complete", sa.Boolean, nullable=False, server_default=sa.text("false")),
    # A claim: units held at `anchor` for a line that ships whole.
    sa.Column("set_aside", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("anchor", sa.Text, nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.CheckConstraint("state IN ('waiting', 'allocated', 'cancelled')", name="backorders_state_known"),
    sa.CheckConstraint("waiting BETWEEN 0 AND quantity", name="backorders_waiting_within_quantity"),
    sa.CheckConstraint("set_aside BETWEEN 0 AND waiting", name="backorders_set_aside_within_waiting"),
    sa.CheckConstraint("set_aside = 0 OR anchor IS NOT NULL", name="backorders_set_aside_has_anchor"),
    sa.Index("backorders_by_sku", "sku", "id"),
    # A SKU's queue, read in arrival order from the front.
    sa.Index("backorders_waiting_by_sku", "sku", "id", postgresql_where=sa.text("state = 'waiting'")),
    sa.Index("backorders_claims_by_sku", "sku", postgresql_where=sa.text("state = 'waiting' AND set_aside > 0")),
    sa.Index("backorders_whole_by_sku", "sku", postgresql_where=sa.text("state = 'waiting' AND ship_complete")),
    sa.Index("backorders_by_anchor", "anchor", postgresql_where=sa.text("state = 'waiting' AND anchor IS NOT NULL")),
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


# Which plan queued which line: a plan delivered again under a new event id (past the inbox) never adds its units
# twice, while a re-plan that backorders more units of a line that still waits adds them (see `queue_backorders`).
backorder_joins = sa.Table(
    "backorder_joins",
    metadata,
    sa.Column("plan_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("line_id", sa.Text, primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True), nullable=False),
    # What the plan backordered (before any tombstone was subtracted).
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
)

# Units the order service cancelled before inventory held them (domain.Tombstone): its cancellation overtook the
# plan. Used up when the plan comes; what no plan uses is pruned after the retention (settings.tombstone_days).
tombstones = sa.Table(
    "tombstones",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True), nullable=False),
    sa.Column("line_id", sa.Text, nullable=False),
    # NULL: backordered units (subtracted when the line joins its queue); else reserved units of that shipment.
    sa.Column("shipment_id", UUID(as_uuid=True), nullable=True),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.CheckConstraint("quantity > 0", name="tombstones_quantity_positive"),
    sa.Index("tombstones_of_lines", "order_id", "line_id", postgresql_where=sa.text("shipment_id IS NULL")),
    sa.Index("tombstones_of_shipments", "shipment_id", postgresql_where=sa.text("shipment_id IS NOT NULL")),
    sa.Index("tombstones_by_age", "created_at"),
)


expected_receipts = sa.Table(
    "expected_receipts",
    metadata,
    # Announcement order among receipts expected the same day.
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("sku", sa.Text, nullable=False),
    sa.Column("source_code", sa.Text, sa.ForeignKey("sources.code"), nullable=False),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    # What is still to come: receipts use it up; one with the announcement's reference settles it (0).
    sa.Column("outstanding", sa.BigInteger, nullable=False),
    sa.Column("expected_date", sa.Date, nullable=False),
    sa.Column("reference", sa.Text, nullable=True),
    sa.Column("announced_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.CheckConstraint("quantity > 0", name="expected_receipts_quantity_positive"),
    sa.CheckConstraint("outstanding BETWEEN 0 AND quantity", name="expected_receipts_outstanding_within_quantity"),
    sa.Index("expected_receipts_open_by_sku", "sku", "source_code", postgresql_where=sa.text("outstanding > 0")),
)


# Receipts, counts, expected receipts and returns for a source inventory has not heard of yet: the network event may
# simply not have arrived (it travels on another topic). Each is kept as the record it came in, applied when the
# source arrives on the network topic, or dead-lettered after the grace period (settings.held_receipt_grace_s).
held_receipts = sa.Table(
    "held_receipts",
    metadata,
    # Arrival order: what waits for one source is applied in the order it came.
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("source_code", sa.Text, nullable=False),
    # The record as it came: where it sat (its dead letter names that), its key, bytes and text headers.
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("key", sa.Text, nullable=True),
    sa.Column("value", BYTEA, nullable=False),
    sa.Column("headers", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    # The event's CloudEvent (source, id): its inbox row, which a dead letter gives up so that a replay applies.
    sa.Column("event_source", sa.Text, nullable=False),
    sa.Column("event_id", UUID(as_uuid=True), nullable=False),
    sa.Column("held_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.UniqueConstraint("topic", "event_source", "event_id", name="held_receipts_once_per_event"),
    sa.Index("held_receipts_by_source", "source_code"),
    sa.Index("held_receipts_by_age", "held_at"),
)


def _stock(row: Any) -> Stock:
    return Stock(row["sku"], row["source_code"], row["on_hand"], row["reserved"], row["set_aside"], row["counted_at"])


def _source(row: Any) -> SourceState:
    countries = row["countries"]
    return SourceState(
        row["code"],
        row["name"],
        row["type"],
        row["active"],
        frozenset(countries) if countries is not None else None,
        row["handling_days"],
        row["timezone"],
    )


_BACKORDER_COLUMNS = (
    "id, order_id, line_id, sku, waiting, ship_to_country, pickup_source, ship_complete, set_aside, anchor, "
    "plan_id, queued_at, state"
)


def _backorder(row: Any) -> Backorder:
    return Backorder(
        row["id"],
        row["order_id"],
        row["line_id"],
        row["sku"],
        row["waiting"],
        ReleaseTerms(row["ship_to_country"], row["pickup_source"], row["ship_complete"]),
        row["set_aside"],
        row["anchor"],
        row["plan_id"],
        row["queued_at"],
        BackorderState(row["state"]),
    )


def _sorted_keys(keys: Iterable[StockKey]) -> tuple[list[str], list[str]]:
    # Distinct keys: the locking statements order rows themselves; duplicates would only repeat work.
    unique = sorted(set(keys))
    return [sku for sku, _ in unique], [source for _, source in unique]


# --- the network -------------------------------------------------------------------------------------------------


async def upsert_sources(pg: asyncpg.Connection, states: Collection[SourceState]) -> None:
    if not states:
        return
    # A text[] per source does not fit unnest's one-dimensional arrays: countries travel as one comma-joined text.
    await pg.execute(
        """
        INSERT INTO sources (code, name, type, active, countries, handling_days, timezone)
        SELECT code, name, type, active, string_to_array(countries, ','), handling_days, timezone
        FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::int4[], $7::text[])
            AS s(code, name, type, active, countries, handling_days, timezone)
        ON CONFLICT (code) DO UPDATE
            SET name = EXCLUDED.name, type = EXCLUDED.type, active = EXCLUDED.active,
                countries = EXCLUDED.countries, handling_days = EXCLUDED.handling_days,
                timezone = EXCLUDED.timezone, updated_at = now()
        """,
        [s.code for s in states],
        [s.name for s in states],
        [s.type for s in states],
        [s.active for s in states],
        [",".join(sorted(s.countries)) if s.countries is not None else None for s in states],
        [s.handling_days for s in states],
        [s.timezone for s in states],
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


async def skus_to_reconsider(pg: asyncpg.Connection, codes: Collection[str]) -> set[str]:
    """SKUs whose queues a change of these sources' terms may move: those of lines anchored there, and those with
    units available there while lines wait for them. (Network changes are rare: the stock scan is acceptable.)"""
    if not codes:
        return set()
    rows = await pg.fetch(
        """
        SELECT sku FROM backorders WHERE state = 'waiting' AND anchor = ANY($1::text[])
        UNION
        SELECT s.sku FROM stock s
        WHERE s.source_code = ANY($1::text[]) AND s.on_hand - s.reserved - s.set_aside > 0
          AND EXISTS (SELECT 1 FROM backorders b WHERE b.sku = s.sku AND b.state = 'waiting')
        """,
        list(codes),
    )
    return {row["sku"] for row in rows}


async def all_sources(pg: asyncpg.Connection) -> dict[str, SourceState]:
    """Every source inventory knows, by code: a network has tens or hundreds, and a release may ship from any."""
    rows = await pg.fetch("SELECT code, name, type, active, countries, handling_days, timezone FROM sources")
    return {row["code"]: _source(row) for row in rows}


async def lock_sources(pg: asyncpg.Connection, codes: Collection[str], *, exclusive: bool) -> None:
    """Take the source lock (lock 00 above) of each code, in key order, until the transaction ends: shared to hold a
    source's receipts, exclusive to let them go."""
    if not codes:
        return
    take = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    await pg.execute(
        f"""
        SELECT {take}(k)
        FROM (SELECT DISTINCT hashtextextended('oms.inventory.source:' || c, 0) AS k
              FROM unnest($1::text[]) AS c ORDER BY k) AS keys
        """,
        sorted(codes),
    )


@dataclass(frozen=True, slots=True)
class Held:
    """A record that waits for its source to join the network."""

    id: int | None
    source_code: str
    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    headers: list[tuple[str, str]]
    event_source: str
    event_id: uuid.UUID
    held_at: datetime | None = None


async def hold(pg: asyncpg.Connection, held: Sequence[Held]) -> None:
    """Keep records until their sources arrive (one statement; an event already held stays as it is)."""
    if not held:
        return
    await pg.execute(
        """
        INSERT INTO held_receipts
            (source_code, topic, partition, "offset", key, value, headers, event_source, event_id)
        SELECT * FROM unnest(
            $1::text[], $2::text[], $3::int[], $4::int8[], $5::text[], $6::bytea[], $7::jsonb[], $8::text[],
            $9::uuid[]
        )
        ON CONFLICT DO NOTHING
        """,
        [h.source_code for h in held],
        [h.topic for h in held],
        [h.partition for h in held],
        [h.offset for h in held],
        [h.key for h in held],
        [h.value for h in held],
        [json_text(h.headers) for h in held],
        [h.event_source for h in held],
        [h.event_id for h in held],
    )


_HELD = (
    'id, source_code, topic, partition, "offset", key, value, headers::text AS headers, event_source, event_id, held_at'
)


def _held(row: Any) -> Held:
    return Held(
        row["id"],
        row["source_code"],
        row["topic"],
        row["partition"],
        row["offset"],
        row["key"],
        bytes(row["value"]),
        [(name, value) for name, value in json.loads(row["headers"])],
        row["event_source"],
        row["event_id"],
        row["held_at"],
    )


async def take_held(pg: asyncpg.Connection, codes: Collection[str]) -> list[Held]:
    """Remove and return what waits for these sources, in arrival order (hold their source locks, exclusive)."""
    if not codes:
        return []
    rows = await pg.fetch(
        f"DELETE FROM held_receipts WHERE source_code = ANY($1::text[]) RETURNING {_HELD}", sorted(codes)
    )
    return sorted((_held(row) for row in rows), key=lambda h: h.id or 0)


async def take_expired(pg: asyncpg.Connection, held_before: datetime, limit: int) -> list[Held]:
    """Remove and return up to `limit` records held since before `held_before`, oldest first. Rows a batch of the
    network is letting go are skipped: they are being applied."""
    rows = await pg.fetch(
        f"""
        DELETE FROM held_receipts WHERE id IN (
            SELECT id FROM held_receipts WHERE held_at < $1 ORDER BY held_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
        )
        RETURNING {_HELD}
        """,
        held_before,
        limit,
    )
    return sorted((_held(row) for row in rows), key=lambda h: h.id or 0)


async def record_dead_letters(
    pg: asyncpg.Connection,
    consumers: Sequence[str],
    events: Sequence[tuple[str, uuid.UUID]],
    positions: Sequence[uuid.UUID],
) -> list[bool]:
    """For held records about to be dead-lettered: each one's inbox row moves from its event to its position, as
    the runtime records a dead letter — a replay of the dead letter (`oms dlq replay`, the same event in a new
    record) is then applied, and the same record is never dead-lettered twice. Returns, per record, whether its
    position was new (False: dead-lettered before)."""
    if not consumers:
        return []
    rows = await pg.fetch(
        """
        WITH forgotten AS (
            DELETE FROM inbox AS i USING unnest($1::text[], $2::text[], $3::uuid[]) AS u(consumer, source, event_id)
            WHERE i.consumer = u.consumer AND i.source = u.source AND i.event_id = u.event_id
        )
        INSERT INTO inbox (consumer, source, event_id)
        SELECT consumer, '', position FROM unnest($1::text[], $4::uuid[]) AS u(consumer, position)
        ON CONFLICT DO NOTHING
        RETURNING event_id
        """,
        list(consumers),
        [source for source, _ in events],
        [event_id for _, event_id in events],
        list(positions),
    )
    new = {row["event_id"] for row in rows}
    return [position in new for position in positions]


# --- stock -------------------------------------------------------------------------------------------------------


async def lock_queues(pg: asyncpg.Connection, skus: Collection[str], shipments: Collection[uuid.UUID] = ()) -> None:
    """Take the shipment lock of each shipment, then the queue lock of each SKU (held to the end of the
    transaction), each kind in key order, in one statement."""
    if not skus and not shipments:
        return
    # The subquery sorts before the (volatile) lock function runs on each row, so every transaction takes its
    # locks in the same order: shipments (lock 0 of the order above) before queues (lock 2).
    await pg.execute(
        """
        SELECT pg_advisory_xact_lock(k)
        FROM (SELECT DISTINCT kind, k FROM (
                  SELECT 0 AS kind, hashtextextended('oms.inventory.shipment:' || id::text, 0) AS k
                  FROM unnest($2::uuid[]) AS id
                  UNION ALL
                  SELECT 1, hashtextextended('oms.inventory.queue:' || s, 0) FROM unnest($1::text[]) AS s
              ) AS keys ORDER BY kind, k) AS q
        """,
        sorted(skus),
        sorted(shipments),
    )


async def lock_shipments(pg: asyncpg.Connection, shipments: Collection[uuid.UUID]) -> None:
    """Take the shipment lock of each shipment, before any reservation row (see the lock order above)."""
    await lock_queues(pg, (), shipments)


async def queue_skus(pg: asyncpg.Connection, skus: Collection[str], orders: Collection[uuid.UUID] = ()) -> set[str]:
    """`skus` and the SKUs a release over them may have to touch: those of every waiting line of an order that
    ships complete and waits for one of them (or is one of `orders`, whose new lines are joining), and so on. Read
    without locks, to know which to lock."""
    if not skus:
        return set()
    rows = await pg.fetch(
        """
        WITH RECURSIVE reach(sku) AS (
            SELECT unnest($1::text[])
            UNION
            SELECT sku FROM backorders WHERE order_id = ANY($2::uuid[]) AND state = 'waiting' AND ship_complete
            UNION
            SELECT other.sku
            FROM reach
            JOIN backorders whole ON whole.sku = reach.sku AND whole.state = 'waiting' AND whole.ship_complete
            JOIN backorders other ON other.order_id = whole.order_id AND other.state = 'waiting'
        )
        SELECT sku FROM reach
        """,
        list(skus),
        list(orders),
    )
    return {row["sku"] for row in rows}


async def lock_stock_of_skus(
    pg: asyncpg.Connection,
    skus: Collection[str],
    create: Iterable[StockKey] = (),
    keys: Iterable[StockKey] = (),
) -> dict[StockKey, Stock]:
    """Lock every stock row of `skus` (hold their queue locks first) and the existing rows of `keys`, in one
    statement, after creating at zero the rows of `create` whose source is in the network and active. The queue
    locks make the create-then-lock pair safe: no other transaction creates or locks rows of these SKUs in
    between."""
    new_skus, new_sources = _sorted_keys(create)
    if new_skus:
        await pg.execute(
            """
            INSERT INTO stock (sku, source_code)
            SELECT w.sku, w.source_code
            FROM unnest($1::text[], $2::text[]) AS w(sku, source_code)
            JOIN sources ON sources.code = w.source_code AND sources.active
            ORDER BY w.sku, w.source_code
            ON CONFLICT (sku, source_code) DO NOTHING
            """,
            new_skus,
            new_sources,
        )
    key_skus, key_sources = _sorted_keys(keys)
    if not skus:
        return await lock_stock(pg, keys=zip(key_skus, key_sources, strict=True))
    # One statement, so that the rows are locked in one (sku, source_code) order whichever way they were named.
    rows = await pg.fetch(
        """
        SELECT sku, source_code, on_hand, reserved, set_aside, counted_at FROM stock
        WHERE sku = ANY($1::text[])
           OR (sku, source_code) IN (SELECT * FROM unnest($2::text[], $3::text[]))
        ORDER BY sku, source_code
        FOR UPDATE
        """,
        sorted(set(skus)),
        key_skus,
        key_sources,
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
        SELECT s.sku, s.source_code, s.on_hand, s.reserved, s.set_aside, s.counted_at
        FROM stock s
        JOIN unnest($1::text[], $2::text[]) AS w(sku, source_code) USING (sku, source_code)
        ORDER BY s.sku, s.source_code
        FOR UPDATE OF s
        """,
        skus,
        sources_,
    )
    return {(row["sku"], row["source_code"]): _stock(row) for row in rows}


async def save_stock(tx: Transaction, changed: Collection[Stock]) -> None:
    """Write the new levels of rows this transaction has locked: a last write, which goes with the batch's inbox
    record (`Transaction.write`); nothing a batch reads after it reads stock."""
    if not changed:
        return
    await tx.write(
        """
        UPDATE stock s SET on_hand = v.on_hand, reserved = v.reserved, set_aside = v.set_aside,
            counted_at = v.counted_at, updated_at = now()
        FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::timestamptz[])
            AS v(sku, source_code, on_hand, reserved, set_aside, counted_at)
        WHERE s.sku = v.sku AND s.source_code = v.source_code
        """,
        [s.sku for s in changed],
        [s.source_code for s in changed],
        [s.on_hand for s in changed],
        [s.reserved for s in changed],
        [s.set_aside for s in changed],
        [s.counted_at for s in changed],
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


async def insert_reservations(tx: Transaction, rows: Sequence[Reservation]) -> None:
    """A last write, like `save_stock`: nothing a batch reads after it reads reservations."""
    # No ON CONFLICT: a conflict would mean this batch reserved stock for a shipment already decided. The primary
    # key then fails the batch, which the runtime replays message by message, and the replay sees the decision.
    if not rows:
        return
    await tx.write(
        """
        INSERT INTO reservations (shipment_id, line_id, order_id, plan_id, sku, source_code, quantity, state,
                                  released)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::int8[],
                             $8::text[], $9::int8[])
        """,
        [r.shipment_id for r in rows],
        [r.line_id for r in rows],
        [r.order_id for r in rows],
        [r.plan_id for r in rows],
        [r.sku for r in rows],
        [r.source_code for r in rows],
        [r.quantity for r in rows],
        [r.state.value for r in rows],
        # Units cancelled before the shipment was reserved: released from the start (domain.ReservationDecision).
        [r.released for r in rows],
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


async def record_joins(pg: asyncpg.Connection, lines: Sequence[NewBackorder]) -> set[tuple[uuid.UUID, str]]:
    """Record which plan backordered which line; returns the (plan_id, line_id) recorded now, leaving out those a
    plan delivered before under another event id already recorded."""
    if not lines:
        return set()
    rows = await pg.fetch(
        """
        INSERT INTO backorder_joins (plan_id, line_id, order_id, quantity)
        SELECT plan_id, line_id, order_id, quantity
        FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::int8[]) AS l(plan_id, line_id, order_id, quantity)
        ON CONFLICT (plan_id, line_id) DO NOTHING
        RETURNING plan_id, line_id
        """,
        [line.plan_id for line in lines],
        [line.line_id for line in lines],
        [line.order_id for line in lines],
        [line.quantity for line in lines],
    )
    return {(row["plan_id"], row["line_id"]) for row in rows}


@dataclass(frozen=True, slots=True)
class Queued:
    """A line that joined its queue, or gained units in it: where it stands and what it waits for now."""

    arrival: int
    waiting: int
    new: bool


async def queue_backorders(
    pg: asyncpg.Connection, lines: Sequence[NewBackorder]
) -> dict[tuple[uuid.UUID, str], Queued]:
    """Queue lines in the given order (one entry per (order_id, line_id): see `domain.join_queues`). A line that
    already waits gains the units at its place instead: one waiting entry per line, the place its line took when it
    first waited (docs/architecture.md, "The backorder queue")."""
    if not lines:
        return {}
    # xmax is 0 exactly for a row this statement inserted (an updated row carries this transaction's id).
    rows = await pg.fetch(
        """
        INSERT INTO backorders (order_id, plan_id, line_id, sku, quantity, waiting, ship_to_country, pickup_source,
                                ship_complete)
        SELECT order_id, plan_id, line_id, sku, quantity, quantity, ship_to_country, pickup_source, ship_complete
        FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::text[], $8::bool[])
            WITH ORDINALITY AS l(order_id, plan_id, line_id, sku, quantity, ship_to_country, pickup_source,
                                 ship_complete, arrival)
        ORDER BY arrival
        ON CONFLICT (order_id, line_id) WHERE state = 'waiting' DO UPDATE
            SET quantity = backorders.quantity + EXCLUDED.quantity, waiting = backorders.waiting + EXCLUDED.waiting,
                updated_at = now()
        RETURNING id, order_id, line_id, waiting, xmax = 0 AS inserted
        """,
        [line.order_id for line in lines],
        [line.plan_id for line in lines],
        [line.line_id for line in lines],
        [line.sku for line in lines],
        [line.quantity for line in lines],
        [line.terms.ship_to_country for line in lines],
        [line.terms.pickup_source for line in lines],
        [line.terms.ship_complete for line in lines],
    )
    return {(row["order_id"], row["line_id"]): Queued(row["id"], row["waiting"], row["inserted"]) for row in rows}


async def waiting_ahead(pg: asyncpg.Connection, arrivals: Mapping[int, str]) -> dict[int, int]:
    """For each arrival (of the given SKU), how many lines of its SKU wait ahead of it (index-only counts on the
    waiting queue)."""
    if not arrivals:
        return {}
    rows = await pg.fetch(
        """
        SELECT f.arrival, (SELECT count(*) FROM backorders b
                           WHERE b.sku = f.sku AND b.state = 'waiting' AND b.id < f.arrival) AS ahead
        FROM unnest($1::int8[], $2::text[]) AS f(arrival, sku)
        """,
        list(arrivals),
        list(arrivals.values()),
    )
    return {row["arrival"]: row["ahead"] for row in rows}


# --- tombstones --------------------------------------------------------------------------------------------------


def _tombstone(row: Any) -> Tombstone:
    return Tombstone(
        row["order_id"], row["line_id"], row["quantity"], row["cancelled_at"], row["shipment_id"], row["id"]
    )


async def tombstones_of(
    pg: asyncpg.Connection, shipments: Collection[uuid.UUID], lines: Collection[tuple[uuid.UUID, str]]
) -> list[Tombstone]:
    """The tombstones of these shipments (reserved units) and of these (order_id, line_id) (backordered units).
    Read under the shipments' locks and the lines' queue locks: the writers of tombstones hold them too."""
    if not shipments and not lines:
        return []
    rows = await pg.fetch(
        """
        SELECT id, order_id, line_id, shipment_id, quantity, cancelled_at FROM tombstones
        WHERE shipment_id = ANY($1::uuid[])
           OR (shipment_id IS NULL AND (order_id, line_id) IN (SELECT * FROM unnest($2::uuid[], $3::text[])))
        ORDER BY id
        """,
        list(shipments),
        [order_id for order_id, _ in lines],
        [line_id for _, line_id in lines],
    )
    return [_tombstone(row) for row in rows]


async def add_tombstones(pg: asyncpg.Connection, new: Sequence[Tombstone], retention_days: int) -> None:
    """Store new tombstones, and prune those older than the retention that no plan used: a plan that has not come
    by then is not coming (a consumer stopped that long is an incident of its own)."""
    if not new:
        return
    await pg.execute(
        """
        WITH pruned AS (DELETE FROM tombstones WHERE created_at < now() - make_interval(days => $6))
        INSERT INTO tombstones (order_id, line_id, shipment_id, quantity, cancelled_at)
        SELECT order_id, line_id, shipment_id, quantity, cancelled_at
        FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::int8[], $5::timestamptz[])
            WITH ORDINALITY AS t(order_id, line_id, shipment_id, quantity, cancelled_at, position)
        ORDER BY position
        """,
        [t.order_id for t in new],
        [t.line_id for t in new],
        [t.shipment_id for t in new],
        [t.quantity for t in new],
        [t.cancelled_at for t in new],
        retention_days,
    )


async def use_tombstones(pg: asyncpg.Connection, used: Collection[Tombstone]) -> None:
    """What plans left of the tombstones they used: a tombstone used up is gone, the rest keep what is left."""
    if not used:
        return
    await pg.execute(
        """
        WITH gone AS (DELETE FROM tombstones WHERE id = ANY($1::int8[]))
        UPDATE tombstones t SET quantity = v.quantity
        FROM unnest($2::int8[], $3::int8[]) AS v(id, quantity)
        WHERE t.id = v.id
        """,
        [t.id for t in used if t.quantity == 0],
        [t.id for t in used if t.quantity > 0],
        [t.quantity for t in used if t.quantity > 0],
    )


@dataclass(frozen=True, slots=True)
class QueueRead:
    lines: list[Backorder]
    # Per SKU read from the front: the arrival of the last line read, and whether that was the end of the queue.
    read_to: dict[str, int]
    ended: set[str]


async def read_queues(
    pg: asyncpg.Connection, fronts: Mapping[str, tuple[int, int]], claimed: Collection[str] = ()
) -> QueueRead:
    """For each SKU of `fronts` (sku -> (after arrival, how many)), the next waiting lines in arrival order; and
    every waiting line with a claim of the SKUs `claimed`. One statement."""
    skus = list(fronts)
    rows = await pg.fetch(
        f"""
        SELECT b.*, true AS front FROM unnest($1::text[], $2::int8[], $3::int8[]) AS w(sku, after, how_many)
        CROSS JOIN LATERAL (
            SELECT {_BACKORDER_COLUMNS} FROM backorders
            WHERE sku = w.sku AND state = 'waiting' AND id > w.after
            ORDER BY id LIMIT w.how_many
        ) AS b
        UNION ALL
        SELECT {_BACKORDER_COLUMNS}, false AS front FROM backorders
        WHERE sku = ANY($4::text[]) AND state = 'waiting' AND set_aside > 0
        """,
        skus,
        [fronts[sku][0] for sku in skus],
        [fronts[sku][1] for sku in skus],
        list(claimed),
    )
    read_to = {sku: after for sku, (after, _) in fronts.items()}
    counts = dict.fromkeys(fronts, 0)
    for row in rows:
        if row["front"]:
            counts[row["sku"]] += 1
            read_to[row["sku"]] = max(read_to[row["sku"]], row["id"])
    ended = {sku for sku, (_, how_many) in fronts.items() if counts[sku] < how_many}
    lines = {row["id"]: _backorder(row) for row in rows}
    return QueueRead(list(lines.values()), read_to, ended)


async def waiting_lines_of_orders(pg: asyncpg.Connection, order_ids: Collection[uuid.UUID]) -> list[Backorder]:
    if not order_ids:
        return []
    rows = await pg.fetch(
        f"SELECT {_BACKORDER_COLUMNS} FROM backorders WHERE order_id = ANY($1::uuid[]) AND state = 'waiting'",
        list(order_ids),
    )
    return [_backorder(row) for row in rows]


async def save_backorders(pg: asyncpg.Connection, changed: Collection[Backorder]) -> None:
    """Write what releases and cancellations did to waiting lines (under their SKUs' queue locks)."""
    if not changed:
        return
    await pg.execute(
        """
        UPDATE backorders b
        SET waiting = v.waiting, set_aside = v.set_aside, anchor = v.anchor, state = v.state, updated_at = now()
        FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::text[], $5::text[])
            AS v(id, waiting, set_aside, anchor, state)
        WHERE b.id = v.id
        """,
        [line.arrival for line in changed],
        [line.waiting for line in changed],
        [line.set_aside for line in changed],
        [line.anchor for line in changed],
        [line.state.value for line in changed],
    )


async def waiting_queue(pg: asyncpg.Connection, skus: Collection[str], up_to: int | None = None) -> list[Backorder]:
    """Every waiting line of `skus` in arrival order (up to an arrival, if given): for positions and dates."""
    if not skus:
        return []
    rows = await pg.fetch(
        f"""
        SELECT {_BACKORDER_COLUMNS} FROM backorders
        WHERE sku = ANY($1::text[]) AND state = 'waiting' AND id <= $2
        ORDER BY id
        """,
        list(skus),
        up_to if up_to is not None else 2**63 - 1,
    )
    return [_backorder(row) for row in rows]


# --- expected receipts -------------------------------------------------------------------------------------------


def _expected(row: Any) -> ExpectedReceipt:
    return ExpectedReceipt(
        row["id"],
        row["sku"],
        row["source_code"],
        row["quantity"],
        row["outstanding"],
        row["expected_date"],
        row["reference"],
    )


async def open_expected_receipts(pg: asyncpg.Connection, skus: Collection[str]) -> list[ExpectedReceipt]:
    if not skus:
        return []
    rows = await pg.fetch(
        """
        SELECT id, sku, source_code, quantity, outstanding, expected_date, reference FROM expected_receipts
        WHERE sku = ANY($1::text[]) AND outstanding > 0
        ORDER BY expected_date, id
        """,
        list(skus),
    )
    return [_expected(row) for row in rows]


async def save_expected_receipts(pg: asyncpg.Connection, rows: Collection[ExpectedReceipt]) -> None:
    """Store new announcements (id None, in the given order) and what receipts left of known ones."""
    known = [r for r in rows if r.id is not None]
    new = [r for r in rows if r.id is None]
    if known:
        await pg.execute(
            """
            UPDATE expected_receipts e
            SET quantity = v.quantity, outstanding = v.outstanding, expected_date = v.expected_date,
                updated_at = now()
            FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::date[]) AS v(id, quantity, outstanding, expected_date)
            WHERE e.id = v.id
            """,
            [r.id for r in known],
            [r.quantity for r in known],
            [r.outstanding for r in known],
            [r.expected_date for r in known],
        )
    if new:
        await pg.execute(
            """
            INSERT INTO expected_receipts (sku, source_code, quantity, outstanding, expected_date, reference)
            SELECT sku, source_code, quantity, outstanding, expected_date, reference
            FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::date[], $6::text[])
                WITH ORDINALITY AS v(sku, source_code, quantity, outstanding, expected_date, reference, position)
            ORDER BY position
            """,
            [r.sku for r in new],
            [r.source_code for r in new],
            [r.quantity for r in new],
            [r.outstanding for r in new],
            [r.expected_date for r in new],
            [r.reference for r in new],
        )


# --- reads for the HTTP API --------------------------------------------------------------------------------------


async def known_sources(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = await conn.execute(
        sa.select(sources.c.code, sources.c.name, sources.c.type, sources.c.active).order_by(sources.c.code)
    )
    return [dict(row) for row in rows.mappings()]


async def stock_of_sku(conn: AsyncConnection, sku: str) -> list[Stock]:
    rows = await conn.execute(
        sa.select(
            stock.c.sku, stock.c.source_code, stock.c.on_hand, stock.c.reserved, stock.c.set_aside, stock.c.counted_at
        )
        .where(stock.c.sku == sku)
        .order_by(stock.c.source_code)
    )
    return [_stock(row._mapping) for row in rows]


async def sku_known(conn: AsyncConnection, sku: str) -> bool:
    """Whether inventory has ever heard of the SKU: stock was received, counted or announced, or a line waited."""
    query = sa.select(
        sa.or_(
            sa.exists().where(stock.c.sku == sku),
            sa.exists().where(backorders.c.sku == sku),
            sa.exists().where(expected_receipts.c.sku == sku),
        )
    )
    return bool(await conn.scalar(query))


async def order_waiting_skus(pg: asyncpg.Connection, order_id: uuid.UUID) -> dict[str, int]:
    """The SKUs an order's waiting lines wait for, each with the arrival of its youngest such line."""
    rows = await pg.fetch(
        "SELECT sku, max(id) AS last FROM backorders WHERE order_id = $1 AND state = 'waiting' GROUP BY sku",
        order_id,
    )
    return {row["sku"]: row["last"] for row in rows}
