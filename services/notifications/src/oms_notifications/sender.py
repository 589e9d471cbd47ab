"""Sending queued notifications over SMTP, and recording how each try ended.

A pass locks the due pending notifications (FOR UPDATE SKIP LOCKED: two instances never take the same one), sends
them over a few SMTP connections at once, and in the same transaction records each outcome and emits
notification.sent.v1 or notification.failed.v1 through the outbox. If the process dies between the mail server's
"250" and the commit, the message is sent again on the next pass with the same Message-ID, so a mail system that
deduplicates drops the copy: at most once per (event, template) as far as we can know, and never lost.

An order's messages go out one at a time and in the order of its story (store.lock_due): the next one is due only
once the one before it is sent or has failed for good, so the confirmation always comes first. Operators' alerts
stand outside that story and go out as soon as they are due, in one mail to every operator.

The sender is woken after each commit of the consumer and runs every second in any case, for retries that come due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

import aiosmtplib
from opentelemetry.trace import SpanKind, Status, StatusCode

from oms_contracts.notification import (
    NotificationChannel,
    NotificationFailed,
    NotificationFailedData,
    NotificationSent,
    NotificationSentData,
)
from oms_runtime import Database, Transaction
from oms_runtime.database import driver
from oms_runtime.loop import run_when_woken
from oms_runtime.outbox import append
from oms_runtime.telemetry import context_from_traceparent, traceparent_of, tracer

from . import metrics, store
from .domain import Audience, Delivery, Outcome, RetryPolicy, outcome_of_reply
from .domain import Status as NotificationStatus
from .settings import NotificationsSettings

log = logging.getLogger(__name__)

SOURCE = "/oms/notifications"


@dataclass(frozen=True, slots=True)
class SmtpServer:
    host: str = "127.0.0.1"
    port: int = 1025
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout: float = 10.0
    mail_from: str = "OMS <orders@oms.local>"

    @classmethod
    def from_settings(cls, settings: NotificationsSettings) -> SmtpServer:
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            starttls=settings.smtp_starttls,
            timeout=settings.smtp_timeout,
            mail_from=settings.mail_from,
        )

    @property
    def domain(self) -> str:
        """The domain of the sender address: the right-hand side of our Message-IDs."""
        _, address = parseaddr(self.mail_from)
        return address.rpartition("@")[2] or "oms.local"


@dataclass(frozen=True, slots=True)
class _Try:
    """How sending one notification went."""

    outcome: Outcome
    error: str | None = None
    # The connection is in an unknown state (dropped, timed out): the next message needs a new one.
    broken: bool = False
    # The span of the send, which the notification event continues.
    traceparent: str | None = None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Sender:
    def __init__(
        self,
        database: Database,
        smtp: SmtpServer,
        *,
        policy: RetryPolicy = RetryPolicy(),
        batch_size: int = 100,
        connections: int = 4,
        after_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = _utc_now,
        interval: float = 1.0,
    ) -> None:
        self.database = database
        self.smtp = smtp
        self.policy = policy
        self.batch_size = batch_size
        self.connections = connections
        self.after_commit = after_commit
        self.clock = clock
        self.interval = interval
        self._wake = asyncio.Event()

    @classmethod
    def from_settings(
        cls, database: Database, settings: NotificationsSettings, after_commit: Callable[[], None]
    ) -> Sender:
        return cls(
            database,
            SmtpServer.from_settings(settings),
            policy=RetryPolicy(settings.max_attempts, timedelta(seconds=settings.retry_cap_seconds)),
            batch_size=settings.send_batch_size,
            connections=settings.smtp_connections,
            after_commit=after_commit,
        )

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Send what is due whenever woken, and at least every `interval` seconds, until cancelled. The database is
        what can fail a pass (SMTP failures are outcomes of a send): it is retried."""
        await run_when_woken(self._wake, self._send_all_due, interval=self.interval, what="notification sender")

    async def _send_all_due(self) -> None:
        # Until a pass finds nothing: a message sent may have been what the next message of its order waited for.
        while await self.send_due():
            pass

    async def send_due(self) -> int:
        """One pass: send the notifications due now (at most a batch) and record how each try ended. Returns how
        many were tried."""
        async with self.database.transaction() as conn:
            pg = await driver(conn)
            due = await store.lock_due(pg, self.clock(), self.batch_size)
            if not due:
                return 0
            tries = await self._send_all(due)
            at = self.clock()
            deliveries = [
                (n.id, n.delivery.after(t.outcome, at, self.policy, t.error)) for n, t in zip(due, tries, strict=True)
            ]
            await store.record_deliveries(pg, deliveries)
            tx = Transaction(conn, "notifications")
            for notification, attempt, (_, delivery) in zip(due, tries, deliveries, strict=True):
                event = _event(notification, delivery)
                if event is not None:
                    tx.emit(event, traceparent=attempt.traceparent or notification.traceparent)
            await append(conn, tx.outbox)
        metrics.sent(due, [delivery for _, delivery in deliveries], at)
        if tx.outbox:
            self.after_commit()
        return len(due)

    async def _send_all(self, due: Sequence[store.Outgoing]) -> list[_Try]:
        # Spread the batch over a few connections: a mail server answers each command in turn, so one connection
        # spends most of its time waiting.
        lanes = [list(range(i, len(due), self.connections)) for i in range(min(self.connections, len(due)))]
        results = await asyncio.gather(*(self._send_over_one_connection([due[i] for i in lane]) for lane in lanes))
        tries: dict[int, _Try] = {}
        for lane, lane_tries in zip(lanes, results, strict=True):
            tries.update(zip(lane, lane_tries, strict=True))
        return [tries[i] for i in range(len(due))]

    async def _send_over_one_connection(self, notifications: Sequence[store.Outgoing]) -> list[_Try]:
        tries: list[_Try] = []
        smtp: aiosmtplib.SMTP | None = None
        try:
            for position, notification in enumerate(notifications):
                if smtp is None:
                    try:
                        smtp = await self._connect()
                    except Exception as error:
                        # Nothing on this connection can go out now; each message waits for its own next try.
                        where = f"{self.smtp.host}:{self.smtp.port}"
                        log.warning(
                            "SMTP server %s unreachable, %d message(s) wait: %r",
                            where,
                            len(notifications) - position,
                            error,
                        )
                        failure = _Try(Outcome.transient, f"connecting to {where}: {_say(error)}", broken=True)
                        tries.extend(failure for _ in notifications[position:])
                        return tries
                result = await self._send_one(smtp, notification)
                tries.append(result)
                if result.broken:
                    smtp.close()
                    smtp = None
            return tries
        finally:
            if smtp is not None and smtp.is_connected:
                with contextlib.suppress(Exception):
                    await smtp.quit()

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(
            hostname=self.smtp.host,
            port=self.smtp.port,
            timeout=self.smtp.timeout,
            start_tls=self.smtp.starttls,
            username=self.smtp.username,
            password=self.smtp.password,
        )
        await smtp.connect()
        return smtp

    async def _send_one(self, smtp: aiosmtplib.SMTP, notification: store.Outgoing) -> _Try:
        with tracer().start_as_current_span(
            f"send {notification.template}",
            context=context_from_traceparent(notification.traceparent),
            kind=SpanKind.CLIENT,
            attributes={
                "messaging.system": "smtp",
                "oms.notification.id": str(notification.id),
                "oms.notification.template": notification.template,
            },
        ) as span:
            traceparent = traceparent_of(span)
            try:
                refused, _ = await smtp.send_message(self._message(notification))
            except aiosmtplib.SMTPRecipientsRefused as error:
                outcome = outcome_of_reply(min(refusal.code for refusal in error.recipients))
                result = _Try(outcome, _say(error), traceparent=traceparent)
            except aiosmtplib.SMTPResponseException as error:
                # The server answered (and aiosmtplib reset the envelope): unless it hung up (421), the connection
                # serves the next message.
                outcome = outcome_of_reply(error.code)
                result = _Try(outcome, _say(error), broken=not smtp.is_connected, traceparent=traceparent)
            except (ValueError, aiosmtplib.SMTPNotSupported) as error:
                # An address this mail server cannot take (e.g. non-ASCII without SMTPUTF8): it never will.
                result = _Try(Outcome.permanent, _say(error), traceparent=traceparent)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
                result = _Try(Outcome.transient, _say(error), broken=True, traceparent=traceparent)
            except Exception as error:
                # A fault of ours, not of the mail server: it still counts as a try, so one bad message ends up
                # failed and recorded instead of blocking every pass behind it.
                log.exception("notification %s could not be sent", notification.id)
                result = _Try(Outcome.transient, _say(error), broken=True, traceparent=traceparent)
            else:
                if refused:
                    # Only a mail to several operators can be taken for some and refused for others; it went out,
                    # and trying it again would repeat it to those who got it.
                    log.warning("notification %s refused for %s: %s", notification.id, ", ".join(refused), refused)
                return _Try(Outcome.delivered, traceparent=traceparent)
            span.set_status(Status(StatusCode.ERROR, result.error))
            log.warning("notification %s not sent (%s): %s", notification.id, result.outcome, result.error)
            return result

    def _message(self, notification: store.Outgoing) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.smtp.mail_from
        if notification.audience is Audience.operators:
            # One alert to every operator: the record holds them as one comma-separated list.
            message["To"] = [Address(addr_spec=address.strip()) for address in notification.recipient.split(",")]
        else:
            message["To"] = Address(display_name=notification.recipient_name or "", addr_spec=notification.recipient)
        message["Subject"] = notification.subject
        message["Date"] = format_datetime(self.clock())
        # Derived from the notification id: a resend after a crash carries the same Message-ID.
        message["Message-ID"] = f"<{notification.id}@{self.smtp.domain}>"
        message["Auto-Submitted"] = "auto-generated"
        if notification.order_id is not None:
            message["X-OMS-Order-Id"] = str(notification.order_id)
        message.set_content(notification.body_text)
        message.add_alternative(notification.body_html, subtype="html")
        return message


def _event(notification: store.Outgoing, delivery: Delivery) -> NotificationSent | NotificationFailed | None:
    common = {
        "notification_id": notification.id,
        "order_id": notification.order_id,
        "template": notification.template,
        "channel": NotificationChannel(notification.channel),
        # The event's field is shorter than the longest valid address; the full one stays in the record.
        "recipient": notification.recipient,
        "subject": notification.subject,
        "cause_event_id": notification.cause_event_id,
        "attempts": delivery.attempts,
    }
    subject = str(notification.order_id) if notification.order_id else None
    if delivery.status is NotificationStatus.sent:
        return NotificationSent(
            source=SOURCE, subject=subject, data=NotificationSentData(**common, sent_at=delivery.sent_at)
        )
    if delivery.status is NotificationStatus.failed:
        return NotificationFailed(
            source=SOURCE,
            subject=subject,
            data=NotificationFailedData(**common, failed_at=delivery.failed_at, error=delivery.last_error or ""),
        )
    return None


def _say(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
