"""The checker: after the faults and a drain, count from the topics, the databases and the mail sink what went
wrong. Collecting (`collect`) reads the real things; counting (`count`, `recovery`) is pure, so its rules are
pinned by tests of their own (test_checker.py) without a system.

Four families, each must be all zeros:
- lost: a valid order that did not reach the end its kind says (delivered, cancelled), an invalid one without its
  one rejection, a valid one rejected;
- duplicated effects: a fulfillment requested twice (two request events for one fulfillment id), units of a line
  requested or reserved beyond the line, a status change applied twice, a refund issued twice, a mail sent twice
  (two SMTP deliveries of one Message-ID, or two confirmations for one order);
- oversold: reserved above on hand at any (sku, source), seen at the end or in samples taken during the run; stock
  not conserved (received - shipped != on hand); reserved not what the open reservations hold;
- flows that never completed (after the drain, with no faults): rows left in an outbox, parked messages, consumer
  lag, mails pending or failed, mails recorded as sent that the sink never got, mails `unknown` (in flight at a
  crash, never resent) that the sink never got either, lines still waiting for stock,
  events waiting for a contact, poison records neither dead-lettered nor rejected nor applied (silently dropped),
  valid messages dead-lettered, and service processes that exited when nobody asked them to."""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.collect import consumer_lags
from oms_contracts.topics import DEAD_LETTERS, NOTIFICATIONS, ORDER_EVENTS

from . import traffic
from .injectors import Fault, Poison
from .system import SERVICES, Exit, Infra, Mail


@dataclass
class Request:
    event_id: str
    fulfillment_id: str
    order_id: str
    source: str
    lines: list[tuple[str, str, int]]  # (line_id, sku, quantity)
    at: float


@dataclass
class DeadLetter:
    service: str
    topic: str
    partition: int
    offset: int


@dataclass
class Evidence:
    """Everything the checker counts from, as read after the drain."""

    orders: list[traffic.Planned]
    status: dict[str, str]  # order id -> status (order's database)
    transitions_twice: int  # (order, from, to) recorded more than once in the timeline
    rejected: Counter[str]  # rejected_event_id -> order.rejected events (distinct ids) naming it
    rejected_orders: set[str]  # order ids named by an order.rejected
    requests: list[Request]
    refunds: list[tuple[str, str, str]]  # (order id, refund id, what it pays for: cancellation or return id)
    reserved_by_line: dict[tuple[str, str], int]  # (order, line) -> units reserved and not given back
    stock: dict[tuple[str, str], tuple[int, int]]  # (sku, source) -> (on hand, reserved)
    open_reservations: Counter[tuple[str, str]]  # (sku, source) -> units held by reservations still open
    received: Counter[tuple[str, str]]
    shipped: Counter[tuple[str, str]]
    mails: list[Mail]
    notifications: list[tuple[str, str | None, str, str]]  # (id, order id, template, status)
    dead_letters: list[DeadLetter]
    poison: list[Poison]
    confirmed_at: dict[str, float]  # order id -> when its confirmation mail was recorded as sent
    leftovers: dict[str, int] = field(default_factory=dict)  # outbox, parked, lag, waiting lines, notices
    oversold_samples: int = 0
    exits: list[Exit] = field(default_factory=list)


