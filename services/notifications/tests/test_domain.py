from __future__ import annotations

import inspect
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oms_contracts.notification import NotificationChannel
from oms_notifications import domain
from oms_notifications.domain import (
    MAX_ERROR_LENGTH,
    ClaimPolicy,
    Delivery,
    NotPending,
    Outcome,
    RetryPolicy,
    Status,
    Template,
    contact_of,
    latest_contacts,
    notification_id,
    order_confirmation,
    outcome_of_reply,
)

AT = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(min_value=1, max_value=30),
    cap=st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=2)),
)


def test_order_confirmation_goes_to_the_customer_by_email(order_accepted):
    event = order_accepted(email="grace@example.org", name="Grace Hopper")

    notice = order_confirmation(event)

    assert notice.template is Template.order_confirmation
    assert notice.channel is NotificationChannel.email
    assert notice.recipient == "grace@example.org"
    assert notice.recipient_name == "Grace Hopper"
    assert notice.order_id == event.data.order_id
    assert notice.cause_event_id == event.id


def test_order_confirmation_lists_every_line_with_its_total(order_accepted):
    notice = order_confirmation(order_accepted())

    lines = notice.values["lines"]
    assert [(line["sku"], line["quantity"], line["unit_price"]) for line in lines] == [
        ("SKU-RED-MUG", 2, Decimal("19.99")),
        ("SKU-TEA-500G", 1, Decimal("7.50")),
    ]
    assert [line["line_total"] for line in lines] == [Decimal("39.98"), Decimal("7.50")]
    assert notice.values["grand_total"] == Decimal("52.47")
    assert notice.values["currency"] == "EUR"
    assert notice.values["order_number"] == "1001"


def test_order_confirmation_names_the_shipping_address_and_method(order_accepted):
    notice = order_confirmation(order_accepted(shipping_method="express"))

    assert notice.values["shipping_method"] == "express"
    assert notice.values["shipping_address"]["lines"] == ["Unter den Linden 1", "10117 Berlin", "DE"]


def test_order_confirmation_for_pickup_names_the_store(order_accepted):
    notice = order_confirmation(order_accepted(shipping_method="pickup", pickup_source="STORE-BERLIN"))

    assert notice.values["shipping_method"] == "pickup"
    assert notice.values["pickup_source"] == "STORE-BERLIN"


def test_the_same_event_and_template_always_give_the_same_notification_id(order_accepted):
    event = order_accepted()

    assert order_confirmation(event).notification_id == order_confirmation(event).notification_id
    assert order_confirmation(event).notification_id == notification_id(event.id, Template.order_confirmation)


def test_different_events_give_different_notification_ids():
    assert notification_id(uuid.uuid4(), Template.order_confirmation) != notification_id(
        uuid.uuid4(), Template.order_confirmation
    )


def test_contact_remembers_who_to_tell_about_the_order(order_accepted):
    event = order_accepted("A-77", email="ada@example.com", name="Ada")

    contact = contact_of(event.data)

    assert contact.order_id == event.data.order_id
    assert (contact.email, contact.name, contact.locale) == ("ada@example.com", "Ada", "en")
    assert (contact.channel, contact.external_order_id) == ("web-eu", "A-77")


def test_latest_contact_of_an_order_wins_within_a_batch(order_accepted):
    first = contact_of(order_accepted("1", email="old@example.com").data)
    other = contact_of(order_accepted("2").data)
    second = contact_of(order_accepted("1", email="new@example.com").data)

    contacts = latest_contacts([first, other, second])

    assert sorted(c.email for c in contacts) == ["ada@example.com", "new@example.com"]


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (550, Outcome.permanent),
        (553, Outcome.permanent),
        (554, Outcome.permanent),
        (421, Outcome.transient),
        (450, Outcome.transient),
        (451, Outcome.transient),
        (452, Outcome.transient),
        (None, Outcome.transient),
    ],
)
def test_a_5xx_refusal_is_final_and_a_4xx_or_no_answer_is_worth_another_try(code, outcome):
    assert outcome_of_reply(code) is outcome


def test_a_delivered_try_marks_the_notification_sent():
    delivery = Delivery(next_attempt_at=AT).after(Outcome.delivered, AT, RetryPolicy())

    assert delivery.status is Status.sent
    assert delivery.attempts == 1
    assert delivery.sent_at == AT
    assert delivery.next_attempt_at is None


def test_a_transient_failure_keeps_the_notification_pending_until_its_backoff_has_passed():
    delivery = Delivery(next_attempt_at=AT).after(Outcome.transient, AT, RetryPolicy(), "connection refused")

    assert delivery.status is Status.pending
    assert delivery.attempts == 1
    assert delivery.next_attempt_at == AT + timedelta(seconds=2)
    assert delivery.last_error == "connection refused"


def test_a_permanent_failure_fails_the_notification_at_once():
    delivery = Delivery(next_attempt_at=AT).after(Outcome.permanent, AT, RetryPolicy(max_attempts=8), "550 no user")

    assert delivery.status is Status.failed
    assert delivery.attempts == 1
    assert delivery.failed_at == AT
    assert delivery.last_error == "550 no user"
    assert delivery.next_attempt_at is None


def test_a_transient_failure_on_the_last_allowed_try_fails_the_notification():
    delivery = Delivery(attempts=7, next_attempt_at=AT).after(Outcome.transient, AT, RetryPolicy(max_attempts=8))

    assert delivery.status is Status.failed
    assert delivery.attempts == 8
    assert delivery.last_error == "transient"


