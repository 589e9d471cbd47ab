"""Every event type: it survives the wire, travels on its topic under its key, and honours its published schema."""

import json
import uuid

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from oms_contracts import ALL_EVENTS, FIXED_TOPICS, channel, fulfillment_requests, order_id_for
from oms_contracts.fulfillment import ReasonCode
from oms_contracts.order import OrderRejected
from oms_contracts.schemas import checked_in_schemas
from oms_contracts.topics import CHANNEL_ORDERS, ORDER_EVENTS, topic_for

ORDER_ID = str(order_id_for("web-eu", "1001"))
TOPICS = {topic.name: topic for topic in (*FIXED_TOPICS, fulfillment_requests("WH-EAST"))}

# DESIGN.md "Topics", written out independently of oms_contracts.topics.
TOPIC_OF = {
    "oms.channel.order_submitted.v1": "oms.channel.orders.v1",
    "oms.channel.payment_authorized.v1": "oms.channel.orders.v1",
    "oms.channel.payment_captured.v1": "oms.channel.orders.v1",
    "oms.channel.payment_failed.v1": "oms.channel.orders.v1",
    "oms.channel.cancellation_requested.v1": "oms.channel.orders.v1",
    "oms.channel.return_received.v1": "oms.channel.orders.v1",
    "oms.order.accepted.v1": "oms.order.events.v1",
    "oms.order.rejected.v1": "oms.order.events.v1",
    "oms.order.status_changed.v1": "oms.order.events.v1",
    "oms.order.paid.v1": "oms.order.events.v1",
    "oms.order.lines_cancelled.v1": "oms.order.events.v1",
    "oms.order.refund_issued.v1": "oms.order.events.v1",
    "oms.order.stuck.v1": "oms.order.events.v1",
    "oms.order.fulfillment_shipped.v1": "oms.order.events.v1",
    "oms.order.fulfillment_delivered.v1": "oms.order.events.v1",
    "oms.order.cancellation_rejected.v1": "oms.order.events.v1",
    "oms.order.replan_requested.v1": "oms.order.events.v1",
    "oms.order.lines_returned.v1": "oms.order.events.v1",
    "oms.routing.fulfillment_planned.v1": "oms.routing.plans.v1",
    "oms.inventory.shipment_reserved.v1": "oms.inventory.allocations.v1",
    "oms.inventory.reservation_rejected.v1": "oms.inventory.allocations.v1",
    "oms.inventory.backorder_queued.v1": "oms.inventory.allocations.v1",
    "oms.inventory.backorder_allocated.v1": "oms.inventory.allocations.v1",
    "oms.inventory.stock_received.v1": "oms.inventory.receipts.v1",
    "oms.inventory.stock_counted.v1": "oms.inventory.receipts.v1",
    "oms.inventory.receipt_expected.v1": "oms.inventory.receipts.v1",
    "oms.inventory.stock_level_changed.v1": "oms.inventory.stock.v1",
    "oms.inventory.low_stock.v1": "oms.inventory.stock.v1",
    "oms.fulfillment.requested.v1": "oms.fulfillment.requests.WH-EAST.v1",
    "oms.fulfillment.cancel_requested.v1": "oms.fulfillment.requests.WH-EAST.v1",
    "oms.fulfillment.accepted.v1": "oms.fulfillment.updates.v1",
    "oms.fulfillment.rejected.v1": "oms.fulfillment.updates.v1",
    "oms.fulfillment.shipped.v1": "oms.fulfillment.updates.v1",
    "oms.fulfillment.delivered.v1": "oms.fulfillment.updates.v1",
    "oms.fulfillment.cancelled.v1": "oms.fulfillment.updates.v1",
    "oms.routing.source_upserted.v1": "oms.routing.network.v1",
    "oms.routing.source_deactivated.v1": "oms.routing.network.v1",
    "oms.routing.rule_chain_set.v1": "oms.routing.network.v1",
    "oms.notification.sent.v1": "oms.notifications.v1",
    "oms.notification.failed.v1": "oms.notifications.v1",
}