def count(e: Evidence) -> dict[str, dict[str, int]]:
    orders = {str(o.order_id): o for o in e.orders}
    lost = {
        "valid orders not at their end state": sum(
            1 for oid, o in orders.items() if o.valid and e.status.get(oid) != o.expected
        ),
        "invalid orders without exactly one rejection": sum(
            1 for o in e.orders if not o.valid and e.rejected[str(o.submitted_id)] != 1
        ),
        "invalid orders that became orders": sum(1 for oid, o in orders.items() if not o.valid and oid in e.status),
        "valid orders rejected": sum(1 for oid, o in orders.items() if o.valid and oid in e.rejected_orders),
    }

    by_fulfillment: dict[str, set[str]] = defaultdict(set)
    requested: Counter[tuple[str, str]] = Counter()
    counted: set[str] = set()
    for r in e.requests:
        by_fulfillment[r.fulfillment_id].add(r.event_id)
        if r.fulfillment_id not in counted:
            counted.add(r.fulfillment_id)
            for line_id, _, qty in r.lines:
                requested[(r.order_id, line_id)] += qty
    ordered = {(str(o.order_id), line_id): qty for o in e.orders for line_id, _, qty in o.lines}
    refunds_for: dict[tuple[str, str], set[str]] = defaultdict(set)
    for order_id, refund_id, cause in e.refunds:
        refunds_for[(order_id, cause)].add(refund_id)
    deliveries = Counter(m.message_id for m in e.mails)
    confirmations = Counter(oid for _, oid, template, _ in e.notifications if template == "order_confirmation")
    duplicated = {
        "fulfillments requested twice": sum(1 for ids in by_fulfillment.values() if len(ids) > 1),
        "units requested beyond their line": sum(max(0, n - ordered.get(key, 0)) for key, n in requested.items()),
        "units reserved beyond their line": sum(
            max(0, n - ordered.get(key, 0)) for key, n in e.reserved_by_line.items()
        ),
        "status changes applied twice": e.transitions_twice,
        "refunds issued twice": sum(len(ids) - 1 for ids in refunds_for.values()),
        "mails delivered twice (same Message-ID)": sum(n - 1 for n in deliveries.values() if n > 1),
        "orders confirmed twice": sum(n - 1 for n in confirmations.values() if n > 1),
    }

    keys = set(e.stock) | set(e.received)
    oversold = {
        "(sku, source) with reserved above on hand": sum(1 for on_hand, res in e.stock.values() if res > on_hand),
        "samples during the run with reserved above on hand": e.oversold_samples,
        "(sku, source) where received - shipped != on hand": sum(
            1 for k in keys if e.received[k] - e.shipped[k] != e.stock.get(k, (0, 0))[0]
        ),
        "(sku, source) where reserved != open reservations": sum(
            1 for k in keys if e.stock.get(k, (0, 0))[1] != e.open_reservations[k]
        ),
    }

    sent_ids = {nid for nid, _, _, status in e.notifications if status == "sent"}
    unknown_ids = {nid for nid, _, _, status in e.notifications if status == "unknown"}
    received_ids = {m.message_id.strip("<>").split("@")[0] for m in e.mails}
    unaccounted, misplaced = poison_outcomes(e)
    incomplete = {
        **e.leftovers,
        "mails pending or failed": sum(1 for *_, status in e.notifications if status not in ("sent", "unknown")),
        "mails recorded sent, never received": len(sent_ids - received_ids),
        # At most once: a mail in flight at a crash is `unknown`, never resent. Received once, it is only its record
        # that is missing; never received, it is lost.
        "mails unknown, never received": len(unknown_ids - received_ids),
        "poison records silently dropped": unaccounted,
        "valid messages dead-lettered": misplaced,
        "service exits nobody asked for": sum(1 for x in e.exits if not x.expected),
    }
    return {"lost": lost, "duplicated": duplicated, "oversold": oversold, "incomplete": incomplete}


def poison_outcomes(e: Evidence) -> tuple[int, int]:
    """(poison outcomes missing, dead letters that are no poison's). Each poison record must meet, at each service
    that reads its topic, exactly the outcome it expects; a dead letter of anything else dead-lettered a valid
    message."""
    letters = Counter((d.service, d.topic, d.partition, d.offset) for d in e.dead_letters)
    expected_letters = set()
    missing = 0
    for p in e.poison:
        for service, outcome in p.expect.items():
            if outcome == "dead letter":
                where = (service, p.topic, p.partition, p.offset)
                expected_letters.add(where)
                missing += letters[where] == 0
            elif outcome == "rejected":
                missing += e.rejected[str(p.event_id)] != 1
            elif outcome == "applied":
                missing += p.order is None or str(p.order.order_id) not in e.status
    stray = sum(n for where, n in letters.items() if where not in expected_letters)
    return missing, stray


def repeats_after(faults: list[Fault], mails: list[Mail]) -> dict[str, int]:
    """Mails delivered again (a Message-ID seen before), by the first fault that hit between the two deliveries:
    what interrupted the sender after it had sent and before it recorded the send."""
    first: dict[str, float] = {}
    found: Counter[str] = Counter()
    hit = sorted((f.at, f"{f.kind} {f.target}") for f in faults if f.happened)
    for mail in sorted(mails, key=lambda m: m.at):
        if mail.message_id not in first:
            first[mail.message_id] = mail.at
            continue
        between = [label for at, label in hit if first[mail.message_id] <= at <= mail.at]
        found[between[0] if between else "(no fault between the two deliveries)"] += 1
    return dict(found)


def first_requests(e: Evidence) -> dict[str, float]:
    """When each order's first fulfillment request was published."""
    first: dict[str, float] = {}
    for r in e.requests:
        first[r.order_id] = min(first.get(r.order_id, r.at), r.at)
    return first


