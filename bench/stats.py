"""The pure parts of the harness: which record marks which hop, percentiles, the sustained-rate decision and the
rate search. No I/O here, so bench/tests can pin every rule without a broker.

Times are broker record timestamps (CreateTime, milliseconds since the epoch, set by the producing client: our
topics do not use LogAppendTime). Comparing the CreateTime of a record a service produced with the CreateTime of the
submission is only meaningful on one clock: the harness runs everything on one machine.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# The hops of an order, in story order; each latency is measured from the submission.
HOPS = ("accepted", "paid", "planned", "reserved", "requested", "shipped", "mail")
# What the targets are stated on: submitted -> fulfillment requested.
END_TO_END = "requested"
# An order is through the system when every one of these is reached (the last hops of each branch).
TERMINAL = ("requested", "shipped", "mail")
# What "sustained" is decided on: the path the targets name. Whether the other branches (shipped, the
# confirmation mail) kept up too is judged the same way and reported beside it.
JUDGED = (END_TO_END,)

# Record kinds the collector hands to `OrderTrack.observe` (one per event type it cares about).
SUBMITTED = "submitted"
ACCEPTED = "accepted"
PAID = "paid"
PLANNED = "planned"
RESERVED = "reserved"
REQUESTED = "requested"
SHIPPED = "shipped"
MAIL = "mail"

# Event type -> kind, for the real system. The confirmation mail is a notification.sent whose template is
# order_confirmation (the collector checks the template before it reports MAIL).
EVENT_KINDS = {
    "oms.channel.order_submitted.v1": SUBMITTED,
    "oms.order.accepted.v1": ACCEPTED,
    "oms.order.paid.v1": PAID,
    "oms.routing.fulfillment_planned.v1": PLANNED,
    "oms.inventory.shipment_reserved.v1": RESERVED,
    "oms.fulfillment.requested.v1": REQUESTED,
    "oms.order.fulfillment_shipped.v1": SHIPPED,
    "oms.notification.sent.v1": MAIL,
}


@dataclass(slots=True)
class OrderTrack:
    """What the broker has shown of one order so far. A plan may have several shipments: an order is reserved,
    requested and shipped when every shipment of its first plan is (the time of the last one counts)."""

    submitted: int | None = None
    accepted: int | None = None
    paid: int | None = None
    planned: int | None = None
    shipments: int | None = None
    mail: int | None = None
    reserved_n: int = 0
    reserved_last: int = 0
    requested_n: int = 0
    requested_last: int = 0
    shipped_n: int = 0
    shipped_last: int = 0
    replanned: bool = False

    def observe(self, kind: str, ts: int, shipments: int | None = None) -> None:
        """One record of this order, whatever order the topics deliver them in. First occurrence wins for
        single events (a redelivered copy carries a later timestamp and must not move the hop)."""
        if kind == SUBMITTED:
            self.submitted = ts if self.submitted is None else min(self.submitted, ts)
        elif kind == ACCEPTED:
            self.accepted = ts if self.accepted is None else min(self.accepted, ts)
        elif kind == PAID:
            self.paid = ts if self.paid is None else min(self.paid, ts)
        elif kind == PLANNED:
            if self.planned is None or ts < self.planned:
                if self.planned is not None:
                    self.replanned = True
                self.planned, self.shipments = ts, shipments
            else:
                self.replanned = True
        elif kind == MAIL:
            self.mail = ts if self.mail is None else min(self.mail, ts)
        elif kind == RESERVED:
            self.reserved_n += 1
            self.reserved_last = max(self.reserved_last, ts)
        elif kind == REQUESTED:
            self.requested_n += 1
            self.requested_last = max(self.requested_last, ts)
        elif kind == SHIPPED:
            self.shipped_n += 1
            self.shipped_last = max(self.shipped_last, ts)
        else:
            raise ValueError(f"unknown record kind {kind!r}")

    def _all(self, n: int, last: int) -> int | None:
        if self.shipments is None or self.shipments == 0 or n < self.shipments:
            return None
        return last

    def times(self) -> dict[str, int | None]:
        """The time each hop was reached (None: not yet), by hop name."""
        return {
            "accepted": self.accepted,
            "paid": self.paid,
            "planned": self.planned,
            "reserved": self._all(self.reserved_n, self.reserved_last),
            "requested": self._all(self.requested_n, self.requested_last),
            "shipped": self._all(self.shipped_n, self.shipped_last),
            "mail": self.mail,
        }

    def latencies(self) -> dict[str, float]:
        """Seconds from the submission to each hop reached so far."""
        if self.submitted is None:
            return {}
        return {hop: (t - self.submitted) / 1000 for hop, t in self.times().items() if t is not None}

    def complete(self, terminal: Sequence[str] = TERMINAL) -> bool:
        times = self.times()
        return self.submitted is not None and all(times[hop] is not None for hop in terminal)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's default method).
    `values` need not be sorted."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError("q is a percentage, 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """count, p50, p95, p99, max (seconds in, seconds out)."""
    if not values:
        return {"count": 0, "p50": math.nan, "p95": math.nan, "p99": math.nan, "max": math.nan}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
    }


@dataclass(frozen=True)
class Criteria:
    """When a point counts as sustained (docs/performance.md explains each)."""

    throughput_within: float = 0.02  # completions in the window >= (1 - this) x offered
    # Last quarter's p99 <= factor x third quarter's p99 + slack. A quarter of a 30 s window at low rates holds a few
    # hundred orders, so its p99 is close to its few slowest: the tolerance keeps one slow batch from failing a point,
    # while a growing backlog (latency rising for the whole second half) still fails it.
    p99_growth_factor: float = 1.5
    p99_growth_slack_s: float = 0.1
    # The load generator's own lag behind its schedule. Small next to the latencies measured (the submission's own
    # timestamp is the one compared), but a generator that lags more than this is not offering the rate it claims.
    generator_p99_lag_s: float = 0.05
    generator_max_lag_s: float = 0.5


@dataclass
class Verdict:
    sustained: bool
    valid: bool  # False: the load generator fell behind, the point says nothing about the system
    reasons: list[str] = field(default_factory=list)


def judge(
    *,
    offered_rate: float,
    window: tuple[int, int],
    tracks: Iterable[tuple[int, OrderTrack]],
    generator_lag_p99_s: float,
    generator_lag_max_s: float,
    generator_sent: int,
    generator_planned: int,
    criteria: Criteria = Criteria(),
    terminal: Sequence[str] = TERMINAL,
) -> Verdict:
    """Decide whether the system kept up with `offered_rate` orders/s over `window` = (start, end) in epoch ms.

    `tracks` are (planned submission time in ms, track) of every order of the point, warm-up included. Sustained
    means all of:
    - the generator kept to its schedule (else the point is invalid, and not sustained);
    - every order submitted in the window reached every terminal hop (nothing lost or stuck after the drain);
    - for each terminal hop, the orders that reached it during the window, per second, are within
      `throughput_within` of the offered rate (output keeps pace with input);
    - for each terminal hop, the p99 latency of orders submitted in the window's last quarter is at most
      `p99_growth_factor` x that of the third quarter + `p99_growth_slack_s` (the backlog is not growing over the
      last half of the window).
    """
    reasons: list[str] = []
    start, end = window
    seconds = (end - start) / 1000
    if generator_sent < generator_planned:
        reasons.append(f"generator sent {generator_sent} of {generator_planned} orders")
    if generator_lag_p99_s > criteria.generator_p99_lag_s or generator_lag_max_s > criteria.generator_max_lag_s:
        reasons.append(
            f"generator fell behind its schedule (lag p99 {generator_lag_p99_s * 1000:.1f} ms, "
            f"max {generator_lag_max_s * 1000:.1f} ms)"
        )
    if reasons:
        return Verdict(False, False, reasons)
    items = list(tracks)
    in_window = [(planned, t) for planned, t in items if start <= planned < end]
    if not in_window:
        return Verdict(False, True, ["no order was submitted in the window"])
    incomplete = sum(1 for _, t in in_window if not t.complete(terminal))
    if incomplete:
        reasons.append(f"{incomplete} of {len(in_window)} orders never reached {', '.join(terminal)}")
    quarter = (end - start) / 4
    for hop in terminal:
        reached = 0
        for _, t in items:
            at = t.times()[hop]
            if at is not None and start <= at < end:
                reached += 1
        rate = reached / seconds if seconds > 0 else 0.0
        if rate < (1 - criteria.throughput_within) * offered_rate:
            reasons.append(f"{hop}: {rate:.1f}/s reached in the window, offered {offered_rate:.1f}/s")
        third = [t.latencies().get(hop) for p, t in in_window if start + 2 * quarter <= p < start + 3 * quarter]
        fourth = [t.latencies().get(hop) for p, t in in_window if p >= start + 3 * quarter]
        third_done = [x for x in third if x is not None]
        fourth_done = [x for x in fourth if x is not None]
        if third_done and fourth_done:
            p3, p4 = percentile(third_done, 99), percentile(fourth_done, 99)
            if p4 > criteria.p99_growth_factor * p3 + criteria.p99_growth_slack_s:
                reasons.append(f"{hop}: p99 grew from {p3 * 1000:.0f} ms to {p4 * 1000:.0f} ms over the last half")
    return Verdict(not reasons, True, reasons)


@dataclass(frozen=True)
class Search:
    """The rate search: up by `factor` from `start` while sustained, then bisect (geometrically) between the
    highest sustained and the lowest failed rate until they are within `precision`; down by `factor` from a
    failing start. At most `max_points` points."""

    start: float = 100.0
    factor: float = 2.0
    precision: float = 0.1
    floor: float = 5.0
    max_points: int = 10

    def next_rate(self, history: Sequence[tuple[float, bool]]) -> float | None:
        if len(history) >= self.max_points:
            return None
        if not history:
            return self.start
        ok = [rate for rate, sustained in history if sustained]
        failed = [rate for rate, sustained in history if not sustained]
        if not failed:
            return round(max(ok) * self.factor, 1)
        lowest_failed = min(failed)
        below = [rate for rate in ok if rate < lowest_failed]
        if not below:
            nxt = round(lowest_failed / self.factor, 1)
            return nxt if nxt >= self.floor else None
        best = max(below)
        if lowest_failed / best <= 1 + self.precision:
            return None
        return round(math.sqrt(best * lowest_failed), 1)


def sustained_rate(history: Sequence[tuple[float, bool]]) -> float | None:
    """The highest sustained rate below every failed one (a failure above a lucky success wins: conservative)."""
    failed = [rate for rate, sustained in history if not sustained]
    ceiling = min(failed) if failed else math.inf
    ok = [rate for rate, sustained in history if sustained and rate < ceiling]
    return max(ok) if ok else None
