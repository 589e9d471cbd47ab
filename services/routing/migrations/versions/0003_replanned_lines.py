"""Re-plans by fulfillment line: each line of a fulfillment is planned again once, also for fulfillments routing
never planned (inventory's backorder allocations), whichever event asks.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "replanned_lines",
        sa.Column("fulfillment_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("line_id", sa.Text, primary_key=True),
        sa.Column("order_id", UUID(as_uuid=True), nullable=False),
        sa.Column("source_code", sa.Text, nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("replanned_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    # A shipment rejected before was re-planned whole: its lines count as planned again, so that a request to
    # re-plan it once more (the order service now asks) plans nothing.
    op.execute(
        """
        INSERT INTO replanned_lines (fulfillment_id, line_id, order_id, source_code, quantity, replanned_at)
        SELECT s.shipment_id, l->>'line_id', s.order_id, s.source_code, (l->>'quantity')::int, s.rejected_at
        FROM shipments s, jsonb_array_elements(s.lines) AS l
        WHERE s.rejected_at IS NOT NULL
        ON CONFLICT DO NOTHING
        """
    )


def downgrade() -> None:
    op.drop_table("replanned_lines")