def recovery(
    faults: list[Fault], orders: list[traffic.Planned], requested: dict[str, float], confirmed: dict[str, float]
) -> None:
    """Per fault, seconds from its last disruption until the first order placed after it got through: its
    fulfillment request out (the order flow: order, routing, inventory, order again) and, separately, its
    confirmation mail sent (the mail flow: order, notifications, SMTP). None when no later order got that far."""
    placed = sorted(
        (o.submitted_at, str(o.order_id)) for o in orders if o.kind == "plain" and o.submitted_at is not None
    )

    def first_after(at: float, reached: dict[str, float]) -> float | None:
        after = [reached[oid] for placed_at, oid in placed if placed_at >= at and oid in reached]
        return round(min(after) - at, 2) if after else None

    for fault in faults:
        fault.recovery_s = first_after(fault.last_at, requested)
        fault.mail_recovery_s = first_after(fault.last_at, confirmed)


def latency(orders: list[traffic.Planned], reached: dict[str, float], before: float) -> dict[str, float | None]:
    """Submission to `reached` (a request out, a confirmation sent) for orders placed before the first fault: the
    flow's own pace, to read the recovery times against."""
    quiet = sorted(
        reached[str(o.order_id)] - o.submitted_at
        for o in orders
        if o.kind == "plain" and o.submitted_at is not None and o.submitted_at < before and str(o.order_id) in reached
    )
    if not quiet:
        return {"median_s": None, "p95_s": None}
    return {"median_s": round(statistics.median(quiet), 2), "p95_s": round(quiet[int(0.95 * (len(quiet) - 1))], 2)}


# -- reading the real things -------------------------------------------------------------------------------------


