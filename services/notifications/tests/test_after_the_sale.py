"""The domain's decisions after the sale: which cancellation, refund, return or refusal calls for which message, one
"your order is cancelled" per cancellation, the customer's signed wait-or-cancel link, and the operators' alerts."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oms_notifications.domain import (
    ORDER_CANCELLED_TEMPLATES,
    STAGES,
    Audience,
    Contact,
    Links,
    Template,
    alert,
    tell,
    template_for,
)
from oms_runtime.links import LinkCheck, verify

ORDER = uuid.uuid4()
CONTACT = Contact(
    order_id=ORDER,
    email="ada@example.com",
    name="Ada",
    locale="en",
    channel="web-eu",
    external_order_id="1001",
    line_skus={"1": "SKU-RED-MUG", "2": "SKU-TEA-500G"},
)
OPERATORS = ["ops@example.com", "oncall@example.com"]
KEY = b"k" * 32
LINKS = Links("https://shop.example/oms/", KEY, timedelta(days=14))


def told(*events, contacts=None, links=LINKS):
    return tell(list(events), {ORDER: CONTACT} if contacts is None else contacts, links)


# Which event calls for which message.


def test_cancelled_lines_with_something_left_call_for_the_lines_cancelled_mail(order_lines_cancelled):
    assert template_for(order_lines_cancelled(ORDER, status="awaiting_fulfillment")) is Template.lines_cancelled
    # An older event that does not say the status after it cannot be the order's end.
    assert template_for(order_lines_cancelled(ORDER, status=None)) is Template.lines_cancelled


def test_cancelled_lines_that_leave_nothing_of_the_order_call_for_order_cancelled_instead(order_lines_cancelled):
    assert template_for(order_lines_cancelled(ORDER, status="cancelled")) is Template.order_cancelled


def test_units_given_back_to_inventory_after_their_cancellation_call_for_no_mail(order_lines_cancelled):
    # The order service gives back what a plan placed after the units were cancelled: same units, nothing refunded,
    # its own actor, no cancellation behind it. The customer was told of the cancellation itself.
    for status in ("awaiting_fulfillment", "cancelled"):
        give_back = order_lines_cancelled(
            ORDER,
            refund="0.00",
            actor="service:order",
            status=status,
            reason="cancelled before it was placed at WH-EAST: given back",
            units=[("2", "SKU-TEA-500G", 1, "reserved")],
        )
        assert template_for(give_back) is None
        assert told(give_back).notices == [] and told(give_back).awaiting_contact == []
    # Anyone else's cancellation is news even with nothing refunded (an unpaid order's).
    assert template_for(order_lines_cancelled(ORDER, refund="0.00", actor="channel:web-eu:customer")) is (
        Template.lines_cancelled
    )


def test_a_cancellation_caused_by_a_failed_payment_calls_for_payment_failed(order_status_changed):
    assert template_for(order_status_changed(ORDER, "payment_processing")) is Template.payment_failed
    assert template_for(order_status_changed(ORDER, "pending")) is Template.payment_failed


@pytest.mark.parametrize("from_status", ["pending", "payment_processing"])
@pytest.mark.parametrize("cause_type", ["oms.channel.cancellation_requested.v1", "http", None])
def test_a_cancellation_before_payment_told_only_by_a_status_change_calls_for_order_cancelled(
    from_status, cause_type, order_status_changed
):
    change = order_status_changed(ORDER, from_status, note="cancelled: changed my mind", cause_type=cause_type)

    assert template_for(change) is Template.order_cancelled


@pytest.mark.parametrize("from_status", ["paid", "awaiting_fulfillment", "partially_fulfilled"])
def test_a_paid_orders_status_change_to_cancelled_calls_for_nothing_its_last_lines_cancelled_tells_it(
    from_status, order_status_changed
):
    change = order_status_changed(
        ORDER, from_status, note="cancelled", cause_type="oms.channel.cancellation_requested.v1"
    )

    assert template_for(change) is None


@pytest.mark.parametrize(
    ("from_status", "to_status"), [("pending", "payment_processing"), ("paid", "awaiting_fulfillment")]
)
def test_a_status_change_other_than_a_cancellation_calls_for_nothing(from_status, to_status, order_status_changed):
    assert template_for(order_status_changed(ORDER, from_status, to_status, note=None, cause_type=None)) is None


def test_a_refund_calls_for_the_refund_mail_and_a_refund_of_nothing_for_none(order_refund_issued):
    assert template_for(order_refund_issued(ORDER, "7.50")) is Template.refund_issued
    assert template_for(order_refund_issued(ORDER, "0.00")) is None


@pytest.mark.parametrize(
    ("requested_by", "told_by_mail"),
    [
        ("customer:c-1", True),
        ("customer:ada@example.com", True),
        ("channel:web-eu", True),
        ("channel:web-eu:svc-account", True),
        ("cs-ana", False),
        ("ana", False),
        ("admin:root", False),
        ("http", False),
    ],
)
def test_a_refused_cancellation_is_mailed_only_when_the_customer_or_a_channel_asked(
    requested_by, told_by_mail, order_cancellation_rejected
):
    refusal = order_cancellation_rejected(ORDER, requested_by=requested_by)

    expected = Template.cancellation_refused if told_by_mail else None
    assert template_for(refusal) is expected
    assert [n.template for n in told(refusal).notices] == ([Template.cancellation_refused] if told_by_mail else [])


def test_every_message_after_the_sale_goes_after_the_parcels_and_a_refund_after_what_it_pays_for():
    after_sale = [
        Template.lines_cancelled,
        Template.order_cancelled,
        Template.payment_failed,
        Template.cancellation_refused,
        Template.return_processed,
    ]
    assert {STAGES[t] for t in after_sale} == {STAGES[Template.shipped]}
    assert all(STAGES[Template.refund_issued] > STAGES[t] for t in after_sale)


# One "your order is cancelled" per cancellation.


def test_a_paid_orders_whole_cancellation_is_told_once_by_its_lines_cancelled_with_the_refund(
    order_lines_cancelled, order_status_changed
):
    last_lines = order_lines_cancelled(
        ORDER, [("1", 2), ("2", 1)], refund="52.47", grand_total="0.00", status="cancelled"
    )
    change = order_status_changed(ORDER, "awaiting_fulfillment", note="cancelled: customer asked", cause_type="http")

    for events in ([last_lines, change], [change, last_lines]):
        [notice] = told(*events).notices
        assert notice.template is Template.order_cancelled
        assert notice.cause_event_id == last_lines.id
        assert notice.values["refund"] == Decimal("52.47")


def test_an_unpaid_orders_cancellation_told_both_ways_makes_one_cancelled_mail_the_first(
    order_lines_cancelled, order_status_changed
):
    change = order_status_changed(ORDER, "pending", note="cancelled: changed my mind", cause_type="http")
    last_lines = order_lines_cancelled(
        ORDER, [("1", 2), ("2", 1)], refund="0.00", grand_total="0.00", status="cancelled"
    )

    [notice] = told(change, last_lines).notices

    assert (notice.template, notice.cause_event_id) == (Template.order_cancelled, change.id)


events_of_one_cancellation = st.lists(
    st.sampled_from(["lines_left", "lines_none_left", "change_paid", "change_unpaid", "payment_failed", "refund"]),
    max_size=8,
)


@given(kinds=events_of_one_cancellation)
def test_however_the_events_of_an_orders_cancellation_come_the_customer_is_told_it_is_cancelled_at_most_once(
    kinds, order_lines_cancelled, order_status_changed, order_refund_issued
):
    build = {
        "lines_left": lambda: order_lines_cancelled(ORDER, status="awaiting_fulfillment"),
        "lines_none_left": lambda: order_lines_cancelled(ORDER, status="cancelled"),
        "change_paid": lambda: order_status_changed(ORDER, "paid", note="cancelled", cause_type="http"),
        "change_unpaid": lambda: order_status_changed(ORDER, "pending", note="cancelled", cause_type="http"),
        "payment_failed": lambda: order_status_changed(ORDER, "payment_processing"),
        "refund": lambda: order_refund_issued(ORDER),
    }

    notices = told(*(build[kind]() for kind in kinds)).notices

    assert sum(n.template in ORDER_CANCELLED_TEMPLATES for n in notices) <= 1
    if {"lines_none_left", "change_unpaid", "payment_failed"} & set(kinds):
        assert sum(n.template in ORDER_CANCELLED_TEMPLATES for n in notices) == 1


def test_a_cancelled_mail_waits_for_its_contact_like_every_customer_message(order_status_changed):
    change = order_status_changed(ORDER, "payment_processing")

    result = told(change, contacts={})

    assert result.notices == []
    assert [(a.event, a.template) for a in result.awaiting_contact] == [(change, Template.payment_failed)]


# What each message says.


def test_lines_cancelled_names_the_items_their_refund_the_new_total_and_why(order_lines_cancelled):
    event = order_lines_cancelled(ORDER, [("2", 1)], refund="7.50", grand_total="44.97", reason="out of stock for good")

    [notice] = told(event).notices

    assert notice.values["items"] == [{"sku": "SKU-TEA-500G", "quantity": 1}]
    assert (notice.values["refund"], notice.values["grand_total"]) == (Decimal("7.50"), Decimal("44.97"))
    assert (notice.values["currency"], notice.values["reason"]) == ("EUR", "out of stock for good")
    assert notice.recipient == "ada@example.com"


def test_cancelled_lines_are_named_by_the_sku_of_their_units_else_of_the_accepted_order_else_by_line_id(
    order_lines_cancelled,
):
    event = order_lines_cancelled(
        ORDER, [("1", 1), ("2", 1), ("9", 1)], units=[("1", "SKU-FROM-UNITS", 1, "backordered")]
    )
    remembered_before_skus = Contact(**{**_fields(CONTACT), "line_skus": {}})

    [notice] = told(event).notices
    [without] = told(event, contacts={ORDER: remembered_before_skus}).notices

    assert [i["sku"] for i in notice.values["items"]] == ["SKU-FROM-UNITS", "SKU-TEA-500G", "#9"]
    assert [i["sku"] for i in without.values["items"]] == ["SKU-FROM-UNITS", "#2", "#9"]


def _fields(contact: Contact) -> dict:
    return {name: getattr(contact, name) for name in contact.__slots__}


def test_order_cancelled_from_a_status_change_gives_the_reason_without_the_notes_heading_and_no_refund(
    order_status_changed,
):
    change = order_status_changed(ORDER, "pending", note="cancelled: changed my mind", cause_type="http")

    [notice] = told(change).notices

    assert notice.values["reason"] == "changed my mind"
    assert notice.values["refund"] is None
    assert notice.values["items"] == []


@pytest.mark.parametrize(
    ("note", "reason"),
    [
        ("payment failed: card declined", "card declined"),
        ("Payment failed: insufficient funds", "insufficient funds"),
        ("card declined", "card declined"),
        ("3-D Secure: not completed", "3-D Secure: not completed"),
        (None, None),
    ],
)
def test_payment_failed_gives_the_providers_reason_from_the_note(note, reason, order_status_changed):
    [notice] = told(order_status_changed(ORDER, "payment_processing", note=note)).notices

    assert notice.template is Template.payment_failed
    assert notice.values == {"order_number": "1001", "customer_name": "Ada", "reason": reason}


def test_a_refused_cancellation_names_the_items_that_stay_and_why(order_cancellation_rejected):
    refusal = order_cancellation_rejected(ORDER, [("1", 2)], reason="already shipped")

    [notice] = told(refusal).notices

    assert notice.values["items"] == [{"sku": "SKU-RED-MUG", "quantity": 2}]
    assert notice.values["reason"] == "already shipped"


def test_a_processed_return_names_each_item_with_its_condition_and_the_refund(order_lines_returned):
    event = order_lines_returned(ORDER, [("1", "SKU-RED-MUG", 1, "resellable"), ("2", "SKU-TEA-500G", 1, "damaged")])

    [notice] = told(event).notices

    assert notice.template is Template.return_processed
    assert notice.values["items"] == [
        {"sku": "SKU-RED-MUG", "quantity": 1, "condition": "resellable"},
        {"sku": "SKU-TEA-500G", "quantity": 1, "condition": "damaged"},
    ]
    assert (notice.values["refund"], notice.values["currency"]) == (Decimal("27.49"), "EUR")


def test_a_refund_mail_says_how_much_what_for_and_how_much_in_all(order_refund_issued):
    [notice] = told(order_refund_issued(ORDER, "7.50", refunded_total="35.00", cause="return")).notices

    assert (notice.values["amount"], notice.values["refunded_total"]) == (Decimal("7.50"), Decimal("35.00"))
    assert (notice.values["cause"], notice.values["currency"]) == ("return", "EUR")


# The customer's signed wait-or-cancel link.


def test_the_backorder_notice_carries_a_link_the_order_service_accepts_for_exactly_its_lines(
    inventory_backorder_queued,
):
    queued = inventory_backorder_queued(ORDER, [("SKU-A", 1, None), ("SKU-B", 2, None)])

    [notice] = told(queued).notices

    url = urlsplit(notice.values["cancel_url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"https://shop.example/oms/customer/orders/{ORDER}/backorders"
    params = dict(parse_qsl(url.query))
    assert verify(KEY, ORDER, params, now=queued.time) == (LinkCheck.valid, ["1", "2"])
    assert notice.values["cancel_until"] == queued.time + timedelta(days=14)


def test_the_link_expires_after_its_lifetime_and_fails_for_another_order_or_key(inventory_backorder_queued):
    queued = inventory_backorder_queued(ORDER)
    [notice] = told(queued).notices
    params = dict(parse_qsl(urlsplit(notice.values["cancel_url"]).query))

    assert verify(KEY, ORDER, params, now=queued.time + timedelta(days=14))[0] is LinkCheck.expired
    assert verify(KEY, uuid.uuid4(), params, now=queued.time)[0] is LinkCheck.forged
    assert verify(b"x" * 32, ORDER, params, now=queued.time)[0] is LinkCheck.forged


def test_the_same_queued_backorder_always_makes_the_same_link(inventory_backorder_queued):
    queued = inventory_backorder_queued(ORDER)

    assert told(queued).notices[0].values["cancel_url"] == told(queued).notices[0].values["cancel_url"]


def test_without_a_link_key_the_backorder_notice_has_no_link(inventory_backorder_queued):
    [notice] = told(inventory_backorder_queued(ORDER), links=Links()).notices

    assert (notice.values["cancel_url"], notice.values["cancel_until"]) == (None, None)


# The operators' alerts.


def test_a_stuck_order_alerts_every_operator_in_one_message_with_the_orders_single_view(order_stuck):
    fulfillment = uuid.uuid4()
    event = order_stuck(ORDER, kind="accepted_not_shipped", age_hours=26.5, fulfillment_id=fulfillment)

    [notice] = alert([event], OPERATORS, LINKS, {ORDER: CONTACT})

    assert notice.template is Template.order_stuck
    assert notice.audience is Audience.operators
    assert notice.recipient == "ops@example.com, oncall@example.com"
    assert (notice.order_id, notice.cause_event_id, notice.locale) == (ORDER, event.id, "en")
    assert notice.values["order_url"] == f"https://shop.example/oms/orders/{ORDER}"
    assert (notice.values["kind"], notice.values["age_hours"]) == ("accepted_not_shipped", 26.5)
    assert notice.values["fulfillment_id"] == str(fulfillment)
    assert (notice.values["order_number"], notice.values["channel"]) == ("1001", "web-eu")
    assert notice.values["since"] == event.time - timedelta(hours=26.5)


def test_an_alert_about_an_order_without_a_known_contact_goes_out_anyway(order_stuck):
    [notice] = alert([order_stuck(ORDER)], OPERATORS, LINKS, {})

    assert notice.values["order_number"] is None
    assert notice.values["order_id"] == str(ORDER)


def test_low_stock_alerts_the_operators_about_no_order(inventory_low_stock):
    event = inventory_low_stock("SKU-RED-MUG", "WH-1", available=2, threshold=5)

    [notice] = alert([event], OPERATORS, LINKS, {})

    assert (notice.template, notice.order_id, notice.audience) == (Template.low_stock, None, Audience.operators)
    assert notice.values == {"sku": "SKU-RED-MUG", "source_code": "WH-1", "available": 2, "threshold": 5}


def test_no_operator_configured_means_no_alert(order_stuck, inventory_low_stock):
    assert alert([order_stuck(ORDER), inventory_low_stock()], [], LINKS, {}) == []


def test_stock_level_changes_alert_nobody(stock_level_changed):
    assert template_for(stock_level_changed()) is None
    assert alert([stock_level_changed()], OPERATORS, LINKS, {}) == []


def test_alerts_are_never_customer_messages_and_never_wait_for_a_contact(order_stuck, inventory_low_stock):
    result = tell([order_stuck(ORDER), inventory_low_stock()], {}, LINKS)

    assert result.notices == [] and result.awaiting_contact == []
