"""Routing's database: the fulfillment network, the availability projection, planned orders, plans and their
shipments. Every SQL statement of the service lives here; batch writes are one set-based statement each."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from oms_contracts.common import Line, RoutingRule
from oms_contracts.inventory import StockLevelChangedData
from oms_contracts.order import OrderPaidData
from oms_contracts.routing import FulfillmentPlannedData, Source
from oms_runtime import Transaction, add_messaging_tables
from oms_runtime.database import json_text

from .domain import Availability, Fulfillment, Replan, RoutedOrder, capacity_days

metadata = sa.MetaData()
outbox, inbox = add_messaging_tables(metadata)

sources = sa.Table(
    "sources",
    metadata,
    sa.Column("code", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("lat", sa.Double, nullable=False),
    sa.Column("lon", sa.Double, nullable=False),
    sa.Column("countries", ARRAY(sa.Text), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("cost_per_shipment", sa.Numeric(), nullable=False),
    sa.Column("cost_per_unit", sa.Numeric(), nullable=False),
    sa.Column("handling_days", sa.Integer, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("timezone", sa.Text, nullable=False, server_default="UTC"),
    sa.Column("cutoff_time", sa.Time, nullable=True),
    # Days in transit per shipping method, as the contract's TransitDays: a new method needs no migration.
    sa.Column(
        "transit_days", JSONB, nullable=False, server_default=sa.text("""'{"standard": 3, "express": 1}'::jsonb""")
    ),
    sa.Column("daily_capacity", sa.Integer, nullable=True),
)

# The network's version: one row, raised by every edit that changes a source. `GET /network` shows it as its ETag,
# and `PUT /network` with `If-Match` replaces only the network the client read. Its row lock also serializes every
# edit of the network (sources that do not exist yet included).
network_version = sa.Table(
    "network_version",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True, server_default=sa.text("1")),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("changed_by", sa.Text, nullable=True),
    sa.CheckConstraint("id = 1", name="network_version_one_row"),
)

# Inventory's stock levels as routing last heard them; `changed_at` keeps an older report from overwriting a newer.
availability = sa.Table(
    "availability",
    metadata,
    sa.Column("sku", sa.Text, primary_key=True),
    sa.Column("source_code", sa.Text, primary_key=True),
    sa.Column("on_hand", sa.Integer, nullable=False),
    sa.Column("reserved", sa.Integer, nullable=False),
    sa.Column("available", sa.Integer, nullable=False),
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
)

# One row per paid order: what a re-plan needs. The order id is the business key that keeps a redelivered
# `order.paid` from being planned twice.
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("paid", JSONB, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("excluded", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'::text[]")),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

plans = sa.Table(
    "plans",
    metadata,
    sa.Column("plan_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("plan", JSONB, nullable=False),
    sa.Column("planned_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("order_id", "attempt", name="plans_order_id_attempt_key"),
)

# A planned shipment's lines, what a re-plan of it is checked against. `rejected_at`: it no longer leaves its source
# (inventory could not reserve it, or every unit of it was planned again), so its source's capacity stops counting it.
shipments = sa.Table(
    "shipments",
    metadata,
    sa.Column("shipment_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True), nullable=False),
    sa.Column("plan_id", UUID(as_uuid=True), nullable=False),
    sa.Column("source_code", sa.Text, nullable=False),
    sa.Column("lines", JSONB, nullable=False),
    sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=True),
    # The source's local date when it was planned: its daily capacity counts shipments per (source, this day).
    sa.Column("planned_on", sa.Date, nullable=False),
)

# Per source and local day, its shipments planned and not rejected: what its daily capacity is checked against. Kept by
# the statement that saves plans (a shipment planned counts one, withdrawn one less), so a batch reads one row per
# source rather than counting the day's shipments, which grow through the day.
planned_shipments = sa.Table(
    "planned_shipments",
    metadata,
    sa.Column("source_code", sa.Text, primary_key=True),
    sa.Column("planned_on", sa.Date, primary_key=True),
    sa.Column("shipments", sa.Integer, nullable=False),
)

# The units of each line of a fulfillment planned again so far (`quantity`, a sum over re-plans): never more than the
# fulfillment holds, so a request resent or from another topic plans nothing twice. Also for fulfillments routing
# never planned (inventory's backorder allocations).
replanned_lines = sa.Table(
    "replanned_lines",
    metadata,
    sa.Column("fulfillment_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("line_id", sa.Text, primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True), nullable=False),
    sa.Column("source_code", sa.Text, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("replanned_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# The rule chain of each channel that has its own; channel `*` is the default (over the settings' one).
rule_chains = sa.Table(
    "rule_chains",
    metadata,
    sa.Column("channel", sa.Text, primary_key=True),
    sa.Column("rules", ARRAY(sa.Text), nullable=False),
    sa.Column("set_by", sa.Text, nullable=False),
    sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
)

# jsonb columns are read as text (`::text`) and parsed by Pydantic straight from the JSON.
_LINES = TypeAdapter(list[Line])

_SOURCE_COLUMNS = (
    "code, name, type, lat, lon, countries, priority, cost_per_shipment, cost_per_unit, handling_days, active, "
    "timezone, cutoff_time, transit_days, daily_capacity"
)
# jsonb comes back as text, which the contract's nested model cannot take as it is.
_SOURCE_SELECTED = _SOURCE_COLUMNS.replace("transit_days", "transit_days::text AS transit_days")
_SELECT_SOURCES = f"SELECT {_SOURCE_SELECTED} FROM sources"


def _source(row: asyncpg.Record | dict[str, Any]) -> Source:
    return Source.model_validate(dict(row) | {"transit_days": json.loads(row["transit_days"])})


# --- the network ---------------------------------------------------------------------------------------------------


async def planning_network(pg: asyncpg.Connection, at: datetime) -> tuple[list[Source], dict[str, int]]:
    """The active network, and the shipments planned (and not rejected) at each source with a daily capacity on its
    local day at `at` (`domain.local_day`, the day its capacity counts), as `planned_shipments` keeps them: one
    statement, a round trip fewer per batch of plans. Each source's counts of the days around `at` are read (a source
    is at most a day ahead of or behind UTC) and its own day picked here, with the time zones the network was
    validated with, not the database server's."""
    rows = await pg.fetch(
        f"""
        SELECT {_SOURCE_SELECTED},
            (SELECT json_object_agg(p.planned_on, p.shipments) FROM planned_shipments p
             WHERE p.source_code = sources.code AND p.planned_on BETWEEN $1::date - 1 AND $1::date + 1) AS planned
        FROM sources WHERE active ORDER BY code
        """,
        at.astimezone(UTC).date(),
    )
    sources = [_source({k: v for k, v in row.items() if k != "planned"}) for row in rows]
    planned = {row["code"]: row["planned"] or {} for row in rows}
    days = capacity_days(sources, at)
    return sources, {code: n for code, day in days.items() if (n := planned[code].get(day.isoformat())) is not None}


