"""after the sale: cancellations, refunds, returns, stuck alerts; the order's totals as submitted; the timeline's kinds

Existing data stays valid: every order's totals so far are as submitted (nothing was refunded before), its status
since is its last timeline row's time, every existing timeline row is a status change, and accepted fulfillments
were accepted when last updated.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-16 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSONB = postgresql.JSONB(astext_type=sa.Text())


def upgrade() -> None:
    for column in ("shipping_total", "tax_total", "discount_total"):
        op.add_column("orders", sa.Column(f"submitted_{column}", sa.Numeric(), nullable=True))
        op.execute(f"UPDATE orders SET submitted_{column} = {column}")
        op.alter_column("orders", f"submitted_{column}", nullable=False)
    op.add_column("orders", sa.Column("refunded_total", sa.Numeric(), server_default="0", nullable=False))
    op.add_column("orders", sa.Column("status_since", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        """
        UPDATE orders o SET status_since = t.at
        FROM (SELECT order_id, max(occurred_at) AS at FROM order_timeline GROUP BY order_id) t
        WHERE o.order_id = t.order_id
        """
    )
    op.add_column("order_lines", sa.Column("backorder_expected_date", sa.Date(), nullable=True))

    op.add_column("fulfillments", sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE fulfillments SET accepted_at = updated_at WHERE status = 'accepted'")
    op.add_column("fulfillments", sa.Column("withdrawn", _JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False))
    op.add_column(
        "fulfillments", sa.Column("to_release", _JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False)
    )
    op.add_column(
        "fulfillments",
        sa.Column("pending_cancellations", _JSONB, server_default=sa.text("'[]'::jsonb"), nullable=False),
    )

    op.add_column("order_timeline", sa.Column("kind", sa.Text(), server_default="status", nullable=False))
    op.alter_column("order_timeline", "to_status", nullable=True)
    op.add_column("order_timeline", sa.Column("cause_type", sa.Text(), nullable=True))
    op.add_column("order_timeline", sa.Column("details", _JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False))
    op.create_check_constraint(
        "order_timeline_status_has_to_status", "order_timeline", "kind <> 'status' OR to_status IS NOT NULL"
    )

    op.create_table(
        "cancellations",
        sa.Column("cancellation_id", sa.UUID(), nullable=False),
        sa.Column("order_id", sa.UUID(), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("via", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("asked", _JSONB, nullable=True),
        sa.Column("only_state", sa.Text(), nullable=True),
        sa.Column("lines", _JSONB, nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("refusal", sa.Text(), nullable=True),
        sa.Column("refunded", sa.Numeric(), server_default="0", nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.order_id"]),
        sa.PrimaryKeyConstraint("cancellation_id"),
    )
    op.create_index(op.f("ix_cancellations_order_id"), "cancellations", ["order_id"], unique=False)
    op.create_table(
        "refunds",
        sa.Column("refund_id", sa.UUID(), nullable=False),
        sa.Column("order_id", sa.UUID(), nullable=False),
        sa.Column("amount", sa.Numeric(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("lines", _JSONB, nullable=False),
        sa.Column("refunded_total", sa.Numeric(), nullable=False),
        sa.Column("cancellation_id", sa.UUID(), nullable=True),
        sa.Column("return_id", sa.UUID(), nullable=True),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name="refunds_amount_positive"),
        sa.ForeignKeyConstraint(["order_id"], ["orders.order_id"]),
        sa.PrimaryKeyConstraint("refund_id"),
    )
    op.create_index(op.f("ix_refunds_order_id"), "refunds", ["order_id"], unique=False)
    op.create_table(
        "returns",
        sa.Column("return_id", sa.UUID(), nullable=False),
        sa.Column("order_id", sa.UUID(), nullable=False),
        sa.Column("source_code", sa.Text(), nullable=False),
        sa.Column("lines", _JSONB, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("refund_amount", sa.Numeric(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.order_id"]),
        sa.PrimaryKeyConstraint("return_id"),
    )
    op.create_index(op.f("ix_returns_order_id"), "returns", ["order_id"], unique=False)
    op.create_table(
        "stuck_alerts",
        sa.Column("order_id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("fulfillment_id", sa.UUID(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["orders.order_id"]),
        sa.PrimaryKeyConstraint("order_id", "kind", "fulfillment_id", "since"),
    )
    op.create_index(
        "stuck_alerts_open_idx",
        "stuck_alerts",
        ["order_id"],
        unique=False,
        postgresql_where=sa.text("cleared_at IS NULL"),
    )
    # What the stuck check reads every minute.
    op.create_index("orders_paid_since_idx", "orders", ["status_since"], postgresql_where=sa.text("status = 'paid'"))
    op.create_index(
        "fulfillments_waiting_idx",
        "fulfillments",
        ["status", "requested_at", "accepted_at"],
        postgresql_where=sa.text("status IN ('requested', 'accepted')"),
    )
    op.create_index(
        "order_lines_backordered_idx",
        "order_lines",
        ["backorder_expected_date"],
        postgresql_where=sa.text("quantity_backordered > 0"),
    )


def downgrade() -> None:
    op.drop_index("order_lines_backordered_idx", table_name="order_lines")
    op.drop_index("fulfillments_waiting_idx", table_name="fulfillments")
    op.drop_index("orders_paid_since_idx", table_name="orders")
    op.drop_index("stuck_alerts_open_idx", table_name="stuck_alerts", postgresql_where=sa.text("cleared_at IS NULL"))
    op.drop_table("stuck_alerts")
    op.drop_index(op.f("ix_returns_order_id"), table_name="returns")
    op.drop_table("returns")
    op.drop_index(op.f("ix_refunds_order_id"), table_name="refunds")
    op.drop_table("refunds")
    op.drop_index(op.f("ix_cancellations_order_id"), table_name="cancellations")
    op.drop_table("cancellations")
    # Rows other than status changes had no place before this revision.
    op.execute("DELETE FROM order_timeline WHERE kind <> 'status'")
    op.drop_constraint("order_timeline_status_has_to_status", "order_timeline", type_="check")
    op.drop_column("order_timeline", "details")
    op.drop_column("order_timeline", "cause_type")
    op.alter_column("order_timeline", "to_status", nullable=False)
    op.drop_column("order_timeline", "kind")
    for column in ("pending_cancellations", "to_release", "withdrawn", "accepted_at"):
        op.drop_column("fulfillments", column)
    op.drop_column("order_lines", "backorder_expected_date")
    for column in ("status_since", "refunded_total", "submitted_discount_total", "submitted_tax_total"):
        op.drop_column("orders", column)
    op.drop_column("orders", "submitted_shipping_total")