async def read_topics(bootstrap: str, topics: Iterable[str]) -> dict[str, list]:
    """Every record of these topics, from the beginning to their end as it is now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    out: dict[str, list] = defaultdict(list)
    try:
        partitions = [
            TopicPartition(t, p)
            for t in topics
            for p in (consumer.partitions_for_topic(t) or await _partitions(consumer, t))
        ]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        left = {tp for tp in partitions if ends[tp] > 0}
        while left:
            batch = await consumer.getmany(*left, timeout_ms=2000, max_records=5000)
            for tp, records in batch.items():
                out[tp.topic] += [r for r in records if r.offset < ends[tp]]
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
    finally:
        await consumer.stop()
    return out


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


async def fetch(infra: Infra, service: str, sql: str, *args) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(infra.pg_url(service))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def leftovers(infra: Infra, orders: list[traffic.Planned]) -> dict[str, int]:
    """Work that should be done after a drain and is not."""
    out = {}
    for service in SERVICES:
        [row] = await fetch(
            infra,
            service,
            "SELECT (SELECT count(*) FROM outbox) AS outbox, (SELECT count(*) FROM parked_messages) AS parked",
        )
        out[f"outbox rows left ({service})"] = row["outbox"]
        out[f"parked messages ({service})"] = row["parked"]
    lags = await consumer_lags(infra.bootstrap, ("oms-",))
    out["consumer lag (records)"] = sum(lags.values())
    # Where it is, when there is any: which group has not committed how much of which topic.
    out |= {f"consumer lag of {group} on {topic}": n for (group, topic), n in sorted(lags.items()) if n}
    deliverable = [o.order_id for o in orders if o.expected == "delivered"]
    [row] = await fetch(
        infra,
        "inventory",
        "SELECT count(*) AS n FROM backorders WHERE state = 'waiting' AND order_id = ANY($1)",
        deliverable,
    )
    out["lines still waiting for stock"] = row["n"]
    [row] = await fetch(infra, "notifications", "SELECT count(*) AS n FROM notices_awaiting_contact")
    out["events still waiting for a contact"] = row["n"]
    return out


async def oversold_now(infra: Infra) -> int:
    [row] = await fetch(infra, "inventory", "SELECT count(*) AS n FROM stock WHERE reserved > on_hand")
    return row["n"]


def _header(record, name: str) -> str | None:
    for k, v in record.headers or ():
        if k == name and v is not None:
            return v.decode("utf-8", "replace")
    return None


async def collect(
    infra: Infra,
    orders: list[traffic.Planned],
    received: Counter,
    shipped: Counter,
    mails: list[Mail],
    poison: list[Poison],
    exits: list[Exit],
    oversold_samples: int,
) -> Evidence:
    topics = await read_topics(
        infra.bootstrap, [ORDER_EVENTS.name, NOTIFICATIONS.name, DEAD_LETTERS.name, *traffic.REQUEST_TOPICS]
    )
    # Rejections by the event they name, told apart by their own id: the relay may publish one event twice (a crash
    # after its publish, before its outbox delete), which is a copy, not a second rejection.
    rejections: defaultdict[str, set[str]] = defaultdict(set)
    rejected_orders: set[str] = set()
    refunds = []
    for r in topics[ORDER_EVENTS.name]:
        event = json.loads(r.value)
        data = event.get("data", {})
        if event["type"] == "oms.order.rejected.v1":
            rejections[str(data.get("rejected_event_id"))].add(event["id"])
            if data.get("order_id"):
                rejected_orders.add(data["order_id"])
        elif event["type"] == "oms.order.refund_issued.v1":
            cause = data.get("cancellation_id") or data.get("return_id") or "order"
            refunds.append((data["order_id"], data["refund_id"], cause))
    requests = []
    for topic in traffic.REQUEST_TOPICS:
        for r in topics[topic]:
            event = json.loads(r.value)
            if event["type"] != "oms.fulfillment.requested.v1":
                continue
            d = event["data"]
            lines = [(x["line_id"], x["sku"], int(x["quantity"])) for x in d["lines"]]
            requests.append(
                Request(event["id"], d["fulfillment_id"], d["order_id"], d["source_code"], lines, r.timestamp / 1000)
            )
    confirmed_at: dict[str, float] = {}
    for r in topics[NOTIFICATIONS.name]:
        event = json.loads(r.value)
        d = event["data"]
        if (
            event["type"] == "oms.notification.sent.v1"
            and d.get("template") == "order_confirmation"
            and d.get("order_id")
        ):
            confirmed_at.setdefault(d["order_id"], r.timestamp / 1000)
    dead_letters = []
    for r in topics[DEAD_LETTERS.name]:
        original = (_header(r, "oms-original-partition"), _header(r, "oms-original-offset"))
        dead_letters.append(
            DeadLetter(
                _header(r, "oms-service") or "?",
                _header(r, "oms-original-topic") or "?",
                int(original[0]) if original[0] else -1,
                int(original[1]) if original[1] else -1,
            )
        )

    status = {
        str(r["order_id"]): r["status"] for r in await fetch(infra, "order", "SELECT order_id, status FROM orders")
    }
    [row] = await fetch(
        infra,
        "order",
        """
        SELECT coalesce(sum(n - 1), 0) AS n FROM (
            SELECT count(*) AS n FROM order_timeline WHERE kind = 'status'
            GROUP BY order_id, from_status, to_status HAVING count(*) > 1
        ) twice
        """,
    )
    reserved_by_line = {
        (str(r["order_id"]), r["line_id"]): r["n"]
        for r in await fetch(
            infra,
            "inventory",
            """
            SELECT order_id, line_id, sum(quantity - released) AS n FROM reservations
            WHERE state <> 'rejected' GROUP BY order_id, line_id
            """,
        )
    }
    stock = {
        (r["sku"], r["source_code"]): (r["on_hand"], r["reserved"])
        for r in await fetch(infra, "inventory", "SELECT sku, source_code, on_hand, reserved FROM stock")
    }
    open_reservations: Counter[tuple[str, str]] = Counter(
        {
            (r["sku"], r["source_code"]): r["n"]
            for r in await fetch(
                infra,
                "inventory",
                """
                SELECT sku, source_code, sum(quantity - shipped - released) AS n FROM reservations
                WHERE state = 'reserved' GROUP BY sku, source_code
                """,
            )
        }
    )
    notifications = [
        (str(r["id"]), str(r["order_id"]) if r["order_id"] else None, r["template"], r["status"])
        for r in await fetch(infra, "notifications", "SELECT id, order_id, template, status FROM notifications")
    ]
    return Evidence(
        orders=orders,
        status=status,
        transitions_twice=row["n"],
        rejected=Counter({named: len(ids) for named, ids in rejections.items()}),
        rejected_orders=rejected_orders,
        requests=requests,
        refunds=refunds,
        reserved_by_line=reserved_by_line,
        stock=stock,
        open_reservations=open_reservations,
        received=received,
        shipped=shipped,
        mails=mails,
        notifications=notifications,
        dead_letters=dead_letters,
        poison=poison,
        confirmed_at=confirmed_at,
        leftovers=await leftovers(infra, orders),
        oversold_samples=oversold_samples,
        exits=exits,
    )