async def network(pg: asyncpg.Connection) -> list[Source]:
    rows = await pg.fetch(f"{_SELECT_SOURCES} ORDER BY code")
    return [_source(row) for row in rows]


async def versioned_network(pg: asyncpg.Connection) -> tuple[int, list[Source]]:
    """The network's version and every source, read together (one statement, one snapshot)."""
    columns = ", ".join(f"s.{c.strip()}" for c in _SOURCE_COLUMNS.split(",")).replace(
        "s.transit_days", "s.transit_days::text AS transit_days"
    )
    rows = await pg.fetch(
        f"SELECT v.version, {columns} FROM network_version v LEFT JOIN sources s ON true ORDER BY s.code"
    )
    return rows[0]["version"], [_source(row) for row in rows if row["code"] is not None]


async def lock_network(pg: asyncpg.Connection) -> tuple[int, list[Source]]:
    """The network's version and the whole network, with every other edit of it held until this transaction ends."""
    return await _lock_version(pg), await network(pg)


async def lock_source(pg: asyncpg.Connection, code: str) -> tuple[int, Source | None]:
    """The network's version and one source (None: not in the network), with every other edit of the network held
    until this transaction ends."""
    version = await _lock_version(pg)
    return version, await source(pg, code)


async def _lock_version(pg: asyncpg.Connection) -> int:
    # The one row every edit of the network takes first: it also covers sources that do not exist yet.
    return await pg.fetchval("SELECT version FROM network_version FOR UPDATE")


async def source(pg: asyncpg.Connection, code: str) -> Source | None:
    row = await pg.fetchrow(f"{_SELECT_SOURCES} WHERE code = $1", code)
    return _source(row) if row is not None else None


async def new_network_version(pg: asyncpg.Connection, who: str) -> int:
    """Raise the network's version after an edit that changed it (hold `lock_network` or `lock_source`)."""
    return await pg.fetchval(
        "UPDATE network_version SET version = version + 1, changed_at = now(), changed_by = $1 RETURNING version",
        who,
    )


