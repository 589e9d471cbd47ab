"""The notifications database: order contacts, every notification with its content and delivery state, and the
outbox and inbox. Every SQL statement of the service lives here; batches are written as sets (one statement each).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from oms_runtime import add_messaging_tables

from .domain import Contact, Delivery, Status
from .rendering import Rendered

metadata = sa.MetaData()

order_contacts = sa.Table(
    "order_contacts",
    metadata,
    sa.Column("order_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("locale", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("external_order_id", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True), nullable=True),
    sa.Column("cause_event_id", UUID(as_uuid=True), nullable=False),
    sa.Column("template", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("recipient", sa.Text, nullable=False),
    sa.Column("recipient_name", sa.Text, nullable=True),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("body_text", sa.Text, nullable=False),
    sa.Column("body_html", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
    # The trace of the event that caused the message, so that sending it continues the order's trace.
    sa.Column("traceparent", sa.Text, nullable=True),
    sa.UniqueConstraint("cause_event_id", "template", name="notifications_once_per_event_and_template"),
    sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name="notifications_status"),
    sa.CheckConstraint("status <> 'pending' OR next_attempt_at IS NOT NULL", name="notifications_pending_is_due"),
    # Only messages still to send are in the sender's index; the sent record grows without slowing it down.
    sa.Index(
        "notifications_due",
        "next_attempt_at",
        postgresql_where=sa.text("status = 'pending'"),
    ),
    sa.Index("notifications_by_order", "order_id", "created_at"),
)

outbox, inbox = add_messaging_tables(metadata)


async def remember_contacts(pg: asyncpg.Connection, contacts: Sequence[Contact]) -> None:
    """Upsert the contacts (one per order in `contacts`)."""
    if not contacts:
        return
    await pg.execute(
        """
        INSERT INTO order_contacts (order_id, email, name, locale, channel, external_order_id)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
        ON CONFLICT (order_id) DO UPDATE SET
            email = excluded.email, name = excluded.name, locale = excluded.locale,
            channel = excluded.channel, external_order_id = excluded.external_order_id, updated_at = now()
        """,
        [c.order_id for c in contacts],
        [c.email for c in contacts],
        [c.name for c in contacts],
        [c.locale for c in contacts],
        [c.channel for c in contacts],
        [c.external_order_id for c in contacts],
    )


async def queue(
    pg: asyncpg.Connection, messages: Sequence[Rendered], traceparents: Sequence[str | None], due: datetime
) -> list[uuid.UUID]:
    """Queue rendered messages as pending, due at `due`; a (cause event, template) already queued is left as it is.
    Returns the ids actually queued."""
    if not messages:
        return []
    rows = await pg.fetch(
        """
        INSERT INTO notifications (
            id, order_id, cause_event_id, template, channel, recipient, recipient_name, subject, body_text, body_html,
            traceparent, status, attempts, next_attempt_at
        )
        SELECT u.*, 'pending', 0, $12::timestamptz
        FROM unnest(
            $1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::text[], $11::text[]
        ) AS u
        ON CONFLICT (cause_event_id, template) DO NOTHING
        RETURNING id
        """,
        [m.notice.notification_id for m in messages],
        [m.notice.order_id for m in messages],
        [m.notice.cause_event_id for m in messages],
        [m.notice.template.value for m in messages],
        [m.notice.channel.value for m in messages],
        [m.notice.recipient for m in messages],
        [m.notice.recipient_name for m in messages],
        [m.subject for m in messages],
        [m.text for m in messages],
        [m.html for m in messages],
        list(traceparents),
        due,
    )
    return [row["id"] for row in rows]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A pending notification, locked for sending, with everything the mail needs."""

    id: uuid.UUID
    order_id: uuid.UUID | None
    cause_event_id: uuid.UUID
    template: str
    channel: str
    recipient: str
    recipient_name: str | None
    subject: str
    body_text: str
    body_html: str
    traceparent: str | None
    delivery: Delivery


async def lock_due(pg: asyncpg.Connection, now: datetime, limit: int) -> list[Outgoing]:
    """Lock up to `limit` pending notifications due by `now`, oldest due first. Rows another sender holds are
    skipped, so two instances never send the same message."""
    rows = await pg.fetch(
        """
        SELECT id, order_id, cause_event_id, template, channel, recipient, recipient_name, subject, body_text,
               body_html, traceparent, attempts, next_attempt_at, last_error
        FROM notifications
        WHERE status = 'pending' AND next_attempt_at <= $1
        ORDER BY next_attempt_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
        """,
        now,
        limit,
    )
    return [
        Outgoing(
            id=row["id"],
            order_id=row["order_id"],
            cause_event_id=row["cause_event_id"],
            template=row["template"],
            channel=row["channel"],
            recipient=row["recipient"],
            recipient_name=row["recipient_name"],
            subject=row["subject"],
            body_text=row["body_text"],
            body_html=row["body_html"],
            traceparent=row["traceparent"],
            delivery=Delivery(
                status=Status.pending,
                attempts=row["attempts"],
                next_attempt_at=row["next_attempt_at"],
                last_error=row["last_error"],
            ),
        )
        for row in rows
    ]


async def record_deliveries(pg: asyncpg.Connection, deliveries: Sequence[tuple[uuid.UUID, Delivery]]) -> None:
    """Write the delivery state of each notification, in one statement."""
    if not deliveries:
        return
    await pg.execute(
        """
        UPDATE notifications AS n SET
            status = u.status, attempts = u.attempts, next_attempt_at = u.next_attempt_at,
            last_error = u.last_error, sent_at = u.sent_at, failed_at = u.failed_at
        FROM unnest(
            $1::uuid[], $2::text[], $3::int[], $4::timestamptz[], $5::text[], $6::timestamptz[], $7::timestamptz[]
        ) AS u(id, status, attempts, next_attempt_at, last_error, sent_at, failed_at)
        WHERE n.id = u.id
        """,
        [id_ for id_, _ in deliveries],
        [d.status.value for _, d in deliveries],
        [d.attempts for _, d in deliveries],
        [d.next_attempt_at for _, d in deliveries],
        [d.last_error for _, d in deliveries],
        [d.sent_at for _, d in deliveries],
        [d.failed_at for _, d in deliveries],
    )


async def notifications_of_order(conn: AsyncConnection, order_id: uuid.UUID) -> list[sa.Row]:
    """Every notification about an order, oldest first."""
    n = notifications
    result = await conn.execute(
        sa.select(
            n.c.id,
            n.c.template,
            n.c.channel,
            n.c.recipient,
            n.c.subject,
            n.c.status,
            n.c.attempts,
            n.c.created_at,
            n.c.sent_at,
            n.c.next_attempt_at,
            n.c.last_error,
        )
        .where(n.c.order_id == order_id)
        .order_by(n.c.created_at, n.c.id)
    )
    return list(result)
