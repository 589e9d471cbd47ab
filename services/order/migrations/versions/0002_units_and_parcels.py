"""line units by state, parcels (a fulfillment may ship in several)

Existing data stays valid: each line's units all sit in its former state; each shipped fulfillment's carrier and
tracking become its one parcel, holding all of its lines.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# domain.LineState, in its order; a migration keeps its own copy so a later rename cannot change history.
STATES = ("open", "backordered", "reserved", "requested", "shipped", "delivered", "returned", "cancelled")


def upgrade() -> None:
    for state in STATES:
        op.add_column("order_lines", sa.Column(f"quantity_{state}", sa.Integer(), server_default="0", nullable=False))
    op.execute(
        "UPDATE order_lines SET "
        + ", ".join(f"quantity_{s} = CASE WHEN state = '{s}' THEN quantity ELSE 0 END" for s in STATES)
    )
    # Lines of a planned fulfillment were left `open` before; their units are now counted as reserved for it, so
    # the reservation that arrives later finds them there.
    op.execute(
        """
        UPDATE order_lines l SET quantity_open = l.quantity_open - x.units,
            quantity_reserved = l.quantity_reserved + x.units,
            state = CASE WHEN l.quantity_open = x.units THEN 'reserved' ELSE l.state END
        FROM (
            SELECT f.order_id, e->>'line_id' AS line_id, sum((e->>'quantity')::int) AS units
            FROM fulfillments f, jsonb_array_elements(f.lines) e
            WHERE f.status = 'planned'
            GROUP BY 1, 2
        ) x
        WHERE l.order_id = x.order_id AND l.line_id = x.line_id AND l.quantity_open >= x.units
        """
    )
    op.create_check_constraint(
        "order_lines_units_not_negative", "order_lines", " AND ".join(f"quantity_{s} >= 0" for s in STATES)
    )
    op.create_check_constraint(
        "order_lines_units_add_up", "order_lines", " + ".join(f"quantity_{s}" for s in STATES) + " = quantity"
    )

    op.create_table(
        "parcels",
        sa.Column("parcel_id", sa.UUID(), nullable=False),
        sa.Column("fulfillment_id", sa.UUID(), nullable=False),
        sa.Column("order_id", sa.UUID(), nullable=False),
        sa.Column("carrier", sa.Text(), nullable=False),
        sa.Column("service", sa.Text(), nullable=True),
        sa.Column("tracking_number", sa.Text(), nullable=False),
        sa.Column("tracking_url", sa.Text(), nullable=True),
        sa.Column("shipped_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lines", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["fulfillment_id"], ["fulfillments.fulfillment_id"]),
        sa.ForeignKeyConstraint(["order_id"], ["orders.order_id"]),
        sa.PrimaryKeyConstraint("parcel_id"),
        sa.UniqueConstraint("fulfillment_id", "tracking_number", name="parcels_fulfillment_id_tracking_number_key"),
    )
    op.create_index(op.f("ix_parcels_order_id"), "parcels", ["order_id"], unique=False)
    # Before parcels, a fulfillment shipped whole, in one: that one is its parcel.
    op.execute(
        """
        INSERT INTO parcels (parcel_id, fulfillment_id, order_id, carrier, service, tracking_number, tracking_url,
            shipped_at, delivered_at, lines)
        SELECT gen_random_uuid(), fulfillment_id, order_id, carrier, service, tracking_number, tracking_url,
            coalesce(shipped_at, updated_at), delivered_at, lines
        FROM fulfillments
        WHERE status IN ('shipped', 'delivered') AND tracking_number IS NOT NULL
        """
    )
    for column in ("carrier", "service", "tracking_number", "tracking_url"):
        op.drop_column("fulfillments", column)


def downgrade() -> None:
    for column in ("carrier", "service", "tracking_number", "tracking_url"):
        op.add_column("fulfillments", sa.Column(column, sa.Text(), nullable=True))
    # One carrier and tracking per fulfillment before: the last parcel's.
    op.execute(
        """
        UPDATE fulfillments f SET carrier = p.carrier, service = p.service, tracking_number = p.tracking_number,
            tracking_url = p.tracking_url
        FROM (SELECT DISTINCT ON (fulfillment_id) * FROM parcels ORDER BY fulfillment_id, shipped_at DESC) p
        WHERE f.fulfillment_id = p.fulfillment_id
        """
    )
    op.drop_index(op.f("ix_parcels_order_id"), table_name="parcels")
    op.drop_table("parcels")
    op.drop_constraint("order_lines_units_add_up", "order_lines", type_="check")
    op.drop_constraint("order_lines_units_not_negative", "order_lines", type_="check")
    for state in STATES:
        op.drop_column("order_lines", f"quantity_{state}")
