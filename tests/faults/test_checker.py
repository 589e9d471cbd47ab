"""The checker's rules, on evidence made by hand: what counts as lost, duplicated, oversold or never completed, and
what does not (a copy of the same event is not a second effect). No system needed."""

from __future__ import annotations

import uuid
from collections import Counter

from .checker import DeadLetter, Evidence, Request, count, recovery
from .injectors import Fault, Poison
from .system import Exit, Mail
from .traffic import Planned, plan


def _order(index: int, kind: str) -> Planned:
    order = plan("checker", index, 1, kind=kind)
    order.submitted_at = 1000.0 + index
    return order


def _evidence(orders: list[Planned], **changes) -> Evidence:
    """Evidence of a run where everything went right for these orders; `changes` break one thing."""
    status = {str(o.order_id): o.expected for o in orders if o.valid}
    rejected = Counter(str(o.submitted_id) for o in orders if not o.valid)
    requests, mails, notifications = [], [], []
    for o in orders:
        if o.expected == "delivered":
            fid = str(uuid.uuid5(o.order_id, "f"))
            requests.append(Request(f"e-{fid}", fid, str(o.order_id), "WH-EAST", list(o.lines), o.submitted_at + 1))
        if o.valid:
            nid = str(uuid.uuid5(o.order_id, "n"))
            notifications.append((nid, str(o.order_id), "order_confirmation", "sent"))
            mails.append(Mail(f"<{nid}@oms.local>", str(o.order_id), "Your order", ["a@b.c"], o.submitted_at + 2))
    evidence = Evidence(
        orders=orders,
        status=status,
        transitions_twice=0,
        rejected=rejected,
        rejected_orders=set(),
        requests=requests,
        refunds=[],
        reserved_by_line={},
        stock={("SKU", "WH-EAST"): (7, 0)},
        open_reservations=Counter(),
        received=Counter({("SKU", "WH-EAST"): 10}),
        shipped=Counter({("SKU", "WH-EAST"): 3}),
        mails=mails,
        notifications=notifications,
        dead_letters=[],
        poison=[],
        confirmed_at={str(o.order_id): o.submitted_at + 2 for o in orders if o.valid},
        leftovers={"outbox rows left (order)": 0},
    )
    for name, value in changes.items():
        setattr(evidence, name, value)
    return evidence


ORDERS = [_order(0, "plain"), _order(1, "backorder"), _order(2, "cancelled"), _order(3, "invalid")]


def _found(evidence: Evidence) -> dict[str, int]:
    return {f"{family}: {what}": n for family, c in count(evidence).items() for what, n in c.items() if n}


def test_a_run_where_everything_went_right_counts_nothing():
    assert _found(_evidence(ORDERS)) == {}


def test_an_order_short_of_its_end_and_an_invalid_order_never_rejected_are_lost():
    evidence = _evidence(ORDERS)
    evidence.status[str(ORDERS[1].order_id)] = "partially_fulfilled"
    evidence.rejected = Counter()
    assert _found(evidence) == {
        "lost: valid orders not at their end state": 1,
        "lost: invalid orders without exactly one rejection": 1,
    }


def test_the_same_request_published_twice_is_one_effect_but_a_second_request_event_is_two():
    evidence = _evidence(ORDERS)
    first = evidence.requests[0]
    evidence.requests.append(first)  # the relay published the same row again: same event id
    assert _found(evidence) == {}
    evidence.requests.append(Request("another-event", first.fulfillment_id, first.order_id, "WH-EAST", first.lines, 9))
    assert _found(evidence) == {"duplicated: fulfillments requested twice": 1}


def test_units_requested_or_reserved_beyond_their_line_are_duplicated_effects():
    order = ORDERS[0]
    line_id, sku, qty = order.lines[0]
    extra = Request("e-x", "f-x", str(order.order_id), "WH-WEST", [(line_id, sku, 1)], 5)
    evidence = _evidence(ORDERS, reserved_by_line={(str(order.order_id), line_id): qty + 2})
    evidence.requests.append(extra)
    assert _found(evidence) == {
        "duplicated: units requested beyond their line": 1,
        "duplicated: units reserved beyond their line": 2,
    }


def test_a_mail_delivered_twice_and_a_mail_recorded_sent_but_never_delivered_are_both_counted():
    evidence = _evidence(ORDERS)
    evidence.mails.append(evidence.mails[0])
    evidence.mails.pop(1)
    assert _found(evidence) == {
        "duplicated: mails delivered twice (same Message-ID)": 1,
        "incomplete: mails recorded sent, never received": 1,
    }


