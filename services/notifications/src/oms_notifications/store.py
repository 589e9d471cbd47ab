"""The notifications database: order contacts, every notification with its content and delivery state, the events
that wait for their order's contact, and the outbox and inbox. Every SQL statement of the service lives here;
batches are written as sets (one statement each).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import asyncpg
import sqlalchemy as sa
from pydantic import Field, TypeAdapter
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from oms_runtime import add_messaging_tables
from oms_runtime.database import json_text

from .domain import Audience, AwaitingContact, Cause, Contact, Delivery, Status, Template
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
    # line_id -> SKU of the accepted order: cancellations and refusals name lines by id only.
    sa.Column("line_skus", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
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
    sa.Column("locale", sa.Text, nullable=False),
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
    # Where the message stands in its order's story (domain.STAGES) and when its cause happened: an order's messages
    # go out in (stage, cause_at) order, one at a time.
    sa.Column("stage", sa.SmallInteger, nullable=False),
    sa.Column("cause_at", sa.DateTime(timezone=True), nullable=False),
    # customer (in the order of their order's story) or operators (outside every story: sent as soon as due).
    sa.Column("audience", sa.Text, nullable=False, server_default="customer"),
    # The last claim: when and by which sender (host:pid:random) the message was taken to be sent. A message stays
    # `sending` from its claim until its outcome is recorded; a claim older than the sender's claim timeout was lost.
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("claimed_by", sa.Text, nullable=True),
    # Set, and committed, just before the message is handed to the mail server under its claim (`hand_over`).
    sa.Column("handed_over_at", sa.DateTime(timezone=True), nullable=True),
    sa.UniqueConstraint("cause_event_id", "template", name="notifications_once_per_event_and_template"),
    sa.CheckConstraint("status IN ('pending', 'sending', 'sent', 'failed', 'unknown')", name="notifications_status"),
    sa.CheckConstraint("audience IN ('customer', 'operators')", name="notifications_audience"),
    sa.CheckConstraint("status <> 'pending' OR next_attempt_at IS NOT NULL", name="notifications_pending_is_due"),
    sa.CheckConstraint(
        "status <> 'sending' OR (claimed_at IS NOT NULL AND claimed_by IS NOT NULL)",
        name="notifications_sending_is_claimed",
    ),
    # Only messages still to send are in the sender's index; the sent record grows without slowing it down.
    sa.Index(
        "notifications_due",
        "next_attempt_at",
        postgresql_where=sa.text("status = 'pending'"),
    ),
    # Claims being sent, oldest first: where a sender looks for claims another sender lost.
    sa.Index("notifications_sending", "claimed_at", postgresql_where=sa.text("status = 'sending'")),
    # What an operator lists across orders (GET /notifications?status=unknown): few rows, whatever the record holds.
    sa.Index("notifications_to_look_at", "created_at", postgresql_where=sa.text("status IN ('failed', 'unknown')")),
    sa.Index("notifications_by_order", "order_id", "created_at"),
    sa.Index("notifications_by_template", "template", "created_at"),
    # What the sender asks before sending a customer's message: is an earlier one of the same order still waiting
    # or being sent?
    sa.Index(
        "notifications_pending_by_order",
        "order_id",
        "stage",
        "cause_at",
        postgresql_where=sa.text("status IN ('pending', 'sending') AND audience = 'customer'"),
    ),
    # One "your order is cancelled" per order, whichever event carried it (domain.template_for).
    sa.Index(
        "notifications_one_cancellation_per_order",
        "order_id",
        unique=True,
        postgresql_where=sa.text("template IN ('order_cancelled', 'payment_failed')"),
    ),
)

# Events that call for a message about an order whose contact (from order.accepted) has not arrived yet: topics
# overtake each other. Each is kept as it was published and becomes its message when the contact arrives.
notices_awaiting_contact = sa.Table(
    "notices_awaiting_contact",
    metadata,
    sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("template", sa.Text, primary_key=True),
    sa.Column("order_id", UUID(as_uuid=True), nullable=False),
    sa.Column("event", JSONB, nullable=False),
    sa.Column("traceparent", sa.Text, nullable=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Index("notices_awaiting_contact_by_order", "order_id"),
)

outbox, inbox = add_messaging_tables(metadata)

# The statuses GET /notifications lists on their own, across orders and templates (`notifications_to_look_at`).
STATUSES_TO_LOOK_AT = frozenset({Status.failed, Status.unknown})


async def remember_contacts(pg: asyncpg.Connection, contacts: Sequence[Contact]) -> None:
    """Upsert the contacts (one per order in `contacts`)."""
    if not contacts:
        return
    await pg.execute(
        """
        INSERT INTO order_contacts (order_id, email, name, locale, channel, external_order_id, line_skus)
        SELECT u.order_id, u.email, u.name, u.locale, u.channel, u.external_order_id, u.line_skus::jsonb
        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
            AS u(order_id, email, name, locale, channel, external_order_id, line_skus)
        ON CONFLICT (order_id) DO UPDATE SET
            email = excluded.email, name = excluded.name, locale = excluded.locale,
            channel = excluded.channel, external_order_id = excluded.external_order_id,
            line_skus = excluded.line_skus, updated_at = now()
        """,
        [c.order_id for c in contacts],
        [c.email for c in contacts],
        [c.name for c in contacts],
        [c.locale for c in contacts],
        [c.channel for c in contacts],
        [c.external_order_id for c in contacts],
        [json_text(dict(c.line_skus)) for c in contacts],
    )


async def lock_orders(pg: asyncpg.Connection, order_ids: Collection[uuid.UUID]) -> None:
    """Serialize, per order, the batches that read an order's contact with those that write it, until commit.

    A plan consumed while the order's acceptance is being consumed elsewhere would otherwise find no contact, and
    the acceptance would find no waiting plan (neither sees the other's uncommitted rows): the pre-warning would
    wait forever. Locks are taken in one statement, in key order, so two batches never deadlock. The two-key form
    keeps these locks apart from the relay's one-key lock."""
    if not order_ids:
        return
    await pg.execute(
        """
        SELECT pg_advisory_xact_lock($1, k)
        FROM (SELECT DISTINCT hashtext(id::text) AS k FROM unnest($2::uuid[]) AS id ORDER BY k) AS keys
        """,
        _ORDER_LOCKS,
        list(order_ids),
    )


# The first key of lock_orders' advisory locks: "one order's contact and the notices that wait for it".
_ORDER_LOCKS = 0x6F6D7331


async def contacts_of(pg: asyncpg.Connection, order_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Contact]:
    """The known contacts of these orders, by order id."""
    if not order_ids:
        return {}
    rows = await pg.fetch(
        """
        SELECT order_id, email, name, locale, channel, external_order_id, line_skus::text AS line_skus
        FROM order_contacts WHERE order_id = ANY($1::uuid[])
        """,
        list(order_ids),
    )
    return {row["order_id"]: Contact(**{**row, "line_skus": json.loads(row["line_skus"])}) for row in rows}


_CAUSE: TypeAdapter[Cause] = TypeAdapter(Annotated[Cause, Field(discriminator="type")])


@dataclass(frozen=True, slots=True)
class Waiting:
    """An event that waited for its order's contact, with the trace it arrived in."""

    awaiting: AwaitingContact
    traceparent: str | None


async def await_contact(
    pg: asyncpg.Connection, awaiting: Sequence[AwaitingContact], traceparents: Sequence[str | None]
) -> None:
    """Keep events until their orders' contacts arrive; an (event, template) already kept is left as it is."""
    if not awaiting:
        return
    await pg.execute(
        """
        INSERT INTO notices_awaiting_contact (event_id, template, order_id, event, traceparent)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::jsonb[], $5::text[])
        ON CONFLICT (event_id, template) DO NOTHING
        """,
        [a.event.id for a in awaiting],
        [a.template.value for a in awaiting],
        [a.order_id for a in awaiting],
        [a.event.to_bytes().decode() for a in awaiting],
        list(traceparents),
    )


async def take_awaiting_contact(pg: asyncpg.Connection, order_ids: Collection[uuid.UUID]) -> list[Waiting]:
    """Remove and return the events that waited for these orders' contacts, in the order they arrived."""
    if not order_ids:
        return []
    rows = await pg.fetch(
        """
        DELETE FROM notices_awaiting_contact WHERE order_id = ANY($1::uuid[])
        RETURNING event::text AS event, template, traceparent, received_at
        """,
        list(order_ids),
    )
    rows = sorted(rows, key=lambda row: row["received_at"])
    return [
        Waiting(AwaitingContact(_CAUSE.validate_json(row["event"]), Template(row["template"])), row["traceparent"])
        for row in rows
    ]


async def count_awaiting_contact(conn: AsyncConnection, order_id: uuid.UUID) -> int:
    """How many messages about an order wait for its contact."""
    a = notices_awaiting_contact
    result = await conn.execute(sa.select(sa.func.count()).select_from(a).where(a.c.order_id == order_id))
    return result.scalar_one()


async def queue(
    pg: asyncpg.Connection, messages: Sequence[Rendered], traceparents: Sequence[str | None], due: datetime
) -> list[uuid.UUID]:
    """Queue rendered messages as pending, due at `due`. A (cause event, template) already queued is left as it is,
    and so is a second "your order is cancelled" for an order (the first one queued stays). Returns the ids actually
    queued."""
    if not messages:
        return []
    rows = await pg.fetch(
        """
        INSERT INTO notifications (
            id, order_id, cause_event_id, template, channel, recipient, recipient_name, locale, subject, body_text,
            body_html, traceparent, stage, cause_at, audience, status, attempts, next_attempt_at
        )
        SELECT u.*, 'pending', 0, $16::timestamptz
        FROM unnest(
            $1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::text[], $11::text[], $12::text[], $13::smallint[], $14::timestamptz[], $15::text[]
        ) AS u
        -- Every unique key of a notification means "already told": (event, template), and the one cancellation
        -- per order. Rows of one statement are checked against each other too: the first in the batch stays.
        ON CONFLICT DO NOTHING
        RETURNING id
        """,
        [m.notice.notification_id for m in messages],
        [m.notice.order_id for m in messages],
        [m.notice.cause_event_id for m in messages],
        [m.notice.template.value for m in messages],
        [m.notice.channel.value for m in messages],
        [m.notice.recipient for m in messages],
        [m.notice.recipient_name for m in messages],
        [m.notice.locale for m in messages],
        [m.subject for m in messages],
        [m.text for m in messages],
        [m.html for m in messages],
        list(traceparents),
        [m.notice.stage for m in messages],
        [m.notice.cause_at for m in messages],
        [m.notice.audience.value for m in messages],
        due,
    )
    return [row["id"] for row in rows]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A notification claimed for sending (`sending`), with everything the mail needs and the claim that holds it."""

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
    audience: Audience
    delivery: Delivery
    claimed_at: datetime
    claimed_by: str
    # When its cause happened (the event's time): how long the customer waited for the mail is measured from it.
    cause_at: datetime | None = None
    # When its sender began handing it to the mail server under this claim; None: never started.
    handed_over_at: datetime | None = None


_OUTGOING = """
    n.id, n.order_id, n.cause_event_id, n.template, n.channel, n.recipient, n.recipient_name, n.subject, n.body_text,
    n.body_html, n.traceparent, n.audience, n.status, n.attempts, n.next_attempt_at, n.last_error, n.claimed_at,
    n.claimed_by, n.cause_at, n.handed_over_at
"""


def _outgoing(row: asyncpg.Record) -> Outgoing:
    return Outgoing(
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
        audience=Audience(row["audience"]),
        delivery=Delivery(
            status=Status(row["status"]),
            attempts=row["attempts"],
            next_attempt_at=row["next_attempt_at"],
            last_error=row["last_error"],
        ),
        claimed_at=row["claimed_at"],
        claimed_by=row["claimed_by"],
        cause_at=row["cause_at"],
        handed_over_at=row["handed_over_at"],
    )


async def claim_due(pg: asyncpg.Connection, now: datetime, limit: int, sender: str) -> list[Outgoing]:
    """Claim up to `limit` pending notifications due by `now`, oldest due first: each becomes `sending`, claimed at
    `now` by `sender`, in one statement. Rows another sender is claiming are skipped (SKIP LOCKED), and rows it has
    claimed are no longer pending, so two instances never take the same message. The claim is meant to be committed
    before anything is sent: whatever happens to the sender afterwards, the message is never claimed again.

    An order's messages to its customer go out one at a time, in (stage, cause_at) order: a message is not due
    while an earlier message of its order is still pending (waiting for its next try) or being sent, so the customer
    never reads the pre-warning before the confirmation, nor a parcel's delivery before its shipping. The operators'
    messages stand outside that story: an alert about an order neither waits behind its customer's mails nor holds
    one up."""
    rows = await pg.fetch(
        f"""
        WITH due AS (
            SELECT id FROM notifications AS n
            WHERE status = 'pending' AND next_attempt_at <= $1
              AND (
                  n.audience = 'operators'
                  OR NOT EXISTS (
                      SELECT 1 FROM notifications AS earlier
                      WHERE earlier.order_id = n.order_id AND earlier.status IN ('pending', 'sending')
                        AND earlier.audience = 'customer'
                        AND (earlier.stage, earlier.cause_at, earlier.id) < (n.stage, n.cause_at, n.id)
                  )
              )
            ORDER BY next_attempt_at
            LIMIT $2
            FOR UPDATE OF n SKIP LOCKED
        )
        UPDATE notifications AS n SET status = 'sending', claimed_at = $1, claimed_by = $3, handed_over_at = NULL
        FROM due WHERE n.id = due.id
        RETURNING {_OUTGOING}
        """,
        now,
        limit,
        sender,
    )
    return sorted((_outgoing(row) for row in rows), key=lambda n: (n.delivery.next_attempt_at, n.id))


async def hand_over(pg: asyncpg.Connection, notifications: Sequence[Outgoing], at: datetime) -> set[uuid.UUID]:
    """Say, committed (the statement stands alone), that the sender is about to hand these claimed messages to the
    mail server; return the ids it may send. A message whose claim is no longer the sender's (judged lost meanwhile)
    is left out: it must not go out."""
    if not notifications:
        return set()
    rows = await pg.fetch(
        """
        UPDATE notifications AS n SET handed_over_at = $4
        FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]) AS c(id, claimed_at, claimed_by)
        WHERE n.id = c.id AND n.status = 'sending' AND n.claimed_at = c.claimed_at AND n.claimed_by = c.claimed_by
        RETURNING n.id
        """,
        [n.id for n in notifications],
        [n.claimed_at for n in notifications],
        [n.claimed_by for n in notifications],
        at,
    )
    return {row["id"] for row in rows}


async def lost_claims(pg: asyncpg.Connection, claimed_before: datetime, limit: int, mine: str) -> list[Outgoing]:
    """Lock up to `limit` notifications still `sending` under a claim made before `claimed_before`: their sender
    stopped (or lost its database) between claiming and recording. Whether the mail server got one it had begun to
    hand over (`handed_over_at`) cannot be known; one it never started can still be sent. Rows another sender is
    judging are skipped.

    Also, whatever their age, those still `sending` under the claims of `mine`, the sender asking: it holds no claim
    between its passes, so such a row is one whose claim committed while the sender saw its transaction fail (the
    connection lost at COMMIT), and it need not wait for the claim timeout."""
    rows = await pg.fetch(
        f"""
        SELECT {_OUTGOING} FROM notifications AS n
        WHERE status = 'sending' AND (claimed_at < $1 OR claimed_by = $3)
        ORDER BY claimed_at
        LIMIT $2
        FOR UPDATE OF n SKIP LOCKED
        """,
        claimed_before,
        limit,
        mine,
    )
    return [_outgoing(row) for row in rows]


async def record_deliveries(pg: asyncpg.Connection, deliveries: Sequence[tuple[Outgoing, Delivery]]) -> set[uuid.UUID]:
    """Write the delivery state of claimed notifications, in one statement, each only while it is still `sending`
    under the claim it was taken with (a claim judged lost by another sender meanwhile is left as that sender
    recorded it). Returns the ids written."""
    if not deliveries:
        return set()
    rows = await pg.fetch(
        """
        UPDATE notifications AS n SET
            status = u.status, attempts = u.attempts, next_attempt_at = u.next_attempt_at,
            last_error = u.last_error, sent_at = u.sent_at, failed_at = u.failed_at
        FROM unnest(
            $1::uuid[], $2::text[], $3::int[], $4::timestamptz[], $5::text[], $6::timestamptz[], $7::timestamptz[],
            $8::timestamptz[], $9::text[]
        ) AS u(id, status, attempts, next_attempt_at, last_error, sent_at, failed_at, claimed_at, claimed_by)
        WHERE n.id = u.id AND n.status = 'sending' AND n.claimed_at = u.claimed_at AND n.claimed_by = u.claimed_by
        RETURNING n.id
        """,
        [n.id for n, _ in deliveries],
        [d.status.value for _, d in deliveries],
        [d.attempts for _, d in deliveries],
        [d.next_attempt_at for _, d in deliveries],
        [d.last_error for _, d in deliveries],
        [d.sent_at for _, d in deliveries],
        [d.failed_at for _, d in deliveries],
        [n.claimed_at for n, _ in deliveries],
        [n.claimed_by for n, _ in deliveries],
    )
    return {row["id"] for row in rows}


_LISTED = (
    "id",
    "order_id",
    "template",
    "audience",
    "channel",
    "locale",
    "recipient",
    "recipient_name",
    "subject",
    "body_text",
    "status",
    "attempts",
    "cause_event_id",
    "created_at",
    "sent_at",
    "failed_at",
    "next_attempt_at",
    "last_error",
    "claimed_at",
    "claimed_by",
)


async def notifications_of_order(conn: AsyncConnection, order_id: uuid.UUID) -> list[sa.Row]:
    """Every message to an order's customer, in the order they go out."""
    n = notifications
    result = await conn.execute(
        sa.select(*(n.c[name] for name in _LISTED))
        .where(n.c.order_id == order_id, n.c.audience == Audience.customer.value)
        .order_by(n.c.stage, n.c.cause_at, n.c.id)
    )
    return list(result)


async def notifications_matching(
    conn: AsyncConnection,
    limit: int,
    template: Template | None = None,
    order_id: uuid.UUID | None = None,
    status: Status | None = None,
) -> list[sa.Row]:
    """The messages of one template, order or status (or several of these together), newest first, at most
    `limit`. A status alone is asked only for those an operator looks for (`STATUSES_TO_LOOK_AT`), which an index
    of their own finds however long the record grows."""
    n = notifications
    query = sa.select(*(n.c[name] for name in _LISTED))
    if template is not None:
        query = query.where(n.c.template == template.value)
    if order_id is not None:
        query = query.where(n.c.order_id == order_id)
    if status is not None:
        # Inlined, so that the planner may prove the partial index's predicate whatever plan it caches.
        query = query.where(n.c.status == sa.literal(status.value, literal_execute=True))
    result = await conn.execute(query.order_by(n.c.created_at.desc(), n.c.id).limit(limit))
    return list(result)
