"""Sending queued notifications over SMTP, at most once each, and recording how each try ended.

A pass has three steps, so that nothing can make it send a message twice:
1. **Claim** (one transaction, committed before anything is sent): the due pending notifications become `sending`,
   with the claim's time and this sender's name (FOR UPDATE SKIP LOCKED: two instances never take the same one).
   Nothing claims a `sending` message again.
2. **Send** them over a few SMTP connections at once.
3. **Record** each outcome (sent, failed, or pending again with its backoff) and emit notification.sent.v1 or
   notification.failed.v1 through the outbox, in a second transaction, only for rows still held by this claim.
   If that transaction fails, the outcomes stay in memory and are recorded before the next pass claims anything.

Just before a message's first byte goes to the mail server, its sender commits that it is handing it over
(`handed_over_at`, under the claim; a claim judged lost meanwhile is not used); the marks the connections ask for
together are written in one statement. What a sender cannot know, it does not guess, and never resends: a claim
still `sending` after the claim timeout belongs to a sender that stopped (or lost its database) between claiming and
recording; of its messages, those it had begun to hand over may have gone out, and a connection that breaks after
the message went out (DATA) may have delivered it. Such a message becomes `unknown` (with a failed event saying so,
`outcome_unknown`), for an operator to check in the mail server's log by its Message-ID, which is derived from the
notification id. The lost claim's messages that were never started are pending again: at most the messages in flight
at a crash (one per connection) can be `unknown`. A sender's own claim that committed while it saw the transaction
fail (the connection lost at COMMIT) is judged the same way at its next pass, without waiting for the timeout: between
passes it holds no claim, so any row still `sending` under its name is one of those. A sender that is stopped
finishes the message it is handing over and records what it knows; messages it had not started go back to pending.

An order's messages go out one at a time and in the order of its story (store.claim_due): the next one is due only
once the one before it is sent or final, so the confirmation always comes first. Operators' alerts stand outside
that story and go out as soon as they are due, in one mail to every operator.

The sender is woken after each commit of the consumer and runs every second in any case, for retries that come due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from oms_runtime.loop import run_when_woken
from oms_runtime.outbox import append
from oms_runtime.telemetry import continued, traceparent_of

from . import metrics, mime, store
from .domain import Audience, ClaimPolicy, Delivery, Outcome, RetryPolicy, outcome_of_reply
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


class _Smtp(aiosmtplib.SMTP):
    """An SMTP connection that knows whether the current message has been handed over: once the DATA command is
    sent, a broken connection or a timeout may come after the server took the message."""

    handed_over = False
    # Left open by an earlier pass and not used since.
    reused = False

    async def data(self, message: str | bytes, /, **options: object) -> aiosmtplib.SMTPResponse:
        self.handed_over = True
        return await super().data(message, **options)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class _Try:
    """How sending one notification went; no outcome when it was never handed to the mail server."""

    outcome: Outcome | None
    error: str | None = None
    # The connection is in an unknown state (dropped, timed out): the next message needs a new one.
    broken: bool = False
    # The span of the send, which the notification event continues.
    traceparent: str | None = None


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _sender_name() -> str:
    """Who claims: enough for an operator to find the process (host, pid), and unique across restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


_NOT_TRIED = _Try(None)

# How long a connection a pass left open is used again; the next pass after that opens a new one.
_IDLE_SECONDS = 10.0


