"""Inventory's first schema: the network's sources, stock per (sku, source), reservations, the backorder queue,
and the outbox and inbox every service has.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The outbox and inbox as oms_runtime.database.add_messaging_tables defines them.
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("payload", postgresql.BYTEA(), nullable=False),
        sa.Column("headers", postgresql.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.Text(), primary_key=True),
        sa.Column("event_id", sa.UUID(), primary_key=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )

    op.create_table(
        "sources",
        sa.Column("code", sa.Text(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_table(
        "stock",
        sa.Column("sku", sa.Text(), primary_key=True),
        sa.Column("source_code", sa.Text(), sa.ForeignKey("sources.code"), primary_key=True),
        sa.Column("on_hand", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("reserved", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.CheckConstraint("on_hand >= 0", name="stock_on_hand_not_negative"),
        sa.CheckConstraint("reserved >= 0", name="stock_reserved_not_negative"),
    )
    op.create_table(
        "reservations",
        sa.Column("shipment_id", sa.UUID(), primary_key=True),
        sa.Column("line_id", sa.Text(), primary_key=True),
        sa.Column("order_id", sa.UUID(), nullable=False),
        sa.Column("plan_id", sa.UUID(), nullable=False),
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("source_code", sa.Text(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("shipped", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("released", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.CheckConstraint("state IN ('reserved', 'shipped', 'released', 'rejected')", name="reservations_state_known"),
        sa.CheckConstraint("shipped + released <= quantity", name="reservations_settle_at_most_quantity"),
    )
    op.create_table(
        "backorders",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("order_id", sa.UUID(), nullable=False),
        sa.Column("line_id", sa.Text(), nullable=False),
        sa.Column("plan_id", sa.UUID(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False, server_default=sa.text("'waiting'")),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.CheckConstraint("state IN ('waiting', 'allocated', 'cancelled')", name="backorders_state_known"),
    )
    op.create_index("backorders_by_sku", "backorders", ["sku", "id"])
    op.create_index(
        "backorders_one_waiting_per_line",
        "backorders",
        ["order_id", "line_id"],
        unique=True,
        postgresql_where=sa.text("state = 'waiting'"),
    )


def downgrade() -> None:
    op.drop_table("backorders")
    op.drop_table("reservations")
    op.drop_table("stock")
    op.drop_table("sources")
    op.drop_table("inbox")
    op.drop_table("outbox")
