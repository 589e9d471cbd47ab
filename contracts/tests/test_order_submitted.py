"""What a channel may send as `oms.channel.order_submitted.v1`: strict about what matters (quantities, money,
codes, totals, times), tolerant of fields it does not know yet. Each refusal names the field, as the rejection
event tells the channel."""

import json
import uuid
from decimal import Decimal

import pytest
from pydantic import ValidationError

from oms_contracts import ORDER_NAMESPACE, order_id_for
from oms_contracts.channel import OrderSubmitted
from oms_contracts.order import FieldError
from oms_contracts.topics import CHANNEL_ORDERS


def refusals(document) -> list[FieldError]:
    with pytest.raises(ValidationError) as refused:
        CHANNEL_ORDERS.parse(json.dumps(document))
    return FieldError.all_of(refused.value)


@pytest.fixture
def submitted(make_document):
    return make_document("oms.channel.order_submitted.v1")


def test_the_public_example_of_the_design_is_accepted(submitted):
    event = CHANNEL_ORDERS.parse(json.dumps(submitted))
    assert isinstance(event, OrderSubmitted)
    assert event.data.order_id == order_id_for("web-eu", "1001")
    assert str(event.data.grand_total) == "44.97"


@pytest.mark.parametrize(
    ("change", "field", "kind"),
    [
        (lambda d: d["lines"][0].update(quantity=-1), "data.lines.0.quantity", "greater_than"),
        (lambda d: d["lines"][0].update(quantity=0), "data.lines.0.quantity", "greater_than"),
        (lambda d: d["lines"][0].update(quantity=2.0), "data.lines.0.quantity", "int_type"),
        (lambda d: d["lines"][0].update(quantity=2.5), "data.lines.0.quantity", "int_type"),
        (lambda d: d["lines"][0].update(quantity="2"), "data.lines.0.quantity", "int_type"),
        (lambda d: d.update(currency="EUX"), "data.currency", "value_error"),
        (lambda d: d.update(currency="eur"), "data.currency", "value_error"),
        (lambda d: d["shipping_address"].update(country="XX"), "data.shipping_address.country", "value_error"),
        (lambda d: d["shipping_address"].update(country="de"), "data.shipping_address.country", "value_error"),
        (lambda d: d.update(lines=[]), "data.lines", "too_short"),
        (lambda d: d.update(grand_total=44.97), "data.grand_total", "value_error"),
        (lambda d: d["lines"][0].update(unit_price=19.99), "data.lines.0.unit_price", "value_error"),
        (lambda d: d.update(shipping_total="4.99999"), "data.shipping_total", "value_error"),
        (lambda d: d.update(tax_total="-1.00"), "data.tax_total", "value_error"),
        (lambda d: d.update(placed_at="2026-11-22T10:00:00"), "data.placed_at", "timezone_aware"),
        (lambda d: d["customer"].update(email="ada"), "data.customer.email", "value_error"),
        (lambda d: d.update(shipping_method="drone"), "data.shipping_method", "enum"),
        (lambda d: d.update(channel="c" * 65), "data.channel", "string_too_long"),
        (lambda d: d.update(external_order_id="1" * 101), "data.external_order_id", "string_too_long"),
    ],
    ids=[
        "negative-quantity",
        "zero-quantity",
        "float-quantity",
        "fractional-quantity",
        "string-quantity",
        "unknown-currency",
        "lowercase-currency",
        "unknown-country",
        "lowercase-country",
        "no-lines",
        "money-as-number",
        "price-as-number",
        "money-with-5-decimals",
        "negative-money",
        "naive-datetime",
        "bad-email",
        "unknown-shipping-method",
        "channel-over-64",
        "external-id-over-100",
    ],
)
def test_a_field_that_breaks_the_contract_is_refused_at_its_path(submitted, change, field, kind):
    change(submitted["data"])
    [error] = refusals(submitted)
    assert (error.field, error.type) == (field, kind), error