# The key of each family: what keeps one order's (or one SKU's, one source's) events in one partition.
KEY_OF = {
    "oms.channel.": "web-eu:1001",
    "oms.order.": ORDER_ID,
    "oms.routing.fulfillment_planned.v1": ORDER_ID,
    "oms.routing.source_": "WH-EAST",
    "oms.routing.rule_chain_set.v1": "rule-chain:web-eu",
    "oms.inventory.shipment_reserved.v1": ORDER_ID,
    "oms.inventory.reservation_rejected.v1": ORDER_ID,
    "oms.inventory.backorder_": ORDER_ID,
    "oms.inventory.stock_": "SKU-1",
    "oms.inventory.low_stock.v1": "SKU-1",
    "oms.inventory.receipt_expected.v1": "SKU-1",
    "oms.fulfillment.": ORDER_ID,
    "oms.notification.": ORDER_ID,
}

EVENTS = pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.TYPE)


def test_every_event_type_of_the_design_exists_and_has_an_example(example_types):
    assert {e.TYPE for e in ALL_EVENTS} == set(TOPIC_OF)
    assert example_types == set(TOPIC_OF), "add an example of the new event type to contracts/tests/conftest.py"


@EVENTS
def test_an_event_round_trips_through_bytes_and_its_topic(event, make_example):
    original = make_example(event)
    topic = TOPICS[topic_for(original)]

    parsed = topic.parse(original.to_bytes())

    assert type(parsed) is event
    assert parsed == original
    assert parsed.to_bytes() == original.to_bytes()


@EVENTS
def test_an_event_is_published_on_the_topic_of_its_family(event, make_example):
    assert topic_for(make_example(event)) == TOPIC_OF[event.TYPE]


@EVENTS
def test_an_event_is_keyed_by_what_keeps_its_family_in_order(event, make_example):
    [expected] = [key for prefix, key in KEY_OF.items() if event.TYPE.startswith(prefix)]
    assert make_example(event).key() == expected


def test_a_rejection_without_an_order_is_keyed_by_its_own_id(make_document):
    rejected = OrderRejected.model_validate(
        make_document("oms.order.rejected.v1", order_id=None, channel=None, external_order_id=None)
    )
    assert rejected.key() == str(rejected.id)


def test_a_notification_without_an_order_is_keyed_by_the_notification(make_document):
    document = make_document("oms.notification.sent.v1", order_id=None)
    sent = TOPICS["oms.notifications.v1"].parse(json.dumps(document))
    assert sent.key() == document["data"]["notification_id"]


def test_an_event_is_refused_on_a_topic_that_does_not_carry_its_type(make_document):
    with pytest.raises(ValidationError) as refused:
        CHANNEL_ORDERS.parse(json.dumps(make_document("oms.order.paid.v1")))
    assert refused.value.errors()[0]["type"] == "union_tag_invalid"


def test_the_wire_form_is_a_structured_cloudevent(make_example):
    [paid] = [e for e in ALL_EVENTS if e.TYPE == "oms.order.paid.v1"]
    wire = json.loads(make_example(paid).to_bytes())
    assert set(wire) == {"specversion", "id", "type", "source", "time", "subject", "datacontenttype", "data"}
    assert wire["specversion"] == "1.0" and wire["datacontenttype"] == "application/json"
    assert wire["time"] == "2026-11-22T10:00:00Z", "times go out as UTC with a Z"
    assert wire["data"]["amount"] == "44.97", "money goes out as a decimal string"
    assert uuid.UUID(wire["id"])


def test_times_sent_with_an_offset_are_held_and_sent_as_utc(make_example):
    [stuck] = [e for e in ALL_EVENTS if e.TYPE == "oms.order.stuck.v1"]
    event = make_example(stuck)
    assert json.loads(event.to_bytes())["data"]["since"] == "2026-11-21T08:00:00Z"
    assert ORDER_EVENTS.parse(event.to_bytes()).data.since == event.data.since


