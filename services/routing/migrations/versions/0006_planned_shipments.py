"""Shipments planned per source and local day, kept as plans are saved: a source's daily capacity was checked by
counting its shipments of the day in `shipments` for every batch, a read that grew with the day's volume (routing's
costliest statement after the first few thousand orders of a day). The counts start from the shipments planned so
far; the index that served the count goes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-12
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "planned_shipments",
        sa.Column("source_code", sa.Text, primary_key=True),
        sa.Column("planned_on", sa.Date, primary_key=True),
        sa.Column("shipments", sa.Integer, nullable=False),
    )
    op.execute(
        """
        INSERT INTO planned_shipments (source_code, planned_on, shipments)
        SELECT source_code, planned_on, count(*) FROM shipments WHERE rejected_at IS NULL
        GROUP BY source_code, planned_on
        """
    )
    op.drop_index("shipments_source_code_planned_on_idx", table_name="shipments")


def downgrade() -> None:
    op.create_index("shipments_source_code_planned_on_idx", "shipments", ["source_code", "planned_on"])
    op.drop_table("planned_shipments")
