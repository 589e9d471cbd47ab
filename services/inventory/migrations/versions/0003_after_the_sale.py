"""After the sale: which plan queued which line (a re-plan adds units to a line that still waits, a plan delivered
again adds none), and tombstones for units the order service cancelled before the plan that holds them arrived.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "backorder_joins",
        sa.Column("plan_id", sa.UUID(), primary_key=True),
        sa.Column("line_id", sa.Text(), primary_key=True),
        sa.Column("order_id", sa.UUID(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    # Lines queued before this revision: their plans are known to have queued them, so a plan delivered again is
    # recognised from the first day.
    op.execute(
        """
        INSERT INTO backorder_joins (plan_id, line_id, order_id, quantity, joined_at)
        SELECT plan_id, line_id, order_id, quantity, queued_at FROM backorders
        ON CONFLICT (plan_id, line_id) DO NOTHING
        """
    )

    op.create_table(
        "tombstones",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("order_id", sa.UUID(), nullable=False),
        sa.Column("line_id", sa.Text(), nullable=False),
        sa.Column("shipment_id", sa.UUID(), nullable=True),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.CheckConstraint("quantity > 0", name="tombstones_quantity_positive"),
    )
    op.create_index(
        "tombstones_of_lines", "tombstones", ["order_id", "line_id"], postgresql_where=sa.text("shipment_id IS NULL")
    )
    op.create_index(
        "tombstones_of_shipments", "tombstones", ["shipment_id"], postgresql_where=sa.text("shipment_id IS NOT NULL")
    )
    op.create_index("tombstones_by_age", "tombstones", ["created_at"])


def downgrade() -> None:
    op.drop_table("tombstones")
    op.drop_table("backorder_joins")
