"""Receipts, counts, expected receipts and returns for a source inventory has not heard of yet wait for the network
event (`held_receipts`) instead of being dead-lettered at once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "held_receipts",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("source_code", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("key", sa.Text, nullable=True),
        sa.Column("value", BYTEA, nullable=False),
        sa.Column("headers", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("event_source", sa.Text, nullable=False),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False),
        sa.Column("held_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("topic", "event_source", "event_id", name="held_receipts_once_per_event"),
    )
    op.create_index("held_receipts_by_source", "held_receipts", ["source_code"])
    op.create_index("held_receipts_by_age", "held_receipts", ["held_at"])


def downgrade() -> None:
    # What still waits would be lost silently: refuse, so that an operator lets it go (or drops it) first.
    op.execute(
        """
        DO $$ BEGIN
            IF EXISTS (SELECT 1 FROM held_receipts) THEN
                RAISE EXCEPTION 'held_receipts is not empty: records still wait for their sources';
            END IF;
        END $$
        """
    )
    op.drop_table("held_receipts")