@pytest.fixture(scope="module")
def validators():
    return {
        type_: Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        for type_, schema in checked_in_schemas().items()
    }


def test_the_checked_in_schemas_are_valid_draft_2020_12(validators):
    for validator in validators.values():
        Draft202012Validator.check_schema(validator.schema)


@EVENTS
def test_an_event_validates_against_its_checked_in_json_schema(event, make_example, validators):
    wire = json.loads(make_example(event).to_bytes())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validators[event.TYPE].iter_errors(wire)]
    assert errors == []


def _without(document, *path):
    node = document
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return document


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d["data"]["lines"][0].update(quantity=0), "data/lines/0/quantity"),
        (lambda d: d["data"]["lines"][0].update(quantity="2"), "data/lines/0/quantity"),
        (lambda d: d["data"]["lines"][0].update(quantity=10**9 + 1), "data/lines/0/quantity"),
        (lambda d: d["data"].update(grand_total=44.97), "data/grand_total"),
        (lambda d: d["data"].update(grand_total="44.97001"), "data/grand_total"),
        (lambda d: d["data"].update(currency="eur"), "data/currency"),
        (lambda d: d["data"].update(lines=[]), "data/lines"),
        (lambda d: d["data"]["customer"].update(email="not-an-address"), "data/customer/email"),
        (lambda d: _without(d, "data", "shipping_address"), "data"),
        (lambda d: d.update(type="oms.channel.order_submitted.v2"), "type"),
    ],
)
def test_an_invalid_submission_fails_its_json_schema_where_it_is_wrong(change, where, make_document, validators):
    document = make_document("oms.channel.order_submitted.v1")
    change(document)
    errors = list(validators["oms.channel.order_submitted.v1"].iter_errors(document))
    assert errors, "the schema accepted it"
    assert {"/".join(map(str, e.absolute_path)) for e in errors} == {where}
    with pytest.raises(ValidationError) as refused:  # the model refuses it where the schema does
        channel.OrderSubmitted.model_validate(document)
    found = {".".join(map(str, e["loc"])) for e in refused.value.errors()}
    # At the same place, or under it: for a missing field the schema names its parent.
    assert any(f"{place}.".startswith(f"{where.replace('/', '.')}.") for place in found), found


@EVENTS
def test_an_event_read_from_its_topic_without_an_id_is_invalid_not_given_a_new_one(event, make_example):
    # CloudEvents require an id, and the inbox knows an event by it: an id made up at each read would make every
    # redelivery of such a record a new event, applied again.
    document = json.loads(make_example(event).to_bytes())
    del document["id"]
    with pytest.raises(ValidationError) as refused:
        TOPICS[TOPIC_OF[event.TYPE]].parse(json.dumps(document))
    [error] = refused.value.errors()
    assert (error["type"], error["loc"][-1]) == ("missing", "id")


def test_an_event_made_in_code_without_an_id_still_gets_a_new_one(make_example):
    [paid] = [e for e in ALL_EVENTS if e.TYPE == "oms.order.paid.v1"]
    made = paid.model_validate({k: v for k, v in make_example(paid).model_dump(by_alias=True).items() if k != "id"})
    assert isinstance(made.id, uuid.UUID)


@pytest.mark.parametrize("type_", ["oms.fulfillment.rejected.v1", "oms.fulfillment.cancelled.v1"])
def test_a_source_update_without_a_reason_code_means_other_and_an_unknown_one_fails_where_it_is_wrong(
    type_, make_document, validators
):
    event = {e.TYPE: e for e in ALL_EVENTS}[type_]
    document = make_document(type_)
    document["data"].pop("reason_code", None)
    assert event.model_validate(document).data.reason_code is ReasonCode.other  # a source from before the field

    document["data"]["reason_code"] = "lost_in_space"
    with pytest.raises(ValidationError) as refused:
        event.model_validate(document)
    assert [e["loc"] for e in refused.value.errors()] == [("data", "reason_code")]
    assert {"/".join(map(str, e.absolute_path)) for e in validators[type_].iter_errors(document)} == {
        "data/reason_code"
    }
