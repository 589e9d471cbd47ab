"""Messages for every step of an order: each notification's locale and its place in the order's story, and the
events that wait for their order's contact.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("notifications", sa.Column("locale", sa.Text, nullable=True))
    op.add_column("notifications", sa.Column("stage", sa.SmallInteger, nullable=True))
    op.add_column("notifications", sa.Column("cause_at", sa.DateTime(timezone=True), nullable=True))
    # Every message before this revision was an order confirmation written in English.
    op.execute("UPDATE notifications SET locale = 'en', stage = 0, cause_at = created_at")
    for column in ("locale", "stage", "cause_at"):
        op.alter_column("notifications", column, nullable=False)
    op.create_index(
        "notifications_pending_by_order",
        "notifications",
        ["order_id", "stage", "cause_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "notices_awaiting_contact",
        sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("template", sa.Text, primary_key=True),
        sa.Column("order_id", UUID(as_uuid=True), nullable=False),
        sa.Column("event", JSONB, nullable=False),
        sa.Column("traceparent", sa.Text, nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("notices_awaiting_contact_by_order", "notices_awaiting_contact", ["order_id"])


def downgrade() -> None:
    op.drop_index("notices_awaiting_contact_by_order", table_name="notices_awaiting_contact")
    op.drop_table("notices_awaiting_contact")
    op.drop_index("notifications_pending_by_order", table_name="notifications")
    for column in ("cause_at", "stage", "locale"):
        op.drop_column("notifications", column)