async def upsert_sources(pg: asyncpg.Connection, changed: Sequence[Source]) -> None:
    if not changed:
        return
    await pg.execute(
        f"""
        INSERT INTO sources ({_SOURCE_COLUMNS})
        SELECT {_SOURCE_COLUMNS} FROM jsonb_to_recordset($1::jsonb) AS s(
            code text, name text, type text, lat float8, lon float8, countries text[], priority int,
            cost_per_shipment numeric, cost_per_unit numeric, handling_days int, active bool,
            timezone text, cutoff_time time, transit_days jsonb, daily_capacity int)
        ON CONFLICT (code) DO UPDATE SET
            name = EXCLUDED.name, type = EXCLUDED.type, lat = EXCLUDED.lat, lon = EXCLUDED.lon,
            countries = EXCLUDED.countries, priority = EXCLUDED.priority,
            cost_per_shipment = EXCLUDED.cost_per_shipment, cost_per_unit = EXCLUDED.cost_per_unit,
            handling_days = EXCLUDED.handling_days, active = EXCLUDED.active, timezone = EXCLUDED.timezone,
            cutoff_time = EXCLUDED.cutoff_time, transit_days = EXCLUDED.transit_days,
            daily_capacity = EXCLUDED.daily_capacity, updated_at = now()
        """,
        "[" + ",".join(s.model_dump_json() for s in changed) + "]",
    )


async def deactivate_sources(pg: asyncpg.Connection, codes: Sequence[str]) -> None:
    if codes:
        await pg.execute(
            "UPDATE sources SET active = false, updated_at = now() WHERE code = ANY($1::text[])", list(codes)
        )


# --- rule chains ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredRuleChain:
    channel: str
    rules: list[RoutingRule]
    set_by: str
    set_at: datetime


def _chain(row: asyncpg.Record) -> StoredRuleChain:
    return StoredRuleChain(row["channel"], [RoutingRule(r) for r in row["rules"]], row["set_by"], row["set_at"])


async def stored_rule_chains(
    pg: asyncpg.Connection, channels: Iterable[str] | None = None
) -> dict[str, StoredRuleChain]:
    """The stored chains by channel (`*` is the default): all of them, or those of `channels`."""
    if channels is None:
        rows = await pg.fetch("SELECT channel, rules, set_by, set_at FROM rule_chains ORDER BY channel")
    else:
        rows = await pg.fetch(
            "SELECT channel, rules, set_by, set_at FROM rule_chains WHERE channel = ANY($1::text[])",
            list(set(channels)),
        )
    return {row["channel"]: _chain(row) for row in rows}


async def set_rule_chain(pg: asyncpg.Connection, chain: StoredRuleChain) -> StoredRuleChain | None:
    """Store a channel's chain; the stored row when the rules changed, None when they were already these."""
    row = await pg.fetchrow(
        """
        INSERT INTO rule_chains AS c (channel, rules, set_by, set_at) VALUES ($1, $2::text[], $3, $4)
        ON CONFLICT (channel) DO UPDATE SET rules = EXCLUDED.rules, set_by = EXCLUDED.set_by, set_at = EXCLUDED.set_at
        WHERE c.rules IS DISTINCT FROM EXCLUDED.rules
        RETURNING channel, rules, set_by, set_at
        """,
        chain.channel,
        [rule.value for rule in chain.rules],
        chain.set_by,
        chain.set_at,
    )
    return _chain(row) if row is not None else None


# --- the availability projection ----------------------------------------------------------------------------------


async def availability_of(pg: asyncpg.Connection, skus: Iterable[str]) -> Availability:
    rows = await pg.fetch(
        "SELECT source_code, sku, available FROM availability WHERE sku = ANY($1::text[]) AND available > 0",
        list(set(skus)),
    )
    return Availability({(row["source_code"], row["sku"]): row["available"] for row in rows})


