"""The domain's decisions about messages: which event calls for which notice, to whom, in which language, with
what in it, and which events wait for their order's contact."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oms_contracts.inventory import (
    BackorderAllocated,
    BackorderAllocatedData,
    ShipmentReserved,
    ShipmentReservedData,
)
from oms_contracts.order import OrderPaid, StatusChanged, StatusChangedData
from oms_notifications.domain import (
    STAGES,
    Contact,
    Language,
    Rest,
    Template,
    contact_of,
    language_of,
    notification_id,
    tell,
    template_for,
)

ORDER = uuid.uuid4()
CONTACT = Contact(
    order_id=ORDER, email="ada@example.com", name="Ada", locale="de-DE", channel="web-eu", external_order_id="1001"
)


@pytest.mark.parametrize("locale", ["de", "de-DE", "de_AT", "de-CH", "de_de"])
def test_a_german_locale_gets_german(locale):
    assert language_of(locale) is Language.de


@pytest.mark.parametrize("locale", ["en", "en-GB", "en_DE", "fr", "fr-FR", "nl_BE", "da"])
def test_every_other_locale_gets_english(locale):
    assert language_of(locale) is Language.en


def test_an_accepted_order_calls_for_its_confirmation(order_accepted):
    assert template_for(order_accepted()) is Template.order_confirmation


def test_the_first_plan_with_more_than_one_shipment_calls_for_the_split_prewarning(fulfillment_planned):
    plan = fulfillment_planned(ORDER, [[("A", 1)], [("B", 1)], [("C", 2)]])

    assert template_for(plan) is Template.split_prewarning


def test_a_first_plan_with_one_shipment_calls_for_no_prewarning_even_with_backorders(fulfillment_planned):
    # Its backordered lines get the backorder notice (from inventory); one parcel is no split to warn of.
    plan = fulfillment_planned(ORDER, [[("A", 1), ("B", 2)]], backordered=[("C", 1)])

    assert template_for(plan) is None


def test_a_plan_that_ships_nothing_calls_for_no_prewarning(fulfillment_planned):
    assert template_for(fulfillment_planned(ORDER, [], backordered=[("A", 1)])) is None


def test_a_replan_never_warns_again_however_many_shipments_it_has(fulfillment_planned):
    replan = fulfillment_planned(ORDER, [[("A", 1)], [("B", 1)]], attempt=2)

    assert template_for(replan) is None


@given(shipments=st.integers(min_value=0, max_value=6), attempt=st.integers(min_value=1, max_value=5))
def test_only_the_first_plan_with_more_than_one_shipment_warns(fulfillment_planned, shipments, attempt):
    plan = fulfillment_planned(ORDER, [[(f"SKU-{n}", 1)] for n in range(shipments)], attempt=attempt)

    warns = template_for(plan) is Template.split_prewarning

    assert warns == (attempt == 1 and shipments > 1)


def test_a_queued_backorder_calls_for_the_backorder_notice(inventory_backorder_queued):
    assert template_for(inventory_backorder_queued(ORDER)) is Template.backorder_notice


def test_each_parcel_shipped_calls_for_a_shipped_mail(fulfillment_shipped):
    assert template_for(fulfillment_shipped(ORDER)) is Template.shipped


def test_each_delivery_calls_for_a_delivered_mail(fulfillment_delivered):
    assert template_for(fulfillment_delivered(ORDER)) is Template.delivered


def test_other_order_and_allocation_events_call_for_nothing(order_accepted):
    line = {"line_id": "1", "sku": "A", "quantity": 1}
    changed = StatusChanged(
        source="/oms/order",
        data=StatusChangedData(
            order_id=ORDER, from_status=None, to_status="pending", actor="order", at=datetime.now(UTC)
        ),
    )
    accepted = order_accepted().data
    paid = OrderPaid.model_validate(
        {
            "source": "/oms/order",
            "data": {
                **accepted.model_dump(mode="json", include={"order_id", "channel", "placed_at", "currency"}),
                "amount": "52.47",
                "lines": [line],
                "shipping_address": accepted.shipping_address.model_dump(mode="json"),
                "shipping_method": "standard",
                "options": {},
            },
        }
    )
    reserved = ShipmentReserved(
        source="/oms/inventory",
        data=ShipmentReservedData(
            order_id=ORDER,
            shipment_id=uuid.uuid4(),
            source_code="WH-1",
            lines=[line],
            plan_id=uuid.uuid4(),
            ship_by=date(2026, 12, 1),
        ),
    )
    allocated = BackorderAllocated(
        source="/oms/inventory",
        data=BackorderAllocatedData(order_id=ORDER, shipment_id=uuid.uuid4(), source_code="WH-1", lines=[line]),
    )

    for event in (changed, paid, reserved, allocated):
        assert template_for(event) is None, event.type
    assert tell([changed, paid, reserved, allocated], {}).notices == []


def test_the_confirmation_goes_to_the_customer_its_order_names_without_a_known_contact(order_accepted):
    event = order_accepted(email="grace@example.org", locale="de_AT")

    told = tell([event], {})

    [notice] = told.notices
    assert (notice.recipient, notice.locale, notice.language) == ("grace@example.org", "de_AT", Language.de)
    assert told.awaiting_contact == []


def test_later_messages_go_to_the_contact_remembered_from_the_acceptance(
    fulfillment_planned, inventory_backorder_queued, fulfillment_shipped, fulfillment_delivered
):
    events = [
        fulfillment_planned(ORDER),
        inventory_backorder_queued(ORDER),
        fulfillment_shipped(ORDER),
        fulfillment_delivered(ORDER),
    ]

    told = tell(events, {ORDER: CONTACT})

    assert [n.template for n in told.notices] == [
        Template.split_prewarning,
        Template.backorder_notice,
        Template.shipped,
        Template.delivered,
    ]
    for notice, event in zip(told.notices, events, strict=True):
        assert (notice.recipient, notice.recipient_name, notice.locale) == ("ada@example.com", "Ada", "de-DE")
        assert notice.order_id == ORDER
        assert notice.cause_event_id == event.id
        assert notice.cause_at == event.time
        assert notice.notification_id == notification_id(event.id, notice.template)
        assert notice.values["order_number"] == "1001"
        assert notice.values["customer_name"] == "Ada"
    assert told.awaiting_contact == []


def test_an_event_about_an_order_without_a_known_contact_waits_for_it(
    fulfillment_planned, inventory_backorder_queued, fulfillment_shipped
):
    plan, queued, shipped = (
        fulfillment_planned(ORDER),
        inventory_backorder_queued(ORDER),
        fulfillment_shipped(ORDER),
    )
    other = uuid.uuid4()
    known = fulfillment_shipped(other)

    told = tell([plan, queued, shipped, known], {other: CONTACT})

    assert [(a.event, a.template, a.order_id) for a in told.awaiting_contact] == [
        (plan, Template.split_prewarning, ORDER),
        (queued, Template.backorder_notice, ORDER),
        (shipped, Template.shipped, ORDER),
    ]
    assert [n.cause_event_id for n in told.notices] == [known.id]


def test_an_event_that_calls_for_nothing_never_waits_for_a_contact(fulfillment_planned):
    told = tell([fulfillment_planned(ORDER, [[("A", 1)]])], {})

    assert told.notices == [] and told.awaiting_contact == []


def test_the_contact_of_an_acceptance_in_the_same_batch_is_used_for_its_later_events(
    order_accepted, fulfillment_shipped
):
    accepted = order_accepted("77", locale="de")
    contact = contact_of(accepted.data)

    told = tell([accepted, fulfillment_shipped(contact.order_id)], {contact.order_id: contact})

    assert [n.template for n in told.notices] == [Template.order_confirmation, Template.shipped]
    assert told.notices[1].values["order_number"] == "77"


def test_an_orders_story_goes_confirmation_prewarning_backorder_then_parcels():
    assert (
        STAGES[Template.order_confirmation]
        < STAGES[Template.split_prewarning]
        < STAGES[Template.backorder_notice]
        < STAGES[Template.shipped]
    )
    # Parcels shipped and delivered go in the order they happened.
    assert STAGES[Template.shipped] == STAGES[Template.delivered]


def test_prewarning_lists_each_parcel_with_its_items_and_delivery_earliest_first_then_what_follows(
    fulfillment_planned,
):
    plan = fulfillment_planned(
        ORDER,
        [[("LATE", 1)], [("EARLY-A", 2), ("EARLY-B", 1)]],
        backordered=[("WAITS", 3)],
        unfulfillable=[("GONE", 1)],
        deliveries=[date(2026, 12, 9), date(2026, 12, 2)],
    )

    [notice] = tell([plan], {ORDER: CONTACT}).notices

    assert notice.values["parcels"] == [
        {
            "contents": [{"sku": "EARLY-A", "quantity": 2}, {"sku": "EARLY-B", "quantity": 1}],
            "estimated_delivery": date(2026, 12, 2),
        },
        {"contents": [{"sku": "LATE", "quantity": 1}], "estimated_delivery": date(2026, 12, 9)},
    ]
    assert notice.values["to_follow"] == [{"sku": "WAITS", "quantity": 3}]
    assert notice.values["not_supplied"] == [{"sku": "GONE", "quantity": 1}]


def test_backorder_notice_names_each_waiting_item_with_its_expected_date_when_known(inventory_backorder_queued):
    queued = inventory_backorder_queued(ORDER, [("A", 2, date(2026, 12, 1)), ("B", 1, None)])

    [notice] = tell([queued], {ORDER: CONTACT}).notices

    assert notice.values["items"] == [
        {"sku": "A", "quantity": 2, "expected": date(2026, 12, 1)},
        {"sku": "B", "quantity": 1, "expected": None},
    ]


def test_shipped_mail_has_the_parcels_items_what_is_still_to_come_and_its_tracking(fulfillment_shipped):
    parcel = fulfillment_shipped(ORDER, [("A", 1)], [("B", 2), ("C", 1)], tracking_url="https://track.example/1")

    [notice] = tell([parcel], {ORDER: CONTACT}).notices

    assert notice.values["items"] == [{"sku": "A", "quantity": 1}]
    assert notice.values["to_come"] == [{"sku": "B", "quantity": 2}, {"sku": "C", "quantity": 1}]
    assert (notice.values["carrier"], notice.values["service"]) == ("DHL", "Paket")
    assert notice.values["tracking_number"] == "00340434161094042557"
    assert notice.values["tracking_url"] == "https://track.example/1"


@pytest.mark.parametrize(
    ("status", "rest"),
    [
        ("delivered", Rest.nothing),
        ("fulfilled", Rest.on_its_way),
        ("partially_fulfilled", Rest.to_ship),
        ("awaiting_fulfillment", Rest.to_ship),
    ],
)
def test_delivered_mail_says_what_is_left_of_the_order_by_its_status_after_the_delivery(
    fulfillment_delivered, status, rest
):
    [notice] = tell([fulfillment_delivered(ORDER, status=status)], {ORDER: CONTACT}).notices

    assert notice.values["rest"] == rest.value
    assert notice.values["items"] == [{"sku": "SKU-RED-MUG", "quantity": 2}]
