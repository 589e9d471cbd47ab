"""The order service's tables and every statement it runs. Batch paths are set-based: one statement per table, and a
batch's writes sent together as one (`save`)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from oms_contracts.order import OrderStatus, StuckKind
from oms_runtime import add_messaging_tables
from oms_runtime.database import json_text, together

from .domain import (
    BackorderCount,
    Cancellation,
    CancellationLine,
    Entry,
    Fulfillment,
    FulfillmentStatus,
    Line,
    LineState,
    Order,
    Parcel,
    PendingCancellation,
    Refund,
    Return,
    ShipmentLine,
)
from .stuck import Stuck, Waits

metadata = sa.MetaData()
add_messaging_tables(metadata)

BACKORDER_COUNTS = [f.name for f in dataclasses.fields(BackorderCount)]

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
    # The totals above are what the order costs now (cancellations lower them); these are as the channel sent them,
    # the base of every share of tax and discount a refund takes.
    sa.Column("submitted_shipping_total", _Money, nullable=False),
    sa.Column("submitted_tax_total", _Money, nullable=False),
    sa.Column("submitted_discount_total", _Money, nullable=False),
    sa.Column("refunded_total", _Money, nullable=False, server_default="0"),
    # When the order entered its status: the stuck check's "paid, not planned" starts here.
    sa.Column("status_since", sa.DateTime(timezone=True)),
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
    # The summary: the least advanced state of a unit that is not cancelled (domain.Line.state).
    sa.Column("state", sa.Text, nullable=False),
    # Units by state (domain.LineState); together they are the ordered quantity.
    *(sa.Column(f"quantity_{s}", sa.Integer, nullable=False, server_default="0") for s in LineState),
    sa.CheckConstraint("quantity > 0", name="order_lines_quantity_positive"),
    sa.CheckConstraint(" AND ".join(f"quantity_{s} >= 0" for s in LineState), name="order_lines_units_not_negative"),
    sa.CheckConstraint(" + ".join(f"quantity_{s}" for s in LineState) + " = quantity", name="order_lines_units_add_up"),
    # Units backordered as routing's plans counted them, as inventory's backorder_queued counted them, and those
    # that entered the backorder here (domain.BackorderCount): whichever message comes second moves nothing.
    *(sa.Column(f"backorder_{c}", sa.Integer, nullable=False, server_default="0") for c in BACKORDER_COUNTS),
    sa.CheckConstraint(
        " AND ".join(f"backorder_{c} >= 0" for c in BACKORDER_COUNTS), name="order_lines_backorder_counts_not_negative"
    ),
    # When inventory expects to serve the line's backordered units (from backorder_queued); null when unknown.
    sa.Column("backorder_expected_date", sa.Date),
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
    sa.Column("requested_at", sa.DateTime(timezone=True)),
    sa.Column("shipped_at", sa.DateTime(timezone=True)),  # when its last unit left
    sa.Column("delivered_at", sa.DateTime(timezone=True)),  # when its last parcel arrived
    sa.Column("rejection", sa.Text),
    sa.Column("accepted_at", sa.DateTime(timezone=True)),
    # line_id -> units that will not leave from it (domain.Fulfillment.withdrawn), units given back to inventory
    # with its reservation, and cancellations waiting for its source's (or inventory's) answer.
    sa.Column("withdrawn", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("to_release", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("pending_cancellations", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# What left a source in one box: a fulfillment ships in one parcel or several. One tracking number is one parcel of
# a fulfillment, so a source that reports the same parcel twice cannot record it twice.
parcels = sa.Table(
    "parcels",
    metadata,
    sa.Column("parcel_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("fulfillment_id", UUID(as_uuid=True), sa.ForeignKey("fulfillments.fulfillment_id"), nullable=False),
    sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.order_id"), nullable=False, index=True),
    sa.Column("carrier", sa.Text, nullable=False),
    sa.Column("service", sa.Text),
    sa.Column("tracking_number", sa.Text, nullable=False),
    sa.Column("tracking_url", sa.Text),
    sa.Column("shipped_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    sa.Column("lines", JSONB, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("fulfillment_id", "tracking_number", name="parcels_fulfillment_id_tracking_number_key"),
)

# The audit timeline: one row per status change, note, cancellation (asked, pending, done, refused), refund, return,
# re-plan and stuck alert, written in the transaction that made it; its id is the order things happened in.
order_timeline = sa.Table(
    "order_timeline",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.order_id"), nullable=False),
    sa.Column("kind", sa.Text, nullable=False, server_default="status"),
    sa.Column("from_status", sa.Text),
    sa.Column("to_status", sa.Text),  # set for status changes only
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("cause_event_id", UUID(as_uuid=True)),
    sa.Column("cause_type", sa.Text),
    sa.Column("trace_id", sa.Text),
    sa.Column("details", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.CheckConstraint("kind <> 'status' OR to_status IS NOT NULL", name="order_timeline_status_has_to_status"),
)
sa.Index("order_timeline_order_id_idx", order_timeline.c.order_id, order_timeline.c.id)

# Every request to cancel (some of) an order, and what became of it per line. Its id makes a repeated request
# apply once: a channel's event id, an Idempotency-Key, a customer link's signature.
cancellations = sa.Table(
    "cancellations",
    metadata,
    sa.Column("cancellation_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.order_id"), nullable=False, index=True),
    sa.Column("requested_by", sa.Text, nullable=False),
    sa.Column("via", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("asked", JSONB),  # [[line_id, units or null], ...]; null: the whole order
    sa.Column("only_state", sa.Text),
    sa.Column("lines", JSONB, nullable=False),  # per line: sku, asked, cancelled, pending, refused
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("refusal", sa.Text),
    sa.Column("refunded", _Money, nullable=False, server_default="0"),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# Money given back, once per refund: what finance reads beside order.refund_issued.v1.
refunds = sa.Table(
    "refunds",
    metadata,
    sa.Column("refund_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.order_id"), nullable=False, index=True),
    sa.Column("amount", _Money, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("cause", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("lines", JSONB, nullable=False),
    sa.Column("refunded_total", _Money, nullable=False),
    sa.Column("cancellation_id", UUID(as_uuid=True)),
    sa.Column("return_id", UUID(as_uuid=True)),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("amount > 0", name="refunds_amount_positive"),
)

returns = sa.Table(
    "returns",
    metadata,
    sa.Column("return_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.order_id"), nullable=False, index=True),
    sa.Column("source_code", sa.Text, nullable=False),
    sa.Column("lines", JSONB, nullable=False),  # [{line_id, sku, quantity, condition}]
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("refund_amount", _Money, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)

# One row per stuck episode: an order (and, for the kinds about one, a fulfillment) without progress since `since`.
# Raised once (the primary key); cleared when the check no longer finds it, i.e. the order moved on.
NO_FULFILLMENT = uuid.UUID(int=0)
stuck_alerts = sa.Table(
    "stuck_alerts",
    metadata,
    sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.order_id"), primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),
    # NO_FULFILLMENT for the kinds about the whole order, so that the key has no null in it.
    sa.Column("fulfillment_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("since", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("cleared_at", sa.DateTime(timezone=True)),
)
sa.Index("stuck_alerts_open_idx", stuck_alerts.c.order_id, postgresql_where=stuck_alerts.c.cleared_at.is_(None))
# What the stuck check reads every minute: only the rows that may be waiting, so it stays cheap as orders pile up.
sa.Index("orders_paid_since_idx", orders.c.status_since, postgresql_where=orders.c.status == "paid")
sa.Index(
    "fulfillments_waiting_idx",
    fulfillments.c.status,
    fulfillments.c.requested_at,
    fulfillments.c.accepted_at,
    postgresql_where=fulfillments.c.status.in_(["requested", "accepted"]),
)
sa.Index(
    "order_lines_backordered_idx",
    order_lines.c.backorder_expected_date,
    postgresql_where=order_lines.c.quantity_backordered > 0,
)


def _json(value: Any) -> Any:
    # SQLAlchemy's asyncpg dialect decodes jsonb on the connections it manages; a bare connection returns text.
    return json.loads(value) if isinstance(value, str) else value


def _lines_json(lines: Iterable[ShipmentLine]) -> str:
    return json_text([{"line_id": x.line_id, "sku": x.sku, "quantity": x.quantity} for x in lines])


_ARRAY_TYPES = {sa.Text: "text", UUID: "uuid", sa.Integer: "int", sa.Numeric: "numeric", sa.Date: "date"}


def _array_type(column: sa.Column) -> str:
    if isinstance(column.type, sa.DateTime):
        return "timestamptz"
    if isinstance(column.type, JSONB):
        return "text"  # sent as JSON text, cast in the SELECT
    return next(name for kind, name in _ARRAY_TYPES.items() if isinstance(column.type, kind))


def upsert(table: sa.Table, columns: list[str], *, update: list[str]) -> str:
    """One set-based statement that inserts rows given as one array per column (`unnest`) and, for rows whose
    primary key exists, updates `update` where a value differs. Generated from the table, so a new column is one
    edit."""
    arrays = ", ".join(f"${i}::{_array_type(table.c[c])}[]" for i, c in enumerate(columns, 1))
    values = ", ".join(f"u.{c}::jsonb" if isinstance(table.c[c].type, JSONB) else f"u.{c}" for c in columns)
    key = ", ".join(c.name for c in table.primary_key.columns)
    sets = [f"{c} = EXCLUDED.{c}" for c in update] + (["updated_at = now()"] if "updated_at" in table.c else [])
    old = ", ".join(f"t.{c}" for c in update)
    new = ", ".join(f"EXCLUDED.{c}" for c in update)
    return (
        f"INSERT INTO {table.name} AS t ({', '.join(columns)}) SELECT {values} FROM unnest({arrays}) "
        f"AS u({', '.join(columns)}) ON CONFLICT ({key}) DO UPDATE SET {', '.join(sets)} "
        f"WHERE ROW({old}) IS DISTINCT FROM ROW({new})"
    )


# One table's part of a batch's save: a statement whose parameters are $1..$n, and its n arguments.
Write = tuple[str, tuple[Any, ...]]


def _write(statement: str, *args: Any) -> Write:
    return statement, args


async def _write_all(pg, writes: Iterable[Write]) -> None:
    """The writes in one round trip (`together`): a save of a batch sent four or five statements before."""
    writes = list(writes)
    if len(writes) == 1:
        [(statement, args)] = writes
        await pg.execute(statement, *args)
    elif writes:
        statement = together(tuple(statement for statement, _ in writes))
        await pg.execute(statement, *(a for _, args in writes for a in args))


_UNITS = [f"quantity_{s}" for s in LineState]
_COUNTS = [f"backorder_{c}" for c in BACKORDER_COUNTS]
# A line's columns by what they hold, for reading rows: iterating an Enum and formatting each column's name per line
# read were 2 % of the order service at 300 orders/s.
_UNITS_BY_STATE = tuple(zip(LineState, _UNITS, strict=True))
_COUNTS_BY_NAME = tuple(zip(BACKORDER_COUNTS, _COUNTS, strict=True))
_LINE_COLUMNS = [
    "order_id",
    "line_id",
    "sku",
    "quantity",
    "unit_price",
    "state",
    *_UNITS,
    *_COUNTS,
    "backorder_expected_date",
]
_UPSERT_LINES = upsert(order_lines, _LINE_COLUMNS, update=["state", *_UNITS, *_COUNTS, "backorder_expected_date"])
_FULFILLMENT_COLUMNS = [c.name for c in fulfillments.c if c.name != "updated_at"]
_UPSERT_FULFILLMENTS = upsert(
    fulfillments,
    _FULFILLMENT_COLUMNS,
    update=[
        "status",
        "ship_by",
        "estimated_delivery",
        "reason",
        "requested_at",
        "shipped_at",
        "delivered_at",
        "rejection",
        "accepted_at",
        "withdrawn",
        "to_release",
        "pending_cancellations",
    ],
)
_CANCELLATION_COLUMNS = [c.name for c in cancellations.c]
_UPSERT_CANCELLATIONS = upsert(cancellations, _CANCELLATION_COLUMNS, update=["lines", "status", "refusal", "refunded"])
_PARCEL_COLUMNS = [c.name for c in parcels.c if c.name != "recorded_at"]
_UPSERT_PARCELS = upsert(parcels, _PARCEL_COLUMNS, update=["delivered_at"])


async def load(pg, order_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Order]:
    """The orders with their lines, fulfillments, parcels and cancellations, locked for this transaction. Every
    writer of an order, consumer or HTTP request, comes through here: the row lock makes them take turns, so none
    loses another's update, and none adds a fulfillment, parcel or cancellation while another holds the order.

    Two to five statements: the statement that reads the lines, once the orders are locked, also says whether each
    order has any fulfillments, parcels or cancellations (an index probe each, a LATERAL subquery with a LIMIT: an
    EXISTS may be planned as a hash of the whole table, which the pool's generic plans would keep), and a table none
    of the orders has rows in is not read; most batches are of orders early in their life, which have none of the
    three. Not in the locking statement: its other subqueries would see the tables as they were before it waited for
    a lock, so a cancellation committed by the writer it waited for would be missed."""
    ids = list(set(order_ids))
    if not ids:
        return {}
    rows = await pg.fetch("SELECT * FROM orders WHERE order_id = ANY($1::uuid[]) ORDER BY order_id FOR UPDATE", ids)
    loaded = {row["order_id"]: _order(row) for row in rows}
    if not loaded:
        return loaded
    has: dict[str, list[uuid.UUID]] = {"fulfillments": [], "parcels": [], "cancellations": []}
    for row in await pg.fetch(
        """
        SELECT i.order_id AS of_order, t.*,
            f.found IS NOT NULL AS has_fulfillments,
            p.found IS NOT NULL AS has_parcels,
            c.found IS NOT NULL AS has_cancellations
        FROM unnest($1::uuid[]) AS i(order_id)
        LEFT JOIN LATERAL (SELECT true AS found FROM fulfillments f WHERE f.order_id = i.order_id LIMIT 1) f ON true
        LEFT JOIN LATERAL (SELECT true AS found FROM parcels p WHERE p.order_id = i.order_id LIMIT 1) p ON true
        LEFT JOIN LATERAL (SELECT true AS found FROM cancellations c WHERE c.order_id = i.order_id LIMIT 1) c ON true
        LEFT JOIN order_lines t ON t.order_id = i.order_id
        ORDER BY i.order_id, t.line_id
        """,
        list(loaded),
    ):
        order = loaded[row["of_order"]]
        if not order.lines:  # the order's first row: its flags
            for table, orders in has.items():
                if row[f"has_{table}"]:
                    orders.append(order.order_id)
        if row["line_id"] is not None:
            order.lines[row["line_id"]] = Line(
                row["line_id"],
                row["sku"],
                row["quantity"],
                row["unit_price"],
                {s: row[column] for s, column in _UNITS_BY_STATE},
                BackorderCount(**{c: row[column] for c, column in _COUNTS_BY_NAME}),
                row["backorder_expected_date"],
            )
    if has["fulfillments"]:
        for row in await pg.fetch(
            "SELECT * FROM fulfillments WHERE order_id = ANY($1::uuid[]) "
            "ORDER BY requested_at NULLS LAST, fulfillment_id",
            has["fulfillments"],
        ):
            loaded[row["order_id"]].fulfillments[row["fulfillment_id"]] = _fulfillment(row)
    if has["parcels"]:
        for row in await pg.fetch(
            "SELECT * FROM parcels WHERE order_id = ANY($1::uuid[]) ORDER BY shipped_at, recorded_at", has["parcels"]
        ):
            loaded[row["order_id"]].fulfillments[row["fulfillment_id"]].parcels.append(_parcel(row))
    if has["cancellations"]:
        for row in await pg.fetch("SELECT * FROM cancellations WHERE order_id = ANY($1::uuid[])", has["cancellations"]):
            loaded[row["order_id"]].cancellations[row["cancellation_id"]] = _cancellation(row)
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
        submitted_shipping_total=row["submitted_shipping_total"],
        submitted_tax_total=row["submitted_tax_total"],
        submitted_discount_total=row["submitted_discount_total"],
        refunded_total=row["refunded_total"],
        status_since=row["status_since"],
        accepted_at=row["created_at"],
    )


def _cancellation(row: Any) -> Cancellation:
    asked = _json(row["asked"])
    return Cancellation(
        cancellation_id=row["cancellation_id"],
        order_id=row["order_id"],
        requested_by=row["requested_by"],
        via=row["via"],
        reason=row["reason"],
        asked=[(line_id, n) for line_id, n in asked] if asked is not None else None,
        only=LineState(row["only_state"]) if row["only_state"] else None,
        requested_at=row["requested_at"],
        lines={line_id: CancellationLine(line_id, **x) for line_id, x in _json(row["lines"]).items()},
        refusal=row["refusal"],
        refunded=row["refunded"],
        updated_at=row["updated_at"],
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
        requested_at=row["requested_at"],
        shipped_at=row["shipped_at"],
        delivered_at=row["delivered_at"],
        rejection=row["rejection"],
        accepted_at=row["accepted_at"],
        withdrawn=_json(row["withdrawn"]),
        to_release=_json(row["to_release"]),
        pending=[
            PendingCancellation(uuid.UUID(p["cancellation_id"]), p["line_id"], p["quantity"])
            for p in _json(row["pending_cancellations"])
        ],
    )


def _parcel(row: Any) -> Parcel:
    return Parcel(
        parcel_id=row["parcel_id"],
        fulfillment_id=row["fulfillment_id"],
        carrier=row["carrier"],
        service=row["service"],
        tracking_number=row["tracking_number"],
        tracking_url=row["tracking_url"],
        shipped_at=row["shipped_at"],
        lines=tuple(ShipmentLine(**line) for line in _json(row["lines"])),
        delivered_at=row["delivered_at"],
    )


async def save(pg, orders_: Iterable[Order]) -> None:
    """Write what changed in these orders, in one round trip (`writes`)."""
    await _write_all(pg, writes(orders_))


def writes(orders_: Iterable[Order]) -> list[Write]:
    """The statements that write what changed in these orders: new orders, statuses and totals, line units,
    fulfillments, parcels, cancellations, refunds, returns, timeline rows; one set-based statement per table with
    rows to write. The orders are then as saved: what they recorded is cleared."""
    orders_ = list(orders_)
    changed = [o for o in orders_ if o.changed]
    touched = [o.fulfillments[f] for o in changed for f in sorted(o.changed_fulfillments)]
    statements = [
        w
        for w in [
            _insert_orders([o for o in changed if o.new]),
            _update_orders([o for o in changed if not o.new]),
            _upsert_lines(changed),
            _upsert_fulfillments(touched),
            _upsert_parcels(touched),
            _upsert_cancellations([o.cancellations[c] for o in changed for c in sorted(o.changed_cancellations)]),
            _insert_refunds([(o, r) for o in changed for r in o.refunds]),
            _insert_returns([r for o in changed for r in o.returns]),
            # A note changes nothing but the timeline: it is written whether or not the order changed.
            _insert_timeline([e for o in orders_ for e in o.timeline]),
        ]
        if w is not None
    ]
    for order in orders_:
        order.new = order.changed = False
        order.transitions.clear()
        order.timeline.clear()
        order.events.clear()
        order.refunds.clear()
        order.returns.clear()
        order.changed_fulfillments.clear()
        order.changed_cancellations.clear()
    return statements


def _insert_orders(new: list[Order]) -> Write | None:
    if not new:
        return None
    return _write(
        """
        INSERT INTO orders (order_id, channel, external_order_id, status, currency, placed_at, customer,
            shipping_address, shipping_method, pickup_source, options, shipping_total, tax_total, discount_total,
            grand_total, traceparent, paid_amount, payment_ref, submitted_shipping_total, submitted_tax_total,
            submitted_discount_total, status_since)
        SELECT u.id, u.ch, u.ext, u.st, u.cur, u.placed, u.cust::jsonb, u.addr::jsonb, u.method, u.pickup,
            u.opts::jsonb, u.ship, u.tax, u.disc, u.total, u.tp, u.paid, u.ref, u.ship, u.tax, u.disc, u.since
        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[],
            $8::text[], $9::text[], $10::text[], $11::text[], $12::numeric[], $13::numeric[], $14::numeric[],
            $15::numeric[], $16::text[], $17::numeric[], $18::text[], $19::timestamptz[])
            AS u(id, ch, ext, st, cur, placed, cust, addr, method, pickup, opts, ship, tax, disc, total, tp, paid, ref,
                since)
        """,
        [o.order_id for o in new],
        [o.channel for o in new],
        [o.external_order_id for o in new],
        [str(o.status) for o in new],
        [o.currency for o in new],
        [o.placed_at for o in new],
        [json_text(o.customer) for o in new],
        [json_text(o.shipping_address) for o in new],
        [o.shipping_method for o in new],
        [o.pickup_source for o in new],
        [json_text(o.options) for o in new],
        [o.shipping_total for o in new],
        [o.tax_total for o in new],
        [o.discount_total for o in new],
        [o.grand_total for o in new],
        [o.traceparent for o in new],
        [o.paid_amount for o in new],
        [o.payment_ref for o in new],
        [o.status_since for o in new],
    )


def _update_orders(existing: list[Order]) -> Write | None:
    if not existing:
        return None
    return _write(
        """
        UPDATE orders o SET status = u.st, paid_amount = u.paid, payment_ref = u.ref, shipping_total = u.ship,
            tax_total = u.tax, discount_total = u.disc, grand_total = u.total, refunded_total = u.refunded,
            status_since = u.since, updated_at = now()
        FROM unnest($1::uuid[], $2::text[], $3::numeric[], $4::text[], $5::numeric[], $6::numeric[], $7::numeric[],
            $8::numeric[], $9::numeric[], $10::timestamptz[])
            AS u(id, st, paid, ref, ship, tax, disc, total, refunded, since)
        WHERE o.order_id = u.id
        """,
        [o.order_id for o in existing],
        [str(o.status) for o in existing],
        [o.paid_amount for o in existing],
        [o.payment_ref for o in existing],
        [o.shipping_total for o in existing],
        [o.tax_total for o in existing],
        [o.discount_total for o in existing],
        [o.grand_total for o in existing],
        [o.refunded_total for o in existing],
        [o.status_since for o in existing],
    )


def _upsert_lines(changed: list[Order]) -> Write | None:
    # Every line of a changed order is offered; only those whose units moved are written.
    lines = [(o.order_id, line) for o in changed for line in o.lines.values()]
    if not lines:
        return None
    return _write(
        _UPSERT_LINES,
        [o for o, _ in lines],
        [line.line_id for _, line in lines],
        [line.sku for _, line in lines],
        [line.quantity for _, line in lines],
        [line.unit_price for _, line in lines],
        [str(line.state) for _, line in lines],
        *([line.units[s] for _, line in lines] for s in LineState),
        *([getattr(line.backorder, c) for _, line in lines] for c in BACKORDER_COUNTS),
        [line.expected_date for _, line in lines],
    )


def _upsert_fulfillments(changed: list[Fulfillment]) -> Write | None:
    if not changed:
        return None
    columns = {
        "fulfillment_id": [f.fulfillment_id for f in changed],
        "order_id": [f.order_id for f in changed],
        "plan_id": [f.plan_id for f in changed],
        "source_code": [f.source_code for f in changed],
        "status": [str(f.status) for f in changed],
        "lines": [_lines_json(f.lines) for f in changed],
        "ship_by": [f.ship_by for f in changed],
        "estimated_delivery": [f.estimated_delivery for f in changed],
        "reason": [f.reason for f in changed],
        "requested_at": [f.requested_at for f in changed],
        "shipped_at": [f.shipped_at for f in changed],
        "delivered_at": [f.delivered_at for f in changed],
        "rejection": [f.rejection for f in changed],
        "accepted_at": [f.accepted_at for f in changed],
        "withdrawn": [json_text({k: n for k, n in f.withdrawn.items() if n}) for f in changed],
        "to_release": [json_text({k: n for k, n in f.to_release.items() if n}) for f in changed],
        "pending_cancellations": [
            json_text(
                [
                    {"cancellation_id": str(p.cancellation_id), "line_id": p.line_id, "quantity": p.quantity}
                    for p in f.pending
                ]
            )
            for f in changed
        ],
    }
    return _write(_UPSERT_FULFILLMENTS, *(columns[c] for c in _FULFILLMENT_COLUMNS))


def _upsert_parcels(touched: list[Fulfillment]) -> Write | None:
    # The parcels of the fulfillments that changed: new ones are inserted, delivered ones updated, the rest skipped.
    rows = [(f, p) for f in touched for p in f.parcels]
    if not rows:
        return None
    columns = {
        "parcel_id": [p.parcel_id for _, p in rows],
        "fulfillment_id": [p.fulfillment_id for _, p in rows],
        "order_id": [f.order_id for f, _ in rows],
        "carrier": [p.carrier for _, p in rows],
        "service": [p.service for _, p in rows],
        "tracking_number": [p.tracking_number for _, p in rows],
        "tracking_url": [p.tracking_url for _, p in rows],
        "shipped_at": [p.shipped_at for _, p in rows],
        "delivered_at": [p.delivered_at for _, p in rows],
        "lines": [_lines_json(p.lines) for _, p in rows],
    }
    return _write(_UPSERT_PARCELS, *(columns[c] for c in _PARCEL_COLUMNS))


def _upsert_cancellations(changed: list[Cancellation]) -> Write | None:
    if not changed:
        return None
    columns = {
        "cancellation_id": [c.cancellation_id for c in changed],
        "order_id": [c.order_id for c in changed],
        "requested_by": [c.requested_by for c in changed],
        "via": [c.via for c in changed],
        "reason": [c.reason for c in changed],
        "asked": [json_text(c.asked) if c.asked is not None else None for c in changed],
        "only_state": [str(c.only) if c.only else None for c in changed],
        "lines": [json_text({k: _cancellation_line(x) for k, x in c.lines.items()}) for c in changed],
        "status": [str(c.status) for c in changed],
        "refusal": [c.refusal for c in changed],
        "refunded": [c.refunded for c in changed],
        "requested_at": [c.requested_at for c in changed],
        "updated_at": [c.updated_at or c.requested_at for c in changed],
    }
    return _write(_UPSERT_CANCELLATIONS, *(columns[c] for c in _CANCELLATION_COLUMNS))


def _cancellation_line(x: CancellationLine) -> dict[str, Any]:
    return {"sku": x.sku, "asked": x.asked, "cancelled": x.cancelled, "pending": x.pending, "refused": x.refused}


def _insert_refunds(made: list[tuple[Order, Refund]]) -> Write | None:
    if not made:
        return None
    return _write(
        """
        INSERT INTO refunds (refund_id, order_id, amount, currency, cause, reason, lines, refunded_total,
            cancellation_id, return_id, issued_at)
        SELECT u.id, u.o, u.amount, u.cur, u.cause, u.reason, u.lines::jsonb, u.total, u.c, u.r, u.at
        FROM unnest($1::uuid[], $2::uuid[], $3::numeric[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::numeric[], $9::uuid[], $10::uuid[], $11::timestamptz[])
            AS u(id, o, amount, cur, cause, reason, lines, total, c, r, at)
        """,
        [r.refund_id for _, r in made],
        [r.order_id for _, r in made],
        [r.amount for _, r in made],
        [o.currency for o, _ in made],
        [r.cause.value for _, r in made],
        [r.reason for _, r in made],
        [_lines_json(r.lines) for _, r in made],
        [r.refunded_total for _, r in made],
        [r.cancellation_id for _, r in made],
        [r.return_id for _, r in made],
        [r.at for _, r in made],
    )


def _insert_returns(made: list[Return]) -> Write | None:
    if not made:
        return None
    return _write(
        """
        INSERT INTO returns (return_id, order_id, source_code, lines, reason, refund_amount, received_at)
        SELECT u.id, u.o, u.src, u.lines::jsonb, u.reason, u.refund, u.at
        FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::numeric[], $7::timestamptz[])
            AS u(id, o, src, lines, reason, refund, at)
        """,
        [r.return_id for r in made],
        [r.order_id for r in made],
        [r.source_code for r in made],
        [
            json_text(
                [{"line_id": x.line_id, "sku": x.sku, "quantity": x.quantity, "condition": c} for x, c in r.lines]
            )
            for r in made
        ],
        [r.reason for r in made],
        [r.refund_amount for r in made],
        [r.at for r in made],
    )


async def insert_timeline(pg, entries: list[Entry]) -> None:
    """Timeline rows alone (an HTTP note); a batch's save writes them with the rest."""
    write = _insert_timeline(entries)
    if write is not None:
        await pg.execute(write[0], *write[1])


