"""After the sale: the SKU of each line of an order (cancellations and refusals name lines by id), messages to the
operators outside every order's story, one "your order is cancelled" per order, and messages listed by template.

Revision ID: 0003
Revises: 0002
Create Date: 2026-02-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Contacts remembered before this revision know no SKUs: their mails name such lines by id.
    op.add_column(
        "order_contacts", sa.Column("line_skus", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb"))
    )
    # Every message before this revision was to a customer.
    op.add_column("notifications", sa.Column("audience", sa.Text, nullable=False, server_default="customer"))
    op.create_check_constraint("notifications_audience", "notifications", "audience IN ('customer', 'operators')")
    op.drop_index("notifications_pending_by_order", table_name="notifications")
    op.create_index(
        "notifications_pending_by_order",
        "notifications",
        ["order_id", "stage", "cause_at"],
        postgresql_where=sa.text("status = 'pending' AND audience = 'customer'"),
    )
    op.create_index(
        "notifications_one_cancellation_per_order",
        "notifications",
        ["order_id"],
        unique=True,
        postgresql_where=sa.text("template IN ('order_cancelled', 'payment_failed')"),
    )
    op.create_index("notifications_by_template", "notifications", ["template", "created_at"])


def downgrade() -> None:
    op.drop_index("notifications_by_template", table_name="notifications")
    op.drop_index("notifications_one_cancellation_per_order", table_name="notifications")
    op.drop_index("notifications_pending_by_order", table_name="notifications")
    op.create_index(
        "notifications_pending_by_order",
        "notifications",
        ["order_id", "stage", "cause_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_constraint("notifications_audience", "notifications", type_="check")
    op.drop_column("notifications", "audience")
    op.drop_column("order_contacts", "line_skus")