async def record_stock_levels(tx: Transaction, levels: Sequence[StockLevelChangedData]) -> None:
    """Upsert stock levels, at most one per (sku, source); a level older than the one held is ignored. The batch's
    only write: it goes with the batch's inbox record (`Transaction.write`)."""
    if not levels:
        return
    # Sorted, so that two instances upserting overlapping keys take the row locks in the same order.
    levels = sorted(levels, key=lambda level: (level.sku, level.source_code))
    await tx.write(
        """
        INSERT INTO availability AS a (sku, source_code, on_hand, reserved, available, changed_at)
        SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::int[], $6::timestamptz[])
        ON CONFLICT (sku, source_code) DO UPDATE SET
            on_hand = EXCLUDED.on_hand, reserved = EXCLUDED.reserved, available = EXCLUDED.available,
            changed_at = EXCLUDED.changed_at
        WHERE a.changed_at <= EXCLUDED.changed_at
        """,
        [level.sku for level in levels],
        [level.source_code for level in levels],
        [level.on_hand for level in levels],
        [level.reserved for level in levels],
        [level.available for level in levels],
        [level.changed_at for level in levels],
    )


@dataclass(frozen=True, slots=True)
class ReportedShortage:
    """Inventory refused a reservation: `available` units of `sku` were left at `source_code` at time `at`."""

    sku: str
    source_code: str
    available: int
    at: datetime


async def record_shortages(pg: asyncpg.Connection, shortages: Sequence[ReportedShortage]) -> None:
    """Lower the projection to what inventory reported when it refused a reservation, unless a newer stock level
    has arrived since; at most one per (sku, source)."""
    if not shortages:
        return
    shortages = sorted(shortages, key=lambda s: (s.sku, s.source_code))
    await pg.execute(
        """
        UPDATE availability AS a SET available = u.available, changed_at = u.at
        FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[]) AS u(sku, source_code, available, at)
        WHERE a.sku = u.sku AND a.source_code = u.source_code AND a.changed_at <= u.at
        """,
        [s.sku for s in shortages],
        [s.source_code for s in shortages],
        [s.available for s in shortages],
        [s.at for s in shortages],
    )


# --- orders, plans and shipments ------------------------------------------------------------------------------------


async def claim_orders(pg: asyncpg.Connection, paid: Sequence[OrderPaidData]) -> set[uuid.UUID]:
    """Record paid orders not seen before (attempt 1); return their ids. An order already here is not planned
    again, however its `order.paid` came back."""
    if not paid:
        return set()
    rows = await pg.fetch(
        """
        INSERT INTO orders (order_id, paid, attempts)
        SELECT o, p, 1 FROM unnest($1::uuid[], $2::jsonb[]) AS u(o, p)
        ON CONFLICT (order_id) DO NOTHING
        RETURNING order_id
        """,
        [order.order_id for order in paid],
        [order.model_dump_json() for order in paid],
    )
    return {row["order_id"] for row in rows}


async def lock_orders(pg: asyncpg.Connection, order_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, RoutedOrder]:
    """The routed orders, row-locked until the transaction ends, so that re-plans of one order (arriving on two
    topics, or at two instances) take turns, and the later sees what the earlier planned again."""
    rows = await pg.fetch(
        """
        SELECT order_id, paid::text, attempts, excluded FROM orders
        WHERE order_id = ANY($1::uuid[])
        ORDER BY order_id
        FOR UPDATE
        """,
        list(set(order_ids)),
    )
    return {
        row["order_id"]: RoutedOrder(
            OrderPaidData.model_validate_json(row["paid"]), row["attempts"], frozenset(row["excluded"])
        )
        for row in rows
    }


async def fulfillments_of(pg: asyncpg.Connection, fulfillment_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Fulfillment]:
    """What routing knows of these fulfillments: the shipments it planned, and the lines of each already planned
    again. A fulfillment it knows nothing of is absent. Read after `lock_orders`, so that a re-plan committed
    meanwhile is seen."""
    rows = await pg.fetch(
        """
        SELECT f.id, coalesce(s.order_id, r.order_id) AS order_id, s.source_code, s.lines::text,
               s.rejected_at IS NOT NULL AS withdrawn, coalesce(r.replanned, '{}'::jsonb)::text AS replanned
        FROM unnest($1::uuid[]) AS f(id)
        LEFT JOIN shipments s ON s.shipment_id = f.id
        LEFT JOIN (
            SELECT fulfillment_id, (array_agg(order_id))[1] AS order_id,
                   jsonb_object_agg(line_id, quantity) AS replanned
            FROM replanned_lines WHERE fulfillment_id = ANY($1::uuid[])
            GROUP BY fulfillment_id
        ) r ON r.fulfillment_id = f.id
        WHERE s.shipment_id IS NOT NULL OR r.fulfillment_id IS NOT NULL
        """,
        list(set(fulfillment_ids)),
    )
    return {
        row["id"]: Fulfillment(
            fulfillment_id=row["id"],
            order_id=row["order_id"],
            source_code=row["source_code"],
            lines=tuple(_LINES.validate_json(row["lines"])) if row["lines"] is not None else (),
            replanned=json.loads(row["replanned"]),
            withdrawn=row["withdrawn"],
        )
        for row in rows
    }