def _insert_timeline(entries: list[Entry]) -> Write | None:
    if not entries:
        return None
    return _write(
        """
        INSERT INTO order_timeline (order_id, kind, from_status, to_status, actor, note, occurred_at, cause_event_id,
            cause_type, trace_id, details)
        SELECT u.o, u.kind, u.f, u.t, u.actor, u.note, u.at, u.cause, u.ctype, u.trace, u.details::jsonb
        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
            $8::uuid[], $9::text[], $10::text[], $11::text[])
            AS u(o, kind, f, t, actor, note, at, cause, ctype, trace, details)
        """,
        [e.order_id for e in entries],
        [e.kind.value for e in entries],
        [str(e.from_status) if e.from_status else None for e in entries],
        [str(e.to_status) if e.to_status else None for e in entries],
        [e.actor for e in entries],
        [e.note for e in entries],
        [e.at for e in entries],
        [e.cause_event_id for e in entries],
        [e.cause_type for e in entries],
        [e.trace_id for e in entries],
        [json_text(e.details) for e in entries],
    )


# -- the stuck-order check ---------------------------------------------------------------------------------------

_STUCK_CANDIDATES = """
SELECT o.order_id, 'paid_not_planned' AS kind, NULL::uuid AS fulfillment_id, o.status_since AS since, o.status,
    NULL AS source_code, EXISTS (SELECT 1 FROM fulfillments f WHERE f.order_id = o.order_id) AS planned,
    0 AS units, o.traceparent
FROM orders o
WHERE o.status = 'paid' AND o.status_since < $1::timestamptz - $2::interval
UNION ALL
SELECT f.order_id, 'requested_not_accepted', f.fulfillment_id, f.requested_at, o.status, f.source_code, true, 0,
    o.traceparent
FROM fulfillments f JOIN orders o ON o.order_id = f.order_id
WHERE f.status = 'requested' AND f.requested_at < $1::timestamptz - $3::interval
    AND NOT EXISTS (SELECT 1 FROM parcels p WHERE p.fulfillment_id = f.fulfillment_id)
UNION ALL
SELECT f.order_id, 'accepted_not_shipped', f.fulfillment_id, f.accepted_at, o.status, f.source_code, true, 0,
    o.traceparent
FROM fulfillments f JOIN orders o ON o.order_id = f.order_id
WHERE f.status = 'accepted' AND f.accepted_at < $1::timestamptz - $4::interval
UNION ALL
SELECT l.order_id, 'backorder_overdue', NULL, min(l.backorder_expected_date)::timestamp AT TIME ZONE 'UTC', o.status,
    NULL, true, sum(l.quantity_backordered)::int, o.traceparent
FROM order_lines l JOIN orders o ON o.order_id = l.order_id
WHERE l.quantity_backordered > 0 AND l.backorder_expected_date + $5::int < ($1::timestamptz AT TIME ZONE 'UTC')::date
GROUP BY l.order_id, o.status, o.traceparent
UNION ALL
SELECT o.order_id, 'no_progress', NULL, o.updated_at, o.status, NULL, true, 0, o.traceparent
FROM orders o
WHERE o.status = 'awaiting_fulfillment' AND o.updated_at < $1::timestamptz - $6::interval
"""