class Sender:
    def __init__(
        self,
        database: Database,
        smtp: SmtpServer,
        *,
        policy: RetryPolicy = RetryPolicy(),
        claims: ClaimPolicy = ClaimPolicy(),
        batch_size: int = 100,
        connections: int = 4,
        after_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = _utc_now,
        interval: float = 1.0,
        name: str | None = None,
    ) -> None:
        self.database = database
        self.smtp = smtp
        self.policy = policy
        self.claims = claims
        self.batch_size = batch_size
        self.connections = connections
        self.after_commit = after_commit
        self.clock = clock
        self.interval = interval
        self.name = name or _sender_name()
        # The sender's name and address, as the mail's From and the envelope's sender.
        self._from = parseaddr(smtp.mail_from)
        # The right-hand side of every Message-ID: parsed once, not per mail (1 % of the service at 300 orders/s).
        self._domain = smtp.domain
        self._wake = asyncio.Event()
        # Outcomes of sent messages whose recording failed: recorded before anything new is claimed.
        self._unrecorded: list[tuple[store.Outgoing, Delivery, _Try]] = []
        # Set when the sender is being stopped: no message is handed over any more.
        self._stopping = False
        # Connections a pass left open for the next one, with when each was last used: a connection, its greeting
        # and EHLO per pass cost more than the messages of a small pass.
        self._idle: list[tuple[_Smtp, float]] = []
        # Messages whose hand-over a connection waits to see committed, and the task committing them (_hand_over).
        self._to_mark: list[tuple[store.Outgoing, asyncio.Future[bool]]] = []
        self._marking: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls, database: Database, settings: NotificationsSettings, after_commit: Callable[[], None]
    ) -> Sender:
        return cls(
            database,
            SmtpServer.from_settings(settings),
            policy=RetryPolicy(settings.max_attempts, timedelta(seconds=settings.retry_cap_seconds)),
            claims=ClaimPolicy(timedelta(seconds=settings.claim_timeout_seconds)),
            batch_size=settings.send_batch_size,
            connections=settings.smtp_connections,
            after_commit=after_commit,
        )

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Send what is due whenever woken, and at least every `interval` seconds, until cancelled. The database is
        what can fail a pass (SMTP failures are outcomes of a send): it is retried."""
        try:
            await run_when_woken(self._wake, self._send_all_due, interval=self.interval, what="notification sender")
        finally:
            await self._close_idle()

    async def _send_all_due(self) -> None:
        # Until a pass finds nothing: a message sent may have been what the next message of its order waited for.
        while await self.send_due():
            pass

    async def send_due(self) -> int:
        """One pass: record what an earlier pass could not, judge claims other senders lost, claim the
        notifications due now (at most a batch), send them and record how each try ended. Returns how many were
        claimed.

        Cancelled (the service stops), the pass hands no further message over, waits for the one in hand, and
        records every outcome before it ends: messages it never started are pending again."""
        work = asyncio.ensure_future(self._pass())
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            self._stopping = True
            with contextlib.suppress(Exception):
                await work
            raise

    async def _pass(self) -> int:
        if self._stopping:
            return 0
        if self._unrecorded:
            await self._record(self._unrecorded)
            self._unrecorded = []
        claimed = await self._claim()
        if not claimed:
            return 0
        await self._send_and_record(claimed)
        return len(claimed)

    async def _claim(self) -> list[store.Outgoing]:
        async with self.database.transaction() as pg:
            now = self.clock()
            lost = await store.lost_claims(pg, self.claims.lost_before(now), self.batch_size, self.name)
            judged = [(n, self._judged(n, now)) for n in lost]
            recorded = await store.record_deliveries(pg, judged)
            tx = Transaction(pg, "notifications")
            for notification, delivery in judged:
                if notification.id not in recorded:
                    continue
                if notification.handed_over_at is None:
                    log.warning(
                        "notification %s: claimed by %s, never handed to the mail server: pending again",
                        notification.id,
                        notification.claimed_by,
                    )
                else:
                    log.warning(
                        "notification %s: outcome unknown, not sent again (%s)", notification.id, delivery.last_error
                    )
                    tx.emit(_event(notification, delivery), traceparent=notification.traceparent)
            await append(pg, tx.outbox)
            claimed = await store.claim_due(pg, now, self.batch_size, self.name)
        metrics.sent([(n, d) for n, d in judged if n.id in recorded], now)
        if tx.outbox:
            self.after_commit()
        return claimed

    def _judged(self, notification: store.Outgoing, now: datetime) -> Delivery:
        """A lost claim's message: unknown when its sender had begun to hand it over (it may have gone out), else
        pending again (it never left; sending it now cannot make a second copy)."""
        if notification.handed_over_at is None:
            return notification.delivery.given_back()
        return notification.delivery.after(Outcome.unknown, now, self.policy, _lost(notification, self._domain))

    async def _send_and_record(self, claimed: Sequence[store.Outgoing]) -> None:
        tries = await self._send_all(claimed)
        at = self.clock()
        outcomes = [(n, _delivery_after(n, t, at, self.policy), t) for n, t in zip(claimed, tries, strict=True)]
        try:
            await self._record(outcomes)
        except BaseException:
            # The messages stay `sending`, so nothing sends them again; their outcomes are recorded next pass.
            self._unrecorded = outcomes
            raise

    async def _record(self, outcomes: Sequence[tuple[store.Outgoing, Delivery, _Try]]) -> None:
        async with self.database.transaction() as pg:
            recorded = await store.record_deliveries(pg, [(n, d) for n, d, _ in outcomes])
            tx = Transaction(pg, "notifications")
            for notification, delivery, attempt in outcomes:
                if notification.id not in recorded:
                    # Another sender took the claim for lost (this pass outlived the claim timeout): its verdict
                    # stands, so that the message is announced once.
                    log.warning(
                        "notification %s: %s, but its claim was judged lost meanwhile; that verdict stands",
                        notification.id,
                        delivery.status,
                    )
                    continue
                event = _event(notification, delivery)
                if event is not None:
                    tx.emit(event, traceparent=attempt.traceparent or notification.traceparent)
            await append(pg, tx.outbox)
        metrics.sent([(n, d) for n, d, _ in outcomes if n.id in recorded], self.clock())
        if tx.outbox:
            self.after_commit()

    async def _send_all(self, due: Sequence[store.Outgoing]) -> list[_Try]:
        # Spread the batch over a few connections: a mail server answers each command in turn, so one connection
        # spends most of its time waiting.
        lanes = [list(range(i, len(due), self.connections)) for i in range(min(self.connections, len(due)))]
        results = await asyncio.gather(*(self._send_over_one_connection([due[i] for i in lane]) for lane in lanes))
        tries: dict[int, _Try] = {}
        for lane, lane_tries in zip(lanes, results, strict=True):
            tries.update(zip(lane, lane_tries, strict=True))
        return [tries[i] for i in range(len(due))]

    def _may_start(self, notification: store.Outgoing) -> bool:
        """Whether to hand this claimed message over now: not while stopping, nor so late that its claim could be
        judged lost before the answer is recorded."""
        return not self._stopping and self.claims.may_start(notification.claimed_at, self.clock())

    async def _send_over_one_connection(self, notifications: Sequence[store.Outgoing]) -> list[_Try]:
        tries: list[_Try] = []
        smtp = await self._reuse()
        try:
            for position, notification in enumerate(notifications):
                if not self._may_start(notification):
                    tries.extend(_NOT_TRIED for _ in notifications[position:])
                    return tries
                if smtp is not None and smtp.reused and not await self._still_open(smtp):
                    smtp = None
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
                try:
                    handed_over = await self._hand_over(notification)
                except Exception as error:
                    # Its start cannot be made durable: nothing more goes out until the database answers again.
                    log.warning("database unreachable, %d message(s) wait: %r", len(notifications) - position, error)
                    tries.extend(_NOT_TRIED for _ in notifications[position:])
                    return tries
                if not handed_over:  # its claim was judged lost meanwhile: another verdict stands, it is not sent
                    tries.append(_NOT_TRIED)
                    continue
                result = await self._send_one(smtp, notification)
                tries.append(result)
                smtp.reused = False
                if result.broken:
                    smtp.close()
                    smtp = None
            return tries
        finally:
            if smtp is not None and smtp.is_connected:
                if self._stopping:
                    with contextlib.suppress(Exception):
                        await smtp.quit()
                else:
                    self._idle.append((smtp, time.monotonic()))

    async def _hand_over(self, notification: store.Outgoing) -> bool:
        """Commit that this message is being handed over, before its first byte goes to the mail server.

        The connections' marks share statements: those asked for while one is being written go together in the
        next. Each connection still waits for its own message's mark, so no more messages than connections are ever
        marked and not yet answered (what a crash can leave `unknown`)."""
        asked = asyncio.get_running_loop().create_future()
        self._to_mark.append((notification, asked))
        if self._marking is None or self._marking.done():
            self._marking = asyncio.create_task(self._mark_asked())
        return await asked

    async def _mark_asked(self) -> None:
        while self._to_mark:
            asked, self._to_mark = self._to_mark, []
            try:
                async with self.database.autocommit() as pg:
                    marked = await store.hand_over(pg, [n for n, _ in asked], self.clock())
            except Exception as error:
                for _, answer in asked:
                    if not answer.done():
                        answer.set_exception(error)
                continue
            for notification, answer in asked:
                if not answer.done():
                    answer.set_result(notification.id in marked)

    async def _reuse(self) -> _Smtp | None:
        """A connection an earlier pass left open, if one was used recently enough; older ones are closed."""
        while self._idle:
            smtp, since = self._idle.pop()
            if smtp.is_connected and time.monotonic() - since < _IDLE_SECONDS:
                smtp.reused = True
                return smtp
            with contextlib.suppress(Exception):
                await smtp.quit()
        return None

    @staticmethod
    async def _still_open(smtp: _Smtp) -> bool:
        """Whether a connection left idle still serves (the server may have closed it meanwhile): a failure found
        here costs a new connection, where a failure of the send would cost the message a retry later."""
        try:
            await smtp.noop()
            return True
        except Exception:
            smtp.close()
            return False

    async def _close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for smtp, _ in idle:
            with contextlib.suppress(Exception):
                await smtp.quit()

    async def _connect(self) -> _Smtp:
        smtp = _Smtp(
            hostname=self.smtp.host,
            port=self.smtp.port,
            timeout=self.smtp.timeout,
            start_tls=self.smtp.starttls,
            username=self.smtp.username,
            password=self.smtp.password,
        )
        await smtp.connect()
        return smtp

    async def _send_one(self, smtp: _Smtp, notification: store.Outgoing) -> _Try:
        with continued(
            notification.traceparent,
            f"send {notification.template}",
            SpanKind.CLIENT,
            {
                "messaging.system": "smtp",
                "oms.notification.id": str(notification.id),
                "oms.notification.template": notification.template,
            },
        ) as span:
            traceparent = traceparent_of(span)
            smtp.handed_over = False
            try:
                recipients = self._recipients(notification)
                refused, _ = await smtp.sendmail(self._from[1], recipients, self._message(notification, recipients))
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
                if smtp.handed_over:
                    # No answer to the message itself: the server may have taken it and the reply been lost (RFC
                    # 1047). Sending it again could deliver it twice.
                    result = _Try(Outcome.unknown, _handed_over(error, self.smtp), broken=True, traceparent=traceparent)
                else:
                    result = _Try(Outcome.transient, _say(error), broken=True, traceparent=traceparent)
            except Exception as error:
                # A fault of ours, not of the mail server: it still counts as a try, so one bad message ends up
                # failed and recorded instead of blocking every pass behind it.
                log.exception("notification %s could not be sent", notification.id)
                outcome = Outcome.unknown if smtp.handed_over else Outcome.transient
                result = _Try(outcome, _say(error), broken=True, traceparent=traceparent)
            else:
                if refused:
                    # Only a mail to several operators can be taken for some and refused for others; it went out,
                    # and trying it again would repeat it to those who got it.
                    log.warning("notification %s refused for %s: %s", notification.id, ", ".join(refused), refused)
                return _Try(Outcome.delivered, traceparent=traceparent)
            span.set_status(Status(StatusCode.ERROR, result.error))
            log.warning("notification %s not sent (%s): %s", notification.id, result.outcome, result.error)
            return result

    @staticmethod
    def _recipients(notification: store.Outgoing) -> list[str]:
        if notification.audience is Audience.operators:
            # One alert to every operator: the record holds them as one comma-separated list.
            return [address.strip() for address in notification.recipient.split(",")]
        return [notification.recipient]

    def _message(self, notification: store.Outgoing, recipients: list[str]) -> bytes:
        if notification.audience is Audience.operators:
            to = [mime.address(None, address) for address in recipients]
        else:
            to = [mime.address(notification.recipient_name, notification.recipient)]
        extra = [("Auto-Submitted", "auto-generated")]
        if notification.order_id is not None:
            extra.append(("X-OMS-Order-Id", str(notification.order_id)))
        return mime.compose(
            sender=mime.address(*self._from),
            to=to,
            subject=notification.subject,
            date=format_datetime(self.clock()),
            message_id=_message_id(notification.id, self._domain),
            text=notification.body_text,
            html=notification.body_html,
            boundary=f"oms-{notification.id.hex}",
            extra=extra,
        )


def _delivery_after(notification: store.Outgoing, attempt: _Try, at: datetime, policy: RetryPolicy) -> Delivery:
    if attempt.outcome is None:
        return notification.delivery.given_back()
    return notification.delivery.after(attempt.outcome, at, policy, attempt.error)


def _message_id(notification_id: uuid.UUID, domain: str) -> str:
    """Derived from the notification id: an operator finds the mail in the mail server's log by it."""
    return f"<{notification_id}@{domain}>"


def _lost(notification: store.Outgoing, domain: str) -> str:
    return (
        f"outcome unknown: claimed by {notification.claimed_by} at {notification.claimed_at.isoformat()}, and its "
        "outcome was never recorded (that sender stopped or lost its database while sending); not sent again, so "
        f"that it is never sent twice: the mail server's log for Message-ID {_message_id(notification.id, domain)} "
        "says whether it went out"
    )


def _handed_over(error: BaseException, smtp: SmtpServer) -> str:
    return (
        f"outcome unknown: {_say(error)} after the message was handed to {smtp.host}:{smtp.port} (DATA), before "
        "its answer; not sent again, so that it is never sent twice: the mail server's log says whether it went out"
    )


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
    if delivery.status in (NotificationStatus.failed, NotificationStatus.unknown):
        data = NotificationFailedData(
            **common,
            failed_at=delivery.failed_at,
            error=delivery.last_error or "",
            outcome_unknown=delivery.status is NotificationStatus.unknown,
        )
        return NotificationFailed(source=SOURCE, subject=subject, data=data)
    return None


def _say(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
