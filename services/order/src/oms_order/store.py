"""The order service's tables and every statement it runs. Batch paths are set-based: one statement per table."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from oms_contracts.order import OrderStatus
from oms_runtime import add_messaging_tables

from .domain import Fulfillment, FulfillmentStatus, Line, LineState, Order, ShipmentLine, Transition

metadata = sa.MetaData()
add_messaging_tables(metadata)

# numeric without a fixed scale keeps amounts exactly as the channel sent them ("44.97", not "44.9700")
_Money = sa.Numeric()

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("external_order_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("customer", JSONB, nullable=False),
    sa.Column("shipping_address", JSONB, nullable=False),
    sa.Column("shipping_method", sa.Text, nullable=False),
    sa.Column("pickup_source", sa.Text),
    sa.Column("options", JSONB, nullable=False),
    sa.Column("shipping_total", _Money, nullable=False),
    sa.Column("tax_total", _Money, nullable=False),
    sa.Column("discount_total", _Money, nullable=False),
    sa.Column("grand_total", _Money, nullable=False),
    sa.Column("paid_amount", _Money),
    sa.Column("payment_ref", sa.Text),
    # The trace of the order's submission: every event about the order continues it, so one trace id follows
    # the order through all services.
    sa.Column("traceparent", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("channel", "external_order_id", name="orders_channel_external_order_id_key"),
)
sa.Index("orders_status_updated_at_idx", orders.c.status, orders.c.updated_at)

order_lines = sa.Table(
    "order_lines",
    metadata,
    sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.order_id"), primary_key=True),
    sa.Column("line_id", sa.Text, primary_key=True),
    sa.Column("sku", sa.Text, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", _Money, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.CheckConstraint("quantity > 0", name="order_lines_quantity_positive"),
)

fulfillments = sa.Table(
    "fulfillments",
    metadata,
    sa.Column("fulfillment_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.order_id"), nullable=False, index=True),
    sa.Column("plan_id", UUID(as_uuid=True)),
    sa.Column("source_code", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("lines", JSONB, nullable=False),
    sa.Column("ship_by", sa.Date),
    sa.Column("estimated_delivery", sa.Date),
    sa.Column("reason", sa.Text),
    sa.Column("carrier", sa.Text),
    sa.Column("service", sa.Text),
    sa.Column("tracking_number", sa.Text),
    sa.Column("tracking_url", sa.Text),
    sa.Column("requested_at", sa.DateTime(timezone=True)),
    sa.Column("shipped_at", sa.DateTime(timezone=True)),
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    sa.Column("rejection", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# The audit timeline: one row per status change, written in the transaction that made the change.
order_timeline = sa.Table(
    "order_timeline",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.order_id"), nullable=False),
    sa.Column("from_status", sa.Text),
    sa.Column("to_status", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("cause_event_id", UUID(as_uuid=True)),
    sa.Column("trace_id", sa.Text),
)
sa.Index("order_timeline_order_id_idx", order_timeline.c.order_id, order_timeline.c.id)


def _json(value: Any) -> Any:
    # SQLAlchemy's asyncpg dialect decodes jsonb on the connections it manages; a bare connection returns text.
    return json.loads(value) if isinstance(value, str) else value


async def load(pg, order_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Order]:
    """The orders with their lines and fulfillments, locked for this transaction (three statements)."""
    ids = list(set(order_ids))
    if not ids:
        return {}
    rows = await pg.fetch("SELECT * FROM orders WHERE order_id = ANY($1::uuid[]) ORDER BY order_id FOR UPDATE", ids)
    loaded = {row["order_id"]: _order(row) for row in rows}
    if not loaded:
        return loaded
    for row in await pg.fetch(
        "SELECT * FROM order_lines WHERE order_id = ANY($1::uuid[]) ORDER BY order_id, line_id", list(loaded)
    ):
        loaded[row["order_id"]].lines[row["line_id"]] = Line(
            row["line_id"], row["sku"], row["quantity"], row["unit_price"], LineState(row["state"])
        )
    for row in await pg.fetch("SELECT * FROM fulfillments WHERE order_id = ANY($1::uuid[])", list(loaded)):
        loaded[row["order_id"]].fulfillments[row["fulfillment_id"]] = _fulfillment(row)
    return loaded


def _order(row: Any) -> Order:
    return Order(
        order_id=row["order_id"],
        channel=row["channel"],
        external_order_id=row["external_order_id"],
        status=OrderStatus(row["status"]),
        currency=row["currency"],
        placed_at=row["placed_at"],
        customer=_json(row["customer"]),
        shipping_address=_json(row["shipping_address"]),
        shipping_method=row["shipping_method"],
        pickup_source=row["pickup_source"],
        options=_json(row["options"]),
        lines={},
        shipping_total=row["shipping_total"],
        tax_total=row["tax_total"],
        discount_total=row["discount_total"],
        grand_total=row["grand_total"],
        traceparent=row["traceparent"],
        paid_amount=row["paid_amount"],
        payment_ref=row["payment_ref"],
    )


def _fulfillment(row: Any) -> Fulfillment:
    return Fulfillment(
        fulfillment_id=row["fulfillment_id"],
        order_id=row["order_id"],
        source_code=row["source_code"],
        lines=tuple(ShipmentLine(**line) for line in _json(row["lines"])),
        status=FulfillmentStatus(row["status"]),
        plan_id=row["plan_id"],
        ship_by=row["ship_by"],
        estimated_delivery=row["estimated_delivery"],
        reason=row["reason"],
        carrier=row["carrier"],
        service=row["service"],
        tracking_number=row["tracking_number"],
        tracking_url=row["tracking_url"],
        requested_at=row["requested_at"],
        shipped_at=row["shipped_at"],
        delivered_at=row["delivered_at"],
        rejection=row["rejection"],
    )


async def save(pg, orders_: Iterable[Order]) -> None:
    """Write what changed in these orders: new orders and lines, statuses, fulfillments, timeline rows."""
    changed = [o for o in orders_ if o.changed]
    if not changed:
        return
    await _insert_orders(pg, [o for o in changed if o.new])
    await _update_orders(pg, [o for o in changed if not o.new])
    await _upsert_lines(pg, changed)
    await _upsert_fulfillments(pg, [o.fulfillments[f] for o in changed for f in sorted(o.changed_fulfillments)])
    await _insert_timeline(pg, [t for o in changed for t in o.transitions])
    for order in changed:
        order.new = order.changed = False
        order.transitions.clear()
        order.changed_fulfillments.clear()


async def _insert_orders(pg, new: list[Order]) -> None:
    if not new:
        return
    await pg.execute(
        """
        INSERT INTO orders (order_id, channel, external_order_id, status, currency, placed_at, customer,
            shipping_address, shipping_method, pickup_source, options, shipping_total, tax_total, discount_total,
            grand_total, traceparent, paid_amount, payment_ref)
        SELECT u.id, u.ch, u.ext, u.st, u.cur, u.placed, u.cust::jsonb, u.addr::jsonb, u.method, u.pickup,
            u.opts::jsonb, u.ship, u.tax, u.disc, u.total, u.tp, u.paid, u.ref
        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[],
            $8::text[], $9::text[], $10::text[], $11::text[], $12::numeric[], $13::numeric[], $14::numeric[],
            $15::numeric[], $16::text[], $17::numeric[], $18::text[])
            AS u(id, ch, ext, st, cur, placed, cust, addr, method, pickup, opts, ship, tax, disc, total, tp, paid, ref)
        """,
        [o.order_id for o in new],
        [o.channel for o in new],
        [o.external_order_id for o in new],
        [str(o.status) for o in new],
        [o.currency for o in new],
        [o.placed_at for o in new],
        [json.dumps(o.customer) for o in new],
        [json.dumps(o.shipping_address) for o in new],
        [o.shipping_method for o in new],
        [o.pickup_source for o in new],
        [json.dumps(o.options) for o in new],
        [o.shipping_total for o in new],
        [o.tax_total for o in new],
        [o.discount_total for o in new],
        [o.grand_total for o in new],
        [o.traceparent for o in new],
        [o.paid_amount for o in new],
        [o.payment_ref for o in new],
    )


async def _update_orders(pg, existing: list[Order]) -> None:
    if not existing:
        return
    await pg.execute(
        """
        UPDATE orders o SET status = u.st, paid_amount = u.paid, payment_ref = u.ref, updated_at = now()
        FROM unnest($1::uuid[], $2::text[], $3::numeric[], $4::text[]) AS u(id, st, paid, ref)
        WHERE o.order_id = u.id
        """,
        [o.order_id for o in existing],
        [str(o.status) for o in existing],
        [o.paid_amount for o in existing],
        [o.payment_ref for o in existing],
    )


async def _upsert_lines(pg, changed: list[Order]) -> None:
    lines = [(o.order_id, line) for o in changed for line in o.lines.values()]
    await pg.execute(
        """
        INSERT INTO order_lines (order_id, line_id, sku, quantity, unit_price, state)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::numeric[], $6::text[])
        ON CONFLICT (order_id, line_id) DO UPDATE SET state = EXCLUDED.state
        WHERE order_lines.state IS DISTINCT FROM EXCLUDED.state
        """,
        [o for o, _ in lines],
        [line.line_id for _, line in lines],
        [line.sku for _, line in lines],
        [line.quantity for _, line in lines],
        [line.unit_price for _, line in lines],
        [str(line.state) for _, line in lines],
    )


async def _upsert_fulfillments(pg, changed: list[Fulfillment]) -> None:
    if not changed:
        return
    await pg.execute(
        """
        INSERT INTO fulfillments (fulfillment_id, order_id, plan_id, source_code, status, lines, ship_by,
            estimated_delivery, reason, carrier, service, tracking_number, tracking_url, requested_at, shipped_at,
            delivered_at, rejection)
        SELECT u.id, u.oid, u.plan, u.src, u.st, u.lines::jsonb, u.ship_by, u.eta, u.reason, u.carrier, u.svc,
            u.tn, u.turl, u.req, u.shipped, u.deliv, u.rej
        FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::date[], $8::date[],
            $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::timestamptz[], $15::timestamptz[],
            $16::timestamptz[], $17::text[])
            AS u(id, oid, plan, src, st, lines, ship_by, eta, reason, carrier, svc, tn, turl, req, shipped, deliv, rej)
        ON CONFLICT (fulfillment_id) DO UPDATE SET status = EXCLUDED.status, carrier = EXCLUDED.carrier,
            service = EXCLUDED.service, tracking_number = EXCLUDED.tracking_number,
            tracking_url = EXCLUDED.tracking_url, requested_at = EXCLUDED.requested_at,
            shipped_at = EXCLUDED.shipped_at, delivered_at = EXCLUDED.delivered_at, rejection = EXCLUDED.rejection,
            updated_at = now()
        """,
        [f.fulfillment_id for f in changed],
        [f.order_id for f in changed],
        [f.plan_id for f in changed],
        [f.source_code for f in changed],
        [str(f.status) for f in changed],
        [json.dumps([{"line_id": x.line_id, "sku": x.sku, "quantity": x.quantity} for x in f.lines]) for f in changed],
        [f.ship_by for f in changed],
        [f.estimated_delivery for f in changed],
        [f.reason for f in changed],
        [f.carrier for f in changed],
        [f.service for f in changed],
        [f.tracking_number for f in changed],
        [f.tracking_url for f in changed],
        [f.requested_at for f in changed],
        [f.shipped_at for f in changed],
        [f.delivered_at for f in changed],
        [f.rejection for f in changed],
    )


async def _insert_timeline(pg, transitions: list[Transition]) -> None:
    if not transitions:
        return
    await pg.execute(
        """
        INSERT INTO order_timeline (order_id, from_status, to_status, actor, note, occurred_at, cause_event_id,
            trace_id)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
            $7::uuid[], $8::text[])
        """,
        [t.order_id for t in transitions],
        [str(t.from_status) if t.from_status else None for t in transitions],
        [str(t.to_status) for t in transitions],
        [t.actor for t in transitions],
        [t.note for t in transitions],
        [t.at for t in transitions],
        [t.cause_event_id for t in transitions],
        [t.trace_id for t in transitions],
    )


# -- reads for the HTTP API ----------------------------------------------------------------------------------------


async def order_view(conn, order_id: uuid.UUID) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(orders).where(orders.c.order_id == order_id))).mappings().first()
    if row is None:
        return None
    lines = (
        await conn.execute(
            sa.select(order_lines).where(order_lines.c.order_id == order_id).order_by(order_lines.c.line_id)
        )
    ).mappings()
    shipments = (
        await conn.execute(
            sa.select(fulfillments).where(fulfillments.c.order_id == order_id).order_by(fulfillments.c.requested_at)
        )
    ).mappings()
    view = dict(row)
    view["lines"] = [dict(line) for line in lines]
    view["fulfillments"] = [dict(f) for f in shipments]
    view["subtotal"] = sum((line["unit_price"] * line["quantity"] for line in view["lines"]), Decimal(0))
    return view


async def timeline(conn, order_id: uuid.UUID) -> list[dict[str, Any]] | None:
    exists = await conn.scalar(sa.select(sa.literal(1)).where(orders.c.order_id == order_id))
    if exists is None:
        return None
    rows = await conn.execute(
        sa.select(order_timeline).where(order_timeline.c.order_id == order_id).order_by(order_timeline.c.id)
    )
    return [dict(row) for row in rows.mappings()]


async def order_list(conn, *, status: str | None, channel: str | None, limit: int) -> list[dict[str, Any]]:
    query = sa.select(
        orders.c.order_id,
        orders.c.channel,
        orders.c.external_order_id,
        orders.c.status,
        orders.c.grand_total,
        orders.c.currency,
        orders.c.placed_at,
        orders.c.updated_at,
    ).order_by(orders.c.updated_at.desc())
    if status:
        query = query.where(orders.c.status == status)
    if channel:
        query = query.where(orders.c.channel == channel)
    return [dict(row) for row in (await conn.execute(query.limit(limit))).mappings()]