async def stuck_candidates(pg, now: datetime, waits: Waits) -> list[Stuck]:
    """Every episode of an order without progress that the waits allow now (one statement)."""
    rows = await pg.fetch(
        _STUCK_CANDIDATES,
        now,
        waits.paid,
        waits.requested,
        waits.accepted,
        waits.backorder.days,
        waits.no_progress,
    )
    return [
        Stuck(
            order_id=row["order_id"],
            kind=StuckKind(row["kind"]),
            since=row["since"],
            status=OrderStatus(row["status"]),
            fulfillment_id=row["fulfillment_id"],
            source_code=row["source_code"],
            planned=row["planned"],
            units=row["units"],
            traceparent=row["traceparent"],
        )
        for row in rows
    ]


async def raise_stuck(pg, found: list[Stuck], now: datetime) -> list[Stuck]:
    """Record the episodes not raised before; returns those (the ones to announce). Two instances checking at once
    raise each episode once: the primary key decides."""
    if not found:
        return []
    rows = await pg.fetch(
        """
        INSERT INTO stuck_alerts (order_id, kind, fulfillment_id, since, reason, raised_at)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[], $5::text[], $6::timestamptz[])
        ON CONFLICT DO NOTHING
        RETURNING order_id, kind, fulfillment_id, since
        """,
        [s.order_id for s in found],
        [s.kind.value for s in found],
        [s.fulfillment_id or NO_FULFILLMENT for s in found],
        [s.since for s in found],
        [s.reason(now) for s in found],
        [now] * len(found),
    )
    raised = {(r["order_id"], r["kind"], r["fulfillment_id"], r["since"]) for r in rows}
    return [s for s in found if (s.order_id, s.kind.value, s.fulfillment_id or NO_FULFILLMENT, s.since) in raised]


