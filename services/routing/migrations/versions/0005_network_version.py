"""The network's version (one row): every edit that changes a source raises it; `GET /network` shows it as its ETag
and `PUT /network` with `If-Match` refuses to replace a network the client did not read.

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
    op.create_table(
        "network_version",
        sa.Column("id", sa.SmallInteger, primary_key=True, server_default=sa.text("1")),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("changed_by", sa.Text, nullable=True),
        sa.CheckConstraint("id = 1", name="network_version_one_row"),
    )
    # The network as it stands is version 1.
    op.execute("INSERT INTO network_version (id, version, changed_by) VALUES (1, 1, 'migration 0005')")


def downgrade() -> None:
    op.drop_table("network_version")
