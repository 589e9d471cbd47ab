"""At most once per mail: a message is claimed (`sending`, with the claim's time and sender) and the claim committed
before it is sent; a try whose outcome was lost is `unknown`, never sent again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("notifications", sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("notifications", sa.Column("claimed_by", sa.Text, nullable=True))
    op.drop_constraint("notifications_status", "notifications", type_="check")
    op.create_check_constraint(
        "notifications_status", "notifications", "status IN ('pending', 'sending', 'sent', 'failed', 'unknown')"
    )
    op.create_check_constraint(
        "notifications_sending_is_claimed",
        "notifications",
        "status <> 'sending' OR (claimed_at IS NOT NULL AND claimed_by IS NOT NULL)",
    )
    op.create_index(
        "notifications_sending", "notifications", ["claimed_at"], postgresql_where=sa.text("status = 'sending'")
    )
    op.create_index(
        "notifications_to_look_at",
        "notifications",
        ["created_at"],
        postgresql_where=sa.text("status IN ('failed', 'unknown')"),
    )
    # A message being sent holds its order's later messages back, as a pending one does.
    op.drop_index("notifications_pending_by_order", table_name="notifications")
    op.create_index(
        "notifications_pending_by_order",
        "notifications",
        ["order_id", "stage", "cause_at"],
        postgresql_where=sa.text("status IN ('pending', 'sending') AND audience = 'customer'"),
    )


def downgrade() -> None:
    # What was being sent or is unknown cannot be told in the old states: being sent is pending again (the old
    # sender may send it a second time, as it could before), unknown counts as failed.
    op.execute("UPDATE notifications SET status = 'pending' WHERE status = 'sending'")
    op.execute("UPDATE notifications SET status = 'failed' WHERE status = 'unknown'")
    op.drop_index("notifications_pending_by_order", table_name="notifications")
    op.create_index(
        "notifications_pending_by_order",
        "notifications",
        ["order_id", "stage", "cause_at"],
        postgresql_where=sa.text("status = 'pending' AND audience = 'customer'"),
    )
    op.drop_index("notifications_to_look_at", table_name="notifications")
    op.drop_index("notifications_sending", table_name="notifications")
    op.drop_constraint("notifications_sending_is_claimed", "notifications", type_="check")
    op.drop_constraint("notifications_status", "notifications", type_="check")
    op.create_check_constraint("notifications_status", "notifications", "status IN ('pending', 'sent', 'failed')")
    op.drop_column("notifications", "claimed_by")
    op.drop_column("notifications", "claimed_at")
