"""Split plans: a source's calendar and daily capacity, the local day of each planned shipment (what capacity
counts), and rule chains per channel.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Sources known before keep the contract's defaults: UTC, no cut-off, 3 / 1 days in transit, no capacity.
    op.add_column("sources", sa.Column("timezone", sa.Text, nullable=False, server_default="UTC"))
    op.add_column("sources", sa.Column("cutoff_time", sa.Time, nullable=True))
    op.add_column(
        "sources",
        sa.Column(
            "transit_days", JSONB, nullable=False, server_default=sa.text("""'{"standard": 3, "express": 1}'::jsonb""")
        ),
    )
    op.add_column("sources", sa.Column("daily_capacity", sa.Integer, nullable=True))

    # Shipments planned before were planned on the UTC day of their plan (every source was UTC then).
    op.add_column("shipments", sa.Column("planned_on", sa.Date, nullable=True))
    op.execute(
        "UPDATE shipments AS s SET planned_on = (p.planned_at AT TIME ZONE 'UTC')::date "
        "FROM plans AS p WHERE p.plan_id = s.plan_id"
    )
    op.execute("UPDATE shipments SET planned_on = CURRENT_DATE WHERE planned_on IS NULL")
    op.alter_column("shipments", "planned_on", nullable=False)
    op.create_index("shipments_source_code_planned_on_idx", "shipments", ["source_code", "planned_on"])

    op.create_table(
        "rule_chains",
        sa.Column("channel", sa.Text, primary_key=True),
        sa.Column("rules", ARRAY(sa.Text), nullable=False),
        sa.Column("set_by", sa.Text, nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rule_chains")
    op.drop_index("shipments_source_code_planned_on_idx", table_name="shipments")
    op.drop_column("shipments", "planned_on")
    for column in ("daily_capacity", "transit_days", "cutoff_time", "timezone"):
        op.drop_column("sources", column)