@pytest.mark.parametrize(
    "code", ["XXX", "XTS", "XAU", "XAG", "XPT", "XPD", "XBA", "XBD", "XDR", "XSU", "XUA", "CLF", "USN", "CHE"]
)
def test_an_iso_4217_code_that_is_not_legal_tender_is_refused(submitted, code):
    """Metals, units of account, fund codes, the testing code and "no currency" are in ISO 4217, but no customer
    pays in them: an order in gold would be routed, reserved and shipped against a total nobody can collect."""
    submitted["data"]["currency"] = code
    [error] = refusals(submitted)
    assert (error.field, error.type) == ("data.currency", "value_error")
    assert "not a currency an order can be paid in" in error.message


@pytest.mark.parametrize("code", ["XAF", "XOF", "XCD", "XPF", "EUR", "CHF", "JPY"])
def test_currencies_whose_codes_look_alike_are_still_accepted(submitted, code):
    submitted["data"]["currency"] = code
    assert CHANNEL_ORDERS.parse(json.dumps(submitted)).data.currency == code


def test_a_payment_in_a_code_that_is_not_legal_tender_is_refused(make_document):
    payment = make_document("oms.channel.payment_captured.v1")
    payment["data"]["currency"] = "XTS"
    [error] = refusals(payment)
    assert error.field == "data.currency"


def test_text_with_a_nul_character_is_refused_at_its_path(make_document):
    # PostgreSQL's text and jsonb cannot hold it: refused with the field, not by the database later.
    cancellation = make_document("oms.channel.cancellation_requested.v1")
    cancellation["data"]["reason"] = "changed\u0000my mind"
    [error] = refusals(cancellation)
    assert error.field == "data.reason" and "NUL" in error.message


def test_totals_that_do_not_add_up_are_refused_with_the_sum(submitted):
    submitted["data"]["grand_total"] = "40.00"
    [error] = refusals(submitted)
    # A cross-field rule: reported on the payload as a whole.
    assert error.field == "data"
    assert "grand_total 40.00 does not equal" in error.message
    assert "= 44.97" in error.message


def test_totals_count_shipping_and_tax_and_subtract_the_discount(submitted):
    submitted["data"].update(
        lines=[
            {"line_id": "1", "sku": "SKU-1", "quantity": 3, "unit_price": "0.1"},
            {"line_id": "2", "sku": "SKU-2", "quantity": 1, "unit_price": "10.0005"},
        ],
        shipping_total="5",
        tax_total="1.50",
        discount_total="2.0005",
        grand_total="14.80",
    )
    assert CHANNEL_ORDERS.parse(json.dumps(submitted)).data.subtotal == Decimal("10.3005")


def test_duplicate_line_ids_are_refused(submitted):
    submitted["data"]["lines"].append({"line_id": "1", "sku": "SKU-2", "quantity": 1, "unit_price": "0.00"})
    [error] = refusals(submitted)
    assert error.field == "data"
    assert "line_id must be unique" in error.message


def test_pickup_without_a_pickup_source_is_refused(submitted):
    submitted["data"]["shipping_method"] = "pickup"
    [error] = refusals(submitted)
    assert error.field == "data"
    assert "pickup_source is required" in error.message


def test_a_pickup_source_without_pickup_is_refused(submitted):
    submitted["data"]["pickup_source"] = "STORE-1"
    [error] = refusals(submitted)
    assert "pickup_source is required for shipping_method 'pickup' and only then" in error.message


def test_pickup_with_its_source_is_accepted(submitted):
    submitted["data"].update(shipping_method="pickup", pickup_source="STORE-1")
    assert CHANNEL_ORDERS.parse(json.dumps(submitted)).data.pickup_source == "STORE-1"


def test_every_broken_field_is_reported_not_only_the_first(submitted):
    submitted["data"].update(currency="eur", placed_at="yesterday")
    submitted["data"]["lines"][0]["quantity"] = 0
    assert {e.field for e in refusals(submitted)} == {"data.currency", "data.placed_at", "data.lines.0.quantity"}


