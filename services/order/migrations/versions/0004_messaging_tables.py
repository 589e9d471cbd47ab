"""The messaging tables every service has: the inbox keyed by the CloudEvent's (source, id) and prunable by age,
and `parked_messages` for outbox rows that can never be published (oms_runtime.migrations has the step and why).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from collections.abc import Sequence

from alembic import op

from oms_runtime import migrations

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    migrations.inbox_by_source_and_parked_messages_upgrade(op)


def downgrade() -> None:
    migrations.inbox_by_source_and_parked_messages_downgrade(op)