def test_a_later_success_keeps_the_earlier_error_for_the_record():
    failed_once = Delivery(next_attempt_at=AT).after(Outcome.transient, AT, RetryPolicy(), "timeout")

    sent = failed_once.after(Outcome.delivered, AT + timedelta(seconds=3), RetryPolicy())

    assert (sent.status, sent.attempts, sent.last_error) == (Status.sent, 2, "timeout")


@pytest.mark.parametrize("outcome", list(Outcome))
def test_a_sent_or_failed_notification_is_never_tried_again(outcome):
    sent = Delivery(next_attempt_at=AT).after(Outcome.delivered, AT, RetryPolicy())
    failed = Delivery(next_attempt_at=AT).after(Outcome.permanent, AT, RetryPolicy())

    for final in (sent, failed):
        with pytest.raises(NotPending):
            final.after(outcome, AT, RetryPolicy())


def test_a_try_whose_outcome_is_unknown_is_final_whatever_tries_the_policy_has_left():
    claimed = Delivery(status=Status.sending, attempts=1, next_attempt_at=AT)

    unknown = claimed.after(Outcome.unknown, AT, RetryPolicy(max_attempts=8), "connection lost after DATA")

    assert (unknown.status, unknown.attempts, unknown.next_attempt_at) == (Status.unknown, 2, None)
    assert (unknown.failed_at, unknown.last_error) == (AT, "connection lost after DATA")
    with pytest.raises(NotPending):
        unknown.after(Outcome.delivered, AT, RetryPolicy())


def test_a_claimed_message_is_recorded_like_a_pending_one():
    claimed = Delivery(status=Status.sending, next_attempt_at=AT)

    assert claimed.after(Outcome.delivered, AT, RetryPolicy()).status is Status.sent
    retried = claimed.after(Outcome.transient, AT, RetryPolicy(), "451")
    assert (retried.status, retried.attempts, retried.next_attempt_at) == (Status.pending, 1, AT + timedelta(seconds=2))


def test_a_claimed_message_never_handed_over_goes_back_to_pending_as_it_was():
    claimed = Delivery(status=Status.sending, attempts=2, next_attempt_at=AT, last_error="451")

    assert claimed.given_back() == Delivery(status=Status.pending, attempts=2, next_attempt_at=AT, last_error="451")


@pytest.mark.parametrize("final", [Status.sent, Status.failed, Status.unknown])
def test_a_final_message_is_never_given_back(final):
    with pytest.raises(NotPending):
        Delivery(status=final).given_back()


def test_a_claim_starts_a_try_only_in_its_first_half_and_is_lost_after_its_timeout():
    claims = ClaimPolicy(timedelta(minutes=10))

    assert claims.may_start(AT, AT + timedelta(minutes=4, seconds=59))
    assert not claims.may_start(AT, AT + timedelta(minutes=5))
    assert claims.lost_before(AT + timedelta(minutes=10)) == AT
    with pytest.raises(ValueError):
        ClaimPolicy(timedelta(0))


def test_a_long_error_is_cut_to_what_the_failed_event_can_carry():
    delivery = Delivery(next_attempt_at=AT).after(Outcome.permanent, AT, RetryPolicy(), "x" * 5000)

    assert len(delivery.last_error) == MAX_ERROR_LENGTH


def test_a_retry_policy_allows_at_least_one_try():
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_backoff_doubles_from_two_seconds_up_to_fifteen_minutes():
    policy = RetryPolicy()

    assert [policy.delay_after(n).total_seconds() for n in range(1, 12)] == [
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        512,
        900,
        900,
    ]


@given(policy=policies, attempts=st.integers(min_value=0, max_value=10_000))
def test_backoff_never_shrinks_as_attempts_grow(policy, attempts):
    assert policy.delay_after(attempts) <= policy.delay_after(attempts + 1)


@given(policy=policies, attempts=st.integers(min_value=0, max_value=10_000))
def test_backoff_is_positive_and_never_exceeds_the_cap(policy, attempts):
    assert timedelta(0) < policy.delay_after(attempts) <= policy.cap


@given(policy=policies)
def test_a_message_that_never_gets_through_is_tried_exactly_max_attempts_times(policy):
    delivery, at, tries = Delivery(next_attempt_at=AT), AT, 0
    while delivery.status is Status.pending:
        at = delivery.next_attempt_at
        delivery = delivery.after(Outcome.transient, at, policy, "connection refused")
        tries += 1
        assert tries <= policy.max_attempts

    assert tries == policy.max_attempts
    assert delivery.status is Status.failed
    assert delivery.attempts == policy.max_attempts


@given(policy=policies, outcomes=st.lists(st.sampled_from(list(Outcome)), min_size=1, max_size=40))
def test_every_try_counts_and_only_a_pending_notification_waits_for_a_later_one(policy, outcomes):
    delivery, at = Delivery(next_attempt_at=AT), AT
    for outcome in outcomes:
        if delivery.status is not Status.pending:
            break
        before = delivery.attempts
        delivery = delivery.after(outcome, at, policy, "reason")
        assert delivery.attempts == before + 1 <= policy.max_attempts
        if delivery.status is Status.pending:
            assert delivery.next_attempt_at == at + policy.delay_after(delivery.attempts) > at
            at = delivery.next_attempt_at
        else:
            assert delivery.next_attempt_at is None
        assert (delivery.status is Status.sent) == (outcome is Outcome.delivered)
        assert (delivery.status is Status.unknown) == (outcome is Outcome.unknown)


def test_every_event_type_a_template_is_for_is_one_the_consumers_read():
    # The consumers skip, unread, every type not in CALLED_FOR: a type template_for answers for must be in it.
    named = set(re.findall(r"case (\w+)\(", inspect.getsource(domain.template_for)))
    assert named == {event.__name__ for event in domain.CALLED_FOR}