def test_an_unknown_mail_counts_only_when_the_sink_never_got_it_and_a_pending_one_always():
    evidence = _evidence(ORDERS)
    (a, oa, ta, _), (b, ob, tb, _), (c, oc, tc, _) = evidence.notifications
    evidence.notifications = [(a, oa, ta, "unknown"), (b, ob, tb, "unknown"), (c, oc, tc, "pending")]
    evidence.mails = [m for m in evidence.mails if b not in m.message_id and c not in m.message_id]
    assert _found(evidence) == {
        "incomplete: mails unknown, never received": 1,
        "incomplete: mails pending or failed": 1,
    }


def test_stock_is_conserved_only_when_received_minus_shipped_is_on_hand_and_reserved_never_exceeds_it():
    assert _found(_evidence(ORDERS, stock={("SKU", "WH-EAST"): (8, 0)})) == {
        "oversold: (sku, source) where received - shipped != on hand": 1
    }
    found = _found(
        _evidence(ORDERS, stock={("SKU", "WH-EAST"): (7, 9)}, open_reservations=Counter({("SKU", "WH-EAST"): 9}))
    )
    assert found == {"oversold: (sku, source) with reserved above on hand": 1}


def test_poison_must_meet_its_outcome_at_every_reader_and_any_other_dead_letter_dead_lettered_a_valid_message():
    shipped = Poison(
        "garbage", "oms.fulfillment.updates.v1", "k", b"x", [], {"order": "dead letter", "inventory": "dead letter"}
    )
    shipped.partition, shipped.offset = 2, 40
    evidence = _evidence(
        ORDERS,
        poison=[shipped],
        dead_letters=[DeadLetter("order", "oms.fulfillment.updates.v1", 2, 40)],
    )
    assert _found(evidence) == {"incomplete: poison records silently dropped": 1}
    evidence.dead_letters += [
        DeadLetter("inventory", "oms.fulfillment.updates.v1", 2, 40),
        DeadLetter("order", "oms.channel.orders.v1", 0, 7),
    ]
    assert _found(evidence) == {"incomplete: valid messages dead-lettered": 1}


def test_a_service_exit_nobody_asked_for_is_counted_and_a_crash_at_a_named_point_is_not():
    exits = [
        Exit("order", 1.0, -9, "kill9", None),
        Exit("inventory", 2.0, 137, None, "consumer.after_commit"),
        Exit("routing", 3.0, 1, None, None),
    ]
    assert _found(_evidence(ORDERS, exits=exits)) == {"incomplete: service exits nobody asked for": 1}


def test_recovery_is_from_the_fault_to_the_first_order_placed_after_it_that_got_through():
    orders = [_order(i, "plain") for i in range(5)]  # placed at 1000 ... 1004
    requested = {str(o.order_id): o.submitted_at + 3 for o in orders}
    requested.pop(str(orders[2].order_id))  # placed at 1002, never requested
    confirmed = {str(o.order_id): o.submitted_at + 10 for o in orders}
    late, never = Fault("kill9", "order", at=1001.5, last_at=1001.5), Fault("kill9", "order", at=1010, last_at=1010)
    recovery([late, never], orders, requested, confirmed)
    assert (late.recovery_s, late.mail_recovery_s) == (1006 - 1001.5, 1012 - 1001.5)
    assert (never.recovery_s, never.mail_recovery_s) == (None, None)


def test_mails_lost_in_flight_fail_the_run_only_beyond_one_per_connection_per_hard_exit_of_notifications():
    from .injectors import Fault
    from .suite import SMTP_CONNECTIONS, Outcome

    faults = [
        Fault("kill9", "notifications"),
        Fault("crash:consumer.after_commit", "notifications"),
        Fault("crash:relay.after_publish", "notifications", happened=False),
        Fault("term", "notifications"),  # graceful: it finishes what it hands over
        Fault("kill9", "order"),
    ]
    lost = {"incomplete": {"mails unknown, never received": 2 * SMTP_CONNECTIONS, "mails pending or failed": 0}}
    outcome = Outcome("full", 20.0, "", 1.0, {}, lost, faults, {})
    assert outcome.in_flight_allowance == 2 * SMTP_CONNECTIONS
    assert outcome.failures == {}
    lost["incomplete"]["mails unknown, never received"] += 1
    assert outcome.failures == {"incomplete: mails unknown, never received": 2 * SMTP_CONNECTIONS + 1}