def test_a_naive_envelope_time_is_refused(submitted):
    submitted["time"] = "2026-11-22T10:00:00"
    [error] = refusals(submitted)
    assert (error.field, error.type) == ("time", "timezone_aware")


def test_undecodable_bytes_are_refused_as_a_whole():
    with pytest.raises(ValidationError) as refused:
        CHANNEL_ORDERS.parse(b"\x00not json")
    [error] = FieldError.all_of(refused.value)
    assert (error.field, error.type) == ("(message)", "json_invalid")


def test_unknown_fields_are_ignored_so_that_adding_one_breaks_no_reader(submitted):
    submitted["comexampleextension"] = "a CloudEvents extension attribute"
    submitted["data"]["gift_wrap"] = True
    submitted["data"]["customer"]["loyalty_tier"] = "gold"
    submitted["data"]["lines"][0]["colour"] = "red"
    event = CHANNEL_ORDERS.parse(json.dumps(submitted))
    assert "gift_wrap" not in json.loads(event.to_bytes())["data"]


def test_the_order_id_is_the_uuid5_of_the_design_namespace_and_channel_and_external_id():
    assert uuid.UUID("7c2f4a52-5d0e-4b8e-9a41-0c3e6d1f2b77") == ORDER_NAMESPACE
    order_id = order_id_for("web-eu", "1001")
    assert order_id == uuid.uuid5(ORDER_NAMESPACE, "web-eu:1001")
    assert order_id.version == 5
    # Pinned (computed by hand from RFC 4122's SHA-1 recipe): channels compute it themselves, so it never changes.
    assert str(order_id) == "bc97adcc-58cb-526a-b32f-78fb722e49e3"


def test_an_order_may_bring_its_own_routing_rule_chain(submitted):
    submitted["data"]["options"]["routing_rules"] = ["fewest_shipments", "lowest_cost", "nearest"]
    event = CHANNEL_ORDERS.parse(json.dumps(submitted))
    assert [rule.value for rule in event.data.options.routing_rules] == ["fewest_shipments", "lowest_cost", "nearest"]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (["nearest", "teleport"], "Input should be"),
        (["nearest", "nearest"], "repeated: nearest"),
        (["nearest", "fewest_shipments"], "fewest_shipments always comes first"),
        ([], "at least 1 item"),
    ],
)
def test_a_routing_rule_chain_names_known_rules_once_with_fewest_shipments_first(submitted, rules, message):
    submitted["data"]["options"]["routing_rules"] = rules
    errors = refusals(submitted)
    assert all(e.field.startswith("data.options.routing_rules") for e in errors)
    assert message in " ".join(e.message for e in errors)


ADDRESSES = [
    "anna@example.com",
    "Anna.Schmidt@Example.COM",
    "  padded@example.com ",
    "Anna <anna@example.com>",
    "jürgen@müller.de",
    "not-an-address",
    "two@@example.com",
    "anna@example.com\r\nBcc: x@example.com",
    "a@[127.0.0.1]",
    "x" * 300 + "@example.com",
    "",
]


@pytest.mark.parametrize("address", ADDRESSES)
def test_a_customers_email_is_accepted_refused_and_normalised_as_pydantics_email_type_does(address):
    """The contracts' Email remembers what it checked (it is the dearest field to read); it must say what EmailStr
    says, the second time too."""
    from pydantic import EmailStr, TypeAdapter

    from oms_contracts.types import Email

    def outcome(adapter):
        try:
            return adapter.validate_python(address)
        except ValidationError as error:
            return [(e["type"], e["msg"]) for e in error.errors()]

    ours, pydantics = TypeAdapter(Email), TypeAdapter(EmailStr)
    assert outcome(ours) == outcome(pydantics)
    assert outcome(ours) == outcome(pydantics)  # remembered, or refused again
    assert ours.json_schema() == pydantics.json_schema()
