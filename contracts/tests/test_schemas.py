"""The published JSON Schemas: contracts/schemas/ is what the models render, and a change to a v1 contract that
would break a producer or a consumer written against it is told apart from one that would not."""

import copy
import json

import pytest

from oms_contracts.schemas import checked_in_schemas, current_schemas, incompatibilities, render

SUBMITTED = "oms.channel.order_submitted.v1"


def test_the_checked_in_schemas_are_what_the_models_render():
    checked_in = checked_in_schemas()
    current = {type_: json.loads(render(schema)) for type_, schema in current_schemas().items()}

    breaking = [f"{type_}: event type removed" for type_ in sorted(set(checked_in) - set(current))]
    for type_ in sorted(set(checked_in) & set(current)):
        breaking += [f"{type_} {problem}" for problem in incompatibilities(checked_in[type_], current[type_])]
    assert not breaking, (
        "Breaking changes to published contracts; make a new type version (…v2) instead:\n  " + "\n  ".join(breaking)
    )

    stale = sorted(type_ for type_ in current if checked_in.get(type_) != current[type_])
    assert not stale, f"contracts/schemas/ is out of date for {stale}; the change is compatible: run `make schemas`"


@pytest.fixture
def old():
    return json.loads(render(current_schemas()[SUBMITTED]))


@pytest.fixture
def new(old):
    return copy.deepcopy(old)


def defs(schema, name):
    return schema["$defs"][name]


def test_an_unchanged_schema_is_compatible(old, new):
    assert incompatibilities(old, new) == []


# Breaking: a producer or consumer written against the old schema fails against the new one.


def test_a_removed_field_is_breaking(old, new):
    del defs(new, "Customer")["properties"]["phone"]
    assert incompatibilities(old, new) == ["/data/customer/phone: field removed or renamed"]


def test_a_renamed_field_is_breaking(old, new):
    line = defs(new, "PricedLine")
    line["properties"]["qty"] = line["properties"].pop("quantity")
    line["required"] = ["qty" if name == "quantity" else name for name in line["required"]]
    assert incompatibilities(old, new) == [
        "/data/lines[]/quantity: field removed or renamed",
        "/data/lines[]/qty: field became required",
    ]


def test_a_new_required_field_is_breaking(old, new):
    data = defs(new, "OrderSubmittedData")
    data["properties"]["sales_rep"] = {"type": "string"}
    data["required"].append("sales_rep")
    assert incompatibilities(old, new) == ["/data/sales_rep: field became required"]


def test_a_field_no_longer_required_is_breaking(old, new):
    defs(new, "OrderSubmittedData")["required"].remove("placed_at")
    assert incompatibilities(old, new) == ["/data/placed_at: field is no longer required"]


def test_a_changed_type_is_breaking(old, new):
    defs(new, "PricedLine")["properties"]["quantity"]["type"] = "number"
    assert incompatibilities(old, new) == ["/data/lines[]/quantity: type changed from 'integer' to 'number'"]


def test_a_changed_format_is_breaking(old, new):
    defs(new, "OrderSubmittedData")["properties"]["placed_at"]["format"] = "date"
    assert incompatibilities(old, new) == ["/data/placed_at: format changed from 'date-time' to 'date'"]


def test_a_changed_pattern_is_breaking(old, new):
    defs(new, "OrderSubmittedData")["properties"]["currency"]["pattern"] = "^[A-Za-z]{3}$"
    [problem] = incompatibilities(old, new)
    assert problem.startswith("/data/currency: pattern changed")


def test_a_removed_enum_value_is_breaking(old, new):
    defs(new, "ShippingMethod")["enum"].remove("pickup")
    assert incompatibilities(old, new) == ["/data/shipping_method: enum values removed: ['pickup']"]


def test_a_tightened_length_limit_is_breaking(old, new):
    defs(new, "PricedLine")["properties"]["sku"]["maxLength"] = 64
    defs(new, "OrderSubmittedData")["properties"]["lines"]["maxItems"] = 100
    assert incompatibilities(old, new) == [
        "/data/lines: maxItems tightened from 500 to 100",
        "/data/lines[]/sku: maxLength tightened from 128 to 64",
    ]


def test_a_tightened_length_limit_of_a_nullable_field_is_breaking(old, new):
    phone = defs(new, "Customer")["properties"]["phone"]
    assert phone["anyOf"][1] == {"type": "null"}
    phone["anyOf"][0]["maxLength"] = 20
    assert incompatibilities(old, new) == ["/data/customer/phone: maxLength tightened from 40 to 20"]


def test_a_new_length_limit_is_breaking(old, new):
    defs(new, "OrderSubmittedData")["properties"]["channel"]["minLength"] = 2
    defs(new, "PricedLine")["properties"]["unit_price"]["maxLength"] = 12
    assert incompatibilities(old, new) == [
        "/data/channel: minLength tightened from 1 to 2",
        "/data/lines[]/unit_price: maxLength tightened from None to 12",
    ]


# Compatible: everything written against the old schema still works.


def test_a_new_optional_field_is_compatible(old, new):
    defs(new, "OrderSubmittedData")["properties"]["gift_message"] = {
        "anyOf": [{"type": "string", "maxLength": 500}, {"type": "null"}],
        "default": None,
    }
    assert incompatibilities(old, new) == []


def test_a_new_enum_value_is_compatible(old, new):
    defs(new, "ShippingMethod")["enum"].append("same_day")
    assert incompatibilities(old, new) == []


def test_a_relaxed_length_limit_is_compatible(old, new):
    defs(new, "PricedLine")["properties"]["sku"]["maxLength"] = 256
    defs(new, "Customer")["properties"]["phone"]["anyOf"][0]["maxLength"] = 80
    del defs(new, "OrderSubmittedData")["properties"]["lines"]["maxItems"]
    assert incompatibilities(old, new) == []


def test_new_descriptions_and_titles_are_compatible(old, new):
    defs(new, "PricedLine")["properties"]["sku"]["description"] = "The merchant's stock keeping unit"
    defs(new, "Customer")["title"] = "Buyer"
    assert incompatibilities(old, new) == []
