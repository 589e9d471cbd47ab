"""FIFO release of backorders: what a source serves (countries, handling days, time zone), claims (stock set aside
for lines that wait whole), each waiting line's terms and what still waits of it, and expected receipts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL: not known yet (a source heard of before sources carried their countries); see domain.SourceState.
    op.add_column("sources", sa.Column("countries", postgresql.ARRAY(sa.Text()), nullable=True))
    op.add_column("sources", sa.Column("handling_days", sa.Integer(), nullable=False, server_default=sa.text("1")))
    op.add_column("sources", sa.Column("timezone", sa.Text(), nullable=False, server_default=sa.text("'UTC'")))

    op.add_column("stock", sa.Column("set_aside", sa.BigInteger(), nullable=False, server_default=sa.text("0")))
    op.create_check_constraint("stock_set_aside_not_negative", "stock", "set_aside >= 0")

    # Lines queued before this revision wait with everything they joined with, under the old plans' terms.
    op.add_column("backorders", sa.Column("waiting", sa.BigInteger(), nullable=True))
    op.execute("UPDATE backorders SET waiting = CASE WHEN state = 'waiting' THEN quantity ELSE 0 END")
    op.alter_column("backorders", "waiting", nullable=False)
    op.add_column("backorders", sa.Column("ship_to_country", sa.Text(), nullable=True))
    op.add_column("backorders", sa.Column("pickup_source", sa.Text(), nullable=True))
    op.add_column(
        "backorders", sa.Column("ship_complete", sa.Boolean(), nullable=False, server_default=sa.text("false"))
    )
    op.add_column("backorders", sa.Column("set_aside", sa.BigInteger(), nullable=False, server_default=sa.text("0")))
    op.add_column("backorders", sa.Column("anchor", sa.Text(), nullable=True))
    op.add_column(
        "backorders",
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_check_constraint("backorders_waiting_within_quantity", "backorders", "waiting BETWEEN 0 AND quantity")
    op.create_check_constraint("backorders_set_aside_within_waiting", "backorders", "set_aside BETWEEN 0 AND waiting")
    op.create_check_constraint("backorders_set_aside_has_anchor", "backorders", "set_aside = 0 OR anchor IS NOT NULL")
    op.create_index(
        "backorders_waiting_by_sku", "backorders", ["sku", "id"], postgresql_where=sa.text("state = 'waiting'")
    )
    op.create_index(
        "backorders_claims_by_sku",
        "backorders",
        ["sku"],
        postgresql_where=sa.text("state = 'waiting' AND set_aside > 0"),
    )
    op.create_index(
        "backorders_whole_by_sku",
        "backorders",
        ["sku"],
        postgresql_where=sa.text("state = 'waiting' AND ship_complete"),
    )
    op.create_index(
        "backorders_by_anchor",
        "backorders",
        ["anchor"],
        postgresql_where=sa.text("state = 'waiting' AND anchor IS NOT NULL"),
    )

    op.create_table(
        "expected_receipts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("source_code", sa.Text(), sa.ForeignKey("sources.code"), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("outstanding", sa.BigInteger(), nullable=False),
        sa.Column("expected_date", sa.Date(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("announced_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.CheckConstraint("quantity > 0", name="expected_receipts_quantity_positive"),
        sa.CheckConstraint("outstanding BETWEEN 0 AND quantity", name="expected_receipts_outstanding_within_quantity"),
    )
    op.create_index(
        "expected_receipts_open_by_sku",
        "expected_receipts",
        ["sku", "source_code"],
        postgresql_where=sa.text("outstanding > 0"),
    )


def downgrade() -> None:
    op.drop_table("expected_receipts")
    op.drop_index("backorders_by_anchor", "backorders")
    op.drop_index("backorders_whole_by_sku", "backorders")
    op.drop_index("backorders_claims_by_sku", "backorders")
    op.drop_index("backorders_waiting_by_sku", "backorders")
    op.drop_constraint("backorders_set_aside_has_anchor", "backorders")
    op.drop_constraint("backorders_set_aside_within_waiting", "backorders")
    op.drop_constraint("backorders_waiting_within_quantity", "backorders")
    for column in ("updated_at", "anchor", "set_aside", "ship_complete", "pickup_source", "ship_to_country", "waiting"):
        op.drop_column("backorders", column)
    op.drop_constraint("stock_set_aside_not_negative", "stock")
    op.drop_column("stock", "set_aside")
    for column in ("timezone", "handling_days", "countries"):
        op.drop_column("sources", column)
