"""Orders that sit without progress: a periodic check (a worker of the service) raises `order.stuck.v1` once per
episode, so operators hear of an order that nobody else would notice.

An episode is an (order, kind, fulfillment) stuck since a given moment; the kinds and their waits (settings):
- `paid_not_planned`: paid and nothing requested from a source for `stuck_paid_minutes` (30): no plan from routing,
  or a plan inventory has not reserved;
- `requested_not_accepted`: a fulfillment requested from its source, not accepted (nor shipped from) for
  `stuck_requested_hours` (4);
- `accepted_not_shipped`: accepted, and not all of it shipped, for `stuck_accepted_hours` (24);
- `backorder_overdue`: backordered units past the date inventory expected to serve them (from `backorder_queued`)
  by `stuck_backorder_days` (1); only when a date is known;
- `no_progress`: `awaiting_fulfillment` with no change to the order for `stuck_no_progress_hours` (24).
The same episode is raised once however often the check runs and however many instances run it (its key is the
table's primary key); when the order moves on, the check no longer finds it and clears it (`GET /orders?stuck=true`
lists orders with an episode still open), and a later wait is a new episode.

Pure: the SQL that finds candidates is `store.stuck_candidates`; this module words what an operator reads.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from oms_contracts.order import OrderStatus, StuckKind

from .domain import Entry, EntryKind


@dataclass(frozen=True, slots=True)
class Waits:
    """How long each wait may last before it is an alert."""

    paid: timedelta
    requested: timedelta
    accepted: timedelta
    backorder: timedelta
    no_progress: timedelta

    @classmethod
    def from_settings(cls, settings) -> Waits:
        return cls(
            paid=timedelta(minutes=settings.stuck_paid_minutes),
            requested=timedelta(hours=settings.stuck_requested_hours),
            accepted=timedelta(hours=settings.stuck_accepted_hours),
            backorder=timedelta(days=settings.stuck_backorder_days),
            no_progress=timedelta(hours=settings.stuck_no_progress_hours),
        )


@dataclass(frozen=True, slots=True)
class Stuck:
    """One episode the check found: what waits since when, and what an operator needs to read it."""

    order_id: uuid.UUID
    kind: StuckKind
    since: datetime
    status: OrderStatus
    fulfillment_id: uuid.UUID | None = None
    source_code: str | None = None
    planned: bool = False  # paid_not_planned: a plan arrived, inventory's reservation did not
    units: int = 0  # backorder_overdue: units waiting
    traceparent: str | None = None

    def age_hours(self, now: datetime) -> float:
        return round(max((now - self.since).total_seconds(), 0) / 3600, 1)

    def reason(self, now: datetime) -> str:
        """What has not happened, in words an operator reads."""
        age = _age(now - self.since)
        match self.kind:
            case StuckKind.paid_not_planned:
                why = "routing planned it, inventory has not reserved it" if self.planned else "no plan from routing"
                return f"paid {age} ago and nothing requested from a source yet ({why})"
            case StuckKind.requested_not_accepted:
                return f"{self.source_code} has not accepted fulfillment {self.fulfillment_id}, requested {age} ago"
            case StuckKind.accepted_not_shipped:
                return f"{self.source_code} accepted fulfillment {self.fulfillment_id} {age} ago and has not shipped it"
            case StuckKind.backorder_overdue:
                return f"{self.units} backordered unit(s) were expected by {self.since:%Y-%m-%d} and have not come"
            case StuckKind.no_progress:
                return f"awaiting fulfillment with no change for {age}"
        raise ValueError(self.kind)

    def entry(self, now: datetime, trace_id: str | None = None) -> Entry:
        """The timeline's record of the alert (in the order's trace)."""
        details = {"kind": self.kind.value} | (
            {"fulfillment_id": str(self.fulfillment_id)} if self.fulfillment_id else {}
        )
        return Entry(
            self.order_id,
            EntryKind.stuck,
            "service:order",
            self.reason(now),
            now,
            trace_id=trace_id,
            cause_type="stuck-check",
            details=details,
        )


def _age(span: timedelta) -> str:
    hours = span.total_seconds() / 3600
    if hours < 2:
        return f"{round(hours * 60)} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"