async def clear_stuck(pg, found: list[Stuck], now: datetime) -> None:
    """Episodes the check no longer finds are over: the order moved on."""
    await pg.execute(
        """
        UPDATE stuck_alerts a SET cleared_at = $5
        WHERE a.cleared_at IS NULL AND (a.order_id, a.kind, a.fulfillment_id, a.since) NOT IN (
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[]))
        """,
        [s.order_id for s in found],
        [s.kind.value for s in found],
        [s.fulfillment_id or NO_FULFILLMENT for s in found],
        [s.since for s in found],
        now,
    )


# -- reads for the HTTP API ----------------------------------------------------------------------------------------


async def order_view(conn, order_id: uuid.UUID) -> dict[str, Any] | None:
    """The order as stored: lines with their units by state, fulfillments with their parcels."""
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
            sa.select(fulfillments)
            .where(fulfillments.c.order_id == order_id)
            .order_by(fulfillments.c.requested_at.nulls_last(), fulfillments.c.updated_at)
        )
    ).mappings()
    boxes = (
        await conn.execute(
            sa.select(parcels)
            .where(parcels.c.order_id == order_id)
            .order_by(parcels.c.shipped_at, parcels.c.recorded_at)
        )
    ).mappings()
    by_fulfillment: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for parcel in boxes:
        by_fulfillment.setdefault(parcel["fulfillment_id"], []).append(dict(parcel))
    view = dict(row)
    view["lines"] = [
        {**line, "quantities": {str(s): line[f"quantity_{s}"] for s in LineState}} for line in map(dict, lines)
    ]
    view["fulfillments"] = [{**f, "parcels": by_fulfillment.get(f["fulfillment_id"], [])} for f in map(dict, shipments)]
    # What the order costs now: the goods of its units that are not cancelled (the totals beside it are as
    # cancellations left them); as submitted, for comparison.
    view["subtotal"] = sum(
        (line["unit_price"] * (line["quantity"] - line["quantity_cancelled"]) for line in view["lines"]), Decimal(0)
    )
    submitted_goods = sum((line["unit_price"] * line["quantity"] for line in view["lines"]), Decimal(0))
    view["submitted"] = {
        "subtotal": submitted_goods,
        "shipping_total": row["submitted_shipping_total"],
        "tax_total": row["submitted_tax_total"],
        "discount_total": row["submitted_discount_total"],
        "grand_total": submitted_goods
        + row["submitted_shipping_total"]
        + row["submitted_tax_total"]
        - row["submitted_discount_total"],
    }
    for name, table, by in (
        ("refunds", refunds, refunds.c.issued_at),
        ("cancellations", cancellations, cancellations.c.requested_at),
        ("returns", returns, returns.c.received_at),
    ):
        found = await conn.execute(sa.select(table).where(table.c.order_id == order_id).order_by(by))
        view[name] = [{k: _json(v) if k in ("lines", "asked") else v for k, v in x.items()} for x in found.mappings()]
    return view


async def timeline(conn, order_id: uuid.UUID) -> list[dict[str, Any]] | None:
    exists = await conn.scalar(sa.select(sa.literal(1)).where(orders.c.order_id == order_id))
    if exists is None:
        return None
    rows = await conn.execute(
        sa.select(order_timeline).where(order_timeline.c.order_id == order_id).order_by(order_timeline.c.id)
    )
    return [dict(row) for row in rows.mappings()]


async def order_list(
    conn, *, status: str | None, channel: str | None, limit: int, stuck: bool | None = None
) -> list[dict[str, Any]]:
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
    if stuck is not None:
        open_alert = (
            sa.select(stuck_alerts.c.order_id)
            .where(stuck_alerts.c.order_id == orders.c.order_id, stuck_alerts.c.cleared_at.is_(None))
            .exists()
        )
        query = query.where(open_alert if stuck else ~open_alert)
    return [dict(row) for row in (await conn.execute(query.limit(limit))).mappings()]