async def save_plans(
    pg: asyncpg.Connection,
    made: Sequence[FulfillmentPlannedData],
    planned_on: Mapping[str, date],
    *,
    replans: Sequence[Replan] = (),
    withdrawn: Iterable[uuid.UUID] = (),
    routed: Iterable[RoutedOrder] = (),
) -> None:
    """Store plans with their shipments (each on its source's local day, `planned_on` by source code), the lines
    the re-plans planned again, the shipments withdrawn from their sources, each source's count of shipments planned
    on its day, and the orders' attempts and exclusions as they now stand: one statement."""
    planned = [(p, s) for p in made for s in p.shipments]
    again = [(r, line) for r in replans for line in r.lines]
    routed = list(routed)
    await pg.execute(
        """
        WITH new_plans AS (
            INSERT INTO plans (plan_id, order_id, attempt, plan, planned_at)
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::jsonb[], $5::timestamptz[])
        ), new_shipments AS (
            INSERT INTO shipments (shipment_id, order_id, plan_id, source_code, lines, planned_on)
            SELECT * FROM unnest($6::uuid[], $7::uuid[], $8::uuid[], $9::text[], $10::jsonb[], $15::date[])
            RETURNING source_code, planned_on
        ), withdrawn AS (
            UPDATE shipments SET rejected_at = now() WHERE shipment_id = ANY($11::uuid[]) AND rejected_at IS NULL
            RETURNING source_code, planned_on
        ), counted AS (
            -- In key order: two transactions counting the same sources lock their rows in the same order.
            INSERT INTO planned_shipments AS p (source_code, planned_on, shipments)
            SELECT source_code, planned_on, sum(n) FROM (
                SELECT source_code, planned_on, 1 AS n FROM new_shipments
                UNION ALL SELECT source_code, planned_on, -1 FROM withdrawn
            ) AS changed
            GROUP BY source_code, planned_on ORDER BY source_code, planned_on
            ON CONFLICT (source_code, planned_on) DO UPDATE SET shipments = p.shipments + EXCLUDED.shipments
        ), replanned AS (
            INSERT INTO replanned_lines (fulfillment_id, line_id, order_id, source_code, quantity)
            SELECT * FROM unnest($16::uuid[], $17::text[], $18::uuid[], $19::text[], $20::int[])
            ON CONFLICT (fulfillment_id, line_id) DO UPDATE SET quantity = EXCLUDED.quantity, replanned_at = now()
        )
        UPDATE orders AS o
        SET attempts = u.attempts, excluded = ARRAY(SELECT jsonb_array_elements_text(u.excluded))
        FROM unnest($12::uuid[], $13::int[], $14::jsonb[]) AS u(order_id, attempts, excluded)
        WHERE o.order_id = u.order_id
        """,
        [p.plan_id for p in made],
        [p.order_id for p in made],
        [p.attempt for p in made],
        [p.model_dump_json() for p in made],
        [p.planned_at for p in made],
        [s.shipment_id for _, s in planned],
        [p.order_id for p, _ in planned],
        [p.plan_id for p, _ in planned],
        [s.source_code for _, s in planned],
        [_LINES.dump_json(s.lines).decode() for _, s in planned],
        list(withdrawn),
        [r.paid.order_id for r in routed],
        [r.attempts for r in routed],
        [json_text(sorted(r.excluded)) for r in routed],
        [planned_on[s.source_code] for _, s in planned],
        [r.fulfillment.fulfillment_id for r, _ in again],
        [line.line_id for _, line in again],
        [r.fulfillment.order_id for r, _ in again],
        [r.source_code for r, _ in again],
        # The line's total so far: the orders' row locks make re-plans of one fulfillment take turns.
        [r.fulfillment.replanned[line.line_id] for r, line in again],
    )


async def plans_of(pg: asyncpg.Connection, order_id: uuid.UUID) -> list[FulfillmentPlannedData]:
    rows = await pg.fetch("SELECT plan::text FROM plans WHERE order_id = $1 ORDER BY attempt", order_id)
    return [FulfillmentPlannedData.model_validate_json(row["plan"]) for row in rows]
