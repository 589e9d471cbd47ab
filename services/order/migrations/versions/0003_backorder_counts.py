"""per line, the units backordered as routing's plans and inventory's backorder_queued counted them, and those that
entered the backorder (domain.BackorderCount)

Existing lines: every unit that entered the backorder so far came from an applied plan (or an allocation that
overtook it), so `planned` and `entered` both start at the units backordered now plus those in allocations (a
fulfillment without a plan); `announced` starts at 0, because backorder_queued was not applied before. A
backorder_queued still in flight then announces no more than was planned, and moves nothing twice.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# domain.BackorderCount's fields; a migration keeps its own copy so a later rename cannot change history.
COUNTS = ("planned", "announced", "entered")


def upgrade() -> None:
    for count in COUNTS:
        op.add_column("order_lines", sa.Column(f"backorder_{count}", sa.Integer(), server_default="0", nullable=False))
    op.execute(
        """
        UPDATE order_lines l
        SET backorder_planned = l.quantity_backordered + coalesce(x.units, 0),
            backorder_entered = l.quantity_backordered + coalesce(x.units, 0)
        FROM order_lines o
        LEFT JOIN (
            SELECT f.order_id, e->>'line_id' AS line_id, sum((e->>'quantity')::int) AS units
            FROM fulfillments f, jsonb_array_elements(f.lines) e
            WHERE f.plan_id IS NULL AND f.status <> 'rejected'
            GROUP BY 1, 2
        ) x ON x.order_id = o.order_id AND x.line_id = o.line_id
        WHERE l.order_id = o.order_id AND l.line_id = o.line_id
        """
    )
    op.create_check_constraint(
        "order_lines_backorder_counts_not_negative",
        "order_lines",
        " AND ".join(f"backorder_{count} >= 0" for count in COUNTS),
    )


def downgrade() -> None:
    op.drop_constraint("order_lines_backorder_counts_not_negative", "order_lines", type_="check")
    for count in COUNTS:
        op.drop_column("order_lines", f"backorder_{count}")
