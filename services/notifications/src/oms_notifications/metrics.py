"""The notifications service's metrics: mails sent, failed and put off per template, how long after its cause each
mail left, and the flow's last step (the order confirmation reaching the mail server, from the order's acceptance).

Recorded once per sender pass, after its transaction commits: one counter call per (template, outcome) and one
histogram call per mail sent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from oms_runtime import metrics

from . import store
from .domain import Delivery, Status, Template

_meter = metrics.meter("oms.notifications")

MAILS = _meter.create_counter(
    "oms.notifications.mails",
    unit="{message}",
    description="Tries to send a notification, per template; oms.outcome: sent, failed (for good), retry (a "
    "transient failure, tried again later), unknown (may have reached the mail server: never sent again)",
)
DELAY = _meter.create_histogram(
    "oms.notifications.delay",
    unit="s",
    description="From the event a mail is about (its time) to the mail server taking the mail, per template",
    explicit_bucket_boundaries_advisory=metrics.FLOW_BUCKETS,
)

_OUTCOME = {Status.sent: "sent", Status.failed: "failed", Status.pending: "retry", Status.unknown: "unknown"}


def sent(tried: Sequence[tuple[store.Outgoing, Delivery]], at: datetime) -> None:
    """Record one sender pass's outcomes, once recorded: each notification tried, and how its try ended."""
    outcomes: Counter[tuple[str, str]] = Counter()
    for notification, delivery in tried:
        outcomes[(notification.template, _OUTCOME[delivery.status])] += 1
        if delivery.status is not Status.sent or notification.cause_at is None:
            continue
        waited = max((at - notification.cause_at).total_seconds(), 0.0)
        DELAY.record(waited, {"oms.notification.template": notification.template})
        if notification.template == Template.order_confirmation:
            # The confirmation's cause is order.accepted, whose time is the order's acceptance.
            metrics.FLOW.record(waited, metrics.flow_step("customer_notified"))
    for (template, outcome), n in outcomes.items():
        MAILS.add(n, {"oms.notification.template": template, "oms.outcome": outcome})
